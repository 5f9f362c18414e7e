//! Durable jobs: submission, leases with heartbeats and fencing, completion
//! with its one charge, retries, the dead-letter queue and replay. Every
//! state change is one transaction that also appends its audit entry.
//!
//! A job's states: `queued` (waiting, possibly until `run_after_ms`),
//! `running` (leased by a worker until `lease_expires_ms`), `succeeded` and
//! `dead` (the dead-letter queue). Times are passed in (`now` in Unix
//! milliseconds) so that tests can drive the clock.
//!
//! A lease is fenced by `lease_seq`, which grows with every lease: a worker
//! whose lease expired and was taken over can no longer heartbeat, complete or
//! fail the job, so a stalled worker that wakes up changes nothing. Until the
//! reaper takes an expired lease back, its worker may still finish: expiry
//! makes a lease reclaimable, the reclaim is what revokes it.
//!
//! Crash recovery in [`SqliteStore::open`] is the one place that reads the wall
//! clock itself: jobs it requeues or buries get the wall-clock time.

use std::collections::BTreeMap;
use std::fmt;

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::tasks::{audit_charge, charge_reservation, exec, load_reservation, release};
use super::{
    Charge, IdempotencyClaim, ReservationId, SqliteStore, StoreError, TxError, audit, entries,
    from_db, webhooks,
};
use crate::pii::Redactor;

/// The most jobs one listing returns.
pub const MAX_JOB_PAGE: u32 = 1000;

/// The actor of changes the orchestrator makes on its own.
pub const SYSTEM_ACTOR: &str = "system";

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker (possibly until a retry time).
    Queued,
    /// Leased by a worker.
    Running,
    /// Done; the output is stored and charged.
    Succeeded,
    /// Failed for good: in the dead-letter queue.
    Dead,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Dead,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
        }
    }

    /// The state with this name.
    pub fn parse(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// A fresh id.
    pub id: String,
    /// Whose budget pays.
    pub tenant: String,
    /// Who submitted it, for the audit log (an API key id).
    pub actor: String,
    /// The `Idempotency-Key` and request fingerprint, if any.
    pub idempotency: Option<IdempotencyClaim>,
    /// The prompt.
    pub prompt: String,
    /// The completion limit.
    pub max_tokens: u32,
    /// Where to report completion, already checked against the allowlist.
    pub webhook: Option<String>,
    /// Attempts before the dead-letter queue.
    pub max_attempts: u32,
    /// Queued and running jobs beyond which the submission is refused.
    pub queue_capacity: u32,
}

/// The outcome of [`SqliteStore::submit_job`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submit {
    /// Committed: the job is queued.
    Accepted {
        /// Its id.
        id: String,
    },
    /// The key was used before for the same request: that job.
    Existing {
        /// Its id.
        id: String,
        /// Its state now.
        state: JobState,
    },
    /// The key was used before for a different request.
    FingerprintMismatch,
    /// The queue holds `capacity` jobs already; nothing was written.
    QueueFull {
        /// Queued and running jobs.
        depth: u64,
        /// The configured capacity.
        capacity: u32,
    },
}

/// A lease's fencing token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

/// A job a worker leased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedJob {
    /// Its id.
    pub id: String,
    /// Whose budget pays.
    pub tenant: String,
    /// The prompt.
    pub prompt: String,
    /// The completion limit.
    pub max_tokens: u32,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The fencing token for heartbeat, complete and fail.
    pub lease: LeaseId,
    /// When the job was submitted, Unix milliseconds.
    pub created_ms: i64,
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its state.
    pub state: JobState,
    /// Attempts started since submission or the last replay.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The validated output (JSON text) once succeeded.
    pub output: Option<String>,
    /// Tokens charged, once succeeded.
    pub charged_tokens: Option<u64>,
    /// The submission's idempotency key.
    pub idempotency_key: Option<String>,
    /// The webhook.
    pub webhook: Option<String>,
    /// When submitted, Unix milliseconds.
    pub created_ms: i64,
    /// Last change, Unix milliseconds.
    pub updated_ms: i64,
    /// When it succeeded or died, Unix milliseconds.
    pub finished_ms: Option<i64>,
    /// When queued: not before this time.
    pub run_after_ms: i64,
}

