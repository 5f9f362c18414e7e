//! Budgets and the task lifecycle: each public operation is one transaction.
//!
//! Invariants every transaction keeps (the schema's CHECKs enforce the first):
//! - `used + reserved <= limit` for every tenant, all nonnegative;
//! - a tenant's `reserved` is the sum of its held reservations;
//! - a tenant's `used` is the sum of its charges;
//! - a reservation is settled (charged or released) at most once, and has at
//!   most one charge;
//! - an in-flight idempotency record points at a held reservation, and a held
//!   reservation with a key has its in-flight record.

use rusqlite::{OptionalExtension, Transaction, params};

use super::audit;
use super::{
    Begin, BeginTask, BudgetSnapshot, Charge, ChargeRecord, FinishTask, Recovery, ReservationId,
    SqliteStore, StoreError, TxError, entries, from_db, millis, now_ms, to_db,
};
use crate::pii::Redactor;

/// A reservation as stored.
pub(super) struct Reservation {
    pub(super) tenant: String,
    pub(super) task_id: String,
    pub(super) key: Option<String>,
    pub(super) tokens: i64,
    pub(super) held: bool,
}

/// A tenant's budget row.
struct Budget {
    limit: i64,
    used: i64,
    reserved: i64,
}

/// An idempotency record, as much as begin needs.
struct Record {
    fingerprint: Vec<u8>,
    completed: bool,
    reservation: ReservationId,
    created_ms: i64,
    status: Option<i64>,
    body: Option<Vec<u8>>,
}

impl SqliteStore {
    /// Starts a task: replays, refuses or claims its idempotency key, and
    /// reserves `reserve_tokens` from the tenant's budget (creating the tenant
    /// with its configured limit on first use).
    ///
    /// An in-flight record older than `in_flight_expiry` is taken over: its
    /// reservation is released and the key is claimed anew, whatever the old
    /// request's fingerprint. A fingerprint mismatch is reported before
    /// [`Begin::InFlight`], since the key is misused either way.
    pub fn begin_task(&self, request: &BeginTask) -> Result<Begin, StoreError> {
        let config_limit = self.configured_limit(&request.tenant);
        let expiry = millis(self.inner.options.in_flight_expiry);
        self.write("begin task", |tx| {
            let now = now_ms();
            let mut abandoned = None;
            if let Some(claim) = &request.idempotency
                && let Some(record) = load_record(tx, &request.tenant, &claim.key)?
            {
                let same = record.fingerprint == claim.fingerprint;
                if record.completed {
                    return Ok(match (same, record.status, record.body) {
                        (true, Some(status), Some(body)) => Begin::Replay {
                            status: u16::try_from(status).unwrap_or(500),
                            body,
                        },
                        _ => Begin::FingerprintMismatch,
                    });
                }
                if record.created_ms.saturating_add(expiry) >= now {
                    return Ok(if same {
                        Begin::InFlight
                    } else {
                        Begin::FingerprintMismatch
                    });
                }
                abandoned = Some(record.reservation);
            }

            // Check first, write after: an insufficient budget leaves no trace,
            // not even the takeover of an abandoned key.
            let budget = load_budget(tx, &request.tenant)?.unwrap_or(Budget {
                limit: config_limit,
                used: 0,
                reserved: 0,
            });
            let stale = match abandoned {
                Some(id) => load_reservation(tx, id)?
                    .filter(|r| r.held)
                    .map_or(0, |r| r.tokens),
                None => 0,
            };
            let available = budget.limit - budget.used - (budget.reserved - stale);
            let requested = request.reserve_tokens;
            if requested > from_db(available) {
                return Ok(Begin::InsufficientBudget {
                    limit: from_db(budget.limit),
                    used: from_db(budget.used),
                    reserved: from_db(budget.reserved),
                    requested,
                });
            }
            let tokens = to_db(requested);

            if let Some(id) = abandoned {
                release(tx, id, now)?;
                // A settled reservation may still own a stale record only if
                // the invariants were broken elsewhere; delete it regardless.
                if let Some(claim) = &request.idempotency {
                    exec(tx,
                        "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2",
                        params![request.tenant, claim.key],
                    )?;
                }
                tracing::warn!(
                    tenant = %request.tenant,
                    reservation = %id,
                    "took over an abandoned in-flight idempotency key"
                );
            }
            exec(tx,
                "INSERT INTO budgets (tenant, limit_tokens, used_tokens, reserved_tokens)
                 VALUES (?1, ?2, 0, ?3)
                 ON CONFLICT (tenant) DO UPDATE SET reserved_tokens = reserved_tokens + ?3",
                params![request.tenant, config_limit, tokens],
            )?;
            let key = request.idempotency.as_ref().map(|c| c.key.as_str());
            exec(tx,
                "INSERT INTO reservations (tenant, task_id, idempotency_key, tokens, state, created_ms)
                 VALUES (?1, ?2, ?3, ?4, 'held', ?5)",
                params![request.tenant, request.task_id, key, tokens, now],
            )?;
            let reservation = ReservationId(tx.last_insert_rowid());
            if let Some(claim) = &request.idempotency {
                exec(tx,
                    "INSERT INTO idempotency (tenant, key, fingerprint, reservation_id, state, created_ms)
                     VALUES (?1, ?2, ?3, ?4, 'in_flight', ?5)",
                    params![
                        request.tenant,
                        claim.key,
                        &claim.fingerprint[..],
                        reservation.0,
                        now
                    ],
                )?;
            }
            Ok(Begin::Started { reservation })
        })
    }

