//! Budgets and the task lifecycle on Redis, each operation one optimistic
//! transaction keeping the SQLite store's invariants (see `store/tasks.rs`):
//! `used + reserved <= limit`, `reserved` the sum of held reservations, one
//! settlement per reservation and one charge per task.

use redis::{Connection, Pipeline};
use serde::{Deserialize, Serialize};

use super::{Attempt, Fault, Fields, RedisStore, int, text};
use crate::store::{
    Begin, BeginTask, BudgetSnapshot, Charge, ChargeRecord, FinishTask, ReservationId, StoreError,
    entries, from_db, millis, now_ms,
};

/// A reservation as stored in `{prefix}:reservation:{id}`.
pub(super) struct Reservation {
    pub(super) tenant: String,
    pub(super) task_id: String,
    pub(super) key: Option<String>,
    pub(super) tokens: i64,
    pub(super) held: bool,
    /// The instance that made it.
    pub(super) owner: String,
}

/// A tenant's budget, `{prefix}:budget:{tenant}`.
struct Budget {
    limit: i64,
    used: i64,
    reserved: i64,
}

/// One ledger entry as stored (JSON) in the `{prefix}:charges` list.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredCharge {
    pub(super) tenant: String,
    pub(super) reservation: i64,
    pub(super) task_id: String,
    pub(super) idempotency_key: Option<String>,
    pub(super) tokens: u64,
    pub(super) overage_tokens: u64,
    pub(super) charged_ms: i64,
}

/// What a release freed.
pub(super) struct Released {
    pub(super) tokens: u64,
    pub(super) key_deleted: bool,
}

