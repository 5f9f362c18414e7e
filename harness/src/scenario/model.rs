//! The validated scenario: what `gauntlet run` executes. Every value here has
//! passed validation, so the engine never re-checks ranges or references.

use std::path::PathBuf;
use std::time::Duration;

/// A battle test: the system to bring up, the load to drive, the faults to
/// inject and the checks to make.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The scenario's name: lowercase letters, digits and `-`, unique in a suite.
    pub name: String,
    /// What the scenario proves, in a sentence or two.
    pub description: String,
    /// The seed every random choice of the run derives from (`--seed` overrides it).
    pub seed: u64,
    /// The file it was read from.
    pub source: PathBuf,
    /// The system under test.
    pub system: SystemSpec,
    /// The load driven through the client link.
    pub load: LoadSpec,
    /// The fault timeline, sorted by start time.
    pub faults: Vec<Fault>,
    /// Service-level objectives, in file order.
    pub slos: Vec<Slo>,
    /// Invariants, in file order.
    pub invariants: Vec<Invariant>,
    /// The fault space `gauntlet explore` draws schedules from, if any.
    pub explore: Option<Explore>,
}

/// The `explore:` section: the space of fault schedules `gauntlet explore`
/// draws from. Every template has been validated at both ends of its ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct Explore {
    /// A schedule holds 1 to this many faults.
    pub max_faults: u32,
    /// At most this many faults are active at any moment (and never two on
    /// the same target).
    pub max_at_once: u32,
    /// The faults a schedule is drawn from.
    pub space: Vec<FaultTemplate>,
}

/// One kind of fault in an explore space, with ranges for its duration and
/// parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultTemplate {
    /// The fault's target, as written.
    pub target: String,
    /// The fault's kind, as written.
    pub kind: String,
    /// How long it lasts; `None` for an instant fault.
    pub duration: Option<Span>,
    /// The parameters, each range replaced at run time by a value drawn
    /// from it.
    pub params: Option<serde_json::Value>,
    /// The ranges in `params`, in a fixed order.
    pub ranges: Vec<ParamRange>,
}

impl FaultTemplate {
    /// The parameters with each range at its `intensity` (0 the mildest end,
    /// 1 the harshest; missing entries count as 0).
    pub fn params_at(&self, intensity: &[f64]) -> Option<serde_json::Value> {
        let mut params = self.params.clone()?;
        for (i, range) in self.ranges.iter().enumerate() {
            let t = intensity.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            if let Some(slot) = params.pointer_mut(&range.pointer) {
                *slot = range.value_at(t);
            }
        }
        Some(params)
    }
}

/// A range of durations, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The shortest.
    pub min: Duration,
    /// The longest.
    pub max: Duration,
}

/// A range written `[mild, harsh]` in a template's params.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamRange {
    /// Where it is in the params (a JSON pointer).
    pub pointer: String,
    /// The first end written, the mildest: shrinking moves toward it.
    pub mild: f64,
    /// The second end written, the harshest.
    pub harsh: f64,
    /// What the values are.
    pub unit: RangeUnit,
}

/// What a range's values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeUnit {
    /// Both ends were integers: values are rounded.
    Integer,
    /// Any number between the ends.
    Real,
    /// Both ends were sizes like `32MiB`: values are whole bytes, written
    /// as a size.
    Size,
}

impl ParamRange {
    /// The value at `t` in [0, 1] from the mild end, as the params write it.
    pub fn value_at(&self, t: f64) -> serde_json::Value {
        let v = self.mild + (self.harsh - self.mild) * t;
        match self.unit {
            RangeUnit::Integer => serde_json::Value::from(v.round() as i64),
            // Two decimals: a schedule reads better, and replays the same.
            RangeUnit::Real => serde_json::Value::from((v * 100.0).round() / 100.0),
            RangeUnit::Size => {
                // Whole KiB: a schedule reads `48MiB`, not `50331651B`.
                let bytes = (v / 1024.0).round().max(1.0) as u64 * 1024;
                serde_json::Value::from(orchestrator::config::format_size(bytes))
            }
        }
    }
}

