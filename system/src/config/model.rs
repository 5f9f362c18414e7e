//! The validated configuration. Values of these types only come out of
//! validation, so the rest of the orchestrator can rely on every constraint
//! listed in the raw schema without checking it again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use url::Url;

pub use super::raw::{Jitter, LogFormat, Permission, PiiStrategy, PiiType};

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The HTTP server.
    pub server: ServerConfig,
    /// LLM providers, at least one, names unique.
    pub llm: LlmConfig,
    /// Token budgets.
    pub budget: BudgetConfig,
    /// The job queue.
    pub jobs: JobsConfig,
    /// Where state lives.
    pub storage: StorageConfig,
    /// Security settings.
    pub security: SecurityConfig,
    /// Task limits.
    pub tasks: TasksConfig,
    /// Metrics and logs.
    pub observability: ObservabilityConfig,
    /// Health thresholds.
    pub degradation: DegradationConfig,
    /// Delivery of job webhooks.
    pub webhooks: WebhooksConfig,
}

/// Delivery of job webhooks: see [`crate::server`]'s deliverer.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhooksConfig {
    /// The variable holding the signing secret; unsigned without it.
    pub secret_env: Option<String>,
    /// The variable holding the previous secret, during a rotation.
    pub previous_secret_env: Option<String>,
    /// Attempts per delivery, 1 to 20.
    pub max_attempts: u32,
    /// The first retry's pause, doubling after each.
    pub backoff: Duration,
    /// The longest pause, at least `backoff`.
    pub max_backoff: Duration,
    /// To connect.
    pub connect_timeout: Duration,
    /// For a whole delivery.
    pub timeout: Duration,
    /// Fixed answers for host names.
    pub resolve: BTreeMap<String, Vec<std::net::IpAddr>>,
}

impl Default for WebhooksConfig {
    /// Unsigned, 5 attempts from 1s up to 5m apart, 2s to connect, 10s in all.
    fn default() -> Self {
        WebhooksConfig {
            secret_env: None,
            previous_secret_env: None,
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            resolve: BTreeMap::new(),
        }
    }
}

/// The HTTP server.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Whether an unspecified listen address was explicitly allowed.
    pub allow_public_listen: bool,
    /// Longest request, greater than zero.
    pub request_timeout: Duration,
    /// Largest request body in bytes, greater than zero.
    pub body_limit_bytes: u64,
    /// Grace period for in-flight requests on shutdown.
    pub shutdown_timeout: Duration,
    /// Admission control of the routes that do work.
    pub admission: AdmissionConfig,
}

/// Admission control: see [`crate::server::admission`].
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionConfig {
    /// `POST /v1/tasks` in flight at once, 1 to 100000.
    pub tasks_in_flight: u32,
    /// `POST /v1/jobs` in flight at once, 1 to 100000.
    pub jobs_in_flight: u32,
    /// The `Retry-After` of a shed request, up to 1m (sent in whole seconds, rounded up).
    pub retry_after: Duration,
}

/// LLM providers.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmConfig {
    /// At least one provider; names are unique.
    pub providers: Vec<ProviderConfig>,
}

/// One provider.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderConfig {
    /// Unique name.
    pub name: String,
    /// `http` or `https` base URL.
    pub base_url: Url,
    /// Model name.
    pub model: String,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Timeout of one attempt, greater than zero.
    pub attempt_timeout: Duration,
    /// Deadline of all attempts, at least `attempt_timeout`.
    pub deadline: Duration,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Circuit breaker.
    pub circuit_breaker: CircuitBreakerConfig,
}

/// Retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, 1 to 10.
    pub attempts: u32,
    /// First delay, at most `max_delay`.
    pub initial_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Delay growth, 1.0 to 10.0.
    pub multiplier: f64,
    /// Delay randomisation.
    pub jitter: Jitter,
}

/// Circuit breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open it, 1 to 1000.
    pub failure_threshold: u32,
    /// Time open before probing, greater than zero.
    pub recovery_timeout: Duration,
    /// Probes while half-open, 1 to 100.
    pub half_open_max_calls: u32,
}

/// Token budgets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BudgetConfig {
    /// Limit of tenants without their own.
    pub default_limit_tokens: u64,
    /// Limits of named tenants.
    pub tenants: BTreeMap<String, u64>,
}

