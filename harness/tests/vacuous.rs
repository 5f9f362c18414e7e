//! A check that found no evidence is not a pass. `gauntlet run` on a
//! scenario whose load never reaches the rate limiter must exit 1 with
//! `rate_limit_respected` judged `vacuous`, in the summary, in report.json
//! and in verdict.yaml.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[test]
fn a_rate_limit_check_that_saw_no_429_is_vacuous_and_fails_the_run() {
    let reports = tempfile::tempdir().expect("a temporary directory");
    let scenario = root().join("fixtures/scenarios/vacuous/rate-limit-never-hit.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .arg("run")
        .arg(&scenario)
        .arg("--report-dir")
        .arg(reports.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("gauntlet runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context = format!(
        "--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{context}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("vacuous rate_limit_respected")),
        "{context}"
    );
    assert!(
        stdout.contains("vacuous: no request was refused with 429"),
        "{context}"
    );
    let dir = reports.path().join("rate-limit-never-hit");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("report.json")).expect("report.json written"),
    )
    .expect("report.json is JSON");
    assert_eq!(report["passed"], serde_json::json!(false), "{context}");
    let check = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "rate_limit_respected"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(check["verdict"], "vacuous", "{check}");
    assert_eq!(check["exercised"], 0, "{check}");
    // The fault itself was applied: the run did what the scenario says.
    let applied = report["checks"]
        .as_array()
        .map(|c| {
            c.iter()
                .any(|c| c["name"] == "fault_applied" && c["verdict"] == "pass")
        })
        .unwrap_or(false);
    assert!(applied, "{report}");
    let verdict = std::fs::read_to_string(dir.join("verdict.yaml")).expect("verdict.yaml");
    assert!(
        verdict.contains("name: rate_limit_respected")
            && verdict.contains("verdict: vacuous")
            && verdict.contains("exercised: false"),
        "{verdict}"
    );
}
