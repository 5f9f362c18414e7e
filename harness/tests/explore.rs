//! `gauntlet explore` end to end, on `fixtures/explore/retries.yaml`: a
//! space of four fault kinds that a healthy service absorbs. With retries
//! off, exploring must find the failure and shrink it to a `minimal.yaml`
//! of at most two faults that `gauntlet run` replays, failing the same
//! check; with the fixture as it is, it must find nothing, and the same
//! seed must draw the same schedules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn fixture() -> PathBuf {
    root().join("fixtures/explore/retries.yaml")
}

/// Runs `gauntlet ARGS`: its output and everything it said, for failure
/// messages.
fn gauntlet(args: &[&std::ffi::OsStr]) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("gauntlet runs");
    let context = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, context)
}

fn explore(scenario: &Path, reports: &Path, extra: &[&str]) -> (Output, String) {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "explore".as_ref(),
        scenario.as_os_str(),
        "--report-dir".as_ref(),
        reports.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    gauntlet(&args)
}

fn read_json(path: &Path, context: &str) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}\n{context}", path.display()));
    serde_json::from_str(&text).expect("explore.json is JSON")
}

/// The fixture with retries off, in `dir` beside a copy of the base
/// configuration it names.
fn weakened(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixture()).expect("the fixture");
    let marked = "attempts: 3, initial_delay";
    assert_eq!(
        text.matches(marked).count(),
        1,
        "the fixture marks its retries"
    );
    let configs = dir.join("fixtures/configs");
    std::fs::create_dir_all(&configs).expect("a config directory");
    std::fs::copy(
        root().join("fixtures/configs/base.yaml"),
        configs.join("base.yaml"),
    )
    .expect("the base config");
    let path = dir.join("no-retries.yaml");
    std::fs::write(&path, text.replace(marked, "attempts: 1, initial_delay")).expect("written");
    path
}

#[test]
fn the_fixture_space_holds_four_kinds() {
    let scenario = gauntlet::scenario::load_file(&fixture()).expect("the fixture is valid");
    let space = scenario.explore.expect("an explore section");
    let kinds: BTreeSet<&str> = space.space.iter().map(|t| t.kind.as_str()).collect();
    assert!(kinds.len() >= 4, "{kinds:?}");
}

#[test]
fn retries_off_is_found_and_shrunk_to_a_minimal_file_that_replays() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let scenario = weakened(dir.path());
    let reports = dir.path().join("out");
    let junit = dir.path().join("explore.xml");
    let summary_md = dir.path().join("explore.md");
    let (output, context) = explore(
        &scenario,
        &reports,
        &[
            "--runs",
            "5",
            "--budget",
            "8m",
            "--junit",
            junit.to_str().expect("a UTF-8 path"),
            "--summary-md",
            summary_md.to_str().expect("a UTF-8 path"),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "expected exit 1\n{context}");
    let out = reports.join("explore-retries");
    // Every run is a row of the index, a testsuite of the JUnit file and a
    // table of the summary; the failing ones fail there too.
    let runs = read_json(&out.join("explore.json"), &context)["runs"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(
        runs >= 4,
        "a run, three reruns and the shrink's: {runs}\n{context}"
    );
    let index = std::fs::read_to_string(out.join("index.html"))
        .unwrap_or_else(|e| panic!("index.html: {e}\n{context}"));
    assert_eq!(index.matches("/report.html\"").count(), runs, "{index}");
    let junit = std::fs::read_to_string(&junit).unwrap_or_else(|e| panic!("{e}\n{context}"));
    assert_eq!(junit.matches("<testsuite ").count(), runs, "{junit}");
    assert!(junit.contains("<failure"), "{junit}");
    let summary_md =
        std::fs::read_to_string(&summary_md).unwrap_or_else(|e| panic!("{e}\n{context}"));
    assert!(summary_md.contains(": FAILED"), "{summary_md}");
    let report = read_json(&out.join("explore.json"), &context);
    assert_eq!(report["outcome"], "failure", "{context}");
    let check = &report["found"]["check"];
    assert_eq!(check["name"], "allowed_statuses", "{context}");
    assert_eq!(report["found"]["reproduced"], 3, "{context}");
    assert!(out.join("original.yaml").is_file(), "{context}");

    let minimal = out.join("minimal.yaml");
    let shrunk = gauntlet::scenario::load_file(&minimal)
        .unwrap_or_else(|e| panic!("minimal.yaml is not valid: {e}\n{context}"));
    assert!(
        (1..=2).contains(&shrunk.faults.len()),
        "{} faults in minimal.yaml\n{context}",
        shrunk.faults.len()
    );
    assert!(
        shrunk.faults.iter().any(|f| f.action.kind() == "program"),
        "the provider fault is what retries absorb: {:?}\n{context}",
        shrunk.faults
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("replay: gauntlet run {}", minimal.display())),
        "{context}"
    );

    let replay = dir.path().join("replay");
    let (output, replay_context) = gauntlet(&[
        "run".as_ref(),
        minimal.as_os_str(),
        "--report-dir".as_ref(),
        replay.as_os_str(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the replay must fail\n{replay_context}"
    );
    let replay_out = String::from_utf8_lossy(&output.stdout);
    assert!(
        replay_out
            .lines()
            .any(|l| l.starts_with("failed allowed_statuses")),
        "the replay must fail the same check\n{replay_context}"
    );
}

#[test]
fn the_healthy_fixture_finds_nothing_and_its_seed_replays_the_schedules() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let schedules = |name: &str| {
        let reports = dir.path().join(name);
        let (output, context) = explore(
            &fixture(),
            &reports,
            &["--runs", "2", "--seed", "7", "--budget", "5m"],
        );
        assert_eq!(output.status.code(), Some(0), "expected exit 0\n{context}");
        let report = read_json(&reports.join("explore-retries/explore.json"), &context);
        assert_eq!(report["outcome"], "no_failure", "{context}");
        let runs = report["runs"].as_array().cloned().unwrap_or_default();
        assert_eq!(runs.len(), 2, "{context}");
        runs.iter()
            .map(|r| r["schedule"].clone())
            .collect::<Vec<Value>>()
    };
    let first = schedules("first");
    assert_ne!(first[0], first[1], "two draws of one seed differ");
    assert_eq!(
        first,
        schedules("second"),
        "the same seed draws the same schedules"
    );
}
