//! The orchestrator's durable state in one SQLite file: tenant token budgets,
//! reservations, idempotency records and the ledger of charges.
//!
//! # Ownership and crash recovery
//!
//! One process owns a database file: [`SqliteStore::open`] takes an exclusive
//! advisory lock on `<path>.lock` and keeps it while the store lives. That is
//! what makes recovery at open correct: every reservation still held and every
//! idempotency record still in flight belonged to a request of a previous
//! process, which died with it, so open releases them all (see [`Recovery`]).
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a committed
//! transaction survives the process being killed (`kill -9`, the harness's
//! fault model), because the WAL is in the OS page cache. An OS crash or power
//! loss may lose the latest commits (never corrupt the file); `synchronous=FULL`
//! would be needed for that, at an fsync per commit.
//!
//! # Threads
//!
//! [`SqliteStore`] is cheap to clone and holds one connection behind a mutex. Its
//! methods block (SQLite I/O, busy retries), so async code calls them through
//! [`SqliteStore::run`], which moves the work onto tokio's blocking pool.
//!
//! # A task's life
//!
//! Each step is one `BEGIN IMMEDIATE` transaction:
//! [`SqliteStore::begin_task`] (claim the idempotency key and reserve tokens), then
//! either [`SqliteStore::finish_task`] (charge the reported usage, store the response)
//! or [`SqliteStore::abort_task`] (release everything so the client may retry).
//! Settling a reservation twice does nothing the second time, so a drop guard
//! may always call `abort_task`.

mod audit;
mod backend;
mod entries;
mod error;
mod jobs;
mod keys;
mod redis_store;
mod schema;
mod tasks;
mod webhooks;

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};

use crate::config::BudgetConfig;
use crate::pii::Redactor;

pub use audit::{
    AuditEntry, MAX_AUDIT_PAGE, verify_connection as verify_audit_connection,
    verify_file as verify_audit_file,
};
pub use backend::Store;
pub use error::StoreError;
pub use jobs::*;
pub use keys::*;
pub use redis_store::{REDIS_PREFIX, RateTaken, RedisStore};
pub use webhooks::*;

/// The most failed releases a store keeps to retry. Beyond it a failed
/// release is only logged, and left to crash recovery at the next start: a
/// disk that fails every write for hours must not grow memory without bound.
pub const MAX_PENDING_RELEASES: usize = 10_000;

/// The longest pause between two busy retries, however many attempts are
/// configured: beyond it, waiting longer only delays the error.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How the store opens and behaves.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Token limits; applied to existing tenants at open and to new tenants on
    /// first use.
    pub budgets: BudgetConfig,
    /// How long SQLite itself waits on a lock before reporting busy.
    pub busy_timeout: Duration,
    /// How many times an operation is tried while SQLite reports busy or
    /// locked, at least 1.
    pub busy_attempts: u32,
    /// The pause after the first busy attempt; it doubles after each one (up
    /// to one second).
    pub busy_backoff: Duration,
    /// After this long, an in-flight idempotency record counts as abandoned
    /// (its request is stuck) and a new request with the key takes it over.
    /// Should exceed the longest request.
    pub in_flight_expiry: Duration,
    /// Whether open sets every tenant's limit to `budgets`'s. The service
    /// does; an administration tool that has no budgets to apply (like
    /// `orchestrator keys`) keeps the limits the database holds.
    pub apply_limits: bool,
    /// What takes personal data out of audit details and `last_error`
    /// before they are written.
    pub redactor: Arc<Redactor>,
    /// Redis only: how long connecting and each command may take. A lost
    /// link fails a request after this, never hangs it.
    pub redis_timeout: Duration,
    /// Redis only: how long a replica counts as alive after its latest
    /// heartbeat; past it, other replicas release what it held.
    pub instance_ttl: Duration,
}

impl StoreOptions {
    /// Options with these budgets and the defaults: SQLite busy timeout 250 ms,
    /// 5 attempts from 10 ms backoff, in-flight expiry 10 minutes; Redis
    /// timeout 1 s, replica liveness 5 s.
    pub fn new(budgets: BudgetConfig) -> Self {
        Self {
            budgets,
            busy_timeout: Duration::from_millis(250),
            busy_attempts: 5,
            busy_backoff: Duration::from_millis(10),
            in_flight_expiry: Duration::from_secs(600),
            apply_limits: true,
            redactor: crate::pii::default_redactor(),
            redis_timeout: Duration::from_secs(1),
            instance_ttl: Duration::from_secs(5),
        }
    }

