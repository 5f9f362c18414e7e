//! Statistics over the history: latency summaries (hdrhistogram) and counts,
//! per one-second window, overall, and over any window the checks name.
//!
//! Every helper selects operations by *intended* send time, in `[from_ms,
//! to_ms)`: an operation belongs to the moment the load meant it for, so a
//! stall shows up in the window where it happened, not where its victims
//! finally got answered.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::history::{Op, Outcome};

/// The largest latency recorded as itself, in microseconds (one hour); longer
/// ones are recorded as this (the exact maximum is still reported).
const HISTOGRAM_HIGHEST_US: u64 = 3_600_000_000;

/// Significant digits of the histograms: quantiles within 0.1%.
const HISTOGRAM_DIGITS: u8 = 3;

/// Latency quantiles in milliseconds, counted from intended send times.
/// All zero when `count` is 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Operations counted.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The largest, exact.
    pub max_ms: f64,
    /// The mean, exact.
    pub mean_ms: f64,
}

impl LatencySummary {
    /// The latency at `quantile` in (0, 1], as SLOs name them: 0.5, 0.9,
    /// 0.95, 0.99 and 1.0 (the maximum). Other quantiles are not kept in a
    /// summary; use [`latency_quantile_over`] for them.
    pub fn at(&self, quantile: f64) -> Option<f64> {
        [
            (0.5, self.p50_ms),
            (0.9, self.p90_ms),
            (0.95, self.p95_ms),
            (0.99, self.p99_ms),
            (1.0, self.max_ms),
        ]
        .into_iter()
        .find(|(kept, _)| *kept == quantile)
        .map(|(_, latency_ms)| latency_ms)
    }
}

/// Counts and latencies of one second of the run (by intended time).
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct WindowStats {
    /// The second, from 0 at the epoch: operations intended in
    /// `[second, second + 1)` seconds.
    pub second: u32,
    /// Operations sent.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 5xx answers and sent operations that got no answer.
    pub errors: u64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Latencies of the operations sent.
    pub latency: LatencySummary,
    /// Latencies of the 2xx answers alone.
    #[serde(default)]
    pub ok_latency: LatencySummary,
    /// Latencies of the errors alone (5xx, and no answer up to when it was
    /// given up on).
    #[serde(default)]
    pub error_latency: LatencySummary,
}

/// Counts and latencies over a stretch of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Operations planned in the stretch.
    pub planned: u64,
    /// Operations sent.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 5xx answers and sent operations that got no answer.
    pub errors: u64,
    /// Sent operations without an answer because the request timeout ran out.
    pub timeouts: u64,
    /// Sent operations abandoned at the drain timeout or on cancellation.
    pub cancelled: u64,
    /// Planned operations never sent (the run was cancelled).
    pub not_sent: u64,
    /// Answers carrying `Idempotent-Replayed: true`.
    pub replayed: u64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Latencies of the operations sent.
    pub latency: LatencySummary,
}

impl Summary {
    /// `errors / sent`, `None` when nothing was sent.
    pub fn error_rate(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.errors as f64 / self.sent as f64)
    }
}

