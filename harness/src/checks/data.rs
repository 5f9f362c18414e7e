//! Data protection: planted personal data leaves no trace
//! (`no_pii_leaked`), webhooks reach the sink signed (`webhooks_delivered`),
//! and none reaches the trap (`ssrf_refused`). Judged on the orchestrator's
//! log, the database copy (its audit rows and deliveries, read with the
//! harness's SQL), the answers clients got, and what the sink and the trap
//! saw, never on the service's own account of it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{CheckResult, Evidence};
use crate::evidence::db::{Database, DeliveryRow, JobState};
use crate::load::{Op, Outcome, WebhookTarget};
use crate::sink::Signature;

/// The first planted value `text` holds, if any.
fn find<'v>(text: &str, planted: &'v BTreeSet<&str>) -> Option<&'v str> {
    planted.iter().copied().find(|v| text.contains(v))
}

/// `value` without its `idempotency_key` fields: a job view returns the
/// job's own key to its own tenant, which is the client's data given back,
/// not a leak.
fn without_own_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("idempotency_key");
            map.values_mut().for_each(without_own_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(without_own_keys),
        _ => {}
    }
}

/// None of the planted values appears in the log, the audit rows, an
/// answer's kept body or a webhook payload (as the sink received it and as
/// the outbox holds it).
pub(super) fn no_pii_leaked(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "no_pii_leaked",
        "no planted value in the log, the audit rows, any answer or any webhook payload",
    );
    let planted: BTreeSet<&str> = evidence
        .history
        .iter()
        .filter(|op| op.outcome != Outcome::NotSent)
        .flat_map(|op| op.planted.iter().map(String::as_str))
        .collect();
    let count = planted.len() as u64;
    let missing = || "no request carrying personal data was sent".to_owned();
    if planted.is_empty() {
        return r.exercised(0, missing);
    }
    let mut violations = 0;
    let mut places = 0u64;
    match &evidence.log {
        Ok(log) => {
            for (i, line) in log.text.lines().enumerate() {
                places += 1;
                if let Some(v) = find(line, &planted) {
                    violations += 1;
                    r.violation(format!("the orchestrator's log, line {}, holds {v}", i + 1));
                }
            }
        }
        Err(why) => {
            violations += 1;
            r.violation(format!("the orchestrator's log could not be read: {why}"));
        }
    }
    match &evidence.database {
        Ok(db) => {
            for row in &db.audit {
                places += 1;
                let fields = [&row.actor, &row.action, &row.subject, &row.details];
                for field in fields {
                    if let Some(v) = find(&String::from_utf8_lossy(field), &planted) {
                        violations += 1;
                        r.violation(format!("audit entry {} holds {v}", row.seq));
                    }
                }
            }
            for d in &db.deliveries {
                places += 1;
                if let Some(v) = find(&d.payload, &planted) {
                    violations += 1;
                    r.violation(format!("the payload of delivery {} holds {v}", d.id));
                }
            }
        }
        Err(why) => {
            violations += 1;
            r.violation(format!("the database could not be read: {why}"));
        }
    }
    for op in &evidence.history {
        let Some(body) = &op.body else { continue };
        places += 1;
        let text = match serde_json::from_str::<Value>(body) {
            Ok(mut value) => {
                without_own_keys(&mut value);
                value.to_string()
            }
            Err(_) => body.clone(),
        };
        if let Some(v) = find(&text, &planted) {
            violations += 1;
            r.violation(format!(
                "the answer to request {} ({:?}) holds {v}",
                op.index, op.kind
            ));
        }
    }
    if let Some(webhooks) = &evidence.webhooks {
        for record in &webhooks.records {
            places += 1;
            if let Some(v) = find(&record.body, &planted) {
                violations += 1;
                r.violation(format!("webhook delivery #{} holds {v}", record.seq));
            }
        }
    }
    r.observed =
        format!("{count} planted values looked for in {places} lines, rows, answers and payloads");
    r.finish(violations).exercised(count, missing)
}

/// The acknowledged jobs whose webhook pointed at `target`, with their
/// tenants.
fn jobs_aimed_at(history: &[Op], target: WebhookTarget) -> BTreeMap<&str, &str> {
    history
        .iter()
        .filter(|op| op.webhook == Some(target))
        .filter_map(|op| Some((op.acknowledged_job()?, op.tenant.as_str())))
        .collect()
}

/// The jobs aimed at `target` that ended (succeeded or dead; `no_lost_jobs`
/// judges the others), each with its state and its deliveries in the
/// database, oldest first.
fn ended_jobs<'e>(
    history: &'e [Op],
    db: &'e Database,
    target: WebhookTarget,
) -> Vec<(&'e str, JobState, Vec<&'e DeliveryRow>)> {
    let mut by_job: BTreeMap<&str, Vec<&DeliveryRow>> = BTreeMap::new();
    for d in &db.deliveries {
        by_job.entry(d.job_id.as_str()).or_default().push(d);
    }
    jobs_aimed_at(history, target)
        .into_keys()
        .filter_map(|id| {
            let job = db.job(id)?;
            job.state
                .is_final()
                .then(|| (id, job.state, by_job.remove(id).unwrap_or_default()))
        })
        .collect()
}

