//! A state-machine test of the durable job lifecycle against an in-memory
//! model, on the real SQLite store and on the Redis store (a real
//! `redis-server`): random sequences of submit (with
//! idempotency keys, fingerprint mismatches and a small queue capacity), lease,
//! heartbeat, complete (charging a budget small enough to run out), fail
//! (retryable or not), release, reclaim of expired leases, replay from the
//! dead-letter queue, the passing of time, and reopen (a restart: on SQLite
//! its crash recovery takes back every running job; on Redis, shared by live
//! replicas, it takes back nothing, and running jobs wait for their lease to
//! expire and the reaper).
//!
//! Every outcome is compared with the model's, and after every step so are
//! each job (state, attempts, last error, output, charge, times), the listings
//! and counts by state, the dead-letter queue in its order, the ledger (at
//! most one charge per job, that of the completion that won), the budget and
//! the audit chain (it verifies, and holds exactly one entry per change).
//!
//! Fencing is the heart of it: the model keeps every lease ever handed out,
//! and a worker may use any of them, so leases made stale by a reclaim, a
//! restart, a release or a later lease are used too, and must change nothing.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use orchestrator::config::BudgetConfig;
use orchestrator::store::{
    Begin, BeginTask, Charge, CompleteJob, Completion, FailJob, Failure, IdempotencyClaim, Job,
    JobCounts, JobState, LeaseId, LeasedJob, NewJob, Reclaimed, RedisStore, Replay, ReservationId,
    Store, StoreOptions, Submit, now_ms,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::Union;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use redis_support::RedisServer;

mod redis_support;

/// The tenant whose jobs these are.
const TENANT: &str = "alpha";
/// A tenant with no jobs: it must never see (or replay) `alpha`'s.
const STRANGER: &str = "beta";
const KEYS: [&str; 3] = ["k1", "k2", "k3"];
const WORKERS: [&str; 2] = ["worker-1", "worker-2"];
/// Small, so that submissions and replays find the queue full.
const QUEUE_CAPACITY: u32 = 4;
const LEASE_MS: i64 = 1_000;
/// `alpha`'s budget: small enough that sequences exhaust it, so that charges
/// are capped and reservations refused.
const LIMIT: u64 = 500;
const MAX_TOKENS: u32 = 100;
/// The test clock starts in 2100. Crash recovery at open is the one job
/// operation that reads the wall clock instead of taking `now`, so the times
/// it writes are always earlier than the test's: jobs it requeues are ready at
/// once, ahead of every job queued at a test time.
const START_MS: i64 = 4_102_444_800_000;
/// Larger than any listing here, so that listings are complete.
const PAGE: u32 = 1_000;

/// A time the store wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stamp {
    /// The wall-clock time of the crash recovery at the n-th reopen (from 1).
    /// The test makes the wall clock move between reopens, so later
    /// recoveries have later times; all are earlier than any `At`.
    Recovery(usize),
    /// A test-clock time.
    At(i64),
}

/// Why a job's last attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cause {
    /// The worker's error, stored as given.
    Worker(String),
    /// The lease was taken back (expired, or the process restarted) during
    /// this attempt; the store's message starts with `attempt N: `.
    Lost { attempt: u32 },
}

#[derive(Clone, Debug)]
struct ModelJob {
    key: Option<usize>,
    fingerprint: u8,
    state: JobState,
    attempts: u32,
    max_attempts: u32,
    /// The fencing token of the latest lease; 0 before the first.
    lease_seq: i64,
    /// Meaningful while running.
    lease_expires: i64,
    /// Meaningful while queued.
    run_after: Stamp,
    finished: Option<Stamp>,
    last_error: Option<Cause>,
    charged: Option<u64>,
    created: i64,
}

/// A lease as handed out; it stays in the model after it goes stale.
#[derive(Clone, Debug)]
struct ModelLease {
    job: usize,
    seq: i64,
    attempt: u32,
}

/// What the last transition should have returned.
#[derive(Clone, Debug, PartialEq)]
enum Expected {
    Nothing,
    Submit(Submit),
    Lease(Option<LeasedJob>),
    Heartbeat(bool),
    /// `None`: the budget refused the attempt's reservation, so there was
    /// nothing to complete with.
    Complete(Option<Completion>),
    Fail {
        reserved: bool,
        outcome: Failure,
    },
    Release {
        reserved: bool,
        released: bool,
    },
    Reclaim(Vec<Reclaimed>),
    Replay(Replay),
    Recovery {
        requeued: u64,
        dead: u64,
    },
}

