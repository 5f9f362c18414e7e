//! The orchestrator's state in Redis, shared by several replicas: budgets,
//! reservations, idempotency records, the ledger, the audit chain, durable
//! jobs (`jobs.rs`) and their webhook deliveries (`webhooks.rs`), under the
//! key layout that `SCHEMA-REDIS.md` documents for outside readers.
//!
//! # Atomicity
//!
//! Every operation is one optimistic transaction: `WATCH` the keys it reads,
//! decide in Rust exactly as the SQLite store does, then `MULTI`/`EXEC` the
//! writes. If another client changed a watched key in between, `EXEC` writes
//! nothing and the operation starts again (at most [`MAX_ATTEMPTS`] times,
//! with a jittered pause). Lua scripts would save round trips, but the audit
//! chain needs SHA-256, which Redis's Lua lacks; one mechanism for every
//! operation keeps the logic in one language and beside its SQLite twin.
//!
//! Audited writes all watch the chain's head, so they serialise; within a
//! process they also take a local lock, so that only other replicas can
//! make them retry.
//!
//! An operation that reads one key to find another (an index, then the job
//! it names) may see them disagree when another client wrote in between:
//! it then answers [`Attempt::Inconsistent`], and an empty transaction on
//! what it watched tells a torn read (start again) from keys that really
//! disagree (fail, naming the key). Reads of several keys that must agree
//! end with [`snapshot`], an empty transaction that commits only if nothing
//! they watched changed.
//!
//! # Replicas and recovery
//!
//! Each store is an *instance* with a random id. It writes
//! `{prefix}:instance:{id}` with a time to live of `instance_ttl` and
//! refreshes it five times per period from a thread of its own; every reservation names its
//! instance and is listed in `{prefix}:held:{id}`. A replica whose key has
//! expired is dead: any other replica (at open and on every heartbeat)
//! releases what it held, as SQLite's open does for the previous process.
//! Dropping a store deletes its instance key, so a successor recovers at
//! once.
//!
//! # Failures
//!
//! Connecting and every command have a deadline (`redis_timeout`): a lost
//! link makes an operation fail with [`StoreError::Redis`] within it, and a
//! connection that failed is never reused.

mod audit;
mod jobs;
mod rate;
mod tasks;
mod webhooks;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use redis::{Connection, ConnectionLike, Pipeline, RedisError};

pub use rate::RateTaken;

use super::{PendingReleases, Recovery, StoreError, StoreOptions, millis, now_ms, to_db};

/// The prefix of every key the service writes, unless a caller names another
/// (tests do, to share one server).
pub const REDIS_PREFIX: &str = "orch";

/// How many times an optimistic transaction is tried before it fails as
/// contended.
const MAX_ATTEMPTS: u32 = 32;

/// The most idle connections a store keeps; more are opened under load and
/// closed after use.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// The longest pause between two optimistic attempts.
const MAX_RETRY_PAUSE_MS: u64 = 20;

/// The Redis store. Clones share one pool of connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server, as logs show it (without credentials).
    url: String,
    client: redis::Client,
    keys: Keys,
    /// This instance's id, random per open.
    instance: String,
    options: StoreOptions,
    idle: Mutex<Vec<Connection>>,
    recovery: OnceLock<Recovery>,
    /// Optimistic transactions that had to start again.
    contended: AtomicU64,
    pending_releases: PendingReleases,
    /// Held by audited writes, so that this process's own writers do not
    /// make each other retry on the chain's head.
    audit_lock: Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A clean stop says so at once, so that another replica releases
        // whatever this one still held without waiting for the time to live.
        if let Ok(mut con) = connect(&self.client, self.options.redis_timeout) {
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(self.keys.instance(&self.instance))
                .query(&mut con);
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.keys.prefix)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

