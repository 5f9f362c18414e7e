//! Keys issued at run time (`POST /v1/keys`, `orchestrator keys`). Only a
//! key's SHA-256 is stored. Each change is one transaction that also appends
//! its audit entry (`key.created`, `key.rotated`, `key.revoked`), so the log
//! and the table never disagree.
//!
//! The store decides only what the table can: whether an id exists, whether
//! a key is still live, whether the bound of live keys is reached. Who may
//! change which key is the HTTP layer's and the CLI's question.

use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::Serialize;
use serde_json::json;

use super::tasks::exec;
use super::{SqliteStore, StoreError, audit};
use crate::audit::NewEntry;

/// The most keys one listing returns.
pub const MAX_KEY_PAGE: u32 = 1000;

/// How often a key's `last_used_ms` is written at most: a key in steady use
/// costs one write a minute, not one per request.
pub const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// An issued key as the table holds it (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// The key's id, the middle part of `gk.<id>.<secret>`.
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// Its role.
    pub role: String,
    /// SHA-256 of the key.
    #[serde(skip)]
    pub sha256: [u8; 32],
    /// When it was issued.
    pub created_ms: i64,
    /// When it stops working, if it expires.
    pub expires_ms: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<String>,
    /// Set when the key was rotated: it works until then, beside its successor.
    pub overlap_until_ms: Option<i64>,
    /// When it last authenticated, to [`LAST_USED_GRANULARITY_MS`].
    pub last_used_ms: Option<i64>,
}

impl KeyRecord {
    /// Whether the key authenticates at `now`: not revoked, not expired, and
    /// not past the overlap of its rotation.
    pub fn live_at(&self, now: i64) -> bool {
        self.revoked_ms.is_none()
            && self.expires_ms.is_none_or(|t| now < t)
            && self.overlap_until_ms.is_none_or(|t| now < t)
    }

    /// Whether the key was rotated (it may still be in its overlap).
    pub fn rotated(&self) -> bool {
        self.overlap_until_ms.is_some()
    }

    /// What the key is at `now`: `live`, `overlap` (rotated, still
    /// working), `rotated` (past its overlap), `expired` or `revoked`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if self.expires_ms.is_some_and(|t| now >= t) {
            "expired"
        } else if self.overlap_until_ms.is_some_and(|t| now >= t) {
            "rotated"
        } else if self.rotated() {
            "overlap"
        } else {
            "live"
        }
    }

    /// The key as the API and the CLI show it: everything but a secret.
    pub fn to_json(&self, now: i64) -> serde_json::Value {
        json!({
            "id": self.id,
            "tenant": self.tenant,
            "role": self.role,
            "source": "issued",
            "state": self.state(now),
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "revoked_ms": self.revoked_ms,
            "rotated_from": self.rotated_from,
            "overlap_until_ms": self.overlap_until_ms,
            "last_used_ms": self.last_used_ms,
        })
    }
}

/// A key to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKey {
    /// Its id; unique among issued keys.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its role.
    pub role: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// When it expires, if it does.
    pub expires_ms: Option<i64>,
}

/// The outcome of [`SqliteStore::create_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issue {
    /// Issued.
    Created(KeyRecord),
    /// An issued key has this id already (live or not: ids are never reused).
    IdTaken,
    /// `max` keys are live already.
    Full {
        /// The bound.
        max: u32,
    },
}

/// The outcome of [`SqliteStore::rotate_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The old key as it is now (with its overlap) and its successor.
    Rotated {
        /// The rotated key.
        old: KeyRecord,
        /// Its successor.
        new: KeyRecord,
    },
    /// No issued key has this id.
    NotFound,
    /// The key no longer works, or was rotated already.
    NotLive(KeyRecord),
    /// The successor's id is taken.
    IdTaken,
    /// `max` keys are live already.
    Full {
        /// The bound.
        max: u32,
    },
}

/// The outcome of [`SqliteStore::revoke_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked now.
    Revoked(KeyRecord),
    /// No issued key has this id.
    NotFound,
    /// Revoked before; nothing changed.
    AlreadyRevoked(KeyRecord),
}

const KEY_COLUMNS: &str = "id, tenant, role, sha256, created_ms, expires_ms, revoked_ms, \
                           rotated_from, overlap_until_ms, last_used_ms";

fn read_key(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let sha: Vec<u8> = row.get(3)?;
    Ok(KeyRecord {
        id: row.get(0)?,
        tenant: row.get(1)?,
        role: row.get(2)?,
        // The CHECK keeps it 32 bytes; a short one reads as zeros, which
        // no key hashes to.
        sha256: sha.try_into().unwrap_or([0; 32]),
        created_ms: row.get(4)?,
        expires_ms: row.get(5)?,
        revoked_ms: row.get(6)?,
        rotated_from: row.get(7)?,
        overlap_until_ms: row.get(8)?,
        last_used_ms: row.get(9)?,
    })
}