/// The system under test.
#[derive(Clone, Debug, PartialEq)]
pub struct SystemSpec {
    /// Orchestrator replicas, 1 to [`MAX_REPLICAS`] (more than 1 only on Redis).
    pub replicas: u32,
    /// The store behind the replicas.
    pub store: StoreKind,
    /// The orchestrator configuration: the named or given base file with the
    /// scenario's overrides merged over it, validated. The engine still sets
    /// the run's own values (listen address, provider URLs through the proxy,
    /// database path, tenants' keys) before starting the service.
    pub config_yaml: String,
    /// Where `config_yaml` came from (for the report).
    pub config_base: PathBuf,
    /// What `config_yaml` promises, which the load plans from and the checks
    /// judge by.
    pub contract: super::Contract,
}

/// Where the orchestrator keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// SQLite in the run's data directory (one replica only).
    Sqlite,
    /// A Redis server the harness runs, shared by the replicas.
    Redis {
        /// Whether Redis logs every write to its append-only file, synced
        /// before it answers (`appendfsync always`): a killed Redis then
        /// comes back with everything it acknowledged; without it, with
        /// nothing.
        appendonly: bool,
    },
}

/// The load: open loop, at the profile's rate, with a request mix.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSpec {
    /// The rate over time; the stages' durations add up to the run's length.
    pub stages: Vec<Stage>,
    /// Relative weights of request kinds; at least one is positive.
    pub mix: Mix,
    /// The tenants requests are spread over, each with its own key and budget.
    pub tenants: Vec<Tenant>,
    /// The share of requests, in [0, 1], that reuse an earlier request's
    /// idempotency key (and its body), as a client retrying would.
    pub idempotency_reuse: f64,
    /// At most this many requests in flight; more wait (their latency still
    /// counts from their intended send time).
    pub max_in_flight: u32,
    /// A request still unanswered after this long is recorded as timed out.
    pub request_timeout: Duration,
    /// Tokens each task or job asks for (`max_tokens`).
    pub max_tokens: u32,
    /// A brute-force attacker beside the load, if any.
    pub attack: Option<Attack>,
    /// A client that rotates its key mid-run, if any.
    pub rotation: Option<KeyRotation>,
    /// Jobs that carry a webhook, if any (FORMAT.md, "load.webhooks").
    pub webhooks: Option<WebhookLoad>,
    /// The share of tasks and jobs, in [0, 1], that carry planted personal
    /// data (an email address, a card number, an SSN) in their prompt,
    /// their `Idempotency-Key` and their `X-Request-Id`.
    pub personal_data: f64,
}

/// Jobs with webhooks: a share of the jobs carries one, to the harness's
/// webhook sink, or (a share of those) to its trap, a loopback port under a
/// name the allowlist admits, which the SSRF guard must refuse.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WebhookLoad {
    /// The share of jobs with a webhook, in (0, 1].
    pub share: f64,
    /// The share of those aimed at the trap, in [0, 1).
    pub forbidden: f64,
}

/// A client that rotates its key (FORMAT.md, "load.rotation"): at the
/// load's start it issues a `viewer` key with the first tenant's key, and
/// probes with it every `probe_every`; at `at` it rotates it, then probes
/// with the old key and the new one in turn, until the overlap must have
/// ended, and the new one a second longer.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRotation {
    /// When the key is rotated, from the load's start.
    pub at: Duration,
    /// The gap between probes.
    pub probe_every: Duration,
}

/// A brute-force attacker (FORMAT.md, "load.attack"): from one client
/// address of its own, `guesses` wrong keys one after another, each naming
/// the key id of the first tenant's issued-format key; then, until the
/// lockout must have ended, a probe every `probe_every` with a valid key,
/// alternately the tenant's key from the attacker's address and the guessed
/// key id's real key from a fresh address.
#[derive(Clone, Debug, PartialEq)]
pub struct Attack {
    /// When the first guess goes out, from the load's start.
    pub at: Duration,
    /// Wrong keys sent, back to back.
    pub guesses: u32,
    /// The gap between probes.
    pub probe_every: Duration,
}

impl LoadSpec {
    /// The total length of the load, the sum of its stages.
    pub fn duration(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }
}

