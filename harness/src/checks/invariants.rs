//! Invariants: properties of the history and the final state that must hold
//! whatever the faults did. Each names its evidence when it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::slo::{describe_op, was_sent};
use super::{CheckResult, Evidence};
use crate::evidence::audit;
use crate::evidence::db::{Database, JobRow, JobState, KeyState, ReservationState};
use crate::evidence::{DLQ_PAGE, Settle};
use crate::load::{Credential, Op, OpKind, Outcome};

/// Slack allowed on a rate limit, for the time between the client sending a
/// request and the service's limiter seeing it (the proxy, the scheduler):
/// admitted ≤ rate × (interval + slack) + burst.
const RATE_LIMIT_SLACK_MS: f64 = 250.0;

/// The database, or a violation saying why it could not be read.
pub(super) fn database<'e>(r: &mut CheckResult, evidence: &'e Evidence) -> Option<&'e Database> {
    match &evidence.database {
        Ok(db) => Some(db),
        Err(why) => {
            r.violation(format!("the database could not be read: {why}"));
            r.observed = "no database".to_owned();
            None
        }
    }
}

/// Every job acknowledged with 202 ends succeeded or dead (in the DLQ), as
/// the database left it; a settle wait that ran out is a violation too.
pub(super) fn no_lost_jobs(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "no_lost_jobs",
        "every acknowledged job ends succeeded or dead",
    );
    let acknowledged: BTreeMap<&str, &str> = evidence
        .history
        .iter()
        .filter_map(|op| Some((op.acknowledged_job()?, op.tenant.as_str())))
        .collect();
    let count = acknowledged.len() as u64;
    let missing = || "no job was acknowledged with 202".to_owned();
    let mut violations = 0;
    if let Settle::TimedOut { after_ms, pending } = &evidence.settle {
        violations += 1;
        r.violation(format!(
            "jobs had not settled after {:.0}s: {pending}",
            *after_ms as f64 / 1000.0
        ));
    }
    let Some(db) = database(&mut r, evidence) else {
        return r.finish(violations + 1).exercised(count, missing);
    };
    let jobs: BTreeMap<&str, &JobRow> = db.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, tenant) in &acknowledged {
        match jobs.get(id) {
            Some(job) if job.tenant != *tenant => {
                violations += 1;
                r.violation(format!(
                    "job {id} was acknowledged to tenant {tenant} but the database gives it to {}",
                    job.tenant
                ));
            }
            Some(job) if job.state.is_final() => {
                *states.entry(job.state.as_str()).or_default() += 1;
            }
            Some(job) => {
                violations += 1;
                r.violation(format!(
                    "job {id} of tenant {tenant} is still {} after {} of {} attempts{}",
                    job.state.as_str(),
                    job.attempts,
                    job.max_attempts,
                    job.last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ));
            }
            None => {
                violations += 1;
                r.violation(format!(
                    "job {id} of tenant {tenant} was acknowledged with 202 but the database has no such job"
                ));
            }
        }
    }
    r.observed = format!(
        "{count} acknowledged: {} succeeded, {} dead, {} lost or unsettled",
        states.get("succeeded").copied().unwrap_or(0),
        states.get("dead").copied().unwrap_or(0),
        count as usize - states.values().sum::<usize>(),
    );
    r.finish(violations).exercised(count, missing)
}

