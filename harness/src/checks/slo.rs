//! SLOs: a measure over the operations whose intended send time falls in a
//! window. Latency counts from the intended time (open loop), so a stalled
//! system cannot hide behind requests it delayed.

use std::time::Duration;

use super::{
    CheckKind, CheckResult, Evidence, JudgedSpan, MAX_EVIDENCE_LINES, SloPlot, SloUnit, Verdict,
};
use crate::load::{Op, Outcome};
use crate::scenario::{Objective, Slo, Window};

/// How many consecutive good seconds make a recovery.
const RECOVERY_SECONDS: u32 = 3;

/// The window as written in scenario files.
pub fn window_label(window: &Window) -> String {
    match window {
        Window::All => "all".to_owned(),
        Window::Before(f) => format!("before({f})"),
        Window::During(f) => format!("during({f})"),
        Window::After { fault, delay } if delay.is_zero() => format!("after({fault})"),
        Window::After { fault, delay } => format!("after({fault}) + {}", secs(*delay)),
        Window::Every(d) => format!("every {}", secs(*d)),
    }
}

fn secs(d: Duration) -> String {
    humantime_like(d)
}

/// Renders a duration the way scenario files write it (`500ms`, `2s`, `1.5s`).
pub(crate) fn humantime_like(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.3}s", d.as_secs_f64())
            .trim_end_matches('0')
            .to_owned()
    }
}

/// Whether an operation failed in the SLO sense: a 5xx, or no answer to a
/// request that went out ([`Outcome::is_error`]). A request the client gave
/// up on at the drain deadline ([`Outcome::Cancelled`]) is an error: a stalled
/// system must not hide behind the requests it never answered.
pub(crate) fn is_error(op: &Op) -> bool {
    op.outcome.is_error()
}

/// Whether the operation went out ([`Outcome::was_sent`]): everything but
/// [`Outcome::NotSent`]. Cancelled requests count, with their latency up to
/// the moment they were abandoned as a lower bound.
pub(crate) fn was_sent(op: &Op) -> bool {
    op.outcome.was_sent()
}

fn is_ok(op: &Op) -> bool {
    matches!(op.outcome, Outcome::Status(s) if (200..300).contains(&s))
}

/// A span of the run in milliseconds from the epoch, `[from, to)`, by
/// intended send time. `ended_by_ms` also requires the operation to have
/// ended by then: a `before(F)` window holds what was over before F began,
/// not a request that was on the wire when it struck.
#[derive(Clone, Copy, Debug)]
struct Span {
    from_ms: f64,
    to_ms: f64,
    ended_by_ms: Option<f64>,
}

impl Span {
    /// A span by intended time alone.
    fn between(from_ms: f64, to_ms: f64) -> Span {
        Span {
            from_ms,
            to_ms,
            ended_by_ms: None,
        }
    }

    /// Whether the operation belongs to the span.
    fn holds(self, op: &Op) -> bool {
        op.intended_ms >= self.from_ms
            && op.intended_ms < self.to_ms
            && self.ended_by_ms.is_none_or(|t| op.end_ms <= t)
    }

    fn seconds(self) -> f64 {
        ((self.to_ms - self.from_ms) / 1000.0).max(0.0)
    }
    fn label(self) -> String {
        format!(
            "[{:.1}s, {:.1}s)",
            self.from_ms / 1000.0,
            self.to_ms / 1000.0
        )
    }
}

/// Resolves a window into spans; `Every` gives one span per step.
fn spans(window: &Window, evidence: &Evidence) -> Result<Vec<Span>, String> {
    let end = evidence.load_end_ms;
    let fault = |name: &String| {
        evidence
            .span(name)
            .ok_or_else(|| format!("fault {name} was never applied"))
    };
    Ok(match window {
        Window::All => vec![Span::between(0.0, end)],
        Window::Before(f) => {
            let start = fault(f)?.start_ms;
            vec![Span {
                ended_by_ms: Some(start),
                ..Span::between(0.0, start)
            }]
        }
        Window::During(f) => {
            let s = fault(f)?;
            vec![Span::between(s.start_ms, s.end_ms)]
        }
        Window::After { fault: f, delay } => vec![Span::between(
            fault(f)?.end_ms + delay.as_secs_f64() * 1000.0,
            end,
        )],
        Window::Every(d) => {
            let len = d.as_secs_f64() * 1000.0;
            let mut out = Vec::new();
            let mut from = 0.0;
            // One-second steps, bounded by the run's length.
            while from + len <= end + 1e-6 {
                out.push(Span::between(from, from + len));
                from += 1000.0;
            }
            if out.is_empty() {
                out.push(Span::between(0.0, end));
            }
            out
        }
    })
}

