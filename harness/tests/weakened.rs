//! The harness must catch bugs, not just pass. Each weakened scenario runs
//! the real `gauntlet run` against an orchestrator weakened by a valid
//! configuration (retries off, breaker off, a queue of one); the run must
//! exit 1 and name the check that broke. A check that found no evidence
//! must fail the run as `vacuous`, never pass. And the mutant catalogue
//! (`fixtures/mutants/`) must stay applicable: a stale mutant breaks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `gauntlet run SCENARIO --report-dir REPORTS`: its output, its stdout, and
/// everything it said, for failure messages.
fn run(scenario: &Path, reports: &Path) -> (std::process::Output, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .arg("run")
        .arg(scenario)
        .arg("--report-dir")
        .arg(reports)
        .env("NO_COLOR", "1")
        .output()
        .expect("gauntlet runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let context = format!(
        "--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output, stdout, context)
}

/// Runs `gauntlet run` on a weakened scenario and checks that it fails
/// naming `check`. Prints everything the run said when it does not.
fn check(file: &str, check: &str) {
    let reports = tempfile::tempdir().expect("a temporary directory");
    let scenario = root().join("fixtures/scenarios/weakened").join(file);
    let (output, stdout, context) = run(&scenario, reports.path());
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

#[test]
fn a_redis_that_persists_nothing_loses_acknowledged_jobs_when_killed() {
    check("redis-without-persistence.yaml", "no_lost_jobs");
}

#[test]
fn a_rate_limit_check_that_saw_no_429_is_vacuous_and_fails_the_run() {
    let reports = tempfile::tempdir().expect("a temporary directory");
    let scenario = root().join("fixtures/scenarios/vacuous/rate-limit-never-hit.yaml");
    let (output, stdout, context) = run(&scenario, reports.path());
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

#[test]
fn every_mutant_applies_and_is_listed() {
    let dir = root().join("fixtures/mutants");
    let readme =
        std::fs::read_to_string(dir.join("README.md")).expect("fixtures/mutants/README.md");
    let mut patches: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/mutants")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    // At least one per row of design.md's seed-guarantee table that the
    // system implements so far.
    assert!(patches.len() >= 12, "{patches:?}");
    // `git apply --check` needs a work tree; outside one (an unpacked
    // tarball) the check cannot be made, which CI never is.
    let in_git = Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(root())
        .output()
        .is_ok_and(|o| o.status.success());
    if !in_git {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true runs in a git checkout"
        );
        eprintln!("not checked: the workspace is not a git work tree");
    }
    let mut stale = Vec::new();
    for patch in &patches {
        let name = patch
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not listed in fixtures/mutants/README.md"
        );
        // The header scripts/mutants.sh reads: what it breaks, the guarantee,
        // and the scenarios to try first, which must exist.
        let text = std::fs::read_to_string(patch).expect("the patch reads");
        let field = |key: &str| {
            text.lines()
                .take_while(|l| !l.starts_with("diff --git"))
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        assert!(field("Mutant:").is_some(), "{name}: no `Mutant:` line");
        assert!(
            field("Guarantee:").is_some(),
            "{name}: no `Guarantee:` line"
        );
        let scenarios =
            field("Scenarios:").unwrap_or_else(|| panic!("{name}: no `Scenarios:` line"));
        for scenario in scenarios.split_whitespace() {
            assert!(
                root().join(format!("scenarios/{scenario}.yaml")).is_file(),
                "{name} names scenario {scenario}, which scenarios/ lacks"
            );
        }
        if in_git {
            let output = Command::new("git")
                .arg("apply")
                .arg("--check")
                .arg(patch)
                .current_dir(root())
                .output()
                .expect("git runs");
            if !output.status.success() {
                stale.push(format!(
                    "{name}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "mutants that no longer apply:\n{}",
        stale.join("\n")
    );
}
