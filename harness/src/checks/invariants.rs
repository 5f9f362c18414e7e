//! Invariants: properties of the history and the final state that must hold
//! whatever the faults did. Each names its evidence when it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::slo::{describe_op, was_sent};
use super::{CheckResult, Evidence};
use crate::load::{Op, OpKind, Outcome};

/// Slack allowed on a rate limit, for the time between the client sending a
/// request and the service's limiter seeing it (the proxy, the scheduler):
/// admitted ≤ rate × (interval + slack) + burst.
const RATE_LIMIT_SLACK_MS: f64 = 250.0;

/// Every job acknowledged with 202 ends succeeded or dead (in the DLQ).
pub(super) fn no_lost_jobs(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "no_lost_jobs",
        "every acknowledged job ends succeeded or dead",
    );
    let acknowledged: BTreeSet<&str> = evidence
        .history
        .iter()
        .filter(|op| op.kind == OpKind::Job && op.outcome == Outcome::Status(202))
        .filter_map(|op| op.resource_id.as_deref())
        .collect();
    let mut violations = 0;
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &acknowledged {
        match evidence.jobs.get(*id) {
            Some(Some(job)) if job.state == "succeeded" || job.state == "dead" => {
                *states.entry(job.state.as_str()).or_default() += 1;
            }
            Some(Some(job)) => {
                violations += 1;
                r.violation(format!(
                    "job {id} is still {} after {} attempts{}",
                    job.state,
                    job.attempts,
                    job.last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ));
            }
            Some(None) => {
                violations += 1;
                r.violation(format!(
                    "job {id} was acknowledged but the service does not know it"
                ));
            }
            None => {
                violations += 1;
                r.violation(format!("job {id} was acknowledged but never looked up"));
            }
        }
    }
    r.observed = format!(
        "{} acknowledged: {} succeeded, {} dead, {violations} lost or unsettled",
        acknowledged.len(),
        states.get("succeeded").copied().unwrap_or(0),
        states.get("dead").copied().unwrap_or(0),
    );
    r.finish(violations)
}

