//! The configuration file as written: raw serde structs, every field optional
//! so that decoding never stops at a missing one. Validation (validate.rs)
//! turns them into the typed `Config`. Doc comments here become the JSON
//! Schema's descriptions, so they are written for users.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A duration written as a whole number and a unit: `ms`, `s`, `m` or `h`, like `500ms` or `20s`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h)$",
            "description": "A whole number and a unit (ms, s, m, h), like `500ms` or `20s`.",
        })
    }
}

/// A size written as a whole number and a unit: `B`, `KiB`, `MiB`, `GiB`, `KB`, `MB` or `GB`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SizeText(pub String);

impl JsonSchema for SizeText {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(B|KiB|MiB|GiB|KB|MB|GB)$",
            "description": "A whole number and a unit (B, KiB, MiB, GiB, KB, MB, GB), like `10MiB`.",
        })
    }
}

/// The orchestrator's configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Orchestrator configuration")]
pub struct RawConfig {
    /// The HTTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<RawServer>,
    /// The LLM providers tasks are sent to. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<RawLlm>,
    /// Token budgets per tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RawBudget>,
    /// The durable job queue and its workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<RawJobs>,
    /// Where state lives: exactly one of `sqlite` or `redis`. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<RawStorage>,
    /// Authentication, authorisation, rate limits, CORS, PII redaction and outbound URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<RawSecurity>,
    /// What an action plan may contain, and size limits on prompts and outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<RawTasks>,
    /// Metrics and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<RawObservability>,
    /// When the service reports itself degraded or unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degradation: Option<RawDegradation>,
    /// Delivery of job webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<RawWebhooks>,
}

/// Delivery of job webhooks: see the README's "Webhooks" section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    /// The environment variable holding the signing secret (at least 16 bytes). Without it,
    /// deliveries carry no signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// The environment variable holding the previous secret while receivers move to the new
    /// one: deliveries then carry a signature by each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_env: Option<String>,
    /// Attempts per delivery: 1 to 20. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The pause before the first retry, doubling after each: at most 1h. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<DurationText>,
    /// The longest pause between attempts: at most 24h, at least `backoff`. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<DurationText>,
    /// To connect to a receiver: at most 30s. Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<DurationText>,
    /// For a whole delivery: at most 60s. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    /// Fixed answers for host names, instead of the system resolver (like curl's
    /// `--resolve`): up to 64 names, each to 1 to 16 addresses. The address rule applies to
    /// them like to any answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<BTreeMap<String, Vec<String>>>,
}

/// The HTTP server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address and port to listen on, like `127.0.0.1:8080` (the default). An unspecified
    /// address (`0.0.0.0`, `[::]`) needs `allow_public_listen: true` under strict validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Allows listening on an unspecified address under strict validation. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_public_listen: Option<bool>,
    /// A request that takes longer is answered 504. Default `30s`, at most `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<DurationText>,
    /// A larger request body is answered 413. Default `1MiB`, at most `64MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<SizeText>,
    /// On SIGTERM, in-flight requests get this long to finish. Default `10s`, at most `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<DurationText>,
    /// Admission control: how many tasks and job submissions run at once; beyond that a
    /// request is answered 503 `overloaded` with `Retry-After` at once instead of waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<RawAdmission>,
}

/// Admission control of the routes that do work.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    /// `POST /v1/tasks` requests in flight at once (each holds a provider call): 1 to
    /// 100000. Default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_in_flight: Option<u32>,
    /// `POST /v1/jobs` requests in flight at once: 1 to 100000. Default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_in_flight: Option<u32>,
    /// The `Retry-After` of a shed request, up to 1m, sent in whole seconds rounded up
    /// (at least 1). Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<DurationText>,
}

/// The LLM providers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    /// OpenAI-compatible providers, tried in order. At least one, at most 16, names unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<RawProvider>>,
}

/// One OpenAI-compatible provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Unique name: 1 to 64 characters of `a-z`, `0-9`, `_` and `-`. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Base URL; requests go to `{base_url}/chat/completions`. `http` or `https`. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Model name sent in each request. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Environment variable holding the API key, like `OPENAI_API_KEY`. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Timeout of one attempt. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout: Option<DurationText>,
    /// Deadline for all attempts together, at least `attempt_timeout`. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DurationText>,
    /// Retries of failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
    /// The circuit breaker that stops calling a failing provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<RawCircuitBreaker>,
}

