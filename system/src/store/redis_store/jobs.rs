//! Durable jobs on Redis: submission, leases with heartbeats and fencing,
//! completion with its one charge, retries, the dead-letter queue and
//! replay, each state change one optimistic transaction that also appends
//! its audit entry, keeping the SQLite store's semantics (see
//! `store/jobs.rs`, whose functions these parallel one for one).
//!
//! # Layout
//!
//! A job is a hash, `{prefix}:job:{id}`, holding the columns of SQLite's
//! `jobs` row; `num`, from the counter `{prefix}:seq:job`, is its place in
//! submission order. Sorted sets index it by state: `{prefix}:jobs:queued`
//! scored by `run_after_ms`, `{prefix}:jobs:running` by `lease_expires_ms`,
//! `{prefix}:jobs:succeeded` and `{prefix}:jobs:dead` by `num`; their
//! members are `{num:020}:{id}`, so that jobs with the same score come in
//! submission order (Redis orders equal scores by member), as SQLite's
//! `ORDER BY run_after_ms, num` does. Per tenant, `{prefix}:jobs:tenant:{t}`
//! and `{prefix}:jobs:tenant:{t}:{state}` hold ids scored by `num`, for
//! listings and counts, and `{prefix}:jobs:dlq:{t}` holds the dead ones
//! scored by `finished_ms` (members as above: oldest death first, then
//! submission order). A keyed submission is found through
//! `{prefix}:jobs:idem:{t}:{key}`, which holds the job's id.
//!
//! # Why sorted sets, not Streams
//!
//! A Redis Stream with a consumer group hands out entries in arrival order
//! and tracks pending ones per consumer, but a job here becomes ready at its
//! own `run_after_ms` (a retry waits, a replay does not), and a lease is
//! fenced by the job's `lease_seq`, which a stalled worker's `XACK` or
//! `XCLAIM` would not check. A sorted set scored by the time a job becomes
//! ready is the queue SQLite's `jobs_ready` index is, and the fence lives in
//! the job's hash, which every change of the job watches: a worker whose
//! lease was taken over reads another `lease_seq` and changes nothing.
//!
//! # Atomicity
//!
//! Every operation watches the job's hash and the indexes it reads
//! (`submit` and `replay` also the queued and running sets, whose sizes are
//! the queue's depth), so that two replicas never lease the same job, and a
//! job's state and its place in every index change in the same `EXEC`. A job
//! hash is never deleted, so neither a lease id (`lease_seq`, per job) nor a
//! submission number is ever reused.
//!
//! # No reclaim at open
//!
//! SQLite's open takes back every running job, because one process owns the
//! file. Here other replicas are alive and their workers hold leases, so open
//! takes nothing back: a lease whose worker died expires, and the reaper of
//! any replica reclaims it ([`RedisStore::reclaim_expired_jobs`]).
//!
//! Scores are doubles: times and numbers up to 2^53 are exact, which Unix
//! milliseconds are for the next 285,000 years. Decisions are made on the
//! hash's exact integers; the scores only find the candidates.

use std::collections::BTreeMap;

use redis::{Connection, Pipeline};

use super::tasks::watch;
use super::{Attempt, Fault, Fields, RedisStore, int, snapshot, text};
use crate::store::{
    CompleteJob, Completion, FailJob, Failure, Job, JobCounts, JobState, LeaseId, LeasedJob,
    MAX_JOB_PAGE, NewJob, Reclaimed, Replay, ReservationId, StoreError, Submit, entries, from_db,
};

/// A job as stored in `{prefix}:job:{id}`: what [`Job`] shows and what only
/// the store reads.
#[derive(Clone, Debug)]
pub(super) struct StoredJob {
    pub(super) job: Job,
    /// Its place in submission order.
    num: i64,
    prompt: String,
    max_tokens: u32,
    /// The submission's fingerprint, hex, when it had a key.
    fingerprint: Option<String>,
    /// The fencing token: grows with every lease.
    lease_seq: i64,
    lease_owner: Option<String>,
    lease_expires_ms: Option<i64>,
}

impl StoredJob {
    /// Its member in the sorted sets that order jobs by score, then by
    /// submission.
    fn entry(&self) -> String {
        entry(self.num, &self.job.id)
    }
}