/// Accumulates latencies: an hdrhistogram for quantiles, exact count, sum
/// and maximum beside it.
#[derive(Debug)]
struct Recorder {
    /// `None` only if hdrhistogram refused the constant bounds, which its
    /// documented rules exclude (and a test checks); quantiles then fall back
    /// to the maximum rather than panicking.
    histogram: Option<Histogram<u64>>,
    count: u64,
    sum_ms: f64,
    max_ms: f64,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            histogram: Histogram::new_with_bounds(1, HISTOGRAM_HIGHEST_US, HISTOGRAM_DIGITS).ok(),
            count: 0,
            sum_ms: 0.0,
            max_ms: 0.0,
        }
    }

    fn record(&mut self, latency_ms: f64) {
        let latency_ms = if latency_ms.is_finite() {
            latency_ms.max(0.0)
        } else {
            0.0
        };
        if let Some(histogram) = &mut self.histogram {
            // The float-to-int cast saturates; saturating_record clamps to
            // the histogram's highest trackable value.
            histogram.saturating_record((latency_ms * 1000.0).round() as u64);
        }
        self.count += 1;
        self.sum_ms += latency_ms;
        self.max_ms = self.max_ms.max(latency_ms);
    }

    fn quantile_ms(&self, quantile: f64) -> f64 {
        match &self.histogram {
            Some(histogram) if self.count > 0 => {
                // hdrhistogram answers the highest value equivalent to the
                // bucket; the exact maximum caps it so p99 never exceeds max.
                (histogram.value_at_quantile(quantile) as f64 / 1000.0).min(self.max_ms)
            }
            _ => self.max_ms,
        }
    }

    fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count,
            p50_ms: self.quantile_ms(0.5),
            p90_ms: self.quantile_ms(0.9),
            p95_ms: self.quantile_ms(0.95),
            p99_ms: self.quantile_ms(0.99),
            max_ms: self.max_ms,
            mean_ms: self.sum_ms / self.count as f64,
        }
    }
}

fn intended_in(op: &Op, from_ms: f64, to_ms: f64) -> bool {
    op.intended_ms >= from_ms && op.intended_ms < to_ms
}

/// Latencies of the operations sent with intended time in `[from_ms, to_ms)`.
pub fn latency_over(history: &[Op], from_ms: f64, to_ms: f64) -> LatencySummary {
    latency_where(history, from_ms, to_ms, |_| true)
}

/// Latencies of the operations sent with intended time in `[from_ms, to_ms)`
/// that `keep` accepts (one kind, one tenant, answered ones only...).
pub fn latency_where(
    history: &[Op],
    from_ms: f64,
    to_ms: f64,
    keep: impl Fn(&Op) -> bool,
) -> LatencySummary {
    let mut recorder = Recorder::new();
    for op in history
        .iter()
        .filter(|op| intended_in(op, from_ms, to_ms) && keep(op))
    {
        if let Some(latency_ms) = op.latency_ms() {
            recorder.record(latency_ms);
        }
    }
    recorder.summary()
}

/// The latency at any `quantile` in [0, 1] of the operations sent with
/// intended time in `[from_ms, to_ms)`, `None` when there are none.
pub fn latency_quantile_over(
    history: &[Op],
    from_ms: f64,
    to_ms: f64,
    quantile: f64,
) -> Option<f64> {
    let mut recorder = Recorder::new();
    for op in history.iter().filter(|op| intended_in(op, from_ms, to_ms)) {
        if let Some(latency_ms) = op.latency_ms() {
            recorder.record(latency_ms);
        }
    }
    (recorder.count > 0).then(|| {
        if quantile >= 1.0 {
            recorder.max_ms
        } else {
            recorder.quantile_ms(quantile.max(0.0))
        }
    })
}

/// Counts and latencies of the operations intended in `[from_ms, to_ms)`.
pub fn summary_over(history: &[Op], from_ms: f64, to_ms: f64) -> Summary {
    let mut summary = Summary::default();
    let mut recorder = Recorder::new();
    for op in history.iter().filter(|op| intended_in(op, from_ms, to_ms)) {
        summary.planned += 1;
        count_into(op, &mut summary);
        if let Some(latency_ms) = op.latency_ms() {
            recorder.record(latency_ms);
        }
    }
    summary.latency = recorder.summary();
    summary
}

/// `errors / sent` over the operations intended in `[from_ms, to_ms)`,
/// `None` when none was sent.
pub fn error_rate_over(history: &[Op], from_ms: f64, to_ms: f64) -> Option<f64> {
    let (sent, errors) = history
        .iter()
        .filter(|op| intended_in(op, from_ms, to_ms) && op.outcome.was_sent())
        .fold((0u64, 0u64), |(sent, errors), op| {
            (sent + 1, errors + u64::from(op.outcome.is_error()))
        });
    (sent > 0).then(|| errors as f64 / sent as f64)
}