    /// Options for administration tools on an offline database: the
    /// defaults, keeping the limits the database holds.
    pub fn offline() -> Self {
        Self {
            apply_limits: false,
            ..Self::new(BudgetConfig::default())
        }
    }
}

/// What [`SqliteStore::open`] cleaned up after the previous process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Reservations that were still held, now released.
    pub released_reservations: u64,
    /// The tokens they held.
    pub released_tokens: u64,
    /// In-flight idempotency records deleted, so their clients may retry.
    pub abandoned_keys: u64,
    /// Tenants whose configured limit is below what they already used; their
    /// limit was set to their usage instead (remaining 0), since the ledger
    /// cannot un-spend tokens.
    pub clamped_limits: u64,
    /// Running jobs whose worker died with the previous process, queued again.
    pub requeued_jobs: u64,
    /// Running jobs that were on their last attempt, now in the dead-letter queue.
    pub dead_jobs: u64,
}

/// A reservation's id, handed out by [`SqliteStore::begin_task`]. Ids are never
/// reused within a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReservationId(pub i64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A request's claim on an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The client's `Idempotency-Key`; scoped to the tenant.
    pub key: String,
    /// A hash of the request, to detect a key reused for a different request.
    pub fingerprint: [u8; 32],
}

/// The start of a task: what [`SqliteStore::begin_task`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeginTask {
    /// Whose budget pays.
    pub tenant: String,
    /// The task's id, recorded with the reservation and its charge.
    pub task_id: String,
    /// The idempotency key, if the request had one.
    pub idempotency: Option<IdempotencyClaim>,
    /// Tokens to hold until the task finishes.
    pub reserve_tokens: u64,
}

/// The outcome of [`SqliteStore::begin_task`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Tokens are reserved (and the key, if any, claimed): run the task, then
    /// finish or abort this reservation.
    Started {
        /// What to finish or abort.
        reservation: ReservationId,
    },
    /// The key completed earlier with the same fingerprint: send this again.
    Replay {
        /// The stored HTTP status.
        status: u16,
        /// The stored body.
        body: Vec<u8>,
    },
    /// The key belongs to a request still running.
    InFlight,
    /// The key was used before with a different request (whether that one is
    /// running or completed).
    FingerprintMismatch,
    /// The budget cannot hold the reservation; nothing was written and the key
    /// was not claimed.
    InsufficientBudget {
        /// The tenant's limit.
        limit: u64,
        /// Tokens charged so far.
        used: u64,
        /// Tokens held by running tasks.
        reserved: u64,
        /// Tokens asked for.
        requested: u64,
    },
}

/// A response kept under an idempotency key, to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The end of a task: what [`SqliteStore::finish_task`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishTask {
    /// The reservation from [`Begin::Started`].
    pub reservation: ReservationId,
    /// The usage the provider reported; may exceed the reservation.
    pub charge_tokens: u64,
    /// Who the audit log names: the API key id.
    pub actor: String,
    /// The response to replay for the task's idempotency key. `None` releases
    /// the key instead (the client may retry; this charge stands).
    pub response: Option<StoredResponse>,
}

/// What [`SqliteStore::finish_task`] charged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Tokens added to the tenant's usage.
    pub charged: u64,
    /// Reported tokens beyond the tenant's limit, not charged: the budget is
    /// never overdrawn.
    pub overage: u64,
    /// The tenant's remaining tokens after this charge (0 when nothing was
    /// charged because the reservation was already settled).
    pub remaining: u64,
}

/// A tenant's budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSnapshot {
    /// The tenant.
    pub tenant: String,
    /// Its limit.
    pub limit_tokens: u64,
    /// Tokens charged.
    pub used_tokens: u64,
    /// Tokens held by running tasks.
    pub reserved_tokens: u64,
    /// `limit - used - reserved`.
    pub remaining_tokens: u64,
}