    /// Settles a reservation with the provider-reported usage: releases what
    /// it held, charges `charge_tokens` up to the tenant's limit (the rest is
    /// reported as overage, never overdrawn), records the charge, and completes
    /// the task's idempotency record with `response` (or deletes the record if
    /// there is none).
    ///
    /// A reservation already finished or aborted charges nothing more:
    /// `Charge { charged: 0, overage: 0 }`.
    pub fn finish_task(&self, finish: &FinishTask) -> Result<Charge, StoreError> {
        let id = finish.reservation;
        self.write("finish task", |tx| {
            let now = now_ms();
            let Some(held) = load_reservation(tx, id)? else {
                return Err(self.unknown(id).into());
            };
            if !held.held {
                return Ok(Charge::default());
            }
            let charge = charge_reservation(tx, id, &held, finish.charge_tokens, now)?;
            match &finish.response {
                Some(response) => exec(
                    tx,
                    "UPDATE idempotency SET state = 'completed', completed_ms = ?2,
                                            response_status = ?3, response_body = ?4
                     WHERE reservation_id = ?1 AND state = 'in_flight'",
                    params![id.0, now, response.status, response.body],
                )?,
                None => exec(
                    tx,
                    "DELETE FROM idempotency WHERE reservation_id = ?1 AND state = 'in_flight'",
                    params![id.0],
                )?,
            };
            audit::append(
                tx,
                self.redactor(),
                entries::task_completed(
                    &finish.actor,
                    &held.task_id,
                    &held.tenant,
                    finish.response.as_ref().map(|r| r.status),
                    held.key.as_deref(),
                ),
                now,
            )?;
            audit_charge(tx, self.redactor(), &finish.actor, &held, &charge, now)?;
            Ok(charge)
        })
    }

    /// Releases a reservation without charging and deletes its in-flight
    /// idempotency record, so the client may retry. Does nothing if the
    /// reservation is already settled; this is what a request's drop guard
    /// calls on every failure path. A guard cannot await, so from `Drop` spawn
    /// it: `tokio::spawn(store.run(move |s| s.abort_task(id)))`.
    pub fn abort_task(&self, reservation: ReservationId) -> Result<(), StoreError> {
        self.write("abort task", |tx| {
            if !release(tx, reservation, now_ms())? {
                // Distinguish "already settled" (fine) from "never existed".
                if load_reservation(tx, reservation)?.is_none() {
                    return Err(self.unknown(reservation).into());
                }
            }
            Ok(())
        })
    }

    /// Releases `reservation` as [`SqliteStore::abort_task`] does; if the release
    /// fails (the disk refused the write), remembers it, so that
    /// [`SqliteStore::retry_releases`] tries again. A release that is never
    /// retried would keep the tokens reserved and the idempotency key in
    /// flight (answering 409) until the next restart.
    pub fn release_or_retry_later(&self, reservation: ReservationId) -> Result<(), StoreError> {
        self.inner
            .pending_releases
            .release_or_retry_later(reservation, |id| self.abort_task(id))
    }

    /// Tries again every release that failed. Returns what is still
    /// pending afterwards (0 when all went through).
    pub fn retry_releases(&self) -> usize {
        self.inner.pending_releases.retry(|id| self.abort_task(id))
    }

    /// How many failed releases wait for [`SqliteStore::retry_releases`].
    pub fn pending_releases(&self) -> usize {
        self.inner.pending_releases.len()
    }