/// One charge per task and per idempotency key; every successful task and
/// job is charged; each charge equals the usage the provider reported for
/// one of that task's calls; each tenant's usage is the sum of its charges.
pub(super) fn exactly_once_charge(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "exactly_once_charge",
        "one charge per task and key, equal to the provider's reported usage",
    );
    let Some(db) = database(&mut r, evidence) else {
        return r;
    };
    let charges = &db.charges;
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
    for job in &db.jobs {
        if job.state == JobState::Succeeded && !by_task.contains_key(job.id.as_str()) {
            violations += 1;
            r.violation(format!("job {} succeeded but was never charged", job.id));
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
    r.finish(violations).exercised(charges.len() as u64, || {
        "the ledger holds no charge: nothing succeeded".to_owned()
    })
}

/// No budget, sampled through the API during the run or read from the
/// database at the end, shows used plus reserved tokens over its limit.
pub(super) fn budget_never_overdrawn(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant("budget_never_overdrawn", "used + reserved <= limit");
    let mut violations = 0;
    let mut spending = 0u64;
    let mut judge = |r: &mut CheckResult, what: String, used: u64, reserved: u64, limit: u64| {
        if used + reserved > 0 {
            spending += 1;
        }
        if used.saturating_add(reserved) > limit {
            violations += 1;
            r.violation(format!(
                "{what}: used {used} + reserved {reserved} > limit {limit}"
            ));
        }
    };
    for b in &evidence.budgets {
        judge(
            &mut r,
            format!("tenant {} at {:.0}ms", b.tenant, b.at_ms),
            b.used_tokens,
            b.reserved_tokens,
            b.limit_tokens,
        );
    }
    let rows = match &evidence.database {
        Ok(db) => {
            for b in &db.budgets {
                judge(
                    &mut r,
                    format!("tenant {} in the database", b.tenant),
                    b.used_tokens,
                    b.reserved_tokens,
                    b.limit_tokens,
                );
            }
            db.budgets.len()
        }
        Err(why) => {
            violations += 1;
            r.violation(format!("the database could not be read: {why}"));
            0
        }
    };
    r.observed = format!(
        "{} samples and {rows} budgets in the database, {spending} with tokens used or reserved",
        evidence.budgets.len()
    );
    r.finish(violations).exercised(spending, || {
        "no budget sample showed any tokens used or reserved".to_owned()
    })
}

/// Budgets add up: per tenant, `used` is the sum of its charges and
/// `reserved` the sum of its held reservations; every charge settles a
/// reservation in state `charged`; and after a clean shutdown no reservation
/// is held and no idempotency key is in flight.
pub(super) fn budget_conserved(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "budget_conserved",
        "used = sum of charges, reserved = sum of held reservations; none held after a clean shutdown",
    );
    let Some(db) = database(&mut r, evidence) else {
        return r;
    };
    let mut violations = 0;
    let mut charged: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &db.charges {
        *charged.entry(c.tenant.as_str()).or_default() += c.tokens;
    }
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for res in db
        .reservations
        .iter()
        .filter(|r| r.state == ReservationState::Held)
    {
        *held.entry(res.tenant.as_str()).or_default() += res.tokens;
    }
    let budgets: BTreeSet<&str> = db.budgets.iter().map(|b| b.tenant.as_str()).collect();
    for b in &db.budgets {
        let sum = charged.get(b.tenant.as_str()).copied().unwrap_or(0);
        if b.used_tokens != sum {
            violations += 1;
            r.violation(format!(
                "tenant {}: used_tokens is {} but its charges add up to {sum}",
                b.tenant, b.used_tokens
            ));
        }
        let sum = held.get(b.tenant.as_str()).copied().unwrap_or(0);
        if b.reserved_tokens != sum {
            violations += 1;
            r.violation(format!(
                "tenant {}: reserved_tokens is {} but its held reservations add up to {sum}",
                b.tenant, b.reserved_tokens
            ));
        }
    }
    for tenant in charged.keys().chain(held.keys()) {
        if !budgets.contains(tenant) {
            violations += 1;
            r.violation(format!(
                "tenant {tenant} has charges or reservations but no budget row"
            ));
        }
    }
    let states: BTreeMap<i64, ReservationState> =
        db.reservations.iter().map(|r| (r.id, r.state)).collect();
    for c in &db.charges {
        match states.get(&c.reservation_id) {
            Some(ReservationState::Charged) => {}
            other => {
                violations += 1;
                r.violation(format!(
                    "the charge of task {} settles reservation {}, which is {}",
                    c.task_id,
                    c.reservation_id,
                    other.map_or("missing".to_owned(), |s| format!("{s:?}").to_lowercase())
                ));
            }
        }
    }
    let clean = matches!(&evidence.shutdown, Ok(s) if s.graceful);
    let mut left_held = 0;
    let mut left_in_flight = 0;
    if clean {
        for res in db
            .reservations
            .iter()
            .filter(|r| r.state == ReservationState::Held)
        {
            left_held += 1;
            violations += 1;
            r.violation(format!(
                "reservation {} of tenant {} (task {}{}) still holds {} tokens after a clean shutdown",
                res.id,
                res.tenant,
                res.task_id,
                res.idempotency_key
                    .as_deref()
                    .map(|k| format!(", key {k}"))
                    .unwrap_or_default(),
                res.tokens
            ));
        }
        for key in db.keys.iter().filter(|k| k.state == KeyState::InFlight) {
            left_in_flight += 1;
            violations += 1;
            r.violation(format!(
                "key {} of tenant {} is still in flight after a clean shutdown (reservation {})",
                key.key, key.tenant, key.reservation_id
            ));
        }
    }
    r.observed = format!(
        "{} tenants, {} reservations, {} charges{}",
        db.budgets.len(),
        db.reservations.len(),
        db.charges.len(),
        if clean {
            format!("; after a clean shutdown {left_held} held, {left_in_flight} keys in flight")
        } else {
            "; the shutdown was not clean, so held reservations were not judged".to_owned()
        }
    );
    r.finish(violations)
        .exercised(db.reservations.len() as u64, || {
            "no reservation was ever made".to_owned()
        })
}

