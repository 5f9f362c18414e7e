//! The orchestrator's Redis state read with the harness's own commands,
//! against the key layout the orchestrator documents for outside readers
//! (`system/src/store/SCHEMA-REDIS.md`; the job and webhook-delivery keys,
//! which that document does not list yet, as `redis_store/jobs.rs` and
//! `redis_store/webhooks.rs` write them), into the same [`Database`] the
//! SQLite reader ([`super::db`]) fills, so that every check judges either
//! store alike. Nothing here runs the orchestrator's code: no release of
//! what a dead replica held, no lease reclaim, no takeover of an abandoned
//! key. A job still `running`, a reservation still `held`, a key still
//! `in_flight` are facts the checks see, and nothing is repaired or
//! written: the reader only scans and reads.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use redis::{Connection, RedisError};
use serde_json::{Map, Value};
use thiserror::Error;

use super::db::{
    AuditHead, AuditRow, BudgetRow, ChargeRow, Database, DeliveryRow, JobRow, JobState, KeyRow,
    KeyState, MAX_ROWS, ReservationRow, ReservationState,
};

/// The prefix the service writes under.
pub const PREFIX: &str = "orch";

/// The SQLite schema version whose facts the Redis layout carries. The
/// layout holds what version 4 holds and the [`Database`] reads: budgets,
/// reservations, idempotency keys, the ledger, jobs, the audit chain, and
/// the webhook deliveries that version 4 added. Version 3's `api_keys`
/// table has no Redis twin, but the [`Database`] does not read it either.
/// So the checks that look at the version (deliveries exist from 4 on)
/// judge Redis state as they judge a version 4 file.
const SCHEMA_VERSION: u32 = 4;

/// How long connecting and each command may take: the server runs on the
/// same machine and the service has stopped, so anything slower is a hung
/// server, not load.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The `COUNT` hint of each `SCAN`.
const SCAN_COUNT: u64 = 1000;

/// How many commands go in one pipeline (and how many list elements in one
/// `LRANGE`): large enough to save round trips, small enough that one
/// answer stays well within [`TIMEOUT`].
const BATCH: usize = 500;

/// The longest value an error quotes.
const QUOTED: usize = 64;

