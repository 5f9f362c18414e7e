//! The webhook outbox. A job's terminal transition (succeeded, or dead)
//! queues its delivery in the same transaction, so a crash between the state
//! change and the delivery cannot lose it: the row is there at the next start,
//! and the deliverer sends it, again if need be, under the same delivery id
//! (at least once; receivers deduplicate by the id).

use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::Serialize;
use serde_json::json;

use super::tasks::exec;
use super::{SqliteStore, StoreError, TxError, audit};
use crate::audit::NewEntry;
use crate::pii::Redactor;
use crate::store::Job;

/// The most deliveries one [`SqliteStore::due_deliveries`] call returns.
pub const MAX_DELIVERY_BATCH: u32 = 64;

/// The most deliveries a job view lists (a job is replayed a bounded number
/// of times in practice; the newest are shown).
pub const MAX_JOB_DELIVERIES: u32 = 20;

/// Where a delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet delivered; due at `next_attempt_ms`.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt failed.
    Failed,
    /// The outbound policy refused the URL or its addresses; not retried.
    Refused,
}

impl DeliveryState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Refused => "refused",
        }
    }

    /// The state with this stored name.
    pub(super) fn from_name(name: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
            DeliveryState::Refused,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    fn parse(name: &str) -> DeliveryState {
        // The schema's CHECK admits only the four names.
        DeliveryState::from_name(name).unwrap_or(DeliveryState::Failed)
    }
}

/// One delivery of one job event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The delivery id, sent as `Gauntlet-Delivery`: the same on every
    /// attempt.
    pub id: String,
    /// The job.
    pub job_id: String,
    /// The job's tenant.
    pub tenant: String,
    /// Where to.
    pub url: String,
    /// `job.succeeded` or `job.dead`.
    pub event: String,
    /// The JSON body, redacted.
    #[serde(skip)]
    pub payload: String,
    /// Where it is.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending only), Unix milliseconds.
    pub next_attempt_ms: Option<i64>,
    /// The last answer's status.
    pub last_status: Option<u16>,
    /// Why the last attempt failed or was refused.
    pub last_error: Option<String>,
    /// When queued.
    pub created_ms: i64,
    /// When delivered.
    pub delivered_ms: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "id, job_id, tenant, url, event, payload, state, attempts,
    next_attempt_ms, last_status, last_error, created_ms, delivered_ms";

fn read_delivery(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let state: String = row.get(6)?;
    Ok(Delivery {
        id: row.get(0)?,
        job_id: row.get(1)?,
        tenant: row.get(2)?,
        url: row.get(3)?,
        event: row.get(4)?,
        payload: row.get(5)?,
        state: DeliveryState::parse(&state),
        attempts: u32::try_from(row.get::<_, i64>(7)?).unwrap_or(u32::MAX),
        next_attempt_ms: row.get(8)?,
        last_status: row
            .get::<_, Option<i64>>(9)?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.get(10)?,
        created_ms: row.get(11)?,
        delivered_ms: row.get(12)?,
    })
}

/// Queues the delivery of `job_id`'s terminal state if it has a webhook;
/// called inside the transaction that made the state terminal.
pub(super) fn enqueue(
    tx: &Transaction<'_>,
    redactor: &Redactor,
    job_id: &str,
    now: i64,
) -> Result<(), TxError> {
    let job = tx
        .prepare_cached(&format!(
            "SELECT {} FROM jobs WHERE id = ?1",
            super::jobs::JOB_COLUMNS
        ))?
        .query_row(params![job_id], super::jobs::read_job)
        .optional()?;
    let Some(job) = job else {
        return Ok(());
    };
    let Some(url) = &job.webhook else {
        return Ok(());
    };
    let new = NewDelivery::of(&job, redactor);
    exec(
        tx,
        "INSERT INTO webhook_deliveries (id, job_id, tenant, url, event, payload, state, attempts,
                                         next_attempt_ms, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7)",
        params![
            new.id,
            job_id,
            job.tenant,
            url,
            new.event,
            new.payload.to_string(),
            now
        ],
    )?;
    Ok(())
}

/// What became of one attempt, for [`SqliteStore::record_delivery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// A 2xx answer.
    Delivered {
        /// The status.
        status: u16,
    },
    /// The policy refused it; final.
    Refused {
        /// The refusal's stable code, like `forbidden-address`.
        code: &'static str,
        /// Its message.
        reason: String,
    },
    /// It failed; tried again at `retry_at_ms`, or final when `None`.
    Failed {
        /// The status, if an answer came.
        status: Option<u16>,
        /// Why.
        error: String,
        /// When to try again.
        retry_at_ms: Option<i64>,
    },
}

/// What an attempt's outcome does to its delivery: the same on every
/// backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Attempted {
    /// The delivery's new state.
    pub(super) state: DeliveryState,
    /// The answer's status, if one came.
    pub(super) status: Option<u16>,
    /// When to try again, while pending.
    pub(super) next_attempt_ms: Option<i64>,
    /// The audit action.
    pub(super) action: &'static str,
    /// The error, redacted, if the attempt failed or was refused.
    pub(super) error: Option<String>,
}