/// A stretch of the load profile whose rate moves linearly from `start_rps`
/// to `end_rps` (equal for a constant rate; a spike is a short stage).
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// How long the stage lasts.
    pub duration: Duration,
    /// Requests per second at the start of the stage.
    pub start_rps: f64,
    /// Requests per second at the end of the stage.
    pub end_rps: f64,
}

/// Relative weights of the request kinds (FORMAT.md, "load.mix").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mix {
    /// `POST /v1/tasks`.
    pub tasks: u32,
    /// `POST /v1/jobs`.
    pub jobs: u32,
    /// Reads: `GET /v1/jobs/{id}` of an accepted job, else the tenant's budget.
    pub reads: u32,
    /// Replays of jobs seen dead (`POST /v1/dlq/{id}/replay`), else a listing
    /// of the dead-letter queue (`GET /v1/dlq`), which finds them.
    pub dlq: u32,
    /// Tasks whose body is over `server.body_limit` (413 due).
    pub oversized: u32,
    /// Tasks the mock provider delays past `server.request_timeout` (504 due).
    pub slow: u32,
    /// Requests to a random route without a key (401 due).
    pub no_key: u32,
    /// Requests to a random route with a key no one configured (401 due).
    pub unknown_key: u32,
    /// Requests to a random route with an expired key (401 due).
    pub expired_key: u32,
    /// Requests to a route with the key of a role that lacks its permission
    /// (403 due).
    pub forbidden: u32,
    /// Requests to a random route with the key of a random role: 403 when
    /// the role lacks the route's permission, served when it holds it.
    pub roles: u32,
}

/// A tenant of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    /// The tenant's name (`[a-z0-9-]+`).
    pub name: String,
    /// Its token budget; `None` leaves the configuration's default.
    pub budget_tokens: Option<u64>,
    /// The role of its key (`admin` unless given).
    pub role: String,
}

/// One fault on the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// The fault's name, unique in the scenario; SLO windows refer to it.
    pub name: String,
    /// When it starts, from the start of the load.
    pub at: Duration,
    /// How long it lasts; `None` for an instant fault (kill, restart).
    pub duration: Option<Duration>,
    /// What it acts on and how.
    pub action: FaultAction,
}

impl Fault {
    /// When the fault ends (its start for an instant fault).
    pub fn end(&self) -> Duration {
        self.at + self.duration.unwrap_or_default()
    }
}

/// The most orchestrator replicas a scenario may run.
pub const MAX_REPLICAS: u32 = 5;

/// The canonical names of each replica's links and process, by replica:
/// replica 0 keeps the plain names a one-replica system has always used
/// (`client[0]` and `orchestrator[0]` are read as them).
const CLIENT_NAMES: [&str; MAX_REPLICAS as usize] =
    ["client", "client[1]", "client[2]", "client[3]", "client[4]"];
const REDIS_LINK_NAMES: [&str; MAX_REPLICAS as usize] =
    ["redis[0]", "redis[1]", "redis[2]", "redis[3]", "redis[4]"];
const ORCHESTRATOR_NAMES: [&str; MAX_REPLICAS as usize] = [
    "orchestrator",
    "orchestrator[1]",
    "orchestrator[2]",
    "orchestrator[3]",
    "orchestrator[4]",
];

/// A link of the topology: each passes through a named proxy of the fault proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// Load generator → replica `i` (proxy `client`, `client[i]` for `i > 0`).
    Client(u8),
    /// Orchestrators → LLM provider (proxy `llm`).
    Llm,
    /// Replica `i` → Redis (proxy `redis[i]`).
    Redis(u8),
}

impl Link {
    /// The proxy's name, also the `target` in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Client(i) => CLIENT_NAMES[usize::from(i).min(CLIENT_NAMES.len() - 1)],
            Link::Llm => "llm",
            Link::Redis(i) => REDIS_LINK_NAMES[usize::from(i).min(REDIS_LINK_NAMES.len() - 1)],
        }
    }
}

/// The process a process fault acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    /// Orchestrator replica `i` (`orchestrator`, `orchestrator[i]`).
    Orchestrator(u8),
    /// The Redis server (`redis`).
    Redis,
}

