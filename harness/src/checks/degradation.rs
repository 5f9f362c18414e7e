//! `degradation_graceful`: the service's degradation level, judged from the
//! transitions its audit log records (read from the copy of its database)
//! and from what clients were answered. The shedding table here is the
//! README's, restated: the harness does not ask the system what its levels
//! shed.

use super::invariants::database;
use super::requests::retry_after_whole_seconds;
use super::slo::describe_op;
use super::{CheckResult, Evidence};
use crate::evidence::db::AuditRow;
use crate::load::{OpKind, Outcome};
use crate::scenario::DEGRADATION_LEVELS;

/// The problem type of a refusal by degradation level.
pub const DEGRADED: &str = "degraded";

/// Slack between the harness's clock and the service's: a request's ends
/// are widened by this before its level is looked up, since the request
/// reaches the service a moment after the harness sends it.
const ALIGN_MS: f64 = 100.0;
/// Slack on the hysteresis waits: both ends are the service's wall clock,
/// which may be slewed slightly between them.
const WAIT_SLACK_MS: f64 = 50.0;

/// The least level that refuses an operation outright, per the README's
/// table; `None` for work no level refuses (reads and health). Jobs are
/// refused from level 2 once half the queue is used, from level 3 always.
fn refused_from(kind: OpKind) -> Option<(usize, usize)> {
    // (the least level that may refuse it, the least level that must)
    match kind {
        OpKind::Task | OpKind::OversizedTask | OpKind::SlowTask => Some((3, 3)),
        OpKind::Job => Some((2, 3)),
        OpKind::ReplayDlq | OpKind::CreateKey | OpKind::RotateKey => Some((4, 4)),
        OpKind::ListJobs
        | OpKind::ReadJob
        | OpKind::ReadBudget
        | OpKind::ReadOtherBudget
        | OpKind::ListDlq
        | OpKind::ReadAudit
        | OpKind::VerifyAudit
        | OpKind::ReadRoles
        | OpKind::ListKeys => None,
    }
}

/// One level change on the load's time axis.
#[derive(Clone, Copy, Debug)]
struct Step {
    at_ms: f64,
    level: usize,
}

fn level_index(name: &str) -> Option<usize> {
    DEGRADATION_LEVELS.iter().position(|l| *l == name)
}

/// The details of a `degradation.changed` entry: from, to, and when.
fn transition(row: &AuditRow) -> Result<(usize, usize, f64), String> {
    let details: serde_json::Value = serde_json::from_slice(&row.details)
        .map_err(|e| format!("entry {}: details are not JSON: {e}", row.seq))?;
    let level = |field: &str| {
        details[field]
            .as_str()
            .and_then(level_index)
            .ok_or_else(|| {
                format!(
                    "entry {}: `{field}` is not a level: {}",
                    row.seq, details[field]
                )
            })
    };
    let at_ms = details["at_ms"]
        .as_f64()
        .ok_or_else(|| format!("entry {}: no `at_ms`", row.seq))?;
    Ok((level("from")?, level("to")?, at_ms))
}

/// The level over `[start_ms, end_ms]`: its least and greatest.
fn levels_during(timeline: &[Step], start_ms: f64, end_ms: f64) -> (usize, usize) {
    let before = timeline
        .iter()
        .rev()
        .find(|s| s.at_ms <= start_ms)
        .map_or(0, |s| s.level);
    timeline
        .iter()
        .filter(|s| s.at_ms > start_ms && s.at_ms <= end_ms)
        .fold((before, before), |(lo, hi), s| {
            (lo.min(s.level), hi.max(s.level))
        })
}