/// Answered operations (any status) per second over the operations intended
/// in `[from_ms, to_ms)`; `None` for an empty or inverted window.
pub fn answered_rps_over(history: &[Op], from_ms: f64, to_ms: f64) -> Option<f64> {
    if to_ms <= from_ms {
        return None;
    }
    let answered = history
        .iter()
        .filter(|op| intended_in(op, from_ms, to_ms) && op.outcome.status().is_some())
        .count();
    Some(answered as f64 / ((to_ms - from_ms) / 1000.0))
}

fn count_into(op: &Op, summary: &mut Summary) {
    use super::history::Outcome;
    if !op.outcome.was_sent() {
        summary.not_sent += 1;
        return;
    }
    summary.sent += 1;
    summary.ok += u64::from(op.outcome.is_ok());
    summary.errors += u64::from(op.outcome.is_error());
    summary.replayed += u64::from(op.replayed);
    match &op.outcome {
        Outcome::Status(status) => *summary.statuses.entry(*status).or_default() += 1,
        Outcome::Timeout => summary.timeouts += 1,
        Outcome::Cancelled => summary.cancelled += 1,
        _ => {}
    }
}

/// One [`WindowStats`] per second `0..seconds`, by intended time. Operations
/// intended at or after `seconds` are in no window.
pub fn per_second(history: &[Op], seconds: u32) -> Vec<WindowStats> {
    // Per second: the counts, and latencies of all, of 2xx and of errors.
    let mut windows: Vec<(Summary, [Recorder; 3])> = (0..seconds)
        .map(|_| {
            (
                Summary::default(),
                [Recorder::new(), Recorder::new(), Recorder::new()],
            )
        })
        .collect();
    for op in history {
        if op.intended_ms.is_nan() || op.intended_ms < 0.0 {
            continue;
        }
        // Truncation is the point: the second the op was intended in.
        let second = (op.intended_ms / 1000.0) as usize;
        let Some((summary, [all, ok, errors])) = windows.get_mut(second) else {
            continue;
        };
        count_into(op, summary);
        if let Some(latency_ms) = op.latency_ms() {
            all.record(latency_ms);
            if matches!(op.outcome, Outcome::Status(s) if (200..300).contains(&s)) {
                ok.record(latency_ms);
            } else if op.outcome.is_error() {
                errors.record(latency_ms);
            }
        }
    }
    windows
        .into_iter()
        .zip(0u32..)
        .map(|((summary, [all, ok, errors]), second)| WindowStats {
            second,
            sent: summary.sent,
            ok: summary.ok,
            errors: summary.errors,
            statuses: summary.statuses,
            latency: all.summary(),
            ok_latency: ok.summary(),
            error_latency: errors.summary(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::history::{OpKind, Outcome};

    fn op(index: u64, intended_ms: f64, end_ms: f64, outcome: Outcome) -> Op {
        Op {
            end_ms,
            outcome,
            ..Op::planned(index, OpKind::Task, "a", intended_ms)
        }
    }

    #[test]
    fn the_histogram_bounds_are_accepted() {
        assert!(Recorder::new().histogram.is_some());
    }

    #[test]
    fn latency_counts_from_intended_time_within_the_window() {
        // Latencies 1..=100 ms, intended at 0..100 ms; one op outside.
        let mut history: Vec<Op> = (0..100u64)
            .map(|i| {
                let intended = i as f64;
                op(i, intended, intended + (i + 1) as f64, Outcome::Status(200))
            })
            .collect();
        history.push(op(100, 5000.0, 9000.0, Outcome::Status(200)));
        let summary = latency_over(&history, 0.0, 100.0);
        assert_eq!(summary.count, 100);
        assert!((summary.p50_ms - 50.0).abs() <= 0.1, "{summary:?}");
        assert!((summary.p90_ms - 90.0).abs() <= 0.1, "{summary:?}");
        assert!((summary.p99_ms - 99.0).abs() <= 0.1, "{summary:?}");
        assert_eq!(summary.max_ms, 100.0);
        assert!((summary.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!(summary.at(1.0), Some(100.0));
        assert_eq!(summary.at(0.42), None);
        let whole = latency_over(&history, 0.0, 10_000.0);
        assert_eq!(whole.count, 101);
        assert_eq!(whole.max_ms, 4000.0);
    }

    #[test]
    fn an_empty_window_summarises_to_zeros() {
        assert_eq!(latency_over(&[], 0.0, 1000.0), LatencySummary::default());
        assert_eq!(error_rate_over(&[], 0.0, 1000.0), None);
        assert_eq!(latency_quantile_over(&[], 0.0, 1000.0, 0.5), None);
        assert_eq!(answered_rps_over(&[], 10.0, 10.0), None);
    }

    #[test]
    fn unsent_ops_have_no_latency_and_are_no_errors() {
        let history = vec![
            op(0, 0.0, 10.0, Outcome::Status(200)),
            op(1, 10.0, 10.0, Outcome::NotSent),
            op(2, 20.0, 520.0, Outcome::Timeout),
            op(3, 30.0, 40.0, Outcome::Status(503)),
            op(4, 40.0, 50.0, Outcome::Status(429)),
        ];
        let summary = summary_over(&history, 0.0, 1000.0);
        assert_eq!(summary.planned, 5);
        assert_eq!(summary.sent, 4);
        assert_eq!(summary.not_sent, 1);
        assert_eq!(summary.ok, 1);
        assert_eq!(summary.errors, 2);
        assert_eq!(summary.timeouts, 1);
        assert_eq!(summary.latency.count, 4);
        assert_eq!(summary.latency.max_ms, 500.0);
        assert_eq!(summary.error_rate(), Some(0.5));
        assert_eq!(error_rate_over(&history, 0.0, 1000.0), Some(0.5));
        assert_eq!(answered_rps_over(&history, 0.0, 1000.0), Some(3.0));
        let statuses: Vec<(u16, u64)> = summary.statuses.into_iter().collect();
        assert_eq!(statuses, vec![(200, 1), (429, 1), (503, 1)]);
    }

    #[test]
    fn huge_latencies_saturate_but_the_maximum_stays_exact() {
        let history = vec![op(0, 0.0, 10.0 * 3_600_000.0, Outcome::Timeout)];
        let summary = latency_over(&history, 0.0, 1.0);
        assert_eq!(summary.max_ms, 36_000_000.0);
        assert!(summary.p50_ms <= summary.max_ms);
        assert!(summary.p50_ms >= 3_590_000.0, "{summary:?}");
    }

    #[test]
    fn per_second_windows_split_by_intended_time_and_add_up() {
        let history: Vec<Op> = (0..30u64)
            .map(|i| {
                let intended = i as f64 * 100.0;
                let outcome = if i % 10 == 0 {
                    Outcome::Status(500)
                } else {
                    Outcome::Status(200)
                };
                op(i, intended, intended + 5.0, outcome)
            })
            .collect();
        let windows = per_second(&history, 3);
        assert_eq!(windows.len(), 3);
        for (i, window) in windows.iter().enumerate() {
            assert_eq!(window.second as usize, i);
            assert_eq!(window.sent, 10);
            assert_eq!(window.ok, 9);
            assert_eq!(window.errors, 1);
            assert_eq!(window.latency.count, 10);
        }
        let overall = summary_over(&history, 0.0, f64::INFINITY);
        assert_eq!(windows.iter().map(|w| w.sent).sum::<u64>(), overall.sent);
        assert_eq!(
            windows.iter().map(|w| w.errors).sum::<u64>(),
            overall.errors
        );
        // An op past the last window is in none.
        assert_eq!(per_second(&history, 1)[0].sent, 10);
    }
}
