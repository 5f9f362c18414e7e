//! Authentication (API keys), authorisation (roles to permissions, one
//! table) and per-key rate limits (GCRA).
//!
//! Two kinds of key authenticate. Bootstrap keys come from the configuration
//! (`security.api_keys`) and live as long as it names them. Issued keys
//! (`gk.<id>.<secret>`) live in the store's `api_keys` table; [`Auth`] holds
//! the live ones in a cache that the key routes update as they change the
//! table, and that is bounded by `security.keys.max_keys`. The service is the
//! only writer of its database while it runs (the store's lock), so the
//! cache cannot go stale behind its back.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{KeysConfig, Permission, RateLimitConfig, SecurityConfig};
use crate::lockout::ISSUED_KEY_PREFIX;
use crate::store::{KeyRecord, LAST_USED_GRANULARITY_MS, RateTaken};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A key's rate limit: its limiter and the configuration it was built from.
struct KeyLimit {
    limiter: Limiter,
    rate: RateLimitConfig,
}

impl KeyLimit {
    fn new(rate: RateLimitConfig) -> Arc<KeyLimit> {
        Arc::new(KeyLimit {
            limiter: RateLimiter::direct(quota(rate))
                .with_middleware::<StateInformationMiddleware>(),
            rate,
        })
    }
}

/// Who is calling: the identity behind a valid key.
#[derive(Clone)]
pub struct Principal {
    /// The key's id (never the key itself).
    pub key_id: Arc<str>,
    /// The tenant the key acts for.
    pub tenant: Arc<str>,
    /// The key's role.
    pub role: Arc<str>,
    /// Whether the key was issued at run time (else it is a bootstrap key).
    pub issued: bool,
    permissions: Arc<[Permission]>,
    limit: Arc<KeyLimit>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("key_id", &self.key_id)
            .field("tenant", &self.tenant)
            .field("role", &self.role)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl Principal {
    /// The key's rate limit.
    pub fn rate(&self) -> RateLimitConfig {
        self.limit.rate
    }

    /// Whether the role grants `permission`.
    pub fn can(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Whether the caller's role holds every permission of `role`: a key
    /// may only issue, rotate or revoke keys that cannot do more than it
    /// can, or `keys.create` would be every permission.
    pub fn covers(&self, auth: &Auth, role: &str) -> bool {
        auth.permissions_of(role).iter().all(|p| self.can(*p))
    }
}

/// Why authentication failed. All of these answer 401 with the same body, so
/// that a caller cannot tell an unknown key from an expired one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing Authorization header")]
    Missing,
    /// The header is not `Bearer <key>`.
    #[error("malformed Authorization header")]
    Malformed,
    /// No key matches.
    #[error("unknown key")]
    Unknown,
    /// The key matched but has expired.
    #[error("expired key")]
    Expired,
    /// The key matched but was rotated and its overlap has ended.
    #[error("rotated key past its overlap")]
    Rotated,
}

impl AuthError {
    /// A short label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Unknown => "unknown",
            AuthError::Expired => "expired",
            AuthError::Rotated => "rotated",
        }
    }
}

/// The outcome of a rate-limit check, for the `RateLimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateStatus {
    /// The burst: how many requests the key may make at once.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Time until the burst is fully replenished.
    pub reset: Duration,
    /// When refused, the time until one request is admitted.
    pub retry_after: Option<Duration>,
}

struct BootstrapKey {
    sha256: [u8; 32],
    principal: Principal,
    expires_at: Option<SystemTime>,
}

struct IssuedKey {
    record: KeyRecord,
    principal: Principal,
    /// The last `last_used_ms` handed out for writing.
    touched_ms: AtomicI64,
}

/// Keys due for rotation, for `/health` and the `api_keys_rotation` gauge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// Keys within `warning_before` of being due, or of expiring.
    pub due: u64,
    /// Issued keys older than `rotation_interval`.
    pub overdue: u64,
    /// Their ids, overdue first, at most [`MAX_REPORTED_KEYS`].
    pub ids: Vec<String>,
}

