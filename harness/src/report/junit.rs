//! JUnit XML of a run (`gauntlet run --junit FILE`), for CI systems that
//! show test results: a testsuite per scenario, a testcase per check.
//!
//! A vacuous check is a `failure` too (of type `vacuous`), because it fails
//! the run; a CI system that only knew of failures would otherwise show a
//! failed run whose tests all passed.

use std::collections::BTreeMap;
use std::time::Duration;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::Report;
use crate::checks::{CheckResult, Verdict};

/// The JUnit XML of `reports`: a testsuite per scenario (named after it,
/// with its seed, backend, config digest and replay command as properties,
/// and its wall time), a testcase per check (`slo latency_p99 [all]`), whose
/// failure message is what the check observed and whose text is its
/// evidence and the replay command.
///
/// Checks carry no timing of their own, so testcases have no `time`.
/// Serialising cannot fail on these inputs (every string is ours, and
/// quick-junit drops characters XML cannot hold); should it fail all the
/// same, the result is an XML document holding only a comment that says
/// why, so that the caller still writes a file a CI system can read rather
/// than losing the run's other outputs.
pub fn render(name: &str, reports: &[Report]) -> String {
    let mut junit = quick_junit::Report::new(name);
    junit.add_test_suites(reports.iter().map(suite));
    junit.to_string().unwrap_or_else(|e| {
        // `--` may not appear inside an XML comment.
        let why = e.to_string().replace("--", "- -");
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- cannot render the junit report: {why} -->\n")
    })
}

/// One scenario's testsuite.
fn suite(report: &Report) -> TestSuite {
    let mut suite = TestSuite::new(report.scenario.as_str());
    suite.set_time(Duration::from_millis(report.duration_ms));
    suite.add_property(("seed", report.seed.to_string().as_str()));
    suite.add_property(("backend", report.backend.as_str()));
    suite.add_property(("config_digest", report.config_digest.as_str()));
    if let Some(replay) = &report.replay_command {
        suite.add_property(("replay_command", replay.as_str()));
    }
    let names = case_names(&report.checks);
    for (check, name) in report.checks.iter().zip(names) {
        suite.add_test_case(case(report, check, name));
    }
    suite
}

/// One check's testcase.
fn case(report: &Report, check: &CheckResult, name: String) -> TestCase {
    let status = match check.verdict {
        Verdict::Pass => TestCaseStatus::success(),
        Verdict::Fail | Verdict::Vacuous => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(check.observed.as_str());
            status.set_type(check.verdict.as_str());
            let mut text = check.evidence.join("\n");
            if let Some(replay) = &report.replay_command {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str("replay: ");
                text.push_str(replay);
            }
            if !text.is_empty() {
                status.set_description(text);
            }
            status
        }
    };
    let mut case = TestCase::new(name, status);
    case.set_classname(report.scenario.as_str());
    case
}