/// Retries with exponential backoff.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts in all, the first included: 1 to 10. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Delay before the first retry, at most `max_delay`. Default `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<DurationText>,
    /// Longest delay between attempts, `Retry-After` included. Default `20s`, at most `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<DurationText>,
    /// Growth of the delay per attempt: 1.0 to 10.0. Default 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// How delays are randomised. Default `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
}

/// How retry delays are randomised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// A uniform delay between zero and the computed delay.
    Full,
    /// Half the computed delay plus a uniform share of the other half.
    Equal,
    /// Exactly the computed delay.
    None,
}

/// The circuit breaker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Consecutive failures that open the circuit: 1 to 1000. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// How long the circuit stays open before probing. Default `30s`, at most `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_timeout: Option<DurationText>,
    /// Probe calls let through while half-open: 1 to 100. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_max_calls: Option<u32>,
}

/// Token budgets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Tokens a tenant without its own limit may spend: 1 to 10^12. Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_limit_tokens: Option<u64>,
    /// Limits for named tenants, in tokens: tenant name to limit, 1 to 10^12 each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<BTreeMap<String, u64>>,
}

/// The durable job queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJobs {
    /// Concurrent workers: 1 to 256. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Queued and running jobs beyond which submissions get 503: 1 to 1000000. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<u32>,
    /// Attempts before a job goes to the dead-letter queue: 1 to 100. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// How long a worker holds a job without a heartbeat. Default `30s`, at most `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<DurationText>,
    /// How often a worker renews its lease, shorter than `lease`. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<DurationText>,
    /// Pause before a failed job's second attempt; it doubles with each further
    /// attempt (with full jitter) up to `retry_max_delay`. Default `1s`, at most `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_initial_delay: Option<DurationText>,
    /// Longest pause between two attempts of a job, at least `retry_initial_delay`.
    /// Default `1m`, at most `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max_delay: Option<DurationText>,
}

/// Where state lives: exactly one of `sqlite` or `redis`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// An embedded SQLite database (WAL mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<RawSqlite>,
    /// A Redis server, for several replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RawRedis>,
}

/// SQLite storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSqlite {
    /// Database file, relative to the working directory unless absolute. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Redis storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Server URL, `redis://` or `rediss://`, like `redis://127.0.0.1:6379/0`. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Security settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    /// API keys, stored as SHA-256 hashes. At most 1000, ids unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<RawApiKey>>,
    /// Roles beside the seven built-in ones (`guest`, `viewer`, `analyst`, `developer`,
    /// `operator`, `admin`, `super_admin`): a list of permissions, or `{inherits, permissions}`.
    /// A role named like a built-in one replaces it. At most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<BTreeMap<String, RawRole>>,
    /// Per-key request rate limit by role name; each role must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<BTreeMap<String, RawRateLimit>>,
    /// The rate limit of roles without an entry in `rate_limits`. Default 20 per second, burst 40.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_rate_limit: Option<RawRateLimit>,
    /// Origins allowed by CORS, like `https://app.example.com`. `*` needs
    /// `allow_wildcard_cors: true` under strict validation. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_allowed_origins: Option<Vec<String>>,
    /// Allows the CORS origin `*` under strict validation. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_wildcard_cors: Option<bool>,
    /// Sends `Strict-Transport-Security` on every response; enable it when a
    /// TLS-terminating proxy fronts the service. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<bool>,
    /// Redaction of personal data in logs, audit details, stored errors and problem bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii_redaction: Option<RawPiiRedaction>,
    /// What outbound webhooks may call: entries of scheme, host, optional port and path
    /// prefix (matched by segment), like `https://hooks.example.com/jobs/`. Hosts must resolve
    /// to public addresses, unless an entry names the address itself (`http://10.0.0.7:9000/`).
    /// Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_url_allowlist: Option<Vec<String>>,
    /// Brute-force lockout: failed authentications counted per client address and per
    /// presented key id. Always on; the defaults lock after 10 failures in 1m for 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout: Option<RawLockout>,
    /// Keys issued at run time (`POST /v1/keys`, `orchestrator keys`): their rotation
    /// policy and their bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<RawKeys>,
}