/// The most key ids a [`RotationReport`] names.
pub const MAX_REPORTED_KEYS: usize = 20;

/// The keys, their roles and limiters.
pub struct Auth {
    bootstrap: Vec<BootstrapKey>,
    issued: RwLock<HashMap<String, IssuedKey>>,
    roles: BTreeMap<String, Arc<[Permission]>>,
    limits: BTreeMap<String, RateLimitConfig>,
    default_limit: RateLimitConfig,
    policy: KeysConfig,
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Auth {
    /// Builds the key table from validated security settings, with no
    /// issued keys yet (see [`Auth::load`]).
    pub fn new(security: &SecurityConfig) -> Auth {
        let roles: BTreeMap<String, Arc<[Permission]>> = crate::roles::resolve(security)
            .into_iter()
            .map(|(name, held)| (name, Arc::from(held)))
            .collect();
        let limits = roles
            .keys()
            .map(|name| (name.clone(), crate::roles::rate_limit_of(security, name)))
            .collect();
        let mut auth = Auth {
            bootstrap: Vec::new(),
            issued: RwLock::new(HashMap::new()),
            roles,
            limits,
            default_limit: security.default_rate_limit,
            policy: security.keys.clone(),
        };
        auth.bootstrap = security
            .api_keys
            .iter()
            .map(|k| BootstrapKey {
                sha256: k.sha256,
                principal: auth.principal(&k.id, &k.tenant, &k.role, false),
                expires_at: k.expires_at,
            })
            .collect();
        auth
    }

    fn principal(&self, id: &str, tenant: &str, role: &str, issued: bool) -> Principal {
        Principal {
            key_id: id.into(),
            tenant: tenant.into(),
            role: role.into(),
            issued,
            permissions: self.permissions_of(role),
            limit: KeyLimit::new(self.limits.get(role).copied().unwrap_or(self.default_limit)),
        }
    }

    /// Everything `role` grants; nothing for a role that does not exist
    /// (an issued key whose role the configuration no longer has).
    pub fn permissions_of(&self, role: &str) -> Arc<[Permission]> {
        self.roles
            .get(role)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Whether `role` exists (built in or configured).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// The rotation policy and bound of issued keys.
    pub fn policy(&self) -> &KeysConfig {
        &self.policy
    }

    /// Whether a bootstrap key has this id.
    pub fn is_bootstrap(&self, id: &str) -> bool {
        self.bootstrap.iter().any(|k| &*k.principal.key_id == id)
    }

    /// Puts issued keys in the cache (at start, and after each change):
    /// live ones are added or updated, others dropped. Entries that are no
    /// longer live at `now` are dropped too, so the cache holds at most the
    /// live bound. A key whose id a bootstrap key has is ignored, with a
    /// warning: the configuration wins.
    pub fn load(&self, records: impl IntoIterator<Item = KeyRecord>, now: SystemTime) {
        let now_ms = unix_ms(now);
        let mut issued = self.issued.write().unwrap_or_else(PoisonError::into_inner);
        for record in records {
            if self.is_bootstrap(&record.id) {
                tracing::warn!(key_id = %record.id, "an issued key has a bootstrap key's id; the bootstrap key wins");
                continue;
            }
            if !record.live_at(now_ms) {
                issued.remove(&record.id);
                continue;
            }
            match issued.get_mut(&record.id) {
                // The same key changed (rotated): its limiter carries on.
                Some(entry) => entry.record = record,
                None => {
                    let principal = self.principal(&record.id, &record.tenant, &record.role, true);
                    let touched = record.last_used_ms.unwrap_or(0);
                    issued.insert(
                        record.id.clone(),
                        IssuedKey {
                            record,
                            principal,
                            touched_ms: AtomicI64::new(touched),
                        },
                    );
                }
            }
        }
        issued.retain(|_, k| k.record.live_at(now_ms));
    }

    /// Finds the key in an `Authorization` header value. The presented key is
    /// hashed and compared against every bootstrap hash in constant time,
    /// without stopping at a match, so timing reveals neither which key
    /// matched nor how much of a hash did. An issued key is found by the id
    /// it names, and its hash compared in constant time too.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        now: SystemTime,
    ) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, key) = header.split_once(' ').ok_or(AuthError::Malformed)?;
        let key = key.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
            return Err(AuthError::Malformed);
        }
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found: Option<&BootstrapKey> = None;
        for k in &self.bootstrap {
            if bool::from(k.sha256.ct_eq(&presented)) {
                found = Some(k);
            }
        }
        if let Some(key) = found {
            if key.expires_at.is_some_and(|t| now >= t) {
                return Err(AuthError::Expired);
            }
            return Ok(key.principal.clone());
        }
        let id = crate::lockout::presented_key_id(Some(header)).ok_or(AuthError::Unknown)?;
        let issued = self.issued.read().unwrap_or_else(PoisonError::into_inner);
        let entry = issued.get(&*id).ok_or(AuthError::Unknown)?;
        if !bool::from(entry.record.sha256.ct_eq(&presented)) {
            return Err(AuthError::Unknown);
        }
        let now_ms = unix_ms(now);
        if entry.record.overlap_until_ms.is_some_and(|t| now_ms >= t) {
            return Err(AuthError::Rotated);
        }
        if !entry.record.live_at(now_ms) {
            return Err(AuthError::Expired);
        }
        Ok(entry.principal.clone())
    }

    /// Whether the issued key behind `principal` should have its
    /// `last_used_ms` written now: at most once per
    /// [`LAST_USED_GRANULARITY_MS`], whoever asks.
    pub fn touch_due(&self, principal: &Principal, now: SystemTime) -> bool {
        if !principal.issued {
            return false;
        }
        let now_ms = unix_ms(now);
        let issued = self.issued.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = issued.get(&*principal.key_id) else {
            return false;
        };
        let last = entry.touched_ms.load(Ordering::Relaxed);
        now_ms - last >= LAST_USED_GRANULARITY_MS
            && entry
                .touched_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The keys due for rotation at `now`: issued keys within
    /// `warning_before` of `rotation_interval` (overdue past it), and any
    /// key within `warning_before` of its expiry. A rotated key in its
    /// overlap is handled already and not reported.
    pub fn rotation_report(&self, now: SystemTime) -> RotationReport {
        let now_ms = unix_ms(now);
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let interval = ms(self.policy.rotation_interval);
        let warning = ms(self.policy.warning_before);
        let mut overdue = Vec::new();
        let mut due = Vec::new();
        for k in &self.bootstrap {
            if k.expires_at
                .is_some_and(|t| unix_ms(t).saturating_sub(now_ms) <= warning)
            {
                due.push(k.principal.key_id.to_string());
            }
        }
        let issued = self.issued.read().unwrap_or_else(PoisonError::into_inner);
        for k in issued.values() {
            let r = &k.record;
            if r.rotated() || !r.live_at(now_ms) {
                continue;
            }
            let age = now_ms.saturating_sub(r.created_ms);
            if age >= interval {
                overdue.push(r.id.clone());
            } else if age >= interval - warning
                || r.expires_ms
                    .is_some_and(|t| t.saturating_sub(now_ms) <= warning)
            {
                due.push(r.id.clone());
            }
        }
        overdue.sort();
        due.sort();
        RotationReport {
            due: due.len() as u64,
            overdue: overdue.len() as u64,
            ids: overdue
                .into_iter()
                .chain(due)
                .take(MAX_REPORTED_KEYS)
                .collect(),
        }
    }

    /// The bootstrap keys, for `GET /v1/keys`: id, tenant, role, expiry.
    pub fn bootstrap_keys(&self) -> impl Iterator<Item = (&Principal, Option<SystemTime>)> {
        self.bootstrap.iter().map(|k| (&k.principal, k.expires_at))
    }

    /// What `taken` from a limit shared by the replicas (the Redis store's)
    /// means for the principal's headers, as [`Auth::check_rate`] reports
    /// for the in-memory one.
    pub fn shared_rate(principal: &Principal, taken: RateTaken) -> RateStatus {
        let rate = principal.limit.rate;
        let per_request = Duration::from_secs(1) / rate.requests_per_second.max(1);
        RateStatus {
            limit: rate.burst,
            remaining: taken.remaining.min(rate.burst),
            reset: per_request * rate.burst.saturating_sub(taken.remaining),
            retry_after: (!taken.allowed).then_some(taken.wait),
        }
    }

    /// Takes one request from the key's rate limit, kept in this process's
    /// memory: right for a service that is the only one of its store.
    pub fn check_rate(&self, principal: &Principal) -> RateStatus {
        let key = &principal.limit;
        let per_request = Duration::from_secs(1) / key.rate.requests_per_second;
        match key.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateStatus {
                    limit: key.rate.burst,
                    remaining,
                    // Saturating: the limiter's capacity is the configured
                    // burst, but a header must never be what panics.
                    reset: per_request * key.rate.burst.saturating_sub(remaining),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                RateStatus {
                    limit: key.rate.burst,
                    remaining: 0,
                    reset: per_request * key.rate.burst,
                    retry_after: Some(wait),
                }
            }
        }
    }
}