fn in_span(history: &[Op], span: Span) -> impl Iterator<Item = &Op> {
    history.iter().filter(move |op| span.holds(op))
}

/// Exact quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// One measurement over a span: the value, whether it meets the objective,
/// what to say about it, and how many requests it judged (0: the span had
/// none of the traffic the objective needs, so it proves nothing).
struct Measured {
    value: Option<f64>,
    passed: bool,
    observed: String,
    judged: u64,
}

fn measure(objective: &Objective, evidence: &Evidence, span: Span) -> Measured {
    let ops: Vec<&Op> = in_span(&evidence.history, span)
        .filter(|op| was_sent(op))
        .collect();
    match objective {
        Objective::Latency { quantile: q, max } => {
            let mut latencies: Vec<f64> = ops.iter().map(|op| op.end_ms - op.intended_ms).collect();
            latencies.sort_by(f64::total_cmp);
            match quantile(&latencies, *q) {
                Some(v) => Measured {
                    value: Some(v),
                    passed: v <= max.as_secs_f64() * 1000.0,
                    observed: format!("{v:.1}ms over {} requests", latencies.len()),
                    judged: latencies.len() as u64,
                },
                None => no_requests(),
            }
        }
        Objective::ErrorRate { max } => {
            if ops.is_empty() {
                return no_requests();
            }
            let errors = ops.iter().filter(|op| is_error(op)).count();
            let rate = errors as f64 / ops.len() as f64;
            Measured {
                value: Some(rate),
                passed: rate <= *max,
                observed: format!("{rate:.4} ({errors} of {})", ops.len()),
                judged: ops.len() as u64,
            }
        }
        Objective::Availability { min } => {
            let seconds = per_second(&ops, span);
            let with_traffic: Vec<&(u64, u64)> = seconds.iter().filter(|(n, _)| *n > 0).collect();
            if with_traffic.is_empty() {
                return no_requests();
            }
            let up = with_traffic.iter().filter(|(n, e)| e * 2 < *n).count();
            let share = up as f64 / with_traffic.len() as f64;
            Measured {
                value: Some(share),
                passed: share >= *min,
                observed: format!("{share:.4} ({up} of {} seconds up)", with_traffic.len()),
                judged: ops.len() as u64,
            }
        }
        Objective::Throughput { min_rps } => {
            let secs = span.seconds();
            if secs <= 0.0 || ops.is_empty() {
                return no_requests();
            }
            let ok = ops.iter().filter(|op| is_ok(op)).count();
            let rps = ok as f64 / secs;
            Measured {
                value: Some(rps),
                passed: rps >= *min_rps,
                observed: format!("{rps:.2} rps ({ok} successes in {secs:.1}s)"),
                judged: ops.len() as u64,
            }
        }
        Objective::RecoveryTime { max, error_rate } => recovery(evidence, span, *max, *error_rate),
    }
}

fn no_requests() -> Measured {
    Measured {
        value: None,
        passed: true,
        observed: "no requests in the window".to_owned(),
        judged: 0,
    }
}

/// Requests and errors per second of a span: (sent, errors).
fn per_second(ops: &[&Op], span: Span) -> Vec<(u64, u64)> {
    let n = span.seconds().ceil() as usize;
    let mut out = vec![(0u64, 0u64); n.max(1)];
    for op in ops {
        let i = (((op.intended_ms - span.from_ms) / 1000.0) as usize).min(out.len() - 1);
        out[i].0 += 1;
        if is_error(op) {
            out[i].1 += 1;
        }
    }
    out
}

