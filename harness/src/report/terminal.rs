//! The terminal summary: one row per check, then the evidence of each
//! failure. Colour only when stdout is a terminal and `NO_COLOR` is unset.

use std::fmt::Write as _;
use std::io::IsTerminal;

use super::Report;
use crate::checks::{CheckKind, Verdict};

/// Whether to colour output: stdout is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>).
pub fn use_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

fn paint(text: &str, code: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Renders the summary of one run. Columns are padded to their widest cell,
/// so the table reads the same with or without colour.
pub fn summary(report: &Report, colour: bool) -> String {
    let rows: Vec<[String; 5]> = report
        .checks
        .iter()
        .map(|c| {
            let kind = match c.kind {
                CheckKind::Slo => "slo",
                CheckKind::Invariant => "invariant",
                CheckKind::Run => "run",
            };
            [
                kind.to_owned(),
                c.name.clone(),
                c.window.clone().unwrap_or_else(|| "-".to_owned()),
                c.expected.clone(),
                c.observed.clone(),
            ]
        })
        .collect();
    let headers = ["KIND", "CHECK", "WINDOW", "EXPECTED", "OBSERVED"];
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count()).min(60);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} (seed {}, backend {}, {:.1}s)",
        paint("scenario", "1", colour),
        report.scenario,
        report.seed,
        report.backend,
        report.duration_ms as f64 / 1000.0
    );
    let line = |cells: &[String; 5]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(w).collect();
                format!("{c:<w$}")
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(out, "  RESULT   {}", line(&headers.map(str::to_owned)));
    for (row, check) in rows.iter().zip(&report.checks) {
        // Padded before painting, so escape codes do not count as width.
        let result = match check.verdict {
            Verdict::Pass => paint("pass   ", "32", colour),
            Verdict::Fail => paint("FAIL   ", "1;31", colour),
            Verdict::Vacuous => paint("VACUOUS", "1;33", colour),
        };
        let _ = writeln!(out, "  {result}  {}", line(row).trim_end());
    }
    for check in report.checks.iter().filter(|c| !c.passed()) {
        let window = check
            .window
            .as_deref()
            .map(|w| format!(" [{w}]"))
            .unwrap_or_default();
        let label = match check.verdict {
            Verdict::Vacuous => paint("vacuous", "1;33", colour),
            _ => paint("failed", "1;31", colour),
        };
        let _ = writeln!(out, "{label} {}{window}: {}", check.name, check.observed);
        for e in &check.evidence {
            let _ = writeln!(out, "    {e}");
        }
    }
    let tally = super::tally(report);
    let verdict = if tally.failed + tally.vacuous == 0 {
        paint("PASSED", "1;32", colour)
    } else {
        paint("FAILED", "1;31", colour)
    };
    let _ = writeln!(
        out,
        "{verdict}: {} checks passed, {} failed, {} vacuous",
        tally.passed, tally.failed, tally.vacuous
    );
    out
}