/// The documented key layout (`SCHEMA-REDIS.md`), one function per key.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn budget(&self, tenant: &str) -> String {
        format!("{}:budget:{}", self.prefix, escape(tenant))
    }
    fn tenants(&self) -> String {
        format!("{}:tenants", self.prefix)
    }
    fn reservation_seq(&self) -> String {
        format!("{}:seq:reservation", self.prefix)
    }
    fn reservation(&self, id: i64) -> String {
        format!("{}:reservation:{}", self.prefix, id)
    }
    fn held(&self, instance: &str) -> String {
        format!("{}:held:{}", self.prefix, instance)
    }
    fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }
    fn instance(&self, instance: &str) -> String {
        format!("{}:instance:{}", self.prefix, instance)
    }
    /// Tenant and key are escaped (`%` and `:`), so that no two pairs share
    /// a Redis key.
    fn idempotency(&self, tenant: &str, key: &str) -> String {
        format!("{}:idem:{}:{}", self.prefix, escape(tenant), escape(key))
    }
    fn charges(&self) -> String {
        format!("{}:charges", self.prefix)
    }
    fn charged(&self) -> String {
        format!("{}:charged", self.prefix)
    }
    fn audit(&self) -> String {
        format!("{}:audit", self.prefix)
    }
    fn audit_head(&self) -> String {
        format!("{}:audit:head", self.prefix)
    }
    fn probe(&self) -> String {
        format!("{}:probe", self.prefix)
    }
    /// An API key's rate limit (its id escaped).
    fn rate(&self, key_id: &str) -> String {
        format!("{}:rate:{}", self.prefix, escape(key_id))
    }
    /// The counter that numbers jobs in submission order.
    fn job_seq(&self) -> String {
        format!("{}:seq:job", self.prefix)
    }
    fn job(&self, id: &str) -> String {
        format!("{}:job:{}", self.prefix, escape(id))
    }
    /// A keyed submission's job id; tenant and key escaped as in
    /// [`Keys::idempotency`].
    fn job_idempotency(&self, tenant: &str, key: &str) -> String {
        format!(
            "{}:jobs:idem:{}:{}",
            self.prefix,
            escape(tenant),
            escape(key)
        )
    }
    /// Every tenant's jobs in one state (`queued`, `running`, `succeeded`,
    /// `dead`).
    fn jobs_in(&self, state: crate::store::JobState) -> String {
        format!("{}:jobs:{}", self.prefix, state.as_str())
    }
    fn tenant_jobs(&self, tenant: &str) -> String {
        format!("{}:jobs:tenant:{}", self.prefix, escape(tenant))
    }
    fn tenant_jobs_in(&self, tenant: &str, state: crate::store::JobState) -> String {
        format!(
            "{}:jobs:tenant:{}:{}",
            self.prefix,
            escape(tenant),
            state.as_str()
        )
    }
    /// A tenant's dead-letter queue.
    fn dead_letters(&self, tenant: &str) -> String {
        format!("{}:jobs:dlq:{}", self.prefix, escape(tenant))
    }
    fn delivery(&self, id: &str) -> String {
        format!("{}:delivery:{}", self.prefix, escape(id))
    }
    fn deliveries_due(&self) -> String {
        format!("{}:deliveries:due", self.prefix)
    }
    fn job_deliveries(&self, job_id: &str) -> String {
        format!("{}:deliveries:job:{}", self.prefix, escape(job_id))
    }
    fn pending_deliveries(&self, tenant: &str) -> String {
        format!("{}:deliveries:pending:{}", self.prefix, escape(tenant))
    }
}

/// `%` as `%25` and `:` as `%3A`.
fn escape(part: &str) -> String {
    part.replace('%', "%25").replace(':', "%3A")
}

/// A failure inside an operation: Redis's, or the store's own decision.
pub(super) enum Fault {
    Redis(RedisError),
    Store(StoreError),
}

impl From<RedisError> for Fault {
    fn from(error: RedisError) -> Self {
        Fault::Redis(error)
    }
}

impl From<StoreError> for Fault {
    fn from(error: StoreError) -> Self {
        Fault::Store(error)
    }
}

/// What one optimistic attempt decided.
pub(super) enum Attempt<T> {
    /// Nothing to write: the answer stands as read.
    Done(T),
    /// Write this `MULTI` pipeline; if it commits, the answer is `T`.
    Commit(Pipeline, T),
    /// What was read does not fit together (an index names a job in another
    /// state, say). Either another client wrote between two reads, and the
    /// attempt starts again, or the keys really disagree, and the operation
    /// fails with this error: an empty transaction on the watched keys tells
    /// which.
    Inconsistent(StoreError),
}