impl Process {
    /// The target as written in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Process::Orchestrator(i) => {
                ORCHESTRATOR_NAMES[usize::from(i).min(ORCHESTRATOR_NAMES.len() - 1)]
            }
            Process::Redis => "redis",
        }
    }
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultAction {
    /// A Toxiproxy toxic on a link (`target: client|llm`).
    Toxic {
        /// The link.
        link: Link,
        /// The toxic, typed and validated by the fault proxy's model.
        toxic: crate::proxy::ToxicKind,
        /// The direction it acts on.
        stream: crate::proxy::Stream,
        /// The probability, in [0, 1], that a connection gets it.
        toxicity: f32,
    },
    /// The link is cut: existing connections close, new ones are refused.
    Partition {
        /// The link.
        link: Link,
    },
    /// A program installed on the mock LLM provider (`target: provider`),
    /// validated by the mock's own parser; removed when the fault ends.
    LlmProgram {
        /// The program, as the JSON the mock's admin API takes.
        program: serde_json::Value,
    },
    /// A program installed on the harness's webhook sink (`target:
    /// webhook_sink`), validated by the sink's own parser; removed when the
    /// fault ends.
    SinkProgram {
        /// The program's JSON.
        program: serde_json::Value,
    },
    /// SIGKILL the process; it is started again when the fault ends (at
    /// once for an instant fault). Redis comes back with what it had
    /// persisted.
    Kill {
        /// Which.
        process: Process,
    },
    /// SIGSTOP the process for the fault's duration, then SIGCONT.
    Pause {
        /// Which.
        process: Process,
    },
    /// Stop the process gracefully (SIGTERM) and start it again.
    Restart {
        /// Which.
        process: Process,
    },
    /// Fill the replica's data directory (a size-limited tmpfs) until the
    /// fault ends.
    DiskFull {
        /// The replica.
        replica: u8,
    },
    /// Fail the replica's file I/O with this probability (libfiu).
    IoErrors {
        /// The replica.
        replica: u8,
        /// In (0, 1].
        probability: f64,
    },
    /// Remount the replica's data directory read-only.
    ReadOnly {
        /// The replica.
        replica: u8,
    },
    /// Limit the replica's memory so that the kernel OOM-kills it; it is
    /// restarted, and runs normally again after the fault.
    Oom {
        /// The replica.
        replica: u8,
        /// The memory limit.
        limit_bytes: u64,
    },
}

/// A fault class, as `gauntlet list` shows and as needs are declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultClass {
    /// Toxics and partitions.
    Network,
    /// Mock LLM provider programs.
    Llm,
    /// Kill, pause, restart.
    Process,
    /// Disk full, I/O errors, read-only.
    Disk,
    /// Memory limits and OOM kills.
    Memory,
    /// Webhook sink programs.
    Webhook,
}

impl FaultClass {
    /// The class's name, as `gauntlet list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultClass::Network => "network",
            FaultClass::Llm => "llm",
            FaultClass::Process => "process",
            FaultClass::Disk => "disk",
            FaultClass::Memory => "memory",
            FaultClass::Webhook => "webhook",
        }
    }
}

impl FaultAction {
    /// The kind as written in scenario files.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultAction::Toxic { toxic, .. } => toxic.type_name(),
            FaultAction::Partition { .. } => "partition",
            FaultAction::LlmProgram { .. } | FaultAction::SinkProgram { .. } => "program",
            FaultAction::Kill { .. } => "kill",
            FaultAction::Pause { .. } => "pause",
            FaultAction::Restart { .. } => "restart",
            FaultAction::DiskFull { .. } => "disk_full",
            FaultAction::IoErrors { .. } => "io_errors",
            FaultAction::ReadOnly { .. } => "read_only",
            FaultAction::Oom { .. } => "oom",
        }
    }

    /// The target as written in scenario files.
    pub fn target(&self) -> &'static str {
        match self {
            FaultAction::Toxic { link, .. } | FaultAction::Partition { link } => link.as_str(),
            FaultAction::LlmProgram { .. } => "provider",
            FaultAction::SinkProgram { .. } => "webhook_sink",
            FaultAction::Kill { process }
            | FaultAction::Pause { process }
            | FaultAction::Restart { process } => process.as_str(),
            FaultAction::DiskFull { replica }
            | FaultAction::IoErrors { replica, .. }
            | FaultAction::ReadOnly { replica }
            | FaultAction::Oom { replica, .. } => Process::Orchestrator(*replica).as_str(),
        }
    }

    /// The fault's class.
    pub fn class(&self) -> FaultClass {
        match self {
            FaultAction::Toxic { .. } | FaultAction::Partition { .. } => FaultClass::Network,
            FaultAction::LlmProgram { .. } => FaultClass::Llm,
            FaultAction::SinkProgram { .. } => FaultClass::Webhook,
            FaultAction::Kill { .. } | FaultAction::Pause { .. } | FaultAction::Restart { .. } => {
                FaultClass::Process
            }
            FaultAction::DiskFull { .. }
            | FaultAction::IoErrors { .. }
            | FaultAction::ReadOnly { .. } => FaultClass::Disk,
            FaultAction::Oom { .. } => FaultClass::Memory,
        }
    }
}