/// The time from the span's start (a fault's end) until the error rate stays
/// at or under `threshold` for [`RECOVERY_SECONDS`] consecutive seconds.
/// Seconds without traffic count as good: nothing failed in them.
fn recovery(evidence: &Evidence, span: Span, max: Duration, threshold: f64) -> Measured {
    let ops: Vec<&Op> = in_span(&evidence.history, span)
        .filter(|op| was_sent(op))
        .collect();
    // Recovery is judged on answers: a window where nothing was answered
    // cannot show the service serving again.
    let answered = ops
        .iter()
        .filter(|op| op.outcome.status().is_some())
        .count() as u64;
    if answered == 0 {
        return Measured {
            value: None,
            passed: true,
            observed: format!("no request answered in {}", span.label()),
            judged: 0,
        };
    }
    let seconds = per_second(&ops, span);
    let good = |(n, e): &(u64, u64)| *n == 0 || (*e as f64) <= threshold * (*n as f64);
    let needed = RECOVERY_SECONDS as usize;
    let found = (0..seconds.len())
        .find(|&i| i + needed <= seconds.len() && seconds[i..i + needed].iter().all(good));
    match found {
        Some(i) => {
            let ms = i as f64 * 1000.0;
            Measured {
                value: Some(ms),
                passed: ms <= max.as_secs_f64() * 1000.0,
                observed: format!("recovered after {ms:.0}ms"),
                judged: answered,
            }
        }
        None => Measured {
            value: None,
            passed: false,
            judged: answered,
            observed: format!(
                "did not recover: no {RECOVERY_SECONDS} consecutive seconds at error rate <= {threshold} before the run ended"
            ),
        },
    }
}

/// The metric's name as written in scenario files, and its threshold in words.
fn describe(objective: &Objective) -> (String, String) {
    let threshold = match objective {
        Objective::Latency { max, .. } => format!("<= {}", humantime_like(*max)),
        Objective::ErrorRate { max } => format!("<= {max}"),
        Objective::Availability { min } => format!(">= {min}"),
        Objective::Throughput { min_rps } => format!(">= {min_rps} rps"),
        Objective::RecoveryTime { max, error_rate } => {
            format!("<= {} (error rate <= {error_rate})", humantime_like(*max))
        }
    };
    (objective.metric(), threshold)
}

/// The objective's threshold as a number in its unit, and whether it bounds
/// from above.
fn threshold(objective: &Objective) -> (SloUnit, f64, bool) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match objective {
        Objective::Latency { max, .. } => (SloUnit::LatencyMs, ms(*max), true),
        Objective::ErrorRate { max } => (SloUnit::ErrorRate, *max, true),
        Objective::Availability { min } => (SloUnit::Availability, *min, false),
        Objective::Throughput { min_rps } => (SloUnit::ThroughputRps, *min_rps, false),
        Objective::RecoveryTime { max, .. } => (SloUnit::RecoveryMs, ms(*max), true),
    }
}

