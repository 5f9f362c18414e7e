//! Raw scenario to typed [`Scenario`]. Every finding is collected, located at
//! the node it is about (or, for a missing field, its parent); the scenario
//! is returned only when there is no error.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use orchestrator::config::{format_duration, parse_duration, parse_size};
use orchestrator::yaml::{
    Code, Diagnostic, Location, Node, NodeKind, Severity, child_path, is_null, is_path_prefix,
};
use serde_json::{Map, Value};

use super::model::*;
use super::raw::*;
use crate::mock_llm::{self, Program, ProgramError};
use crate::proxy::{self, ApiError, TOXIC_TYPES, ToxicKind};

/// The longest scenario, fault, tenant or config name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// The longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// The highest rate a load may ask for, in requests per second.
pub const MAX_RATE_RPS: f64 = 2000.0;
/// The longest load.
pub const MAX_LOAD_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The most stages in a staged load.
pub const MAX_STAGES: usize = 1000;
/// The most tenants.
pub const MAX_TENANTS: usize = 1000;
/// The largest weight in a request mix.
pub const MAX_MIX_WEIGHT: u32 = 1000;
/// The most requests in flight a scenario may allow.
pub const MAX_IN_FLIGHT: u32 = 4096;
/// The longest request timeout, invariant settle time and readiness delay.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// The largest `max_tokens` per request.
pub const MAX_TOKENS: u32 = 100_000;
/// The most wrong keys an attacker sends.
pub const MAX_ATTACK_GUESSES: u32 = 10_000;
/// The most faults on a timeline.
pub const MAX_FAULTS: usize = 100;
/// The most SLOs.
pub const MAX_SLOS: usize = 100;
/// The most entries in an invariant's list parameter (statuses, faults).
pub const MAX_LIST_ITEMS: usize = 100;
/// The most entries in `invariants` (each may appear once, so more is a mistake).
pub const MAX_INVARIANTS: usize = 100;
/// The most keys in a fault's `params`.
pub const MAX_PARAMS: usize = 16;
/// The largest `oom` memory limit.
pub const MAX_OOM_LIMIT_BYTES: u64 = 64 << 30;
/// The highest throughput an SLO may ask for, in requests per second.
pub const MAX_THROUGHPUT_RPS: f64 = 1_000_000.0;

/// Fault kinds acting on a link of the fault proxy, beyond Toxiproxy's toxics.
const PARTITION: &str = "partition";
/// The fault kind acting on the mock LLM provider.
const PROGRAM: &str = "program";
/// Fault kinds acting on the orchestrator's process, disk and memory.
const ORCHESTRATOR_KINDS: [&str; 7] = [
    "kill",
    "pause",
    "restart",
    "disk_full",
    "io_errors",
    "read_only",
    "oom",
];
/// Of those, the kinds that also act on Redis.
const PROCESS_KINDS: [&str; 3] = ["kill", "pause", "restart"];
/// Faults that may be instant (no `for`).
pub(crate) const INSTANT_KINDS: [&str; 2] = ["kill", "restart"];
/// Every `target` (`client`, `orchestrator` and `redis[i]` take a replica's
/// index in brackets).
const TARGETS: [&str; 7] = [
    "client",
    "llm",
    "redis[i]",
    "provider",
    "webhook_sink",
    "orchestrator",
    "redis",
];
/// The targets of network kinds.
const LINK_TARGETS: [&str; 3] = ["client", "llm", "redis[i]"];

/// Every SLO metric.
pub const METRICS: [&str; 9] = [
    "latency_p50",
    "latency_p90",
    "latency_p95",
    "latency_p99",
    "latency_max",
    "error_rate",
    "availability",
    "throughput",
    "recovery_time",
];

/// The least a slow request's client timeout must exceed the service's
/// request timeout by, so that the 504 arrives before the client gives up.
const SLOW_MARGIN: Duration = Duration::from_secs(2);
/// The largest body an oversized request sends: past it, lower
/// `server.body_limit` for the scenario.
pub const MAX_OVERSIZED_BODY_BYTES: u64 = 16 << 20;

/// Defaults.
const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A plan is a few hundred bytes and providers cut content at `max_tokens`
/// (the mock at 4 bytes a token), so the default leaves plenty of room.
const DEFAULT_MAX_TOKENS: u32 = 512;
/// The gap between an attacker's valid-key probes.
const DEFAULT_PROBE_EVERY: Duration = Duration::from_millis(250);
const DEFAULT_SETTLE: Duration = Duration::from_secs(30);
const DEFAULT_READY_WITHIN: Duration = Duration::from_secs(15);
/// How long a shed answer may take when `shed_fast` does not say: shedding
/// is a semaphore's refusal, and this leaves room for a loaded machine.
const DEFAULT_SHED_WITHIN: Duration = Duration::from_millis(100);
/// How long after the last fault the level must be normal when
/// `degradation_graceful` does not say: four falls of the default
/// `leave_after` (10s), and room for the error window to empty.
const DEFAULT_DEGRADATION_WITHIN: Duration = Duration::from_secs(60);
const DEFAULT_RECOVERY_ERROR_RATE: f64 = 0.05;
const DEFAULT_ROLE: &str = "admin";
/// The shortest `every` window: availability is counted per second.
const MIN_EVERY: Duration = Duration::from_secs(1);

/// Every fault kind, in the order errors list them.
fn all_kinds() -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = TOXIC_TYPES.to_vec();
    kinds.push(PARTITION);
    kinds.push(PROGRAM);
    kinds.extend(ORCHESTRATOR_KINDS);
    kinds
}

/// The targets a kind may act on, or `None` for an unknown kind.
fn targets_of(kind: &str) -> Option<&'static [&'static str]> {
    if TOXIC_TYPES.contains(&kind) || kind == PARTITION {
        Some(&LINK_TARGETS)
    } else if kind == PROGRAM {
        Some(&["provider", "webhook_sink"])
    } else if PROCESS_KINDS.contains(&kind) {
        Some(&["orchestrator", "redis"])
    } else if ORCHESTRATOR_KINDS.contains(&kind) {
        Some(&["orchestrator"])
    } else {
        None
    }
}

/// "; did you mean `x`?" when a candidate is close, else the whole list.
pub(crate) fn suggest(name: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("; did you mean `{c}`?"))
        .unwrap_or_else(|| format!("; expected one of {}", list(candidates)))
}

/// Renders names as "`a`, `b`, `c`".
pub(crate) fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// At most 60 characters of user text, for messages.
fn shown(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        format!("{short}...")
    } else {
        short
    }
}

/// What windows and invariants need to know about a fault, read from the
/// raw file so that one broken fault does not also break every reference.
struct FaultInfo {
    name: String,
    kind: Option<String>,
    /// Whether it was given a `for`.
    lasts: bool,
    start: Option<Duration>,
    end: Option<Duration>,
}

/// Builds the typed scenario and collects findings.
pub(crate) struct Validator<'a> {
    /// The scenario file, for finding its base configuration.
    pub(crate) source: &'a Path,
    pub(crate) root: Option<&'a Node>,
    /// Paths whose decoding failed: findings at or under them would only repeat the failure.
    failed: &'a [String],
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// The system's shape, which fault targets are checked against; set
    /// when `system` is validated, before the faults.
    topology: Topology,
}

/// How many replicas there are, and whether there is a Redis.
#[derive(Clone, Copy, Debug)]
struct Topology {
    replicas: u8,
    redis: bool,
}

/// A fault's target, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Link(Link),
    Provider,
    WebhookSink,
    Process(Process),
}

impl Target {
    /// The family the kinds' target lists name: `client[i]` is `client`.
    fn family(self) -> &'static str {
        match self {
            Target::Link(Link::Client(_)) => "client",
            Target::Link(Link::Llm) => "llm",
            Target::Link(Link::Redis(_)) => "redis[i]",
            Target::Provider => "provider",
            Target::WebhookSink => "webhook_sink",
            Target::Process(Process::Orchestrator(_)) => "orchestrator",
            Target::Process(Process::Redis) => "redis",
        }
    }
}

impl<'a> Validator<'a> {
    pub(crate) fn new(source: &'a Path, root: Option<&'a Node>, failed: &'a [String]) -> Self {
        Validator {
            source,
            root,
            failed,
            diagnostics: Vec::new(),
            topology: Topology {
                replicas: 1,
                redis: false,
            },
        }
    }

    fn location(&self, path: &str) -> Location {
        self.root
            .map_or(Location::START, |r| r.locate(path).location)
    }

    fn suppressed(&self, path: &str) -> bool {
        self.failed
            .iter()
            .any(|f| f == path || is_path_prefix(f, path))
    }

    /// Records an error at `path`.
    pub(crate) fn error(&mut self, code: Code, path: &str, message: impl Into<String>) {
        self.push(Severity::Error, code, path, message.into());
    }

    /// Whether a list of `len` `what` at `path` is within `max`; if not,
    /// says so once (checked before the items, so a huge list costs one
    /// finding, not one per item).
    fn within_limit(&mut self, path: &str, len: usize, max: usize, what: &str) -> bool {
        if len > max {
            self.error(
                Code::Limit,
                path,
                format!("{len} {what}, over the limit of {max}"),
            );
        }
        len <= max
    }