/// What a worker reports after a successful attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompleteJob {
    /// The job.
    pub id: String,
    /// The worker's lease.
    pub lease: LeaseId,
    /// The attempt's reservation, settled by this charge.
    pub reservation: ReservationId,
    /// The provider-reported usage.
    pub charge_tokens: u64,
    /// The validated output, JSON text.
    pub output: String,
    /// The worker, for the audit log.
    pub actor: String,
}

/// The outcome of [`SqliteStore::complete_job`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Stored and charged.
    Succeeded(Charge),
    /// The lease was lost (expired and taken over): nothing was stored or
    /// charged, and the reservation was released.
    LeaseLost,
}

/// What a worker reports after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailJob {
    /// The job.
    pub id: String,
    /// The worker's lease.
    pub lease: LeaseId,
    /// The attempt's reservation, released by this failure.
    pub reservation: Option<ReservationId>,
    /// Why it failed, for `last_error`.
    pub error: String,
    /// When to try again, if the failure is worth retrying; `None` sends the
    /// job to the dead-letter queue at once.
    pub retry_at_ms: Option<i64>,
    /// The worker, for the audit log.
    pub actor: String,
}

/// The outcome of [`SqliteStore::fail_job`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Queued again, to run at this time.
    Retrying {
        /// Unix milliseconds.
        at_ms: i64,
    },
    /// Out of attempts, or not retryable: now in the dead-letter queue.
    Dead,
    /// The lease was lost; nothing changed but the reservation's release.
    LeaseLost,
}

/// The outcome of [`SqliteStore::replay_job`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Queued again with its attempts reset.
    Replayed,
    /// No such job for this tenant.
    NotFound,
    /// The job is not in the dead-letter queue.
    NotDead(JobState),
    /// The queue is full.
    QueueFull {
        /// Queued and running jobs.
        depth: u64,
        /// The configured capacity.
        capacity: u32,
    },
}

/// A lease that expired (or whose owner died) and what became of its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    /// The job.
    pub id: String,
    /// `Queued` to run again, or `Dead` when it was on its last attempt.
    pub now: JobState,
}

/// Jobs by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    /// Waiting.
    pub queued: u64,
    /// Leased.
    pub running: u64,
    /// Done.
    pub succeeded: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

impl JobCounts {
    /// The count of one state.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Succeeded => self.succeeded,
            JobState::Dead => self.dead,
        }
    }

    fn add(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Queued => self.queued += n,
            JobState::Running => self.running += n,
            JobState::Succeeded => self.succeeded += n,
            JobState::Dead => self.dead += n,
        }
    }
}

pub(super) const JOB_COLUMNS: &str =
    "id, tenant, state, attempts, max_attempts, last_error, output,
    charged_tokens, idempotency_key, webhook, created_ms, updated_ms, finished_ms, run_after_ms";

pub(super) fn read_job(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(2)?;
    Ok(Job {
        id: row.get(0)?,
        tenant: row.get(1)?,
        // The schema's CHECK admits only the four names.
        state: JobState::parse(&state).unwrap_or(JobState::Dead),
        attempts: count(row.get(3)?),
        max_attempts: count(row.get(4)?),
        last_error: row.get(5)?,
        output: row.get(6)?,
        charged_tokens: row.get::<_, Option<i64>>(7)?.map(from_db),
        idempotency_key: row.get(8)?,
        webhook: row.get(9)?,
        created_ms: row.get(10)?,
        updated_ms: row.get(11)?,
        finished_ms: row.get(12)?,
        run_after_ms: row.get(13)?,
    })
}