/// An attempt that only read: its empty transaction commits only if no
/// watched key changed since it was watched, so that reads of several keys
/// are one snapshot (else the reads are made again).
pub(super) fn snapshot<T>(value: T) -> Attempt<T> {
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("PING").ignore();
    Attempt::Commit(pipe, value)
}

/// A hash as `HGETALL` returns it.
pub(super) type Fields = HashMap<String, Vec<u8>>;

impl RedisStore {
    /// Connects to the server at `url`, registers this instance, releases
    /// what dead instances held and applies the configured limits to the
    /// tenants the server knows. Every key starts with `prefix`
    /// ([`REDIS_PREFIX`] for the service).
    pub fn open(url: &str, prefix: &str, options: &StoreOptions) -> Result<RedisStore, StoreError> {
        let shown = shown_url(url);
        let client = redis::Client::open(url).map_err(|source| StoreError::Redis {
            url: shown.clone(),
            operation: "open",
            source,
        })?;
        let store = RedisStore {
            inner: Arc::new(Inner {
                url: shown,
                client,
                keys: Keys {
                    prefix: prefix.to_owned(),
                },
                instance: uuid::Uuid::new_v4().simple().to_string(),
                options: options.clone(),
                idle: Mutex::new(Vec::new()),
                recovery: OnceLock::new(),
                contended: AtomicU64::new(0),
                pending_releases: PendingReleases::default(),
                audit_lock: Mutex::new(()),
            }),
        };
        store.heartbeat()?;
        store.start_audit_chain()?;
        let mut recovery = store.recover_dead()?;
        recovery.clamped_limits = store.apply_limits()?;
        if recovery != Recovery::default() {
            tracing::warn!(
                url = %store.inner.url,
                released_reservations = recovery.released_reservations,
                released_tokens = recovery.released_tokens,
                abandoned_keys = recovery.abandoned_keys,
                clamped_limits = recovery.clamped_limits,
                "store recovered state left by dead replicas"
            );
        }
        store.inner.recovery.get_or_init(|| recovery);
        spawn_liveness(Arc::downgrade(&store.inner), options.instance_ttl);
        Ok(store)
    }

    /// The server, without credentials.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// This instance's id, as reservations name it.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// What open cleaned up after dead replicas.
    pub fn recovery(&self) -> Recovery {
        self.inner.recovery.get().copied().unwrap_or_default()
    }

    /// How many optimistic transactions started again because another client
    /// changed what they read.
    pub fn busy_retries(&self) -> u64 {
        self.inner.contended.load(Ordering::Relaxed)
    }

