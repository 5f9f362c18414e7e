//! The HTML report as its readers get it: `gauntlet report` renders the
//! committed report of a real smoke run (`fixtures/reports/smoke.json`),
//! headless Chromium (Debian's `chromium`) loads the page, and the test
//! checks what the browser made of it: an SVG plot with one shaded band per
//! fault, the shade actually painted in the screenshot, and not one console
//! message (the page has no script, so any message is a blocked fetch or a
//! parse problem). The page's structure, not its numbers, is snapshotted so
//! that a change to the page shows in review.
//!
//! Without Chromium the browser test skips with the reason, except under
//! `CI=true`, where it fails. `GAUNTLET_SCREENSHOT_OUT=FILE` copies the
//! screenshot out (the README's picture is made this way).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gauntlet::report::Report;
use scraper::{ElementRef, Html, Selector};

/// The browser window: wide enough for the plots at their drawn size and
/// tall enough to show the three time plots.
const WINDOW: (u32, u32) = (1100, 1500);
/// How long one Chromium invocation may take before it is killed.
const CHROMIUM_TIMEOUT_S: u32 = 60;
/// At least this many screenshot pixels must have the fault shade's colour:
/// each band covers thousands, so fewer means the shading was not painted.
const MIN_SHADE_PIXELS: usize = 1_000;

/// The workspace root, the binary's working directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness is inside the workspace")
        .to_path_buf()
}

fn fixture(name: &str) -> (PathBuf, Report) {
    let path = root().join("fixtures/reports").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let report = Report::from_json(&text).unwrap_or_else(|e| {
        panic!(
            "{} is not a report of this version: {e}; regenerate it from a real run",
            path.display()
        )
    });
    (path, report)
}

fn gauntlet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("gauntlet starts")
}

fn shown(what: &str, output: &Output) -> String {
    format!(
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A report directory as the scenario tests leave it: each fixture copied
/// to `DIR/local/<scenario>/report.json`, then `gauntlet report DIR` with
/// JUnit and Markdown, which must exit 0.
fn rendered(fixtures: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for name in fixtures {
        let (path, report) = fixture(name);
        let at = dir.path().join("local").join(&report.scenario);
        std::fs::create_dir_all(&at).expect("a report directory");
        std::fs::copy(&path, at.join("report.json")).expect("the fixture copies");
    }
    let d = dir.path().to_str().expect("a UTF-8 temporary path");
    let output = gauntlet(&[
        "report",
        d,
        "--junit",
        &format!("{d}/junit.xml"),
        "--summary-md",
        &format!("{d}/summary.md"),
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        shown("gauntlet report", &output)
    );
    dir
}

/// The element outline of an HTML document: one line per element,
/// `tag.class.class`, indented by depth; text, attributes other than the
/// class, and numbers are left out, and a run of siblings with the same
/// outline is written once with `(repeated)`, so the snapshot changes when
/// the page's structure does and not when a run's figures do.
fn outline(html: &str) -> String {
    fn element(e: ElementRef<'_>, depth: usize, out: &mut Vec<String>) {
        let mut classes: Vec<&str> = e.value().classes().collect();
        classes.sort_unstable();
        let mut line = format!("{}{}", "  ".repeat(depth), e.value().name());
        for class in classes {
            line.push('.');
            line.push_str(class);
        }
        out.push(line);
        let children: Vec<Vec<String>> = e
            .children()
            .filter_map(ElementRef::wrap)
            .map(|child| {
                let mut lines = Vec::new();
                element(child, depth + 1, &mut lines);
                lines
            })
            .collect();
        let mut i = 0;
        'children: while i < children.len() {
            // A run of one to three siblings that repeats (a tick's line and
            // label, a table row) is written once: how often it repeats is
            // a number of the run, not the page's structure.
            for period in 1..=MAX_PERIOD {
                let unit = &children[i..(i + period).min(children.len())];
                let repeats = |at: usize| children.get(at..at + period) == Some(unit);
                if unit.len() == period && repeats(i + period) {
                    out.extend(unit.iter().flatten().cloned());
                    out.push(format!("{}(repeated)", "  ".repeat(depth + 1)));
                    i += period;
                    while repeats(i) {
                        i += period;
                    }
                    continue 'children;
                }
            }
            out.extend(children[i].iter().cloned());
            i += 1;
        }
    }
    /// The longest run of siblings recognised as repeating.
    const MAX_PERIOD: usize = 3;
    let document = Html::parse_document(html);
    let mut lines = Vec::new();
    element(document.root_element(), 0, &mut lines);
    lines.join("\n") + "\n"
}

fn select<'a>(document: &'a Html, selector: &str) -> Vec<ElementRef<'a>> {
    let parsed = Selector::parse(selector).expect("a valid selector");
    document.select(&parsed).collect()
}