/// A fresh key: its id (`id`, or a random one), the plaintext
/// `gk.<id>.<secret>` with a 256-bit secret, and the plaintext's SHA-256.
pub fn generate_key(id: Option<&str>) -> (String, String, [u8; 32]) {
    let id = id.map_or_else(
        || format!("k{}", hex::encode(rand::random::<[u8; 8]>())),
        str::to_owned,
    );
    let plaintext = format!(
        "{ISSUED_KEY_PREFIX}{id}.{}",
        hex::encode(rand::random::<[u8; 32]>())
    );
    let sha256 = Sha256::digest(plaintext.as_bytes()).into();
    (id, plaintext, sha256)
}

/// Whether `id` may name an issued key: 1 to 64 of lowercase letters,
/// digits, `_` and `-` (what the lockout reads from a presented key).
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn quota(rate: RateLimitConfig) -> Quota {
    // Validation keeps both at least 1; the fallback only keeps this total.
    let one = NonZeroU32::MIN;
    Quota::per_second(NonZeroU32::new(rate.requests_per_second).unwrap_or(one))
        .allow_burst(NonZeroU32::new(rate.burst).unwrap_or(one))
}

/// The permission each authenticated route needs, in one table, so that the
/// RBAC matrix is read (and tested) in one place. The authorisation
/// middleware looks requests up here by method and matched route; a route
/// missing from the table is refused to everyone (deny by default).
pub const ROUTE_PERMISSIONS: &[(&str, &str, Permission)] = &[
    ("POST", "/v1/tasks", Permission::TasksCreate),
    ("GET", "/v1/budgets/{tenant}", Permission::BudgetRead),
    ("POST", "/v1/jobs", Permission::JobsCreate),
    ("GET", "/v1/jobs", Permission::JobsList),
    ("GET", "/v1/jobs/{id}", Permission::JobsRead),
    ("GET", "/v1/dlq", Permission::DlqRead),
    ("POST", "/v1/dlq/{id}/replay", Permission::DlqReplay),
    ("GET", "/v1/audit", Permission::AuditRead),
    ("GET", "/v1/audit/verify", Permission::AuditVerify),
    ("GET", "/v1/roles", Permission::RolesRead),
    ("GET", "/v1/keys", Permission::KeysRead),
    ("POST", "/v1/keys", Permission::KeysCreate),
    ("POST", "/v1/keys/{id}/rotate", Permission::KeysRotate),
    ("DELETE", "/v1/keys/{id}", Permission::KeysRevoke),
];