/// Judges one SLO. A sliding window must hold in every position; its
/// observed value is the worst position's.
pub(super) fn check(slo: &Slo, evidence: &Evidence) -> CheckResult {
    let (name, expected) = describe(&slo.objective);
    let mut result = CheckResult::new(CheckKind::Slo, &name, expected);
    result.window = Some(window_label(&slo.window));
    let spans = match spans(&slo.window, evidence) {
        Ok(s) => s,
        Err(why) => {
            // In the evidence too: the redacted verdict leaves `observed` out.
            result.violation(why.clone());
            result.observed = why;
            return result;
        }
    };
    let mut judged = 0;
    let mut empty = Vec::new();
    let mut failures = 0usize;
    let mut window_lines = Vec::new();
    let mut failed_spans = Vec::new();
    let mut worst: Option<(f64, String)> = None;
    let (unit, bound, higher_is_worse) = threshold(&slo.objective);
    let mut plot = SloPlot {
        unit,
        threshold: bound,
        upper_bound: higher_is_worse,
        spans: Vec::with_capacity(spans.len()),
    };
    for span in &spans {
        let m = measure(&slo.objective, evidence, *span);
        plot.spans.push(JudgedSpan {
            from_ms: span.from_ms,
            to_ms: span.to_ms,
            value: m.value,
            passed: m.passed,
        });
        judged += m.judged;
        if m.judged == 0 {
            empty.push(span.label());
        }
        if !m.passed {
            failures += 1;
            result.verdict = Verdict::Fail;
            window_lines.push(format!("{}: {}", span.label(), m.observed));
            failed_spans.push(*span);
            if result.observed.is_empty() {
                result.observed = m.observed.clone();
            }
        }
        if let Some(v) = m.value {
            let worse = match &worst {
                None => true,
                Some((w, _)) => (higher_is_worse && v > *w) || (!higher_is_worse && v < *w),
            };
            if worse {
                worst = Some((v, m.observed.clone()));
            }
        }
    }
    result.slo = Some(plot);
    if result.passed() {
        result.observed = worst
            .map(|(_, o)| o)
            .unwrap_or_else(|| "no requests in the window".to_owned());
        let missing = (!empty.is_empty()).then(|| {
            let shown: Vec<String> = empty.iter().take(3).cloned().collect();
            format!(
                "no requests the metric could judge in {}{}",
                shown.join(", "),
                if empty.len() > 3 {
                    format!(" and {} more positions", empty.len() - 3)
                } else {
                    String::new()
                }
            )
        });
        return result.evidenced(judged, missing);
    }
    result.exercised = judged;
    if spans.len() > 1 {
        result.observed = format!(
            "{failures} of {} windows failed; first: {}",
            spans.len(),
            result.observed
        );
    }
    // The requests behind a failed latency or error SLO, from every failed
    // position of the window: the slowest or failed ones, with their request
    // ids, so a reader can find them in logs.
    let mut ops: Vec<&Op> = evidence
        .history
        .iter()
        .filter(|op| was_sent(op))
        .filter(|op| failed_spans.iter().any(|s| s.holds(op)))
        .collect();
    let op_lines: Vec<String> = match slo.objective {
        Objective::Latency { .. } => {
            ops.sort_by(|a, b| (b.end_ms - b.intended_ms).total_cmp(&(a.end_ms - a.intended_ms)));
            ops.iter()
                .take(OP_LINES)
                .map(|op| describe_op(op))
                .collect()
        }
        Objective::ErrorRate { .. } | Objective::Availability { .. } => ops
            .iter()
            .filter(|op| is_error(op))
            .take(OP_LINES)
            .map(|op| describe_op(op))
            .collect(),
        _ => Vec::new(),
    };
    // Window lines first, then the requests, within the cap; the count of
    // the windows left out closes the list.
    let room = MAX_EVIDENCE_LINES - op_lines.len();
    let omitted = window_lines.len().saturating_sub(room);
    window_lines.truncate(room);
    result.evidence = window_lines;
    result.evidence.extend(op_lines);
    if omitted > 0 {
        result.evidence.push(format!("... and {omitted} more"));
    }
    result
}

/// The most requests a failed SLO names.
const OP_LINES: usize = 5;

/// One line naming an operation: index, kind, outcome, latency, request id.
pub(crate) fn describe_op(op: &Op) -> String {
    format!(
        "op {} {:?} tenant {} at {:.0}ms: {} after {:.0}ms{}{}",
        op.index,
        op.kind,
        op.tenant,
        op.intended_ms,
        outcome_text(&op.outcome),
        op.end_ms - op.intended_ms,
        op.request_id
            .as_deref()
            .map(|id| format!(", request id {id}"))
            .unwrap_or_default(),
        op.idempotency_key
            .as_deref()
            .map(|k| format!(", key {k}"))
            .unwrap_or_default(),
    )
}

/// An outcome in words.
pub(crate) fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Status(s) => format!("status {s}"),
        Outcome::Timeout => "timed out".to_owned(),
        Outcome::ConnectError(e) => format!("connect error ({e})"),
        Outcome::IoError(e) => format!("i/o error ({e})"),
        Outcome::Cancelled => "cancelled".to_owned(),
        Outcome::NotSent => "not sent".to_owned(),
    }
}
