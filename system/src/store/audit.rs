//! The audit log in SQLite: appends inside the caller's transaction, reads,
//! and verification on a separate read-only connection.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{SqliteStore, StoreError, TxError, from_db, now_ms};
use crate::audit::{self, ChainVerifier, NewEntry, StoredEntry, Verification};
use crate::pii::Redactor;

/// The most entries one read returns.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// An entry as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When, RFC 3339 with milliseconds.
    pub ts: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Further facts (a JSON object; a string if the stored text is not JSON).
    pub details: serde_json::Value,
    /// The previous entry's hash, hex.
    pub prev_hash: String,
    /// This entry's hash, hex.
    pub hash: String,
}

/// Appends `entry` inside `tx`: the change it records and the entry commit
/// together or not at all. Returns its seq.
/// Details pass through `redactor` on the way in: the chain hashes what is
/// stored, so personal data never enters it.
pub(super) fn append(
    tx: &Transaction<'_>,
    redactor: &Redactor,
    entry: NewEntry,
    now: i64,
) -> Result<u64, TxError> {
    let details = audit::canonical_details(&redactor.redact_json(entry.details));
    let (last_seq, last_hash): (i64, Vec<u8>) = tx
        .prepare_cached("SELECT last_seq, last_hash FROM audit_head WHERE id = 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let seq = from_db(last_seq) + 1;
    let hash = audit::entry_hash(
        seq,
        now,
        entry.actor.as_bytes(),
        entry.action.as_bytes(),
        entry.subject.as_bytes(),
        details.as_bytes(),
        &last_hash,
    );
    let seq_db = i64::try_from(seq).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "INSERT INTO audit (seq, ts_ms, actor, action, subject, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        seq_db,
        now,
        entry.actor,
        entry.action,
        entry.subject,
        details,
        last_hash,
        &hash[..]
    ])?;
    tx.prepare_cached("UPDATE audit_head SET last_seq = ?1, last_hash = ?2 WHERE id = 1")?
        .execute(params![seq_db, &hash[..]])?;
    Ok(seq)
}

impl SqliteStore {
    /// Appends one entry in its own transaction, for events that change no
    /// other state (an authorisation denied, the configuration loaded).
    pub fn record_audit(&self, entry: NewEntry) -> Result<u64, StoreError> {
        self.write("append audit entry", |tx| {
            append(tx, self.redactor(), entry.clone(), now_ms())
        })
    }

    /// Entries with seq greater than `after_seq`, oldest first, at most
    /// `limit` (capped at [`MAX_AUDIT_PAGE`]).
    pub fn audit_entries(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = limit.min(MAX_AUDIT_PAGE);
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        self.read("read audit entries", |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, ts_ms, actor, action, subject, details, prev_hash, hash
                 FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after, limit], read_stored)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(shown(row?));
            }
            Ok(out)
        })
    }

    /// Verifies the whole chain on a read-only connection of its own, so that
    /// a long verification never holds up requests (WAL lets readers and the
    /// writer run side by side) and sees one consistent snapshot.
    pub fn verify_audit(&self) -> Result<Verification, StoreError> {
        verify_file(self.path())
    }
}

/// Verifies the audit chain of the database at `path`, opened read-only and
/// without taking the orchestrator's lock, so it works on a live database
/// and on a copy. Fails if the file cannot be read or has no audit log.
pub fn verify_file(path: &Path) -> Result<Verification, StoreError> {
    let sqlite = |operation: &'static str| {
        move |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            operation,
            source,
        }
    };
    if !path.is_file() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            source: rusqlite::Error::InvalidPath(path.to_path_buf()),
        });
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite("verify audit"))?;
    // One read transaction: the entries and the head come from one snapshot.
    let tx = conn.transaction().map_err(sqlite("verify audit"))?;
    let has_log: bool = tx
        .query_row(
            "SELECT count(*) = 2 FROM sqlite_schema WHERE type = 'table' AND name IN ('audit', 'audit_head')",
            [],
            |row| row.get(0),
        )
        .map_err(sqlite("verify audit"))?;
    if !has_log {
        return Err(StoreError::NoAuditLog {
            path: path.to_path_buf(),
        });
    }
    verify_connection(&tx).map_err(sqlite("verify audit"))
}

/// Verifies the audit chain readable through `conn`. Call it inside a read
/// transaction for a consistent snapshot; [`verify_file`] does.
pub fn verify_connection(conn: &Connection) -> rusqlite::Result<Verification> {
    let mut verifier = ChainVerifier::new();
    let mut statement = conn.prepare(
        "SELECT seq, ts_ms, actor, action, subject, details, prev_hash, hash
         FROM audit ORDER BY seq",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        verifier.push(&read_stored(row)?);
    }
    let head = conn
        .query_row(
            "SELECT last_seq, last_hash FROM audit_head WHERE id = 1",
            [],
            |row| Ok((row.get::<_, i64>(0)?, bytes(row.get_ref(1)?))),
        )
        .optional()?;
    Ok(verifier.finish(head))
}

/// A row as stored, whatever its columns hold: text and blobs as bytes, any
/// other type (a tampered column) as its text rendering.
fn read_stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntry> {
    Ok(StoredEntry {
        seq: row.get(0)?,
        ts_ms: row.get(1)?,
        actor: bytes(row.get_ref(2)?),
        action: bytes(row.get_ref(3)?),
        subject: bytes(row.get_ref(4)?),
        details: bytes(row.get_ref(5)?),
        prev_hash: bytes(row.get_ref(6)?),
        hash: bytes(row.get_ref(7)?),
    })
}

fn bytes(value: ValueRef<'_>) -> Vec<u8> {
    match value {
        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
    }
}

pub(super) fn shown(e: StoredEntry) -> AuditEntry {
    let ts = u64::try_from(e.ts_ms)
        .map(|ms| {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_else(|_| e.ts_ms.to_string());
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let details = serde_json::from_slice(&e.details)
        .unwrap_or_else(|_| serde_json::Value::String(text(e.details.clone())));
    AuditEntry {
        seq: from_db(e.seq),
        ts,
        actor: text(e.actor),
        action: text(e.action),
        subject: text(e.subject),
        details,
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash),
    }
}