/// The permission `method` on `route` needs, if the route is in the table.
pub fn route_permission(method: &str, route: &str) -> Option<Permission> {
    ROUTE_PERMISSIONS
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(interval_s: u64, warning_s: u64) -> Auth {
        let mut security = crate::config::validate(b"llm:\n  providers:\n    - {name: p, base_url: 'http://127.0.0.1:1/v1', model: m}\nstorage:\n  sqlite: {path: x.db}\n", &Default::default())
            .config
            .map(|c| c.security)
            .unwrap_or_else(|| panic!("the minimal config is valid"));
        security.keys.rotation_interval = Duration::from_secs(interval_s);
        security.keys.warning_before = Duration::from_secs(warning_s);
        Auth::new(&security)
    }

    fn record(id: &str, created_ms: i64) -> (KeyRecord, String) {
        let (id, plaintext, sha256) = generate_key(Some(id));
        let record = KeyRecord {
            id,
            tenant: "acme".into(),
            role: "viewer".into(),
            sha256,
            created_ms,
            expires_ms: None,
            revoked_ms: None,
            rotated_from: None,
            overlap_until_ms: None,
            last_used_ms: None,
        };
        (record, plaintext)
    }

    fn bearer(key: &str) -> String {
        format!("Bearer {key}")
    }

    #[test]
    fn issued_keys_work_until_revoked_or_past_their_overlap() {
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let a = auth(3600, 60);
        let (live, live_key) = record("live", now_ms - 1000);
        let (mut rotated, rotated_key) = record("rotated", now_ms - 1000);
        rotated.overlap_until_ms = Some(now_ms + 500);
        a.load([live.clone(), rotated.clone()], now);
        let principal = a.authenticate(Some(&bearer(&live_key)), now);
        assert_eq!(
            principal.map(|p| p.tenant.to_string()),
            Ok("acme".to_owned())
        );
        assert!(a.authenticate(Some(&bearer(&rotated_key)), now).is_ok());
        let later = now + Duration::from_secs(1);
        assert_eq!(
            a.authenticate(Some(&bearer(&rotated_key)), later)
                .map(|_| ()),
            Err(AuthError::Rotated)
        );
        let wrong_secret = format!("gk.live.{}", "0".repeat(64));
        assert_eq!(
            a.authenticate(Some(&bearer(&wrong_secret)), now)
                .map(|_| ()),
            Err(AuthError::Unknown)
        );
        let revoked = KeyRecord {
            revoked_ms: Some(now_ms),
            ..live
        };
        a.load([revoked], now);
        assert_eq!(
            a.authenticate(Some(&bearer(&live_key)), now).map(|_| ()),
            Err(AuthError::Unknown),
            "a revoked key leaves the cache"
        );
    }

    #[test]
    fn keys_near_their_rotation_interval_are_reported_overdue_first() {
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let a = auth(10, 3);
        let (fresh, _) = record("fresh", now_ms - 1000);
        let (due, _) = record("due", now_ms - 8000);
        let (overdue, _) = record("overdue", now_ms - 11_000);
        let (mut handled, _) = record("handled", now_ms - 11_000);
        handled.overlap_until_ms = Some(now_ms + 60_000);
        let (mut expiring, _) = record("expiring", now_ms - 1000);
        expiring.expires_ms = Some(now_ms + 2000);
        a.load([fresh, due, overdue, handled, expiring], now);
        let report = a.rotation_report(now);
        assert_eq!(
            report,
            RotationReport {
                due: 2,
                overdue: 1,
                ids: vec!["overdue".into(), "due".into(), "expiring".into()],
            }
        );
    }
}
