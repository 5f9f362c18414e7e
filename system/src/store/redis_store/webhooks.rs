//! The webhook outbox on Redis, as SQLite's (`store/webhooks.rs`): a job's
//! terminal transition (succeeded, or dead) adds its delivery in the same
//! transaction, so a crash between the state change and the delivery cannot
//! lose it.
//!
//! A delivery is a hash, `{prefix}:delivery:{id}`, with the columns of
//! SQLite's `webhook_deliveries` row. `{prefix}:deliveries:due` holds the
//! pending ones' ids scored by `next_attempt_ms` (equal scores in id order,
//! as SQLite's `ORDER BY next_attempt_ms, id`),
//! `{prefix}:deliveries:job:{job}` a job's ids scored by `created_ms`, and
//! `{prefix}:deliveries:pending:{tenant}` the set of a tenant's pending ids.
//! Deliveries are never deleted, like the rows.

use crate::store::webhooks::{Attempted, NewDelivery};
use redis::Pipeline;

use super::tasks::watch;
use super::{Attempt, Fields, RedisStore, int, text};
use crate::audit::NewEntry;
use crate::store::{
    Delivery, DeliveryOutcome, DeliveryState, Job, MAX_DELIVERY_BATCH, MAX_JOB_DELIVERIES,
    SYSTEM_ACTOR, StoreError,
};

impl RedisStore {
    /// Adds to `pipe` the delivery of `job`'s terminal state if it has a
    /// webhook (SQLite's `webhooks::enqueue`); `job` is the job as the
    /// transaction leaves it.
    pub(super) fn stage_delivery(&self, pipe: &mut Pipeline, job: &Job, now: i64) {
        let Some(url) = &job.webhook else {
            return;
        };
        let keys = self.keys();
        let NewDelivery { id, event, payload } = NewDelivery::of(job, self.redactor());
        pipe.cmd("HSET")
            .arg(keys.delivery(&id))
            .arg("id")
            .arg(&id)
            .arg("job_id")
            .arg(&job.id)
            .arg("tenant")
            .arg(&job.tenant)
            .arg("url")
            .arg(url)
            .arg("event")
            .arg(&event)
            .arg("payload")
            .arg(payload.to_string())
            .arg("state")
            .arg(DeliveryState::Pending.as_str())
            .arg("attempts")
            .arg(0)
            .arg("next_attempt_ms")
            .arg(now)
            .arg("created_ms")
            .arg(now)
            .ignore()
            .cmd("ZADD")
            .arg(keys.deliveries_due())
            .arg(now)
            .arg(&id)
            .ignore()
            .cmd("ZADD")
            .arg(keys.job_deliveries(&job.id))
            .arg(now)
            .arg(&id)
            .ignore()
            .cmd("SADD")
            .arg(keys.pending_deliveries(&job.tenant))
            .arg(&id)
            .ignore();
    }

    fn parse_delivery(&self, key: &str, fields: &Fields) -> Result<Delivery, StoreError> {
        let state = text(fields, "state").and_then(|s| DeliveryState::from_name(&s));
        let (
            Some(id),
            Some(job_id),
            Some(tenant),
            Some(url),
            Some(event),
            Some(payload),
            Some(state),
            Some(attempts),
            Some(created_ms),
        ) = (
            text(fields, "id"),
            text(fields, "job_id"),
            text(fields, "tenant"),
            text(fields, "url"),
            text(fields, "event"),
            text(fields, "payload"),
            state,
            int(fields, "attempts"),
            int(fields, "created_ms"),
        )
        else {
            return Err(self.malformed(
                key,
                "a delivery needs id, job_id, tenant, url, event, payload, a known state, \
                 attempts and created_ms",
            ));
        };
        Ok(Delivery {
            id,
            job_id,
            tenant,
            url,
            event,
            payload,
            state,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            next_attempt_ms: int(fields, "next_attempt_ms"),
            last_status: int(fields, "last_status").and_then(|s| u16::try_from(s).ok()),
            last_error: text(fields, "last_error"),
            created_ms,
            delivered_ms: int(fields, "delivered_ms"),
        })
    }