impl RedisStore {
    /// Starts a task, as [`crate::store::SqliteStore::begin_task`] does.
    pub fn begin_task(&self, request: &BeginTask) -> Result<Begin, StoreError> {
        let keys = self.keys().clone();
        let config_limit = self.configured_limit(&request.tenant);
        let expiry = millis(self.inner.options.in_flight_expiry);
        let budget_key = keys.budget(&request.tenant);
        let idem_key = request
            .idempotency
            .as_ref()
            .map(|claim| keys.idempotency(&request.tenant, &claim.key));
        // The reservation the latest attempt tried to commit. When the link
        // fails after `EXEC` was sent, Redis may have committed it without
        // the answer arriving: the caller never learns the id, so nothing
        // would ever release it (the battle suite's `replicas` scenario found
        // this, cutting a replica off from Redis under load).
        let attempted = std::cell::Cell::new(None);
        let result = self.optimistic("begin task", |con| {
            let now = now_ms();
            let mut abandoned = None;
            if let (Some(claim), Some(idem_key)) = (&request.idempotency, &idem_key) {
                watch(con, idem_key)?;
                let record: Fields = redis::cmd("HGETALL").arg(idem_key).query(con)?;
                if !record.is_empty() {
                    let same = record.get("fingerprint").map(Vec::as_slice)
                        == Some(hex::encode(claim.fingerprint).as_bytes());
                    let completed = record.get("state").map(Vec::as_slice) == Some(b"completed");
                    if completed {
                        return Ok(Attempt::Done(
                            match (same, int(&record, "status"), record.get("body")) {
                                (true, Some(status), Some(body)) => Begin::Replay {
                                    status: u16::try_from(status).unwrap_or(500),
                                    body: body.clone(),
                                },
                                _ => Begin::FingerprintMismatch,
                            },
                        ));
                    }
                    let created = int(&record, "created_ms").unwrap_or(0);
                    if created.saturating_add(expiry) >= now {
                        return Ok(Attempt::Done(if same {
                            Begin::InFlight
                        } else {
                            Begin::FingerprintMismatch
                        }));
                    }
                    abandoned = Some(int(&record, "reservation").ok_or_else(|| {
                        self.malformed(idem_key, "an idempotency record without its reservation")
                    })?);
                }
            }

            // Check first, write after: an insufficient budget leaves no
            // trace, not even the takeover of an abandoned key.
            watch(con, &budget_key)?;
            let stored = self.load_budget(con, &budget_key)?;
            let budget = stored.as_ref().map_or(
                Budget {
                    limit: config_limit,
                    used: 0,
                    reserved: 0,
                },
                |b| Budget { ..*b },
            );
            let stale = match abandoned {
                Some(id) => {
                    watch(con, &keys.reservation(id))?;
                    self.load_reservation(con, id)?.filter(|r| r.held)
                }
                None => None,
            };
            let stale_tokens = stale.as_ref().map_or(0, |r| r.tokens);
            let available = budget.limit - budget.used - (budget.reserved - stale_tokens);
            let requested = request.reserve_tokens;
            if requested > from_db(available) {
                return Ok(Attempt::Done(Begin::InsufficientBudget {
                    limit: from_db(budget.limit),
                    used: from_db(budget.used),
                    reserved: from_db(budget.reserved),
                    requested,
                }));
            }
            let tokens = i64::try_from(requested).unwrap_or(i64::MAX);
            // Ids are taken outside the transaction: one wasted by a retry is
            // a gap, never a reuse.
            let id: i64 = redis::cmd("INCR").arg(keys.reservation_seq()).query(con)?;
            attempted.set(Some(id));

            let mut pipe = redis::pipe();
            pipe.atomic();
            if let (Some(old), Some(reservation)) = (abandoned, &stale) {
                pipe.cmd("HSET")
                    .arg(keys.reservation(old))
                    .arg("state")
                    .arg("released")
                    .arg("settled_ms")
                    .arg(now)
                    .ignore()
                    .cmd("SREM")
                    .arg(keys.held(&reservation.owner))
                    .arg(old)
                    .ignore();
            }
            if let Some(old) = abandoned {
                tracing::warn!(
                    tenant = %request.tenant,
                    reservation = old,
                    "took over an abandoned in-flight idempotency key"
                );
            }
            if stored.is_none() {
                pipe.cmd("HSET")
                    .arg(&budget_key)
                    .arg("limit")
                    .arg(config_limit)
                    .arg("used")
                    .arg(0)
                    .arg("reserved")
                    .arg(0)
                    .ignore()
                    .cmd("SADD")
                    .arg(keys.tenants())
                    .arg(&request.tenant)
                    .ignore();
            }
            pipe.cmd("HINCRBY")
                .arg(&budget_key)
                .arg("reserved")
                .arg(tokens - stale_tokens)
                .ignore();
            let reservation_key = keys.reservation(id);
            pipe.cmd("HSET")
                .arg(&reservation_key)
                .arg("tenant")
                .arg(&request.tenant)
                .arg("task_id")
                .arg(&request.task_id)
                .arg("tokens")
                .arg(tokens)
                .arg("state")
                .arg("held")
                .arg("created_ms")
                .arg(now)
                .arg("owner")
                .arg(&self.inner.instance)
                .ignore();
            pipe.cmd("SADD")
                .arg(keys.held(&self.inner.instance))
                .arg(id)
                .ignore()
                .cmd("SADD")
                .arg(keys.instances())
                .arg(&self.inner.instance)
                .ignore();
            if let (Some(claim), Some(idem_key)) = (&request.idempotency, &idem_key) {
                pipe.cmd("HSET")
                    .arg(&reservation_key)
                    .arg("key")
                    .arg(&claim.key)
                    .ignore()
                    .cmd("DEL")
                    .arg(idem_key)
                    .ignore()
                    .cmd("HSET")
                    .arg(idem_key)
                    .arg("fingerprint")
                    .arg(hex::encode(claim.fingerprint))
                    .arg("reservation")
                    .arg(id)
                    .arg("state")
                    .arg("in_flight")
                    .arg("created_ms")
                    .arg(now)
                    .ignore();
            }
            Ok(Attempt::Commit(
                pipe,
                Begin::Started {
                    reservation: ReservationId(id),
                },
            ))
        });
        // Releasing an id that never committed finds it unknown and forgets
        // it; one that did is released now or, while Redis is away, retried.
        if let (Err(StoreError::Redis { .. }), Some(id)) = (&result, attempted.get()) {
            let _ = self.release_or_retry_later(ReservationId(id));
        }
        result
    }

