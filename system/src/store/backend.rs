//! The store interface: one type with the same operations over either
//! backend, chosen by `storage` in the configuration.
//!
//! An enum rather than a trait object: the set of backends is closed, every
//! operation is one `match`, and a backend that lacks an operation shows here,
//! in one list, rather than in a default method somewhere.

use std::collections::BTreeMap;
use std::future::Future;

use super::redis_store::RedisStore;
use super::{
    AuditEntry, Begin, BeginTask, BudgetSnapshot, Charge, ChargeRecord, CompleteJob, Completion,
    Delivery, DeliveryOutcome, DeliveryState, FailJob, Failure, FinishTask, Issue, Job, JobCounts,
    KeyRecord, LeaseId, LeasedJob, NewJob, NewKey, Reclaimed, Recovery, Replay, ReservationId,
    Revocation, Rotation, SqliteStore, StoreError, Submit,
};
use crate::audit::{NewEntry, Verification};

/// The orchestrator's durable state. Clones share one backend (one SQLite
/// connection, or one pool of Redis connections).
#[derive(Clone, Debug)]
pub enum Store {
    /// One SQLite file, owned by one process (the embedded default).
    Sqlite(SqliteStore),
    /// A Redis server, shared by several replicas.
    Redis(RedisStore),
}

/// Operations both backends hold, delegated as they are.
macro_rules! both {
    ($( $(#[$meta:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        $(
            $(#[$meta])*
            pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                match self {
                    Store::Sqlite(s) => s.$name($($arg),*),
                    Store::Redis(r) => r.$name($($arg),*),
                }
            }
        )*
    };
}

/// Operations only SQLite holds so far: on Redis they fail with
/// [`StoreError::Unsupported`], which the routes answer with 503.
macro_rules! sqlite_only {
    ($( $(#[$meta:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        $(
            $(#[$meta])*
            pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                match self {
                    Store::Sqlite(s) => s.$name($($arg),*),
                    Store::Redis(r) => Err(r.unsupported(stringify!($name))),
                }
            }
        )*
    };
}

impl Store {
    /// Opens the SQLite store at `path` ([`SqliteStore::open`]).
    pub fn open(
        path: &std::path::Path,
        options: &super::StoreOptions,
    ) -> Result<Store, StoreError> {
        SqliteStore::open(path, options).map(Store::Sqlite)
    }

    /// Runs `work` with this store on tokio's blocking pool, so that SQLite
    /// I/O, busy retries and Redis round trips never stall an async worker:
    /// `store.run(move |s| s.begin_task(&begin)).await`.
    ///
    /// If `work` panics, the error is [`StoreError::Task`]; the store stays
    /// usable (an open SQLite transaction is rolled back when dropped, a Redis
    /// connection in doubt is not returned to the pool).
    ///
    /// The future owns a clone of the store, so it may be spawned.
    pub fn run<T, F>(&self, work: F) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        async move {
            let described = store.describe();
            tokio::task::spawn_blocking(move || work(&store))
                .await
                .map_err(|error| StoreError::Task {
                    store: described,
                    message: error.to_string(),
                })?
        }
    }

    /// What a log line names: `database PATH` or `redis URL`.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(s) => format!("database {}", s.path().display()),
            Store::Redis(r) => format!("redis {}", r.url()),
        }
    }

    both! {
        /// What open cleaned up after previous processes.
        fn recovery(&self) -> Recovery;
        /// How many times an operation was retried on contention since open.
        fn busy_retries(&self) -> u64;
        /// A cheap read, for readiness.
        fn probe(&self) -> Result<(), StoreError>;
        /// Whether writes go through, for readiness.
        fn probe_writes(&self) -> Result<(), StoreError>;
        /// Starts a task: see [`SqliteStore::begin_task`].
        fn begin_task(&self, request: &BeginTask) -> Result<Begin, StoreError>;
        /// Settles a reservation with a charge: see [`SqliteStore::finish_task`].
        fn finish_task(&self, finish: &FinishTask) -> Result<Charge, StoreError>;
        /// Releases a reservation: see [`SqliteStore::abort_task`].
        fn abort_task(&self, reservation: ReservationId) -> Result<(), StoreError>;
        /// Releases, or remembers to: see [`SqliteStore::release_or_retry_later`].
        fn release_or_retry_later(&self, reservation: ReservationId) -> Result<(), StoreError>;
        /// Retries failed releases; returns how many are still pending.
        fn retry_releases(&self) -> usize;
        /// How many failed releases wait for a retry.
        fn pending_releases(&self) -> usize;
        /// A tenant's budget.
        fn budget(&self, tenant: &str) -> Result<BudgetSnapshot, StoreError>;
        /// A tenant's ledger, oldest charge first.
        fn charges(&self, tenant: &str) -> Result<Vec<ChargeRecord>, StoreError>;
        /// Appends one audit entry on its own.
        fn record_audit(&self, entry: NewEntry) -> Result<u64, StoreError>;
        /// Audit entries after `after_seq`, oldest first.
        fn audit_entries(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
        /// Verifies the whole audit chain.
        fn verify_audit(&self) -> Result<Verification, StoreError>;
        /// See [`SqliteStore::submit_job`].
        fn submit_job(&self, job: &NewJob, now: i64) -> Result<Submit, StoreError>;
        /// See [`SqliteStore::lease_job`].
        fn lease_job(&self, worker: &str, now: i64, lease_ms: i64) -> Result<Option<LeasedJob>, StoreError>;
        /// See [`SqliteStore::heartbeat_job`].
        fn heartbeat_job(&self, id: &str, lease: LeaseId, now: i64, lease_ms: i64) -> Result<bool, StoreError>;
        /// See [`SqliteStore::complete_job`].
        fn complete_job(&self, done: &CompleteJob, now: i64) -> Result<Completion, StoreError>;
        /// See [`SqliteStore::fail_job`].
        fn fail_job(&self, failed: &FailJob, now: i64) -> Result<Failure, StoreError>;
        /// See [`SqliteStore::release_job`].
        fn release_job(&self, id: &str, lease: LeaseId, reservation: Option<ReservationId>, actor: &str, now: i64) -> Result<bool, StoreError>;
        /// See [`SqliteStore::reclaim_expired_jobs`].
        fn reclaim_expired_jobs(&self, now: i64, limit: u32) -> Result<Vec<Reclaimed>, StoreError>;
        /// See [`SqliteStore::job`].
        fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError>;
        /// See [`SqliteStore::list_jobs`].
        fn list_jobs(&self, tenant: &str, state: Option<super::JobState>, limit: u32) -> Result<(Vec<String>, JobCounts), StoreError>;
        /// See [`SqliteStore::dead_jobs`].
        fn dead_jobs(&self, tenant: &str, limit: u32) -> Result<Vec<Job>, StoreError>;
        /// See [`SqliteStore::replay_job`].
        fn replay_job(&self, tenant: &str, id: &str, actor: &str, queue_capacity: u32, now: i64) -> Result<Replay, StoreError>;
        /// See [`SqliteStore::job_counts`].
        fn job_counts(&self) -> Result<JobCounts, StoreError>;
        /// See [`SqliteStore::next_job_due`].
        fn next_job_due(&self) -> Result<Option<i64>, StoreError>;
        /// See [`SqliteStore::charges_by_task`].
        fn charges_by_task(&self) -> Result<BTreeMap<String, (u64, u64)>, StoreError>;
        /// See [`SqliteStore::due_deliveries`].
        fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Delivery>, StoreError>;
        /// See [`SqliteStore::pending_deliveries`].
        fn pending_deliveries(&self, tenant: &str) -> Result<u64, StoreError>;
        /// See [`SqliteStore::job_deliveries`].
        fn job_deliveries(&self, job_id: &str) -> Result<Vec<Delivery>, StoreError>;
        /// See [`SqliteStore::record_delivery`].
        fn record_delivery(&self, id: &str, outcome: &DeliveryOutcome, now: i64) -> Result<Option<DeliveryState>, StoreError>;
    }

    sqlite_only! {
        /// See [`SqliteStore::create_key`].
        fn create_key(&self, new: &NewKey, actor: &str, max_live: u32, now: i64) -> Result<Issue, StoreError>;
        /// See [`SqliteStore::rotate_key`].
        fn rotate_key(&self, id: &str, successor: &NewKey, overlap_ms: i64, actor: &str, max_live: u32, now: i64) -> Result<Rotation, StoreError>;
        /// See [`SqliteStore::revoke_key`].
        fn revoke_key(&self, id: &str, actor: &str, now: i64) -> Result<Revocation, StoreError>;
        /// See [`SqliteStore::key`].
        fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
        /// See [`SqliteStore::keys`].
        fn keys(&self, tenant: Option<&str>, limit: u32) -> Result<Vec<KeyRecord>, StoreError>;
        /// See [`SqliteStore::touch_key`].
        fn touch_key(&self, id: &str, now: i64) -> Result<(), StoreError>;
    }

    /// The issued keys live at `now`, at most `max`, for the authenticator's
    /// cache. The Redis store holds no issued keys yet, so there are none:
    /// only the configured keys authenticate there.
    pub fn live_keys(&self, now: i64, max: u32) -> Result<Vec<KeyRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.live_keys(now, max),
            Store::Redis(_) => Ok(Vec::new()),
        }
    }
}