    /// A tenant's budget. A tenant not seen yet has its configured limit and
    /// nothing used; reading does not create its row.
    pub fn budget(&self, tenant: &str) -> Result<BudgetSnapshot, StoreError> {
        let config_limit = self.configured_limit(tenant);
        let budget = self.read("read budget", |conn| {
            Ok(load_budget(conn, tenant)?.unwrap_or(Budget {
                limit: config_limit,
                used: 0,
                reserved: 0,
            }))
        })?;
        Ok(BudgetSnapshot {
            tenant: tenant.to_owned(),
            limit_tokens: from_db(budget.limit),
            used_tokens: from_db(budget.used),
            reserved_tokens: from_db(budget.reserved),
            remaining_tokens: from_db(budget.limit - budget.used - budget.reserved),
        })
    }

    /// A tenant's ledger, oldest charge first. Their tokens sum to the
    /// budget's `used_tokens`.
    pub fn charges(&self, tenant: &str) -> Result<Vec<ChargeRecord>, StoreError> {
        self.read("read charges", |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT tenant, reservation_id, task_id, idempotency_key, tokens,
                        overage_tokens, charged_ms
                 FROM charges WHERE tenant = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map([tenant], |row| {
                Ok(ChargeRecord {
                    tenant: row.get(0)?,
                    reservation: ReservationId(row.get(1)?),
                    task_id: row.get(2)?,
                    idempotency_key: row.get(3)?,
                    tokens: from_db(row.get(4)?),
                    overage_tokens: from_db(row.get(5)?),
                    charged_at_ms: from_db(row.get(6)?),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Crash recovery at open, one transaction: releases every held
    /// reservation and deletes every in-flight record (their requests died with
    /// the previous owner of the lock), then applies the configured limits.
    /// Recovery runs first so that a limit is compared with usage alone.
    pub(super) fn recover(&self) -> Result<Recovery, StoreError> {
        self.write("recover", |tx| {
            let now = now_ms();
            let (released_reservations, released_tokens): (i64, i64) = tx.query_row(
                "SELECT count(*), coalesce(sum(tokens), 0) FROM reservations WHERE state = 'held'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            exec(
                tx,
                "UPDATE budgets SET reserved_tokens = reserved_tokens - (
                     SELECT coalesce(sum(tokens), 0) FROM reservations
                     WHERE reservations.tenant = budgets.tenant AND state = 'held')",
                [],
            )?;
            exec(
                tx,
                "UPDATE reservations SET state = 'released', settled_ms = ?1 WHERE state = 'held'",
                [now],
            )?;
            let abandoned_keys = exec(tx, "DELETE FROM idempotency WHERE state = 'in_flight'", [])?;

            // A limit below what was already used is raised to the usage: the
            // CHECK forbids used > limit, and the ledger cannot un-spend.
            let tenants: Vec<(String, i64)> = if !self.inner.options.apply_limits {
                Vec::new()
            } else {
                let mut statement = tx.prepare("SELECT tenant, used_tokens FROM budgets")?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut clamped_limits = 0;
            for (tenant, used) in tenants {
                let configured = self.configured_limit(&tenant);
                if configured < used {
                    clamped_limits += 1;
                    tracing::warn!(
                        tenant = %tenant,
                        configured,
                        used,
                        "configured limit is below the tokens already used; limit set to the usage"
                    );
                }
                exec(
                    tx,
                    "UPDATE budgets SET limit_tokens = ?2 WHERE tenant = ?1",
                    params![tenant, configured.max(used)],
                )?;
            }
            Ok(Recovery {
                released_reservations: from_db(released_reservations),
                released_tokens: from_db(released_tokens),
                abandoned_keys: u64::try_from(abandoned_keys).unwrap_or(u64::MAX),
                clamped_limits,
                ..Recovery::default()
            })
        })
    }

    pub(super) fn unknown(&self, reservation: ReservationId) -> StoreError {
        StoreError::UnknownReservation {
            store: format!("database {}", self.inner.path.display()),
            reservation,
        }
    }
}

/// Runs one statement through the connection's statement cache: the same
/// few statements run on every request, and parsing them each time cost more
/// than executing them.
pub(super) fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// Settles the held reservation `id` with a charge of `charge_tokens`:
/// returns what it held to the budget, charges up to the tenant's limit (the
/// rest is overage, never overdrawn) and records the charge. The charges
/// table's unique index on the task id refuses a second charge for the same
/// task or job, whatever the caller does.
pub(super) fn charge_reservation(
    tx: &Transaction<'_>,
    id: ReservationId,
    held: &Reservation,
    charge_tokens: u64,
    now: i64,
) -> Result<Charge, TxError> {
    let budget = load_budget(tx, &held.tenant)?
        .ok_or_else(|| TxError::Sqlite(rusqlite::Error::QueryReturnedNoRows))?;
    // What the tenant can pay once this reservation is returned.
    let headroom = from_db(budget.limit - budget.used - (budget.reserved - held.tokens));
    let charged = charge_tokens.min(headroom);
    let overage = charge_tokens - charged;
    if overage > 0 {
        tracing::warn!(
            tenant = %held.tenant,
            reservation = %id,
            charged,
            overage,
            "reported usage exceeds the tenant's budget; overage not charged"
        );
    }
    exec(
        tx,
        "UPDATE budgets SET used_tokens = used_tokens + ?2,
                            reserved_tokens = reserved_tokens - ?3
         WHERE tenant = ?1",
        params![held.tenant, to_db(charged), held.tokens],
    )?;
    exec(
        tx,
        "UPDATE reservations SET state = 'charged', settled_ms = ?2 WHERE id = ?1",
        params![id.0, now],
    )?;
    exec(
        tx,
        "INSERT INTO charges (tenant, reservation_id, task_id, idempotency_key,
                              tokens, overage_tokens, charged_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            held.tenant,
            id.0,
            held.task_id,
            held.key,
            to_db(charged),
            to_db(overage),
            now
        ],
    )?;
    let remaining =
        from_db(budget.limit - budget.used - to_db(charged) - (budget.reserved - held.tokens));
    Ok(Charge {
        charged,
        overage,
        remaining,
    })
}

/// The audit entry of a committed charge.
pub(super) fn audit_charge(
    tx: &Transaction<'_>,
    redactor: &Redactor,
    actor: &str,
    held: &Reservation,
    charge: &Charge,
    now: i64,
) -> Result<u64, TxError> {
    audit::append(
        tx,
        redactor,
        entries::budget_charged(actor, &held.tenant, &held.task_id, charge),
        now,
    )
}

/// Releases `id` if it is held (returning its tokens to the budget and
/// deleting its in-flight record); false if it is settled or unknown.
pub(super) fn release(tx: &Transaction<'_>, id: ReservationId, now: i64) -> Result<bool, TxError> {
    let Some(held) = load_reservation(tx, id)?.filter(|r| r.held) else {
        return Ok(false);
    };
    exec(
        tx,
        "UPDATE reservations SET state = 'released', settled_ms = ?2 WHERE id = ?1",
        params![id.0, now],
    )?;
    exec(
        tx,
        "UPDATE budgets SET reserved_tokens = reserved_tokens - ?2 WHERE tenant = ?1",
        params![held.tenant, held.tokens],
    )?;
    exec(
        tx,
        "DELETE FROM idempotency WHERE reservation_id = ?1 AND state = 'in_flight'",
        params![id.0],
    )?;
    Ok(true)
}

pub(super) fn load_reservation(
    conn: &rusqlite::Connection,
    id: ReservationId,
) -> Result<Option<Reservation>, TxError> {
    Ok(conn
        .prepare_cached(
            "SELECT tenant, task_id, idempotency_key, tokens, state = 'held'
             FROM reservations WHERE id = ?1",
        )?
        .query_row([id.0], |row| {
            Ok(Reservation {
                tenant: row.get(0)?,
                task_id: row.get(1)?,
                key: row.get(2)?,
                tokens: row.get(3)?,
                held: row.get(4)?,
            })
        })
        .optional()?)
}

fn load_budget(conn: &rusqlite::Connection, tenant: &str) -> Result<Option<Budget>, TxError> {
    Ok(conn
        .prepare_cached(
            "SELECT limit_tokens, used_tokens, reserved_tokens FROM budgets WHERE tenant = ?1",
        )?
        .query_row([tenant], |row| {
            Ok(Budget {
                limit: row.get(0)?,
                used: row.get(1)?,
                reserved: row.get(2)?,
            })
        })
        .optional()?)
}

fn load_record(
    conn: &rusqlite::Connection,
    tenant: &str,
    key: &str,
) -> Result<Option<Record>, TxError> {
    Ok(conn
        .prepare_cached(
            "SELECT fingerprint, state = 'completed', reservation_id, created_ms,
                    response_status, response_body
             FROM idempotency WHERE tenant = ?1 AND key = ?2",
        )?
        .query_row([tenant, key], |row| {
            Ok(Record {
                fingerprint: row.get(0)?,
                completed: row.get(1)?,
                reservation: ReservationId(row.get(2)?),
                created_ms: row.get(3)?,
                status: row.get(4)?,
                body: row.get(5)?,
            })
        })
        .optional()?)
}