    /// Settles a reservation with the reported usage, as
    /// [`crate::store::SqliteStore::finish_task`] does, with its two audit
    /// entries in the same transaction.
    pub fn finish_task(&self, finish: &FinishTask) -> Result<Charge, StoreError> {
        let keys = self.keys().clone();
        let id = finish.reservation;
        let _audit = self.audit_lock();
        self.optimistic("finish task", |con| {
            let now = now_ms();
            let reservation_key = keys.reservation(id.0);
            watch(con, &reservation_key)?;
            let Some(held) = self.load_reservation(con, id.0)? else {
                return Err(self.unknown(id).into());
            };
            if !held.held {
                return Ok(Attempt::Done(Charge::default()));
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            let charge = self.stage_charge(con, &mut pipe, id, &held, finish.charge_tokens, now)?;
            if let Some(key) = &held.key {
                let idem_key = keys.idempotency(&held.tenant, key);
                watch(con, &idem_key)?;
                if self.in_flight_for(con, &idem_key, id.0)? {
                    match &finish.response {
                        Some(response) => pipe
                            .cmd("HSET")
                            .arg(&idem_key)
                            .arg("state")
                            .arg("completed")
                            .arg("completed_ms")
                            .arg(now)
                            .arg("status")
                            .arg(response.status)
                            .arg("body")
                            .arg(&response.body)
                            .ignore(),
                        None => pipe.cmd("DEL").arg(&idem_key).ignore(),
                    };
                }
            }
            self.append_audit(
                con,
                &mut pipe,
                [
                    entries::task_completed(
                        &finish.actor,
                        &held.task_id,
                        &held.tenant,
                        finish.response.as_ref().map(|r| r.status),
                        held.key.as_deref(),
                    ),
                    entries::budget_charged(&finish.actor, &held.tenant, &held.task_id, &charge),
                ],
                now,
            )?;
            Ok(Attempt::Commit(pipe, charge))
        })
    }

    /// Releases a reservation without charging, as
    /// [`crate::store::SqliteStore::abort_task`] does.
    pub fn abort_task(&self, reservation: ReservationId) -> Result<(), StoreError> {
        match self.release(reservation)? {
            Some(_) => Ok(()),
            None => {
                let exists: bool = self.with_connection("abort task", |con| {
                    Ok(redis::cmd("EXISTS")
                        .arg(self.keys().reservation(reservation.0))
                        .query(con)?)
                })?;
                if exists {
                    Ok(())
                } else {
                    Err(self.unknown(reservation))
                }
            }
        }
    }

    /// Releases, or remembers to retry: see
    /// [`crate::store::SqliteStore::release_or_retry_later`].
    pub fn release_or_retry_later(&self, reservation: ReservationId) -> Result<(), StoreError> {
        self.inner
            .pending_releases
            .release_or_retry_later(reservation, |id| self.abort_task(id))
    }

    /// Tries the failed releases again; returns how many are still pending.
    pub fn retry_releases(&self) -> usize {
        self.inner.pending_releases.retry(|id| self.abort_task(id))
    }

    /// How many failed releases wait for a retry.
    pub fn pending_releases(&self) -> usize {
        self.inner.pending_releases.len()
    }

    /// A tenant's budget; a tenant not seen yet has its configured limit.
    pub fn budget(&self, tenant: &str) -> Result<BudgetSnapshot, StoreError> {
        let key = self.keys().budget(tenant);
        let budget = self
            .with_connection("read budget", |con| self.load_budget(con, &key))?
            .unwrap_or(Budget {
                limit: self.configured_limit(tenant),
                used: 0,
                reserved: 0,
            });
        Ok(BudgetSnapshot {
            tenant: tenant.to_owned(),
            limit_tokens: from_db(budget.limit),
            used_tokens: from_db(budget.used),
            reserved_tokens: from_db(budget.reserved),
            remaining_tokens: from_db(budget.limit - budget.used - budget.reserved),
        })
    }

    /// A tenant's ledger, oldest charge first.
    pub fn charges(&self, tenant: &str) -> Result<Vec<ChargeRecord>, StoreError> {
        Ok(self
            .ledger()?
            .into_iter()
            .filter(|charge| charge.tenant == tenant)
            .map(|charge| ChargeRecord {
                tenant: charge.tenant,
                reservation: ReservationId(charge.reservation),
                task_id: charge.task_id,
                idempotency_key: charge.idempotency_key,
                tokens: charge.tokens,
                overage_tokens: charge.overage_tokens,
                charged_at_ms: from_db(charge.charged_ms),
            })
            .collect())
    }

    /// Releases `id` if it is held: returns its tokens to the budget, deletes
    /// its in-flight idempotency record and takes it off its instance's
    /// list. `None` if it is settled or unknown.
    pub(super) fn release(&self, id: ReservationId) -> Result<Option<Released>, StoreError> {
        self.optimistic("release reservation", |con| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            Ok(match self.stage_release(con, &mut pipe, id, now_ms())? {
                Some(released) => Attempt::Commit(pipe, Some(released)),
                None => Attempt::Done(None),
            })
        })
    }

