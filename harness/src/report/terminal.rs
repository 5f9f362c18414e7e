//! The terminal summary: one row per check, then the evidence of each
//! failure, the verdict and, for a failed run, the command that replays it.
//! Colour only when stdout is a terminal and `NO_COLOR` is unset.

use std::fmt::Write as _;
use std::io::IsTerminal;

use super::Report;
use crate::checks::Verdict;

/// The table's width when `COLUMNS` is unset or not a number.
const DEFAULT_WIDTH: usize = 120;
/// The narrowest table width taken from `COLUMNS`: below it, wrapped
/// columns would hold a word or two a line and stop being readable.
const MIN_WIDTH: usize = 60;
/// The widest table width taken from `COLUMNS`, so that a bogus value
/// cannot make every line megabytes of padding.
const MAX_WIDTH: usize = 1000;
/// The widest a narrow column (result, kind, check, window) grows; their
/// cells are single words in practice, so only a pathological name wraps.
const NARROW_CAP: usize = 32;
/// The narrowest the expected and observed columns shrink, whatever the
/// width: past that they would be unreadable, and the table is let overflow
/// a narrow terminal instead.
const MIN_WIDE: usize = 16;
/// The indent before the table.
const INDENT: &str = "  ";
/// The gap between columns.
const GAP: &str = "  ";

/// The table's columns.
const HEADERS: [&str; 6] = ["RESULT", "KIND", "CHECK", "WINDOW", "EXPECTED", "OBSERVED"];
/// How many of the columns, from the left, are narrow: they keep their
/// widest cell, up to [`NARROW_CAP`], and the rest share what is left.
const NARROW: usize = 4;

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

/// The width the summary's table fits: the `COLUMNS` environment variable
/// when it is set and a number, else [`DEFAULT_WIDTH`].
pub(crate) fn terminal_width() -> usize {
    width_from(std::env::var("COLUMNS").ok().as_deref())
}

/// The table width for a value of `COLUMNS`: the number, kept within
/// [`MIN_WIDTH`] and [`MAX_WIDTH`]; [`DEFAULT_WIDTH`] when there is none or
/// it is not a positive number.
fn width_from(columns: Option<&str>) -> usize {
    columns
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
        .map_or(DEFAULT_WIDTH, |c| c.clamp(MIN_WIDTH, MAX_WIDTH))
}

/// Renders the summary of one run, its table fitting the terminal's width
/// (see [`terminal_width`]).
pub fn summary(report: &Report, colour: bool) -> String {
    summary_at(report, colour, terminal_width())
}

/// Renders the summary of one run with its table fitted to `width`
/// characters. Cells wrap at word boundaries, so the table reads the same
/// with or without colour and no text is cut.
pub(crate) fn summary_at(report: &Report, colour: bool, width: usize) -> String {
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
    out.push_str(&table(report, colour, width));
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
    // Last, so that whoever reads a failed run's output (or its last line,
    // in a script) has the command that replays it.
    if !report.passed
        && let Some(replay) = &report.replay_command
    {
        let _ = writeln!(out, "replay: {replay}");
    }
    out
}

/// The cells of the table's rows, one row per check.
fn rows(report: &Report) -> Vec<[String; 6]> {
    report
        .checks
        .iter()
        .map(|c| {
            let result = match c.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Vacuous => "VACUOUS",
            };
            [
                result.to_owned(),
                c.kind.as_str().to_owned(),
                c.name.clone(),
                c.window.clone().unwrap_or_else(|| "-".to_owned()),
                c.expected.clone(),
                c.observed.clone(),
            ]
        })
        .collect()
}

/// The table: a header, then each check's row, its cells wrapped onto as
/// many lines as the longest needs.
fn table(report: &Report, colour: bool, width: usize) -> String {
    let rows = rows(report);
    let widths = layout(&rows, width);
    let mut out = String::new();
    write_row(&mut out, &HEADERS.map(str::to_owned), widths, None);
    for (row, check) in rows.iter().zip(&report.checks) {
        let code = match check.verdict {
            Verdict::Pass => "32",
            Verdict::Fail => "1;31",
            Verdict::Vacuous => "1;33",
        };
        write_row(&mut out, row, widths, colour.then_some(code));
    }
    out
}