pub(super) fn degradation_graceful(
    evidence: &Evidence,
    reaches: usize,
    within: std::time::Duration,
) -> CheckResult {
    let contract = &evidence.contract;
    let enter_ms = contract.enter_after.as_secs_f64() * 1000.0;
    let leave_ms = contract.leave_after.as_secs_f64() * 1000.0;
    let within_ms = within.as_secs_f64() * 1000.0;
    let mut r = CheckResult::invariant(
        "degradation_graceful",
        format!(
            "one step at a time, rises {} and falls {} apart, reaches {}, normal within {} of the last fault; sheds only what each level documents",
            orchestrator::config::format_duration(contract.enter_after),
            orchestrator::config::format_duration(contract.leave_after),
            DEGRADATION_LEVELS[reaches],
            orchestrator::config::format_duration(within),
        ),
    );
    let Some(db) = database(&mut r, evidence) else {
        return r;
    };
    let to_load_ms = |unix_ms: f64| unix_ms - evidence.epoch_unix_ms;
    let mut violations = 0;
    let mut timeline: Vec<Step> = Vec::new();
    let mut level = 0usize;
    let mut changed_at_ms = f64::NEG_INFINITY;
    let mut transitions = 0u64;
    let mut highest = 0usize;
    for row in &db.audit {
        match row.action.as_slice() {
            // A (re)start: the level is normal again, and the waits count
            // from here.
            b"config.loaded" => {
                level = 0;
                changed_at_ms = to_load_ms(row.ts_ms as f64);
                timeline.push(Step {
                    at_ms: changed_at_ms,
                    level,
                });
            }
            b"degradation.changed" => {
                transitions += 1;
                let (from, to, at_unix_ms) = match transition(row) {
                    Ok(t) => t,
                    Err(why) => {
                        violations += 1;
                        r.violation(why);
                        continue;
                    }
                };
                let at_ms = to_load_ms(at_unix_ms);
                let name = |i: usize| DEGRADATION_LEVELS[i];
                if from != level {
                    violations += 1;
                    r.violation(format!(
                        "entry {}: left {} at {at_ms:.0}ms, but the level was {}",
                        row.seq,
                        name(from),
                        name(level)
                    ));
                }
                if from.abs_diff(to) != 1 {
                    violations += 1;
                    r.violation(format!(
                        "entry {}: jumped from {} to {} at {at_ms:.0}ms, not one step",
                        row.seq,
                        name(from),
                        name(to)
                    ));
                }
                let (wait_ms, which) = if to > from {
                    (enter_ms, "enter_after")
                } else {
                    (leave_ms, "leave_after")
                };
                let gap_ms = at_ms - changed_at_ms;
                if gap_ms + WAIT_SLACK_MS < wait_ms {
                    violations += 1;
                    r.violation(format!(
                        "entry {}: {} to {} at {at_ms:.0}ms, {gap_ms:.0}ms after the change before, under {which} ({wait_ms:.0}ms)",
                        row.seq,
                        name(from),
                        name(to)
                    ));
                }
                level = to;
                changed_at_ms = at_ms;
                highest = highest.max(to);
                timeline.push(Step { at_ms, level: to });
            }
            _ => {}
        }
    }
    // Without a transition the check is vacuous (below), not failed.
    if transitions > 0 && highest < reaches {
        violations += 1;
        r.violation(format!(
            "the level rose no higher than {}, short of {}",
            DEGRADATION_LEVELS[highest], DEGRADATION_LEVELS[reaches]
        ));
    }
    let last_fault_end_ms = evidence
        .faults
        .iter()
        .filter_map(|f| f.span())
        .map(|s| s.end_ms)
        .fold(0.0_f64, f64::max);
    if level != 0 {
        violations += 1;
        r.violation(format!(
            "the level was still {} when the run ended",
            DEGRADATION_LEVELS[level]
        ));
    } else if let Some(back) = timeline.iter().rev().find(|s| s.level == 0)
        && transitions > 0
        && back.at_ms > last_fault_end_ms + within_ms
    {
        violations += 1;
        r.violation(format!(
            "back to normal at {:.0}ms, later than {} after the last fault ended ({last_fault_end_ms:.0}ms)",
            back.at_ms,
            orchestrator::config::format_duration(within)
        ));
    }
    let (shed, served) = judge_requests(evidence, &timeline, &mut r, &mut violations);
    r.observed = format!(
        "{transitions} transitions, highest {}, {shed} requests refused as degraded, {served} served while a level was up",
        DEGRADATION_LEVELS[highest]
    );
    r.finish(violations).exercised(transitions, || {
        "the level never left normal: no `degradation.changed` entry in the audit log".to_owned()
    })
}

/// Every refusal `degraded` was of work its level sheds, and no work was
/// served while the level refused it throughout. Returns the refusals and
/// the requests served at a raised level.
fn judge_requests(
    evidence: &Evidence,
    timeline: &[Step],
    r: &mut CheckResult,
    violations: &mut usize,
) -> (u64, u64) {
    let mut shed = 0u64;
    let mut served = 0u64;
    for op in &evidence.history {
        let Outcome::Status(status) = op.outcome else {
            continue;
        };
        let (low, high) = levels_during(timeline, op.start_ms - ALIGN_MS, op.end_ms + ALIGN_MS);
        let refused = refused_from(op.kind);
        if op.problem.as_deref() == Some(DEGRADED) {
            shed += 1;
            if status != 503 || !retry_after_whole_seconds(op) {
                *violations += 1;
                r.violation(format!(
                    "degraded without 503 and a Retry-After of whole seconds: {}",
                    describe_op(op)
                ));
            }
            match refused {
                None => {
                    *violations += 1;
                    r.violation(format!(
                        "refused as degraded, but no level sheds {:?}: {}",
                        op.kind,
                        describe_op(op)
                    ));
                }
                Some((may, _)) if high < may => {
                    *violations += 1;
                    r.violation(format!(
                        "refused as degraded at {}, which does not shed {:?}: {}",
                        DEGRADATION_LEVELS[high],
                        op.kind,
                        describe_op(op)
                    ));
                }
                Some(_) => {}
            }
        } else if (200..300).contains(&status) && high > 0 {
            served += 1;
            if let Some((_, must)) = refused
                && low >= must
            {
                *violations += 1;
                r.violation(format!(
                    "served {status} at {}, which refuses {:?}: {}",
                    DEGRADATION_LEVELS[low],
                    op.kind,
                    describe_op(op)
                ));
            }
        }
    }
    (shed, served)
}
