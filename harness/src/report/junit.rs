//! JUnit XML of a run (`gauntlet run --junit FILE`).

use super::Report;

/// The JUnit XML of `reports`: a testsuite per scenario, a testcase per check.
pub fn render(name: &str, reports: &[Report]) -> String {
    let _ = (name, reports);
    String::new()
}