impl DeliveryOutcome {
    /// What this outcome does to its delivery, its error passed through
    /// `redactor`.
    pub(super) fn attempted(&self, redactor: &Redactor) -> Attempted {
        let redacted = |text: &str| Some(redactor.redact(text).into_owned());
        let (state, status, next_attempt_ms, action, error) = match self {
            DeliveryOutcome::Delivered { status } => (
                DeliveryState::Delivered,
                Some(*status),
                None,
                "webhook.delivered",
                None,
            ),
            DeliveryOutcome::Refused { reason, .. } => (
                DeliveryState::Refused,
                None,
                None,
                "webhook.refused",
                redacted(reason),
            ),
            DeliveryOutcome::Failed {
                status,
                error,
                retry_at_ms: Some(at),
            } => (
                DeliveryState::Pending,
                *status,
                Some(*at),
                "webhook.retrying",
                redacted(error),
            ),
            DeliveryOutcome::Failed { status, error, .. } => (
                DeliveryState::Failed,
                *status,
                None,
                "webhook.failed",
                redacted(error),
            ),
        };
        Attempted {
            state,
            status,
            next_attempt_ms,
            action,
            error,
        }
    }

    /// The audit details of attempt number `attempt` of `job_id`'s delivery.
    pub(super) fn audit_details(
        &self,
        attempted: &Attempted,
        tenant: &str,
        job_id: &str,
        attempt: i64,
    ) -> serde_json::Value {
        let mut details = json!({"tenant": tenant, "job_id": job_id, "attempt": attempt});
        if let Some(status) = attempted.status {
            details["status"] = json!(status);
        }
        if let DeliveryOutcome::Refused { code, .. } = self {
            details["reason"] = json!(code);
        }
        if let Some(error) = &attempted.error {
            details["error"] = json!(error);
        }
        details
    }
}

/// A new delivery of `job`'s terminal state: its id, event and payload.
pub(super) struct NewDelivery {
    pub(super) id: String,
    pub(super) event: String,
    pub(super) payload: serde_json::Value,
}

impl NewDelivery {
    /// The delivery of `job` as it is now (terminal), with its error
    /// passed through `redactor`.
    pub(super) fn of(job: &Job, redactor: &Redactor) -> NewDelivery {
        let id = uuid::Uuid::new_v4().to_string();
        let state = job.state.as_str();
        let event = format!("job.{state}");
        // Only the error is free text; the ids are the service's own, and a
        // redactor reading a UUID's digit groups as a phone number would make
        // the payload name a job that does not exist.
        let last_error = job
            .last_error
            .as_ref()
            .map(|e| redactor.redact(e).into_owned());
        let payload = json!({
            "delivery_id": id,
            "event": event,
            "job": {
                "id": job.id,
                "tenant": job.tenant,
                "state": state,
                "attempts": job.attempts,
                "last_error": last_error,
                "finished_ms": job.finished_ms,
            },
        });
        NewDelivery { id, event, payload }
    }
}

impl SqliteStore {
    /// Pending deliveries due by `now`, oldest due first, at most `limit`
    /// (capped at [`MAX_DELIVERY_BATCH`]).
    pub fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let limit = limit.min(MAX_DELIVERY_BATCH);
        self.read("due deliveries", |conn| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
                 WHERE state = 'pending' AND next_attempt_ms <= ?1
                 ORDER BY next_attempt_ms, id LIMIT ?2"
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(params![now, limit], read_delivery)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// How many of `tenant`'s deliveries are pending: what a client waits
    /// on to know that every notification has gone out.
    pub fn pending_deliveries(&self, tenant: &str) -> Result<u64, StoreError> {
        self.read("pending deliveries", |conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending' AND tenant = ?1",
                )?
                .query_row(params![tenant], |row| row.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// A job's deliveries, newest first, at most [`MAX_JOB_DELIVERIES`].
    pub fn job_deliveries(&self, job_id: &str) -> Result<Vec<Delivery>, StoreError> {
        self.read("job deliveries", |conn| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE job_id = ?1
                 ORDER BY created_ms DESC, id LIMIT ?2"
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(params![job_id, MAX_JOB_DELIVERIES], read_delivery)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Records an attempt of pending delivery `id`, audited
    /// (`webhook.delivered`, `webhook.retrying`, `webhook.failed`,
    /// `webhook.refused`). Returns the new state, or `None` when the
    /// delivery is not pending (recorded already).
    pub fn record_delivery(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now: i64,
    ) -> Result<Option<DeliveryState>, StoreError> {
        let attempted = outcome.attempted(self.redactor());
        self.write("record delivery", |tx| {
            let found: Option<(String, String, i64)> = tx
                .prepare_cached(
                    "SELECT job_id, tenant, attempts FROM webhook_deliveries
                     WHERE id = ?1 AND state = 'pending'",
                )?
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((job_id, tenant, attempts)) = found else {
                return Ok(None);
            };
            let attempts = attempts + 1;
            let Attempted {
                state,
                status,
                next_attempt_ms: next,
                action,
                error,
            } = attempted.clone();
            exec(
                tx,
                "UPDATE webhook_deliveries
                 SET state = ?2, attempts = ?3, next_attempt_ms = ?4, last_status = ?5,
                     last_error = coalesce(?6, last_error),
                     delivered_ms = CASE WHEN ?2 = 'delivered' THEN ?7 ELSE delivered_ms END
                 WHERE id = ?1",
                params![id, state.as_str(), attempts, next, status, error, now],
            )?;
            let details = outcome.audit_details(&attempted, &tenant, &job_id, attempts);
            audit::append(
                tx,
                self.redactor(),
                NewEntry::new(crate::store::SYSTEM_ACTOR, action, id.to_owned(), details),
                now,
            )?;
            Ok(Some(state))
        })
    }
}