/// The audit chain the database holds verifies with the harness's own
/// implementation of the documented hash; the service's own verification
/// (`GET /v1/audit/verify`, before shutdown) agrees with it, entry for entry.
pub(super) fn audit_chain_intact(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "audit_chain_intact",
        "the chain verifies by the documented hash, and the service agrees",
    );
    let Some(db) = database(&mut r, evidence) else {
        return r;
    };
    let mut violations = 0;
    let own = audit::verify(&db.audit, db.audit_head.as_ref());
    if let Some(bad) = &own.first_bad {
        violations += 1;
        r.violation(format!(
            "entry {} does not verify by the documented hash: {}",
            bad.seq, bad.reason
        ));
    }
    match &evidence.audit_service {
        Ok(answer) => {
            match (&own.first_bad, answer.ok, answer.first_bad_seq) {
                (Some(bad), true, _) if bad.seq as u64 <= answer.entries => {
                    violations += 1;
                    r.violation(format!(
                        "the service verified {} entries but entry {} among them does not verify by the documented hash",
                        answer.entries, bad.seq
                    ));
                }
                (_, false, seq) => {
                    violations += 1;
                    r.violation(format!(
                        "the service says entry {} does not verify: {}",
                        seq.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                        answer.reason.as_deref().unwrap_or("no reason given")
                    ));
                }
                _ => {}
            }
            if answer.entries > own.entries {
                violations += 1;
                r.violation(format!(
                    "the service verified {} entries but the database holds {}",
                    answer.entries, own.entries
                ));
            } else if let (Some(head), Some(index)) =
                (&answer.head_hash, answer.entries.checked_sub(1))
            {
                let stored = db
                    .audit
                    .get(index as usize)
                    .map(|row| hex::encode(&row.hash));
                if stored.as_deref() != Some(head.as_str()) {
                    violations += 1;
                    r.violation(format!(
                        "entry {}: the service's head hash {} is not the hash the database holds ({})",
                        answer.entries,
                        short(Some(head)),
                        short(stored.as_deref())
                    ));
                }
            }
        }
        Err(why) => {
            violations += 1;
            r.violation(format!("the service's verification failed: {why}"));
        }
    }
    r.observed = format!(
        "{} entries; the service verified {}",
        own.entries,
        evidence
            .audit_service
            .as_ref()
            .map_or_else(|_| "nothing".to_owned(), |a| a.entries.to_string())
    );
    r.finish(violations)
        .exercised(own.entries, || "the audit log holds no entry".to_owned())
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
    r.finish(violations).exercised(reused, || {
        "no idempotency key was used again after a success".to_owned()
    })
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
    let sent = seen.values().sum();
    r.finish(violations)
        .exercised(sent, || "no request was sent".to_owned())
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
    let mut limited = 0u64;
    // Each key has its own limiter: the tenant's own key, and its key of
    // each role the load uses. Requests without a valid key (401) are
    // refused before any limiter.
    let mut by_key: BTreeMap<(&str, &Credential), Vec<f64>> = BTreeMap::new();
    for op in &evidence.history {
        match op.outcome {
            // The lockout's refusals come before any limiter.
            Outcome::Status(429) if op.auth_locked() => {}
            Outcome::Status(429) => {
                limited += 1;
                if op.retry_after.is_none() {
                    violations += 1;
                    r.violation(format!("429 without Retry-After: {}", describe_op(op)));
                }
            }
            Outcome::Status(401) => {}
            Outcome::Status(_) if op.credential.is_valid() => by_key
                .entry((op.tenant.as_str(), &op.credential))
                .or_default()
                .push(op.start_ms),
            _ => {}
        }
    }
    for ((tenant, credential), mut times) in by_key {
        let limit = match credential {
            Credential::Role(role) => evidence.contract.rate_limits.get(role),
            _ => evidence.rate_limits.get(tenant),
        };
        let Some(&(rps, burst)) = limit else {
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
    r.finish(violations).exercised(limited, || {
        "no request was refused with 429: the load never went over a key's limit".to_owned()
    })
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
    let process_down = evidence.process_down();
    let down = |t: f64| process_down.iter().any(|(from, to)| t >= *from && t <= *to);
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
    let mut inside = 0u64;
    let mut unprobed = Vec::new();
    for name in faults {
        let Some(span) = evidence.span(name) else {
            violations += 1;
            r.violation(format!("fault {name} was never applied"));
            continue;
        };
        let during: Vec<_> = evidence
            .health
            .iter()
            .filter(|s| s.at_ms >= span.start_ms && s.at_ms <= span.end_ms)
            .collect();
        inside += during.len() as u64;
        if during.is_empty() {
            // Nothing shows what ready said during the fault, nor after.
            unprobed.push(name.as_str());
            continue;
        }
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
    r.observed = format!(
        "{} health samples, {inside} inside the faults",
        evidence.health.len()
    );
    let missing = (!unprobed.is_empty())
        .then(|| format!("no health probe fell inside {}", unprobed.join(", ")));
    r.finish(violations).evidenced(inside, missing)
}

/// The dead-letter queue keeps every job that ran out of attempts: every
/// dead job a client was shown (in a listing, or read) carried its last
/// error; as the database left it, each dead job has its last error and a
/// `job.dead` audit entry; a job that used all its attempts without succeeding is
/// dead; every job a replay was accepted for (202) ends succeeded or dead
/// again; each tenant's `GET /v1/dlq` after settling lists exactly its dead
/// jobs (up to the service's page of 1000).
pub(super) fn dlq_complete(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "dlq_complete",
        "exhausted jobs are dead with their error, replays end final, the DLQ lists the dead",
    );
    let Some(db) = database(&mut r, evidence) else {
        return r;
    };
    let mut violations = 0;
    let audited_dead: BTreeSet<&[u8]> = db
        .audit
        .iter()
        .filter(|a| a.action == b"job.dead")
        .map(|a| a.subject.as_slice())
        .collect();
    let mut dead_by_tenant: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for job in &db.jobs {
        if job.state == JobState::Dead {
            dead_by_tenant
                .entry(job.tenant.as_str())
                .or_default()
                .insert(job.id.as_str());
            if job
                .last_error
                .as_deref()
                .is_none_or(|e| e.trim().is_empty())
            {
                violations += 1;
                r.violation(format!("dead job {} has no last error", job.id));
            }
            if !audited_dead.contains(job.id.as_bytes()) {
                violations += 1;
                r.violation(format!("dead job {} has no job.dead audit entry", job.id));
            }
        } else if job.state != JobState::Succeeded && job.attempts >= job.max_attempts {
            violations += 1;
            r.violation(format!(
                "job {} used {} of {} attempts but is {}, not dead",
                job.id,
                job.attempts,
                job.max_attempts,
                job.state.as_str()
            ));
        }
    }
    // What clients were shown of the DLQ while the run went on: a job in a
    // listing, or read while dead, carries its last error (a replay may
    // have changed the job since, so only the answer shows it).
    let mut seen_dead = 0u64;
    for op in &evidence.history {
        if op.credential != Credential::Tenant || op.outcome != Outcome::Status(200) {
            continue;
        }
        let Some(body) = op.body.as_deref() else {
            continue;
        };
        let shown: Vec<serde_json::Value> = match op.kind {
            OpKind::ListDlq => serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("jobs")?.as_array().cloned())
                .unwrap_or_default(),
            OpKind::ReadJob if op.job_state.as_deref() == Some("dead") => {
                serde_json::from_str(body).ok().into_iter().collect()
            }
            _ => continue,
        };
        for job in shown {
            seen_dead += 1;
            let error = job.get("last_error").and_then(serde_json::Value::as_str);
            if error.is_none_or(|e| e.trim().is_empty()) {
                violations += 1;
                r.violation(format!(
                    "op {} was shown dead job {} without its last error",
                    op.index,
                    job.get("id")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("?")
                ));
            }
        }
    }
    let jobs: BTreeMap<&str, &JobRow> = db.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let replayed: BTreeSet<&str> = evidence
        .history
        .iter()
        .filter(|op| {
            op.kind == OpKind::ReplayDlq
                && op.credential == Credential::Tenant
                && op.outcome == Outcome::Status(202)
        })
        .filter_map(|op| op.job_id.as_deref())
        .collect();
    for id in &replayed {
        match jobs.get(id) {
            Some(job) if job.state.is_final() => {}
            Some(job) => {
                violations += 1;
                r.violation(format!(
                    "job {id} was replayed but is {} after settling",
                    job.state.as_str()
                ));
            }
            None => {
                violations += 1;
                r.violation(format!(
                    "job {id} was replayed but the database has no such job"
                ));
            }
        }
    }
    match &evidence.dlq_listing {
        Err(why) => {
            violations += 1;
            r.violation(format!("the DLQ could not be listed after settling: {why}"));
        }
        Ok(listing) => {
            for (tenant, listed) in listing {
                let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
                let dead = dead_by_tenant
                    .get(tenant.as_str())
                    .cloned()
                    .unwrap_or_default();
                for id in listed.difference(&dead) {
                    violations += 1;
                    r.violation(format!(
                        "GET /v1/dlq of tenant {tenant} lists {id}, which the database does not hold dead"
                    ));
                }
                if listed.len() < DLQ_PAGE {
                    for id in dead.difference(&listed) {
                        violations += 1;
                        r.violation(format!(
                            "job {id} of tenant {tenant} is dead in the database but GET /v1/dlq does not list it"
                        ));
                    }
                }
            }
        }
    }
    let dead: usize = dead_by_tenant.values().map(BTreeSet::len).sum();
    r.observed = format!(
        "{dead} dead jobs, {} replays accepted, {} jobs in all; {seen_dead} dead jobs shown to clients",
        replayed.len(),
        db.jobs.len()
    );
    let dlq_requests = evidence.history.iter().any(|op| {
        matches!(op.kind, OpKind::ListDlq | OpKind::ReplayDlq)
            && op.credential == Credential::Tenant
    });
    let missing = if dead == 0 && replayed.is_empty() && seen_dead == 0 {
        Some("no job went dead".to_owned())
    } else if dlq_requests && replayed.is_empty() {
        Some("the mix asked for replays but no replay of a dead job was accepted".to_owned())
    } else {
        None
    };
    r.finish(violations)
        .evidenced((dead + replayed.len()) as u64 + seen_dead, missing)
}