/// A worker's choice of lease: among the live ones (if any) or among all
/// ever handed out, which are mostly stale.
#[derive(Clone, Debug)]
struct LeaseRef {
    which: Index,
    live: bool,
}

/// An operator's choice of job to replay: among the dead ones (if any) or
/// among all.
#[derive(Clone, Debug)]
struct JobRef {
    which: Index,
    dead: bool,
}

#[derive(Clone, Debug)]
enum Transition {
    Submit {
        key: Option<usize>,
        fingerprint: u8,
        /// 0 is stored as 1.
        max_attempts: u32,
    },
    Lease {
        worker: usize,
    },
    Heartbeat {
        lease: LeaseRef,
    },
    AdvanceTime {
        ms: i64,
    },
    Reclaim {
        limit: u32,
    },
    Complete {
        lease: LeaseRef,
        reserve: u64,
        tokens: u64,
    },
    Fail {
        lease: LeaseRef,
        reserve: u64,
        retry_in_ms: Option<i64>,
    },
    Release {
        lease: LeaseRef,
        reserve: u64,
    },
    Replay {
        job: JobRef,
        as_stranger: bool,
    },
    Reopen,
}

#[derive(Clone, Debug)]
struct Model {
    now: i64,
    jobs: Vec<ModelJob>,
    leases: Vec<ModelLease>,
    /// `alpha`'s used tokens. Nothing stays reserved between steps: every
    /// attempt settles its reservation in the step that made it.
    used: u64,
    reopens: usize,
    /// Audit entries written so far.
    audit: u64,
    /// The lease or job the last transition chose, resolved against the state
    /// before it (the system under test only sees the state after).
    picked: usize,
    expected: Expected,
}

fn job_id(index: usize) -> String {
    format!("job-{index}")
}

fn prompt(id: &str) -> String {
    format!("prompt of {id}")
}

fn output(id: &str) -> String {
    format!("{{\"answer\":\"{id}\"}}")
}

fn worker_error(id: &str, attempt: u32) -> String {
    format!("attempt {attempt} of {id} failed")
}

impl Model {
    fn valid(&self, lease: &ModelLease) -> bool {
        let job = &self.jobs[lease.job];
        job.state == JobState::Running && job.lease_seq == lease.seq
    }

    fn resolve(&self, lease: &LeaseRef) -> usize {
        let live: Vec<usize> = (0..self.leases.len())
            .filter(|&l| self.valid(&self.leases[l]))
            .collect();
        if lease.live && !live.is_empty() {
            live[lease.which.index(live.len())]
        } else {
            lease.which.index(self.leases.len())
        }
    }