/// Issued keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// How old an issued key may grow before it is due for rotation, up to 87600h (ten years).
    /// Default 720h (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_interval: Option<DurationText>,
    /// How long before it is due a key is reported (in `/health` and the
    /// `api_keys_rotation` gauge), and how long before its expiry any key is. At most
    /// `rotation_interval`. Default 168h (7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_before: Option<DurationText>,
    /// How long a rotated key keeps working beside its successor, up to 168h. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_overlap: Option<DurationText>,
    /// Issued keys live at once (keys in their rotation overlap count), 1 to 100000:
    /// the memory bound of the key cache. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u32>,
}

/// Brute-force lockout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLockout {
    /// Failed authentications within `window` that lock the address or key id: 1 to
    /// 100000. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// The sliding window failures are counted in, up to 1d. Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationText>,
    /// How long a lockout lasts, up to 1d. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationText>,
    /// Addresses and key ids tracked at once, 16 to 1000000: the memory bound. When full,
    /// the stalest entry is forgotten first. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tracked: Option<u32>,
    /// Networks of proxies whose `X-Forwarded-For` is believed, like `10.0.0.0/8`: behind
    /// them the client address is the right-most forwarded address not itself trusted.
    /// Default none (the peer address counts). At most 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<String>>,
}

/// One API key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// Unique id of the key, named in logs and audit entries. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// SHA-256 of the key, 64 lowercase hexadecimal digits. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The tenant the key acts for. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The key's role, one of `security.roles`. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// When the key stops working, RFC 3339 UTC, like `2030-01-01T00:00:00Z`. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A configured role: its permissions alone, or a mapping that may also
/// name the roles it inherits from.
///
/// Deserialised by hand rather than `untagged`, so that a wrong permission
/// inside either form is reported where it is, not as "no variant matched".
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawRole {
    /// `[tasks.create, jobs.read]`: these permissions, nothing inherited.
    Permissions(Vec<Permission>),
    /// `{inherits: [developer], permissions: [dlq.replay]}`.
    Defined(RawRoleDefinition),
}

impl<'de> Deserialize<'de> for RawRole {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RawRole, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawRole;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of permissions, or a mapping with `inherits` and `permissions`")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawRole, A::Error> {
                Vec::<Permission>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawRole::Permissions)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawRole, A::Error> {
                RawRoleDefinition::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawRole::Defined)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A role as a mapping.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoleDefinition {
    /// Roles (built-in or configured) whose permissions this one holds too. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherits: Option<Vec<String>>,
    /// Permissions it grants on top of what it inherits. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<Permission>>,
}

/// A permission a role can grant.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Permission {
    /// Run a task: `POST /v1/tasks`.
    #[serde(rename = "tasks.create")]
    TasksCreate,
    /// Submit a job: `POST /v1/jobs`.
    #[serde(rename = "jobs.create")]
    JobsCreate,
    /// Read one of the tenant's jobs: `GET /v1/jobs/{id}`.
    #[serde(rename = "jobs.read")]
    JobsRead,
    /// List the tenant's jobs: `GET /v1/jobs`.
    #[serde(rename = "jobs.list")]
    JobsList,
    /// List the dead-letter queue: `GET /v1/dlq`.
    #[serde(rename = "dlq.read")]
    DlqRead,
    /// Replay a dead job: `POST /v1/dlq/{id}/replay`.
    #[serde(rename = "dlq.replay")]
    DlqReplay,
    /// Read the audit log: `GET /v1/audit`.
    #[serde(rename = "audit.read")]
    AuditRead,
    /// Verify the audit chain: `GET /v1/audit/verify`.
    #[serde(rename = "audit.verify")]
    AuditVerify,
    /// Read the budget and usage of one's own tenant: `GET /v1/budgets/{tenant}`.
    #[serde(rename = "budget.read")]
    BudgetRead,
    /// Read the budget and usage of every tenant.
    #[serde(rename = "budget.read_all")]
    BudgetReadAll,
    /// Read the roles and their permissions: `GET /v1/roles`.
    #[serde(rename = "roles.read")]
    RolesRead,
    /// List the tenant's keys: `GET /v1/keys`.
    #[serde(rename = "keys.read")]
    KeysRead,
    /// Issue a key for the tenant: `POST /v1/keys`.
    #[serde(rename = "keys.create")]
    KeysCreate,
    /// Rotate one of the tenant's keys: `POST /v1/keys/{id}/rotate`.
    #[serde(rename = "keys.rotate")]
    KeysRotate,
    /// Revoke one of the tenant's keys: `DELETE /v1/keys/{id}`.
    #[serde(rename = "keys.revoke")]
    KeysRevoke,
    /// List every tenant's keys: `GET /v1/keys?tenant=`.
    #[serde(rename = "keys.read_all")]
    KeysReadAll,
    /// Issue, rotate and revoke the keys of every tenant.
    #[serde(rename = "keys.manage_all")]
    KeysManageAll,
    /// Read and list every tenant's jobs: `GET /v1/jobs?tenant=`.
    #[serde(rename = "jobs.read_all")]
    JobsReadAll,
    /// List every tenant's dead-letter queue: `GET /v1/dlq?tenant=`.
    #[serde(rename = "dlq.read_all")]
    DlqReadAll,
    /// Replay every tenant's dead jobs: `POST /v1/dlq/{id}/replay?tenant=`.
    #[serde(rename = "dlq.replay_all")]
    DlqReplayAll,
}

