//! The Markdown summary of a run (`gauntlet run --summary-md FILE`), in
//! GitHub-flavoured Markdown for `$GITHUB_STEP_SUMMARY`: the overall result,
//! then per scenario a heading, the replay command of a failed one, a table
//! of its checks, failed ones first, and the evidence of each failure.

use std::fmt::Write as _;

use super::Report;
use crate::checks::{CheckResult, MAX_EVIDENCE_LINES, Verdict};

/// The most evidence lines shown per check: the report's own cap, and the
/// line with which it counts the rest. A report.json edited by hand may hold
/// more; those are counted, not shown, so a summary stays small (GitHub
/// refuses step summaries over 1 MiB).
const EVIDENCE_LINES: usize = MAX_EVIDENCE_LINES + 1;

/// The Markdown summary of `reports`: a heading with the overall result and
/// counts, then per scenario a `###` heading (verdict, seed, backend,
/// duration), the replay command of a failed scenario in a code span, a
/// table of its checks (failed and vacuous first, then the rest in report
/// order) and the evidence of each check that did not pass, folded in a
/// `<details>` block.
pub fn render(reports: &[Report]) -> String {
    let mut out = String::new();
    overall(&mut out, reports);
    for report in reports {
        scenario(&mut out, report);
    }
    out
}

/// The first line: the result of the whole run and its counts.
fn overall(out: &mut String, reports: &[Report]) {
    if reports.is_empty() {
        let _ = writeln!(out, "## gauntlet: no scenario ran");
        return;
    }
    let (mut passed, mut failed, mut vacuous) = (0, 0, 0);
    for report in reports {
        let tally = super::tally(report);
        passed += tally.passed;
        failed += tally.failed;
        vacuous += tally.vacuous;
    }
    let failed_scenarios = reports.iter().filter(|r| !r.passed).count();
    let scenarios = plural(reports.len(), "scenario");
    let checks = format!("{passed} checks passed, {failed} failed, {vacuous} vacuous");
    if failed_scenarios == 0 {
        let _ = writeln!(out, "## gauntlet: PASSED ({scenarios}; {checks})");
    } else {
        let _ = writeln!(
            out,
            "## gauntlet: FAILED ({failed_scenarios} of {scenarios} failed; {checks})"
        );
    }
}

/// One scenario's section.
fn scenario(out: &mut String, report: &Report) {
    let verdict = if report.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        out,
        "\n### {}: {verdict} (seed {}, backend {}, {:.1}s)\n",
        inline(&report.scenario),
        report.seed,
        inline(&report.backend),
        report.duration_ms as f64 / 1000.0
    );
    if !report.passed
        && let Some(replay) = &report.replay_command
    {
        let _ = writeln!(out, "Replay: {}\n", code_span(replay));
    }
    let _ = writeln!(
        out,
        "| KIND | CHECK | WINDOW | RESULT | EXPECTED | OBSERVED |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    // Failed and vacuous checks first, each group in report order: the
    // reader came for what broke.
    let (not_passed, passed): (Vec<&CheckResult>, Vec<&CheckResult>) =
        report.checks.iter().partition(|c| !c.passed());
    for check in not_passed.iter().chain(&passed) {
        let result = match check.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "**FAIL**",
            Verdict::Vacuous => "**VACUOUS**",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {result} | {} | {} |",
            check.kind.as_str(),
            inline(&check.name),
            check
                .window
                .as_deref()
                .map_or_else(|| "-".to_owned(), inline),
            inline(&check.expected),
            inline(&check.observed),
        );
    }
    for check in not_passed.iter().filter(|c| !c.evidence.is_empty()) {
        evidence(out, check);
    }
}

/// The evidence of a check that did not pass, folded.
fn evidence(out: &mut String, check: &CheckResult) {
    let mut label = format!(
        "{} {} {}",
        check.verdict.as_str(),
        check.kind.as_str(),
        check.name
    );
    if let Some(window) = &check.window {
        label.push_str(&format!(" [{window}]"));
    }
    let mut lines: Vec<String> = check
        .evidence
        .iter()
        .take(EVIDENCE_LINES)
        .map(|l| l.replace(['\r', '\n'], " "))
        .collect();
    if check.evidence.len() > EVIDENCE_LINES {
        let more = check.evidence.len() - EVIDENCE_LINES;
        lines.push(format!("({} not shown)", plural(more, "more line")));
    }
    let text = lines.join("\n");
    let fence = "`".repeat(longest_backtick_run(&text).max(2) + 1);
    // The blank lines around the fenced block make GitHub render it as
    // Markdown inside the HTML block.
    let _ = writeln!(
        out,
        "\n<details>\n<summary>{}</summary>\n\n{fence}text\n{text}\n{fence}\n\n</details>",
        html(&label)
    );
}