    fn resolve_job(&self, job: &JobRef) -> usize {
        let dead: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.jobs[i].state == JobState::Dead)
            .collect();
        if job.dead && !dead.is_empty() {
            dead[job.which.index(dead.len())]
        } else {
            job.which.index(self.jobs.len())
        }
    }

    /// Whether a running job's lease has expired.
    fn expired(&self) -> bool {
        self.jobs
            .iter()
            .any(|j| j.state == JobState::Running && j.lease_expires <= self.now)
    }

    /// Queued and running jobs: what counts against the capacity.
    fn depth(&self) -> u64 {
        self.jobs
            .iter()
            .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
            .count() as u64
    }

    fn counts(&self) -> JobCounts {
        let count = |state| self.jobs.iter().filter(|j| j.state == state).count() as u64;
        JobCounts {
            queued: count(JobState::Queued),
            running: count(JobState::Running),
            succeeded: count(JobState::Succeeded),
            dead: count(JobState::Dead),
        }
    }

    /// Whether an attempt's reservation of `reserve` tokens fits the budget.
    fn fits(&self, reserve: u64) -> bool {
        reserve <= LIMIT - self.used
    }

    fn submit(&mut self, key: Option<usize>, fingerprint: u8, max_attempts: u32) -> Submit {
        // The key is looked up first: a replayed or mismatched submission is
        // answered even when the queue is full.
        if let Some(key) = key
            && let Some(index) = self.jobs.iter().position(|j| j.key == Some(key))
        {
            let job = &self.jobs[index];
            return if job.fingerprint == fingerprint {
                Submit::Existing {
                    id: job_id(index),
                    state: job.state,
                }
            } else {
                Submit::FingerprintMismatch
            };
        }
        let depth = self.depth();
        if depth >= u64::from(QUEUE_CAPACITY) {
            return Submit::QueueFull {
                depth,
                capacity: QUEUE_CAPACITY,
            };
        }
        self.jobs.push(ModelJob {
            key,
            fingerprint,
            state: JobState::Queued,
            attempts: 0,
            max_attempts: max_attempts.max(1),
            lease_seq: 0,
            lease_expires: 0,
            run_after: Stamp::At(self.now),
            finished: None,
            last_error: None,
            charged: None,
            created: self.now,
        });
        self.audit += 1;
        Submit::Accepted {
            id: job_id(self.jobs.len() - 1),
        }
    }

    fn lease(&mut self) -> Option<LeasedJob> {
        // The oldest ready job by (run_after, submission order).
        let now = Stamp::At(self.now);
        let index = (0..self.jobs.len())
            .filter(|&i| self.jobs[i].state == JobState::Queued && self.jobs[i].run_after <= now)
            .min_by_key(|&i| (self.jobs[i].run_after, i))?;
        let job = &mut self.jobs[index];
        job.state = JobState::Running;
        job.attempts += 1;
        job.lease_seq += 1;
        job.lease_expires = self.now + LEASE_MS;
        self.leases.push(ModelLease {
            job: index,
            seq: job.lease_seq,
            attempt: job.attempts,
        });
        self.audit += 1;
        let id = job_id(index);
        Some(LeasedJob {
            prompt: prompt(&id),
            id,
            tenant: TENANT.to_owned(),
            max_tokens: MAX_TOKENS,
            attempt: job.attempts,
            max_attempts: job.max_attempts,
            lease: LeaseId(job.lease_seq),
            created_ms: job.created,
        })
    }

    /// A lease taken back from a worker: the attempt stays counted; on the
    /// last attempt the job dies.
    fn take_back(&mut self, index: usize, at: Stamp) -> JobState {
        let job = &mut self.jobs[index];
        job.last_error = Some(Cause::Lost {
            attempt: job.attempts,
        });
        if job.attempts >= job.max_attempts {
            job.state = JobState::Dead;
            job.finished = Some(at);
        } else {
            job.state = JobState::Queued;
            job.run_after = at;
        }
        self.audit += 1;
        job.state
    }

    fn reclaim(&mut self, limit: u32) -> Vec<Reclaimed> {
        let mut expired: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| {
                self.jobs[i].state == JobState::Running && self.jobs[i].lease_expires <= self.now
            })
            .collect();
        // The store orders by expiry alone; among equal expiries SQLite
        // walks its index on lease_expires_ms, whose ties are in rowid
        // (submission) order.
        expired.sort_by_key(|&i| (self.jobs[i].lease_expires, i));
        expired.truncate(limit as usize);
        expired
            .into_iter()
            .map(|index| Reclaimed {
                id: job_id(index),
                now: self.take_back(index, Stamp::At(self.now)),
            })
            .collect()
    }

    fn complete(&mut self, lease: usize, reserve: u64, tokens: u64) -> Option<Completion> {
        if !self.fits(reserve) {
            return None;
        }
        let lease = self.leases[lease].clone();
        if !self.valid(&lease) {
            // The reservation is released: nothing is charged.
            return Some(Completion::LeaseLost);
        }
        // The attempt's own reservation is returned before charging, so the
        // headroom is all that is left of the budget.
        let charged = tokens.min(LIMIT - self.used);
        self.used += charged;
        let job = &mut self.jobs[lease.job];
        job.state = JobState::Succeeded;
        job.charged = Some(charged);
        job.finished = Some(Stamp::At(self.now));
        // job.completed and budget.charged.
        self.audit += 2;
        Some(Completion::Succeeded(Charge {
            charged,
            overage: tokens - charged,
            remaining: LIMIT - self.used,
        }))
    }

    fn fail(&mut self, lease: usize, retry_in_ms: Option<i64>) -> Failure {
        let lease = self.leases[lease].clone();
        if !self.valid(&lease) {
            return Failure::LeaseLost;
        }
        let now = self.now;
        let job = &mut self.jobs[lease.job];
        job.last_error = Some(Cause::Worker(worker_error(
            &job_id(lease.job),
            lease.attempt,
        )));
        self.audit += 1;
        match retry_in_ms {
            Some(delay) if job.attempts < job.max_attempts => {
                job.state = JobState::Queued;
                job.run_after = Stamp::At(now + delay);
                Failure::Retrying { at_ms: now + delay }
            }
            _ => {
                job.state = JobState::Dead;
                job.finished = Some(Stamp::At(now));
                Failure::Dead
            }
        }
    }

    fn release(&mut self, lease: usize) -> bool {
        let lease = self.leases[lease].clone();
        if !self.valid(&lease) {
            return false;
        }
        // Queued to run at once, the attempt not counted, the last error kept.
        let job = &mut self.jobs[lease.job];
        job.state = JobState::Queued;
        job.run_after = Stamp::At(self.now);
        job.attempts = job.attempts.saturating_sub(1);
        self.audit += 1;
        true
    }

    fn replay(&mut self, index: usize, as_stranger: bool) -> Replay {
        if as_stranger {
            return Replay::NotFound;
        }
        if self.jobs[index].state != JobState::Dead {
            return Replay::NotDead(self.jobs[index].state);
        }
        let depth = self.depth();
        if depth >= u64::from(QUEUE_CAPACITY) {
            return Replay::QueueFull {
                depth,
                capacity: QUEUE_CAPACITY,
            };
        }
        let job = &mut self.jobs[index];
        job.state = JobState::Queued;
        job.attempts = 0;
        job.run_after = Stamp::At(self.now);
        job.finished = None;
        self.audit += 1;
        Replay::Replayed
    }

    /// A restart. SQLite's open takes back every running job, since one
    /// process owns the file and the previous one is gone. Redis's does not:
    /// other replicas are alive and their workers hold leases, so running
    /// jobs stay running, their leases valid, until they expire and a reaper
    /// reclaims them (the `Reclaim` step), as with a worker that stalled.
    fn reopen(&mut self, reclaims_at_open: bool) -> Expected {
        self.reopens += 1;
        if !reclaims_at_open {
            return Expected::Recovery {
                requeued: 0,
                dead: 0,
            };
        }
        let at = Stamp::Recovery(self.reopens);
        let (mut requeued, mut dead) = (0, 0);
        for index in 0..self.jobs.len() {
            if self.jobs[index].state == JobState::Running {
                match self.take_back(index, at) {
                    JobState::Dead => dead += 1,
                    _ => requeued += 1,
                }
            }
        }
        Expected::Recovery { requeued, dead }
    }
}