/// One row of the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRecord {
    /// The tenant charged.
    pub tenant: String,
    /// The reservation settled by this charge.
    pub reservation: ReservationId,
    /// The task.
    pub task_id: String,
    /// The task's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Tokens charged.
    pub tokens: u64,
    /// Reported tokens not charged because the limit was reached.
    pub overage_tokens: u64,
    /// When, in Unix milliseconds.
    pub charged_at_ms: u64,
}

/// The SQLite store. Clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: StoreOptions,
    conn: Mutex<Connection>,
    /// Set once, right after recovery at open.
    recovery: OnceLock<Recovery>,
    busy_retries: AtomicU64,
    /// Reservations whose release failed (a disk error), retried by
    /// [`SqliteStore::retry_releases`] until they go through.
    pending_releases: PendingReleases,
    /// How the latest writes went, for readiness ([`SqliteStore::probe_writes`]).
    writes: Mutex<WriteHealth>,
    /// Held for the store's lifetime: the advisory lock is released when the
    /// file is closed. Declared after `conn` so that the connection closes
    /// first.
    _lock: File,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("recovery", &self.recovery())
            .finish_non_exhaustive()
    }
}

/// Reservations whose release failed (the disk or the server refused the
/// write), to retry until they go through: a release that is never retried
/// would keep the tokens reserved and the idempotency key in flight
/// (answering 409) until recovery. Bounded by [`MAX_PENDING_RELEASES`].
#[derive(Debug, Default)]
pub(crate) struct PendingReleases(Mutex<BTreeSet<ReservationId>>);

impl PendingReleases {
    fn set(&self) -> MutexGuard<'_, BTreeSet<ReservationId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases `reservation` with `abort`; if that fails for a reason other
    /// than the reservation being unknown, remembers it for [`Self::retry`].
    pub(crate) fn release_or_retry_later(
        &self,
        reservation: ReservationId,
        abort: impl FnOnce(ReservationId) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let result = abort(reservation);
        if let Err(e) = &result
            && !matches!(e, StoreError::UnknownReservation { .. })
        {
            let mut pending = self.set();
            if pending.len() < MAX_PENDING_RELEASES {
                pending.insert(reservation);
            } else {
                tracing::error!(%reservation, "too many failed releases to retry; this one is released at recovery");
            }
        }
        result
    }

    /// Tries every remembered release again with `abort`; returns how many
    /// are still pending.
    pub(crate) fn retry(&self, abort: impl Fn(ReservationId) -> Result<(), StoreError>) -> usize {
        let due: Vec<ReservationId> = self.set().iter().copied().collect();
        for reservation in due {
            let done = match abort(reservation) {
                Ok(()) => true,
                // Settled some other way, or gone: nothing left to release.
                Err(StoreError::UnknownReservation { .. }) => true,
                Err(e) => {
                    tracing::warn!(%reservation, error = %e, "releasing a reservation failed again; retrying later");
                    false
                }
            };
            if done {
                self.set().remove(&reservation);
            }
        }
        self.len()
    }

    /// How many releases wait for a retry.
    pub(crate) fn len(&self) -> usize {
        self.set().len()
    }
}

/// How long readiness trusts the latest write before [`SqliteStore::probe_writes`]
/// makes one of its own.
pub const WRITE_PROBE_AFTER: Duration = Duration::from_secs(2);

/// The latest write's outcome.
#[derive(Debug, Default)]
struct WriteHealth {
    /// When the latest write (that touched the disk) ended.
    at: Option<std::time::Instant>,
    /// Its failure, if it failed.
    failing: Option<String>,
}

/// An error inside a transaction: SQLite's (busy ones are retried) or the
/// store's own.
pub(crate) enum TxError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for TxError {
    fn from(error: rusqlite::Error) -> Self {
        TxError::Sqlite(error)
    }
}