impl Permission {
    /// Every permission, in declaration order.
    pub const ALL: [Permission; 20] = [
        Permission::TasksCreate,
        Permission::JobsCreate,
        Permission::JobsRead,
        Permission::JobsList,
        Permission::DlqRead,
        Permission::DlqReplay,
        Permission::AuditRead,
        Permission::AuditVerify,
        Permission::BudgetRead,
        Permission::BudgetReadAll,
        Permission::RolesRead,
        Permission::KeysRead,
        Permission::KeysCreate,
        Permission::KeysRotate,
        Permission::KeysRevoke,
        Permission::KeysReadAll,
        Permission::KeysManageAll,
        Permission::JobsReadAll,
        Permission::DlqReadAll,
        Permission::DlqReplayAll,
    ];

    /// The name the configuration writes, like `tasks.create`.
    pub fn name(self) -> &'static str {
        match self {
            Permission::TasksCreate => "tasks.create",
            Permission::JobsCreate => "jobs.create",
            Permission::JobsRead => "jobs.read",
            Permission::JobsList => "jobs.list",
            Permission::DlqRead => "dlq.read",
            Permission::DlqReplay => "dlq.replay",
            Permission::AuditRead => "audit.read",
            Permission::AuditVerify => "audit.verify",
            Permission::BudgetRead => "budget.read",
            Permission::BudgetReadAll => "budget.read_all",
            Permission::RolesRead => "roles.read",
            Permission::KeysRead => "keys.read",
            Permission::KeysCreate => "keys.create",
            Permission::KeysRotate => "keys.rotate",
            Permission::KeysRevoke => "keys.revoke",
            Permission::KeysReadAll => "keys.read_all",
            Permission::KeysManageAll => "keys.manage_all",
            Permission::JobsReadAll => "jobs.read_all",
            Permission::DlqReadAll => "dlq.read_all",
            Permission::DlqReplayAll => "dlq.replay_all",
        }
    }
}

/// A rate limit (generic cell rate algorithm).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Sustained requests per second: 1 to 100000. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Requests a key may send at once before the sustained rate applies: 1 to 100000.
    /// Default twice `requests_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// PII redaction: see the README's "Personal data" section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPiiRedaction {
    /// Whether to redact. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// What to redact. Default all types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PiiType>>,
    /// What a detected value becomes. Default `mask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<PiiStrategy>,
    /// Detections below this confidence (0 to 100) are left alone. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence_percent: Option<u8>,
    /// The environment variable holding the key of the `hash` strategy (at least 16
    /// bytes). Without it each start draws a random key, so hashes correlate only
    /// within one run of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key_env: Option<String>,
}

