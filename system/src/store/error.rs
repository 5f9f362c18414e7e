//! What can go wrong in the store, each message naming what failed and where.

use std::io;
use std::path::PathBuf;

use super::ReservationId;

/// An error of the store. Messages are lowercase and name the database file
/// or the Redis server, so that a log line is enough to find the culprit.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory that should hold the database could not be created.
    #[error("cannot create directory {} for database {}: {source}", .dir.display(), .path.display())]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// The directory that could not be created.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },

    /// The lock file next to the database could not be opened or locked for a
    /// reason other than another process holding it.
    #[error("cannot lock database {} (lock file {}): {source}", .path.display(), .lock.display())]
    LockFile {
        /// The database file.
        path: PathBuf,
        /// The lock file, `<path>.lock`.
        lock: PathBuf,
        /// Why.
        source: io::Error,
    },

    /// Another process (or another `SqliteStore` in this one) owns the database.
    /// Crash recovery at open assumes a single owner, so a second one is refused.
    #[error(
        "database {} is locked by another orchestrator process (lock file {})",
        .path.display(),
        .lock.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file, `<path>.lock`.
        lock: PathBuf,
    },

    /// SQLite could not open or configure the database file.
    #[error("cannot open database {}: {source}", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },

    /// SQLite would not switch the database to WAL mode (e.g. a file system
    /// without shared memory), which the store's durability and concurrency
    /// rely on.
    #[error("cannot enable wal on database {}: journal mode stays {mode}", .path.display())]
    JournalMode {
        /// The database file.
        path: PathBuf,
        /// The mode SQLite kept.
        mode: String,
    },

    /// A schema migration failed; the database stays at the previous version.
    #[error("cannot migrate database {} to schema version {version}: {source}", .path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The version whose migration failed.
        version: u32,
        /// Why.
        source: rusqlite::Error,
    },

    /// The database was written by a newer orchestrator; running older code on
    /// it could corrupt the ledger.
    #[error(
        "database {} has schema version {found}, newer than version {supported} that this orchestrator knows",
        .path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: u32,
    },

    /// The latest write to the database failed (readiness reports it until
    /// a write goes through again).
    #[error("writes to database {} are failing: {message}", .path.display())]
    WritesFailing {
        /// The database file.
        path: PathBuf,
        /// The latest write's error.
        message: String,
    },

    /// SQLite stayed busy or locked through every retry.
    #[error("sqlite busy after {attempts} attempts ({operation} on database {})", .path.display())]
    Busy {
        /// The database file.
        path: PathBuf,
        /// What was being done, e.g. `begin task`.
        operation: &'static str,
        /// How many times it was tried.
        attempts: u32,
    },

    /// Any other SQLite failure during an operation.
    #[error("{operation} failed on database {}: {source}", .path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done, e.g. `finish task`.
        operation: &'static str,
        /// Why.
        source: rusqlite::Error,
    },

    /// The reservation id was never handed out by this store.
    #[error("unknown reservation {reservation} in {store}")]
    UnknownReservation {
        /// The store: `database PATH` or `redis URL`.
        store: String,
        /// The id asked for.
        reservation: ReservationId,
    },

    /// The file opened for audit verification holds no audit log: it is not
    /// an orchestrator database, or one from before the audit log existed.
    #[error("database {} has no audit log (tables audit and audit_head)", .path.display())]
    NoAuditLog {
        /// The database file.
        path: PathBuf,
    },

    /// A blocking store task did not complete (it panicked or the runtime is
    /// shutting down).
    #[error("store task on {store} did not complete: {message}")]
    Task {
        /// The store: `database PATH` or `redis URL`.
        store: String,
        /// The join error.
        message: String,
    },

    /// The Redis server could not be reached, refused a command, or timed
    /// out (every command has a deadline, so a lost link fails fast).
    #[error("{operation} failed on redis {url}: {source}")]
    Redis {
        /// The server, without credentials.
        url: String,
        /// What was being done, e.g. `begin task`.
        operation: &'static str,
        /// Why.
        source: redis::RedisError,
    },

    /// Other writers kept changing the keys an operation read, through every
    /// optimistic retry.
    #[error("{operation} on redis {url} was contended through {attempts} attempts")]
    Contended {
        /// The server, without credentials.
        url: String,
        /// What was being done.
        operation: &'static str,
        /// How many times it was tried.
        attempts: u32,
    },

    /// A key holds something other than the documented layout: another
    /// program wrote it, or the prefix is shared with one.
    #[error("redis {url}: key {key} is malformed: {message}")]
    Malformed {
        /// The server, without credentials.
        url: String,
        /// The key.
        key: String,
        /// What was wrong.
        message: String,
    },

    /// The Redis store does not hold this kind of state yet (issued API
    /// keys live only in SQLite for now).
    #[error("{operation} is not available on the redis store {url} yet; use storage.sqlite")]
    Unsupported {
        /// The server, without credentials.
        url: String,
        /// What was asked.
        operation: &'static str,
    },
}