/// `n thing` or `n things`.
fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("{n} {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// `text` as literal text in a table cell or a heading: pipes (which would
/// end the cell) and Markdown's inline syntax escaped, newlines as `<br>`.
/// Characters that only mean something in some places (`<` before a tag
/// name, `&` before an entity name, `_` at a word's edge, `]` before a link
/// target) are escaped only there, so the raw text stays readable
/// (`<= 5s`, `latency_p99`).
fn inline(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let before = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
        let after = chars.get(i + 1).copied();
        let escape = match c {
            '\r' if after == Some('\n') => continue,
            '\r' | '\n' => {
                out.push_str("<br>");
                continue;
            }
            '|' | '\\' | '`' | '*' | '~' => true,
            '<' => after.is_some_and(|a| a.is_ascii_alphabetic() || "/!?".contains(a)),
            '&' => after.is_some_and(|a| a.is_ascii_alphanumeric() || a == '#'),
            '_' => {
                !(before.is_some_and(char::is_alphanumeric)
                    && after.is_some_and(char::is_alphanumeric))
            }
            ']' => after.is_some_and(|a| a == '(' || a == '['),
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `text` as HTML text.
fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text` in a code span, delimited by more backticks than it holds in a
/// row (and padded when it starts or ends with one), so it shows verbatim.
fn code_span(text: &str) -> String {
    let text = text.replace(['\r', '\n'], " ");
    let ticks = "`".repeat(longest_backtick_run(&text) + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{ticks}{pad}{text}{pad}{ticks}")
}

/// The longest run of backticks in `text`.
fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Report {
        let path = format!(
            "{}/../fixtures/reports/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("the fixture is readable");
        Report::from_json(&text).expect("the fixture is a report")
    }

    #[test]
    fn markdown_of_the_fixtures() {
        insta::assert_snapshot!(render(&[fixture("smoke"), fixture("weakened-no-retries")]));
    }

    #[test]
    fn markdown_of_a_passed_run() {
        insta::assert_snapshot!(render(&[fixture("smoke")]));
    }

    #[test]
    fn markdown_of_nothing_says_so() {
        assert_eq!(render(&[]), "## gauntlet: no scenario ran\n");
    }

    #[test]
    fn failed_checks_come_first_and_the_rest_keep_their_order() {
        let mut report = fixture("smoke");
        report.passed = false;
        report.checks[4].verdict = Verdict::Fail;
        report.checks[4].evidence = vec!["job j-1 lost".to_owned()];
        report.checks[2].verdict = Verdict::Vacuous;
        report.checks[2].evidence = vec!["vacuous: no request was sent".to_owned()];
        let checks = report.checks.len();
        let text = render(&[report]);
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| KIND") && !l.starts_with("| ---"))
            .collect();
        assert_eq!(rows.len(), checks);
        assert!(rows[0].starts_with("| slo | error_rate |"), "{text}");
        assert!(rows[0].contains("**VACUOUS**"), "{text}");
        assert!(
            rows[1].starts_with("| invariant | no_lost_jobs |"),
            "{text}"
        );
        assert!(rows[2].starts_with("| slo | latency_p99 |"), "{text}");
        assert!(rows[3].starts_with("| slo | latency_p50 |"), "{text}");
        assert!(
            text.contains("<summary>vacuous slo error_rate [all]</summary>"),
            "{text}"
        );
        assert!(text.contains("\njob j-1 lost\n"), "{text}");
        assert!(
            text.contains("Replay: `gauntlet run scenarios/smoke.yaml --seed 1`"),
            "{text}"
        );
    }

    #[test]
    fn cells_escape_pipes_newlines_and_inline_syntax() {
        assert_eq!(inline("a | b"), "a \\| b");
        assert_eq!(inline("one\ntwo\r\nthree"), "one<br>two<br>three");
        assert_eq!(inline("<= 5s"), "<= 5s");
        assert_eq!(inline("<script>"), "\\<script>");
        assert_eq!(inline("latency_p99 _x_"), "latency_p99 \\_x\\_");
        assert_eq!(inline("`code` *b*"), "\\`code\\` \\*b\\*");
        assert_eq!(inline("[a](b) [200, 503]"), "[a\\](b) [200, 503]");
        assert_eq!(inline("&amp; & b"), "\\&amp; & b");
    }

    #[test]
    fn evidence_is_bounded_and_fenced_beyond_its_backticks() {
        let mut report = fixture("weakened-no-retries");
        let check = &mut report.checks[0];
        check.evidence = (0..EVIDENCE_LINES + 5)
            .map(|i| format!("line {i}"))
            .collect();
        check.evidence[0] = "body ```json``` here".to_owned();
        let text = render(&[report]);
        assert!(
            text.contains(&format!("line {}", EVIDENCE_LINES - 1)),
            "{text}"
        );
        assert!(!text.contains(&format!("line {EVIDENCE_LINES}")), "{text}");
        assert!(text.contains("(5 more lines not shown)"), "{text}");
        assert!(
            text.contains("\n````text\nbody ```json``` here\n"),
            "{text}"
        );
    }

    #[test]
    fn code_spans_hold_backticks() {
        assert_eq!(code_span("gauntlet run a.yaml"), "`gauntlet run a.yaml`");
        assert_eq!(code_span("run 'a`b.yaml'"), "``run 'a`b.yaml'``");
        assert_eq!(code_span("`x`"), "`` `x` ``");
    }
}