#[test]
fn the_scenario_page_has_this_structure() {
    let (_, report) = fixture("weakened-no-retries.json");
    let html = gauntlet::report::html::scenario_page(&report, Some("../index.html"));
    insta::assert_snapshot!("scenario_page_outline", outline(&html));
}

#[test]
fn the_index_page_has_this_structure() {
    let (_, smoke) = fixture("smoke.json");
    let (_, weakened) = fixture("weakened-no-retries.json");
    let entries = [
        gauntlet::report::html::IndexEntry {
            report: &smoke,
            href: "smoke/report.html".to_owned(),
        },
        gauntlet::report::html::IndexEntry {
            report: &weakened,
            href: "weakened/report.html".to_owned(),
        },
    ];
    let html = gauntlet::report::html::index_page("gauntlet run", &entries);
    insta::assert_snapshot!("index_page_outline", outline(&html));
}

/// `gauntlet report` gives every report a page linking back to the index,
/// an index linking to every page, and the summaries, from report.json alone.
#[test]
fn report_renders_pages_index_and_summaries_from_report_json() {
    let dir = rendered(&["smoke.json", "weakened-no-retries.json"]);
    let index = std::fs::read_to_string(dir.path().join("index.html")).expect("index.html");
    let index = Html::parse_document(&index);
    let mut links: Vec<String> = select(&index, "a")
        .iter()
        .filter_map(|a| a.value().attr("href").map(str::to_owned))
        .collect();
    links.sort();
    for (_, report) in [fixture("smoke.json"), fixture("weakened-no-retries.json")] {
        let href = format!("local/{}/report.html", report.scenario);
        assert!(
            links.contains(&href),
            "the index links {links:?}, not {href}"
        );
        let page = std::fs::read_to_string(dir.path().join(&href)).expect("report.html");
        let page = Html::parse_document(&page);
        let back: Vec<_> = select(&page, "a")
            .iter()
            .filter_map(|a| a.value().attr("href"))
            .filter(|h| h.ends_with("index.html"))
            .map(str::to_owned)
            .collect();
        assert_eq!(back, ["../../index.html"], "{href} links back");
    }
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).expect("junit.xml");
    let (_, weakened) = fixture("weakened-no-retries.json");
    let failed = weakened.checks.iter().filter(|c| !c.passed()).count();
    assert!(failed > 0, "the weakened fixture has a failed check");
    assert_eq!(junit.matches("<failure").count(), failed, "{junit}");
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary.md");
    assert!(summary.contains("| KIND | CHECK |"), "{summary}");
    assert!(summary.contains("### smoke: PASSED"), "{summary}");
}

#[test]
fn report_names_the_file_it_cannot_read() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let at = dir.path().join("broken");
    std::fs::create_dir_all(&at).expect("a directory");
    std::fs::write(at.join("report.json"), "{\"scenario\": 1}\n").expect("a file");
    let d = dir.path().to_str().expect("a UTF-8 temporary path");
    let output = gauntlet(&["report", d]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        shown("gauntlet report", &output)
    );
    let named = format!("{d}/broken/report.json:1:");
    assert!(stderr.contains(&named), "{stderr}\ndoes not name {named}");
    let empty = tempfile::tempdir().expect("a temporary directory");
    let output = gauntlet(&["report", empty.path().to_str().expect("UTF-8")]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        shown("gauntlet report", &output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no report.json found"),
        "{}",
        shown("gauntlet report", &output)
    );
}

/// Chromium's executable: `$GAUNTLET_CHROMIUM`, else `chromium` or
/// `chromium-browser` on the PATH. `None` (with the reason printed) when
/// there is none outside CI; under `CI=true` a missing browser fails.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GAUNTLET_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let reason = "no chromium on the PATH (Debian's `chromium`; .ci/run installs it) and GAUNTLET_CHROMIUM unset";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the browser test must run, but {reason}"
        );
        eprintln!("skipped: {reason}");
    }
    found
}

/// What one headless Chromium invocation printed, and the console messages
/// among its log lines (its other lines are its own noise: D-Bus, GPU).
struct Browser {
    output: Output,
    console: Vec<String>,
}