impl From<StoreError> for TxError {
    fn from(error: StoreError) -> Self {
        TxError::Store(error)
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

impl SqliteStore {
    /// The redactor every audit entry and stored error passes through.
    pub(crate) fn redactor(&self) -> &Redactor {
        &self.inner.options.redactor
    }

    /// Opens (creating if needed) the database at `path`: creates parent
    /// directories, locks `<path>.lock`, configures SQLite, migrates the schema,
    /// releases what the previous process left held (see [`SqliteStore::recovery`])
    /// and applies the configured limits to existing tenants.
    ///
    /// Fails with [`StoreError::Locked`] if another store owns the file.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let lock = lock_file(&path)?;

        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_error)?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(open_error)?;
        // journal_mode answers with the mode in effect; anything but WAL (e.g.
        // a file system without shared memory) would void the durability and
        // concurrency this module documents, so it is an error.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(open_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::JournalMode {
                path: path.clone(),
                mode,
            });
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(open_error)?;
        // Room for every statement the store runs, so none is parsed twice.
        conn.set_prepared_statement_cache_capacity(64);

        let store = SqliteStore {
            inner: Arc::new(Inner {
                path,
                options: options.clone(),
                conn: Mutex::new(conn),
                recovery: OnceLock::new(),
                busy_retries: AtomicU64::new(0),
                pending_releases: PendingReleases::default(),
                writes: Mutex::new(WriteHealth::default()),
                _lock: lock,
            }),
        };
        store.migrate()?;
        let mut recovery = store.recover()?;
        for job in store.reclaim_all_jobs(now_ms())? {
            match job.now {
                JobState::Dead => recovery.dead_jobs += 1,
                _ => recovery.requeued_jobs += 1,
            }
        }
        if recovery != Recovery::default() {
            tracing::warn!(
                path = %store.inner.path.display(),
                released_reservations = recovery.released_reservations,
                released_tokens = recovery.released_tokens,
                abandoned_keys = recovery.abandoned_keys,
                clamped_limits = recovery.clamped_limits,
                requeued_jobs = recovery.requeued_jobs,
                dead_jobs = recovery.dead_jobs,
                "store recovered state left by the previous process"
            );
        }
        store.inner.recovery.get_or_init(|| recovery);
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What open cleaned up after the previous process.
    pub fn recovery(&self) -> Recovery {
        self.inner.recovery.get().copied().unwrap_or_default()
    }

    /// How many times an operation was retried because SQLite was busy, since
    /// open (a metric: nonzero means something else writes the file).
    pub fn busy_retries(&self) -> u64 {
        self.inner.busy_retries.load(Ordering::Relaxed)
    }

    /// A cheap query, for readiness: fails if the database cannot be read.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.read("probe", |conn| {
            conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))?;
            Ok(())
        })
    }

    /// The connection. A panic while it was held poisons the mutex, but every
    /// use is a transaction that rolls back when dropped, so the connection is
    /// still consistent: recover it instead of panicking.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `attempt` until SQLite stops reporting busy or locked, at most
    /// `busy_attempts` times, pausing with exponential backoff in between.
    fn retry<T>(
        &self,
        operation: &'static str,
        mut attempt: impl FnMut() -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        let options = &self.inner.options;
        let attempts = options.busy_attempts.max(1);
        let mut pause = options.busy_backoff;
        for number in 1..=attempts {
            match attempt() {
                Ok(value) => return Ok(value),
                Err(TxError::Store(error)) => return Err(error),
                Err(TxError::Sqlite(error)) if is_busy(&error) && number < attempts => {
                    self.inner.busy_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        path = %self.inner.path.display(),
                        operation,
                        attempt = number,
                        pause_ms = pause.as_millis(),
                        "sqlite busy, retrying"
                    );
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2).min(MAX_BACKOFF);
                }
                Err(TxError::Sqlite(error)) if is_busy(&error) => break,
                Err(TxError::Sqlite(source)) => {
                    return Err(StoreError::Sqlite {
                        path: self.inner.path.clone(),
                        operation,
                        source,
                    });
                }
            }
        }
        Err(StoreError::Busy {
            path: self.inner.path.clone(),
            operation,
            attempts,
        })
    }

    /// Runs `work` in one write transaction (`BEGIN IMMEDIATE`, so the write
    /// lock is taken up front and a busy database fails at BEGIN, where a retry
    /// is safe, rather than at the first write), committing if it returns `Ok`.
    /// The whole transaction is retried when busy, so `work` must only touch
    /// the database.
    fn write<T>(
        &self,
        operation: &'static str,
        mut work: impl FnMut(&Transaction<'_>) -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let result = self.retry(operation, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        });
        // Only SQLite's own failures say the disk is bad: a store error from
        // `work` is a refusal (not found, over budget), and busy is
        // contention.
        let outcome = match &result {
            Ok(_) => Some(None),
            Err(error @ StoreError::Sqlite { .. }) => Some(Some(error.to_string())),
            Err(_) => None,
        };
        if let Some(failure) = outcome {
            let mut writes = self
                .inner
                .writes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            writes.at = Some(std::time::Instant::now());
            writes.failing = failure;
        }
        result
    }

    /// Whether writes go through, for readiness: an error naming the failure
    /// when the latest write failed. When writes are failing, or none was
    /// made for [`WRITE_PROBE_AFTER`], it first makes one of its own (the
    /// schema version, rewritten unchanged: one small WAL frame), so that a
    /// disk turning bad shows without traffic, and one that is good again
    /// shows at the next probe rather than at the next request (which a
    /// load balancer would not send to a service that is not ready).
    pub fn probe_writes(&self) -> Result<(), StoreError> {
        self.probe_writes_older_than(WRITE_PROBE_AFTER)
    }

    /// [`SqliteStore::probe_writes`], trusting the latest write for `max_age`.
    fn probe_writes_older_than(&self, max_age: Duration) -> Result<(), StoreError> {
        let stale = {
            let writes = self
                .inner
                .writes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            writes.failing.is_some() || writes.at.is_none_or(|at| at.elapsed() >= max_age)
        };
        if stale {
            let version = schema::latest_version();
            // Its outcome is recorded by `write` and reported below; busy
            // (contention) is not a disk fault, so it is not an error here.
            let _ = self.write("probe writes", |tx| {
                tx.execute_batch(&format!("PRAGMA user_version = {version}"))?;
                Ok(())
            });
        }
        let writes = self
            .inner
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &writes.failing {
            None => Ok(()),
            Some(message) => Err(StoreError::WritesFailing {
                path: self.inner.path.clone(),
                message: message.clone(),
            }),
        }
    }

    /// Runs read-only `work`, retried when busy.
    fn read<T>(
        &self,
        operation: &'static str,
        mut work: impl FnMut(&Connection) -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn();
        self.retry(operation, || work(&conn))
    }

    /// Applies the migrations the file lacks, each in its own transaction.
    fn migrate(&self) -> Result<(), StoreError> {
        let found: i64 = self.read("read schema version", |conn| {
            Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
        })?;
        let supported = schema::latest_version();
        if found > i64::from(supported) {
            return Err(StoreError::SchemaTooNew {
                path: self.inner.path.clone(),
                found,
                supported,
            });
        }
        for migration in schema::MIGRATIONS
            .iter()
            .filter(|m| i64::from(m.version) > found)
        {
            let failed = |source: rusqlite::Error| {
                if is_busy(&source) {
                    TxError::Sqlite(source)
                } else {
                    TxError::Store(StoreError::Migrate {
                        path: self.inner.path.clone(),
                        version: migration.version,
                        source,
                    })
                }
            };
            self.write("migrate", |tx| {
                tx.execute_batch(migration.sql).map_err(failed)?;
                tx.pragma_update(None, "user_version", migration.version)
                    .map_err(failed)?;
                Ok(())
            })?;
            tracing::info!(
                path = %self.inner.path.display(),
                version = migration.version,
                "store schema migrated"
            );
        }
        Ok(())
    }

    /// The configured limit of `tenant`, in the database's range.
    fn configured_limit(&self, tenant: &str) -> i64 {
        let budgets = &self.inner.options.budgets;
        let limit = budgets
            .tenants
            .get(tenant)
            .copied()
            .unwrap_or(budgets.default_limit_tokens);
        to_db(limit)
    }
}