/// A service-level objective.
#[derive(Clone, Debug, PartialEq)]
pub struct Slo {
    /// What is measured, with its threshold.
    pub objective: Objective,
    /// Over which part of the run.
    pub window: Window,
}

/// A measure and its threshold. Latencies count from each request's intended
/// send time; errors are 5xx answers and requests that got no answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Objective {
    /// A latency quantile (0.5, 0.9, 0.95, 0.99 or 1.0 for the maximum) at most `max`.
    Latency {
        /// The quantile, in (0, 1].
        quantile: f64,
        /// The threshold.
        max: Duration,
    },
    /// The share of requests that failed (5xx or no answer) at most `max`.
    ErrorRate {
        /// In [0, 1].
        max: f64,
    },
    /// The share of one-second intervals in which the system answered
    /// (fewer than half of its requests failed) at least `min`.
    Availability {
        /// In [0, 1].
        min: f64,
    },
    /// Answered requests per second at least `min_rps`.
    Throughput {
        /// Requests per second.
        min_rps: f64,
    },
    /// After the window's fault ends, the time until the error rate stays at
    /// or under `error_rate` for three seconds, at most `max`.
    RecoveryTime {
        /// The threshold.
        max: Duration,
        /// What counts as recovered (default 0.05).
        error_rate: f64,
    },
}

impl Objective {
    /// The metric's name as written in scenario files (one of [`METRICS`](super::METRICS)).
    pub fn metric(&self) -> String {
        match self {
            Objective::Latency { quantile, .. } if *quantile >= 1.0 => "latency_max".to_owned(),
            Objective::Latency { quantile, .. } => {
                format!("latency_p{}", (quantile * 100.0).round() as u32)
            }
            Objective::ErrorRate { .. } => "error_rate".to_owned(),
            Objective::Availability { .. } => "availability".to_owned(),
            Objective::Throughput { .. } => "throughput".to_owned(),
            Objective::RecoveryTime { .. } => "recovery_time".to_owned(),
        }
    }
}

/// A part of the run, relative to the load's start and the fault timeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    /// The whole run.
    All,
    /// From the start to the named fault's start.
    Before(String),
    /// While the named fault is active.
    During(String),
    /// From the named fault's end plus `delay` to the end of the run.
    After {
        /// The fault's name.
        fault: String,
        /// Time left for recovery before the window opens.
        delay: Duration,
    },
    /// Every sliding window of this length (stepping by one second) must hold.
    Every(Duration),
}

impl Window {
    /// The fault the window is relative to, if any.
    pub fn fault(&self) -> Option<&str> {
        match self {
            Window::Before(f) | Window::During(f) | Window::After { fault: f, .. } => Some(f),
            Window::All | Window::Every(_) => None,
        }
    }
}