fn count(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Queued and running jobs: what counts against the queue's capacity.
fn depth(tx: &Transaction<'_>) -> rusqlite::Result<u64> {
    let n: i64 = tx
        .prepare_cached("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")?
        .query_row([], |row| row.get(0))?;
    Ok(from_db(n))
}

/// The running job `id` if it still carries `lease`: (tenant, attempts, max_attempts).
fn leased(
    tx: &Transaction<'_>,
    id: &str,
    lease: LeaseId,
) -> rusqlite::Result<Option<(String, u32, u32)>> {
    tx.prepare_cached(
        "SELECT tenant, attempts, max_attempts FROM jobs
         WHERE id = ?1 AND state = 'running' AND lease_seq = ?2",
    )?
    .query_row(params![id, lease.0], |row| {
        Ok((row.get(0)?, count(row.get(1)?), count(row.get(2)?)))
    })
    .optional()
}

/// Moves the running job to `dead` with `error`, and queues its webhook
/// delivery in the same transaction: every way a job dies goes through here.
fn bury(
    tx: &Transaction<'_>,
    redactor: &Redactor,
    id: &str,
    error: &str,
    now: i64,
) -> Result<(), TxError> {
    exec(
        tx,
        "UPDATE jobs SET state = 'dead', last_error = ?2, lease_owner = NULL,
                         lease_expires_ms = NULL, updated_ms = ?3, finished_ms = ?3
         WHERE id = ?1",
        params![id, error, now],
    )?;
    webhooks::enqueue(tx, redactor, id, now)
}

/// Moves the job back to `queued`, to run at `at`.
fn requeue(
    tx: &Transaction<'_>,
    id: &str,
    error: Option<&str>,
    at: i64,
    now: i64,
) -> rusqlite::Result<usize> {
    exec(
        tx,
        "UPDATE jobs SET state = 'queued', last_error = coalesce(?2, last_error),
                         run_after_ms = ?3, lease_owner = NULL, lease_expires_ms = NULL,
                         updated_ms = ?4
         WHERE id = ?1",
        params![id, error, at, now],
    )
}

impl SqliteStore {
    /// Submits a job: replays or refuses its idempotency key, refuses it when
    /// the queue is full, else commits it as `queued` (with its
    /// `job.accepted` audit entry) before returning, so that an accepted job
    /// survives a crash the instant after.
    pub fn submit_job(&self, job: &NewJob, now: i64) -> Result<Submit, StoreError> {
        self.write("submit job", |tx| {
            if let Some(claim) = &job.idempotency {
                let found: Option<(String, String, Vec<u8>)> = tx
                    .prepare_cached(
                        "SELECT id, state, fingerprint FROM jobs
                         WHERE tenant = ?1 AND idempotency_key = ?2",
                    )?
                    .query_row(params![job.tenant, claim.key], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()?;
                if let Some((id, state, fingerprint)) = found {
                    return Ok(if fingerprint == claim.fingerprint {
                        Submit::Existing {
                            id,
                            state: JobState::parse(&state).unwrap_or(JobState::Dead),
                        }
                    } else {
                        Submit::FingerprintMismatch
                    });
                }
            }
            let depth = depth(tx)?;
            if depth >= u64::from(job.queue_capacity) {
                return Ok(Submit::QueueFull {
                    depth,
                    capacity: job.queue_capacity,
                });
            }
            let (key, fingerprint) = match &job.idempotency {
                Some(c) => (Some(c.key.as_str()), Some(&c.fingerprint[..])),
                None => (None, None),
            };
            exec(
                tx,
                "INSERT INTO jobs (id, tenant, idempotency_key, fingerprint, prompt, max_tokens,
                                   webhook, state, max_attempts, run_after_ms, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, ?9, ?9)",
                params![
                    job.id,
                    job.tenant,
                    key,
                    fingerprint,
                    job.prompt,
                    job.max_tokens,
                    job.webhook,
                    job.max_attempts.max(1),
                    now
                ],
            )?;
            audit::append(tx, self.redactor(),
                entries::job_accepted(
                    &job.actor,
                    &job.id,
                    &job.tenant,
                    key,
                    job.max_tokens,
                    job.max_attempts.max(1),
                    job.prompt.len(),
                ),
                now,
            )?;
            Ok(Submit::Accepted { id: job.id.clone() })
        })
    }

    /// Leases the oldest queued job whose time has come, for `lease_ms`, and
    /// counts the attempt. `None` when nothing is ready.
    pub fn lease_job(
        &self,
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<LeasedJob>, StoreError> {
        self.write("lease job", |tx| {
            let next: Option<String> = tx
                .prepare_cached(
                    "SELECT id FROM jobs WHERE state = 'queued' AND run_after_ms <= ?1
                     ORDER BY run_after_ms, num LIMIT 1",
                )?
                .query_row([now], |row| row.get(0))
                .optional()?;
            let Some(id) = next else { return Ok(None) };
            exec(
                tx,
                "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                                 lease_seq = lease_seq + 1, lease_owner = ?2,
                                 lease_expires_ms = ?3, updated_ms = ?4
                 WHERE id = ?1",
                params![id, worker, now.saturating_add(lease_ms), now],
            )?;
            let job = tx
                .prepare_cached(
                    "SELECT id, tenant, prompt, max_tokens, attempts, max_attempts, lease_seq,
                            created_ms
                     FROM jobs WHERE id = ?1",
                )?
                .query_row([&id], |row| {
                    Ok(LeasedJob {
                        id: row.get(0)?,
                        tenant: row.get(1)?,
                        prompt: row.get(2)?,
                        max_tokens: count(row.get(3)?),
                        attempt: count(row.get(4)?),
                        max_attempts: count(row.get(5)?),
                        lease: LeaseId(row.get(6)?),
                        created_ms: row.get(7)?,
                    })
                })?;
            audit::append(
                tx,
                self.redactor(),
                entries::job_leased(worker, &id, job.attempt, lease_ms),
                now,
            )?;
            Ok(Some(job))
        })
    }

    /// Extends the lease to `now + lease_ms`. False when the lease is lost:
    /// the worker must stop, its work will not be accepted.
    pub fn heartbeat_job(
        &self,
        id: &str,
        lease: LeaseId,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write("heartbeat job", |tx| {
            let n = exec(
                tx,
                "UPDATE jobs SET lease_expires_ms = ?3, updated_ms = ?4
                 WHERE id = ?1 AND state = 'running' AND lease_seq = ?2",
                params![id, lease.0, now.saturating_add(lease_ms), now],
            )?;
            Ok(n == 1)
        })
    }

    /// Stores a successful attempt's output and charges its usage, in one
    /// transaction with the `job.completed` and `budget.charged` entries. With
    /// a lost lease, releases the reservation and changes nothing else.
    pub fn complete_job(&self, done: &CompleteJob, now: i64) -> Result<Completion, StoreError> {
        self.write("complete job", |tx| {
            let Some((tenant, attempts, _)) = leased(tx, &done.id, done.lease)? else {
                release(tx, done.reservation, now)?;
                return Ok(Completion::LeaseLost);
            };
            let Some(held) = load_reservation(tx, done.reservation)?.filter(|r| r.held) else {
                return Err(self.unknown(done.reservation).into());
            };
            let charge = charge_reservation(tx, done.reservation, &held, done.charge_tokens, now)?;
            exec(
                tx,
                "UPDATE jobs SET state = 'succeeded', output = ?2, charged_tokens = ?3,
                                 lease_owner = NULL, lease_expires_ms = NULL,
                                 updated_ms = ?4, finished_ms = ?4
                 WHERE id = ?1",
                params![done.id, done.output, super::to_db(charge.charged), now],
            )?;
            webhooks::enqueue(tx, self.redactor(), &done.id, now)?;
            audit::append(
                tx,
                self.redactor(),
                entries::job_completed(&done.actor, &done.id, &tenant, attempts, charge.charged),
                now,
            )?;
            audit_charge(tx, self.redactor(), &done.actor, &held, &charge, now)?;
            Ok(Completion::Succeeded(charge))
        })
    }

    /// Records a failed attempt: releases its reservation, then queues the
    /// job again at `retry_at_ms`, or, when the failure is not retryable or
    /// this was the last attempt, moves it to the dead-letter queue.
    pub fn fail_job(&self, failed: &FailJob, now: i64) -> Result<Failure, StoreError> {
        // A provider's error can quote the prompt; `last_error` is read by
        // other principals (DLQ listings), so it is stored redacted.
        let error = self.redactor().redact(&failed.error).into_owned();
        self.write("fail job", |tx| {
            if let Some(reservation) = failed.reservation {
                release(tx, reservation, now)?;
            }
            let Some((tenant, attempts, max_attempts)) = leased(tx, &failed.id, failed.lease)?
            else {
                return Ok(Failure::LeaseLost);
            };
            let outcome = match failed.retry_at_ms {
                Some(at) if attempts < max_attempts => {
                    requeue(tx, &failed.id, Some(&error), at, now)?;
                    Failure::Retrying { at_ms: at }
                }
                _ => {
                    bury(tx, self.redactor(), &failed.id, &error, now)?;
                    Failure::Dead
                }
            };
            let retry_in_ms = match outcome {
                Failure::Retrying { at_ms } => Some(at_ms.saturating_sub(now)),
                _ => None,
            };
            audit::append(
                tx,
                self.redactor(),
                entries::job_failed(
                    &failed.actor,
                    &failed.id,
                    &tenant,
                    attempts,
                    &error,
                    retry_in_ms,
                    failed.retry_at_ms.is_some(),
                ),
                now,
            )?;
            Ok(outcome)
        })
    }

    /// Gives a lease back without counting the attempt (a graceful shutdown
    /// interrupted it): the job is queued to run at once, and the reservation
    /// is released. False if the lease was already lost.
    pub fn release_job(
        &self,
        id: &str,
        lease: LeaseId,
        reservation: Option<ReservationId>,
        actor: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.write("release job", |tx| {
            if let Some(reservation) = reservation {
                release(tx, reservation, now)?;
            }
            if leased(tx, id, lease)?.is_none() {
                return Ok(false);
            }
            requeue(tx, id, None, now, now)?;
            exec(
                tx,
                "UPDATE jobs SET attempts = max(attempts - 1, 0) WHERE id = ?1",
                [id],
            )?;
            audit::append(tx, self.redactor(), entries::job_released(actor, id), now)?;
            Ok(true)
        })
    }

    /// Takes back every lease that expired by `now` (its worker crashed or
    /// stalled): the job is queued to run at once, or, if that was its last
    /// attempt, moved to the dead-letter queue. Bounded: at most `limit` jobs
    /// per call.
    pub fn reclaim_expired_jobs(&self, now: i64, limit: u32) -> Result<Vec<Reclaimed>, StoreError> {
        self.write("reclaim expired jobs", |tx| {
            reclaim(
                tx,
                self.redactor(),
                Some(now),
                now,
                limit,
                "lease expired: the worker crashed or stalled",
            )
        })
    }

    /// Crash recovery: every running job belonged to a worker of the previous
    /// process (one process owns the file), so every lease is taken back.
    pub(super) fn reclaim_all_jobs(&self, now: i64) -> Result<Vec<Reclaimed>, StoreError> {
        self.write("recover jobs", |tx| {
            reclaim(
                tx,
                self.redactor(),
                None,
                now,
                u32::MAX,
                "the orchestrator stopped while the job ran (crash or kill)",
            )
        })
    }

    /// A tenant's job.
    pub fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError> {
        self.read("read job", |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND tenant = ?2"
                ))?
                .query_row(params![id, tenant], read_job)
                .optional()?)
        })
    }

    /// A tenant's job ids in submission order, optionally in one state, at
    /// most `limit` (capped at [`MAX_JOB_PAGE`]); with the tenant's counts by
    /// state.
    pub fn list_jobs(
        &self,
        tenant: &str,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<(Vec<String>, JobCounts), StoreError> {
        let limit = limit.min(MAX_JOB_PAGE);
        self.read("list jobs", |conn| {
            let ids = match state {
                Some(state) => {
                    let mut statement = conn.prepare_cached(
                        "SELECT id FROM jobs WHERE tenant = ?1 AND state = ?2 ORDER BY num LIMIT ?3",
                    )?;
                    let rows =
                        statement.query_map(params![tenant, state.as_str(), limit], |row| row.get(0))?;
                    rows.collect::<Result<Vec<String>, _>>()?
                }
                None => {
                    let mut statement = conn.prepare_cached(
                        "SELECT id FROM jobs WHERE tenant = ?1 ORDER BY num LIMIT ?2",
                    )?;
                    let rows = statement.query_map(params![tenant, limit], |row| row.get(0))?;
                    rows.collect::<Result<Vec<String>, _>>()?
                }
            };
            Ok((ids, count_by_state(conn, Some(tenant))?))
        })
    }

    /// A tenant's dead-letter queue, oldest death first, at most `limit`
    /// (capped at [`MAX_JOB_PAGE`]).
    pub fn dead_jobs(&self, tenant: &str, limit: u32) -> Result<Vec<Job>, StoreError> {
        let limit = limit.min(MAX_JOB_PAGE);
        self.read("read dead-letter queue", |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND state = 'dead'
                 ORDER BY finished_ms, num LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![tenant, limit], read_job)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Queues a dead job again with its attempts reset (`job.replayed`,
    /// naming `actor`). Refused when the queue is full.
    pub fn replay_job(
        &self,
        tenant: &str,
        id: &str,
        actor: &str,
        queue_capacity: u32,
        now: i64,
    ) -> Result<Replay, StoreError> {
        self.write("replay job", |tx| {
            let state: Option<String> = tx
                .prepare_cached("SELECT state FROM jobs WHERE id = ?1 AND tenant = ?2")?
                .query_row(params![id, tenant], |row| row.get(0))
                .optional()?;
            let Some(state) = state else {
                return Ok(Replay::NotFound);
            };
            let state = JobState::parse(&state).unwrap_or(JobState::Dead);
            if state != JobState::Dead {
                return Ok(Replay::NotDead(state));
            }
            let depth = depth(tx)?;
            if depth >= u64::from(queue_capacity) {
                return Ok(Replay::QueueFull {
                    depth,
                    capacity: queue_capacity,
                });
            }
            exec(
                tx,
                "UPDATE jobs SET state = 'queued', attempts = 0, run_after_ms = ?2,
                                 finished_ms = NULL, updated_ms = ?2
                 WHERE id = ?1",
                params![id, now],
            )?;
            audit::append(
                tx,
                self.redactor(),
                entries::job_replayed(actor, id, tenant),
                now,
            )?;
            Ok(Replay::Replayed)
        })
    }

    /// Every tenant's jobs by state, for metrics.
    pub fn job_counts(&self) -> Result<JobCounts, StoreError> {
        self.read("count jobs", |conn| Ok(count_by_state(conn, None)?))
    }

    /// The earliest time a queued job becomes ready, if any is queued.
    pub fn next_job_due(&self) -> Result<Option<i64>, StoreError> {
        self.read("next job due", |conn| {
            Ok(conn
                .prepare_cached("SELECT min(run_after_ms) FROM jobs WHERE state = 'queued'")?
                .query_row([], |row| row.get(0))?)
        })
    }

    /// Every charge of the database by task or job id, for invariant checks:
    /// (task or job id, number of charges, tokens).
    pub fn charges_by_task(&self) -> Result<BTreeMap<String, (u64, u64)>, StoreError> {
        self.read("read charges by task", |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT task_id, count(*), sum(tokens) FROM charges GROUP BY task_id",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    (from_db(row.get(1)?), from_db(row.get(2)?)),
                ))
            })?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
    }
}