/// Writes one row, its cells wrapped to `widths`, continuation lines
/// aligned under their column. The result cell (the first) is painted with
/// `paint_code` when there is one, after padding, so that escape codes do
/// not count as width.
fn write_row(out: &mut String, row: &[String; 6], widths: [usize; 6], paint_code: Option<&str>) {
    let cells: Vec<Vec<String>> = row.iter().zip(widths).map(|(c, w)| wrap(c, w)).collect();
    let height = cells.iter().map(Vec::len).max().unwrap_or(1);
    for i in 0..height {
        let mut line = String::from(INDENT);
        for (column, (lines, w)) in cells.iter().zip(widths).enumerate() {
            if column > 0 {
                line.push_str(GAP);
            }
            let text = lines.get(i).map_or("", String::as_str);
            let padded = format!("{text:<w$}");
            match paint_code {
                Some(code) if column == 0 && !text.is_empty() => {
                    line.push_str(&paint(&padded, code, true));
                }
                _ => line.push_str(&padded),
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// The columns' widths for a table `width` characters wide: each narrow
/// column as wide as its widest cell (up to [`NARROW_CAP`]); the expected
/// and observed columns as wide as their widest cells if that fits, else
/// sharing what is left between them (neither below [`MIN_WIDE`]), the one
/// that needs less than half keeping what it needs.
fn layout(rows: &[[String; 6]], width: usize) -> [usize; 6] {
    let mut widths = HEADERS.map(|h| h.chars().count());
    // As wide as the widest verdict whatever this run's verdicts, so that
    // tables of different runs line up.
    widths[0] = widths[0].max("VACUOUS".len());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for w in &mut widths[..NARROW] {
        *w = (*w).min(NARROW_CAP);
    }
    let fixed =
        INDENT.len() + widths[..NARROW].iter().sum::<usize>() + GAP.len() * (HEADERS.len() - 1);
    let room = width.saturating_sub(fixed).max(2 * MIN_WIDE);
    let (expected, observed) = (widths[NARROW], widths[NARROW + 1]);
    if expected + observed > room {
        let half = room / 2;
        let (e, o) = if expected <= half {
            (expected, room - expected)
        } else if observed <= room - half {
            (room - observed, observed)
        } else {
            (half, room - half)
        };
        widths[NARROW] = e;
        widths[NARROW + 1] = o;
    }
    widths
}

/// Wraps `text` into lines of at most `width` characters, breaking at
/// whitespace; a word longer than `width` is the only thing broken, into
/// pieces of `width`. Runs of whitespace become one space; no word is lost.
/// Always at least one line, empty for an empty text.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    for word in text.split_whitespace() {
        let n = word.chars().count();
        if len > 0 && len + 1 + n <= width {
            line.push(' ');
            line.push_str(word);
            len += 1 + n;
            continue;
        }
        if len > 0 {
            lines.push(std::mem::take(&mut line));
        }
        let mut rest: Vec<char> = word.chars().collect();
        while rest.len() > width {
            let cut = break_point(&rest[..width]);
            lines.push(rest.drain(..cut).collect());
        }
        len = rest.len();
        line = rest.into_iter().collect();
    }
    if len > 0 || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Where to break a word too long for its line, given as much of it as
/// fits: after the last hyphen, slash or other separator in the later two
/// thirds of it (`x-content-type-` then `options:`), so the pieces read as
/// parts; else where the line ends.
fn break_point(fits: &[char]) -> usize {
    let earliest = fits.len() / 3;
    fits.iter()
        .rposition(|c| "-/:,;._=&?".contains(*c))
        .map(|i| i + 1)
        .filter(|&cut| cut > earliest)
        .unwrap_or(fits.len())
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
    fn summary_of_the_smoke_fixture_at_120() {
        insta::assert_snapshot!(summary_at(&fixture("smoke"), false, 120));
    }

    #[test]
    fn summary_of_the_smoke_fixture_at_80() {
        insta::assert_snapshot!(summary_at(&fixture("smoke"), false, 80));
    }

    #[test]
    fn summary_of_the_weakened_fixture_at_120() {
        insta::assert_snapshot!(summary_at(&fixture("weakened-no-retries"), false, 120));
    }

    #[test]
    fn summary_of_the_weakened_fixture_at_80() {
        insta::assert_snapshot!(summary_at(&fixture("weakened-no-retries"), false, 80));
    }

    #[test]
    fn a_failed_run_ends_with_its_replay_command_and_a_passed_one_does_not() {
        let failed = summary_at(&fixture("weakened-no-retries"), false, 120);
        let last = failed.lines().last().expect("a summary has lines");
        assert_eq!(
            last,
            "replay: gauntlet run fixtures/scenarios/weakened/no-retries.yaml --seed 11"
        );
        let mut unreplayable = fixture("weakened-no-retries");
        unreplayable.replay_command = None;
        let text = summary_at(&unreplayable, false, 120);
        assert!(!text.contains("replay:"), "{text}");
        assert!(text.lines().last().is_some_and(|l| l.starts_with("FAILED")));
        let passed = summary_at(&fixture("smoke"), false, 120);
        assert!(!passed.contains("replay:"), "{passed}");
    }

    #[test]
    fn colour_paints_the_padded_result_and_keeps_the_layout() {
        let report = fixture("weakened-no-retries");
        let plain = summary_at(&report, false, 120);
        let coloured = summary_at(&report, true, 120);
        assert!(coloured.contains("\x1b[1;31mFAIL   \x1b[0m"), "{coloured}");
        let stripped = coloured
            .replace("\x1b[0m", "")
            .replace("\x1b[1;31m", "")
            .replace("\x1b[1;32m", "")
            .replace("\x1b[32m", "")
            .replace("\x1b[1m", "");
        assert_eq!(stripped, plain);
    }

    #[test]
    fn the_width_comes_from_columns_within_limits() {
        assert_eq!(width_from(None), DEFAULT_WIDTH);
        assert_eq!(width_from(Some("80")), 80);
        assert_eq!(width_from(Some(" 100 ")), 100);
        assert_eq!(width_from(Some("wide")), DEFAULT_WIDTH);
        assert_eq!(width_from(Some("")), DEFAULT_WIDTH);
        assert_eq!(width_from(Some("0")), DEFAULT_WIDTH);
        assert_eq!(width_from(Some("-5")), DEFAULT_WIDTH);
        assert_eq!(width_from(Some("20")), MIN_WIDTH);
        assert_eq!(width_from(Some("99999999")), MAX_WIDTH);
    }

    #[test]
    fn wrap_breaks_at_words_and_only_breaks_words_longer_than_the_column() {
        assert_eq!(wrap("", 5), vec![String::new()]);
        assert_eq!(wrap("one two three", 7), vec!["one two", "three"]);
        assert_eq!(wrap("a  b\nc", 10), vec!["a b c"]);
        assert_eq!(
            wrap("a verylongword b", 4),
            vec!["a", "very", "long", "word", "b"]
        );
        assert_eq!(wrap("équipé", 3), vec!["équ", "ipé"]);
        assert_eq!(
            wrap("carries x-content-type-options: nosniff", 22),
            vec!["carries", "x-content-type-", "options: nosniff"]
        );
    }

    #[test]
    fn no_word_is_split_across_lines_and_none_is_lost() {
        for name in ["smoke", "weakened-no-retries"] {
            let report = fixture(name);
            let rows = rows(&report);
            for width in [MIN_WIDTH, 80, 100, DEFAULT_WIDTH, 200] {
                let widths = layout(&rows, width);
                let text = table(&report, false, width);
                let tokens: std::collections::BTreeSet<&str> = text.split_whitespace().collect();
                // The table fits whenever the narrow columns leave the wide
                // ones their minimum.
                let fixed: usize = widths[..NARROW].iter().sum::<usize>() + 2 + 2 * 5;
                if fixed + 2 * MIN_WIDE <= width {
                    for line in text.lines() {
                        assert!(line.chars().count() <= width, "{name} at {width}: {line:?}");
                    }
                }
                for row in &rows {
                    for (cell, w) in row.iter().zip(widths) {
                        for word in cell.split_whitespace() {
                            if word.chars().count() <= w {
                                assert!(
                                    tokens.contains(word),
                                    "{name} at {width}: {word:?} was split\n{text}"
                                );
                            }
                        }
                        let joined: String = wrap(cell, w).concat();
                        let squeeze = |s: &str| s.split_whitespace().collect::<String>();
                        assert_eq!(squeeze(&joined), squeeze(cell), "{name} at {width}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_word_longer_than_its_column_is_broken_and_kept_whole() {
        let mut report = fixture("weakened-no-retries");
        let long = "Q".repeat(70);
        report.checks[0].observed = format!("saw {long} here");
        let text = table(&report, false, MIN_WIDTH);
        assert_eq!(text.matches('Q').count(), 70, "{text}");
        assert!(text.contains("saw"), "{text}");
        assert!(text.contains("here"), "{text}");
    }
}