/// A named invariant with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Invariant {
    /// Every job acknowledged with 202 ends `succeeded` or `dead` (in the DLQ).
    NoLostJobs {
        /// How long to wait, after the load, for jobs to settle.
        settle: Duration,
    },
    /// One charge per task and per idempotency key; each charge equals the
    /// usage the mock provider reported for one of that task's calls.
    ExactlyOnceCharge,
    /// No tenant's usage exceeds its limit, sampled during and after the run.
    BudgetNeverOverdrawn,
    /// Budgets add up in the database the run left: per tenant, `used` is
    /// the sum of its charges and `reserved` of its held reservations; after
    /// a clean shutdown nothing is held and no key is in flight.
    BudgetConserved,
    /// The audit chain in the database verifies by the documented hash (the
    /// harness's own verifier), and the service's own verification agrees.
    AuditChainIntact,
    /// Requests that reused an idempotency key and succeeded got the same body.
    IdempotentReplayConsistent,
    /// Every answer's status is one of these (no answer counts as status 0).
    AllowedStatuses {
        /// Allowed statuses.
        statuses: Vec<u16>,
    },
    /// Per key, admitted requests in any interval stay within the configured
    /// rate times the interval plus the burst; every 429 carries `Retry-After`.
    RateLimitRespected,
    /// `/health/live` answers 200 throughout; `/health/ready` is not 200
    /// while the named faults last, and is 200 again within `within` after.
    ReadyReflectsFaults {
        /// The faults during which the service must say it is not ready.
        faults: Vec<String>,
        /// Time allowed to become ready again after each fault.
        within: Duration,
    },
    /// The orchestrator's logs hold no panic.
    NoPanics,
    /// After the provider answered `Retry-After: N`, the next attempt of the
    /// same request came no sooner than N seconds later.
    RetryAfterHonoured,
    /// Provider calls per request stay within the providers' retry attempts,
    /// job attempts within `jobs.max_attempts`.
    AttemptsBounded,
    /// Every 200 carries a plan that passes the harness's own check, and no
    /// injected payload reaches a client.
    DeliveredOutputValid,
    /// Dead jobs carry their last error and their audit entry, exhausted jobs
    /// are dead, replayed jobs end succeeded or dead, and the DLQ listing
    /// matches the jobs table.
    DlqComplete,
    /// Oversized bodies got 413, slow requests 504, and nothing else did.
    LimitsEnforced,
    /// Every answer agrees with the configuration's roles and permissions.
    AccessEnforced,
    /// Every answer carries the security headers, with their fixed values
    /// (`Strict-Transport-Security` exactly when `security.hsts` is set).
    SecurityHeaders,
    /// Past `security.lockout.max_failures` failed authentications, nothing
    /// from the address or naming the key id is served until the lockout
    /// ends, and no one else is ever locked.
    LockoutEffective,
    /// A rotated key works beside its successor until the overlap ends,
    /// then gets 401 and nothing else; the successor always works.
    RotationSeamless,
    /// None of the personal data the load planted appears in the
    /// orchestrator's log, its audit rows, any answer (a job's own
    /// `idempotency_key` aside) or any webhook payload.
    NoPiiLeaked,
    /// Every terminal job with a webhook to the sink was delivered at least
    /// once with a valid signature, and every delivery the sink received is
    /// one the database holds for that job (redeliveries keep the id).
    WebhooksDelivered,
    /// The trap was never connected to, and every terminal job aimed at it
    /// records a refusal naming a forbidden address.
    SsrfRefused,
    /// Every job's completion, failure and release in the audit log comes
    /// from the worker holding its latest lease, and no job is leased while
    /// another worker holds it: a worker whose lease was taken over changes
    /// nothing.
    LeasesFenced,
    /// Every request admission control shed is answered 503 `overloaded`
    /// with `Retry-After` within `within`, and only when the route's bound
    /// could have been reached (as many others in flight).
    ShedFast {
        /// How long a shed answer may take, from sending to its end.
        within: Duration,
    },
    /// The degradation level, as the audit log records its transitions,
    /// moves one step at a time, each rise at least `degradation.enter_after`
    /// and each fall at least `leave_after` after the step before; it
    /// reaches `reaches` and is back to normal within `within` of the last
    /// fault's end; every 503 `degraded` answer is work its level documents
    /// shedding, and no such work was served while its level shed it.
    DegradationGraceful {
        /// The least level the run must reach, an index into
        /// [`DEGRADATION_LEVELS`] (1 to 4).
        reaches: usize,
        /// How long after the last fault ends the level must be normal.
        within: Duration,
    },
}