    /// `PING`, for readiness.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.with_connection("probe", |con| {
            redis::cmd("PING").query::<String>(con)?;
            Ok(())
        })
    }

    /// One small write, for readiness: Redis refuses writes when it cannot
    /// persist them (`stop-writes-on-bgsave-error`) or is out of memory.
    pub fn probe_writes(&self) -> Result<(), StoreError> {
        self.with_connection("probe writes", |con| {
            redis::cmd("SET")
                .arg(self.inner.keys.probe())
                .arg(now_ms())
                .arg("PX")
                .arg(60_000)
                .exec(con)?;
            Ok(())
        })
    }

    /// The error of an operation this backend does not hold.
    pub(crate) fn unsupported(&self, operation: &'static str) -> StoreError {
        StoreError::Unsupported {
            url: self.inner.url.clone(),
            operation,
        }
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    fn redactor(&self) -> &crate::pii::Redactor {
        &self.inner.options.redactor
    }

    fn malformed(&self, key: &str, message: impl Into<String>) -> StoreError {
        StoreError::Malformed {
            url: self.inner.url.clone(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// Runs `work` on a pooled connection. A connection whose command failed
    /// at the transport is dropped, not returned: its state is unknown.
    fn with_connection<T>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&mut Connection) -> Result<T, Fault>,
    ) -> Result<T, StoreError> {
        let redis_error = |source| StoreError::Redis {
            url: self.inner.url.clone(),
            operation,
            source,
        };
        let pooled = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut con = match pooled {
            Some(con) => con,
            None => connect(&self.inner.client, self.inner.options.redis_timeout)
                .map_err(redis_error)?,
        };
        let result = work(&mut con);
        let broken = matches!(&result, Err(Fault::Redis(e))
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error());
        if !broken && con.is_open() {
            let mut idle = self
                .inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE_CONNECTIONS {
                idle.push(con);
            }
        }
        result.map_err(|fault| match fault {
            Fault::Redis(source) => redis_error(source),
            Fault::Store(error) => error,
        })
    }

    /// Runs `attempt` as one optimistic transaction: it `WATCH`es what it
    /// reads and returns the writes; they are applied with `MULTI`/`EXEC`,
    /// and the whole attempt is made again when a watched key changed.
    fn optimistic<T>(
        &self,
        operation: &'static str,
        mut attempt: impl FnMut(&mut Connection) -> Result<Attempt<T>, Fault>,
    ) -> Result<T, StoreError> {
        self.with_connection(operation, |con| {
            for number in 1..=MAX_ATTEMPTS {
                match attempt(con) {
                    Ok(Attempt::Done(value)) => {
                        redis::cmd("UNWATCH").exec(con)?;
                        return Ok(value);
                    }
                    Ok(Attempt::Commit(pipe, value)) => {
                        let committed: Option<()> = pipe.query(con)?;
                        if committed.is_some() {
                            return Ok(value);
                        }
                    }
                    Ok(Attempt::Inconsistent(error)) => {
                        let unchanged: Option<()> =
                            redis::pipe().atomic().cmd("PING").ignore().query(con)?;
                        if unchanged.is_some() {
                            return Err(Fault::Store(error));
                        }
                    }
                    Err(fault) => {
                        if !matches!(fault, Fault::Redis(_)) {
                            redis::cmd("UNWATCH").exec(con)?;
                        }
                        return Err(fault);
                    }
                }
                self.inner.contended.fetch_add(1, Ordering::Relaxed);
                let cap = (1u64 << number.min(5)).min(MAX_RETRY_PAUSE_MS);
                std::thread::sleep(Duration::from_millis(rand::random_range(0..=cap)));
            }
            Err(Fault::Store(StoreError::Contended {
                url: self.inner.url.clone(),
                operation,
                attempts: MAX_ATTEMPTS,
            }))
        })
    }

    /// Refreshes this instance's liveness key and its place in the set of
    /// instances.
    fn heartbeat(&self) -> Result<(), StoreError> {
        let ttl_ms = millis(self.inner.options.instance_ttl).max(1);
        self.with_connection("heartbeat", |con| {
            redis::pipe()
                .cmd("SET")
                .arg(self.keys().instance(&self.inner.instance))
                .arg(now_ms())
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("SADD")
                .arg(self.keys().instances())
                .arg(&self.inner.instance)
                .ignore()
                .exec(con)?;
            Ok(())
        })
    }

    /// Writes the audit chain's head before its first entry, `seq` 0 and the
    /// genesis hash, as SQLite's migration inserts its `audit_head` row: an
    /// empty chain then verifies, while a head deleted later still shows as
    /// missing (or, once a store opens again, as not covering the entries).
    fn start_audit_chain(&self) -> Result<(), StoreError> {
        let head = self.keys().audit_head();
        self.optimistic("start audit chain", |con| {
            tasks::watch(con, &head)?;
            let exists: bool = redis::cmd("EXISTS").arg(&head).query(con)?;
            if exists {
                return Ok(Attempt::Done(()));
            }
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(&head)
                .arg("seq")
                .arg(0)
                .arg("hash")
                .arg(hex::encode([0u8; 32]))
                .ignore();
            Ok(Attempt::Commit(pipe, ()))
        })
    }

    /// Releases every reservation held by an instance whose liveness key is
    /// gone, and forgets instances that hold nothing any more.
    fn recover_dead(&self) -> Result<Recovery, StoreError> {
        let keys = self.keys();
        let instances: Vec<String> = self.with_connection("recover", |con| {
            Ok(redis::cmd("SMEMBERS").arg(keys.instances()).query(con)?)
        })?;
        let mut recovery = Recovery::default();
        for instance in instances.iter().filter(|i| **i != self.inner.instance) {
            let alive: bool = self.with_connection("recover", |con| {
                Ok(redis::cmd("EXISTS")
                    .arg(keys.instance(instance))
                    .query(con)?)
            })?;
            if alive {
                continue;
            }
            let held: Vec<i64> = self.with_connection("recover", |con| {
                Ok(redis::cmd("SMEMBERS").arg(keys.held(instance)).query(con)?)
            })?;
            for id in held {
                if let Some(released) = self.release(super::ReservationId(id))? {
                    recovery.released_reservations += 1;
                    recovery.released_tokens += released.tokens;
                    recovery.abandoned_keys += u64::from(released.key_deleted);
                }
            }
            // Forget the instance only once it holds nothing: if it was only
            // paused and has reserved again since, it stays known.
            self.optimistic("recover", |con| {
                let held = keys.held(instance);
                redis::cmd("WATCH").arg(&held).exec(con)?;
                let left: u64 = redis::cmd("SCARD").arg(&held).query(con)?;
                if left > 0 {
                    return Ok(Attempt::Done(()));
                }
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("SREM")
                    .arg(keys.instances())
                    .arg(instance)
                    .ignore();
                Ok(Attempt::Commit(pipe, ()))
            })?;
        }
        Ok(recovery)
    }

    /// Sets every known tenant's limit to its configured one, or to what it
    /// already used if that is more. Returns how many were clamped so.
    fn apply_limits(&self) -> Result<u64, StoreError> {
        if !self.inner.options.apply_limits {
            return Ok(0);
        }
        let keys = self.keys();
        let tenants: Vec<String> = self.with_connection("apply limits", |con| {
            Ok(redis::cmd("SMEMBERS").arg(keys.tenants()).query(con)?)
        })?;
        let mut clamped = 0;
        for tenant in tenants {
            let configured = self.configured_limit(&tenant);
            let key = keys.budget(&tenant);
            let raised = self.optimistic("apply limits", |con| {
                redis::cmd("WATCH").arg(&key).exec(con)?;
                let used: Option<i64> = redis::cmd("HGET").arg(&key).arg("used").query(con)?;
                let used = used.unwrap_or(0);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("HSET")
                    .arg(&key)
                    .arg("limit")
                    .arg(configured.max(used))
                    .ignore();
                Ok(Attempt::Commit(pipe, configured < used))
            })?;
            if raised {
                clamped += 1;
                tracing::warn!(
                    tenant = %tenant,
                    configured,
                    "configured limit is below the tokens already used; limit set to the usage"
                );
            }
        }
        Ok(clamped)
    }

    /// The configured limit of `tenant`.
    fn configured_limit(&self, tenant: &str) -> i64 {
        let budgets = &self.inner.options.budgets;
        to_db(
            budgets
                .tenants
                .get(tenant)
                .copied()
                .unwrap_or(budgets.default_limit_tokens),
        )
    }
}

/// A connection with the store's deadlines on connecting and on every read
/// and write.
fn connect(client: &redis::Client, timeout: Duration) -> Result<Connection, RedisError> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// `url` without its user name and password, for logs and errors.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "(unparsable url)".to_owned(),
    }
}