/// Every terminal job aimed at the sink has deliveries in the database, each
/// delivered, and the sink took each with a valid signature; every delivery
/// the sink received is one the database holds for that job, with its
/// payload, and carries a valid signature.
pub(super) fn webhooks_delivered(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "webhooks_delivered",
        "every terminal job with an allowed webhook delivered, signed, under the database's delivery ids",
    );
    let missing = || "no job with a webhook to the sink ended".to_owned();
    let Some(webhooks) = &evidence.webhooks else {
        r.violation("the run had no webhook sink");
        return r.finish(1).exercised(0, missing);
    };
    let db = match &evidence.database {
        Ok(db) => db,
        Err(why) => {
            r.violation(format!("the database could not be read: {why}"));
            return r.finish(1).exercised(0, missing);
        }
    };
    let mut violations = 0;
    if webhooks.dropped > 0 {
        violations += 1;
        r.violation(format!(
            "the sink dropped {} deliveries past its record limit: they cannot be judged",
            webhooks.dropped
        ));
    }
    let rows: BTreeMap<&str, &DeliveryRow> =
        db.deliveries.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut taken: BTreeMap<&str, u64> = BTreeMap::new();
    let mut received: BTreeMap<&str, u64> = BTreeMap::new();
    for record in &webhooks.records {
        let id = record.delivery_id.as_deref().unwrap_or("(none)");
        *received.entry(id).or_default() += 1;
        if record.signature != Signature::Valid {
            violations += 1;
            r.violation(format!(
                "delivery {id} (sink record #{}) arrived with a {} signature",
                record.seq,
                match record.signature {
                    Signature::Missing => "missing",
                    _ => "invalid",
                }
            ));
        }
        match rows.get(id) {
            None => {
                violations += 1;
                r.violation(format!(
                    "the sink received delivery {id} (sink record #{}), which the database does not hold",
                    record.seq
                ));
            }
            Some(row) if record.job_id.as_deref() != Some(row.job_id.as_str()) => {
                violations += 1;
                r.violation(format!(
                    "delivery {id} names job {} at the sink but {} in the database",
                    record.job_id.as_deref().unwrap_or("(none)"),
                    row.job_id
                ));
            }
            Some(row) if record.body != row.payload => {
                violations += 1;
                r.violation(format!(
                    "delivery {id} (sink record #{}) carried another body than the one queued",
                    record.seq
                ));
            }
            Some(_) => {
                if (200..300).contains(&record.answered) && record.signature == Signature::Valid {
                    *taken.entry(id).or_default() += 1;
                }
            }
        }
    }
    let ended = ended_jobs(&evidence.history, db, WebhookTarget::Sink);
    let judged = ended.len() as u64;
    for (id, state, deliveries) in ended {
        if deliveries.is_empty() {
            violations += 1;
            r.violation(format!(
                "job {id} ended {} but the database holds no delivery for it",
                state.as_str()
            ));
        }
        for d in deliveries {
            if d.state != "delivered" {
                violations += 1;
                r.violation(format!(
                    "delivery {} of job {id} is {} after {} attempts{}",
                    d.id,
                    d.state,
                    d.attempts,
                    d.last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ));
            } else {
                if !taken.contains_key(d.id.as_str()) {
                    violations += 1;
                    r.violation(format!(
                        "delivery {} of job {id} is delivered in the database, but the sink never took it signed",
                        d.id
                    ));
                }
            }
        }
    }
    let again = received.values().filter(|&&n| n > 1).count();
    r.observed = format!(
        "{judged} ended jobs with a webhook; {} deliveries received, {again} of them sent again under the same id",
        webhooks.records.len()
    );
    r.finish(violations).exercised(judged, missing)
}

/// The trap accepted no connection, and every terminal job aimed at it
/// has its deliveries refused, with a reason naming the loopback address.
pub(super) fn ssrf_refused(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "ssrf_refused",
        "no connection reached the forbidden target; every such job records the refusal",
    );
    let missing = || "no job with a webhook to the forbidden target ended".to_owned();
    let Some(webhooks) = &evidence.webhooks else {
        r.violation("the run had no webhook trap");
        return r.finish(1).exercised(0, missing);
    };
    let mut violations = 0;
    if webhooks.trap_connections > 0 {
        violations += 1;
        r.violation(format!(
            "the forbidden target accepted {} connections: the guard let webhooks reach a loopback address",
            webhooks.trap_connections
        ));
    }
    let db = match &evidence.database {
        Ok(db) => db,
        Err(why) => {
            r.violation(format!("the database could not be read: {why}"));
            return r.finish(violations + 1).exercised(0, missing);
        }
    };
    let ended = ended_jobs(&evidence.history, db, WebhookTarget::Trap);
    let judged = ended.len() as u64;
    for (id, state, deliveries) in ended {
        if deliveries.is_empty() {
            violations += 1;
            r.violation(format!(
                "job {id} ended {} but records no delivery, so no refusal",
                state.as_str()
            ));
        }
        for d in deliveries {
            let reason = d.last_error.as_deref().unwrap_or_default();
            if d.state != "refused" || !reason.contains("loopback") {
                violations += 1;
                r.violation(format!(
                    "delivery {} of job {id} is {} after {} attempts, not refused for a loopback address{}",
                    d.id,
                    d.state,
                    d.attempts,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {reason})")
                    }
                ));
            }
        }
    }
    r.observed = format!(
        "{judged} ended jobs aimed at the forbidden target; {} connections reached it",
        webhooks.trap_connections
    );
    r.finish(violations).exercised(judged, missing)
}