fn load(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<KeyRecord>> {
    tx.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?
        .query_row(params![id], read_key)
        .optional()
}

fn live_count(tx: &Transaction<'_>, now: i64) -> rusqlite::Result<u64> {
    let n: i64 = tx
        .prepare_cached(
            "SELECT count(*) FROM api_keys WHERE revoked_ms IS NULL
               AND (expires_ms IS NULL OR expires_ms > ?1)
               AND (overlap_until_ms IS NULL OR overlap_until_ms > ?1)",
        )?
        .query_row(params![now], |row| row.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn insert(
    tx: &Transaction<'_>,
    new: &NewKey,
    rotated_from: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO api_keys (id, tenant, role, sha256, created_ms, expires_ms, rotated_from)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            new.id,
            new.tenant,
            new.role,
            &new.sha256[..],
            now,
            new.expires_ms,
            rotated_from
        ],
    )?;
    Ok(())
}

impl SqliteStore {
    /// Issues a key (`key.created`, naming `actor`), unless its id is taken
    /// or `max_live` keys are live.
    pub fn create_key(
        &self,
        new: &NewKey,
        actor: &str,
        max_live: u32,
        now: i64,
    ) -> Result<Issue, StoreError> {
        self.write("create key", |tx| {
            if load(tx, &new.id)?.is_some() {
                return Ok(Issue::IdTaken);
            }
            if live_count(tx, now)? >= u64::from(max_live) {
                return Ok(Issue::Full { max: max_live });
            }
            insert(tx, new, None, now)?;
            audit::append(
                tx,
                self.redactor(),
                NewEntry::new(
                    actor,
                    "key.created",
                    new.id.as_str(),
                    json!({"tenant": new.tenant, "role": new.role, "expires_ms": new.expires_ms}),
                ),
                now,
            )?;
            Ok(load(tx, &new.id)?.map_or(Issue::IdTaken, Issue::Created))
        })
    }

    /// Rotates key `id` (`key.rotated`): issues `successor` (its tenant and
    /// role are the old key's, whatever it says) and lets the old key work
    /// for `overlap_ms` more.
    pub fn rotate_key(
        &self,
        id: &str,
        successor: &NewKey,
        overlap_ms: i64,
        actor: &str,
        max_live: u32,
        now: i64,
    ) -> Result<Rotation, StoreError> {
        self.write("rotate key", |tx| {
            let Some(old) = load(tx, id)? else {
                return Ok(Rotation::NotFound);
            };
            if !old.live_at(now) || old.rotated() {
                return Ok(Rotation::NotLive(old));
            }
            if load(tx, &successor.id)?.is_some() {
                return Ok(Rotation::IdTaken);
            }
            if live_count(tx, now)? >= u64::from(max_live) {
                return Ok(Rotation::Full { max: max_live });
            }
            // The overlap never outlives the old key's own expiry.
            let until = old
                .expires_ms
                .map_or(now + overlap_ms, |t| t.min(now + overlap_ms));
            exec(
                tx,
                "UPDATE api_keys SET overlap_until_ms = ?2 WHERE id = ?1",
                params![id, until],
            )?;
            let new = NewKey {
                tenant: old.tenant.clone(),
                role: old.role.clone(),
                ..successor.clone()
            };
            insert(tx, &new, Some(id), now)?;
            audit::append(
                tx,
                self.redactor(),
                NewEntry::new(
                    actor,
                    "key.rotated",
                    id,
                    json!({
                        "tenant": old.tenant,
                        "role": old.role,
                        "successor": new.id,
                        "overlap_until_ms": until,
                    }),
                ),
                now,
            )?;
            match (load(tx, id)?, load(tx, &new.id)?) {
                (Some(old), Some(new)) => Ok(Rotation::Rotated { old, new }),
                _ => Ok(Rotation::NotFound),
            }
        })
    }

    /// Revokes key `id` at once (`key.revoked`), overlap or not.
    pub fn revoke_key(&self, id: &str, actor: &str, now: i64) -> Result<Revocation, StoreError> {
        self.write("revoke key", |tx| {
            let Some(key) = load(tx, id)? else {
                return Ok(Revocation::NotFound);
            };
            if key.revoked_ms.is_some() {
                return Ok(Revocation::AlreadyRevoked(key));
            }
            exec(
                tx,
                "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            audit::append(
                tx,
                self.redactor(),
                NewEntry::new(
                    actor,
                    "key.revoked",
                    id,
                    json!({"tenant": key.tenant, "role": key.role}),
                ),
                now,
            )?;
            Ok(load(tx, id)?.map_or(Revocation::NotFound, Revocation::Revoked))
        })
    }

    /// One issued key.
    pub fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.read("read key", |conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?
                .query_row(params![id], read_key)
                .optional()?)
        })
    }

    /// Issued keys, newest first, of one tenant or of all; at most `limit`
    /// (capped at [`MAX_KEY_PAGE`]).
    pub fn keys(&self, tenant: Option<&str>, limit: u32) -> Result<Vec<KeyRecord>, StoreError> {
        let limit = limit.min(MAX_KEY_PAGE);
        self.read("list keys", |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR tenant = ?1
                 ORDER BY created_ms DESC, id LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![tenant, limit], read_key)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The keys that authenticate at `now`, for the service's key cache; at
    /// most `max` (the live bound, which creation and rotation keep).
    pub fn live_keys(&self, now: i64, max: u32) -> Result<Vec<KeyRecord>, StoreError> {
        self.read("load live keys", |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_ms IS NULL
                   AND (expires_ms IS NULL OR expires_ms > ?1)
                   AND (overlap_until_ms IS NULL OR overlap_until_ms > ?1)
                 ORDER BY created_ms, id LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![now, max], read_key)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Records that key `id` authenticated at `now`.
    pub fn touch_key(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.write("touch key", |tx| {
            exec(
                tx,
                "UPDATE api_keys SET last_used_ms = max(coalesce(last_used_ms, 0), ?2) WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        })
    }
}
