//! The offline commands over scenario files, `gauntlet validate` and
//! `gauntlet list`: they write to any `Write` and return the exit code, so
//! that tests snapshot their output without a process.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use orchestrator::config::format_duration;
use orchestrator::exit::Exit;

use crate::scenario::{self, FaultClass, Scenario};

/// The directory `gauntlet list` reads when given no path.
pub const DEFAULT_SCENARIO_DIR: &str = "scenarios";

/// `gauntlet validate PATH...`: every finding of every scenario file (a
/// directory stands for its `*.yaml` files) and `ok: FILE (NAME)` for each
/// valid one, on `out`. Returns [`Exit::Pass`] when all are valid (warnings
/// allowed), else [`Exit::BadInput`]; a path that cannot be listed is
/// reported on `err`.
pub fn validate(paths: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> io::Result<Exit> {
    let files = match scenario::discover(paths) {
        Ok(files) => files,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(Exit::BadInput);
        }
    };
    if files.is_empty() {
        writeln!(err, "error: no scenario files (*.yaml) found")?;
        return Ok(Exit::BadInput);
    }
    let mut all_valid = true;
    for file in &files {
        let name = file.display().to_string();
        let (scenario, diagnostics) = load(file);
        for d in &diagnostics {
            writeln!(out, "{}", d.display_with_file(&name))?;
        }
        match scenario {
            Some(scenario) => writeln!(out, "ok: {name} ({})", scenario.name)?,
            None => all_valid = false,
        }
    }
    Ok(if all_valid {
        Exit::Pass
    } else {
        Exit::BadInput
    })
}

/// `gauntlet list [PATH...]`: one line per scenario on `out`, its name, its
/// load's duration and its fault kinds by class, in columns. Invalid files
/// have their findings written to `err` and make the exit code
/// [`Exit::BadInput`]; the valid ones are still listed.
pub fn list(paths: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> io::Result<Exit> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(DEFAULT_SCENARIO_DIR)]
    } else {
        paths.to_vec()
    };
    let files = match scenario::discover(&paths) {
        Ok(files) => files,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(Exit::BadInput);
        }
    };
    let mut rows = Vec::new();
    let mut all_valid = true;
    for file in &files {
        let (scenario, diagnostics) = load(file);
        match scenario {
            Some(scenario) => rows.push(row(&scenario)),
            None => {
                all_valid = false;
                let name = file.display().to_string();
                for d in &diagnostics {
                    writeln!(err, "{}", d.display_with_file(&name))?;
                }
            }
        }
    }
    let name_width = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let duration_width = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    for [name, duration, faults] in &rows {
        let line = format!("{name:<name_width$}  {duration:<duration_width$}  {faults}");
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(if all_valid {
        Exit::Pass
    } else {
        Exit::BadInput
    })
}

/// Parses a file, keeping warnings; an unreadable file is one `io` error.
fn load(file: &std::path::Path) -> (Option<Scenario>, Vec<orchestrator::yaml::Diagnostic>) {
    let outcome = scenario::parse_file(file);
    (outcome.scenario, outcome.diagnostics)
}

