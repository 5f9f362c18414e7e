//! Authentication (API keys), authorisation (roles to permissions, one
//! table) and per-key rate limits (GCRA).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Permission, RateLimitConfig, SecurityConfig};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Who is calling: the identity behind a valid key.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The key's position in [`Auth`]'s table, so its limiter is found
    /// without a search.
    index: usize,
    /// The key's id from the configuration (never the key itself).
    pub key_id: Arc<str>,
    /// The tenant the key acts for.
    pub tenant: Arc<str>,
    /// The key's role.
    pub role: Arc<str>,
    permissions: Arc<[Permission]>,
}

impl Principal {
    /// Whether the role grants `permission`.
    pub fn can(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
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
    /// No configured key matches.
    #[error("unknown key")]
    Unknown,
    /// The key matched but has expired.
    #[error("expired key")]
    Expired,
}

impl AuthError {
    /// A short label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Unknown => "unknown",
            AuthError::Expired => "expired",
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

struct Key {
    sha256: [u8; 32],
    principal: Principal,
    expires_at: Option<SystemTime>,
    limiter: Limiter,
    rate: RateLimitConfig,
}

/// The configured keys, their roles and limiters. Built once at startup; the
/// set of limiters is therefore bounded by the configuration.
pub struct Auth {
    keys: Vec<Key>,
}

impl Auth {
    /// Builds the key table from validated security settings.
    pub fn new(security: &SecurityConfig) -> Auth {
        let roles = crate::roles::resolve(security);
        let keys = security
            .api_keys
            .iter()
            .enumerate()
            .map(|(index, k)| {
                let permissions: Arc<[Permission]> = roles
                    .get(&k.role)
                    .map(|p| p.as_slice().into())
                    .unwrap_or_else(|| Arc::from(Vec::new()));
                let rate = crate::roles::rate_limit_of(security, &k.role);
                Key {
                    sha256: k.sha256,
                    principal: Principal {
                        index,
                        key_id: k.id.as_str().into(),
                        tenant: k.tenant.as_str().into(),
                        role: k.role.as_str().into(),
                        permissions,
                    },
                    expires_at: k.expires_at,
                    limiter: RateLimiter::direct(quota(rate))
                        .with_middleware::<StateInformationMiddleware>(),
                    rate,
                }
            })
            .collect();
        Auth { keys }
    }

    /// Finds the key in an `Authorization` header value. The presented key is
    /// hashed and compared against every configured hash in constant time,
    /// without stopping at a match, so timing reveals neither which key
    /// matched nor how much of a hash did.
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
        let mut found: Option<&Key> = None;
        for k in &self.keys {
            if bool::from(k.sha256.ct_eq(&presented)) {
                found = Some(k);
            }
        }
        let key = found.ok_or(AuthError::Unknown)?;
        if key.expires_at.is_some_and(|t| now >= t) {
            return Err(AuthError::Expired);
        }
        Ok(key.principal.clone())
    }

    /// Takes one request from the key's rate limit.
    pub fn check_rate(&self, principal: &Principal) -> RateStatus {
        let Some(key) = self.keys.get(principal.index) else {
            // Principals only come from this table; a stranger gets no budget.
            return RateStatus {
                limit: 0,
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: Some(Duration::from_secs(1)),
            };
        };
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
];

/// The permission `method` on `route` needs, if the route is in the table.
pub fn route_permission(method: &str, route: &str) -> Option<Permission> {
    ROUTE_PERMISSIONS
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, p)| *p)
}
