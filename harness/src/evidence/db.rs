//! The orchestrator's database read with the harness's own SQL, on a copy,
//! read-only, against the schema the orchestrator documents for outside
//! readers (`system/src/store/SCHEMA.md`). Nothing here runs the
//! orchestrator's code: no migration, no crash recovery, no lease reclaim. A
//! job still `running`, a reservation still `held`, a key still `in_flight`
//! are facts the checks see.

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Row};
use serde::Serialize;
use thiserror::Error;

/// The schema versions (`PRAGMA user_version`) this reader knows. A later
/// version may give a column or a state a new meaning, so it is refused.
pub const KNOWN_SCHEMA_VERSIONS: &[u32] = &[2, 3, 4];

/// The most rows read from one table: a run plans at most 200,000 requests,
/// each writing a handful of rows, so more means something else wrote the file.
pub const MAX_ROWS: usize = 5_000_000;

/// Why the database could not be read.
#[derive(Debug, Error)]
pub enum DbError {
    /// There is no file at the path.
    #[error("{path}: no database file", path = .path.display())]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// SQLite could not open the file.
    #[error("{path}: cannot open read-only: {source}", path = .path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The schema is one this reader does not know.
    #[error(
        "{path}: schema version {version} is not one this harness knows ({known}); update the harness with the orchestrator",
        path = .path.display(),
        known = known_versions()
    )]
    UnknownSchema {
        /// The path.
        path: PathBuf,
        /// Its `user_version`.
        version: i64,
    },
    /// A query failed.
    #[error("{path}: cannot read {table}: {source}", path = .path.display())]
    Query {
        /// The path.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A value the schema does not allow (a state it does not name).
    #[error("{path}: {table} row {row}: {column} is `{value}`, which the schema does not allow", path = .path.display())]
    BadValue {
        /// The path.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The row, by its key.
        row: String,
        /// The column.
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// A table holds more rows than any run writes.
    #[error("{path}: {table} holds more than {MAX_ROWS} rows", path = .path.display())]
    TooManyRows {
        /// The path.
        path: PathBuf,
        /// The table.
        table: &'static str,
    },
}

impl DbError {
    /// Whether the error says the harness cannot judge this database at all
    /// (bad environment, exit 2), rather than that the database is broken
    /// (a failed check).
    pub fn is_unknown_schema(&self) -> bool {
        matches!(self, DbError::UnknownSchema { .. })
    }
}

fn known_versions() -> String {
    KNOWN_SCHEMA_VERSIONS
        .iter()
        .map(|v| format!("version {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tenant's budget row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BudgetRow {
    /// The tenant.
    pub tenant: String,
    /// Its limit.
    pub limit_tokens: u64,
    /// Tokens charged.
    pub used_tokens: u64,
    /// Tokens held by reservations.
    pub reserved_tokens: u64,
}

/// A reservation's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    /// The call is in flight.
    Held,
    /// Settled by a charge.
    Charged,
    /// Settled without a charge.
    Released,
}

/// A reservation row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReservationRow {
    /// Its number.
    pub id: i64,
    /// The tenant.
    pub tenant: String,
    /// The task or job.
    pub task_id: String,
    /// The task's idempotency key.
    pub idempotency_key: Option<String>,
    /// Tokens held.
    pub tokens: u64,
    /// Its state.
    pub state: ReservationState,
}

/// An idempotency key's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Its request is running.
    InFlight,
    /// Its response is stored.
    Completed,
}

/// An idempotency key row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    /// The tenant.
    pub tenant: String,
    /// The key.
    pub key: String,
    /// The reservation it made.
    pub reservation_id: i64,
    /// Its state.
    pub state: KeyState,
}

/// A row of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChargeRow {
    /// The tenant charged.
    pub tenant: String,
    /// The reservation it settled.
    pub reservation_id: i64,
    /// The task or job.
    pub task_id: String,
    /// The task's key.
    pub idempotency_key: Option<String>,
    /// Tokens charged.
    pub tokens: u64,
    /// Reported tokens beyond the limit, not charged.
    pub overage_tokens: u64,
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to be leased.
    Queued,
    /// Leased by a worker.
    Running,
    /// Done, charged.
    Succeeded,
    /// In the dead-letter queue.
    Dead,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Dead,
    ];

    /// The state as the schema writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
        }
    }

    /// Whether the job has settled (nothing more happens to it unless replayed).
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead)
    }
}

/// A job row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobRow {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its state.
    pub state: JobState,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts allowed.
    pub max_attempts: u64,
    /// The last error.
    pub last_error: Option<String>,
}

/// A webhook delivery row (schema 4 on; SCHEMA.md, `webhook_deliveries`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    /// The delivery id, sent as `Gauntlet-Delivery`.
    pub id: String,
    /// The job.
    pub job_id: String,
    /// `job.succeeded` or `job.dead`.
    pub event: String,
    /// The JSON body sent.
    pub payload: String,
    /// `pending`, `delivered`, `failed` or `refused`.
    pub state: String,
    /// Attempts made.
    pub attempts: u64,
    /// Why the last attempt failed or was refused.
    pub last_error: Option<String>,
}