    /// Records a diagnostic with an explicit location (for findings mapped
    /// from another file).
    pub(crate) fn push_at(&mut self, mut diagnostic: Diagnostic) {
        if !self.suppressed(&diagnostic.path) {
            diagnostic.location = self.location(&diagnostic.path);
            self.diagnostics.push(diagnostic);
        }
    }

    fn push(&mut self, severity: Severity, code: Code, path: &str, message: String) {
        if self.suppressed(path) {
            return;
        }
        self.diagnostics.push(Diagnostic {
            severity,
            code,
            location: self.location(path),
            path: path.to_owned(),
            message,
            env_var: None,
        });
    }

    fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub(crate) fn required<T>(&mut self, parent: &str, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            let what = if parent.is_empty() {
                "the scenario".to_owned()
            } else {
                format!("`{parent}`")
            };
            self.error(
                Code::MissingField,
                &child_path(parent, field),
                format!("missing required field `{field}` in {what}"),
            );
        }
        value
    }

    /// A `[a-z0-9-]{1,64}` name.
    fn name(&mut self, path: &str, value: &str, what: &str) -> bool {
        let ok = !value.is_empty()
            && value.len() <= MAX_NAME_BYTES
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            self.error(
                Code::Format,
                path,
                format!(
                    "invalid {what} `{}`: expected 1 to {MAX_NAME_BYTES} characters of a-z, 0-9 and `-`",
                    shown(value)
                ),
            );
        }
        ok
    }

    /// A duration like `20s`, from `min` to `max`.
    /// An invariant's optional wait parameter `field`: `default` when not
    /// written, else a duration from 1ms to [`MAX_WAIT`].
    fn wait(
        &mut self,
        path: &str,
        field: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        match text {
            None => Some(default),
            Some(text) => self.duration(
                &child_path(path, field),
                text,
                Duration::from_millis(1),
                MAX_WAIT,
            ),
        }
    }

    fn duration(
        &mut self,
        path: &str,
        text: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        match parse_duration(text) {
            Err(message) => {
                self.error(Code::Format, path, message);
                None
            }
            Ok(d) if d < min || d > max => {
                let low = if min.is_zero() {
                    "at least 0s".to_owned()
                } else {
                    format!("at least {}", format_duration(min))
                };
                self.error(
                    Code::Range,
                    path,
                    format!(
                        "duration `{text}` is out of range: expected {low} and at most {}",
                        format_duration(max)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// A number from `min` to `max`.
    fn number(&mut self, path: &str, value: f64, min: f64, max: f64) -> Option<f64> {
        if value.is_finite() && value >= min && value <= max {
            Some(value)
        } else {
            self.error(
                Code::Range,
                path,
                format!("{value} is out of range, expected {min} to {max}"),
            );
            None
        }
    }

    /// A positive number at most `max`.
    fn positive(&mut self, path: &str, value: f64, max: f64) -> Option<f64> {
        if value.is_finite() && value > 0.0 && value <= max {
            Some(value)
        } else {
            self.error(
                Code::Range,
                path,
                format!("{value} is out of range, expected more than 0 and at most {max}"),
            );
            None
        }
    }

    pub(crate) fn integer<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        path: &str,
        value: T,
        min: T,
        max: T,
    ) -> Option<T> {
        if value >= min && value <= max {
            Some(value)
        } else {
            self.error(
                Code::Range,
                path,
                format!("{value} is out of range, expected {min} to {max}"),
            );
            None
        }
    }

    /// Validates the whole scenario, the system's configuration included
    /// (config.rs). Returns `None` when anything is wrong.
    pub(crate) fn scenario(&mut self, raw: &RawScenario) -> Option<Scenario> {
        let name = self.required("", "name", raw.name.as_deref());
        if let Some(name) = name {
            self.name("name", name, "scenario name");
        }
        let description = self.required("", "description", raw.description.as_deref());
        if let Some(description) = description {
            if description.trim().is_empty() {
                self.error(
                    Code::Format,
                    "description",
                    "the description is empty; say in a sentence what the scenario proves",
                );
            } else if description.len() > MAX_DESCRIPTION_BYTES {
                self.error(
                    Code::Range,
                    "description",
                    format!(
                        "the description is {} bytes, over the limit of {MAX_DESCRIPTION_BYTES}",
                        description.len()
                    ),
                );
            }
        }
        let system = self.system(raw.system.as_ref().unwrap_or(&RawSystem::default()));
        let load = self
            .required("", "load", raw.load.as_ref())
            .and_then(|load| self.load(load));
        let duration = load.as_ref().map(LoadSpec::duration);
        let raw_faults = raw.faults.as_deref().unwrap_or_default();
        let infos = fault_infos(raw_faults);
        let faults = self.faults(raw_faults, duration);
        let slos = self.slos(raw.slo.as_deref().unwrap_or_default(), &infos, duration);
        let invariants = self.invariants(raw.invariants.as_deref().unwrap_or_default(), &infos);
        let explore = raw
            .explore
            .as_ref()
            .map(|e| self.explore(e, duration, &slos, &invariants));
        let config = self.system_config(&system);
        if self.has_errors() {
            return None;
        }
        let (config_yaml, config_base, config) = config?;
        let load = load?;
        let contract = super::Contract::of(&config);
        self.exercisable(raw, &load, &faults, &invariants, &config);
        self.feasible(&load, &contract);
        if self.has_errors() {
            return None;
        }
        Some(Scenario {
            name: name?.to_owned(),
            description: description?.to_owned(),
            seed: raw.seed.unwrap_or(0),
            source: self.source.to_path_buf(),
            system: SystemSpec {
                replicas: system.replicas,
                store: system.store,
                config_yaml,
                config_base,
                contract,
            },
            load,
            faults,
            slos,
            invariants,
            explore: explore.flatten(),
        })
    }

    /// Why `rotation_seamless` cannot be exercised, if it cannot: no rotation,
    /// a first tenant whose role cannot issue and rotate the rotator's
    /// `viewer` key, or a lockout that would lock the rotated key's first 401.
    fn rotation_impossible(
        load: &LoadSpec,
        config: &orchestrator::config::Config,
    ) -> Option<String> {
        if load.rotation.is_none() {
            return Some("the load rotates no key (`load.rotation`)".to_owned());
        }
        let Some(first) = load.tenants.first() else {
            return Some("the load has no tenant to rotate a key of".to_owned());
        };
        let contract = super::Contract::of(config);
        let held = contract.roles.get(&first.role).cloned().unwrap_or_default();
        let viewer = contract.roles.get("viewer").cloned().unwrap_or_default();
        let needs = ["keys.create", "keys.rotate"];
        if !needs.iter().all(|p| held.contains(*p)) || !viewer.is_subset(&held) {
            return Some(format!(
                "the first tenant ({}) has role {}, which cannot issue and rotate a viewer key (it needs keys.create, keys.rotate and every permission of viewer)",
                first.name, first.role
            ));
        }
        if config.security.lockout.max_failures < 2 {
            return Some(
            "`security.lockout.max_failures` is 1, so the rotated key's first 401 would lock it"
                .to_owned(),
        );
        }
        None
    }

    /// Refuses checks the rest of the scenario makes impossible to exercise:
    /// they could never fail, so they would prove nothing (at run time they
    /// would come out `vacuous`). Each is reported at its invariant.
    fn exercisable(
        &mut self,
        raw: &RawScenario,
        load: &LoadSpec,
        faults: &[Fault],
        invariants: &[Invariant],
        config: &orchestrator::config::Config,
    ) {
        let raw_invariants = raw.invariants.as_deref().unwrap_or_default();
        let mix = load.mix;
        let posts = mix.tasks > 0 || mix.jobs > 0;
        if load.webhooks.is_none() {
            for (i, fault) in faults.iter().enumerate() {
                if matches!(fault.action, FaultAction::SinkProgram { .. }) {
                    self.error(
                        Code::Vacuous,
                        &format!("faults[{i}].target"),
                        "a webhook sink fault needs webhooks in the load (`load.webhooks`): no delivery would meet it",
                    );
                }
            }
        }
        for invariant in invariants {
            let name = invariant.name();
            let Some(index) = raw_invariants.iter().position(|r| r.name == name) else {
                continue;
            };
            let why = match invariant {
                Invariant::NoLostJobs { .. } | Invariant::LeasesFenced if mix.jobs == 0 => {
                    Some("the mix sends no jobs (`load.mix.jobs` is 0)".to_owned())
                }
                Invariant::DegradationGraceful { .. } if faults.is_empty() => Some(
                    "the scenario has no faults, so nothing pushes the level up".to_owned(),
                ),
                Invariant::ShedFast { .. } if mix.tasks == 0 && mix.jobs == 0 => Some(
                    "the mix sends no tasks or jobs, the routes admission control sheds"
                        .to_owned(),
                ),
                Invariant::ExactlyOnceCharge | Invariant::BudgetConserved
                    if mix.tasks == 0 && mix.jobs == 0 =>
                {
                    Some(
                        "the mix sends no tasks or jobs, so nothing is reserved or charged"
                            .to_owned(),
                    )
                }
                Invariant::IdempotentReplayConsistent if load.idempotency_reuse == 0.0 => {
                    Some("no request reuses a key (`load.idempotency_reuse` is 0)".to_owned())
                }
                Invariant::IdempotentReplayConsistent if mix.tasks == 0 && mix.jobs == 0 => {
                    Some("the mix sends no tasks or jobs, which are what carry keys".to_owned())
                }
                Invariant::RateLimitRespected => rate_limit_unreachable(load, config),
                Invariant::RetryAfterHonoured if !asks_retry_after(faults) => Some(
                    "no provider program answers with a `Retry-After` above 0 (`retry_after_s`)"
                        .to_owned(),
                ),
                Invariant::AttemptsBounded if !posts => {
                    Some("the mix sends no tasks or jobs, so nothing calls the provider".to_owned())
                }
                Invariant::DeliveredOutputValid if mix.tasks == 0 && mix.reads == 0 => Some(
                    "the mix sends no tasks and reads no jobs, so no plan is delivered".to_owned(),
                ),
                Invariant::DlqComplete if mix.jobs == 0 || mix.dlq == 0 => Some(
                    "it needs jobs and DLQ requests in the mix (`load.mix.jobs` and `load.mix.dlq`)"
                        .to_owned(),
                ),
                Invariant::LimitsEnforced if mix.oversized == 0 || mix.slow == 0 => Some(
                    "it needs oversized and slow requests in the mix (`load.mix.oversized` and `load.mix.slow`)"
                        .to_owned(),
                ),
                Invariant::AccessEnforced
                    if mix.no_key + mix.unknown_key + mix.expired_key + mix.forbidden + mix.roles
                        == 0 =>
                {
                    Some(
                        "no request of the mix is due a refusal (`no_key`, `unknown_key`, `expired_key`, `forbidden` and `roles` are 0)"
                            .to_owned(),
                    )
                }
                Invariant::LockoutEffective => match &load.attack {
                    None => Some(
                        "the load has no attacker (`load.attack`), so no one is locked out"
                            .to_owned(),
                    ),
                    Some(attack) if attack.guesses < config.security.lockout.max_failures => {
                        Some(format!(
                            "the attacker's {} guesses never reach `security.lockout.max_failures` ({})",
                            attack.guesses, config.security.lockout.max_failures
                        ))
                    }
                    Some(_) => None,
                },
                Invariant::RotationSeamless => Self::rotation_impossible(load, config),
                Invariant::NoPiiLeaked if load.personal_data == 0.0 => Some(
                    "no request carries personal data (`load.personal_data` is 0)".to_owned(),
                ),
                Invariant::NoPiiLeaked if !posts => Some(
                    "the mix sends no tasks or jobs, which are what carry personal data"
                        .to_owned(),
                ),
                Invariant::WebhooksDelivered | Invariant::SsrfRefused if mix.jobs == 0 => Some(
                    "the mix sends no jobs, which are what carry webhooks (`load.mix.jobs` is 0)"
                        .to_owned(),
                ),
                Invariant::WebhooksDelivered | Invariant::SsrfRefused
                    if load.webhooks.is_none() =>
                {
                    Some("no job carries a webhook (`load.webhooks` is not given)".to_owned())
                }
                Invariant::SsrfRefused if load.webhooks.is_some_and(|w| w.forbidden == 0.0) => {
                    Some(
                        "no webhook aims at a forbidden target (`load.webhooks.forbidden` is 0)"
                            .to_owned(),
                    )
                }
                _ => None,
            };
            if let Some(why) = why {
                self.error(
                    Code::Vacuous,
                    &format!("invariants[{index}]"),
                    format!("`{name}` can never be exercised: {why}"),
                );
            }
        }
        // Each replica keeps its own level, and their transitions interleave
        // in the one audit chain with nothing saying whose they are: a
        // timeline read from it would be wrong, not just weak.
        let replicas = raw.system.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        if replicas > 1
            && let Some(index) = raw_invariants
                .iter()
                .position(|r| r.name == "degradation_graceful")
        {
            self.error(
                Code::Conflict,
                &format!("invariants[{index}]"),
                format!(
                    "`degradation_graceful` judges one replica's level, and this system runs {replicas}: their audited transitions interleave in one chain"
                ),
            );
        }
    }

    /// Refuses a mix the configuration makes impossible to send as meant:
    /// forbidden requests when every role has every permission, slow
    /// requests the load gives up on before the service's timeout, oversized
    /// bodies past what the load sends.
    fn feasible(&mut self, load: &LoadSpec, contract: &super::Contract) {
        let mix = load.mix;
        if mix.forbidden > 0 && contract.role_routes().iter().all(|p| p.permitted) {
            self.error(
                Code::Vacuous,
                "load.mix.forbidden",
                "no request can be forbidden: every role of the configuration has every permission",
            );
        }
        if mix.slow > 0 && load.request_timeout <= contract.request_timeout + SLOW_MARGIN {
            self.error(
                Code::Range,
                "load.mix.slow",
                format!(
                    "slow requests need `load.request_timeout` over the service's `server.request_timeout` ({}) by more than {}, so that the client sees the service's 504; it is {}",
                    format_duration(contract.request_timeout),
                    format_duration(SLOW_MARGIN),
                    format_duration(load.request_timeout)
                ),
            );
        }
        if mix.slow > 0 && contract.request_timeout >= contract.attempt_timeout {
            self.error(
                Code::Range,
                "load.mix.slow",
                format!(
                    "slow requests need `server.request_timeout` ({}) under the providers' `attempt_timeout` ({}): otherwise the service abandons the slow call and retries instead of timing the request out",
                    format_duration(contract.request_timeout),
                    format_duration(contract.attempt_timeout)
                ),
            );
        }
        if mix.oversized > 0 && contract.body_limit_bytes > MAX_OVERSIZED_BODY_BYTES {
            self.error(
                Code::Range,
                "load.mix.oversized",
                format!(
                    "oversized bodies must exceed `server.body_limit` ({} bytes), over the {MAX_OVERSIZED_BODY_BYTES} bytes the load sends at most",
                    contract.body_limit_bytes
                ),
            );
        }
    }

    fn system(&mut self, raw: &RawSystem) -> SystemParts<'a> {
        let replicas = raw.replicas.unwrap_or(1);
        if replicas == 0 || replicas > MAX_REPLICAS {
            self.error(
                Code::Range,
                "system.replicas",
                format!("{replicas} replicas: expected 1 to {MAX_REPLICAS}"),
            );
        }
        let store = match raw.store.as_deref() {
            None | Some("sqlite") => {
                if replicas > 1 {
                    self.error(
                        Code::Conflict,
                        "system.replicas",
                        format!(
                            "{replicas} replicas cannot share one sqlite file (one process owns it); set `store: redis`"
                        ),
                    );
                }
                if raw.redis.is_some() {
                    self.error(
                        Code::Conflict,
                        "system.redis",
                        "`system.redis` configures the redis store; set `store: redis` or remove it",
                    );
                }
                Some(StoreKind::Sqlite)
            }
            Some("redis") => Some(StoreKind::Redis {
                appendonly: raw
                    .redis
                    .as_ref()
                    .and_then(|r| r.appendonly)
                    .unwrap_or(true),
            }),
            Some(other) => {
                self.error(
                    Code::Reference,
                    "system.store",
                    format!(
                        "unknown store `{}`{}",
                        shown(other),
                        suggest(other, &["sqlite", "redis"])
                    ),
                );
                None
            }
        };
        let overrides = self.root.map(|r| r.locate("system.overrides"));
        let overrides = match overrides {
            Some(node) if node.path == "system.overrides" => match &node.kind {
                NodeKind::Map(_) => Some(node),
                NodeKind::Scalar { value, plain: true } if is_null(value) => None,
                _ => {
                    self.error(
                        Code::Type,
                        "system.overrides",
                        format!(
                            "expected a mapping of configuration fields, found {}",
                            node.describe()
                        ),
                    );
                    None
                }
            },
            _ => None,
        };
        self.topology = Topology {
            replicas: u8::try_from(replicas.clamp(1, MAX_REPLICAS)).unwrap_or(1),
            redis: matches!(store, Some(StoreKind::Redis { .. })),
        };
        SystemParts {
            replicas,
            store: store.unwrap_or(StoreKind::Sqlite),
            config: raw.config.clone().unwrap_or_else(|| "base".to_owned()),
            overrides,
        }
    }

    fn load(&mut self, raw: &RawLoad) -> Option<LoadSpec> {
        // Everything is checked even when the stages are wrong, so that
        // every mistake is reported at once.
        let stages = self.stages(raw);
        let total: Duration = stages.iter().flatten().map(|s| s.duration).sum();
        if total > MAX_LOAD_DURATION {
            let path = if raw.stages.is_some() {
                "load.stages"
            } else {
                "load.duration"
            };
            self.error(
                Code::Range,
                path,
                format!(
                    "the load lasts {}, over the limit of {}",
                    format_duration(total),
                    format_duration(MAX_LOAD_DURATION)
                ),
            );
        }
        let mix = self.mix(raw.mix.as_ref());
        let tenants = self.tenants(raw.tenants.as_ref());
        let idempotency_reuse = match raw.idempotency_reuse {
            None => 0.0,
            Some(v) => self
                .number("load.idempotency_reuse", v, 0.0, 1.0)
                .unwrap_or(0.0),
        };
        let max_in_flight = match raw.max_in_flight {
            None => DEFAULT_MAX_IN_FLIGHT,
            Some(v) => self
                .integer("load.max_in_flight", v, 1, MAX_IN_FLIGHT)
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        };
        let request_timeout = match raw.request_timeout.as_deref() {
            None => DEFAULT_REQUEST_TIMEOUT,
            Some(text) => self
                .duration(
                    "load.request_timeout",
                    text,
                    Duration::from_millis(1),
                    MAX_WAIT,
                )
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        };
        let max_tokens = match raw.max_tokens {
            None => DEFAULT_MAX_TOKENS,
            Some(v) => self
                .integer("load.max_tokens", v, 1, MAX_TOKENS)
                .unwrap_or(DEFAULT_MAX_TOKENS),
        };
        let attack = match &raw.attack {
            None => Some(None),
            Some(attack) => self.attack(attack, total).map(Some),
        };
        let rotation = match &raw.rotation {
            None => Some(None),
            Some(rotation) => self.rotation(rotation, total).map(Some),
        };
        let webhooks = raw.webhooks.as_ref().map(|w| {
            let share = match w.share {
                None => Some(1.0),
                Some(v) => self.number("load.webhooks.share", v, 0.0, 1.0),
            };
            if share == Some(0.0) {
                self.error(
                    Code::Range,
                    "load.webhooks.share",
                    "no job would carry a webhook: give a share above 0, or leave `load.webhooks` out",
                );
            }
            let forbidden = match w.forbidden {
                None => Some(0.0),
                Some(v) => self.number("load.webhooks.forbidden", v, 0.0, 1.0),
            };
            if forbidden == Some(1.0) {
                self.error(
                    Code::Range,
                    "load.webhooks.forbidden",
                    "every webhook would aim at the trap and none would be delivered: give a share under 1",
                );
            }
            WebhookLoad {
                share: share.unwrap_or(1.0),
                forbidden: forbidden.unwrap_or(0.0),
            }
        });
        let personal_data = match raw.personal_data {
            None => 0.0,
            Some(v) => self
                .number("load.personal_data", v, 0.0, 1.0)
                .unwrap_or(0.0),
        };
        Some(LoadSpec {
            stages: stages?,
            mix: mix?,
            tenants: tenants?,
            idempotency_reuse,
            max_in_flight,
            request_timeout,
            max_tokens,
            attack: attack?,
            rotation: rotation?,
            webhooks,
            personal_data,
        })
    }

    /// `load.rotation`: the rotation happens within the load, after the
    /// first probes had time to go out.
    fn rotation(&mut self, raw: &RawRotation, load: Duration) -> Option<KeyRotation> {
        let at = self
            .required("load.rotation", "at", raw.at.clone())
            .and_then(|text| {
                self.duration("load.rotation.at", &text, Duration::from_secs(1), MAX_WAIT)
            });
        if let Some(at) = at
            && !load.is_zero()
            && at >= load
        {
            self.error(
                Code::Range,
                "load.rotation.at",
                format!(
                    "the rotation comes at {}, after the load's {} are over",
                    format_duration(at),
                    format_duration(load)
                ),
            );
        }
        let probe_every = match raw.probe_every.as_deref() {
            None => Some(DEFAULT_PROBE_EVERY),
            Some(text) => self.duration(
                "load.rotation.probe_every",
                text,
                Duration::from_millis(10),
                Duration::from_secs(60),
            ),
        };
        Some(KeyRotation {
            at: at?,
            probe_every: probe_every?,
        })
    }

    /// `load.attack`: it starts within the load, and its guesses are bounded.
    fn attack(&mut self, raw: &RawAttack, load: Duration) -> Option<Attack> {
        let at = match raw.at.as_deref() {
            None => Some(Duration::ZERO),
            Some(text) => self.duration("load.attack.at", text, Duration::ZERO, MAX_WAIT),
        };
        if let Some(at) = at
            && !load.is_zero()
            && at >= load
        {
            self.error(
                Code::Range,
                "load.attack.at",
                format!(
                    "the attack starts at {}, after the load's {} are over",
                    format_duration(at),
                    format_duration(load)
                ),
            );
        }
        let guesses = self
            .required("load.attack", "guesses", raw.guesses)
            .and_then(|v| self.integer("load.attack.guesses", v, 1, MAX_ATTACK_GUESSES));
        let probe_every = match raw.probe_every.as_deref() {
            None => Some(DEFAULT_PROBE_EVERY),
            Some(text) => self.duration(
                "load.attack.probe_every",
                text,
                Duration::from_millis(10),
                Duration::from_secs(60),
            ),
        };
        Some(Attack {
            at: at?,
            guesses: guesses?,
            probe_every: probe_every?,
        })
    }

    fn rate(&mut self, path: &str, rate: f64) -> Option<f64> {
        self.positive(path, rate, MAX_RATE_RPS)
    }

    fn stage_duration(&mut self, path: &str, text: &str) -> Option<Duration> {
        self.duration(path, text, Duration::from_millis(1), MAX_LOAD_DURATION)
    }

    fn stages(&mut self, raw: &RawLoad) -> Option<Vec<Stage>> {
        let constant = raw.duration.is_some() || raw.rate.is_some();
        match (&raw.stages, constant) {
            (Some(_), true) => {
                self.error(
                    Code::Conflict,
                    "load.stages",
                    "give either `duration` and `rate` (a constant load) or `stages`, not both",
                );
                None
            }
            (None, false) => {
                self.error(
                    Code::MissingField,
                    "load.duration",
                    "missing `duration` and `rate` (a constant load) or `stages` in `load`",
                );
                None
            }
            (None, true) => {
                let duration = self.required("load", "duration", raw.duration.as_deref());
                let rate = self.required("load", "rate", raw.rate);
                let duration = duration.and_then(|d| self.stage_duration("load.duration", d));
                let rate = rate.and_then(|r| self.rate("load.rate", r));
                Some(vec![Stage {
                    duration: duration?,
                    start_rps: rate?,
                    end_rps: rate?,
                }])
            }
            (Some(stages), false) => {
                if stages.is_empty() {
                    self.error(
                        Code::Range,
                        "load.stages",
                        "no stages: expected at least one `{for, rate}` or `{for, from, to}`",
                    );
                    return None;
                }
                if !self.within_limit("load.stages", stages.len(), MAX_STAGES, "stages") {
                    return None;
                }
                let mut out = Vec::with_capacity(stages.len());
                for (i, stage) in stages.iter().enumerate() {
                    out.push(self.stage(&format!("load.stages[{i}]"), stage));
                }
                out.into_iter().collect()
            }
        }
    }

    fn stage(&mut self, path: &str, raw: &RawStage) -> Option<Stage> {
        let duration = self
            .required(path, "for", raw.duration.as_deref())
            .and_then(|d| self.stage_duration(&child_path(path, "for"), d));
        let ramp = raw.from.is_some() || raw.to.is_some();
        let (start, end) = match (raw.rate, ramp) {
            (Some(_), true) => {
                self.error(
                    Code::Conflict,
                    &child_path(path, "rate"),
                    "give either `rate` (a constant stage) or `from` and `to` (a ramp), not both",
                );
                (None, None)
            }
            (None, false) => {
                self.error(
                    Code::MissingField,
                    &child_path(path, "rate"),
                    format!(
                        "missing `rate` (a constant stage) or `from` and `to` (a ramp) in `{path}`"
                    ),
                );
                (None, None)
            }
            (Some(rate), false) => {
                let rate = self.rate(&child_path(path, "rate"), rate);
                (rate, rate)
            }
            (None, true) => {
                let from = self.required(path, "from", raw.from);
                let to = self.required(path, "to", raw.to);
                let from =
                    from.and_then(|v| self.number(&child_path(path, "from"), v, 0.0, MAX_RATE_RPS));
                let to =
                    to.and_then(|v| self.number(&child_path(path, "to"), v, 0.0, MAX_RATE_RPS));
                if from == Some(0.0) && to == Some(0.0) {
                    self.error(
                        Code::Range,
                        &child_path(path, "to"),
                        "a ramp from 0 to 0 sends nothing; at least one end must be above 0",
                    );
                }
                (from, to)
            }
        };
        Some(Stage {
            duration: duration?,
            start_rps: start?,
            end_rps: end?,
        })
    }

    fn mix(&mut self, raw: Option<&RawMix>) -> Option<Mix> {
        let Some(raw) = raw else {
            return Some(Mix {
                tasks: 1,
                ..Mix::default()
            });
        };
        let mut weight = |field: &str, value: Option<u32>| {
            value.map_or(Some(0), |v| {
                self.integer(&format!("load.mix.{field}"), v, 0, MAX_MIX_WEIGHT)
            })
        };
        let mix = Mix {
            tasks: weight("tasks", raw.tasks)?,
            jobs: weight("jobs", raw.jobs)?,
            reads: weight("reads", raw.reads)?,
            dlq: weight("dlq", raw.dlq)?,
            oversized: weight("oversized", raw.oversized)?,
            slow: weight("slow", raw.slow)?,
            no_key: weight("no_key", raw.no_key)?,
            unknown_key: weight("unknown_key", raw.unknown_key)?,
            expired_key: weight("expired_key", raw.expired_key)?,
            forbidden: weight("forbidden", raw.forbidden)?,
            roles: weight("roles", raw.roles)?,
        };
        let weights = [
            mix.tasks,
            mix.jobs,
            mix.reads,
            mix.dlq,
            mix.oversized,
            mix.slow,
            mix.no_key,
            mix.unknown_key,
            mix.expired_key,
            mix.forbidden,
            mix.roles,
        ];
        if weights.iter().all(|w| *w == 0) {
            self.error(
                Code::Range,
                "load.mix",
                "every weight is 0: give `tasks`, `jobs` or `reads` a weight above 0",
            );
            return None;
        }
        Some(mix)
    }

    fn tenants(&mut self, raw: Option<&RawTenants>) -> Option<Vec<Tenant>> {
        let generated = |count: usize| {
            (1..=count)
                .map(|i| Tenant {
                    name: format!("tenant-{i}"),
                    budget_tokens: None,
                    role: DEFAULT_ROLE.to_owned(),
                })
                .collect::<Vec<_>>()
        };
        match raw {
            None => Some(generated(1)),
            Some(RawTenants::Count(count)) => {
                let max = i64::try_from(MAX_TENANTS).unwrap_or(i64::MAX);
                let count = self.integer("load.tenants", *count, 1, max)?;
                Some(generated(usize::try_from(count).unwrap_or(1)))
            }
            Some(RawTenants::List(list)) => {
                if list.is_empty() {
                    self.error(
                        Code::Range,
                        "load.tenants",
                        "no tenants: expected a count or at least one `{name}`",
                    );
                    return None;
                }
                if !self.within_limit("load.tenants", list.len(), MAX_TENANTS, "tenants") {
                    return None;
                }
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                let mut out = Vec::with_capacity(list.len());
                for (i, tenant) in list.iter().enumerate() {
                    let path = format!("load.tenants[{i}]");
                    let name = self.required(&path, "name", tenant.name.as_deref());
                    let name =
                        name.filter(|n| self.name(&child_path(&path, "name"), n, "tenant name"));
                    if let Some(name) = name
                        && let Some(first) = seen.insert(name.to_owned(), i)
                    {
                        self.error(
                            Code::Duplicate,
                            &child_path(&path, "name"),
                            format!(
                                "duplicate tenant `{name}`, first listed at load.tenants[{first}]"
                            ),
                        );
                    }
                    if tenant.budget_tokens == Some(0) {
                        self.error(
                            Code::Range,
                            &child_path(&path, "budget_tokens"),
                            "a budget of 0 tokens refuses every request; expected at least 1",
                        );
                    }
                    let role = tenant.role.as_deref().unwrap_or(DEFAULT_ROLE);
                    let role_ok = self.name(&child_path(&path, "role"), role, "role");
                    if let (Some(name), true) = (name, role_ok) {
                        out.push(Tenant {
                            name: name.to_owned(),
                            budget_tokens: tenant.budget_tokens,
                            role: role.to_owned(),
                        });
                    }
                }
                (out.len() == list.len()).then_some(out)
            }
        }
    }

    fn faults(&mut self, raw: &[RawFault], duration: Option<Duration>) -> Vec<Fault> {
        if !self.within_limit("faults", raw.len(), MAX_FAULTS, "faults") {
            return Vec::new();
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut faults = Vec::new();
        for (i, fault) in raw.iter().enumerate() {
            let path = format!("faults[{i}]");
            if let Some(name) = fault.name.as_deref()
                && let Some(first) = seen.insert(name, i)
            {
                self.error(
                    Code::Duplicate,
                    &child_path(&path, "name"),
                    format!("duplicate fault name `{name}`, first used at faults[{first}]"),
                );
            }
            if let Some(fault) = self.fault(&path, fault, duration) {
                faults.push(fault);
            }
        }
        faults.sort_by_key(|f| f.at);
        faults
    }

    pub(crate) fn fault(
        &mut self,
        path: &str,
        raw: &RawFault,
        load: Option<Duration>,
    ) -> Option<Fault> {
        let name = self.required(path, "name", raw.name.as_deref());
        let name = name.filter(|n| self.name(&child_path(path, "name"), n, "fault name"));
        let at_path = child_path(path, "at");
        let for_path = child_path(path, "for");
        let at = self
            .required(path, "at", raw.at.as_deref())
            .and_then(|t| self.duration(&at_path, t, Duration::ZERO, MAX_LOAD_DURATION));
        let lasts = raw
            .duration
            .as_deref()
            .and_then(|t| self.duration(&for_path, t, Duration::from_millis(1), MAX_LOAD_DURATION));
        let kind = self.required(path, "kind", raw.kind.as_deref());
        let target = self.required(path, "target", raw.target.as_deref());
        let kind_path = child_path(path, "kind");
        let target_path = child_path(path, "target");
        let kind = kind.filter(|kind| {
            let known = targets_of(kind).is_some();
            if !known {
                self.error(
                    Code::Reference,
                    &kind_path,
                    format!(
                        "unknown fault kind `{}`{}",
                        shown(kind),
                        suggest(kind, &all_kinds())
                    ),
                );
            }
            known
        });
        let target = target.and_then(|written| self.target(&target_path, written));
        if let (Some(kind), Some(target)) = (kind, target) {
            let valid = targets_of(kind).unwrap_or_default();
            if !valid.contains(&target.family()) {
                self.error(
                    Code::Conflict,
                    &target_path,
                    format!(
                        "a `{kind}` fault cannot act on `{}`; its valid targets are {}",
                        raw.target.as_deref().unwrap_or_default(),
                        list(valid)
                    ),
                );
            }
        }
        if let Some(kind) = kind
            && raw.duration.is_none()
            && !INSTANT_KINDS.contains(&kind)
        {
            self.error(
                Code::MissingField,
                &for_path,
                format!(
                    "missing `for` in `{path}`: a `{kind}` fault lasts for a while (only {} may be instant)",
                    list(&INSTANT_KINDS)
                ),
            );
        }
        if let (Some(at), Some(load)) = (at, load) {
            if at >= load {
                self.error(
                    Code::Range,
                    &at_path,
                    format!(
                        "the fault starts at {}, not before the end of the load at {}",
                        format_duration(at),
                        format_duration(load)
                    ),
                );
            } else if let Some(lasts) = lasts.filter(|l| at + *l > load) {
                self.error(
                    Code::Range,
                    &for_path,
                    format!(
                        "the fault ends at {} ({} + {}), after the end of the load at {}",
                        format_duration(at + lasts),
                        format_duration(at),
                        format_duration(lasts),
                        format_duration(load)
                    ),
                );
            }
        }
        let action = kind.and_then(|kind| {
            if kind == PROGRAM && target == Some(Target::WebhookSink) {
                return self.sink_program(&child_path(path, "params"), raw.params.as_ref());
            }
            self.action(
                &child_path(path, "params"),
                kind,
                target,
                raw.params.as_ref(),
            )
        });
        Some(Fault {
            name: name?.to_owned(),
            at: at?,
            duration: lasts,
            action: action?,
        })
    }

    /// A target as written: a plain name, or `client[i]`, `orchestrator[i]`
    /// or `redis[i]` with `i` a replica of the system; `redis` needs the
    /// Redis store.
    fn target(&mut self, path: &str, written: &str) -> Option<Target> {
        let (base, index) = match written.strip_suffix(']').and_then(|w| w.split_once('[')) {
            Some((base, index)) => (base, Some(index)),
            None => (written, None),
        };
        let replica = match index {
            None => None,
            Some(index) => match index.parse::<u8>() {
                Ok(i) if i < self.topology.replicas => Some(i),
                _ => {
                    self.error(
                        Code::Range,
                        path,
                        format!(
                            "`{}`: the system has {} replica{}, numbered 0 to {}",
                            shown(written),
                            self.topology.replicas,
                            if self.topology.replicas == 1 { "" } else { "s" },
                            self.topology.replicas - 1
                        ),
                    );
                    return None;
                }
            },
        };
        let target = match (base, replica) {
            ("client", i) => Target::Link(Link::Client(i.unwrap_or(0))),
            ("orchestrator", i) => Target::Process(Process::Orchestrator(i.unwrap_or(0))),
            ("redis", Some(i)) => Target::Link(Link::Redis(i)),
            ("redis", None) => Target::Process(Process::Redis),
            ("llm", None) => Target::Link(Link::Llm),
            ("provider", None) => Target::Provider,
            ("webhook_sink", None) => Target::WebhookSink,
            _ => {
                self.error(
                    Code::Reference,
                    path,
                    format!(
                        "unknown target `{}`{}",
                        shown(written),
                        suggest(written, &TARGETS)
                    ),
                );
                return None;
            }
        };
        if matches!(
            target,
            Target::Link(Link::Redis(_)) | Target::Process(Process::Redis)
        ) && !self.topology.redis
        {
            self.error(
                Code::Conflict,
                path,
                format!(
                    "`{}` needs the redis store: set `system.store: redis`",
                    shown(written)
                ),
            );
            return None;
        }
        Some(target)
    }

    /// The fault's action from its kind, target and params.
    fn action(
        &mut self,
        path: &str,
        kind: &str,
        target: Option<Target>,
        params: Option<&Value>,
    ) -> Option<FaultAction> {
        let link = match target {
            Some(Target::Link(link)) => Some(link),
            _ => None,
        };
        let process = match target {
            Some(Target::Process(process)) => Some(process),
            _ => None,
        };
        let replica = match process {
            Some(Process::Orchestrator(i)) => Some(i),
            _ => None,
        };
        if let Some(toxic) = ToxicKind::zeroed(kind) {
            return self.toxic(path, toxic, link, params);
        }
        match kind {
            PARTITION => {
                self.no_params(path, kind, params);
                Some(FaultAction::Partition { link: link? })
            }
            PROGRAM => self.program(path, params),
            "kill" => self
                .no_params(path, kind, params)
                .then_some(FaultAction::Kill { process: process? }),
            "pause" => self
                .no_params(path, kind, params)
                .then_some(FaultAction::Pause { process: process? }),
            "restart" => self
                .no_params(path, kind, params)
                .then_some(FaultAction::Restart { process: process? }),
            "disk_full" => self
                .no_params(path, kind, params)
                .then_some(FaultAction::DiskFull { replica: replica? }),
            "read_only" => self
                .no_params(path, kind, params)
                .then_some(FaultAction::ReadOnly { replica: replica? }),
            "io_errors" => {
                let map = self.params(path, kind, params, &["probability"])?;
                let probability = match map.get("probability") {
                    None => {
                        self.missing_param(path, kind, "probability", "`{probability: 0.1}`");
                        return None;
                    }
                    Some(value) => value.as_f64().filter(|p| *p > 0.0 && *p <= 1.0),
                };
                let Some(probability) = probability else {
                    self.error(
                        Code::Range,
                        &child_path(path, "probability"),
                        format!(
                            "probability {} is out of range, expected more than 0 and at most 1",
                            map.get("probability").unwrap_or(&Value::Null)
                        ),
                    );
                    return None;
                };
                Some(FaultAction::IoErrors {
                    replica: replica?,
                    probability,
                })
            }
            "oom" => {
                let map = self.params(path, kind, params, &["limit"])?;
                let limit_path = child_path(path, "limit");
                let limit = match map.get("limit") {
                    None => {
                        self.missing_param(path, kind, "limit", "`{limit: 64MiB}`");
                        return None;
                    }
                    Some(Value::String(text)) => match parse_size(text) {
                        Err(message) => {
                            self.error(Code::Format, &limit_path, message);
                            return None;
                        }
                        Ok(bytes) => bytes,
                    },
                    Some(other) => {
                        self.error(
                            Code::Type,
                            &limit_path,
                            format!("expected a size with a unit, like `64MiB`, found {other}"),
                        );
                        return None;
                    }
                };
                if limit == 0 || limit > MAX_OOM_LIMIT_BYTES {
                    self.error(
                        Code::Range,
                        &limit_path,
                        format!(
                            "memory limit is out of range: expected more than 0 and at most {}",
                            orchestrator::config::format_size(MAX_OOM_LIMIT_BYTES)
                        ),
                    );
                    return None;
                }
                Some(FaultAction::Oom {
                    replica: replica?,
                    limit_bytes: limit,
                })
            }
            _ => None,
        }
    }

    fn missing_param(&mut self, path: &str, kind: &str, field: &str, example: &str) {
        self.error(
            Code::MissingField,
            &child_path(path, field),
            format!("missing `{field}` in the params of `{kind}`, like {example}"),
        );
    }

    /// Checks that a kind without parameters was given none.
    fn no_params(&mut self, path: &str, kind: &str, params: Option<&Value>) -> bool {
        let empty = match params {
            None | Some(Value::Null) => true,
            Some(Value::Object(map)) => map.is_empty(),
            Some(_) => false,
        };
        if !empty {
            self.error(
                Code::Type,
                path,
                format!("a `{kind}` fault takes no params; remove `params`"),
            );
        }
        empty
    }

    /// The params as a mapping whose keys are all among `allowed`.
    fn params(
        &mut self,
        path: &str,
        kind: &str,
        params: Option<&Value>,
        allowed: &[&str],
    ) -> Option<Map<String, Value>> {
        let map = match params {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(other) => {
                self.error(
                    Code::Type,
                    path,
                    format!(
                        "expected a mapping of `{kind}` params, found {}",
                        describe_json(other)
                    ),
                );
                return None;
            }
        };
        if !self.within_limit(path, map.len(), MAX_PARAMS, "params") {
            return None;
        }
        let mut ok = true;
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                ok = false;
                self.error(
                    Code::UnknownField,
                    &child_path(path, key),
                    format!(
                        "unknown `{kind}` param `{}`{}",
                        shown(key),
                        suggest(key, allowed)
                    ),
                );
            }
        }
        ok.then_some(map)
    }

    /// A network toxic: Toxiproxy's attributes, checked by the fault proxy's
    /// own model, plus `stream` and `toxicity`.
    fn toxic(
        &mut self,
        path: &str,
        mut toxic: ToxicKind,
        link: Option<Link>,
        params: Option<&Value>,
    ) -> Option<FaultAction> {
        let kind = toxic.type_name();
        let attributes: Vec<&str> = toxic.attributes().into_iter().map(|(n, _)| n).collect();
        let mut allowed = attributes.clone();
        allowed.extend(["stream", "toxicity"]);
        let mut map = self.params(path, kind, params, &allowed)?;
        let stream = match map.remove("stream") {
            None | Some(Value::Null) => Some(proxy::Stream::Downstream),
            Some(Value::String(text)) => proxy::Stream::parse(&text),
            Some(_) => None,
        };
        if stream.is_none() {
            self.error(
                Code::Format,
                &child_path(path, "stream"),
                "invalid stream: expected `upstream` or `downstream`",
            );
        }
        let toxicity = match map.remove("toxicity") {
            None | Some(Value::Null) => Some(1.0),
            Some(value) => {
                // The proxy's own rule; a value that is not a number fails it too.
                #[allow(clippy::cast_possible_truncation)]
                let toxicity = value.as_f64().map_or(f32::NAN, |v| v as f32);
                match proxy::check_toxicity(toxicity) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        let message = match e {
                            ApiError::BadRequestBody(message) => message,
                            other => other.to_string(),
                        };
                        let message = if value.is_number() {
                            message
                        } else {
                            format!("toxicity must be a number between 0 and 1, not {value}")
                        };
                        self.error(Code::Range, &child_path(path, "toxicity"), message);
                        None
                    }
                }
            }
        };
        if let Err(message) = toxic.merge(&map) {
            // The proxy names the attribute as `attributes.NAME`; in a
            // scenario it is `params.NAME`.
            let message = message.strip_prefix("attributes.").unwrap_or(&message);
            let attribute = message.split_whitespace().next().unwrap_or_default();
            let at = if attributes.contains(&attribute) {
                child_path(path, attribute)
            } else {
                path.to_owned()
            };
            self.error(Code::Range, &at, message.to_owned());
            return None;
        }
        Some(FaultAction::Toxic {
            link: link?,
            toxic,
            stream: stream?,
            toxicity: toxicity?,
        })
    }

    /// A webhook sink program, checked by the sink's own parser.
    fn sink_program(&mut self, path: &str, params: Option<&Value>) -> Option<FaultAction> {
        let Some(program) = params.filter(|p| !p.is_null()) else {
            self.error(
                Code::MissingField,
                path,
                "missing `params` of a webhook sink `program` fault: the sink program, like `{rules: [{effect: {status: 503}}]}`",
            );
            return None;
        };
        match crate::sink::program::parse(program) {
            Ok(_) => Some(FaultAction::SinkProgram {
                program: program.clone(),
            }),
            Err(e) => {
                self.error(
                    Code::Format,
                    &format!("{path}.{}", e.path),
                    format!("invalid webhook sink program: {}", e.message),
                );
                None
            }
        }
    }

    /// A mock LLM program, checked by the mock's own parser.
    fn program(&mut self, path: &str, params: Option<&Value>) -> Option<FaultAction> {
        let Some(program) = params.filter(|p| !p.is_null()) else {
            self.error(
                Code::MissingField,
                path,
                "missing `params` of a `program` fault: the mock LLM program, like `{rules: [{effect: {kind: hang}}]}`",
            );
            return None;
        };
        let text = program.to_string();
        match Program::from_json(text.as_bytes(), &mock_llm::Limits::default()) {
            Ok(_) => Some(FaultAction::LlmProgram {
                program: program.clone(),
            }),
            Err(ProgramError::Invalid { path: at, message }) => {
                let at = if at.is_empty() || at == "<root>" {
                    path.to_owned()
                } else if at.starts_with('[') {
                    format!("{path}{at}")
                } else {
                    format!("{path}.{at}")
                };
                self.error(Code::Format, &at, format!("invalid LLM program: {message}"));
                None
            }
            Err(e @ ProgramError::TooLarge { .. }) => {
                self.error(Code::Limit, path, e.to_string());
                None
            }
            Err(e) => {
                self.error(Code::Format, path, format!("invalid LLM program: {e}"));
                None
            }
        }
    }

    fn slos(&mut self, raw: &[RawSlo], faults: &[FaultInfo], load: Option<Duration>) -> Vec<Slo> {
        if !self.within_limit("slo", raw.len(), MAX_SLOS, "SLOs") {
            return Vec::new();
        }
        let mut slos = Vec::new();
        for (i, slo) in raw.iter().enumerate() {
            if let Some(slo) = self.slo(&format!("slo[{i}]"), slo, faults, load) {
                slos.push(slo);
            }
        }
        slos
    }

    fn slo(
        &mut self,
        path: &str,
        raw: &RawSlo,
        faults: &[FaultInfo],
        load: Option<Duration>,
    ) -> Option<Slo> {
        let window_path = child_path(path, "window");
        let window = match raw.window.as_deref() {
            None => Some(Window::All),
            Some(text) => self.window(&window_path, text, faults, load),
        };
        let metric = self.required(path, "metric", raw.metric.as_deref())?;
        if !METRICS.contains(&metric) {
            self.error(
                Code::Reference,
                &child_path(path, "metric"),
                format!(
                    "unknown metric `{}`{}",
                    shown(metric),
                    suggest(metric, &METRICS)
                ),
            );
            return None;
        }
        if metric != "recovery_time" && raw.error_rate.is_some() {
            self.error(
                Code::Conflict,
                &child_path(path, "error_rate"),
                format!("`error_rate` applies only to `recovery_time`, not to `{metric}`"),
            );
        }
        let (bound, other) = if matches!(metric, "availability" | "throughput") {
            ("min", "max")
        } else {
            ("max", "min")
        };
        let (given, wrong) = if bound == "min" {
            (raw.min.as_ref(), raw.max.as_ref())
        } else {
            (raw.max.as_ref(), raw.min.as_ref())
        };
        if wrong.is_some() {
            let what = if bound == "min" {
                "a lower"
            } else {
                "an upper"
            };
            self.error(
                Code::Conflict,
                &child_path(path, other),
                format!("`{metric}` takes {what} bound: use `{bound}`, not `{other}`"),
            );
        }
        let threshold_path = child_path(path, bound);
        let Some(threshold) = given else {
            if wrong.is_none() {
                self.error(
                    Code::MissingField,
                    &threshold_path,
                    format!("missing threshold `{bound}` for `{metric}` in `{path}`"),
                );
            }
            return None;
        };
        let objective = match metric {
            "error_rate" => ObjectiveDraft::Ratio(self.ratio(&threshold_path, threshold)?),
            "availability" => ObjectiveDraft::Ratio(self.ratio(&threshold_path, threshold)?),
            "throughput" => {
                let v =
                    self.json_number(&threshold_path, threshold, "a rate in requests per second")?;
                ObjectiveDraft::Ratio(self.positive(&threshold_path, v, MAX_THROUGHPUT_RPS)?)
            }
            _ => ObjectiveDraft::Duration(self.json_duration(&threshold_path, threshold)?),
        };
        let objective = match (metric, objective) {
            ("error_rate", ObjectiveDraft::Ratio(max)) => Objective::ErrorRate { max },
            ("availability", ObjectiveDraft::Ratio(min)) => Objective::Availability { min },
            ("throughput", ObjectiveDraft::Ratio(min_rps)) => Objective::Throughput { min_rps },
            ("recovery_time", ObjectiveDraft::Duration(max)) => {
                let error_rate = match raw.error_rate {
                    None => DEFAULT_RECOVERY_ERROR_RATE,
                    Some(v) => self.number(&child_path(path, "error_rate"), v, 0.0, 1.0)?,
                };
                let after = matches!(window, Some(Window::After { .. }));
                // A window that failed to parse has been reported already.
                let unparsed = window.is_none() && raw.window.is_some();
                if !after && !unparsed {
                    self.error(
                        Code::Conflict,
                        &window_path,
                        "`recovery_time` is measured from a fault's end: its window must be `after(FAULT)`",
                    );
                    return None;
                }
                Objective::RecoveryTime { max, error_rate }
            }
            (latency, ObjectiveDraft::Duration(max)) => Objective::Latency {
                quantile: match latency {
                    "latency_p50" => 0.5,
                    "latency_p90" => 0.9,
                    "latency_p95" => 0.95,
                    "latency_p99" => 0.99,
                    _ => 1.0,
                },
                max,
            },
            _ => return None,
        };
        Some(Slo {
            objective,
            window: window?,
        })
    }

    fn json_number(&mut self, path: &str, value: &Value, what: &str) -> Option<f64> {
        let number = value.as_f64();
        if number.is_none() {
            self.error(
                Code::Type,
                path,
                format!("expected {what}, found {}", describe_json(value)),
            );
        }
        number
    }

    fn ratio(&mut self, path: &str, value: &Value) -> Option<f64> {
        let v = self.json_number(path, value, "a share from 0 to 1")?;
        self.number(path, v, 0.0, 1.0)
    }

    fn json_duration(&mut self, path: &str, value: &Value) -> Option<Duration> {
        match value {
            Value::String(text) => {
                self.duration(path, text, Duration::from_millis(1), MAX_LOAD_DURATION)
            }
            other => {
                self.error(
                    Code::Type,
                    path,
                    format!(
                        "expected a duration with a unit, like `2s` or `500ms`, found {}",
                        describe_json(other)
                    ),
                );
                None
            }
        }
    }

    /// A fault named by a window or an invariant.
    fn fault_ref<'f>(
        &mut self,
        path: &str,
        name: &str,
        faults: &'f [FaultInfo],
    ) -> Option<&'f FaultInfo> {
        let found = faults.iter().find(|f| f.name == name);
        if found.is_none() {
            let names: Vec<&str> = faults.iter().map(|f| f.name.as_str()).collect();
            let hint = if names.is_empty() {
                "; the scenario has no faults".to_owned()
            } else {
                suggest(name, &names)
            };
            self.error(
                Code::Reference,
                path,
                format!("no fault named `{}`{hint}", shown(name)),
            );
        }
        found
    }

    fn window(
        &mut self,
        path: &str,
        text: &str,
        faults: &[FaultInfo],
        load: Option<Duration>,
    ) -> Option<Window> {
        let Some(parsed) = parse_window(text) else {
            self.error(
                Code::Format,
                path,
                format!(
                    "invalid window `{}`: expected `all`, `before(FAULT)`, `during(FAULT)`, `after(FAULT)`, `after(FAULT) + 2s` or `every 5s`",
                    shown(text)
                ),
            );
            return None;
        };
        match parsed {
            WindowText::All => Some(Window::All),
            WindowText::Every(every) => {
                let max = load.unwrap_or(MAX_LOAD_DURATION).max(MIN_EVERY);
                self.duration(path, every, MIN_EVERY, max)
                    .map(Window::Every)
            }
            WindowText::Before(name) => {
                let fault = self.fault_ref(path, name, faults)?;
                if fault.start == Some(Duration::ZERO) {
                    self.error(
                        Code::Conflict,
                        path,
                        format!("`before({name})` is empty: `{name}` starts at 0s"),
                    );
                    return None;
                }
                Some(Window::Before(name.to_owned()))
            }
            WindowText::During(name) => {
                let fault = self.fault_ref(path, name, faults)?;
                let instant = !fault.lasts
                    && fault
                        .kind
                        .as_deref()
                        .is_some_and(|k| INSTANT_KINDS.contains(&k));
                if instant {
                    self.error(
                        Code::Conflict,
                        path,
                        format!(
                            "`during({name})` is empty: `{name}` is an instant fault; give it a `for` or use `after({name})`"
                        ),
                    );
                    return None;
                }
                Some(Window::During(name.to_owned()))
            }
            WindowText::After(name, delay) => {
                let fault = self.fault_ref(path, name, faults)?;
                let delay = match delay {
                    None => Duration::ZERO,
                    Some(text) => self.duration(path, text, Duration::ZERO, MAX_LOAD_DURATION)?,
                };
                // A fault ending after the load is reported on the fault.
                if let (Some(end), Some(load)) = (fault.end, load)
                    && end < load
                    && end.saturating_add(delay) >= load
                {
                    self.error(
                        Code::Range,
                        path,
                        format!(
                            "window `{}` opens at {}, not before the end of the load at {}",
                            text.trim(),
                            format_duration(end + delay),
                            format_duration(load)
                        ),
                    );
                    return None;
                }
                Some(Window::After {
                    fault: name.to_owned(),
                    delay,
                })
            }
        }
    }

    fn invariants(&mut self, raw: &[RawInvariant], faults: &[FaultInfo]) -> Vec<Invariant> {
        if !self.within_limit("invariants", raw.len(), MAX_INVARIANTS, "invariants") {
            return Vec::new();
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, invariant) in raw.iter().enumerate() {
            let path = format!("invariants[{i}]");
            let name = invariant.name.as_str();
            if !Invariant::NAMES.contains(&name) {
                self.error(
                    Code::Reference,
                    &path,
                    format!(
                        "unknown invariant `{}`{}",
                        shown(name),
                        suggest(name, &Invariant::NAMES)
                    ),
                );
                continue;
            }
            if let Some(first) = seen.insert(name, i) {
                self.error(
                    Code::Duplicate,
                    &path,
                    format!("duplicate invariant `{name}`, first listed at invariants[{first}]"),
                );
                continue;
            }
            let params_path = if invariant.with_params {
                child_path(&path, name)
            } else {
                path.clone()
            };
            if let Some(invariant) = self.invariant(&params_path, name, &invariant.params, faults) {
                out.push(invariant);
            }
        }
        out
    }

    fn invariant(
        &mut self,
        path: &str,
        name: &str,
        params: &RawInvariantParams,
        faults: &[FaultInfo],
    ) -> Option<Invariant> {
        match params {
            RawInvariantParams::NoLostJobs(p) => {
                let settle = self.wait(path, "settle", p.settle.as_deref(), DEFAULT_SETTLE)?;
                Some(Invariant::NoLostJobs { settle })
            }
            RawInvariantParams::AllowedStatuses(p) => {
                let statuses = self.required(path, "statuses", p.statuses.as_ref())?;
                let statuses_path = child_path(path, "statuses");
                if statuses.is_empty() || statuses.len() > MAX_LIST_ITEMS {
                    self.error(
                        Code::Range,
                        &statuses_path,
                        format!(
                            "{} statuses: expected 1 to {MAX_LIST_ITEMS}",
                            statuses.len()
                        ),
                    );
                    return None;
                }
                let mut ok = true;
                for (i, status) in statuses.iter().enumerate() {
                    if *status != 0 && !(100..=599).contains(status) {
                        ok = false;
                        self.error(
                            Code::Range,
                            &format!("{statuses_path}[{i}]"),
                            format!(
                                "{status} is not an HTTP status: expected 100 to 599, or 0 for no answer"
                            ),
                        );
                    }
                }
                ok.then(|| Invariant::AllowedStatuses {
                    statuses: statuses.clone(),
                })
            }
            RawInvariantParams::ReadyReflectsFaults(p) => {
                let names = self.required(path, "faults", p.faults.as_ref())?;
                let faults_path = child_path(path, "faults");
                if names.is_empty() || names.len() > MAX_LIST_ITEMS {
                    self.error(
                        Code::Range,
                        &faults_path,
                        format!("{} faults: expected 1 to {MAX_LIST_ITEMS}", names.len()),
                    );
                    return None;
                }
                let mut ok = true;
                for (i, name) in names.iter().enumerate() {
                    ok &= self
                        .fault_ref(&format!("{faults_path}[{i}]"), name, faults)
                        .is_some();
                }
                let within =
                    self.wait(path, "within", p.within.as_deref(), DEFAULT_READY_WITHIN)?;
                ok.then(|| Invariant::ReadyReflectsFaults {
                    faults: names.clone(),
                    within,
                })
            }
            RawInvariantParams::ShedFast(p) => {
                let within = self.wait(path, "within", p.within.as_deref(), DEFAULT_SHED_WITHIN)?;
                Some(Invariant::ShedFast { within })
            }
            RawInvariantParams::DegradationGraceful(p) => {
                let reaches = match p.reaches.as_deref() {
                    None => 1,
                    Some(text) => match DEGRADATION_LEVELS[1..].iter().position(|l| *l == text) {
                        Some(i) => i + 1,
                        None => {
                            self.error(
                                Code::Format,
                                &child_path(path, "reaches"),
                                format!(
                                    "unknown degradation level `{text}`: expected one of {}",
                                    DEGRADATION_LEVELS[1..].join(", ")
                                ),
                            );
                            return None;
                        }
                    },
                };
                let within = self.wait(
                    path,
                    "within",
                    p.within.as_deref(),
                    DEFAULT_DEGRADATION_WITHIN,
                )?;
                Some(Invariant::DegradationGraceful { reaches, within })
            }
            RawInvariantParams::Other(value) => {
                let empty = match value {
                    Value::Null => true,
                    Value::Object(map) => map.is_empty(),
                    _ => false,
                };
                if !empty {
                    self.error(
                        Code::Type,
                        path,
                        format!("`{name}` takes no parameters; write it as a bare name"),
                    );
                    return None;
                }
                Invariant::BARE.into_iter().find(|i| i.name() == name)
            }
        }
    }
}