/// The model and the test on one backend.
struct JobsMachine<W>(PhantomData<W>);

fn lease_ref() -> impl Strategy<Value = LeaseRef> {
    (any::<Index>(), proptest::bool::weighted(0.85))
        .prop_map(|(which, live)| LeaseRef { which, live })
}

impl<W: Which> ReferenceStateMachine for JobsMachine<W> {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            now: START_MS,
            jobs: Vec::new(),
            leases: Vec::new(),
            used: 0,
            reopens: 0,
            audit: 0,
            picked: 0,
            expected: Expected::Nothing,
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        let mut choices: Vec<(u32, BoxedStrategy<Transition>)> = vec![
            (
                4,
                (
                    proptest::option::weighted(0.6, 0..KEYS.len()),
                    0..2u8,
                    0..=3u32,
                )
                    .prop_map(|(key, fingerprint, max_attempts)| Transition::Submit {
                        key,
                        fingerprint,
                        max_attempts,
                    })
                    .boxed(),
            ),
            (
                5,
                (0..WORKERS.len())
                    .prop_map(|worker| Transition::Lease { worker })
                    .boxed(),
            ),
            // Up to 2.5 leases long: leases often expire between steps.
            (
                3,
                (1..=2_500i64)
                    .prop_map(|ms| Transition::AdvanceTime { ms })
                    .boxed(),
            ),
            // Reclaiming matters once a lease has expired: then do it often.
            (
                if state.expired() { 6 } else { 1 },
                prop::sample::select(vec![1u32, 2, 100])
                    .prop_map(|limit| Transition::Reclaim { limit })
                    .boxed(),
            ),
            (1, Just(Transition::Reopen).boxed()),
        ];
        if !state.leases.is_empty() {
            // Reservations and charges range past the budget's headroom
            // once some of it is used, so refusals and overage happen.
            choices.extend([
                (
                    2,
                    lease_ref()
                        .prop_map(|lease| Transition::Heartbeat { lease })
                        .boxed(),
                ),
                (
                    3,
                    (lease_ref(), 0..200u64, 0..400u64)
                        .prop_map(|(lease, reserve, tokens)| Transition::Complete {
                            lease,
                            reserve,
                            tokens,
                        })
                        .boxed(),
                ),
                (
                    3,
                    (
                        lease_ref(),
                        0..200u64,
                        proptest::option::weighted(0.7, 0..2_000i64),
                    )
                        .prop_map(|(lease, reserve, retry_in_ms)| Transition::Fail {
                            lease,
                            reserve,
                            retry_in_ms,
                        })
                        .boxed(),
                ),
                (
                    1,
                    (lease_ref(), 0..200u64)
                        .prop_map(|(lease, reserve)| Transition::Release { lease, reserve })
                        .boxed(),
                ),
            ]);
        }
        if !state.jobs.is_empty() {
            let dead = state.jobs.iter().any(|j| j.state == JobState::Dead);
            choices.push((
                if dead { 3 } else { 1 },
                (
                    any::<Index>(),
                    proptest::bool::weighted(0.8),
                    proptest::bool::weighted(0.1),
                )
                    .prop_map(|(which, dead, as_stranger)| Transition::Replay {
                        job: JobRef { which, dead },
                        as_stranger,
                    })
                    .boxed(),
            ));
        }
        Union::new_weighted(choices).boxed()
    }

    fn preconditions(state: &Model, transition: &Transition) -> bool {
        // Shrinking may drop the submissions and leases a step refers to.
        match transition {
            Transition::Heartbeat { .. }
            | Transition::Complete { .. }
            | Transition::Fail { .. }
            | Transition::Release { .. } => !state.leases.is_empty(),
            Transition::Replay { .. } => !state.jobs.is_empty(),
            _ => true,
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        state.expected = match transition {
            Transition::Submit {
                key,
                fingerprint,
                max_attempts,
            } => Expected::Submit(state.submit(*key, *fingerprint, *max_attempts)),
            Transition::Lease { .. } => Expected::Lease(state.lease()),
            Transition::Heartbeat { lease } => {
                state.picked = state.resolve(lease);
                let lease = state.leases[state.picked].clone();
                let valid = state.valid(&lease);
                if valid {
                    state.jobs[lease.job].lease_expires = state.now + LEASE_MS;
                }
                Expected::Heartbeat(valid)
            }
            Transition::AdvanceTime { ms } => {
                state.now += ms;
                Expected::Nothing
            }
            Transition::Reclaim { limit } => Expected::Reclaim(state.reclaim(*limit)),
            Transition::Complete {
                lease,
                reserve,
                tokens,
            } => {
                state.picked = state.resolve(lease);
                Expected::Complete(state.complete(state.picked, *reserve, *tokens))
            }
            Transition::Fail {
                lease,
                reserve,
                retry_in_ms,
            } => {
                state.picked = state.resolve(lease);
                Expected::Fail {
                    reserved: state.fits(*reserve),
                    outcome: state.fail(state.picked, *retry_in_ms),
                }
            }
            Transition::Release { lease, reserve } => {
                state.picked = state.resolve(lease);
                Expected::Release {
                    reserved: state.fits(*reserve),
                    released: state.release(state.picked),
                }
            }
            Transition::Replay { job, as_stranger } => {
                state.picked = state.resolve_job(job);
                Expected::Replay(state.replay(state.picked, *as_stranger))
            }
            Transition::Reopen => state.reopen(W::RECLAIMS_AT_OPEN),
        };
        state
    }
}