/// An audit entry, its fields as stored (bytes, which may have been
/// tampered with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the chain.
    pub seq: i64,
    /// When, Unix milliseconds.
    pub ts_ms: i64,
    /// The actor's bytes.
    pub actor: Vec<u8>,
    /// The action's bytes.
    pub action: Vec<u8>,
    /// The subject's bytes.
    pub subject: Vec<u8>,
    /// The details' bytes.
    pub details: Vec<u8>,
    /// The previous entry's hash, as stored.
    pub prev_hash: Vec<u8>,
    /// This entry's hash, as stored.
    pub hash: Vec<u8>,
}

/// The audit head row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    /// The last entry's seq.
    pub last_seq: i64,
    /// The last entry's hash.
    pub last_hash: Vec<u8>,
}

/// Everything the orchestrator left in its database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Database {
    /// `PRAGMA user_version`.
    pub schema_version: u32,
    /// Budgets, by tenant name.
    pub budgets: Vec<BudgetRow>,
    /// Every reservation, oldest first.
    pub reservations: Vec<ReservationRow>,
    /// Idempotency keys.
    pub keys: Vec<KeyRow>,
    /// The ledger, oldest first.
    pub charges: Vec<ChargeRow>,
    /// Jobs, in submission order.
    pub jobs: Vec<JobRow>,
    /// The audit log, by seq.
    pub audit: Vec<AuditRow>,
    /// The audit head (`None` when the row is missing).
    pub audit_head: Option<AuditHead>,
    /// Webhook deliveries, oldest first (none before schema 4).
    pub deliveries: Vec<DeliveryRow>,
}

impl Database {
    /// The job with this id.
    pub fn job(&self, id: &str) -> Option<&JobRow> {
        self.jobs.iter().find(|j| j.id == id)
    }
}

/// Reads the database at `path` (a copy: the harness never reads the
/// service's own file) read-only, with the harness's own queries.
pub fn read(path: &Path) -> Result<Database, DbError> {
    if !path.is_file() {
        return Err(DbError::Missing {
            path: path.to_path_buf(),
        });
    }
    let open = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open)?;
    let query = |table: &'static str| {
        move |source| DbError::Query {
            path: path.to_path_buf(),
            table,
            source,
        }
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(query("user_version"))?;
    let Some(schema_version) = u32::try_from(version)
        .ok()
        .filter(|v| KNOWN_SCHEMA_VERSIONS.contains(v))
    else {
        return Err(DbError::UnknownSchema {
            path: path.to_path_buf(),
            version,
        });
    };
    // One read transaction: every table from the same snapshot.
    let tx = conn.transaction().map_err(query("the database"))?;
    Tables { path, conn: &tx }.read(schema_version)
}

/// Queries over one read transaction.
struct Tables<'a> {
    path: &'a Path,
    conn: &'a Connection,
}