/// Whether some provider program answers with a `Retry-After` of a second
/// or more, which `retry_after_honoured` needs to judge anything.
fn asks_retry_after(faults: &[Fault]) -> bool {
    faults.iter().any(|fault| {
        let FaultAction::LlmProgram { program } = &fault.action else {
            return false;
        };
        let rules = program.get("rules").and_then(|r| r.as_array());
        rules.into_iter().flatten().any(|rule| {
            let effect = rule.get("effect");
            let seconds = effect
                .and_then(|e| e.get("retry_after_s"))
                .and_then(|s| s.as_u64());
            let text = effect
                .and_then(|e| e.get("retry_after"))
                .and_then(|t| t.as_str())
                .and_then(|t| t.trim().parse::<u64>().ok());
            seconds.or(text).is_some_and(|s| s > 0)
        })
    })
}

/// Why no key of the load can go over its rate limit, if none can: in no
/// stage does a tenant's share of the requests exceed what its key's limit
/// admits over the stage (rate × duration + burst). Requests are spread
/// evenly over the tenants.
fn rate_limit_unreachable(
    load: &LoadSpec,
    config: &orchestrator::config::Config,
) -> Option<String> {
    let contract = super::Contract::of(config);
    let tenants = load.tenants.len().max(1) as f64;
    let mut closest: Option<(f64, f64, &Tenant, Duration)> = None;
    for stage in &load.stages {
        let seconds = stage.duration.as_secs_f64();
        let per_key = (stage.start_rps + stage.end_rps) / 2.0 * seconds / tenants;
        for tenant in &load.tenants {
            let (rps, burst) = contract.rate_limit(&tenant.role);
            let allowed = f64::from(rps) * seconds + f64::from(burst);
            if per_key > allowed {
                return None;
            }
            if closest.is_none_or(|(n, a, _, _)| per_key / allowed > n / a) {
                closest = Some((per_key, allowed, tenant, stage.duration));
            }
        }
    }
    let (per_key, allowed, tenant, duration) = closest?;
    let (rps, burst) = contract.rate_limit(&tenant.role);
    Some(format!(
        "no stage sends a key more than its limit admits (at most {per_key:.0} requests to tenant {}'s key over a stage of {}, where {rps} per second and a burst of {burst} admit {allowed:.0})",
        tenant.name,
        format_duration(duration),
    ))
}