/// Refreshes the instance's liveness five times per time to live (so that
/// a replica frozen for most of it is still alive) and releases what dead
/// instances held, until the store is dropped.
fn spawn_liveness(store: Weak<Inner>, ttl: Duration) {
    let period = (ttl / 5).max(Duration::from_millis(10));
    let spawned = std::thread::Builder::new()
        .name("redis-liveness".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let Some(inner) = store.upgrade() else {
                    return;
                };
                let store = RedisStore { inner };
                if let Err(e) = store.heartbeat() {
                    tracing::warn!(error = %e, "redis heartbeat failed");
                    continue;
                }
                match store.recover_dead() {
                    Ok(recovery) if recovery.released_reservations > 0 => tracing::warn!(
                        released_reservations = recovery.released_reservations,
                        released_tokens = recovery.released_tokens,
                        "released what a dead replica held"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "releasing dead replicas' holds failed"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the redis liveness thread; this replica will look dead to others");
    }
}

/// An integer field of a hash.
fn int(fields: &Fields, field: &str) -> Option<i64> {
    fields
        .get(field)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
}

/// A text field of a hash.
fn text(fields: &Fields, field: &str) -> Option<String> {
    fields
        .get(field)
        .and_then(|v| String::from_utf8(v.clone()).ok())
}