/// The service's degradation levels, as its audit log and `/health` name
/// them, in order.
pub const DEGRADATION_LEVELS: [&str; 5] = ["normal", "level_1", "level_2", "level_3", "emergency"];

impl Invariant {
    /// Every invariant's name, as scenario files write them: the bare ones
    /// ([`Invariant::BARE`]) and those with parameters.
    pub const NAMES: [&'static str; 25] = [
        "no_lost_jobs",
        "exactly_once_charge",
        "budget_never_overdrawn",
        "budget_conserved",
        "audit_chain_intact",
        "idempotent_replay_consistent",
        "allowed_statuses",
        "rate_limit_respected",
        "ready_reflects_faults",
        "no_panics",
        "retry_after_honoured",
        "attempts_bounded",
        "delivered_output_valid",
        "dlq_complete",
        "limits_enforced",
        "access_enforced",
        "security_headers",
        "lockout_effective",
        "rotation_seamless",
        "no_pii_leaked",
        "webhooks_delivered",
        "ssrf_refused",
        "leases_fenced",
        "shed_fast",
        "degradation_graceful",
    ];

    /// The invariants that take no parameters, written as a bare name.
    pub const BARE: [Invariant; 20] = [
        Invariant::ExactlyOnceCharge,
        Invariant::BudgetNeverOverdrawn,
        Invariant::BudgetConserved,
        Invariant::AuditChainIntact,
        Invariant::IdempotentReplayConsistent,
        Invariant::RateLimitRespected,
        Invariant::NoPanics,
        Invariant::RetryAfterHonoured,
        Invariant::AttemptsBounded,
        Invariant::DeliveredOutputValid,
        Invariant::DlqComplete,
        Invariant::LimitsEnforced,
        Invariant::AccessEnforced,
        Invariant::SecurityHeaders,
        Invariant::LockoutEffective,
        Invariant::RotationSeamless,
        Invariant::NoPiiLeaked,
        Invariant::WebhooksDelivered,
        Invariant::SsrfRefused,
        Invariant::LeasesFenced,
    ];

    /// The faults of the timeline it names (only `ready_reflects_faults`
    /// names any): it judges that timeline, not any schedule.
    pub fn faults(&self) -> &[String] {
        match self {
            Invariant::ReadyReflectsFaults { faults, .. } => faults,
            _ => &[],
        }
    }

    /// The name as written in scenario files.
    pub fn name(&self) -> &'static str {
        match self {
            Invariant::NoLostJobs { .. } => "no_lost_jobs",
            Invariant::ExactlyOnceCharge => "exactly_once_charge",
            Invariant::BudgetNeverOverdrawn => "budget_never_overdrawn",
            Invariant::BudgetConserved => "budget_conserved",
            Invariant::AuditChainIntact => "audit_chain_intact",
            Invariant::IdempotentReplayConsistent => "idempotent_replay_consistent",
            Invariant::AllowedStatuses { .. } => "allowed_statuses",
            Invariant::RateLimitRespected => "rate_limit_respected",
            Invariant::ReadyReflectsFaults { .. } => "ready_reflects_faults",
            Invariant::NoPanics => "no_panics",
            Invariant::RetryAfterHonoured => "retry_after_honoured",
            Invariant::AttemptsBounded => "attempts_bounded",
            Invariant::DeliveredOutputValid => "delivered_output_valid",
            Invariant::DlqComplete => "dlq_complete",
            Invariant::LimitsEnforced => "limits_enforced",
            Invariant::AccessEnforced => "access_enforced",
            Invariant::SecurityHeaders => "security_headers",
            Invariant::LockoutEffective => "lockout_effective",
            Invariant::RotationSeamless => "rotation_seamless",
            Invariant::NoPiiLeaked => "no_pii_leaked",
            Invariant::WebhooksDelivered => "webhooks_delivered",
            Invariant::SsrfRefused => "ssrf_refused",
            Invariant::LeasesFenced => "leases_fenced",
            Invariant::ShedFast { .. } => "shed_fast",
            Invariant::DegradationGraceful { .. } => "degradation_graceful",
        }
    }
}
