//! The audit entries of the events both backends write, each declared once.
//!
//! The SQLite store and the Redis store append the same entries for the same
//! events, in the same transaction as the change they record. Each function
//! here takes the plain facts of one event and returns its entry: the action,
//! the subject and the details. The audit chain hashes the canonical details,
//! and tests and the harness read them, so a field's name, value or presence
//! changes only here, for both backends at once.

use serde_json::json;

use super::{Charge, JobState, SYSTEM_ACTOR};
use crate::audit::NewEntry;

/// `task.completed`: `actor` finished task `task_id` of `tenant`, whose
/// reservation held `idempotency_key` (if any); `status` is the stored
/// response's HTTP status, `None` when the key was released instead.
pub(super) fn task_completed(
    actor: &str,
    task_id: &str,
    tenant: &str,
    status: Option<u16>,
    idempotency_key: Option<&str>,
) -> NewEntry {
    NewEntry::new(
        actor,
        "task.completed",
        task_id,
        json!({
            "tenant": tenant,
            "status": status,
            "idempotency_key": idempotency_key,
        }),
    )
}

/// `budget.charged`: `actor` charged `tenant` for task (or job) `task_id`, as
/// `charge` says.
pub(super) fn budget_charged(
    actor: &str,
    tenant: &str,
    task_id: &str,
    charge: &Charge,
) -> NewEntry {
    NewEntry::new(
        actor,
        "budget.charged",
        tenant,
        json!({
            "task_id": task_id,
            "tokens": charge.charged,
            "overage_tokens": charge.overage,
            "remaining_tokens": charge.remaining,
        }),
    )
}

/// `job.accepted`: `actor` submitted job `id` for `tenant`, with its
/// idempotency key (if any), its completion limit, its attempts (already at
/// least 1) and the size of its prompt in bytes.
pub(super) fn job_accepted(
    actor: &str,
    id: &str,
    tenant: &str,
    idempotency_key: Option<&str>,
    max_tokens: u32,
    max_attempts: u32,
    prompt_bytes: usize,
) -> NewEntry {
    NewEntry::new(
        actor,
        "job.accepted",
        id,
        json!({
            "tenant": tenant,
            "idempotency_key": idempotency_key,
            "max_tokens": max_tokens,
            "max_attempts": max_attempts,
            "prompt_bytes": prompt_bytes,
        }),
    )
}

/// `job.leased`: `worker` leased job `id` for `lease_ms`, starting attempt
/// `attempt`.
pub(super) fn job_leased(worker: &str, id: &str, attempt: u32, lease_ms: i64) -> NewEntry {
    NewEntry::new(
        worker,
        "job.leased",
        id,
        json!({"attempt": attempt, "lease_ms": lease_ms}),
    )
}

/// `job.completed`: `actor` completed job `id` of `tenant` in attempt
/// `attempt`, charging `tokens`.
pub(super) fn job_completed(
    actor: &str,
    id: &str,
    tenant: &str,
    attempt: u32,
    tokens: u64,
) -> NewEntry {
    NewEntry::new(
        actor,
        "job.completed",
        id,
        json!({"tenant": tenant, "attempt": attempt, "tokens": tokens}),
    )
}

/// A failed attempt that `actor` reported for job `id` of `tenant`, with its
/// (already redacted) `error`: `job.retrying` when the job runs again in
/// `retry_in_ms`, otherwise `job.dead`, which says whether the failure was
/// `retryable` (a retryable failure dies when it was the last attempt).
pub(super) fn job_failed(
    actor: &str,
    id: &str,
    tenant: &str,
    attempt: u32,
    error: &str,
    retry_in_ms: Option<i64>,
    retryable: bool,
) -> NewEntry {
    let (action, details) = match retry_in_ms {
        Some(retry_in_ms) => (
            "job.retrying",
            json!({"tenant": tenant, "attempt": attempt, "error": error,
                   "retry_in_ms": retry_in_ms}),
        ),
        None => (
            "job.dead",
            json!({"tenant": tenant, "attempt": attempt, "error": error,
                   "retryable": retryable}),
        ),
    };
    NewEntry::new(actor, action, id, details)
}

/// `job.released`: `actor` gave the lease of job `id` back at shutdown,
/// without counting the attempt.
pub(super) fn job_released(actor: &str, id: &str) -> NewEntry {
    NewEntry::new(actor, "job.released", id, json!({"reason": "shutdown"}))
}

/// `job.replayed`: `actor` queued dead job `id` of `tenant` again.
pub(super) fn job_replayed(actor: &str, id: &str, tenant: &str) -> NewEntry {
    NewEntry::new(actor, "job.replayed", id, json!({"tenant": tenant}))
}

/// An expired lease of job `id` of `tenant` that the orchestrator itself took
/// back after attempt `attempt`, with the `error` recorded for it:
/// `job.dead` when the job is now in the dead-letter queue (`now_state` is
/// [`JobState::Dead`]), otherwise `job.reclaimed`.
pub(super) fn job_reclaimed(
    id: &str,
    tenant: &str,
    attempt: u32,
    error: &str,
    now_state: JobState,
) -> NewEntry {
    let action = match now_state {
        JobState::Dead => "job.dead",
        _ => "job.reclaimed",
    };
    NewEntry::new(
        SYSTEM_ACTOR,
        action,
        id,
        json!({"tenant": tenant, "attempt": attempt, "error": error}),
    )
}