/// One charge per task and per idempotency key; every successful task and
/// job is charged; each charge equals the usage the provider reported for
/// one of that task's calls; each tenant's usage is the sum of its charges.
pub(super) fn exactly_once_charge(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "exactly_once_charge",
        "one charge per task and key, equal to the provider's reported usage",
    );
    let charges = match &evidence.charges {
        Ok(c) => c,
        Err(why) => {
            r.violation(format!("the ledger could not be read: {why}"));
            r.observed = "no ledger".to_owned();
            return r;
        }
    };
    let mut violations = 0;
    let mut by_task: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_key: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for c in charges {
        *by_task.entry(c.task_id.as_str()).or_default() += 1;
        if let Some(key) = &c.idempotency_key {
            by_key
                .entry((c.tenant.as_str(), key.as_str()))
                .or_default()
                .push(c.task_id.as_str());
        }
    }
    for (task, n) in &by_task {
        if *n > 1 {
            violations += 1;
            r.violation(format!("task {task} was charged {n} times"));
        }
    }
    for ((tenant, key), tasks) in &by_key {
        if tasks.len() > 1 {
            violations += 1;
            r.violation(format!(
                "tenant {tenant} key {key} was charged {} times (tasks {})",
                tasks.len(),
                tasks.join(", ")
            ));
        }
    }
    // Every success the client saw was charged.
    for op in &evidence.history {
        let charged_kind = op.kind == OpKind::Task && op.outcome == Outcome::Status(200);
        if !charged_kind {
            continue;
        }
        if let Some(id) = op.resource_id.as_deref()
            && !by_task.contains_key(id)
        {
            violations += 1;
            r.violation(format!(
                "task {id} succeeded but was never charged: {}",
                describe_op(op)
            ));
        }
    }
    for (id, job) in &evidence.jobs {
        if let Some(job) = job
            && job.state == "succeeded"
            && !by_task.contains_key(id.as_str())
        {
            violations += 1;
            r.violation(format!("job {id} succeeded but was never charged"));
        }
    }
    // The ledger against the provider's journal: the provider keys its calls
    // by the task's id (the orchestrator sends it as Idempotency-Key).
    let mut usage_by_task: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for call in &evidence.journal {
        if let (Some(key), Some(usage)) = (call.idempotency_key.as_deref(), &call.usage) {
            usage_by_task
                .entry(key)
                .or_default()
                .push(usage.total_tokens);
        }
    }
    let mut unmatched_journal = 0;
    for c in charges {
        let billed = c.tokens + c.overage_tokens;
        match usage_by_task.get(c.task_id.as_str()) {
            Some(reported) if reported.contains(&billed) => {}
            Some(reported) => {
                violations += 1;
                r.violation(format!(
                    "task {} was charged {billed} tokens but the provider reported {reported:?}",
                    c.task_id
                ));
            }
            // Calls may have fallen out of the bounded journal, or the
            // provider reported no usage and the reservation was charged.
            None => unmatched_journal += 1,
        }
    }
    if unmatched_journal > 0 && evidence.journal_dropped == 0 {
        let reported_without_usage: BTreeSet<&str> = evidence
            .journal
            .iter()
            .filter(|c| c.usage.is_none())
            .filter_map(|c| c.idempotency_key.as_deref())
            .collect();
        for c in charges {
            if !usage_by_task.contains_key(c.task_id.as_str())
                && !reported_without_usage.contains(c.task_id.as_str())
            {
                violations += 1;
                r.violation(format!(
                    "task {} was charged {} tokens but the provider journal has no call for it",
                    c.task_id, c.tokens
                ));
            }
        }
    }
    // Each tenant's final usage equals the sum of its charges.
    let mut charged: BTreeMap<&str, u64> = BTreeMap::new();
    for c in charges {
        *charged.entry(c.tenant.as_str()).or_default() += c.tokens;
    }
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for b in &evidence.budgets {
        last.insert(b.tenant.as_str(), b.used_tokens);
    }
    for (tenant, used) in &last {
        let sum = charged.get(tenant).copied().unwrap_or(0);
        if *used != sum {
            violations += 1;
            r.violation(format!(
                "tenant {tenant} shows {used} tokens used but its charges add up to {sum}"
            ));
        }
    }
    r.observed = format!(
        "{} charges over {} tasks; {} provider calls journalled{}",
        charges.len(),
        by_task.len(),
        evidence.journal.len(),
        if evidence.journal_dropped > 0 {
            format!(" ({} dropped from the journal)", evidence.journal_dropped)
        } else {
            String::new()
        }
    );
    r.finish(violations)
}

/// No sample ever shows a tenant's used plus reserved tokens over its limit.
pub(super) fn budget_never_overdrawn(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant("budget_never_overdrawn", "used + reserved <= limit");
    let mut violations = 0;
    for b in &evidence.budgets {
        if b.used_tokens + b.reserved_tokens > b.limit_tokens {
            violations += 1;
            r.violation(format!(
                "tenant {} at {:.0}ms: used {} + reserved {} > limit {}",
                b.tenant, b.at_ms, b.used_tokens, b.reserved_tokens, b.limit_tokens
            ));
        }
    }
    if evidence.budgets.is_empty() {
        violations += 1;
        r.violation("no budget sample was taken");
    }
    r.observed = format!("{} samples", evidence.budgets.len());
    r.finish(violations)
}

/// The audit chain verifies through the API and offline.
pub(super) fn audit_chain_intact(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "audit_chain_intact",
        "the chain verifies online and offline",
    );
    let mut violations = 0;
    let mut entries = 0;
    for (how, answer) in [
        ("online", &evidence.audit_online),
        ("offline", &evidence.audit_offline),
    ] {
        match answer {
            Ok(a) if a.ok => entries = entries.max(a.entries),
            Ok(a) => {
                violations += 1;
                r.violation(format!(
                    "{how}: entry {} does not verify: {}",
                    a.first_bad_seq
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "?".to_owned()),
                    a.reason.as_deref().unwrap_or("no reason given")
                ));
            }
            Err(why) => {
                violations += 1;
                r.violation(format!("{how}: verification failed: {why}"));
            }
        }
    }
    r.observed = format!("{entries} entries");
    r.finish(violations)
}

