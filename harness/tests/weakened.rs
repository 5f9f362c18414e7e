//! The harness must catch bugs, not just pass. Each scenario here runs the
//! real `gauntlet run` against an orchestrator weakened by a valid
//! configuration (retries off, breaker off, a queue of one); the run must
//! exit 1 and name the check that broke.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs `gauntlet run` on a weakened scenario and checks that it fails
/// naming `check`. Prints everything the run said when it does not.
fn check(file: &str, check: &str) {
    let reports = tempfile::tempdir().expect("a temporary directory");
    let scenario = root().join("fixtures/scenarios/weakened").join(file);
    let output = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .arg("run")
        .arg(&scenario)
        .arg("--report-dir")
        .arg(reports.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("gauntlet runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{file}: expected exit 1\n{context}"
    );
    let failed_line = format!("failed {check}");
    assert!(
        stdout.lines().any(|l| l.starts_with(&failed_line)),
        "{file}: expected a line starting with {failed_line:?}\n{context}"
    );
    let report = std::fs::read_to_string(
        reports
            .path()
            .join(scenario_name(&scenario))
            .join("report.json"),
    )
    .expect("report.json written");
    let report: serde_json::Value = serde_json::from_str(&report).expect("report.json is JSON");
    assert_eq!(
        report["passed"],
        serde_json::Value::Bool(false),
        "{context}"
    );
}

fn scenario_name(path: &Path) -> String {
    gauntlet::scenario::load_file(path)
        .map(|s| s.name)
        .expect("the weakened scenario is valid")
}

#[test]
fn retries_off_fails_the_error_rate_slo() {
    check("no-retries.yaml", "error_rate");
}

#[test]
fn breaker_off_fails_the_fail_fast_latency_slo() {
    check("no-breaker.yaml", "latency_p50");
}

#[test]
fn a_tiny_queue_fails_allowed_statuses() {
    check("tiny-queue.yaml", "allowed_statuses");
}