/// A scenario's columns: name, duration, fault kinds by class.
fn row(scenario: &Scenario) -> [String; 3] {
    let mut classes: BTreeMap<FaultClass, Vec<&'static str>> = BTreeMap::new();
    for fault in &scenario.faults {
        let kinds = classes.entry(fault.action.class()).or_default();
        let kind = fault.action.kind();
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let faults = if classes.is_empty() {
        "no faults".to_owned()
    } else {
        classes
            .iter()
            .map(|(class, kinds)| format!("{}: {}", class.as_str(), kinds.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    [
        scenario.name.clone(),
        format_duration(scenario.load.duration()),
        faults,
    ]
}

/// How deep `gauntlet report` looks for report.json below its directory:
/// `DIR/<scenario>/` (a run), `DIR/<backend>/<scenario>/` (the scenario
/// tests) and `DIR/<scenario>/runs/NNN/` (an exploration) are all within it.
pub const REPORT_SEARCH_DEPTH: usize = 4;
/// How many reports `gauntlet report` renders at most, so that a directory
/// given by mistake (`/`) ends with an error instead of a long walk.
pub const REPORT_LIMIT: usize = 2_000;

/// `gauntlet report DIR`: every `report.json` below `dir` (at most
/// [`REPORT_SEARCH_DEPTH`] levels down) is read back and its report.html
/// rewritten beside it; `dir/index.html` links them all, and `outputs`
/// (JUnit, Markdown) summarise them. This is how reports written by other
/// means (the scenario tests, an older run) get the pages and summaries of
/// `gauntlet run`. Returns [`Exit::Pass`] once everything is written, and
/// [`Exit::BadInput`] when there is no report, one cannot be read (its
/// file, line and column are named) or a file cannot be written. The
/// verdicts inside the reports do not change the exit code: the run that
/// made them has already given its own.
pub fn report(
    dir: &std::path::Path,
    outputs: &crate::report::Outputs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Exit> {
    use crate::report::{Report, html};
    let files = match find_reports(dir) {
        Ok(files) => files,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(Exit::BadInput);
        }
    };
    if files.is_empty() {
        writeln!(
            err,
            "error: no report.json found in {} (searched {REPORT_SEARCH_DEPTH} levels down)",
            dir.display()
        )?;
        return Ok(Exit::BadInput);
    }
    let mut reports = Vec::with_capacity(files.len());
    for file in &files {
        let read = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))
            .and_then(|text| {
                Report::from_json(&text).map_err(|e| {
                    // serde_json's message ends with the position, which
                    // the prefix already gives in the FILE:LINE:COL form.
                    let message = e.to_string();
                    let position = format!(" at line {} column {}", e.line(), e.column());
                    format!(
                        "{}:{}:{}: not a report of this version (schema {}): {}",
                        file.display(),
                        e.line(),
                        e.column(),
                        crate::report::SCHEMA_VERSION,
                        message.strip_suffix(&position).unwrap_or(&message)
                    )
                })
            });
        match read {
            Ok(report) => reports.push(report),
            Err(e) => {
                writeln!(err, "error: {e}")?;
                return Ok(Exit::BadInput);
            }
        }
    }
    let mut entries = Vec::with_capacity(files.len());
    for (file, report) in files.iter().zip(&reports) {
        let page_dir = file.parent().unwrap_or(dir);
        let relative = page_dir.strip_prefix(dir).unwrap_or(page_dir);
        let depth = relative.components().count();
        let index_href = "../".repeat(depth) + "index.html";
        let page = page_dir.join("report.html");
        if let Err(e) = std::fs::write(&page, html::scenario_page(report, Some(&index_href))) {
            writeln!(err, "error: cannot write {}: {e}", page.display())?;
            return Ok(Exit::BadInput);
        }
        let href = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .chain(["report.html".to_owned()])
            .collect::<Vec<_>>()
            .join("/");
        writeln!(out, "report: {}", page.display())?;
        entries.push(html::IndexEntry { report, href });
    }
    if let Err(e) = outputs.write(dir, "gauntlet report", &entries) {
        writeln!(err, "error: {e}")?;
        return Ok(Exit::BadInput);
    }
    writeln!(out, "index: {}", dir.join("index.html").display())?;
    Ok(Exit::Pass)
}

/// Every `report.json` below `dir`, in path order, without following
/// symbolic links; bounded by [`REPORT_SEARCH_DEPTH`] and [`REPORT_LIMIT`].
fn find_reports(dir: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0usize)];
    while let Some((at, depth)) = pending.pop() {
        let listing =
            std::fs::read_dir(&at).map_err(|e| format!("cannot list {}: {e}", at.display()))?;
        for entry in listing {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", at.display()))?;
            let kind = entry
                .file_type()
                .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
            if kind.is_dir() && depth < REPORT_SEARCH_DEPTH {
                pending.push((entry.path(), depth + 1));
            } else if kind.is_file() && entry.file_name() == "report.json" {
                found.push(entry.path());
                if found.len() > REPORT_LIMIT {
                    return Err(format!(
                        "more than {REPORT_LIMIT} reports below {}: give a narrower directory",
                        dir.display()
                    ));
                }
            }
        }
    }
    found.sort();
    Ok(found)
}