/// Requests that reused a key and succeeded got the first success's answer:
/// for tasks the same body, byte for byte; for jobs the same job (a replayed
/// `POST /v1/jobs` reports the job's current state, which moves on).
pub(super) fn idempotent_replay_consistent(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "idempotent_replay_consistent",
        "every success under one key has the same task body or the same job",
    );
    let mut first: BTreeMap<(&str, &str), &Op> = BTreeMap::new();
    let mut violations = 0;
    let mut reused = 0;
    for op in &evidence.history {
        let success = matches!(op.outcome, Outcome::Status(200 | 202));
        let (Some(key), Some(digest), true) =
            (op.idempotency_key.as_deref(), &op.body_sha256, success)
        else {
            continue;
        };
        match first.get(&(op.tenant.as_str(), key)) {
            None => {
                first.insert((op.tenant.as_str(), key), op);
            }
            Some(earlier) if op.kind == OpKind::Job => {
                reused += 1;
                if earlier.resource_id != op.resource_id {
                    violations += 1;
                    r.violation(format!(
                        "key {key}: op {} and op {} were answered with different jobs ({} and {})",
                        earlier.index,
                        op.index,
                        earlier.resource_id.as_deref().unwrap_or("?"),
                        op.resource_id.as_deref().unwrap_or("?")
                    ));
                }
            }
            Some(earlier) => {
                reused += 1;
                if earlier.body_sha256.as_ref() != Some(digest) {
                    violations += 1;
                    r.violation(format!(
                        "key {key}: op {} and op {} got different bodies ({} and {})",
                        earlier.index,
                        op.index,
                        short(earlier.body_sha256.as_deref()),
                        short(Some(digest))
                    ));
                }
            }
        }
    }
    r.observed = format!("{} keys, {reused} repeated successes", first.len());
    r.finish(violations)
}

fn short(digest: Option<&str>) -> String {
    digest
        .map(|d| d.chars().take(12).collect())
        .unwrap_or_default()
}

/// Every answer's status is allowed; no answer counts as status 0.
pub(super) fn allowed_statuses(evidence: &Evidence, statuses: &[u16]) -> CheckResult {
    let list: Vec<String> = statuses.iter().map(u16::to_string).collect();
    let mut r = CheckResult::invariant(
        "allowed_statuses",
        format!("statuses in [{}]", list.join(", ")),
    );
    let mut violations = 0;
    let mut seen: BTreeMap<u16, u64> = BTreeMap::new();
    for op in evidence.history.iter().filter(|op| was_sent(op)) {
        let status = match op.outcome {
            Outcome::Status(s) => s,
            _ => 0,
        };
        *seen.entry(status).or_default() += 1;
        if !statuses.contains(&status) {
            violations += 1;
            r.violation(describe_op(op));
        }
    }
    r.observed = seen
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    r.finish(violations)
}