/// Why the Redis state could not be read. Every message names the server
/// (without credentials) and the key.
#[derive(Debug, Error)]
pub enum RedisEvidenceError {
    /// The URL does not parse, or the server did not answer within the
    /// deadline.
    #[error("{url}: cannot connect within {} s: {source}", TIMEOUT.as_secs())]
    Connect {
        /// The server.
        url: String,
        /// The client's error.
        source: RedisError,
    },
    /// A command failed or ran out of time (the key is the pattern for a
    /// `SCAN`, the first key for a pipeline).
    #[error("{url}: {command} {key} failed: {source}")]
    Command {
        /// The server.
        url: String,
        /// The command.
        command: &'static str,
        /// What it read.
        key: String,
        /// The client's error.
        source: RedisError,
    },
    /// A field the layout requires is absent. For a list element the key
    /// carries its index, as in `orch:charges[3]`.
    #[error("{url}: {key}: no {field}, which the layout requires")]
    Missing {
        /// The server.
        url: String,
        /// The key (and element).
        key: String,
        /// The field.
        field: String,
    },
    /// A value the layout does not allow: a state it does not name, a
    /// non-integer where it documents an integer, text that is not UTF-8, a
    /// key name it does not form. For a list element the key carries its
    /// index, as in `orch:charges[3]`.
    #[error(
        "{url}: {key}: {field} is `{value}`, which the layout does not allow (it needs {expected})"
    )]
    BadValue {
        /// The server.
        url: String,
        /// The key (and element).
        key: String,
        /// The field (`key name` for the key itself).
        field: String,
        /// The value found, cut to 64 characters.
        value: String,
        /// What the layout allows there.
        expected: &'static str,
    },
    /// A JSON entry holds a field the layout does not name: a later
    /// orchestrator may give it a meaning this reader does not know.
    #[error(
        "{url}: {key}: field {field} is not in the layout; update the harness with the orchestrator"
    )]
    UnknownField {
        /// The server.
        url: String,
        /// The key and element.
        key: String,
        /// The field.
        field: String,
    },
    /// More keys or elements of one kind than any run writes.
    #[error("{url}: {what} holds more than {MAX_ROWS} entries")]
    TooMany {
        /// The server.
        url: String,
        /// The pattern or key.
        what: String,
    },
    /// A `SCAN` did not come back to cursor 0 within the calls the number
    /// of keys allows.
    #[error("{url}: the scan of {pattern} did not finish within {calls} calls")]
    ScanUnfinished {
        /// The server.
        url: String,
        /// The pattern.
        pattern: String,
        /// The calls made.
        calls: u64,
    },
    /// The blocking task that reads was cancelled or panicked.
    #[error("{url}: the reading task failed: {reason}")]
    Task {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Reads the state under `prefix` at `url` with the harness's own commands,
/// after the service stopped (so plain reads see one state).
pub async fn read(url: &str, prefix: &str) -> Result<Database, String> {
    let shown = shown_url(url);
    let (owned_url, owned_prefix) = (url.to_owned(), prefix.to_owned());
    match tokio::task::spawn_blocking(move || read_blocking(&owned_url, &owned_prefix)).await {
        Ok(read) => read.map_err(|e| e.to_string()),
        Err(e) => Err(RedisEvidenceError::Task {
            url: shown,
            reason: e.to_string(),
        }
        .to_string()),
    }
}

/// [`read`], on the calling thread.
fn read_blocking(url: &str, prefix: &str) -> Result<Database, RedisEvidenceError> {
    let shown = shown_url(url);
    let connect = |source| RedisEvidenceError::Connect {
        url: shown.clone(),
        source,
    };
    let client = redis::Client::open(url).map_err(connect)?;
    let con = client
        .get_connection_with_timeout(TIMEOUT)
        .map_err(connect)?;
    con.set_read_timeout(Some(TIMEOUT)).map_err(connect)?;
    con.set_write_timeout(Some(TIMEOUT)).map_err(connect)?;
    let mut reader = Reader {
        url: shown.clone(),
        prefix: prefix.to_owned(),
        con,
        dbsize: 0,
    };
    reader.dbsize = reader.query(&redis::cmd("DBSIZE"), "DBSIZE", "")?;
    reader.read()
}

/// A hash as `HGETALL` returns it.
type Fields = HashMap<String, Vec<u8>>;

/// One connection's reads under one prefix.
struct Reader {
    /// The server, without credentials.
    url: String,
    prefix: String,
    con: Connection,
    /// Keys in the database, which bounds the calls of a `SCAN`.
    dbsize: u64,
}

impl Reader {
    fn read(&mut self) -> Result<Database, RedisEvidenceError> {
        let budgets = self.budgets()?;
        let reservations = self.reservations()?;
        let keys = self.idempotency_keys()?;
        let charges = self.charges()?;
        let jobs = self.jobs()?;
        let deliveries = self.deliveries()?;
        let (audit, audit_head) = self.audit()?;
        Ok(Database {
            schema_version: SCHEMA_VERSION,
            budgets,
            reservations,
            keys,
            charges,
            jobs,
            audit,
            audit_head,
            deliveries,
        })
    }

    /// `P:budget:{tenant}`, by tenant (escaped in the key).
    fn budgets(&mut self) -> Result<Vec<BudgetRow>, RedisEvidenceError> {
        let mut rows = Vec::new();
        for (key, fields) in self.hashes("budget:")? {
            let tenant = self.unescape(&key, self.rest(&key, "budget:"))?;
            rows.push(BudgetRow {
                tenant,
                limit_tokens: self.count(&key, &fields, "limit")?,
                used_tokens: self.count(&key, &fields, "used")?,
                reserved_tokens: self.count(&key, &fields, "reserved")?,
            });
        }
        rows.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        Ok(rows)
    }

    /// `P:reservation:{id}`, by id.
    fn reservations(&mut self) -> Result<Vec<ReservationRow>, RedisEvidenceError> {
        let mut rows = Vec::new();
        for (key, fields) in self.hashes("reservation:")? {
            let id = self.rest(&key, "reservation:");
            let id = id.parse::<i64>().map_err(|_| {
                self.bad(&key, "key name", id.as_bytes(), "a decimal reservation id")
            })?;
            rows.push(ReservationRow {
                id,
                tenant: self.text(&key, &fields, "tenant")?,
                task_id: self.text(&key, &fields, "task_id")?,
                idempotency_key: self.optional_text(&key, &fields, "key")?,
                tokens: self.count(&key, &fields, "tokens")?,
                state: self.state(&key, &fields, &RESERVATION_STATES)?,
            });
        }
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// `P:idem:{tenant}:{key}`, by tenant then key.
    fn idempotency_keys(&mut self) -> Result<Vec<KeyRow>, RedisEvidenceError> {
        let mut rows = Vec::new();
        for (name, fields) in self.hashes("idem:")? {
            let rest = self.rest(&name, "idem:");
            // Both parts are escaped, so neither holds a `:`: the one
            // separator splits them.
            let Some((tenant, key)) = rest.split_once(':').filter(|(_, k)| !k.contains(':')) else {
                return Err(self.bad(
                    &name,
                    "key name",
                    rest.as_bytes(),
                    "an escaped tenant and key, separated by one `:`",
                ));
            };
            let tenant = self.unescape(&name, tenant)?;
            let key = self.unescape(&name, key)?;
            rows.push(KeyRow {
                tenant,
                key,
                reservation_id: self.int(&name, &fields, "reservation")?,
                state: self.state(&name, &fields, &KEY_STATES)?,
            });
        }
        rows.sort_by(|a, b| (&a.tenant, &a.key).cmp(&(&b.tenant, &b.key)));
        Ok(rows)
    }

    /// `P:charges`, in ledger order (the list's).
    fn charges(&mut self) -> Result<Vec<ChargeRow>, RedisEvidenceError> {
        let key = self.key("charges");
        let length = self.query(redis::cmd("LLEN").arg(&key), "LLEN", &key)?;
        let mut rows = Vec::new();
        for (index, element) in self.list(&key, length)?.iter().enumerate() {
            let at = format!("{key}[{index}]");
            let object = self.object(&at, element, &CHARGE_FIELDS)?;
            // Validated although the row does not keep it: a non-integer
            // time is a ledger the layout does not describe.
            self.json_int(&at, &object, "charged_ms")?;
            rows.push(ChargeRow {
                tenant: self.json_text(&at, &object, "tenant")?,
                reservation_id: self.json_int(&at, &object, "reservation")?,
                task_id: self.json_text(&at, &object, "task_id")?,
                idempotency_key: match object.get("idempotency_key") {
                    Some(Value::Null) | None => None,
                    Some(_) => Some(self.json_text(&at, &object, "idempotency_key")?),
                },
                tokens: self.json_count(&at, &object, "tokens")?,
                overage_tokens: self.json_count(&at, &object, "overage_tokens")?,
            });
        }
        Ok(rows)
    }

    /// `P:job:{id}`, in submission order (`num`).
    fn jobs(&mut self) -> Result<Vec<JobRow>, RedisEvidenceError> {
        let names = JobState::ALL.map(|s| (s.as_str(), s));
        let mut rows = Vec::new();
        for (key, fields) in self.hashes("job:")? {
            let id = self.named_id(&key, "job:", &fields)?;
            rows.push((
                self.int(&key, &fields, "num")?,
                JobRow {
                    id,
                    tenant: self.text(&key, &fields, "tenant")?,
                    state: self.state(&key, &fields, &names)?,
                    attempts: self.count(&key, &fields, "attempts")?,
                    max_attempts: self.count(&key, &fields, "max_attempts")?,
                    last_error: self.optional_text(&key, &fields, "last_error")?,
                },
            ));
        }
        rows.sort_by_key(|(num, _)| *num);
        Ok(rows.into_iter().map(|(_, row)| row).collect())
    }

    /// `P:delivery:{id}`, by `created_ms` then id, as SQLite's `ORDER BY
    /// created_ms, id` (db.rs).
    fn deliveries(&mut self) -> Result<Vec<DeliveryRow>, RedisEvidenceError> {
        let mut rows = Vec::new();
        for (key, fields) in self.hashes("delivery:")? {
            let id = self.named_id(&key, "delivery:", &fields)?;
            let state = self.state(&key, &fields, &DELIVERY_STATES)?;
            rows.push((
                self.int(&key, &fields, "created_ms")?,
                DeliveryRow {
                    id,
                    job_id: self.text(&key, &fields, "job_id")?,
                    event: self.text(&key, &fields, "event")?,
                    payload: self.text(&key, &fields, "payload")?,
                    state: state.to_owned(),
                    attempts: self.count(&key, &fields, "attempts")?,
                    last_error: self.optional_text(&key, &fields, "last_error")?,
                },
            ));
        }
        rows.sort_by(|(a_ms, a), (b_ms, b)| (a_ms, &a.id).cmp(&(b_ms, &b.id)));
        Ok(rows.into_iter().map(|(_, row)| row).collect())
    }

    /// `P:audit` and `P:audit:head`: the list's length and the head in one
    /// `MULTI`, as SCHEMA-REDIS.md says, then that many elements (the list
    /// only grows at its end, so they are the ones the head covers).
    fn audit(&mut self) -> Result<(Vec<AuditRow>, Option<AuditHead>), RedisEvidenceError> {
        let (list, head_key) = (self.key("audit"), self.key("audit:head"));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("LLEN")
            .arg(&list)
            .cmd("HGETALL")
            .arg(&head_key);
        let (length, head): (u64, Fields) = pipe
            .query(&mut self.con)
            .map_err(|source| self.failed("MULTI LLEN HGETALL", &list, source))?;
        let mut rows = Vec::new();
        for (index, element) in self.list(&list, length)?.iter().enumerate() {
            let at = format!("{list}[{index}]");
            let object = self.object(&at, element, &AUDIT_FIELDS)?;
            rows.push(AuditRow {
                seq: self.json_int(&at, &object, "seq")?,
                ts_ms: self.json_int(&at, &object, "ts_ms")?,
                actor: self.json_text(&at, &object, "actor")?.into_bytes(),
                action: self.json_text(&at, &object, "action")?.into_bytes(),
                subject: self.json_text(&at, &object, "subject")?.into_bytes(),
                // The canonical text that was hashed, as stored.
                details: self.json_text(&at, &object, "details")?.into_bytes(),
                prev_hash: self.hash(
                    &at,
                    "prev_hash",
                    &self.json_text(&at, &object, "prev_hash")?,
                )?,
                hash: self.hash(&at, "hash", &self.json_text(&at, &object, "hash")?)?,
            });
        }
        let head = if head.is_empty() {
            None
        } else {
            let hash = self.text(&head_key, &head, "hash")?;
            Some(AuditHead {
                last_seq: self.int(&head_key, &head, "seq")?,
                last_hash: self.hash(&head_key, "hash", &hash)?,
            })
        };
        Ok((rows, head))
    }

    /// `P:{name}`.
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// What follows `P:{kind}` in `key` (which a scan for it returned).
    fn rest<'k>(&self, key: &'k str, kind: &str) -> &'k str {
        key.get(self.prefix.len() + 1 + kind.len()..)
            .unwrap_or_default()
    }

    /// The id a `P:{kind}{escaped id}` key names, which must be its hash's
    /// `id` field too.
    fn named_id(
        &self,
        key: &str,
        kind: &str,
        fields: &Fields,
    ) -> Result<String, RedisEvidenceError> {
        let named = self.unescape(key, self.rest(key, kind))?;
        let id = self.text(key, fields, "id")?;
        if id != named {
            return Err(self.bad(key, "id", id.as_bytes(), "the id the key names"));
        }
        Ok(id)
    }

    /// Every hash named `P:{kind}*`, with its fields, by key name. A key
    /// that is gone by the time it is read (or an empty hash, which Redis
    /// does not keep) is skipped: it holds nothing.
    fn hashes(&mut self, kind: &str) -> Result<Vec<(String, Fields)>, RedisEvidenceError> {
        let names = self.scan(kind)?;
        let mut out = Vec::with_capacity(names.len());
        for batch in names.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for name in batch {
                pipe.cmd("HGETALL").arg(name);
            }
            let first = batch.first().map(String::as_str).unwrap_or_default();
            let read: Vec<Fields> = pipe
                .query(&mut self.con)
                .map_err(|source| self.failed("HGETALL", first, source))?;
            out.extend(
                batch
                    .iter()
                    .cloned()
                    .zip(read)
                    .filter(|(_, fields)| !fields.is_empty()),
            );
        }
        Ok(out)
    }

    /// Every key matching `P:{kind}*` (the prefix taken literally), sorted,
    /// each once (a `SCAN` may return a key twice), at most [`MAX_ROWS`].
    fn scan(&mut self, kind: &str) -> Result<Vec<String>, RedisEvidenceError> {
        let pattern = format!("{}:{}*", glob_escape(&self.prefix), glob_escape(kind));
        // A full iteration takes about one call per COUNT keys, plus calls
        // over empty buckets (at most ten times COUNT each) and twice the
        // buckets while a table is rehashed; this bound is several times
        // that, so only a server that never finishes reaches it.
        let max_calls = 8 * (self.dbsize / SCAN_COUNT + 1) + 64;
        let mut found = BTreeSet::new();
        let mut cursor = 0u64;
        for _ in 0..max_calls {
            let (next, keys): (u64, Vec<String>) = self.query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT),
                "SCAN",
                &pattern,
            )?;
            found.extend(keys);
            if found.len() > MAX_ROWS {
                return Err(RedisEvidenceError::TooMany {
                    url: self.url.clone(),
                    what: pattern,
                });
            }
            if next == 0 {
                return Ok(found.into_iter().collect());
            }
            cursor = next;
        }
        Err(RedisEvidenceError::ScanUnfinished {
            url: self.url.clone(),
            pattern,
            calls: max_calls,
        })
    }

    /// The first `length` elements of the list `key`, in pages.
    fn list(&mut self, key: &str, length: u64) -> Result<Vec<Vec<u8>>, RedisEvidenceError> {
        if length > MAX_ROWS as u64 {
            return Err(RedisEvidenceError::TooMany {
                url: self.url.clone(),
                what: key.to_owned(),
            });
        }
        let mut out = Vec::new();
        let page = BATCH as u64;
        let mut start = 0;
        // At most length / page + 1 pages: every page but the last is full,
        // and a list that ends early (it cannot, the service stopped) ends
        // the loop too.
        while start < length {
            let end = (start + page).min(length) - 1;
            let elements: Vec<Vec<u8>> = self.query(
                redis::cmd("LRANGE").arg(key).arg(start).arg(end),
                "LRANGE",
                key,
            )?;
            let complete = elements.len() as u64 == end - start + 1;
            out.extend(elements);
            if !complete {
                break;
            }
            start = end + 1;
        }
        Ok(out)
    }

    /// Runs one command, its failure naming `command` and `key`.
    fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
        command: &'static str,
        key: &str,
    ) -> Result<T, RedisEvidenceError> {
        cmd.query(&mut self.con)
            .map_err(|source| self.failed(command, key, source))
    }

    fn failed(&self, command: &'static str, key: &str, source: RedisError) -> RedisEvidenceError {
        RedisEvidenceError::Command {
            url: self.url.clone(),
            command,
            key: key.to_owned(),
            source,
        }
    }

    fn bad(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        expected: &'static str,
    ) -> RedisEvidenceError {
        RedisEvidenceError::BadValue {
            url: self.url.clone(),
            key: key.to_owned(),
            field: field.to_owned(),
            value: String::from_utf8_lossy(value)
                .chars()
                .take(QUOTED)
                .collect(),
            expected,
        }
    }

    fn missing(&self, key: &str, field: &str) -> RedisEvidenceError {
        RedisEvidenceError::Missing {
            url: self.url.clone(),
            key: key.to_owned(),
            field: field.to_owned(),
        }
    }

    /// A text field, which must be there.
    fn text(&self, key: &str, fields: &Fields, field: &str) -> Result<String, RedisEvidenceError> {
        self.optional_text(key, fields, field)?
            .ok_or_else(|| self.missing(key, field))
    }

    /// A text field that may be absent.
    fn optional_text(
        &self,
        key: &str,
        fields: &Fields,
        field: &str,
    ) -> Result<Option<String>, RedisEvidenceError> {
        fields
            .get(field)
            .map(|value| {
                String::from_utf8(value.clone())
                    .map_err(|_| self.bad(key, field, value, "UTF-8 text"))
            })
            .transpose()
    }

    /// An integer field, which must be there: decimal, as Redis writes
    /// `HSET` and `HINCRBY` values.
    fn int(&self, key: &str, fields: &Fields, field: &str) -> Result<i64, RedisEvidenceError> {
        let value = fields.get(field).ok_or_else(|| self.missing(key, field))?;
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.bad(key, field, value, "a decimal integer"))
    }

    /// A token amount or count field: an integer, never negative.
    fn count(&self, key: &str, fields: &Fields, field: &str) -> Result<u64, RedisEvidenceError> {
        let value = self.int(key, fields, field)?;
        u64::try_from(value).map_err(|_| {
            self.bad(
                key,
                field,
                value.to_string().as_bytes(),
                "a nonnegative integer",
            )
        })
    }

    /// A `state` field among the names the layout gives it.
    fn state<S: Copy>(
        &self,
        key: &str,
        fields: &Fields,
        names: &[(&'static str, S)],
    ) -> Result<S, RedisEvidenceError> {
        let value = fields
            .get("state")
            .ok_or_else(|| self.missing(key, "state"))?;
        names
            .iter()
            .find(|(name, _)| name.as_bytes() == value.as_slice())
            .map(|(_, state)| *state)
            .ok_or_else(|| self.bad(key, "state", value, "a state the layout names"))
    }

    /// A list element that must be a JSON object with exactly the `known`
    /// fields (the first absent one, in the layout's order, is named).
    fn object(
        &self,
        at: &str,
        element: &[u8],
        known: &[&str],
    ) -> Result<Map<String, Value>, RedisEvidenceError> {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(element) else {
            return Err(self.bad(at, "the element", element, "a JSON object"));
        };
        if let Some(field) = object.keys().find(|f| !known.contains(&f.as_str())) {
            return Err(RedisEvidenceError::UnknownField {
                url: self.url.clone(),
                key: at.to_owned(),
                field: field.clone(),
            });
        }
        if let Some(field) = known.iter().find(|f| !object.contains_key(**f)) {
            return Err(self.missing(at, field));
        }
        Ok(object)
    }

    fn json_field<'o>(
        &self,
        at: &str,
        object: &'o Map<String, Value>,
        field: &str,
    ) -> Result<&'o Value, RedisEvidenceError> {
        object.get(field).ok_or_else(|| self.missing(at, field))
    }

    fn json_text(
        &self,
        at: &str,
        object: &Map<String, Value>,
        field: &str,
    ) -> Result<String, RedisEvidenceError> {
        match self.json_field(at, object, field)? {
            Value::String(text) => Ok(text.clone()),
            other => Err(self.bad(at, field, other.to_string().as_bytes(), "a JSON string")),
        }
    }

    fn json_int(
        &self,
        at: &str,
        object: &Map<String, Value>,
        field: &str,
    ) -> Result<i64, RedisEvidenceError> {
        let value = self.json_field(at, object, field)?;
        value
            .as_i64()
            .ok_or_else(|| self.bad(at, field, value.to_string().as_bytes(), "a JSON integer"))
    }

    fn json_count(
        &self,
        at: &str,
        object: &Map<String, Value>,
        field: &str,
    ) -> Result<u64, RedisEvidenceError> {
        let value = self.json_field(at, object, field)?;
        // The store writes these as u64 but SQLite keeps them as i64; one
        // beyond i64 is no amount either store can hold.
        value
            .as_u64()
            .filter(|v| i64::try_from(*v).is_ok())
            .ok_or_else(|| {
                self.bad(
                    at,
                    field,
                    value.to_string().as_bytes(),
                    "a nonnegative JSON integer",
                )
            })
    }

    /// A hash as the layout writes it, 64 hex digits, decoded.
    fn hash(&self, at: &str, field: &str, text: &str) -> Result<Vec<u8>, RedisEvidenceError> {
        hex::decode(text)
            .ok()
            .filter(|bytes| bytes.len() == 32)
            .ok_or_else(|| self.bad(at, field, text.as_bytes(), "64 hex digits"))
    }

    /// A name part of `key` with the layout's escaping undone: `%25` is
    /// `%`, `%3A` is `:`, and no other `%` or `:` may appear (the writer
    /// escapes every one).
    fn unescape(&self, key: &str, part: &str) -> Result<String, RedisEvidenceError> {
        let bad = || {
            self.bad(
                key,
                "key name",
                part.as_bytes(),
                "`%` written as `%25` and `:` as `%3A`",
            )
        };
        let mut out = String::with_capacity(part.len());
        let mut rest = part;
        // Each turn consumes at least one character, so the loop ends.
        while let Some(at) = rest.find(['%', ':']) {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("%25") {
                out.push('%');
            } else if tail.starts_with("%3A") {
                out.push(':');
            } else {
                return Err(bad());
            }
            rest = &tail[3..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// `text` for a `SCAN MATCH` pattern that matches it literally: the glob
/// characters escaped, so that a prefix like `a*` does not read `ab`'s keys.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `url` without its user name and password, for errors.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "(unparsable redis url)".to_owned(),
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
/// A delivery's states, kept as text in [`DeliveryRow`] as db.rs keeps them.
const DELIVERY_STATES: [(&str, &str); 4] = [
    ("pending", "pending"),
    ("delivered", "delivered"),
    ("failed", "failed"),
    ("refused", "refused"),
];

/// The fields of a `P:charges` element.
const CHARGE_FIELDS: [&str; 7] = [
    "tenant",
    "reservation",
    "task_id",
    "idempotency_key",
    "tokens",
    "overage_tokens",
    "charged_ms",
];
/// The fields of a `P:audit` element.
const AUDIT_FIELDS: [&str; 8] = [
    "seq",
    "ts_ms",
    "actor",
    "action",
    "subject",
    "details",
    "prev_hash",
    "hash",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d");
    }
}
