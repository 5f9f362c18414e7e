//! Invariants of how the orchestrator called its provider, from the mock
//! provider's journal: it waited as long as a `Retry-After` asked
//! (`retry_after_honoured`), and it kept to its retry bounds
//! (`attempts_bounded`). The orchestrator names each call's request and
//! attempt (`X-Request-Id`, `X-Attempt`); a job's attempt is the suffix of
//! its request id (`JOB/ATTEMPT`).

use std::collections::BTreeMap;

use super::{CheckResult, Evidence};
use crate::load::{OpKind, Outcome};
use crate::mock_llm::CallRecord;

/// How much sooner than its `Retry-After` a retry may reach the provider:
/// the journal's clock reads whole milliseconds, and the mock stamps a call
/// when it has read the request, a little before it answers.
pub(super) const RETRY_AFTER_TOLERANCE_MS: u64 = 50;

/// The journal's calls by request id, in sequence order.
fn by_request(journal: &[CallRecord]) -> BTreeMap<&str, Vec<&CallRecord>> {
    let mut groups: BTreeMap<&str, Vec<&CallRecord>> = BTreeMap::new();
    for call in journal {
        if let Some(id) = call.request_id.as_deref() {
            groups.entry(id).or_default().push(call);
        }
    }
    groups
}

/// A `Retry-After` in whole seconds; an HTTP date or anything else is not
/// judged.
fn retry_after_s(call: &CallRecord) -> Option<u64> {
    call.retry_after.as_deref()?.trim().parse().ok()
}

fn dropped_note(evidence: &Evidence) -> String {
    if evidence.journal_dropped > 0 {
        format!(
            " ({} calls dropped from the journal)",
            evidence.journal_dropped
        )
    } else {
        String::new()
    }
}

/// After the provider answered an attempt with `Retry-After: N` (N > 0), the
/// request's next attempt (the same request id, the next attempt number, the
/// same model) came no sooner than N seconds later, less
/// [`RETRY_AFTER_TOLERANCE_MS`].
pub(super) fn retry_after_honoured(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "retry_after_honoured",
        format!("a retry waits the Retry-After it was given (less {RETRY_AFTER_TOLERANCE_MS}ms)"),
    );
    let mut violations = 0;
    let mut judged = 0u64;
    let mut shortest_ms: Option<i64> = None;
    for (request, calls) in by_request(&evidence.journal) {
        for pair in calls.windows(2) {
            let (asked, next) = (pair[0], pair[1]);
            let Some(wait_s) = retry_after_s(asked).filter(|s| *s > 0) else {
                continue;
            };
            if asked.model != next.model {
                // Another provider: its own Retry-After is what binds it.
                continue;
            }
            if next.attempt != asked.attempt.map(|a| a + 1) {
                // Not this run's next attempt: a job attempt run again
                // under the same request id (after a restart or a lost
                // lease) starts its own count, and owes the old answer
                // nothing.
                continue;
            }
            judged += 1;
            let gap_ms = i64::try_from(next.received_unix_ms).unwrap_or(i64::MAX)
                - i64::try_from(asked.received_unix_ms).unwrap_or(i64::MAX);
            let slack = gap_ms - i64::try_from(wait_s * 1000).unwrap_or(i64::MAX);
            shortest_ms = Some(shortest_ms.map_or(slack, |s| s.min(slack)));
            if gap_ms + i64::try_from(RETRY_AFTER_TOLERANCE_MS).unwrap_or(0)
                < i64::try_from(wait_s * 1000).unwrap_or(i64::MAX)
            {
                violations += 1;
                r.violation(format!(
                    "request {request}: call {} got {} with Retry-After {wait_s}, and call {} came {gap_ms}ms later",
                    asked.seq, asked.status, next.seq
                ));
            }
        }
    }
    r.observed = match shortest_ms {
        Some(ms) => format!(
            "{judged} retries after a Retry-After, the closest {ms:+}ms from it{}",
            dropped_note(evidence)
        ),
        None => format!("no retry after a Retry-After{}", dropped_note(evidence)),
    };
    r.finish(violations).exercised(judged, || {
        "the provider never answered with a Retry-After above 0 that was then retried".to_owned()
    })
}

/// No request made more provider calls than the providers' `retry.attempts`
/// add up to (each run of a request numbers its attempts from 1), and no
/// job ran more attempts than `jobs.max_attempts` (a replay counts again
/// from 1).
pub(super) fn attempts_bounded(evidence: &Evidence) -> CheckResult {
    let contract = &evidence.contract;
    let per_request = contract.attempts_per_request;
    let per_job = contract.job_max_attempts;
    let mut r = CheckResult::invariant(
        "attempts_bounded",
        format!("at most {per_request} calls per request, {per_job} attempts per job"),
    );
    let mut violations = 0;
    let mut most_calls = 0usize;
    let mut most_job_attempts = 0u64;
    let groups = by_request(&evidence.journal);
    for (request, calls) in &groups {
        // A run starts at attempt 1; a job attempt interrupted by a restart
        // and released runs again under the same request id.
        let runs = calls.iter().filter(|c| c.attempt == Some(1)).count().max(1);
        let most = calls.iter().filter_map(|c| c.attempt).max().unwrap_or(0);
        most_calls = most_calls.max(calls.len().div_ceil(runs));
        if let Some(call) = calls.iter().find(|c| c.attempt.is_none()) {
            violations += 1;
            r.violation(format!(
                "request {request}: call {} does not say which attempt it is (no X-Attempt)",
                call.seq
            ));
        } else if most > per_request || calls.len() > runs * per_request as usize {
            violations += 1;
            r.violation(format!(
                "request {request}: {} provider calls in {runs} run(s), attempts up to {most}, over {per_request} per run (calls {})",
                calls.len(),
                calls
                    .iter()
                    .map(|c| c.seq.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some((job, attempt)) = request.rsplit_once('/')
            && let Ok(attempt) = attempt.parse::<u64>()
        {
            most_job_attempts = most_job_attempts.max(attempt);
            if attempt > u64::from(per_job) {
                violations += 1;
                r.violation(format!(
                    "job {job} ran attempt {attempt}, over jobs.max_attempts {per_job}"
                ));
            }
        }
    }
    let replays = evidence
        .history
        .iter()
        .filter(|op| op.kind == OpKind::ReplayDlq && op.outcome == Outcome::Status(202))
        .count();
    r.observed = format!(
        "{} requests called the provider, at most {most_calls} calls per run; job attempts up to {most_job_attempts}; {replays} replays{}",
        groups.len(),
        dropped_note(evidence)
    );
    r.finish(violations).exercised(groups.len() as u64, || {
        "the provider's journal holds no call with a request id".to_owned()
    })
}