/// Jobs by state, of one tenant or of all.
fn count_by_state(
    conn: &rusqlite::Connection,
    tenant: Option<&str>,
) -> rusqlite::Result<JobCounts> {
    let mut counts = JobCounts::default();
    let mut statement = conn.prepare_cached(
        "SELECT state, count(*) FROM jobs WHERE ?1 IS NULL OR tenant = ?1 GROUP BY state",
    )?;
    let rows = statement.query_map([tenant], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (state, n) = row?;
        if let Some(state) = JobState::parse(&state) {
            counts.add(state, from_db(n));
        }
    }
    Ok(counts)
}

/// Reclaims running jobs whose lease expired by `expired_by` (all of them
/// when `None`), at most `limit`.
fn reclaim(
    tx: &Transaction<'_>,
    redactor: &Redactor,
    expired_by: Option<i64>,
    now: i64,
    limit: u32,
    why: &str,
) -> Result<Vec<Reclaimed>, TxError> {
    let expired: Vec<(String, String, u32, u32)> = {
        let mut statement = tx.prepare_cached(
            "SELECT id, tenant, attempts, max_attempts FROM jobs
             WHERE state = 'running' AND lease_expires_ms <= ?1
             ORDER BY lease_expires_ms, num LIMIT ?2",
        )?;
        let rows = statement.query_map(params![expired_by.unwrap_or(i64::MAX), limit], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                count(row.get(2)?),
                count(row.get(3)?),
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(expired.len());
    for (id, tenant, attempts, max_attempts) in expired {
        let error = format!("attempt {attempts}: {why}");
        let now_state = if attempts >= max_attempts {
            bury(tx, redactor, &id, &error, now)?;
            JobState::Dead
        } else {
            requeue(tx, &id, Some(&error), now, now)?;
            JobState::Queued
        };
        audit::append(
            tx,
            redactor,
            entries::job_reclaimed(&id, &tenant, attempts, &error, now_state),
            now,
        )?;
        out.push(Reclaimed { id, now: now_state });
    }
    Ok(out)
}