/// `{num:020}:{id}`: zero-padded, so that members sort as numbers.
fn entry(num: i64, id: &str) -> String {
    format!("{num:020}:{id}")
}

/// The job id of a sorted-set member made by [`entry`].
fn entry_id(entry: &str) -> &str {
    entry.split_once(':').map_or(entry, |(_, id)| id)
}

fn count(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The running job if it still carries `lease` (SQLite's `leased`).
fn leased(job: Option<StoredJob>, lease: LeaseId) -> Option<StoredJob> {
    job.filter(|j| j.job.state == JobState::Running && j.lease_seq == lease.0)
}

impl RedisStore {
    /// Watches and reads the job `id`; `None` if there is none.
    fn load_job(&self, con: &mut Connection, id: &str) -> Result<Option<StoredJob>, Fault> {
        let key = self.keys().job(id);
        watch(con, &key)?;
        let fields: Fields = redis::cmd("HGETALL").arg(&key).query(con)?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.parse_job(&key, &fields)?))
    }

    fn parse_job(&self, key: &str, fields: &Fields) -> Result<StoredJob, StoreError> {
        let state = text(fields, "state").and_then(|s| JobState::parse(&s));
        let (
            Some(id),
            Some(tenant),
            Some(state),
            Some(num),
            Some(prompt),
            Some(max_tokens),
            Some(attempts),
            Some(max_attempts),
            Some(run_after_ms),
            Some(lease_seq),
            Some(created_ms),
            Some(updated_ms),
        ) = (
            text(fields, "id"),
            text(fields, "tenant"),
            state,
            int(fields, "num"),
            text(fields, "prompt"),
            int(fields, "max_tokens"),
            int(fields, "attempts"),
            int(fields, "max_attempts"),
            int(fields, "run_after_ms"),
            int(fields, "lease_seq"),
            int(fields, "created_ms"),
            int(fields, "updated_ms"),
        )
        else {
            return Err(self.malformed(
                key,
                "a job needs id, tenant, a known state, num, prompt, max_tokens, attempts, \
                 max_attempts, run_after_ms, lease_seq, created_ms and updated_ms",
            ));
        };
        Ok(StoredJob {
            job: Job {
                id,
                tenant,
                state,
                attempts: count(attempts),
                max_attempts: count(max_attempts),
                last_error: text(fields, "last_error"),
                output: text(fields, "output"),
                charged_tokens: int(fields, "charged_tokens").map(from_db),
                idempotency_key: text(fields, "idempotency_key"),
                webhook: text(fields, "webhook"),
                created_ms,
                updated_ms,
                finished_ms: int(fields, "finished_ms"),
                run_after_ms,
            },
            num,
            prompt,
            max_tokens: count(max_tokens),
            fingerprint: text(fields, "fingerprint"),
            lease_seq,
            lease_owner: text(fields, "lease_owner"),
            lease_expires_ms: int(fields, "lease_expires_ms"),
        })
    }

    /// Adds to `pipe` the write of what a change may alter in `job`'s hash
    /// (the fields it lacks are deleted), and its move from the indexes of
    /// state `from` to those of its state now.
    fn stage_update(&self, pipe: &mut Pipeline, from: JobState, job: &StoredJob) {
        let keys = self.keys();
        let key = keys.job(&job.job.id);
        let j = &job.job;
        pipe.cmd("HSET")
            .arg(&key)
            .arg("state")
            .arg(j.state.as_str())
            .arg("attempts")
            .arg(j.attempts)
            .arg("run_after_ms")
            .arg(j.run_after_ms)
            .arg("lease_seq")
            .arg(job.lease_seq)
            .arg("updated_ms")
            .arg(j.updated_ms)
            .ignore();
        let optional: [(&str, Option<String>); 6] = [
            ("lease_owner", job.lease_owner.clone()),
            (
                "lease_expires_ms",
                job.lease_expires_ms.map(|v| v.to_string()),
            ),
            ("last_error", j.last_error.clone()),
            ("output", j.output.clone()),
            ("charged_tokens", j.charged_tokens.map(|v| v.to_string())),
            ("finished_ms", j.finished_ms.map(|v| v.to_string())),
        ];
        for (field, value) in optional {
            match value {
                Some(value) => pipe.cmd("HSET").arg(&key).arg(field).arg(value).ignore(),
                None => pipe.cmd("HDEL").arg(&key).arg(field).ignore(),
            };
        }
        if from != j.state {
            self.unindex(pipe, from, job);
            self.index(pipe, job);
        }
    }

    /// Adds `job` to the indexes of its state.
    fn index(&self, pipe: &mut Pipeline, job: &StoredJob) {
        let keys = self.keys();
        let j = &job.job;
        let score = match j.state {
            JobState::Queued => j.run_after_ms,
            JobState::Running => job.lease_expires_ms.unwrap_or(j.updated_ms),
            JobState::Succeeded | JobState::Dead => job.num,
        };
        pipe.cmd("ZADD")
            .arg(keys.jobs_in(j.state))
            .arg(score)
            .arg(job.entry())
            .ignore()
            .cmd("ZADD")
            .arg(keys.tenant_jobs_in(&j.tenant, j.state))
            .arg(job.num)
            .arg(&j.id)
            .ignore();
        if j.state == JobState::Dead {
            pipe.cmd("ZADD")
                .arg(keys.dead_letters(&j.tenant))
                .arg(j.finished_ms.unwrap_or(j.updated_ms))
                .arg(job.entry())
                .ignore();
        }
    }

    /// Takes `job` out of the indexes of state `from`.
    fn unindex(&self, pipe: &mut Pipeline, from: JobState, job: &StoredJob) {
        let keys = self.keys();
        let j = &job.job;
        pipe.cmd("ZREM")
            .arg(keys.jobs_in(from))
            .arg(job.entry())
            .ignore()
            .cmd("ZREM")
            .arg(keys.tenant_jobs_in(&j.tenant, from))
            .arg(&j.id)
            .ignore();
        if from == JobState::Dead {
            pipe.cmd("ZREM")
                .arg(keys.dead_letters(&j.tenant))
                .arg(job.entry())
                .ignore();
        }
    }

    /// Watches the queued and running sets and counts them: what counts
    /// against the queue's capacity.
    fn depth(&self, con: &mut Connection) -> Result<u64, Fault> {
        let keys = self.keys();
        let (queued, running) = (
            keys.jobs_in(JobState::Queued),
            keys.jobs_in(JobState::Running),
        );
        watch(con, &queued)?;
        watch(con, &running)?;
        let (q, r): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(&queued)
            .cmd("ZCARD")
            .arg(&running)
            .query(con)?;
        Ok(q + r)
    }

    /// Moves the running job to `dead` with `error`, and queues its webhook
    /// delivery in the same transaction: every way a job dies goes through
    /// here.
    fn bury(&self, pipe: &mut Pipeline, job: &mut StoredJob, error: &str, now: i64) {
        let from = job.job.state;
        job.job.state = JobState::Dead;
        job.job.last_error = Some(error.to_owned());
        job.lease_owner = None;
        job.lease_expires_ms = None;
        job.job.updated_ms = now;
        job.job.finished_ms = Some(now);
        self.stage_update(pipe, from, job);
        self.stage_delivery(pipe, &job.job, now);
    }

    /// Moves the job back to `queued`, to run at `at`.
    fn requeue(
        &self,
        pipe: &mut Pipeline,
        job: &mut StoredJob,
        error: Option<&str>,
        at: i64,
        now: i64,
    ) {
        let from = job.job.state;
        job.job.state = JobState::Queued;
        if let Some(error) = error {
            job.job.last_error = Some(error.to_owned());
        }
        job.job.run_after_ms = at;
        job.lease_owner = None;
        job.lease_expires_ms = None;
        job.job.updated_ms = now;
        self.stage_update(pipe, from, job);
    }

    /// Submits a job, as [`crate::store::SqliteStore::submit_job`] does:
    /// replays or refuses its idempotency key, refuses it when the queue is
    /// full, else commits it as `queued` with its `job.accepted` entry.
    pub fn submit_job(&self, job: &NewJob, now: i64) -> Result<Submit, StoreError> {
        let keys = self.keys().clone();
        let idem_key = job
            .idempotency
            .as_ref()
            .map(|claim| keys.job_idempotency(&job.tenant, &claim.key));
        let _audit = self.audit_lock();
        self.optimistic("submit job", |con| {
            if let (Some(claim), Some(idem_key)) = (&job.idempotency, &idem_key) {
                watch(con, idem_key)?;
                let found: Option<String> = redis::cmd("GET").arg(idem_key).query(con)?;
                if let Some(id) = found {
                    let Some(existing) = self.load_job(con, &id)? else {
                        return Ok(Attempt::Inconsistent(self.malformed(
                            idem_key,
                            format!("the key names job {id}, which is not stored"),
                        )));
                    };
                    let same = existing.fingerprint.as_deref()
                        == Some(hex::encode(claim.fingerprint).as_str());
                    return Ok(Attempt::Done(if same {
                        Submit::Existing {
                            id,
                            state: existing.job.state,
                        }
                    } else {
                        Submit::FingerprintMismatch
                    }));
                }
            }
            let depth = self.depth(con)?;
            if depth >= u64::from(job.queue_capacity) {
                return Ok(Attempt::Done(Submit::QueueFull {
                    depth,
                    capacity: job.queue_capacity,
                }));
            }
            let key = keys.job(&job.id);
            watch(con, &key)?;
            let taken: bool = redis::cmd("EXISTS").arg(&key).query(con)?;
            if taken {
                // SQLite's unique id refuses it the same way: as a failure,
                // since ids are fresh per submission.
                return Err(self
                    .malformed(&key, format!("job {} is stored already", job.id))
                    .into());
            }
            // Numbers are taken outside the transaction: one wasted by a
            // retry is a gap, never a reuse.
            let num: i64 = redis::cmd("INCR").arg(keys.job_seq()).query(con)?;
            let max_attempts = job.max_attempts.max(1);
            let stored = StoredJob {
                job: Job {
                    id: job.id.clone(),
                    tenant: job.tenant.clone(),
                    state: JobState::Queued,
                    attempts: 0,
                    max_attempts,
                    last_error: None,
                    output: None,
                    charged_tokens: None,
                    idempotency_key: job.idempotency.as_ref().map(|c| c.key.clone()),
                    webhook: job.webhook.clone(),
                    created_ms: now,
                    updated_ms: now,
                    finished_ms: None,
                    run_after_ms: now,
                },
                num,
                prompt: job.prompt.clone(),
                max_tokens: job.max_tokens,
                fingerprint: job.idempotency.as_ref().map(|c| hex::encode(c.fingerprint)),
                lease_seq: 0,
                lease_owner: None,
                lease_expires_ms: None,
            };
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(&key)
                .arg("id")
                .arg(&job.id)
                .arg("tenant")
                .arg(&job.tenant)
                .arg("num")
                .arg(num)
                .arg("prompt")
                .arg(&job.prompt)
                .arg("max_tokens")
                .arg(job.max_tokens)
                .arg("max_attempts")
                .arg(max_attempts)
                .arg("created_ms")
                .arg(now)
                .ignore();
            for (field, value) in [
                ("idempotency_key", &stored.job.idempotency_key),
                ("fingerprint", &stored.fingerprint),
                ("webhook", &stored.job.webhook),
            ] {
                if let Some(value) = value {
                    pipe.cmd("HSET").arg(&key).arg(field).arg(value).ignore();
                }
            }
            self.stage_update(&mut pipe, JobState::Queued, &stored);
            self.index(&mut pipe, &stored);
            pipe.cmd("ZADD")
                .arg(keys.tenant_jobs(&job.tenant))
                .arg(num)
                .arg(&job.id)
                .ignore();
            if let Some(idem_key) = &idem_key {
                pipe.cmd("SET").arg(idem_key).arg(&job.id).ignore();
            }
            self.append_audit(
                con,
                &mut pipe,
                [entries::job_accepted(
                    &job.actor,
                    &job.id,
                    &job.tenant,
                    stored.job.idempotency_key.as_deref(),
                    job.max_tokens,
                    max_attempts,
                    job.prompt.len(),
                )],
                now,
            )?;
            Ok(Attempt::Commit(
                pipe,
                Submit::Accepted { id: job.id.clone() },
            ))
        })
    }

    /// Leases the oldest queued job whose time has come, for `lease_ms`, and
    /// counts the attempt, as [`crate::store::SqliteStore::lease_job`] does.
    /// `None` when nothing is ready.
    pub fn lease_job(
        &self,
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<LeasedJob>, StoreError> {
        let keys = self.keys().clone();
        let queued = keys.jobs_in(JobState::Queued);
        let _audit = self.audit_lock();
        self.optimistic("lease job", |con| {
            watch(con, &queued)?;
            let next: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&queued)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query(con)?;
            let Some(next) = next.first() else {
                return Ok(Attempt::Done(None));
            };
            let id = entry_id(next);
            let Some(mut job) = self
                .load_job(con, id)?
                .filter(|j| j.job.state == JobState::Queued && j.entry() == *next)
            else {
                return Ok(Attempt::Inconsistent(
                    self.malformed(&queued, format!("{next} is not a queued job")),
                ));
            };
            if job.job.run_after_ms > now {
                // Only a score beyond 2^53 rounds so; the hash is exact.
                return Ok(Attempt::Done(None));
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            job.job.state = JobState::Running;
            job.job.attempts += 1;
            job.lease_seq += 1;
            job.lease_owner = Some(worker.to_owned());
            job.lease_expires_ms = Some(now.saturating_add(lease_ms));
            job.job.updated_ms = now;
            self.stage_update(&mut pipe, JobState::Queued, &job);
            let leased = LeasedJob {
                id: job.job.id.clone(),
                tenant: job.job.tenant.clone(),
                prompt: job.prompt.clone(),
                max_tokens: job.max_tokens,
                attempt: job.job.attempts,
                max_attempts: job.job.max_attempts,
                lease: LeaseId(job.lease_seq),
                created_ms: job.job.created_ms,
            };
            self.append_audit(
                con,
                &mut pipe,
                [entries::job_leased(
                    worker,
                    &leased.id,
                    leased.attempt,
                    lease_ms,
                )],
                now,
            )?;
            Ok(Attempt::Commit(pipe, Some(leased)))
        })
    }

    /// Extends the lease to `now + lease_ms`, as
    /// [`crate::store::SqliteStore::heartbeat_job`] does. False when the
    /// lease is lost: the worker must stop, its work will not be accepted.
    pub fn heartbeat_job(
        &self,
        id: &str,
        lease: LeaseId,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let keys = self.keys().clone();
        self.optimistic("heartbeat job", |con| {
            let Some(job) = leased(self.load_job(con, id)?, lease) else {
                return Ok(Attempt::Done(false));
            };
            let expires = now.saturating_add(lease_ms);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(keys.job(id))
                .arg("lease_expires_ms")
                .arg(expires)
                .arg("updated_ms")
                .arg(now)
                .ignore()
                .cmd("ZADD")
                .arg(keys.jobs_in(JobState::Running))
                .arg("XX")
                .arg(expires)
                .arg(job.entry())
                .ignore();
            Ok(Attempt::Commit(pipe, true))
        })
    }

    /// Stores a successful attempt's output and charges its usage, as
    /// [`crate::store::SqliteStore::complete_job`] does, in one transaction
    /// with the `job.completed` and `budget.charged` entries and the job's
    /// webhook delivery. With a lost lease, releases the reservation and
    /// changes nothing else.
    pub fn complete_job(&self, done: &CompleteJob, now: i64) -> Result<Completion, StoreError> {
        let _audit = self.audit_lock();
        self.optimistic("complete job", |con| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let Some(mut job) = leased(self.load_job(con, &done.id)?, done.lease) else {
                return Ok(
                    match self.stage_release(con, &mut pipe, done.reservation, now)? {
                        Some(_) => Attempt::Commit(pipe, Completion::LeaseLost),
                        None => Attempt::Done(Completion::LeaseLost),
                    },
                );
            };
            watch(con, &self.keys().reservation(done.reservation.0))?;
            let Some(held) = self
                .load_reservation(con, done.reservation.0)?
                .filter(|r| r.held)
            else {
                return Err(self.unknown(done.reservation).into());
            };
            let charge = self.stage_charge(
                con,
                &mut pipe,
                done.reservation,
                &held,
                done.charge_tokens,
                now,
            )?;
            let attempts = job.job.attempts;
            job.job.state = JobState::Succeeded;
            job.job.output = Some(done.output.clone());
            job.job.charged_tokens = Some(charge.charged);
            job.lease_owner = None;
            job.lease_expires_ms = None;
            job.job.updated_ms = now;
            job.job.finished_ms = Some(now);
            self.stage_update(&mut pipe, JobState::Running, &job);
            self.stage_delivery(&mut pipe, &job.job, now);
            self.append_audit(
                con,
                &mut pipe,
                [
                    entries::job_completed(
                        &done.actor,
                        &done.id,
                        &job.job.tenant,
                        attempts,
                        charge.charged,
                    ),
                    entries::budget_charged(&done.actor, &held.tenant, &held.task_id, &charge),
                ],
                now,
            )?;
            Ok(Attempt::Commit(pipe, Completion::Succeeded(charge)))
        })
    }

    /// Records a failed attempt, as [`crate::store::SqliteStore::fail_job`]
    /// does: releases its reservation, then queues the job again at
    /// `retry_at_ms`, or, when the failure is not retryable or this was the
    /// last attempt, moves it to the dead-letter queue.
    pub fn fail_job(&self, failed: &FailJob, now: i64) -> Result<Failure, StoreError> {
        // A provider's error can quote the prompt; `last_error` is read by
        // other principals (DLQ listings), so it is stored redacted.
        let error = self.redactor().redact(&failed.error).into_owned();
        let _audit = self.audit_lock();
        self.optimistic("fail job", |con| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let released = match failed.reservation {
                Some(reservation) => self
                    .stage_release(con, &mut pipe, reservation, now)?
                    .is_some(),
                None => false,
            };
            let Some(mut job) = leased(self.load_job(con, &failed.id)?, failed.lease) else {
                return Ok(if released {
                    Attempt::Commit(pipe, Failure::LeaseLost)
                } else {
                    Attempt::Done(Failure::LeaseLost)
                });
            };
            let attempts = job.job.attempts;
            let outcome = match failed.retry_at_ms {
                Some(at) if attempts < job.job.max_attempts => {
                    self.requeue(&mut pipe, &mut job, Some(&error), at, now);
                    Failure::Retrying { at_ms: at }
                }
                _ => {
                    self.bury(&mut pipe, &mut job, &error, now);
                    Failure::Dead
                }
            };
            let retry_in_ms = match outcome {
                Failure::Retrying { at_ms } => Some(at_ms.saturating_sub(now)),
                _ => None,
            };
            self.append_audit(
                con,
                &mut pipe,
                [entries::job_failed(
                    &failed.actor,
                    &failed.id,
                    &job.job.tenant,
                    attempts,
                    &error,
                    retry_in_ms,
                    failed.retry_at_ms.is_some(),
                )],
                now,
            )?;
            Ok(Attempt::Commit(pipe, outcome))
        })
    }

    /// Gives a lease back without counting the attempt, as
    /// [`crate::store::SqliteStore::release_job`] does: the job is queued to
    /// run at once, and the reservation is released. False if the lease was
    /// already lost.
    pub fn release_job(
        &self,
        id: &str,
        lease: LeaseId,
        reservation: Option<ReservationId>,
        actor: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _audit = self.audit_lock();
        self.optimistic("release job", |con| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let released = match reservation {
                Some(reservation) => self
                    .stage_release(con, &mut pipe, reservation, now)?
                    .is_some(),
                None => false,
            };
            let Some(mut job) = leased(self.load_job(con, id)?, lease) else {
                return Ok(if released {
                    Attempt::Commit(pipe, false)
                } else {
                    Attempt::Done(false)
                });
            };
            job.job.attempts = job.job.attempts.saturating_sub(1);
            self.requeue(&mut pipe, &mut job, None, now, now);
            self.append_audit(con, &mut pipe, [entries::job_released(actor, id)], now)?;
            Ok(Attempt::Commit(pipe, true))
        })
    }

    /// Takes back every lease that expired by `now`, as
    /// [`crate::store::SqliteStore::reclaim_expired_jobs`] does: the job is
    /// queued to run at once, or, if that was its last attempt, moved to the
    /// dead-letter queue. At most `limit` jobs per call, all in one
    /// transaction. Any replica's reaper may run it: the expired leases are
    /// those of workers anywhere.
    pub fn reclaim_expired_jobs(&self, now: i64, limit: u32) -> Result<Vec<Reclaimed>, StoreError> {
        let keys = self.keys().clone();
        let running = keys.jobs_in(JobState::Running);
        let why = "lease expired: the worker crashed or stalled";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let _audit = self.audit_lock();
        self.optimistic("reclaim expired jobs", |con| {
            watch(con, &running)?;
            let expired: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&running)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(con)?;
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut out = Vec::with_capacity(expired.len());
            let mut entries = Vec::with_capacity(expired.len());
            for member in &expired {
                let Some(mut job) = self
                    .load_job(con, entry_id(member))?
                    .filter(|j| j.job.state == JobState::Running && j.entry() == *member)
                else {
                    return Ok(Attempt::Inconsistent(
                        self.malformed(&running, format!("{member} is not a running job")),
                    ));
                };
                if job.lease_expires_ms.is_none_or(|at| at > now) {
                    // Only a score beyond 2^53 rounds so; the hash is exact.
                    continue;
                }
                let attempts = job.job.attempts;
                let error = format!("attempt {attempts}: {why}");
                let now_state = if attempts >= job.job.max_attempts {
                    self.bury(&mut pipe, &mut job, &error, now);
                    JobState::Dead
                } else {
                    self.requeue(&mut pipe, &mut job, Some(&error), now, now);
                    JobState::Queued
                };
                entries.push(entries::job_reclaimed(
                    &job.job.id,
                    &job.job.tenant,
                    attempts,
                    &error,
                    now_state,
                ));
                out.push(Reclaimed {
                    id: job.job.id.clone(),
                    now: now_state,
                });
            }
            if out.is_empty() {
                return Ok(Attempt::Done(out));
            }
            self.append_audit(con, &mut pipe, entries, now)?;
            Ok(Attempt::Commit(pipe, out))
        })
    }

    /// A tenant's job.
    pub fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError> {
        let key = self.keys().job(id);
        let fields: Fields = self.with_connection("read job", |con| {
            Ok(redis::cmd("HGETALL").arg(&key).query(con)?)
        })?;
        if fields.is_empty() {
            return Ok(None);
        }
        let stored = self.parse_job(&key, &fields)?;
        Ok((stored.job.tenant == tenant).then_some(stored.job))
    }

    /// A tenant's job ids in submission order, optionally in one state, at
    /// most `limit` (capped at [`MAX_JOB_PAGE`]); with the tenant's counts by
    /// state. One `MULTI`, so ids and counts agree.
    pub fn list_jobs(
        &self,
        tenant: &str,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<(Vec<String>, JobCounts), StoreError> {
        let limit = limit.min(MAX_JOB_PAGE);
        let keys = self.keys();
        let listed = match state {
            Some(state) => keys.tenant_jobs_in(tenant, state),
            None => keys.tenant_jobs(tenant),
        };
        let (ids, q, r, s, d): (Vec<String>, u64, u64, u64, u64) =
            self.with_connection("list jobs", |con| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                if limit == 0 {
                    // `ZRANGE 0 -1` would be everything.
                    pipe.cmd("ZRANGE").arg(&listed).arg(1).arg(0);
                } else {
                    pipe.cmd("ZRANGE").arg(&listed).arg(0).arg(limit - 1);
                }
                for state in JobState::ALL {
                    pipe.cmd("ZCARD").arg(keys.tenant_jobs_in(tenant, state));
                }
                Ok(pipe.query(con)?)
            })?;
        Ok((
            ids,
            JobCounts {
                queued: q,
                running: r,
                succeeded: s,
                dead: d,
            },
        ))
    }

    /// A tenant's dead-letter queue, oldest death first, at most `limit`
    /// (capped at [`MAX_JOB_PAGE`]).
    pub fn dead_jobs(&self, tenant: &str, limit: u32) -> Result<Vec<Job>, StoreError> {
        let limit = limit.min(MAX_JOB_PAGE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let dlq = self.keys().dead_letters(tenant);
        self.optimistic("read dead-letter queue", |con| {
            watch(con, &dlq)?;
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(&dlq)
                .arg(0)
                .arg(limit - 1)
                .query(con)?;
            let mut jobs = Vec::with_capacity(members.len());
            for member in &members {
                match self.load_job(con, entry_id(member))? {
                    Some(job) if job.job.state == JobState::Dead && job.job.tenant == tenant => {
                        jobs.push(job.job);
                    }
                    _ => {
                        return Ok(Attempt::Inconsistent(self.malformed(
                            &dlq,
                            format!("{member} is not a dead job of {tenant}"),
                        )));
                    }
                }
            }
            Ok(snapshot(jobs))
        })
    }

    /// Queues a dead job again with its attempts reset (`job.replayed`,
    /// naming `actor`), as [`crate::store::SqliteStore::replay_job`] does.
    /// Refused when the queue is full.
    pub fn replay_job(
        &self,
        tenant: &str,
        id: &str,
        actor: &str,
        queue_capacity: u32,
        now: i64,
    ) -> Result<Replay, StoreError> {
        let _audit = self.audit_lock();
        self.optimistic("replay job", |con| {
            let Some(mut job) = self.load_job(con, id)?.filter(|j| j.job.tenant == tenant) else {
                return Ok(Attempt::Done(Replay::NotFound));
            };
            if job.job.state != JobState::Dead {
                return Ok(Attempt::Done(Replay::NotDead(job.job.state)));
            }
            let depth = self.depth(con)?;
            if depth >= u64::from(queue_capacity) {
                return Ok(Attempt::Done(Replay::QueueFull {
                    depth,
                    capacity: queue_capacity,
                }));
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            job.job.state = JobState::Queued;
            job.job.attempts = 0;
            job.job.run_after_ms = now;
            job.job.finished_ms = None;
            job.job.updated_ms = now;
            self.stage_update(&mut pipe, JobState::Dead, &job);
            self.append_audit(
                con,
                &mut pipe,
                [entries::job_replayed(actor, id, tenant)],
                now,
            )?;
            Ok(Attempt::Commit(pipe, Replay::Replayed))
        })
    }

    /// Every tenant's jobs by state, for metrics.
    pub fn job_counts(&self) -> Result<JobCounts, StoreError> {
        let keys = self.keys();
        let (q, r, s, d): (u64, u64, u64, u64) = self.with_connection("count jobs", |con| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for state in JobState::ALL {
                pipe.cmd("ZCARD").arg(keys.jobs_in(state));
            }
            Ok(pipe.query(con)?)
        })?;
        Ok(JobCounts {
            queued: q,
            running: r,
            succeeded: s,
            dead: d,
        })
    }

    /// The earliest time a queued job becomes ready, if any is queued: the
    /// exact `run_after_ms` of the queue's first job.
    pub fn next_job_due(&self) -> Result<Option<i64>, StoreError> {
        let queued = self.keys().jobs_in(JobState::Queued);
        self.optimistic("next job due", |con| {
            watch(con, &queued)?;
            let first: Vec<String> = redis::cmd("ZRANGE").arg(&queued).arg(0).arg(0).query(con)?;
            let Some(first) = first.first() else {
                return Ok(Attempt::Done(None));
            };
            match self.load_job(con, entry_id(first))? {
                Some(job) if job.job.state == JobState::Queued => {
                    Ok(snapshot(Some(job.job.run_after_ms)))
                }
                _ => Ok(Attempt::Inconsistent(
                    self.malformed(&queued, format!("{first} is not a queued job")),
                )),
            }
        })
    }

    /// Every charge of the store by task or job id, for invariant checks:
    /// (task or job id, number of charges, tokens).
    pub fn charges_by_task(&self) -> Result<BTreeMap<String, (u64, u64)>, StoreError> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for charge in self.ledger()? {
            let entry = out.entry(charge.task_id).or_default();
            entry.0 += 1;
            entry.1 += charge.tokens;
        }
        Ok(out)
    }
}