/// The job queue.
#[derive(Clone, Debug, PartialEq)]
pub struct JobsConfig {
    /// Concurrent workers, 1 to 256.
    pub workers: u32,
    /// Most queued jobs, 1 to 1000000.
    pub queue_capacity: u32,
    /// Attempts before the dead-letter queue, 1 to 100.
    pub max_attempts: u32,
    /// Lease length, greater than zero.
    pub lease: Duration,
    /// Heartbeat period, greater than zero and shorter than `lease`.
    pub heartbeat_interval: Duration,
    /// Backoff before a failed job's second attempt, at most `retry_max_delay`.
    pub retry_initial_delay: Duration,
    /// Longest backoff between attempts.
    pub retry_max_delay: Duration,
}

/// Where state lives.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageConfig {
    /// SQLite at this path.
    Sqlite {
        /// Database file.
        path: PathBuf,
    },
    /// Redis at this `redis://` or `rediss://` URL.
    Redis {
        /// Server URL.
        url: Url,
    },
}

/// Security settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SecurityConfig {
    /// API keys; ids unique, every role defined.
    pub api_keys: Vec<ApiKeyConfig>,
    /// The configured roles, beside the built-in ones of [`crate::roles`]
    /// (a configured role of a built-in name replaces it); every parent
    /// exists and inheritance has no cycle.
    pub roles: BTreeMap<String, RoleConfig>,
    /// Rate limits by role; every role defined.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Rate limit of roles without their own.
    pub default_rate_limit: RateLimitConfig,
    /// CORS origins; `*` only when `allow_wildcard_cors` or not strict.
    pub cors_allowed_origins: Vec<String>,
    /// Whether `*` was explicitly allowed.
    pub allow_wildcard_cors: bool,
    /// Whether to send `Strict-Transport-Security`.
    pub hsts: bool,
    /// PII redaction.
    pub pii_redaction: PiiRedactionConfig,
    /// Allowed outbound URL prefixes.
    pub outbound_url_allowlist: Vec<Url>,
    /// Brute-force lockout.
    pub lockout: LockoutConfig,
    /// Issued keys: rotation policy and bound.
    pub keys: KeysConfig,
}

/// Issued keys: see [`crate::auth`].
#[derive(Clone, Debug, PartialEq)]
pub struct KeysConfig {
    /// Age at which an issued key is due for rotation, up to ten years.
    pub rotation_interval: Duration,
    /// How long before it is due (or expires) a key is reported, at most
    /// `rotation_interval`.
    pub warning_before: Duration,
    /// How long a rotated key keeps working beside its successor, up to 7 days.
    pub rotation_overlap: Duration,
    /// Issued keys live at once, 1 to 100000.
    pub max_keys: u32,
}

impl Default for KeysConfig {
    fn default() -> KeysConfig {
        const DAY: Duration = Duration::from_secs(86_400);
        KeysConfig {
            rotation_interval: DAY * 30,
            warning_before: DAY * 7,
            rotation_overlap: Duration::from_secs(3600),
            max_keys: 10_000,
        }
    }
}

/// Brute-force lockout: see [`crate::lockout`].
#[derive(Clone, Debug, PartialEq)]
pub struct LockoutConfig {
    /// Failures within `window` that lock, 1 to 100000.
    pub max_failures: u32,
    /// The sliding window, up to 1d.
    pub window: Duration,
    /// How long a lockout lasts, up to 1d.
    pub duration: Duration,
    /// Entries tracked at once, 16 to 1000000.
    pub max_tracked: u32,
    /// Proxies whose `X-Forwarded-For` is believed, at most 64.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for LockoutConfig {
    fn default() -> LockoutConfig {
        LockoutConfig {
            max_failures: 10,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(300),
            max_tracked: 10_000,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A configured role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleConfig {
    /// The roles whose permissions it holds too.
    pub inherits: Vec<String>,
    /// What it grants on top, without duplicates, in [`Permission::ALL`] order.
    pub permissions: Vec<Permission>,
}

/// One API key.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKeyConfig {
    /// Unique id.
    pub id: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Tenant.
    pub tenant: String,
    /// Role, defined in `roles`.
    pub role: String,
    /// Expiry.
    pub expires_at: Option<SystemTime>,
}

/// A rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained rate, 1 to 100000.
    pub requests_per_second: u32,
    /// Burst, 1 to 100000.
    pub burst: u32,
}

/// PII redaction.
#[derive(Clone, Debug, PartialEq)]
pub struct PiiRedactionConfig {
    /// Whether to redact.
    pub enabled: bool,
    /// What to redact, without repeats.
    pub types: Vec<PiiType>,
    /// What a detected value becomes.
    pub strategy: PiiStrategy,
    /// Detections below this confidence, 0 to 100, are left alone.
    pub min_confidence_percent: u8,
    /// The environment variable holding the `hash` strategy's key.
    pub hash_key_env: Option<String>,
}

impl Default for PiiRedactionConfig {
    /// Every type masked at 50 percent confidence, with a random hash key.
    fn default() -> Self {
        PiiRedactionConfig {
            enabled: true,
            types: PiiType::ALL.to_vec(),
            strategy: PiiStrategy::Mask,
            min_confidence_percent: 50,
            hash_key_env: None,
        }
    }
}

/// Task limits.
#[derive(Clone, Debug, PartialEq)]
pub struct TasksConfig {
    /// Allowed tools, 1 to 64 unique names.
    pub allowed_tools: Vec<String>,
    /// Largest prompt in bytes.
    pub max_prompt_bytes: u64,
    /// Largest provider output in bytes.
    pub max_output_bytes: u64,
}

/// Observability.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservabilityConfig {
    /// Whether metrics are served.
    pub metrics: bool,
    /// Log format.
    pub log_format: LogFormat,
}

