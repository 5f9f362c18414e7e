//! The audit chain on Redis: one list, `{prefix}:audit`, whose element `i`
//! is entry `i + 1` as JSON, and its head `{prefix}:audit:head`. Every
//! append watches the head, so two replicas never both extend the same
//! entry: one commits, the other reads the new head and tries again.

use std::sync::{MutexGuard, PoisonError};

use redis::{Connection, Pipeline};
use serde::{Deserialize, Serialize};

use super::tasks::watch;
use super::{Attempt, Fault, Fields, RedisStore, int};
use crate::audit::{self, ChainVerifier, NewEntry, StoredEntry, Verification};
use crate::store::{AuditEntry, MAX_AUDIT_PAGE, StoreError, now_ms};

/// An entry as stored in the list: the hashed fields as stored, the hashes
/// in hex.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredJson {
    seq: i64,
    ts_ms: i64,
    actor: String,
    action: String,
    subject: String,
    /// The canonical JSON text that was hashed.
    details: String,
    prev_hash: String,
    hash: String,
}

/// The hash before entry 1.
const GENESIS: [u8; 32] = [0; 32];

impl RedisStore {
    /// The process's lock on audited writes.
    pub(super) fn audit_lock(&self) -> MutexGuard<'_, ()> {
        self.inner
            .audit_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the chain's head and adds `entries` to `pipe` after it,
    /// hashed in order. Details pass through the redactor first, as in SQLite.
    pub(super) fn append_audit(
        &self,
        con: &mut Connection,
        pipe: &mut Pipeline,
        entries: impl IntoIterator<Item = NewEntry>,
        now: i64,
    ) -> Result<u64, Fault> {
        let keys = self.keys();
        let head_key = keys.audit_head();
        watch(con, &head_key)?;
        let head: Fields = redis::cmd("HGETALL").arg(&head_key).query(con)?;
        let (mut seq, mut prev) = if head.is_empty() {
            (0u64, GENESIS.to_vec())
        } else {
            let seq = int(&head, "seq").and_then(|s| u64::try_from(s).ok());
            let hash = head
                .get("hash")
                .and_then(|h| hex::decode(h).ok())
                .filter(|h| h.len() == 32);
            match (seq, hash) {
                (Some(seq), Some(hash)) => (seq, hash),
                _ => {
                    return Err(self
                        .malformed(&head_key, "the audit head needs seq and a 32-byte hex hash")
                        .into());
                }
            }
        };
        for entry in entries {
            let details = audit::canonical_details(&self.redactor().redact_json(entry.details));
            seq += 1;
            let hash = audit::entry_hash(
                seq,
                now,
                entry.actor.as_bytes(),
                entry.action.as_bytes(),
                entry.subject.as_bytes(),
                details.as_bytes(),
                &prev,
            );
            let stored = StoredJson {
                seq: i64::try_from(seq).unwrap_or(i64::MAX),
                ts_ms: now,
                actor: entry.actor,
                action: entry.action.to_owned(),
                subject: entry.subject,
                details,
                prev_hash: hex::encode(&prev),
                hash: hex::encode(hash),
            };
            pipe.cmd("RPUSH")
                .arg(keys.audit())
                .arg(serde_json::to_string(&stored).unwrap_or_default())
                .ignore();
            prev = hash.to_vec();
        }
        pipe.cmd("HSET")
            .arg(&head_key)
            .arg("seq")
            .arg(seq)
            .arg("hash")
            .arg(hex::encode(&prev))
            .ignore();
        Ok(seq)
    }

    /// Appends one entry in its own transaction.
    pub fn record_audit(&self, entry: NewEntry) -> Result<u64, StoreError> {
        let _audit = self.audit_lock();
        self.optimistic("append audit entry", |con| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let seq = self.append_audit(con, &mut pipe, [entry.clone()], now_ms())?;
            Ok(Attempt::Commit(pipe, seq))
        })
    }

    /// Entries with seq greater than `after_seq`, oldest first, at most
    /// `limit` (capped at [`MAX_AUDIT_PAGE`]).
    pub fn audit_entries(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = limit.min(MAX_AUDIT_PAGE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let rows = self.audit_rows("read audit entries", start, start + i64::from(limit) - 1)?;
        Ok(rows.into_iter().map(super::super::audit::shown).collect())
    }

    /// Verifies the whole chain: the list's length and the head are read in
    /// one `MULTI`, then the entries up to that length (the list only grows
    /// at its end, so they are the ones the head covers).
    pub fn verify_audit(&self) -> Result<Verification, StoreError> {
        let keys = self.keys();
        let (length, head): (i64, Fields) = self.with_connection("verify audit", |con| {
            Ok(redis::pipe()
                .atomic()
                .cmd("LLEN")
                .arg(keys.audit())
                .cmd("HGETALL")
                .arg(keys.audit_head())
                .query(con)?)
        })?;
        let mut verifier = ChainVerifier::new();
        let page = i64::from(MAX_AUDIT_PAGE);
        let mut start = 0;
        while start < length {
            let end = (start + page).min(length) - 1;
            for entry in self.audit_rows("verify audit", start, end)? {
                verifier.push(&entry);
            }
            start = end + 1;
        }
        let head = (!head.is_empty()).then(|| {
            (
                int(&head, "seq").unwrap_or(-1),
                head.get("hash")
                    .and_then(|h| hex::decode(h).ok())
                    .unwrap_or_default(),
            )
        });
        Ok(verifier.finish(head))
    }

    /// List elements `start..=end` as stored entries. An element that is not
    /// the documented JSON becomes an entry that cannot verify (seq -1, its
    /// text as the details), so tampering shows as a broken chain.
    fn audit_rows(
        &self,
        operation: &'static str,
        start: i64,
        end: i64,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let key = self.keys().audit();
        let rows: Vec<Vec<u8>> = self.with_connection(operation, |con| {
            Ok(redis::cmd("LRANGE")
                .arg(&key)
                .arg(start)
                .arg(end)
                .query(con)?)
        })?;
        Ok(rows.iter().map(|row| stored_entry(row)).collect())
    }
}

/// One list element as the verifier reads it.
fn stored_entry(row: &[u8]) -> StoredEntry {
    match serde_json::from_slice::<StoredJson>(row) {
        Ok(e) => StoredEntry {
            seq: e.seq,
            ts_ms: e.ts_ms,
            actor: e.actor.into_bytes(),
            action: e.action.into_bytes(),
            subject: e.subject.into_bytes(),
            details: e.details.into_bytes(),
            prev_hash: hex::decode(&e.prev_hash).unwrap_or_else(|_| e.prev_hash.into_bytes()),
            hash: hex::decode(&e.hash).unwrap_or_else(|_| e.hash.into_bytes()),
        },
        Err(_) => StoredEntry {
            seq: -1,
            ts_ms: 0,
            actor: Vec::new(),
            action: Vec::new(),
            subject: Vec::new(),
            details: row.to_vec(),
            prev_hash: Vec::new(),
            hash: Vec::new(),
        },
    }
}