    /// Watches reservation `id` and, if it is held, adds its release to
    /// `pipe` (the Redis twin of SQLite's `tasks::release`, for operations
    /// that release inside a larger transaction). `None` if it is settled or
    /// unknown: then nothing is added.
    pub(super) fn stage_release(
        &self,
        con: &mut Connection,
        pipe: &mut Pipeline,
        id: ReservationId,
        now: i64,
    ) -> Result<Option<Released>, Fault> {
        let keys = self.keys();
        let reservation_key = keys.reservation(id.0);
        watch(con, &reservation_key)?;
        let Some(held) = self.load_reservation(con, id.0)?.filter(|r| r.held) else {
            return Ok(None);
        };
        let budget_key = keys.budget(&held.tenant);
        watch(con, &budget_key)?;
        pipe.cmd("HSET")
            .arg(&reservation_key)
            .arg("state")
            .arg("released")
            .arg("settled_ms")
            .arg(now)
            .ignore()
            .cmd("HINCRBY")
            .arg(&budget_key)
            .arg("reserved")
            .arg(-held.tokens)
            .ignore()
            .cmd("SREM")
            .arg(keys.held(&held.owner))
            .arg(id.0)
            .ignore();
        let mut key_deleted = false;
        if let Some(key) = &held.key {
            let idem_key = keys.idempotency(&held.tenant, key);
            watch(con, &idem_key)?;
            if self.in_flight_for(con, &idem_key, id.0)? {
                pipe.cmd("DEL").arg(&idem_key).ignore();
                key_deleted = true;
            }
        }
        Ok(Some(Released {
            tokens: from_db(held.tokens),
            key_deleted,
        }))
    }

    /// Watches the budget and the charged index and adds to `pipe` the
    /// settlement of the held reservation `id` with a charge of
    /// `charge_tokens` (the Redis twin of SQLite's `charge_reservation`):
    /// what it held returns to the budget, the charge is capped at the
    /// tenant's headroom (the rest is overage, never overdrawn) and the
    /// ledger gets its entry. A task or job charged before is refused, as
    /// SQLite's unique index on the task id refuses it.
    pub(super) fn stage_charge(
        &self,
        con: &mut Connection,
        pipe: &mut Pipeline,
        id: ReservationId,
        held: &Reservation,
        charge_tokens: u64,
        now: i64,
    ) -> Result<Charge, Fault> {
        let keys = self.keys();
        let budget_key = keys.budget(&held.tenant);
        watch(con, &budget_key)?;
        watch(con, &keys.charged())?;
        let budget = self.load_budget(con, &budget_key)?.ok_or_else(|| {
            self.malformed(&budget_key, "a held reservation's tenant has no budget")
        })?;
        let charged_before: Option<i64> = redis::cmd("HGET")
            .arg(keys.charged())
            .arg(&held.task_id)
            .query(con)?;
        if let Some(other) = charged_before {
            return Err(self
                .malformed(
                    &keys.charged(),
                    format!(
                        "task {} was already charged by reservation {other}",
                        held.task_id
                    ),
                )
                .into());
        }
        // What the tenant can pay once this reservation is returned.
        let headroom = from_db(budget.limit - budget.used - (budget.reserved - held.tokens));
        let charged = charge_tokens.min(headroom);
        let overage = charge_tokens - charged;
        let charged_db = i64::try_from(charged).unwrap_or(i64::MAX);
        let remaining =
            from_db(budget.limit - budget.used - charged_db - (budget.reserved - held.tokens));
        if overage > 0 {
            tracing::warn!(
                tenant = %held.tenant,
                reservation = %id,
                charged,
                overage,
                "reported usage exceeds the tenant's budget; overage not charged"
            );
        }
        pipe.cmd("HINCRBY")
            .arg(&budget_key)
            .arg("used")
            .arg(charged_db)
            .ignore()
            .cmd("HINCRBY")
            .arg(&budget_key)
            .arg("reserved")
            .arg(-held.tokens)
            .ignore()
            .cmd("HSET")
            .arg(keys.reservation(id.0))
            .arg("state")
            .arg("charged")
            .arg("settled_ms")
            .arg(now)
            .ignore()
            .cmd("SREM")
            .arg(keys.held(&held.owner))
            .arg(id.0)
            .ignore()
            .cmd("HSET")
            .arg(keys.charged())
            .arg(&held.task_id)
            .arg(id.0)
            .ignore()
            .cmd("RPUSH")
            .arg(keys.charges())
            .arg(
                serde_json::to_string(&StoredCharge {
                    tenant: held.tenant.clone(),
                    reservation: id.0,
                    task_id: held.task_id.clone(),
                    idempotency_key: held.key.clone(),
                    tokens: charged,
                    overage_tokens: overage,
                    charged_ms: now,
                })
                .unwrap_or_default(),
            )
            .ignore();
        Ok(Charge {
            charged,
            overage,
            remaining,
        })
    }