/// Opens `<path>.lock` and takes an exclusive advisory lock on it without
/// waiting.
fn lock_file(path: &Path) -> Result<File, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| StoreError::LockFile {
            path: path.to_path_buf(),
            lock: lock.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_path_buf(),
            lock,
        }),
        Err(fs::TryLockError::Error(source)) => Err(StoreError::LockFile {
            path: path.to_path_buf(),
            lock,
            source,
        }),
    }
}

/// A token amount as stored: SQLite integers are i64, and no budget gets near
/// i64::MAX, so larger amounts are clamped.
fn to_db(tokens: u64) -> i64 {
    i64::try_from(tokens).unwrap_or(i64::MAX)
}

/// A stored amount or time back as u64. The schema's CHECKs keep them
/// nonnegative.
fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Now, in Unix milliseconds: the clock the store's callers pass in.
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// A duration in milliseconds, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn options() -> StoreOptions {
        StoreOptions::new(BudgetConfig {
            default_limit_tokens: 100,
            tenants: BTreeMap::new(),
        })
    }

    fn temp_db(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("orch-store-unit-{}-{name}", std::process::id()))
            .join("x.db")
    }

    fn busy_error() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None)
    }

    #[test]
    fn readiness_sees_writes_fail_and_come_back() {
        let store = SqliteStore::open(&temp_db("probe-writes"), &options()).unwrap();
        assert!(store.probe_writes().is_ok());
        // SQLite refuses every write on a query-only connection, as it does
        // on a read-only or full disk; reads still work.
        store
            .conn()
            .execute_batch("PRAGMA query_only = ON")
            .unwrap();
        // A write made just now is trusted for a while...
        assert!(store.probe_writes().is_ok());
        // ...and once it is old, the probe writes and sees the failure.
        let error = store.probe_writes_older_than(Duration::ZERO).unwrap_err();
        assert!(
            matches!(&error, StoreError::WritesFailing { message, .. } if message.contains("probe writes")),
            "{error}"
        );
        assert!(store.probe().is_ok());
        // The probe's own write finds the disk good again, with no traffic.
        store
            .conn()
            .execute_batch("PRAGMA query_only = OFF")
            .unwrap();
        assert!(store.probe_writes().is_ok());
    }

    #[test]
    fn retry_gives_up_after_the_configured_attempts_and_says_so() {
        let path = temp_db("retry");
        let mut opts = options();
        opts.busy_backoff = Duration::from_millis(1);
        let store = SqliteStore::open(&path, &opts).unwrap();
        let mut calls = 0;
        let error = store
            .retry::<()>("test op", || {
                calls += 1;
                Err(TxError::Sqlite(busy_error()))
            })
            .unwrap_err();
        assert_eq!(calls, 5);
        assert_eq!(store.busy_retries(), 4);
        assert_eq!(
            error.to_string(),
            format!(
                "sqlite busy after 5 attempts (test op on database {})",
                path.display()
            )
        );
        drop(store);
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn retry_succeeds_once_busy_clears_and_does_not_retry_other_errors() {
        let path = temp_db("retry-ok");
        let mut opts = options();
        opts.busy_backoff = Duration::from_millis(1);
        let store = SqliteStore::open(&path, &opts).unwrap();
        let mut calls = 0;
        let value = store
            .retry("test op", || {
                calls += 1;
                if calls < 3 {
                    Err(TxError::Sqlite(busy_error()))
                } else {
                    Ok(7)
                }
            })
            .unwrap();
        assert_eq!((value, calls), (7, 3));

        calls = 0;
        let error = store
            .retry::<()>("test op", || {
                calls += 1;
                Err(TxError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
            })
            .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(
            error,
            StoreError::Sqlite {
                operation: "test op",
                ..
            }
        ));
        drop(store);
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_poisoned_connection_mutex_is_recovered() {
        let path = temp_db("poison");
        let store = SqliteStore::open(&path, &options()).unwrap();
        let clone = store.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = clone.conn();
            panic!("poison the mutex");
        })
        .join();
        assert!(panicked.is_err());
        assert!(store.inner.conn.is_poisoned());
        store.probe().unwrap();
        drop(store);
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let path = temp_db("newer");
        drop(SqliteStore::open(&path, &options()).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let error = SqliteStore::open(&path, &options()).unwrap_err();
        assert!(
            matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
            "{error}"
        );
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn amounts_beyond_i64_are_clamped() {
        assert_eq!(to_db(u64::MAX), i64::MAX);
        assert_eq!(to_db(5), 5);
        assert_eq!(from_db(-1), 0);
    }
}