/// Where the store under test keeps its state.
enum Backend {
    /// A fresh temporary SQLite file.
    Sqlite { dir: PathBuf },
    /// A fresh key prefix on the test binary's one Redis server.
    Redis { url: String, prefix: String },
}

impl Backend {
    fn open(&self) -> Store {
        match self {
            Backend::Sqlite { dir } => {
                Store::open(&dir.join("jobs.db"), &options()).expect("open the sqlite store")
            }
            Backend::Redis { url, prefix } => Store::Redis(
                RedisStore::open(url, prefix, &options()).expect("open the redis store"),
            ),
        }
    }
}

/// Which backend a machine tests.
trait Which: 'static {
    /// Whether opening the store takes back every running job.
    const RECLAIMS_AT_OPEN: bool;
    fn backend(case: u64) -> Option<Backend>;
}

/// The SQLite store.
struct Sqlite;

impl Which for Sqlite {
    const RECLAIMS_AT_OPEN: bool = true;
    fn backend(case: u64) -> Option<Backend> {
        let dir =
            std::env::temp_dir().join(format!("orch-jobs-model-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Some(Backend::Sqlite { dir })
    }
}

/// The Redis store, on a real `redis-server`.
struct Redis;

impl Which for Redis {
    const RECLAIMS_AT_OPEN: bool = false;
    fn backend(case: u64) -> Option<Backend> {
        static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
        let server = SERVER.get_or_init(RedisServer::start).as_ref()?;
        Some(Backend::Redis {
            url: server.url(),
            prefix: format!("jobs-{case}"),
        })
    }
}

/// The store under test.
struct Sut {
    backend: Backend,
    store: Option<Store>,
    /// Jobs accepted: the next job's id is `job-{accepted}`.
    accepted: usize,
    /// Every lease handed out, in the order the model numbers them.
    leases: Vec<LeasedJob>,
    /// The wall-clock bounds of each reopen, around the recovery's own clock.
    recoveries: Vec<(i64, i64)>,
}

impl Sut {
    fn store(&self) -> &Store {
        self.store
            .as_ref()
            .expect("the store is open between steps")
    }

    /// Whether the store wrote `actual` at the model's `stamp`.
    fn at(&self, stamp: Stamp, actual: i64) -> bool {
        match stamp {
            Stamp::At(t) => actual == t,
            Stamp::Recovery(n) => {
                let (from, to) = self.recoveries[n - 1];
                (from..=to).contains(&actual)
            }
        }
    }

    /// Reserves `reserve` tokens for an attempt of `id`, as a worker does
    /// before calling the provider; `None` when the budget refuses.
    fn reserve(&self, id: &str, reserve: u64) -> Option<ReservationId> {
        let begin = self
            .store()
            .begin_task(&BeginTask {
                tenant: TENANT.to_owned(),
                task_id: id.to_owned(),
                idempotency: None,
                reserve_tokens: reserve,
            })
            .expect("begin_task");
        match begin {
            Begin::Started { reservation } => Some(reservation),
            Begin::InsufficientBudget { .. } => None,
            other => panic!("begin_task without a key answered {other:?}"),
        }
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        self.store = None;
        if let Backend::Sqlite { dir } = &self.backend {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn options() -> StoreOptions {
    let mut options = StoreOptions::new(BudgetConfig {
        default_limit_tokens: 0,
        tenants: BTreeMap::from([(TENANT.to_owned(), LIMIT)]),
    });
    // Redis only: no liveness thread acts during a case; a restart is the
    // drop of the old store (which says it is gone) and the open of a new
    // one.
    options.instance_ttl = Duration::from_secs(3600);
    options
}

impl<W: Which> StateMachineTest for JobsMachine<W> {
    type SystemUnderTest = Sut;
    type Reference = JobsMachine<W>;

    fn init_test(_model: &Model) -> Sut {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let backend = W::backend(NEXT.fetch_add(1, Ordering::Relaxed))
            .expect("a backend (the redis test returns early without a server)");
        let mut sut = Sut {
            backend,
            store: None,
            accepted: 0,
            leases: Vec::new(),
            recoveries: Vec::new(),
        };
        sut.store = Some(sut.backend.open());
        sut
    }

    fn apply(mut sut: Sut, model: &Model, transition: Transition) -> Sut {
        let now = model.now;
        let actual = match transition {
            Transition::Submit {
                key,
                fingerprint,
                max_attempts,
            } => {
                let id = job_id(sut.accepted);
                let outcome = sut
                    .store()
                    .submit_job(
                        &NewJob {
                            prompt: prompt(&id),
                            id,
                            tenant: TENANT.to_owned(),
                            actor: "key-1".to_owned(),
                            idempotency: key.map(|k| IdempotencyClaim {
                                key: KEYS[k].to_owned(),
                                fingerprint: [fingerprint; 32],
                            }),
                            max_tokens: MAX_TOKENS,
                            webhook: None,
                            max_attempts,
                            queue_capacity: QUEUE_CAPACITY,
                        },
                        now,
                    )
                    .expect("submit_job");
                if matches!(outcome, Submit::Accepted { .. }) {
                    sut.accepted += 1;
                }
                Expected::Submit(outcome)
            }
            Transition::Lease { worker } => {
                let leased = sut
                    .store()
                    .lease_job(WORKERS[worker], now, LEASE_MS)
                    .expect("lease_job");
                sut.leases.extend(leased.clone());
                Expected::Lease(leased)
            }
            Transition::Heartbeat { .. } => {
                let lease = &sut.leases[model.picked];
                Expected::Heartbeat(
                    sut.store()
                        .heartbeat_job(&lease.id, lease.lease, now, LEASE_MS)
                        .expect("heartbeat_job"),
                )
            }
            Transition::AdvanceTime { .. } => Expected::Nothing,
            Transition::Reclaim { limit } => Expected::Reclaim(
                sut.store()
                    .reclaim_expired_jobs(now, limit)
                    .expect("reclaim_expired_jobs"),
            ),
            Transition::Complete {
                reserve, tokens, ..
            } => {
                let lease = &sut.leases[model.picked];
                // A worker that cannot reserve never calls the provider, so
                // has nothing to complete.
                let outcome = sut.reserve(&lease.id, reserve).map(|reservation| {
                    sut.store()
                        .complete_job(
                            &CompleteJob {
                                id: lease.id.clone(),
                                lease: lease.lease,
                                reservation,
                                charge_tokens: tokens,
                                output: output(&lease.id),
                                actor: "worker".to_owned(),
                            },
                            now,
                        )
                        .expect("complete_job")
                });
                Expected::Complete(outcome)
            }
            Transition::Fail {
                reserve,
                retry_in_ms,
                ..
            } => {
                let lease = &sut.leases[model.picked];
                let reservation = sut.reserve(&lease.id, reserve);
                let outcome = sut
                    .store()
                    .fail_job(
                        &FailJob {
                            id: lease.id.clone(),
                            lease: lease.lease,
                            reservation,
                            error: worker_error(&lease.id, lease.attempt),
                            retry_at_ms: retry_in_ms.map(|delay| now + delay),
                            actor: "worker".to_owned(),
                        },
                        now,
                    )
                    .expect("fail_job");
                Expected::Fail {
                    reserved: reservation.is_some(),
                    outcome,
                }
            }
            Transition::Release { reserve, .. } => {
                let lease = &sut.leases[model.picked];
                let reservation = sut.reserve(&lease.id, reserve);
                let released = sut
                    .store()
                    .release_job(&lease.id, lease.lease, reservation, "worker", now)
                    .expect("release_job");
                Expected::Release {
                    reserved: reservation.is_some(),
                    released,
                }
            }
            Transition::Replay { as_stranger, .. } => {
                let tenant = if as_stranger { STRANGER } else { TENANT };
                Expected::Replay(
                    sut.store()
                        .replay_job(tenant, &job_id(model.picked), "admin", QUEUE_CAPACITY, now)
                        .expect("replay_job"),
                )
            }
            Transition::Reopen => {
                sut.store = None;
                // Recovery stamps its changes with the wall clock, at ms
                // resolution: make it move on from the previous reopen, so
                // that jobs requeued by different recoveries are ordered.
                let previous = sut.recoveries.last().map_or(0, |r| r.1);
                while now_ms() <= previous {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let from = now_ms();
                let store = sut.backend.open();
                sut.recoveries.push((from, now_ms()));
                let recovery = store.recovery();
                sut.store = Some(store);
                // Every attempt settled its reservation in its own step.
                assert_eq!(recovery.released_reservations, 0, "{recovery:?}");
                Expected::Recovery {
                    requeued: recovery.requeued_jobs,
                    dead: recovery.dead_jobs,
                }
            }
        };
        assert_eq!(actual, model.expected, "the outcome of the step");
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let store = sut.store();
        for (index, expected) in model.jobs.iter().enumerate() {
            let id = job_id(index);
            let job: Job = store
                .job(TENANT, &id)
                .expect("job")
                .unwrap_or_else(|| panic!("{id} is stored"));
            let context = format!("{id}: model {expected:?}, store {job:?}");
            assert_eq!(job.state, expected.state, "state of {context}");
            assert_eq!(job.attempts, expected.attempts, "attempts of {context}");
            assert_eq!(job.max_attempts, expected.max_attempts, "{context}");
            assert_eq!(job.tenant, TENANT, "{context}");
            assert_eq!(
                job.idempotency_key.as_deref(),
                expected.key.map(|k| KEYS[k]),
                "{context}"
            );
            assert_eq!(job.created_ms, expected.created, "{context}");
            match &expected.last_error {
                None => assert_eq!(job.last_error, None, "last error of {context}"),
                Some(Cause::Worker(error)) => {
                    assert_eq!(job.last_error.as_ref(), Some(error), "{context}");
                }
                Some(Cause::Lost { attempt }) => assert!(
                    job.last_error
                        .as_ref()
                        .is_some_and(|e| e.starts_with(&format!("attempt {attempt}: "))),
                    "last error of {context}"
                ),
            }
            // Output and charge belong to the one completion that won.
            let succeeded = expected.state == JobState::Succeeded;
            assert_eq!(job.output, succeeded.then(|| output(&id)), "{context}");
            assert_eq!(job.charged_tokens, expected.charged, "{context}");
            match expected.finished {
                Some(stamp) => assert!(
                    job.finished_ms.is_some_and(|t| sut.at(stamp, t)),
                    "finished time of {context}"
                ),
                None => assert_eq!(job.finished_ms, None, "{context}"),
            }
            if expected.state == JobState::Queued {
                assert!(
                    sut.at(expected.run_after, job.run_after_ms),
                    "run-after time of {context}"
                );
            }
            // Jobs are scoped to their tenant.
            assert_eq!(store.job(STRANGER, &id).expect("job"), None, "{id}");
        }

        let counts = model.counts();
        let all: Vec<String> = (0..model.jobs.len()).map(job_id).collect();
        assert_eq!(
            store.list_jobs(TENANT, None, PAGE).expect("list_jobs"),
            (all, counts.clone()),
            "listing"
        );
        for state in JobState::ALL {
            let ids: Vec<String> = (0..model.jobs.len())
                .filter(|&i| model.jobs[i].state == state)
                .map(job_id)
                .collect();
            let (listed, _) = store
                .list_jobs(TENANT, Some(state), PAGE)
                .expect("list_jobs");
            assert_eq!(listed, ids, "{state} jobs");
        }
        assert_eq!(store.job_counts().expect("job_counts"), counts);
        assert_eq!(
            store.list_jobs(STRANGER, None, PAGE).expect("list_jobs"),
            (Vec::new(), JobCounts::default())
        );

        // The dead-letter queue, oldest death first.
        let mut dead: Vec<(Stamp, usize)> = (0..model.jobs.len())
            .filter(|&i| model.jobs[i].state == JobState::Dead)
            .map(|i| (model.jobs[i].finished.expect("a dead job has died"), i))
            .collect();
        dead.sort();
        let dead: Vec<String> = dead.into_iter().map(|(_, i)| job_id(i)).collect();
        let queue: Vec<String> = store
            .dead_jobs(TENANT, PAGE)
            .expect("dead_jobs")
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(queue, dead, "dead-letter queue");
        assert!(
            store
                .dead_jobs(STRANGER, PAGE)
                .expect("dead_jobs")
                .is_empty()
        );

        // The earliest time a queued job becomes ready.
        let due = (0..model.jobs.len())
            .filter(|&i| model.jobs[i].state == JobState::Queued)
            .map(|i| model.jobs[i].run_after)
            .min();
        let next = store.next_job_due().expect("next_job_due");
        match due {
            Some(stamp) => assert!(
                next.is_some_and(|t| sut.at(stamp, t)),
                "next due {next:?}, model {stamp:?}"
            ),
            None => assert_eq!(next, None),
        }

        // At most one charge per job: that of its completion.
        let charges: BTreeMap<String, (u64, u64)> = (0..model.jobs.len())
            .filter_map(|i| model.jobs[i].charged.map(|c| (job_id(i), (1, c))))
            .collect();
        assert_eq!(store.charges_by_task().expect("charges"), charges, "ledger");
        let budget = store.budget(TENANT).expect("budget");
        assert_eq!(
            (
                budget.limit_tokens,
                budget.used_tokens,
                budget.reserved_tokens
            ),
            (LIMIT, model.used, 0),
            "budget"
        );

        let audit = store.verify_audit().expect("verify_audit");
        assert!(audit.ok, "{audit:?}");
        assert_eq!(audit.entries, model.audit, "one audit entry per change");
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn jobs_match_the_model(sequential 1..40 => JobsMachine<Sqlite>);
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    fn redis_cases(sequential 1..40 => JobsMachine<Redis>);
}

/// The same model on Redis: every promise of the SQLite store holds there
/// too (fencing, one charge per job, the dead-letter queue, listings, the
/// audit chain), but for a restart, which takes back no lease.
#[test]
fn redis_jobs_match_the_model() {
    if Redis::backend(u64::MAX).is_none() {
        return;
    }
    redis_cases();
}