/// Loads `page` in headless Chromium with `args` (a fresh profile, logging
/// on stderr), killed after [`CHROMIUM_TIMEOUT_S`].
fn browse(exe: &Path, page: &Path, args: &[String]) -> Browser {
    let profile = tempfile::tempdir().expect("a profile directory");
    let output = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(CHROMIUM_TIMEOUT_S.to_string())
        .arg(exe)
        .args([
            "--headless",
            // Root in CI: Chromium refuses to start its sandbox as root.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("timeout(1) starts chromium");
    let console = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.contains("CONSOLE"))
        .map(str::to_owned)
        .collect();
    Browser { output, console }
}

/// The light theme's fault shade, `--fault: rgba(R, G, B, A)` in the page's
/// style, painted over its white background: the colour a band's inside
/// has in the screenshot.
fn painted_shade(html: &str) -> [u8; 3] {
    let start = html
        .find("--fault: rgba(")
        .expect("the page defines --fault")
        + 14;
    let end = start + html[start..].find(')').expect("the rgba closes");
    let parts: Vec<f64> = html[start..end]
        .split(',')
        .map(|p| p.trim().parse().expect("a number"))
        .collect();
    let alpha = parts[3];
    let blend = |c: f64| (255.0 + (c - 255.0) * alpha).round() as u8;
    [blend(parts[0]), blend(parts[1]), blend(parts[2])]
}

/// The screenshot's size and how many of its pixels are within 3 of `rgb`
/// on every channel (antialiasing and rounding move colours a little).
fn count_pixels(png_path: &Path, rgb: [u8; 3]) -> ((u32, u32), usize) {
    let file = std::fs::File::open(png_path).expect("the screenshot opens");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("the screenshot is a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader
        .next_frame(&mut pixels)
        .expect("the screenshot decodes");
    let samples = info.color_type.samples();
    assert!(
        samples >= 3,
        "a colour screenshot, not {:?}",
        info.color_type
    );
    let count = pixels[..info.buffer_size()]
        .chunks_exact(samples)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 3))
        .count();
    ((info.width, info.height), count)
}

#[test]
fn chromium_draws_one_shaded_band_per_fault_without_console_messages() {
    let Some(exe) = chromium() else { return };
    let dir = rendered(&["smoke.json"]);
    let (_, report) = fixture("smoke.json");
    assert!(!report.faults.is_empty(), "the smoke fixture has faults");
    let page = dir.path().join("local/smoke/report.html");
    let html = std::fs::read_to_string(&page).expect("report.html");

    // The document as Chromium parsed it.
    let dom = browse(&exe, &page, &["--dump-dom".to_owned()]);
    let shown_dom = format!(
        "chromium --dump-dom: {}\nstderr:\n{}",
        dom.output.status,
        String::from_utf8_lossy(&dom.output.stderr)
    );
    assert!(dom.output.status.success(), "{shown_dom}");
    assert!(
        dom.console.is_empty(),
        "console messages: {:#?}",
        dom.console
    );
    let parsed = Html::parse_document(&String::from_utf8_lossy(&dom.output.stdout));
    let plots = select(&parsed, "svg.plot");
    let latency = plots
        .iter()
        .find(|svg| svg.value().classes().any(|c| c == "latency-plot"))
        .unwrap_or_else(|| panic!("no latency plot among {} plots\n{shown_dom}", plots.len()));
    let band = Selector::parse("g.band.fault").expect("a selector");
    let mut shaded: Vec<&str> = latency
        .select(&band)
        .filter_map(|g| g.value().attr("data-fault"))
        .collect();
    shaded.sort_unstable();
    let mut faults: Vec<&str> = report.faults.iter().map(|f| f.name.as_str()).collect();
    faults.sort_unstable();
    assert_eq!(
        shaded, faults,
        "one shaded band per fault in the latency plot"
    );
    for svg in &plots {
        let count = svg.select(&band).count();
        assert!(
            count == 0 || count == faults.len(),
            "a plot with {count} bands for {} faults",
            faults.len()
        );
    }

    // The picture: the shade is painted, and nothing was logged.
    let shot = dir.path().join("screenshot.png");
    let browser = browse(
        &exe,
        &page,
        &[
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            format!("--screenshot={}", shot.display()),
        ],
    );
    assert!(
        browser.output.status.success() && shot.is_file(),
        "chromium --screenshot: {}\nstderr:\n{}",
        browser.output.status,
        String::from_utf8_lossy(&browser.output.stderr)
    );
    assert!(
        browser.console.is_empty(),
        "console messages: {:#?}",
        browser.console
    );
    let shade = painted_shade(&html);
    let (size, shaded_pixels) = count_pixels(&shot, shade);
    assert_eq!(size, WINDOW, "the screenshot's size");
    assert!(
        shaded_pixels >= MIN_SHADE_PIXELS,
        "{shaded_pixels} pixels of the fault shade {shade:?}, fewer than {MIN_SHADE_PIXELS}"
    );
    if let Some(out) = std::env::var_os("GAUNTLET_SCREENSHOT_OUT") {
        std::fs::copy(&shot, &out).expect("the screenshot copies out");
        eprintln!("screenshot: {}", PathBuf::from(out).display());
    }

    // The console check can fail: the same page with one fetch the policy
    // blocks gets a console message.
    let control = dir.path().join("local/smoke/control.html");
    std::fs::write(
        &control,
        html.replacen("<body>", "<body><img src=\"http://127.0.0.1:9/x.png\">", 1),
    )
    .expect("the control page");
    let blocked = browse(&exe, &control, &["--dump-dom".to_owned()]);
    assert!(
        blocked
            .console
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "a blocked fetch logs a console message; chromium said:\n{}",
        String::from_utf8_lossy(&blocked.output.stderr)
    );
}