    /// The deliveries with these ids, in this order, read in one `MULTI`.
    /// An id without its hash is skipped: it cannot be, but a listing is no
    /// place to fail over it.
    fn deliveries(
        &self,
        operation: &'static str,
        ids: &[String],
    ) -> Result<Vec<Delivery>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys();
        let rows: Vec<Fields> = self.with_connection(operation, |con| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for id in ids {
                pipe.cmd("HGETALL").arg(keys.delivery(id));
            }
            Ok(pipe.query(con)?)
        })?;
        ids.iter()
            .zip(rows)
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(id, fields)| self.parse_delivery(&keys.delivery(id), &fields))
            .collect()
    }

    /// Pending deliveries due by `now`, oldest due first, at most `limit`
    /// (capped at [`MAX_DELIVERY_BATCH`]), as
    /// [`crate::store::SqliteStore::due_deliveries`] returns them. One
    /// recorded between the two reads is left out: the deliverer would find
    /// it recorded anyway.
    pub fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let limit = limit.min(MAX_DELIVERY_BATCH);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let due_key = self.keys().deliveries_due();
        let ids: Vec<String> = self.with_connection("due deliveries", |con| {
            Ok(redis::cmd("ZRANGEBYSCORE")
                .arg(&due_key)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(con)?)
        })?;
        Ok(self
            .deliveries("due deliveries", &ids)?
            .into_iter()
            .filter(|d| {
                d.state == DeliveryState::Pending && d.next_attempt_ms.is_some_and(|at| at <= now)
            })
            .collect())
    }

    /// How many of `tenant`'s deliveries are pending.
    pub fn pending_deliveries(&self, tenant: &str) -> Result<u64, StoreError> {
        let key = self.keys().pending_deliveries(tenant);
        self.with_connection("pending deliveries", |con| {
            Ok(redis::cmd("SCARD").arg(&key).query(con)?)
        })
    }

    /// A job's deliveries, newest first (equal times in id order, as
    /// SQLite's `ORDER BY created_ms DESC, id`), at most
    /// [`MAX_JOB_DELIVERIES`]. All of the job's are read to sort them: a job
    /// has one per terminal transition, a handful.
    pub fn job_deliveries(&self, job_id: &str) -> Result<Vec<Delivery>, StoreError> {
        let key = self.keys().job_deliveries(job_id);
        let ids: Vec<String> = self.with_connection("job deliveries", |con| {
            Ok(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query(con)?)
        })?;
        let mut deliveries = self.deliveries("job deliveries", &ids)?;
        deliveries.sort_by(|a, b| {
            b.created_ms
                .cmp(&a.created_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        deliveries.truncate(usize::try_from(MAX_JOB_DELIVERIES).unwrap_or(usize::MAX));
        Ok(deliveries)
    }

    /// Records an attempt of pending delivery `id`, audited, as
    /// [`crate::store::SqliteStore::record_delivery`] does. Returns the new
    /// state, or `None` when the delivery is not pending (recorded already).
    pub fn record_delivery(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now: i64,
    ) -> Result<Option<DeliveryState>, StoreError> {
        let attempted = outcome.attempted(self.redactor());
        let keys = self.keys().clone();
        let key = keys.delivery(id);
        let _audit = self.audit_lock();
        self.optimistic("record delivery", |con| {
            watch(con, &key)?;
            let fields: Fields = redis::cmd("HGETALL").arg(&key).query(con)?;
            if fields.is_empty() {
                return Ok(Attempt::Done(None));
            }
            let found = self.parse_delivery(&key, &fields)?;
            if found.state != DeliveryState::Pending {
                return Ok(Attempt::Done(None));
            }
            let attempts = found.attempts.saturating_add(1);
            let Attempted {
                state,
                status,
                next_attempt_ms: next,
                action,
                error,
            } = attempted.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(&key)
                .arg("state")
                .arg(state.as_str())
                .arg("attempts")
                .arg(attempts)
                .ignore();
            match status {
                Some(status) => pipe.cmd("HSET").arg(&key).arg("last_status").arg(status),
                None => pipe.cmd("HDEL").arg(&key).arg("last_status"),
            }
            .ignore();
            if let Some(error) = &error {
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg("last_error")
                    .arg(error)
                    .ignore();
            }
            if state == DeliveryState::Delivered {
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg("delivered_ms")
                    .arg(now)
                    .ignore();
            }
            match next {
                Some(at) => {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg("next_attempt_ms")
                        .arg(at)
                        .ignore()
                        .cmd("ZADD")
                        .arg(keys.deliveries_due())
                        .arg(at)
                        .arg(id)
                        .ignore();
                }
                None => {
                    pipe.cmd("HDEL")
                        .arg(&key)
                        .arg("next_attempt_ms")
                        .ignore()
                        .cmd("ZREM")
                        .arg(keys.deliveries_due())
                        .arg(id)
                        .ignore()
                        .cmd("SREM")
                        .arg(keys.pending_deliveries(&found.tenant))
                        .arg(id)
                        .ignore();
                }
            }
            let details = outcome.audit_details(
                &attempted,
                &found.tenant,
                &found.job_id,
                i64::from(attempts),
            );
            self.append_audit(
                con,
                &mut pipe,
                [NewEntry::new(SYSTEM_ACTOR, action, id.to_owned(), details)],
                now,
            )?;
            Ok(Attempt::Commit(pipe, Some(state)))
        })
    }
}