/// A threshold before it is tied to its metric.
enum ObjectiveDraft {
    Ratio(f64),
    Duration(Duration),
}

/// `system:` before its configuration is loaded.
pub(crate) struct SystemParts<'a> {
    pub replicas: u32,
    pub store: StoreKind,
    pub config: String,
    pub overrides: Option<&'a Node>,
}

fn fault_infos(raw: &[RawFault]) -> Vec<FaultInfo> {
    raw.iter()
        .filter_map(|f| {
            let at = f.at.as_deref().and_then(|t| parse_duration(t).ok());
            let lasts = f.duration.as_deref().and_then(|t| parse_duration(t).ok());
            Some(FaultInfo {
                name: f.name.clone()?,
                kind: f.kind.clone(),
                lasts: f.duration.is_some(),
                start: at,
                // Unchecked values may be huge; the fault itself reports them.
                end: at.map(|at| at.saturating_add(lasts.unwrap_or_default())),
            })
        })
        .collect()
}

/// A window as written, before its names and durations are checked.
#[derive(Debug, PartialEq)]
enum WindowText<'a> {
    All,
    Every(&'a str),
    Before(&'a str),
    During(&'a str),
    After(&'a str, Option<&'a str>),
}

fn parse_window(text: &str) -> Option<WindowText<'_>> {
    let text = text.trim();
    if text == "all" {
        return Some(WindowText::All);
    }
    if let Some(rest) = text.strip_prefix("every") {
        let every = rest.trim();
        return (rest.starts_with(char::is_whitespace) && !every.is_empty())
            .then_some(WindowText::Every(every));
    }
    let call = |prefix: &str| -> Option<(&str, &str)> {
        let rest = text.strip_prefix(prefix)?.trim_start().strip_prefix('(')?;
        let (name, rest) = rest.split_once(')')?;
        Some((name.trim(), rest.trim()))
    };
    if let Some((name, "")) = call("before") {
        return Some(WindowText::Before(name));
    }
    if let Some((name, "")) = call("during") {
        return Some(WindowText::During(name));
    }
    if let Some((name, rest)) = call("after") {
        if rest.is_empty() {
            return Some(WindowText::After(name, None));
        }
        let delay = rest.strip_prefix('+')?.trim();
        return (!delay.is_empty()).then_some(WindowText::After(name, Some(delay)));
    }
    None
}

fn describe_json(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
        Value::Array(_) => "a sequence".to_owned(),
        Value::String(s) => format!("`{}`", shown(s)),
        other => format!("`{other}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("all"), Some(WindowText::All));
        assert_eq!(parse_window(" every 5s "), Some(WindowText::Every("5s")));
        assert_eq!(parse_window("every"), None);
        assert_eq!(parse_window("everyday"), None);
        assert_eq!(parse_window("before(a)"), Some(WindowText::Before("a")));
        assert_eq!(parse_window("during( a )"), Some(WindowText::During("a")));
        assert_eq!(parse_window("after(a)"), Some(WindowText::After("a", None)));
        assert_eq!(
            parse_window("after(a) + 2s"),
            Some(WindowText::After("a", Some("2s")))
        );
        assert_eq!(
            parse_window("after(a)+2s"),
            Some(WindowText::After("a", Some("2s")))
        );
        assert_eq!(parse_window("after(a) 2s"), None);
        assert_eq!(parse_window("during(a) + 2s"), None);
        assert_eq!(parse_window("sometimes"), None);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("latncy", &["latency", "timeout"]),
            "; did you mean `latency`?"
        );
        assert_eq!(suggest("zzz", &["a", "b"]), "; expected one of `a`, `b`");
    }
}