/// Health thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct DegradationConfig {
    /// Error rate for degraded, 0.0 to 1.0.
    pub degraded_error_rate: f64,
    /// Error rate for unhealthy, 0.0 to 1.0, at least `degraded_error_rate`.
    pub unhealthy_error_rate: f64,
    /// Measurement window, greater than zero.
    pub window: Duration,
    /// How long a higher level must be called for before the service rises one level.
    pub enter_after: Duration,
    /// How long a lower level must be called for before it falls one level, longer
    /// than `enter_after`.
    pub leave_after: Duration,
    /// A store probe at least this slow calls for level 2.
    pub slow_store: Duration,
}

/// The raw form of a config, which validates back to it.
pub(super) fn to_raw(c: &Config) -> super::raw::RawConfig {
    use super::raw::*;
    use super::units::{format_duration, format_size};
    let duration = |d: Duration| Some(DurationText(format_duration(d)));
    let size = |n: u64| Some(SizeText(format_size(n)));
    let rate_limit = |r: &RateLimitConfig| RawRateLimit {
        requests_per_second: Some(r.requests_per_second),
        burst: Some(r.burst),
    };
    let providers = c
        .llm
        .providers
        .iter()
        .map(|p| RawProvider {
            name: Some(p.name.clone()),
            base_url: Some(p.base_url.to_string()),
            model: Some(p.model.clone()),
            api_key_env: p.api_key_env.clone(),
            attempt_timeout: duration(p.attempt_timeout),
            deadline: duration(p.deadline),
            retry: Some(RawRetry {
                attempts: Some(p.retry.attempts),
                initial_delay: duration(p.retry.initial_delay),
                max_delay: duration(p.retry.max_delay),
                multiplier: Some(p.retry.multiplier),
                jitter: Some(p.retry.jitter),
            }),
            circuit_breaker: Some(RawCircuitBreaker {
                failure_threshold: Some(p.circuit_breaker.failure_threshold),
                recovery_timeout: duration(p.circuit_breaker.recovery_timeout),
                half_open_max_calls: Some(p.circuit_breaker.half_open_max_calls),
            }),
        })
        .collect();
    let storage = match &c.storage {
        StorageConfig::Sqlite { path } => RawStorage {
            sqlite: Some(RawSqlite {
                path: Some(path.to_string_lossy().into_owned()),
            }),
            redis: None,
        },
        StorageConfig::Redis { url } => RawStorage {
            sqlite: None,
            redis: Some(RawRedis {
                url: Some(url.to_string()),
            }),
        },
    };
    let s = &c.security;
    RawConfig {
        server: Some(RawServer {
            listen: Some(c.server.listen.to_string()),
            allow_public_listen: Some(c.server.allow_public_listen),
            request_timeout: duration(c.server.request_timeout),
            body_limit: size(c.server.body_limit_bytes),
            shutdown_timeout: duration(c.server.shutdown_timeout),
            admission: Some(RawAdmission {
                tasks_in_flight: Some(c.server.admission.tasks_in_flight),
                jobs_in_flight: Some(c.server.admission.jobs_in_flight),
                retry_after: duration(c.server.admission.retry_after),
            }),
        }),
        llm: Some(RawLlm {
            providers: Some(providers),
        }),
        budget: Some(RawBudget {
            default_limit_tokens: Some(c.budget.default_limit_tokens),
            tenants: Some(c.budget.tenants.clone()),
        }),
        jobs: Some(RawJobs {
            workers: Some(c.jobs.workers),
            queue_capacity: Some(c.jobs.queue_capacity),
            max_attempts: Some(c.jobs.max_attempts),
            lease: duration(c.jobs.lease),
            heartbeat_interval: duration(c.jobs.heartbeat_interval),
            retry_initial_delay: duration(c.jobs.retry_initial_delay),
            retry_max_delay: duration(c.jobs.retry_max_delay),
        }),
        storage: Some(storage),
        security: Some(RawSecurity {
            api_keys: Some(
                s.api_keys
                    .iter()
                    .map(|k| RawApiKey {
                        id: Some(k.id.clone()),
                        sha256: Some(k.sha256.iter().map(|b| format!("{b:02x}")).collect()),
                        tenant: Some(k.tenant.clone()),
                        role: Some(k.role.clone()),
                        expires_at: k
                            .expires_at
                            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    })
                    .collect(),
            ),
            roles: (!s.roles.is_empty()).then(|| {
                s.roles
                    .iter()
                    .map(|(name, role)| {
                        let raw = if role.inherits.is_empty() {
                            RawRole::Permissions(role.permissions.clone())
                        } else {
                            RawRole::Defined(RawRoleDefinition {
                                inherits: Some(role.inherits.clone()),
                                permissions: Some(role.permissions.clone()),
                            })
                        };
                        (name.clone(), raw)
                    })
                    .collect()
            }),
            rate_limits: Some(
                s.rate_limits
                    .iter()
                    .map(|(role, r)| (role.clone(), rate_limit(r)))
                    .collect(),
            ),
            default_rate_limit: Some(rate_limit(&s.default_rate_limit)),
            cors_allowed_origins: Some(s.cors_allowed_origins.clone()),
            allow_wildcard_cors: Some(s.allow_wildcard_cors),
            hsts: Some(s.hsts),
            pii_redaction: Some(RawPiiRedaction {
                enabled: Some(s.pii_redaction.enabled),
                types: Some(s.pii_redaction.types.clone()),
                strategy: Some(s.pii_redaction.strategy),
                min_confidence_percent: Some(s.pii_redaction.min_confidence_percent),
                hash_key_env: s.pii_redaction.hash_key_env.clone(),
            }),
            outbound_url_allowlist: Some(
                s.outbound_url_allowlist
                    .iter()
                    .map(Url::to_string)
                    .collect(),
            ),
            lockout: Some(RawLockout {
                max_failures: Some(s.lockout.max_failures),
                window: duration(s.lockout.window),
                duration: duration(s.lockout.duration),
                max_tracked: Some(s.lockout.max_tracked),
                trusted_proxies: Some(
                    s.lockout
                        .trusted_proxies
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
            }),
            keys: Some(RawKeys {
                rotation_interval: duration(s.keys.rotation_interval),
                warning_before: duration(s.keys.warning_before),
                rotation_overlap: duration(s.keys.rotation_overlap),
                max_keys: Some(s.keys.max_keys),
            }),
        }),
        tasks: Some(RawTasks {
            allowed_tools: Some(c.tasks.allowed_tools.clone()),
            max_prompt_size: size(c.tasks.max_prompt_bytes),
            max_output_size: size(c.tasks.max_output_bytes),
        }),
        observability: Some(RawObservability {
            metrics: Some(c.observability.metrics),
            log_format: Some(c.observability.log_format),
        }),
        degradation: Some(RawDegradation {
            degraded_error_rate: Some(c.degradation.degraded_error_rate),
            unhealthy_error_rate: Some(c.degradation.unhealthy_error_rate),
            window: duration(c.degradation.window),
            enter_after: duration(c.degradation.enter_after),
            leave_after: duration(c.degradation.leave_after),
            slow_store: duration(c.degradation.slow_store),
        }),
        webhooks: Some(RawWebhooks {
            secret_env: c.webhooks.secret_env.clone(),
            previous_secret_env: c.webhooks.previous_secret_env.clone(),
            max_attempts: Some(c.webhooks.max_attempts),
            backoff: duration(c.webhooks.backoff),
            max_backoff: duration(c.webhooks.max_backoff),
            connect_timeout: duration(c.webhooks.connect_timeout),
            timeout: duration(c.webhooks.timeout),
            resolve: Some(
                c.webhooks
                    .resolve
                    .iter()
                    .map(|(h, ips)| (h.clone(), ips.iter().map(ToString::to_string).collect()))
                    .collect(),
            ),
        }),
    }
}
