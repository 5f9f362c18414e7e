//! A failed run prints the command that replays it, and that command, run
//! as printed, fails the same way: the real binary runs a weakened scenario
//! (retries off, so its error-rate SLO fails), then the printed command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gauntlet::checks::{CheckKind, CheckResult};
use gauntlet::report::Report;

/// The scenario run first, relative to the workspace root.
const SCENARIO: &str = "fixtures/scenarios/weakened/no-retries.yaml";

/// The workspace root, the binary's working directory in both runs (the
/// replay command names its file relative to where the run started).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness is inside the workspace")
        .to_path_buf()
}

/// Runs the binary with `args` in the workspace root, without colour and
/// with its state records in `state`, as the other CLI tests do.
fn gauntlet(args: &[&str], state: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .current_dir(root())
        .env("GAUNTLET_STATE_DIR", state)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("gauntlet starts")
}

/// Everything a run said, for failure messages.
fn shown(args: &[&str], output: &Output) -> String {
    format!(
        "gauntlet {args:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The report.json of the one scenario run into `reports`.
fn report(reports: &Path) -> Report {
    let name = gauntlet::scenario::load_file(&root().join(SCENARIO))
        .expect("the weakened scenario is valid")
        .name;
    let path = reports.join(name).join("report.json");
    let text = std::fs::read_to_string(&path).expect("report.json is written");
    Report::from_json(&text).expect("report.json reads back")
}

/// What identifies a check across runs: its kind, name and window.
fn failed_checks(report: &Report) -> Vec<(CheckKind, String, Option<String>)> {
    report
        .checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c: &CheckResult| (c.kind, c.name.clone(), c.window.clone()))
        .collect()
}

#[test]
fn a_failed_run_prints_a_replay_command_that_fails_the_same_check() {
    let state = tempfile::tempdir().expect("a temporary directory");
    let first_reports = tempfile::tempdir().expect("a temporary directory");
    let first_dir = first_reports.path().display().to_string();
    let args = ["run", SCENARIO, "--report-dir", &first_dir];
    let output = gauntlet(&args, state.path());
    let context = shown(&args, &output);
    assert_eq!(output.status.code(), Some(1), "{context}");

    // The summary ends with the replay line; after it the engine names
    // where the report and the run's index went (`report: DIR/report.html`,
    // `index: DIR/index.html`), which are no part of the summary.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines().filter(|l| !l.trim().is_empty()).rev();
    let mut last = lines.next().expect("the run printed something");
    while last.starts_with("report: ") || last.starts_with("index: ") {
        last = lines.next().expect("a summary before the report lines");
    }
    let replay = last
        .strip_prefix("replay: ")
        .unwrap_or_else(|| panic!("the summary's last line is not `replay: ...`\n{context}"));

    let first = report(first_reports.path());
    assert!(!first.passed, "{context}");
    assert_eq!(first.replay_command.as_deref(), Some(replay), "{context}");
    let words: Vec<&str> = replay.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"gauntlet"), "{replay}");
    assert_eq!(words.get(1..3), Some(&["run", SCENARIO][..]), "{replay}");
    let seed = words
        .iter()
        .position(|w| *w == "--seed")
        .and_then(|i| words.get(i + 1))
        .and_then(|s| s.parse::<u64>().ok());
    assert_eq!(seed, Some(first.seed), "{replay}");

    // The command as printed, with only the binary's path for its name and
    // a report directory of its own.
    let second_reports = tempfile::tempdir().expect("a temporary directory");
    let second_dir = second_reports.path().display().to_string();
    let mut replay_args: Vec<&str> = words[1..].to_vec();
    replay_args.extend(["--report-dir", &second_dir]);
    let output = gauntlet(&replay_args, state.path());
    let context = shown(&replay_args, &output);
    assert_eq!(output.status.code(), Some(1), "{context}");

    let second = report(second_reports.path());
    assert_eq!(second.seed, first.seed, "{context}");
    assert_eq!(second.config_digest, first.config_digest, "{context}");
    // The check the weakening breaks; other checks are timing-sensitive
    // enough that demanding identical lists would make this test flaky.
    let broken = (
        CheckKind::Slo,
        "error_rate".to_owned(),
        Some("all".to_owned()),
    );
    let failed = failed_checks(&first);
    assert!(failed.contains(&broken), "first run failed {failed:?}");
    let failed = failed_checks(&second);
    assert!(
        failed.contains(&broken),
        "replay failed {failed:?}\n{context}"
    );
}