/// The testcases' names: kind, name and window (`run fault_applied
/// [slow-llm]`), with `#2`, `#3`... after a name an earlier check of the
/// same scenario already has (two SLOs on one metric and window), since CI
/// systems merge testcases of equal names.
fn case_names(checks: &[CheckResult]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    checks
        .iter()
        .map(|check| {
            let mut name = format!("{} {}", check.kind.as_str(), check.name);
            if let Some(window) = &check.window {
                name.push_str(&format!(" [{window}]"));
            }
            let count = seen.entry(name.clone()).or_insert(0);
            *count += 1;
            if *count > 1 {
                name.push_str(&format!(" #{count}"));
            }
            name
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckKind;

    fn fixture(name: &str) -> Report {
        let path = format!(
            "{}/../fixtures/reports/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("the fixture is readable");
        Report::from_json(&text).expect("the fixture is a report")
    }

    fn fixtures() -> Vec<Report> {
        vec![fixture("smoke"), fixture("weakened-no-retries")]
    }

    #[test]
    fn junit_of_the_fixtures() {
        insta::assert_snapshot!(render("gauntlet", &fixtures()));
    }

    #[test]
    fn junit_reads_back_with_a_testcase_per_check_and_a_failure_per_failed_check() {
        let reports = fixtures();
        let xml = render("gauntlet", &reports);
        let junit = quick_junit::Report::deserialize_from_str(&xml).expect("the junit reads back");
        assert_eq!(junit.name.as_str(), "gauntlet");
        assert_eq!(junit.test_suites.len(), reports.len());
        let mut not_passed_in_all = 0;
        for (suite, report) in junit.test_suites.iter().zip(&reports) {
            assert_eq!(suite.name.as_str(), report.scenario);
            assert_eq!(suite.test_cases.len(), report.checks.len());
            let tally = crate::report::tally(report);
            assert_eq!(suite.failures, tally.failed + tally.vacuous);
            assert_eq!(suite.errors, 0);
            assert_eq!(suite.time, Some(Duration::from_millis(report.duration_ms)));
            let seed = suite
                .properties
                .iter()
                .find(|p| p.name.as_str() == "seed")
                .expect("a seed property");
            assert_eq!(seed.value.as_str(), report.seed.to_string());
            not_passed_in_all += tally.failed + tally.vacuous;
            let names: std::collections::BTreeSet<&str> =
                suite.test_cases.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names.len(), suite.test_cases.len(), "names are unique");
        }
        assert_eq!(junit.failures, not_passed_in_all);
        assert_eq!(junit.failures, 1, "the weakened fixture fails one check");

        let weakened = &junit.test_suites[1];
        let failing: Vec<&TestCase> = weakened
            .test_cases
            .iter()
            .filter(|c| matches!(c.status, TestCaseStatus::NonSuccess { .. }))
            .collect();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].name.as_str(), "slo error_rate [all]");
        assert_eq!(
            failing[0].classname.as_ref().map(|c| c.as_str()),
            Some("weakened-no-retries")
        );
        let TestCaseStatus::NonSuccess {
            kind,
            message,
            ty,
            description,
            ..
        } = &failing[0].status
        else {
            panic!("filtered on NonSuccess");
        };
        assert_eq!(*kind, NonSuccessKind::Failure);
        assert_eq!(
            message.as_ref().map(|m| m.as_str()),
            Some("0.1375 (11 of 80)")
        );
        assert_eq!(ty.as_ref().map(|t| t.as_str()), Some("fail"));
        let description = description.as_ref().expect("the evidence").as_str();
        assert!(description.starts_with("[0.0s, 8.0s): 0.1375 (11 of 80)\n"));
        assert!(description.ends_with(
            "\nreplay: gauntlet run fixtures/scenarios/weakened/no-retries.yaml --seed 11"
        ));
    }

    #[test]
    fn a_vacuous_check_is_a_failure_of_type_vacuous() {
        let mut report = fixture("smoke");
        report.passed = false;
        let check = &mut report.checks[0];
        check.verdict = Verdict::Vacuous;
        check.evidence = vec!["vacuous: no request was sent".to_owned()];
        let xml = render("gauntlet", &[report]);
        let junit = quick_junit::Report::deserialize_from_str(&xml).expect("the junit reads back");
        assert_eq!(junit.failures, 1);
        let TestCaseStatus::NonSuccess {
            ty, description, ..
        } = &junit.test_suites[0].test_cases[0].status
        else {
            panic!("a vacuous check is not a success");
        };
        assert_eq!(ty.as_ref().map(|t| t.as_str()), Some("vacuous"));
        assert_eq!(
            description.as_ref().map(|d| d.as_str()),
            Some(
                "vacuous: no request was sent\nreplay: gauntlet run scenarios/smoke.yaml --seed 1"
            )
        );
    }

    #[test]
    fn repeated_check_names_are_numbered() {
        let mut report = fixture("smoke");
        let mut twin = report.checks[0].clone();
        twin.expected = "<= 1s".to_owned();
        report.checks.insert(1, twin);
        let names = case_names(&report.checks);
        assert_eq!(names[0], "slo latency_p99 [all]");
        assert_eq!(names[1], "slo latency_p99 [all] #2");
        assert!(names.contains(&"invariant no_lost_jobs".to_owned()));
        assert!(names.contains(&"run fault_applied [slow-llm]".to_owned()));
        assert_eq!(report.checks[0].kind, CheckKind::Slo);
    }
}