impl Tables<'_> {
    fn read(&self, schema_version: u32) -> Result<Database, DbError> {
        let budgets = self.rows(
            "budgets",
            "SELECT tenant, limit_tokens, used_tokens, reserved_tokens FROM budgets ORDER BY tenant",
            |row| {
                Ok(BudgetRow {
                    tenant: row.get(0)?,
                    limit_tokens: tokens(row, 1)?,
                    used_tokens: tokens(row, 2)?,
                    reserved_tokens: tokens(row, 3)?,
                })
            },
        )?;
        let reservations = self.rows(
            "reservations",
            "SELECT id, tenant, task_id, idempotency_key, tokens, state FROM reservations ORDER BY id",
            |row| {
                let id: i64 = row.get(0)?;
                Ok(ReservationRow {
                    id,
                    tenant: row.get(1)?,
                    task_id: row.get(2)?,
                    idempotency_key: row.get(3)?,
                    tokens: tokens(row, 4)?,
                    state: state(&RESERVATION_STATES, row.get(5)?, || id.to_string())?,
                })
            },
        )?;
        let keys = self.rows(
            "idempotency",
            "SELECT tenant, key, reservation_id, state FROM idempotency ORDER BY tenant, key",
            |row| {
                let (tenant, key): (String, String) = (row.get(0)?, row.get(1)?);
                let state = state(&KEY_STATES, row.get(3)?, || format!("{tenant}/{key}"))?;
                Ok(KeyRow {
                    tenant,
                    key,
                    reservation_id: row.get(2)?,
                    state,
                })
            },
        )?;
        let charges = self.rows(
            "charges",
            "SELECT tenant, reservation_id, task_id, idempotency_key, tokens, overage_tokens
             FROM charges ORDER BY id",
            |row| {
                Ok(ChargeRow {
                    tenant: row.get(0)?,
                    reservation_id: row.get(1)?,
                    task_id: row.get(2)?,
                    idempotency_key: row.get(3)?,
                    tokens: tokens(row, 4)?,
                    overage_tokens: tokens(row, 5)?,
                })
            },
        )?;
        let jobs = self.rows(
            "jobs",
            "SELECT id, tenant, state, attempts, max_attempts, last_error FROM jobs ORDER BY num",
            |row| {
                let id: String = row.get(0)?;
                let names = JobState::ALL.map(|s| (s.as_str(), s));
                let state = state(&names, row.get(2)?, || id.clone())?;
                Ok(JobRow {
                    id,
                    tenant: row.get(1)?,
                    state,
                    attempts: tokens(row, 3)?,
                    max_attempts: tokens(row, 4)?,
                    last_error: row.get(5)?,
                })
            },
        )?;
        let audit = self.rows(
            "audit",
            "SELECT seq, ts_ms, actor, action, subject, details, prev_hash, hash FROM audit ORDER BY seq",
            |row| {
                Ok(AuditRow {
                    seq: row.get(0)?,
                    ts_ms: row.get(1)?,
                    actor: bytes(row, 2)?,
                    action: bytes(row, 3)?,
                    subject: bytes(row, 4)?,
                    details: bytes(row, 5)?,
                    prev_hash: bytes(row, 6)?,
                    hash: bytes(row, 7)?,
                })
            },
        )?;
        let mut heads = self.rows(
            "audit_head",
            "SELECT last_seq, last_hash FROM audit_head WHERE id = 1",
            |row| {
                Ok(AuditHead {
                    last_seq: row.get(0)?,
                    last_hash: bytes(row, 1)?,
                })
            },
        )?;
        let deliveries = if schema_version >= 4 {
            self.rows(
                "webhook_deliveries",
                "SELECT id, job_id, event, payload, state, attempts, last_error
                 FROM webhook_deliveries ORDER BY created_ms, id",
                |row| {
                    Ok(DeliveryRow {
                        id: row.get(0)?,
                        job_id: row.get(1)?,
                        event: row.get(2)?,
                        payload: row.get(3)?,
                        state: row.get(4)?,
                        attempts: tokens(row, 5)?,
                        last_error: row.get(6)?,
                    })
                },
            )?
        } else {
            Vec::new()
        };
        Ok(Database {
            schema_version,
            deliveries,
            budgets,
            reservations,
            keys,
            charges,
            jobs,
            audit,
            audit_head: heads.pop(),
        })
    }

    /// Every row of `sql`, at most [`MAX_ROWS`].
    fn rows<T>(
        &self,
        table: &'static str,
        sql: &str,
        map: impl Fn(&Row<'_>) -> Result<T, RowError>,
    ) -> Result<Vec<T>, DbError> {
        let error = |source| DbError::Query {
            path: self.path.to_path_buf(),
            table,
            source,
        };
        let mut statement = self.conn.prepare(sql).map_err(error)?;
        let mut rows = statement.query([]).map_err(error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(error)? {
            if out.len() == MAX_ROWS {
                return Err(DbError::TooManyRows {
                    path: self.path.to_path_buf(),
                    table,
                });
            }
            out.push(map(row).map_err(|e| match e {
                RowError::Sql(source) => error(source),
                RowError::Bad { row, column, value } => DbError::BadValue {
                    path: self.path.to_path_buf(),
                    table,
                    row,
                    column,
                    value,
                },
            })?);
        }
        Ok(out)
    }
}

/// Why one row could not be read; [`Tables::rows`] adds the file and table.
enum RowError {
    /// SQLite's error.
    Sql(rusqlite::Error),
    /// A value the schema does not allow.
    Bad {
        row: String,
        column: &'static str,
        value: String,
    },
}

impl From<rusqlite::Error> for RowError {
    fn from(error: rusqlite::Error) -> Self {
        RowError::Sql(error)
    }
}

/// A state column's value among the names the schema gives it; `row` names
/// the row for the error.
fn state<S: Copy>(
    names: &[(&str, S)],
    value: String,
    row: impl FnOnce() -> String,
) -> Result<S, RowError> {
    match names.iter().find(|(name, _)| *name == value) {
        Some((_, state)) => Ok(*state),
        None => Err(RowError::Bad {
            row: row(),
            column: "state",
            value: value.chars().take(64).collect(),
        }),
    }
}

const RESERVATION_STATES: [(&str, ReservationState); 3] = [
    ("held", ReservationState::Held),
    ("charged", ReservationState::Charged),
    ("released", ReservationState::Released),
];
const KEY_STATES: [(&str, KeyState); 2] = [
    ("in_flight", KeyState::InFlight),
    ("completed", KeyState::Completed),
];

/// A token amount or count: the schema keeps them nonnegative, so a negative
/// one is read as a conversion error naming the column.
fn tokens(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Integer, e.into())
    })
}

/// A column's bytes as stored, whatever its type: a tampered entry may hold
/// anything, and the verifier hashes what is there.
fn bytes(row: &Row<'_>, index: usize) -> rusqlite::Result<Vec<u8>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
    })
}