/// The orchestrator's log holds no panic.
/// The actor of changes the orchestrator makes on its own (crash recovery,
/// the reaper), as its audit entries name it.
const SYSTEM_ACTOR: &[u8] = b"system";

/// A job's lease as the audit log tells it.
#[derive(Default)]
struct LeaseTrail {
    /// The worker holding it, and the entry that leased it.
    holder: Option<(Vec<u8>, i64)>,
    /// The worker whose lease the reaper took back, until the job is leased again.
    reclaimed_from: Option<Vec<u8>>,
}

/// Read from the audit log in chain order: each job's lease holder is the
/// worker of its latest `job.leased`, until the lease is reclaimed, released
/// or settled. A completion, failure or release by any other worker, or a
/// lease taken while another worker holds one, is a stale worker changing
/// the job: its lease was not fenced. Exercised when some job's lease was
/// reclaimed from one worker and then leased by another (a takeover):
/// otherwise no stale worker ever existed to be fenced off.
pub(super) fn leases_fenced(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "leases_fenced",
        "only a job's current lease holder completes, fails or releases it",
    );
    let Some(db) = database(&mut r, evidence) else {
        return r;
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut jobs: BTreeMap<Vec<u8>, LeaseTrail> = BTreeMap::new();
    let mut violations = 0;
    let mut judged = 0u64;
    let mut takeovers = 0u64;
    for row in &db.audit {
        let action = row.action.as_slice();
        if !action.starts_with(b"job.") {
            continue;
        }
        let trail = jobs.entry(row.subject.clone()).or_default();
        let by_system = row.actor == SYSTEM_ACTOR;
        match action {
            b"job.leased" => {
                if let Some((holder, at)) = &trail.holder
                    && *holder != row.actor
                {
                    violations += 1;
                    r.violation(format!(
                        "job {} leased by {} at entry {} while {} held it (leased at entry {at})",
                        text(&row.subject),
                        text(&row.actor),
                        row.seq,
                        text(holder),
                    ));
                }
                if trail.reclaimed_from.take().is_some_and(|w| w != row.actor) {
                    takeovers += 1;
                }
                trail.holder = Some((row.actor.clone(), row.seq));
            }
            b"job.completed" | b"job.retrying" | b"job.dead" | b"job.released" if !by_system => {
                judged += 1;
                if trail.holder.as_ref().map(|(w, _)| w) != Some(&row.actor) {
                    violations += 1;
                    r.violation(format!(
                        "job {}: {} by {} at entry {}, but {}",
                        text(&row.subject),
                        text(action),
                        text(&row.actor),
                        row.seq,
                        match &trail.holder {
                            Some((holder, at)) => {
                                format!("{} held its lease (leased at entry {at})", text(holder))
                            }
                            None => "no worker held its lease".to_owned(),
                        }
                    ));
                }
                trail.holder = None;
            }
            // Taken back by the reaper or crash recovery (and maybe buried):
            // the worker it was taken from is now stale.
            b"job.reclaimed" | b"job.dead" => {
                trail.reclaimed_from = trail.holder.take().map(|(w, _)| w);
            }
            _ => {}
        }
    }
    r.observed = format!(
        "{judged} completions, failures and releases by workers judged; {takeovers} leases taken over by another worker"
    );
    r.finish(violations).exercised(takeovers, || {
        "no job's lease was ever taken over by another worker, so no stale worker was fenced off"
            .to_owned()
    })
}

pub(super) fn no_panics(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant("no_panics", "no panic in the orchestrator's log");
    let log = match &evidence.log {
        Ok(log) => log,
        Err(why) => {
            r.violation(format!("the orchestrator's log could not be read: {why}"));
            return r;
        }
    };
    for (line, text) in &log.panics {
        r.violation(format!("log line {line}: {text}"));
    }
    r.observed = format!("{} panics in {} lines", log.panics.len(), log.lines);
    r.finish(log.panics.len())
        .exercised(log.lines, || "the orchestrator's log is empty".to_owned())
}