/// Per tenant key, requests admitted past the limiter within any interval
/// stay within rate × interval + burst (with [`RATE_LIMIT_SLACK_MS`]), and
/// every 429 says when to come back.
pub(super) fn rate_limit_respected(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "rate_limit_respected",
        "admitted <= rate x interval + burst; every 429 has Retry-After",
    );
    let mut violations = 0;
    let mut limited = 0;
    let mut by_tenant: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for op in &evidence.history {
        match op.outcome {
            Outcome::Status(429) => {
                limited += 1;
                if op.retry_after.is_none() {
                    violations += 1;
                    r.violation(format!("429 without Retry-After: {}", describe_op(op)));
                }
            }
            // 401 is refused before the limiter; everything else answered passed it.
            Outcome::Status(401) => {}
            Outcome::Status(_) => by_tenant
                .entry(op.tenant.as_str())
                .or_default()
                .push(op.start_ms),
            _ => {}
        }
    }
    for (tenant, mut times) in by_tenant {
        let Some(&(rps, burst)) = evidence.rate_limits.get(tenant) else {
            continue;
        };
        times.sort_by(f64::total_cmp);
        for interval_ms in [1000.0, 5000.0] {
            let allowed = (rps as f64 * (interval_ms + RATE_LIMIT_SLACK_MS) / 1000.0).floor()
                as usize
                + burst as usize;
            let mut lo = 0;
            let mut worst = 0;
            let mut worst_at = 0.0;
            for hi in 0..times.len() {
                while times[hi] - times[lo] > interval_ms {
                    lo += 1;
                }
                if hi - lo + 1 > worst {
                    worst = hi - lo + 1;
                    worst_at = times[lo];
                }
            }
            if worst > allowed {
                violations += 1;
                r.violation(format!(
                    "tenant {tenant}: {worst} requests admitted within {:.0}s from {worst_at:.0}ms; the limit allows {allowed}",
                    interval_ms / 1000.0
                ));
            }
        }
    }
    r.observed = format!("{limited} requests limited with 429");
    r.finish(violations)
}

/// `/health/live` answers 200 except while the process is meant to be down;
/// `/health/ready` is not 200 at some point during each named fault, and is
/// 200 again within `within` after it ends.
pub(super) fn ready_reflects_faults(
    evidence: &Evidence,
    faults: &[String],
    within: Duration,
) -> CheckResult {
    let mut r = CheckResult::invariant(
        "ready_reflects_faults",
        format!(
            "ready drops during [{}] and returns within {}",
            faults.join(", "),
            super::slo::humantime_like(within)
        ),
    );
    let mut violations = 0;
    let down = |t: f64| {
        evidence
            .process_down
            .iter()
            .any(|(from, to)| t >= *from && t <= *to)
    };
    for s in &evidence.health {
        if s.live != Some(200) && !down(s.at_ms) {
            violations += 1;
            r.violation(format!(
                "live answered {} at {:.0}ms while the process was meant to be up",
                s.live
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "nothing".to_owned()),
                s.at_ms
            ));
        }
    }
    for name in faults {
        let Some(span) = evidence.faults.get(name) else {
            violations += 1;
            r.violation(format!("fault {name} was never applied"));
            continue;
        };
        let during: Vec<_> = evidence
            .health
            .iter()
            .filter(|s| s.at_ms >= span.start_ms && s.at_ms <= span.end_ms)
            .collect();
        if !during.iter().any(|s| s.ready != Some(200)) {
            violations += 1;
            r.violation(format!(
                "ready stayed 200 throughout {name} ({} samples from {:.0}ms to {:.0}ms)",
                during.len(),
                span.start_ms,
                span.end_ms
            ));
        }
        let deadline = span.end_ms + within.as_secs_f64() * 1000.0;
        let back = evidence
            .health
            .iter()
            .find(|s| s.at_ms >= span.end_ms && s.ready == Some(200));
        match back {
            Some(s) if s.at_ms <= deadline => {}
            Some(s) => {
                violations += 1;
                r.violation(format!(
                    "ready returned {:.0}ms after {name} ended, later than allowed",
                    s.at_ms - span.end_ms
                ));
            }
            None => {
                violations += 1;
                r.violation(format!("ready never returned to 200 after {name}"));
            }
        }
    }
    r.observed = format!("{} health samples", evidence.health.len());
    r.finish(violations)
}

/// The orchestrator's log holds no panic.
pub(super) fn no_panics(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant("no_panics", "no panic in the orchestrator's log");
    for (line, text) in &evidence.panics {
        r.violation(format!("log line {line}: {text}"));
    }
    r.observed = format!("{} panics", evidence.panics.len());
    let n = evidence.panics.len();
    r.finish(n)
}