/// A kind of personal data or secret. The detectors are in `pii.rs`, one per
/// type or more.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PiiType {
    /// Email addresses.
    Email,
    /// Phone numbers, international (E.164, `+` and 8 to 15 digits) and national formats.
    Phone,
    /// US social security numbers.
    Ssn,
    /// Payment card numbers of 13 to 19 digits, Luhn-checked.
    CreditCard,
    /// International bank account numbers, checksum-checked.
    Iban,
    /// IPv4 addresses.
    Ipv4,
    /// IPv6 addresses.
    Ipv6,
    /// MAC addresses.
    MacAddress,
    /// Dates of birth after a label such as `DOB:` or `born on`.
    DateOfBirth,
    /// Passport numbers after a label.
    Passport,
    /// National identity numbers after a label.
    NationalId,
    /// API keys and secret tokens of well-known formats, and values after `api_key=`,
    /// `secret:`, `password=` and the like.
    ApiKey,
    /// JSON web tokens.
    Jwt,
    /// Bearer tokens in text (`Bearer ...`, `Authorization: Basic ...`).
    BearerToken,
    /// URLs with credentials in them (`https://user:pass@host/`).
    UrlCredentials,
    /// PEM private keys.
    PrivateKey,
}

impl PiiType {
    /// Every type, in declaration order.
    pub const ALL: [PiiType; 16] = [
        PiiType::Email,
        PiiType::Phone,
        PiiType::Ssn,
        PiiType::CreditCard,
        PiiType::Iban,
        PiiType::Ipv4,
        PiiType::Ipv6,
        PiiType::MacAddress,
        PiiType::DateOfBirth,
        PiiType::Passport,
        PiiType::NationalId,
        PiiType::ApiKey,
        PiiType::Jwt,
        PiiType::BearerToken,
        PiiType::UrlCredentials,
        PiiType::PrivateKey,
    ];

    /// The name in configuration and in masks, like `credit_card`.
    pub fn name(self) -> &'static str {
        match self {
            PiiType::Email => "email",
            PiiType::Phone => "phone",
            PiiType::Ssn => "ssn",
            PiiType::CreditCard => "credit_card",
            PiiType::Iban => "iban",
            PiiType::Ipv4 => "ipv4",
            PiiType::Ipv6 => "ipv6",
            PiiType::MacAddress => "mac_address",
            PiiType::DateOfBirth => "date_of_birth",
            PiiType::Passport => "passport",
            PiiType::NationalId => "national_id",
            PiiType::ApiKey => "api_key",
            PiiType::Jwt => "jwt",
            PiiType::BearerToken => "bearer_token",
            PiiType::UrlCredentials => "url_credentials",
            PiiType::PrivateKey => "private_key",
        }
    }
}

/// What a detected value becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PiiStrategy {
    /// `[REDACTED:email]`: the type survives, nothing of the value.
    #[default]
    Mask,
    /// `[email:1f2e3d4c5b6a7988]`: a keyed hash (HMAC-SHA256, 64 bits shown), so
    /// equal values correlate across entries without being reversible.
    Hash,
    /// Nothing: the value is cut out.
    Remove,
}

/// Task limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTasks {
    /// Tools an action plan may use: 1 to 64 unique names of `a-z`, `0-9` and `_`, starting
    /// with a letter. Default `search`, `http_get`, `summarize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    /// Largest prompt accepted. Default `32KiB`, at most `1MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_size: Option<SizeText>,
    /// Largest provider output accepted. Default `64KiB`, at most `4MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_size: Option<SizeText>,
}

/// Observability.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    /// Whether `/metrics` serves Prometheus metrics. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<bool>,
    /// Log line format. Default `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Health thresholds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDegradation {
    /// Error rate over `window` above which the service reports degraded and sheds optional
    /// work: 0.0 to 1.0. Default 0.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_error_rate: Option<f64>,
    /// Error rate over `window` above which the service reports unhealthy, at least
    /// `degraded_error_rate`: 0.0 to 1.0. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_error_rate: Option<f64>,
    /// The sliding window error rates are measured over. Default `30s`, at most `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationText>,
    /// How long the health signals must ask for a higher level before the service rises
    /// one level. Default `2s`, at most `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enter_after: Option<DurationText>,
    /// How long they must ask for a lower level before it falls one level: longer than
    /// `enter_after`, so that a recovering service does not flap. Default `10s`, at most `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_after: Option<DurationText>,
    /// A store probe at least this slow puts the service at level 2. Default `1s`, at most
    /// `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_store: Option<DurationText>,
}