    /// The whole ledger, oldest charge first.
    pub(super) fn ledger(&self) -> Result<Vec<StoredCharge>, StoreError> {
        let key = self.keys().charges();
        let rows: Vec<Vec<u8>> = self.with_connection("read charges", |con| {
            Ok(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query(con)?)
        })?;
        rows.iter()
            .enumerate()
            .map(|(index, row)| {
                serde_json::from_slice(row)
                    .map_err(|e| self.malformed(&key, format!("entry {index}: {e}")))
            })
            .collect()
    }

    /// Whether the record at `idem_key` is in flight for reservation `id`.
    fn in_flight_for(&self, con: &mut Connection, idem_key: &str, id: i64) -> Result<bool, Fault> {
        let (state, reservation): (Option<String>, Option<i64>) = redis::cmd("HMGET")
            .arg(idem_key)
            .arg("state")
            .arg("reservation")
            .query(con)?;
        Ok(state.as_deref() == Some("in_flight") && reservation == Some(id))
    }

    fn load_budget(&self, con: &mut Connection, key: &str) -> Result<Option<Budget>, Fault> {
        let fields: Fields = redis::cmd("HGETALL").arg(key).query(con)?;
        if fields.is_empty() {
            return Ok(None);
        }
        match (
            int(&fields, "limit"),
            int(&fields, "used"),
            int(&fields, "reserved"),
        ) {
            (Some(limit), Some(used), Some(reserved)) => Ok(Some(Budget {
                limit,
                used,
                reserved,
            })),
            _ => Err(self
                .malformed(
                    key,
                    "a budget needs integer fields limit, used and reserved",
                )
                .into()),
        }
    }

    pub(super) fn load_reservation(
        &self,
        con: &mut Connection,
        id: i64,
    ) -> Result<Option<Reservation>, Fault> {
        let key = self.keys().reservation(id);
        let fields: Fields = redis::cmd("HGETALL").arg(&key).query(con)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let state = text(&fields, "state");
        match (
            text(&fields, "tenant"),
            text(&fields, "task_id"),
            int(&fields, "tokens"),
            text(&fields, "owner"),
        ) {
            (Some(tenant), Some(task_id), Some(tokens), Some(owner)) => Ok(Some(Reservation {
                tenant,
                task_id,
                key: text(&fields, "key"),
                tokens,
                held: state.as_deref() == Some("held"),
                owner,
            })),
            _ => Err(self
                .malformed(
                    &key,
                    "a reservation needs tenant, task_id, tokens and owner",
                )
                .into()),
        }
    }

    pub(super) fn unknown(&self, reservation: ReservationId) -> StoreError {
        StoreError::UnknownReservation {
            store: format!("redis {}", self.inner.url),
            reservation,
        }
    }
}

/// `WATCH key`: the transaction fails if `key` changes before `EXEC`.
pub(super) fn watch(con: &mut Connection, key: &str) -> Result<(), Fault> {
    redis::cmd("WATCH").arg(key).exec(con)?;
    Ok(())
}
