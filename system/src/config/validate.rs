//! Raw config to typed config. Every finding is collected; the typed config
//! is returned only when there is no error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::Level;
use super::model::*;
use super::raw::*;
use super::units::{format_duration, format_size, parse_duration, parse_size};
use crate::yaml::{Code, Diagnostic, Node, Severity, child_path, index_path, is_path_prefix};

/// How a broken rule is reported at each level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// Structure and format: absent required fields, unparsable durations,
    /// sizes, URLs and names. An error at every level.
    Format,
    /// Ranges, references, uniqueness, consistency. An error under strict and
    /// moderate; under permissive a warning, and the default (or a safe
    /// correction) is used instead.
    Constraint,
    /// Valid but unsafe settings. An error under strict, else a warning.
    Policy,
}

/// A kind of quantity written with a unit: how to read and print it.
struct Quantity<T> {
    name: &'static str,
    parse: fn(&str) -> Result<T, String>,
    format: fn(T) -> String,
}

const DURATION: Quantity<Duration> = Quantity {
    name: "duration",
    parse: parse_duration,
    format: format_duration,
};
const SIZE: Quantity<u64> = Quantity {
    name: "size",
    parse: parse_size,
    format: format_size,
};

pub(super) struct Validator<'a> {
    level: Level,
    root: Option<&'a Node>,
    /// Paths whose decoding failed: findings at or under them would only repeat the failure.
    failed: &'a [String],
    pub(super) diagnostics: Vec<Diagnostic>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(level: Level, root: Option<&'a Node>, failed: &'a [String]) -> Self {
        Validator {
            level,
            root,
            failed,
            diagnostics: Vec::new(),
        }
    }

    fn report(&mut self, rule: Rule, code: Code, path: &str, message: impl Into<String>) {
        if self
            .failed
            .iter()
            .any(|f| f == path || is_path_prefix(f, path))
        {
            return;
        }
        let severity = match (rule, self.level) {
            (Rule::Format, _) => Severity::Error,
            (Rule::Constraint, Level::Permissive) => Severity::Warning,
            (Rule::Constraint, _) => Severity::Error,
            (Rule::Policy, Level::Strict) => Severity::Error,
            (Rule::Policy, _) => Severity::Warning,
        };
        let (location, env_var) = match self.root {
            Some(root) => {
                let node = root.locate(path);
                let env = if node.path == path {
                    node.env_var.clone()
                } else {
                    None
                };
                (node.location, env)
            }
            None => (crate::yaml::Location::START, None),
        };
        self.diagnostics.push(Diagnostic {
            severity,
            code,
            location,
            path: path.to_owned(),
            message: message.into(),
            env_var,
        });
    }

    fn required<T>(&mut self, parent: &str, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            let what = if parent.is_empty() {
                "the configuration"
            } else {
                parent
            };
            self.report(
                Rule::Format,
                Code::MissingField,
                &child_path(parent, field),
                format!("missing required field `{field}` in {what}"),
            );
        }
        value
    }

    fn duration(
        &mut self,
        path: &str,
        text: Option<&DurationText>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        let text = text.map(|t| t.0.as_str());
        self.measure(path, text, &DURATION, default, max)
    }

    fn size(&mut self, path: &str, text: Option<&SizeText>, default: u64, max: u64) -> u64 {
        let text = text.map(|t| t.0.as_str());
        self.measure(path, text, &SIZE, default, max)
    }

    /// A quantity written with a unit: parsed (a format error otherwise), then
    /// required to be greater than zero and at most `max` (a constraint).
    fn measure<T: PartialOrd + Default + Copy>(
        &mut self,
        path: &str,
        text: Option<&str>,
        quantity: &Quantity<T>,
        default: T,
        max: T,
    ) -> T {
        let Some(text) = text else { return default };
        match (quantity.parse)(text) {
            Err(message) => {
                self.report(Rule::Format, Code::Format, path, message);
                default
            }
            Ok(v) if v <= T::default() || v > max => {
                self.report(
                    Rule::Constraint,
                    Code::Range,
                    path,
                    format!(
                        "{} `{text}` must be greater than zero and at most {}{}",
                        quantity.name,
                        (quantity.format)(max),
                        self.fallback((quantity.format)(default)),
                    ),
                );
                default
            }
            Ok(v) => v,
        }
    }

    fn webhooks(&mut self, raw: &RawWebhooks) -> WebhooksConfig {
        const MAX_RESOLVE_HOSTS: usize = 64;
        const MAX_RESOLVE_ADDRESSES: usize = 16;
        let defaults = WebhooksConfig::default();
        let path = "webhooks";
        for (field, var) in [
            ("secret_env", &raw.secret_env),
            ("previous_secret_env", &raw.previous_secret_env),
        ] {
            if let Some(var) = var {
                self.env_var_name(&child_path(path, field), var);
            }
        }
        if raw.previous_secret_env.is_some() && raw.secret_env.is_none() {
            self.report(
                Rule::Constraint,
                Code::Conflict,
                &child_path(path, "previous_secret_env"),
                "a previous secret needs a current one: set secret_env too",
            );
        }
        let max_attempts = self.range(
            &child_path(path, "max_attempts"),
            raw.max_attempts,
            1,
            20,
            defaults.max_attempts,
        );
        let backoff = self.duration(
            &child_path(path, "backoff"),
            raw.backoff.as_ref(),
            defaults.backoff,
            Duration::from_secs(3600),
        );
        let max_backoff = self.duration(
            &child_path(path, "max_backoff"),
            raw.max_backoff.as_ref(),
            defaults.max_backoff.max(backoff),
            Duration::from_secs(86_400),
        );
        if max_backoff < backoff {
            self.report(
                Rule::Constraint,
                Code::Conflict,
                &child_path(path, "max_backoff"),
                format!(
                    "max_backoff {} is less than backoff {}",
                    format_duration(max_backoff),
                    format_duration(backoff)
                ),
            );
        }
        let connect_timeout = self.duration(
            &child_path(path, "connect_timeout"),
            raw.connect_timeout.as_ref(),
            defaults.connect_timeout,
            Duration::from_secs(30),
        );
        let timeout = self.duration(
            &child_path(path, "timeout"),
            raw.timeout.as_ref(),
            defaults.timeout,
            Duration::from_secs(60),
        );
        let entries = raw.resolve.clone().unwrap_or_default();
        let resolve_path = child_path(path, "resolve");
        if entries.len() > MAX_RESOLVE_HOSTS {
            self.report(
                Rule::Constraint,
                Code::Range,
                &resolve_path,
                format!(
                    "{} names listed, at most {MAX_RESOLVE_HOSTS} are allowed",
                    entries.len()
                ),
            );
        }
        let mut resolve = BTreeMap::new();
        for (host, texts) in entries.iter().take(MAX_RESOLVE_HOSTS) {
            let host_path = child_path(&resolve_path, host);
            let valid_host = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid_host {
                self.report(
                    Rule::Format,
                    Code::Format,
                    &host_path,
                    format!("`{host}` is not a host name (letters, digits, `-` and `.`)"),
                );
                continue;
            }
            if texts.is_empty() || texts.len() > MAX_RESOLVE_ADDRESSES {
                self.report(
                    Rule::Constraint,
                    Code::Range,
                    &host_path,
                    format!(
                        "{} addresses listed, expected 1 to {MAX_RESOLVE_ADDRESSES}",
                        texts.len()
                    ),
                );
                continue;
            }
            let mut addresses = Vec::new();
            for (i, text) in texts.iter().enumerate() {
                match text.parse::<std::net::IpAddr>() {
                    Ok(ip) => addresses.push(ip),
                    Err(_) => self.report(
                        Rule::Format,
                        Code::Format,
                        &index_path(&host_path, i),
                        format!("`{text}` is not an IP address"),
                    ),
                }
            }
            resolve.insert(host.to_ascii_lowercase(), addresses);
        }
        WebhooksConfig {
            secret_env: raw.secret_env.clone(),
            previous_secret_env: raw.previous_secret_env.clone(),
            max_attempts,
            backoff,
            max_backoff,
            connect_timeout,
            timeout,
            resolve,
        }
    }

    /// Reports `var` unless it is a portable environment variable name.
    fn env_var_name(&mut self, path: &str, var: &str) {
        let ok = var.len() <= 128
            && var
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
            && var
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            self.report(
                Rule::Format,
                Code::Format,
                path,
                format!("invalid environment variable name `{var}`: expected A-Z, 0-9 and `_`, not starting with a digit"),
            );
        }
    }

    fn range<T: PartialOrd + Display + Copy>(
        &mut self,
        path: &str,
        value: Option<T>,
        min: T,
        max: T,
        default: T,
    ) -> T {
        match value {
            None => default,
            Some(v) if v >= min && v <= max => v,
            Some(v) => {
                self.report(
                    Rule::Constraint,
                    Code::Range,
                    path,
                    format!(
                        "{v} is out of range, expected {min} to {max}{}",
                        self.fallback(default)
                    ),
                );
                default
            }
        }
    }

    /// The note added to a constraint finding under permissive validation.
    fn fallback(&self, default: impl Display) -> String {
        if self.level == Level::Permissive {
            format!("; using {default}")
        } else {
            String::new()
        }
    }

    fn name(&mut self, path: &str, value: &str, what: &str) -> bool {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            self.report(
                Rule::Format,
                Code::Format,
                path,
                format!(
                    "invalid {what} `{value}`: expected 1 to 64 characters of a-z, 0-9, `_` and `-`"
                ),
            );
        }
        ok
    }

    fn url(&mut self, path: &str, text: &str, schemes: &[&str]) -> Option<Url> {
        match Url::parse(text) {
            Err(e) => {
                self.report(
                    Rule::Format,
                    Code::Format,
                    path,
                    format!("invalid URL `{text}`: {e}"),
                );
                None
            }
            Ok(url) if !schemes.contains(&url.scheme()) => {
                self.report(
                    Rule::Format,
                    Code::Format,
                    path,
                    format!(
                        "URL `{text}` has scheme `{}`, expected {}",
                        url.scheme(),
                        schemes.join(" or ")
                    ),
                );
                None
            }
            Ok(url) if url.host().is_none() => {
                self.report(
                    Rule::Format,
                    Code::Format,
                    path,
                    format!("URL `{text}` has no host"),
                );
                None
            }
            Ok(url) => Some(url),
        }
    }

    pub(super) fn config(&mut self, raw: &RawConfig) -> Config {
        let llm = self.required("", "llm", raw.llm.as_ref());
        let storage = self.required("", "storage", raw.storage.as_ref());
        let security = self.security(raw.security.as_ref().unwrap_or(&RawSecurity::default()));
        Config {
            server: self.server(raw.server.as_ref().unwrap_or(&RawServer::default())),
            llm: self.llm(llm),
            budget: self.budget(raw.budget.as_ref().unwrap_or(&RawBudget::default())),
            jobs: self.jobs(raw.jobs.as_ref().unwrap_or(&RawJobs::default())),
            storage: self.storage(storage),
            security,
            tasks: self.tasks(raw.tasks.as_ref().unwrap_or(&RawTasks::default())),
            observability: ObservabilityConfig {
                metrics: raw
                    .observability
                    .as_ref()
                    .and_then(|o| o.metrics)
                    .unwrap_or(true),
                log_format: raw
                    .observability
                    .as_ref()
                    .and_then(|o| o.log_format)
                    .unwrap_or(LogFormat::Json),
            },
            degradation: self.degradation(
                raw.degradation
                    .as_ref()
                    .unwrap_or(&RawDegradation::default()),
            ),
            webhooks: self.webhooks(raw.webhooks.as_ref().unwrap_or(&RawWebhooks::default())),
        }
    }

    fn server(&mut self, raw: &RawServer) -> ServerConfig {
        let default_listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let allow_public_listen = raw.allow_public_listen.unwrap_or(false);
        let listen = match raw.listen.as_deref().map(str::parse::<SocketAddr>) {
            None => default_listen,
            Some(Ok(addr)) => addr,
            Some(Err(_)) => {
                let text = raw.listen.as_deref().unwrap_or_default();
                self.report(
                    Rule::Format,
                    Code::Format,
                    "server.listen",
                    format!(
                        "invalid listen address `{text}`: expected IP:PORT, like `127.0.0.1:8080`"
                    ),
                );
                default_listen
            }
        };
        if listen.ip().is_unspecified() && !allow_public_listen {
            self.report(
                Rule::Policy,
                Code::Policy,
                "server.listen",
                format!(
                    "listening on `{listen}` exposes the service on every interface; \
                     set `server.allow_public_listen: true` if that is intended"
                ),
            );
        }
        ServerConfig {
            listen,
            allow_public_listen,
            request_timeout: self.duration(
                "server.request_timeout",
                raw.request_timeout.as_ref(),
                Duration::from_secs(30),
                Duration::from_secs(600),
            ),
            body_limit_bytes: self.size(
                "server.body_limit",
                raw.body_limit.as_ref(),
                1 << 20,
                64 << 20,
            ),
            shutdown_timeout: self.duration(
                "server.shutdown_timeout",
                raw.shutdown_timeout.as_ref(),
                Duration::from_secs(10),
                Duration::from_secs(300),
            ),
            admission: self.admission(raw.admission.as_ref().unwrap_or(&RawAdmission::default())),
        }
    }

    fn admission(&mut self, raw: &RawAdmission) -> AdmissionConfig {
        let retry_after = self.duration(
            "server.admission.retry_after",
            raw.retry_after.as_ref(),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        AdmissionConfig {
            tasks_in_flight: self.range(
                "server.admission.tasks_in_flight",
                raw.tasks_in_flight,
                1,
                100_000,
                256,
            ),
            jobs_in_flight: self.range(
                "server.admission.jobs_in_flight",
                raw.jobs_in_flight,
                1,
                100_000,
                512,
            ),
            retry_after,
        }
    }

    fn llm(&mut self, raw: Option<&RawLlm>) -> LlmConfig {
        let Some(raw) = raw else {
            return LlmConfig {
                providers: Vec::new(),
            };
        };
        let Some(list) = self.required("llm", "providers", raw.providers.as_ref()) else {
            return LlmConfig {
                providers: Vec::new(),
            };
        };
        if list.is_empty() {
            self.report(
                Rule::Format,
                Code::MissingField,
                "llm.providers",
                "at least one provider is required",
            );
        }
        if list.len() > 16 {
            self.report(
                Rule::Constraint,
                Code::Range,
                "llm.providers",
                format!(
                    "{} providers configured, at most 16 are allowed",
                    list.len()
                ),
            );
        }
        let mut providers: Vec<ProviderConfig> = Vec::new();
        for (i, raw) in list.iter().enumerate().take(16) {
            let path = index_path("llm.providers", i);
            let Some(provider) = self.provider(&path, raw) else {
                continue;
            };
            if providers.iter().any(|p| p.name == provider.name) {
                self.report(
                    Rule::Constraint,
                    Code::Duplicate,
                    &child_path(&path, "name"),
                    format!(
                        "provider name `{}` is used twice{}",
                        provider.name,
                        self.drop_note()
                    ),
                );
                continue;
            }
            providers.push(provider);
        }
        LlmConfig { providers }
    }

    fn drop_note(&self) -> &'static str {
        if self.level == Level::Permissive {
            "; ignoring this entry"
        } else {
            ""
        }
    }

    fn provider(&mut self, path: &str, raw: &RawProvider) -> Option<ProviderConfig> {
        let name = self.required(path, "name", raw.name.clone());
        let base_url = self.required(path, "base_url", raw.base_url.as_deref());
        let model = self.required(path, "model", raw.model.clone());
        let name_ok = name
            .as_deref()
            .is_some_and(|n| self.name(&child_path(path, "name"), n, "provider name"));
        let base_url =
            base_url.and_then(|u| self.url(&child_path(path, "base_url"), u, &["http", "https"]));
        if model.as_deref() == Some("") {
            self.report(
                Rule::Format,
                Code::Format,
                &child_path(path, "model"),
                "model name must not be empty",
            );
        }
        if let Some(var) = &raw.api_key_env {
            self.env_var_name(&child_path(path, "api_key_env"), var);
        }
        let hour = Duration::from_secs(3600);
        let attempt_timeout = self.duration(
            &child_path(path, "attempt_timeout"),
            raw.attempt_timeout.as_ref(),
            Duration::from_secs(10),
            hour,
        );
        let mut deadline = self.duration(
            &child_path(path, "deadline"),
            raw.deadline.as_ref(),
            Duration::from_secs(30),
            hour,
        );
        if deadline < attempt_timeout {
            self.report(
                Rule::Constraint,
                Code::Conflict,
                &child_path(path, "deadline"),
                format!(
                    "deadline {} is shorter than attempt_timeout {}{}",
                    format_duration(deadline),
                    format_duration(attempt_timeout),
                    self.fallback(format_duration(attempt_timeout)),
                ),
            );
            deadline = attempt_timeout;
        }
        let retry = self.retry(
            &child_path(path, "retry"),
            raw.retry.as_ref().unwrap_or(&RawRetry::default()),
        );
        let cb_path = child_path(path, "circuit_breaker");
        let cb = raw.circuit_breaker.clone().unwrap_or_default();
        let circuit_breaker = CircuitBreakerConfig {
            failure_threshold: self.range(
                &child_path(&cb_path, "failure_threshold"),
                cb.failure_threshold,
                1,
                1000,
                5,
            ),
            recovery_timeout: self.duration(
                &child_path(&cb_path, "recovery_timeout"),
                cb.recovery_timeout.as_ref(),
                Duration::from_secs(30),
                hour,
            ),
            half_open_max_calls: self.range(
                &child_path(&cb_path, "half_open_max_calls"),
                cb.half_open_max_calls,
                1,
                100,
                1,
            ),
        };
        Some(ProviderConfig {
            name: name.filter(|_| name_ok)?,
            base_url: base_url?,
            model: model.filter(|m| !m.is_empty())?,
            api_key_env: raw.api_key_env.clone(),
            attempt_timeout,
            deadline,
            retry,
            circuit_breaker,
        })
    }

    fn retry(&mut self, path: &str, raw: &RawRetry) -> RetryConfig {
        let attempts = self.range(&child_path(path, "attempts"), raw.attempts, 1, 10, 3);
        let mut initial_delay = self.duration(
            &child_path(path, "initial_delay"),
            raw.initial_delay.as_ref(),
            Duration::from_millis(500),
            Duration::from_secs(600),
        );
        let max_delay = self.duration(
            &child_path(path, "max_delay"),
            raw.max_delay.as_ref(),
            Duration::from_secs(20),
            Duration::from_secs(600),
        );
        if initial_delay > max_delay {
            self.report(
                Rule::Constraint,
                Code::Conflict,
                &child_path(path, "initial_delay"),
                format!(
                    "initial_delay {} is longer than max_delay {}{}",
                    format_duration(initial_delay),
                    format_duration(max_delay),
                    self.fallback(format_duration(max_delay)),
                ),
            );
            initial_delay = max_delay;
        }
        let multiplier_path = child_path(path, "multiplier");
        let multiplier = match raw.multiplier {
            Some(m) if !m.is_finite() => {
                self.report(
                    Rule::Format,
                    Code::Format,
                    &multiplier_path,
                    format!("{m} is not a finite number"),
                );
                2.0
            }
            m => self.range(&multiplier_path, m, 1.0, 10.0, 2.0),
        };
        RetryConfig {
            attempts,
            initial_delay,
            max_delay,
            multiplier,
            jitter: raw.jitter.unwrap_or(Jitter::Full),
        }
    }

    fn budget(&mut self, raw: &RawBudget) -> BudgetConfig {
        const MAX_TOKENS: u64 = 1_000_000_000_000;
        let default_limit_tokens = self.range(
            "budget.default_limit_tokens",
            raw.default_limit_tokens,
            1,
            MAX_TOKENS,
            100_000,
        );
        let mut tenants = BTreeMap::new();
        for (tenant, &limit) in raw.tenants.iter().flatten() {
            let path = child_path("budget.tenants", tenant);
            if self.name(&path, tenant, "tenant name") {
                let limit = self.range(&path, Some(limit), 1, MAX_TOKENS, default_limit_tokens);
                tenants.insert(tenant.clone(), limit);
            }
        }
        BudgetConfig {
            default_limit_tokens,
            tenants,
        }
    }

    fn jobs(&mut self, raw: &RawJobs) -> JobsConfig {
        let hour = Duration::from_secs(3600);
        let lease = self.duration(
            "jobs.lease",
            raw.lease.as_ref(),
            Duration::from_secs(30),
            hour,
        );
        let mut heartbeat_interval = self.duration(
            "jobs.heartbeat_interval",
            raw.heartbeat_interval.as_ref(),
            Duration::from_secs(10),
            hour,
        );
        if heartbeat_interval >= lease {
            // Half the lease, whole milliseconds where possible, always shorter than the lease.
            let half_ms = u64::try_from(lease.as_millis() / 2).unwrap_or(u64::MAX);
            let corrected = if half_ms > 0 {
                Duration::from_millis(half_ms)
            } else {
                lease / 2
            };
            self.report(
                Rule::Constraint,
                Code::Conflict,
                "jobs.heartbeat_interval",
                format!(
                    "heartbeat_interval {} must be shorter than lease {}, or leases expire under live workers{}",
                    format_duration(heartbeat_interval),
                    format_duration(lease),
                    self.fallback(format_duration(corrected)),
                ),
            );
            heartbeat_interval = corrected;
        }
        let mut retry_initial_delay = self.duration(
            "jobs.retry_initial_delay",
            raw.retry_initial_delay.as_ref(),
            Duration::from_secs(1),
            hour,
        );
        let retry_max_delay = self.duration(
            "jobs.retry_max_delay",
            raw.retry_max_delay.as_ref(),
            Duration::from_secs(60),
            hour,
        );
        if retry_initial_delay > retry_max_delay {
            self.report(
                Rule::Constraint,
                Code::Conflict,
                "jobs.retry_initial_delay",
                format!(
                    "retry_initial_delay {} is longer than retry_max_delay {}{}",
                    format_duration(retry_initial_delay),
                    format_duration(retry_max_delay),
                    self.fallback(format_duration(retry_max_delay)),
                ),
            );
            retry_initial_delay = retry_max_delay;
        }
        JobsConfig {
            workers: self.range("jobs.workers", raw.workers, 1, 256, 4),
            queue_capacity: self.range(
                "jobs.queue_capacity",
                raw.queue_capacity,
                1,
                1_000_000,
                1000,
            ),
            max_attempts: self.range("jobs.max_attempts", raw.max_attempts, 1, 100, 5),
            lease,
            heartbeat_interval,
            retry_initial_delay,
            retry_max_delay,
        }
    }

    fn storage(&mut self, raw: Option<&RawStorage>) -> StorageConfig {
        let fallback = StorageConfig::Sqlite {
            path: PathBuf::from("data/orchestrator.db"),
        };
        let Some(raw) = raw else { return fallback };
        match (&raw.sqlite, &raw.redis) {
            (Some(_), Some(_)) => {
                self.report(
                    Rule::Format,
                    Code::Conflict,
                    "storage",
                    "set exactly one of `sqlite` and `redis`, not both",
                );
                fallback
            }
            (None, None) => {
                self.report(
                    Rule::Format,
                    Code::MissingField,
                    "storage",
                    "set exactly one of `sqlite` and `redis`",
                );
                fallback
            }
            (Some(sqlite), None) => {
                match self.required("storage.sqlite", "path", sqlite.path.as_deref()) {
                    Some("") => {
                        self.report(
                            Rule::Format,
                            Code::Format,
                            "storage.sqlite.path",
                            "path must not be empty",
                        );
                        fallback
                    }
                    Some(path) => StorageConfig::Sqlite {
                        path: PathBuf::from(path),
                    },
                    None => fallback,
                }
            }
            (None, Some(redis)) => {
                match self.required("storage.redis", "url", redis.url.as_deref()) {
                    Some(url) => match self.url("storage.redis.url", url, &["redis", "rediss"]) {
                        Some(url) => StorageConfig::Redis { url },
                        None => fallback,
                    },
                    None => fallback,
                }
            }
        }
    }

    fn security(&mut self, raw: &RawSecurity) -> SecurityConfig {
        let roles = self.roles(raw.roles.as_ref());
        let role_names: BTreeSet<String> = crate::roles::BUILTIN
            .iter()
            .map(|r| r.name.to_owned())
            .chain(roles.keys().cloned())
            .collect();
        let mut api_keys: Vec<ApiKeyConfig> = Vec::new();
        let keys = raw.api_keys.as_deref().unwrap_or_default();
        if keys.len() > 1000 {
            self.report(
                Rule::Constraint,
                Code::Range,
                "security.api_keys",
                format!(
                    "{} API keys configured, at most 1000 are allowed",
                    keys.len()
                ),
            );
        }
        for (i, key) in keys.iter().enumerate().take(1000) {
            let path = index_path("security.api_keys", i);
            let Some(key) = self.api_key(&path, key, &role_names) else {
                continue;
            };
            if api_keys.iter().any(|k| k.id == key.id) {
                self.report(
                    Rule::Constraint,
                    Code::Duplicate,
                    &child_path(&path, "id"),
                    format!("API key id `{}` is used twice{}", key.id, self.drop_note()),
                );
                continue;
            }
            if api_keys.iter().any(|k| k.sha256 == key.sha256) {
                self.report(
                    Rule::Constraint,
                    Code::Duplicate,
                    &child_path(&path, "sha256"),
                    format!(
                        "API key `{}` has the same hash as another key{}",
                        key.id,
                        self.drop_note()
                    ),
                );
                continue;
            }
            api_keys.push(key);
        }
        let mut rate_limits = BTreeMap::new();
        for (role, limit) in raw.rate_limits.iter().flatten() {
            let path = child_path("security.rate_limits", role);
            if !role_names.contains(role) {
                self.report(
                    Rule::Constraint,
                    Code::Reference,
                    &path,
                    format!(
                        "rate limit for unknown role `{role}`; known roles: {}{}",
                        known(&role_names),
                        self.drop_note()
                    ),
                );
                continue;
            }
            rate_limits.insert(role.clone(), self.rate_limit(&path, limit));
        }
        let default_rate_limit = match &raw.default_rate_limit {
            Some(limit) => self.rate_limit("security.default_rate_limit", limit),
            None => RateLimitConfig {
                requests_per_second: 20,
                burst: 40,
            },
        };
        let allow_wildcard_cors = raw.allow_wildcard_cors.unwrap_or(false);
        let mut cors_allowed_origins = Vec::new();
        for (i, origin) in raw.cors_allowed_origins.iter().flatten().enumerate() {
            let path = index_path("security.cors_allowed_origins", i);
            if origin == "*" {
                if !allow_wildcard_cors {
                    self.report(
                        Rule::Policy,
                        Code::Policy,
                        &path,
                        "CORS origin `*` lets any web page call the API; \
                         list origins, or set `security.allow_wildcard_cors: true` if that is intended",
                    );
                }
                cors_allowed_origins.push(origin.clone());
                continue;
            }
            if let Some(url) = self.url(&path, origin, &["http", "https"]) {
                if url.path() != "/"
                    || url.query().is_some()
                    || url.fragment().is_some()
                    || origin.ends_with('/')
                {
                    self.report(
                        Rule::Format,
                        Code::Format,
                        &path,
                        format!("CORS origin `{origin}` must be scheme://host[:port] with no path"),
                    );
                } else {
                    cors_allowed_origins.push(origin.clone());
                }
            }
        }
        // Every outbound call scans the entries; a bound keeps that cheap.
        const MAX_ALLOWLIST_ENTRIES: usize = 64;
        let allowlist = raw.outbound_url_allowlist.as_deref().unwrap_or_default();
        if allowlist.len() > MAX_ALLOWLIST_ENTRIES {
            self.report(
                Rule::Constraint,
                Code::Range,
                "security.outbound_url_allowlist",
                format!(
                    "{} allowlist entries listed, at most {MAX_ALLOWLIST_ENTRIES} are allowed",
                    allowlist.len()
                ),
            );
        }
        let mut outbound_url_allowlist = Vec::new();
        for (i, prefix) in allowlist.iter().enumerate().take(MAX_ALLOWLIST_ENTRIES) {
            let path = index_path("security.outbound_url_allowlist", i);
            if let Some(url) = self.url(&path, prefix, &["http", "https"]) {
                if !url.username().is_empty()
                    || url.password().is_some()
                    || url.query().is_some()
                    || url.fragment().is_some()
                {
                    self.report(
                        Rule::Format,
                        Code::Format,
                        &path,
                        format!("allowlist entry `{prefix}` must be scheme, host, optional port and path: no credentials, query or fragment"),
                    );
                } else {
                    outbound_url_allowlist.push(url);
                }
            }
        }
        let pii = raw.pii_redaction.clone().unwrap_or_default();
        let types = match pii.types {
            Some(types) => types
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            None => PiiType::ALL.to_vec(),
        };
        let min_confidence_percent = self.range(
            "security.pii_redaction.min_confidence_percent",
            pii.min_confidence_percent,
            0,
            100,
            50,
        );
        if let Some(var) = &pii.hash_key_env {
            self.env_var_name("security.pii_redaction.hash_key_env", var);
        }
        let lockout = self.lockout(raw.lockout.as_ref().unwrap_or(&RawLockout::default()));
        let keys = self.keys(raw.keys.as_ref().unwrap_or(&RawKeys::default()));
        SecurityConfig {
            lockout,
            keys,
            api_keys,
            roles,
            rate_limits,
            default_rate_limit,
            cors_allowed_origins,
            allow_wildcard_cors,
            hsts: raw.hsts.unwrap_or(false),
            pii_redaction: PiiRedactionConfig {
                enabled: pii.enabled.unwrap_or(true),
                types,
                strategy: pii.strategy.unwrap_or_default(),
                min_confidence_percent,
                hash_key_env: pii.hash_key_env,
            },
            outbound_url_allowlist,
        }
    }

    /// `security.roles`: names valid, at most [`MAX_ROLES`], every parent a
    /// role that exists (built-in or configured), and no inheritance cycle.
    fn roles(&mut self, raw: Option<&BTreeMap<String, RawRole>>) -> BTreeMap<String, RoleConfig> {
        const MAX_ROLES: usize = 100;
        let raw = raw
            .map(|r| r.iter().collect::<Vec<_>>())
            .unwrap_or_default();
        if raw.len() > MAX_ROLES {
            self.report(
                Rule::Constraint,
                Code::Range,
                "security.roles",
                format!(
                    "{} roles configured, at most {MAX_ROLES} are allowed",
                    raw.len()
                ),
            );
        }
        let all: BTreeSet<String> = raw
            .iter()
            .map(|(name, _)| (*name).clone())
            .chain(crate::roles::BUILTIN.iter().map(|r| r.name.to_owned()))
            .collect();
        let mut roles = BTreeMap::new();
        for (name, role) in raw.into_iter().take(MAX_ROLES) {
            let path = child_path("security.roles", name);
            if !self.name(&path, name, "role name") {
                continue;
            }
            let (inherits, permissions) = match role {
                RawRole::Permissions(p) => (Vec::new(), p.clone()),
                RawRole::Defined(d) => (
                    d.inherits.clone().unwrap_or_default(),
                    d.permissions.clone().unwrap_or_default(),
                ),
            };
            let mut parents = Vec::new();
            for (i, parent) in inherits.iter().enumerate() {
                if all.contains(parent) {
                    parents.push(parent.clone());
                    continue;
                }
                self.report(
                    Rule::Constraint,
                    Code::Reference,
                    &index_path(&child_path(&path, "inherits"), i),
                    format!(
                        "role `{name}` inherits from unknown role `{parent}`; known roles: {}",
                        known(&all)
                    ),
                );
            }
            // A set's order is `Permission`'s, which is `Permission::ALL`'s.
            let permissions = permissions
                .into_iter()
                .collect::<BTreeSet<Permission>>()
                .into_iter()
                .collect();
            roles.insert(
                name.clone(),
                RoleConfig {
                    inherits: parents,
                    permissions,
                },
            );
        }
        // A cycle through a configured role; built-in roles alone have none.
        let mut cyclic = Vec::new();
        for name in roles.keys() {
            // Depth-first from the role: a path back to it is a cycle. Paths
            // are at most as long as there are roles, so this ends.
            let mut stack = vec![vec![name.clone()]];
            let mut visited = BTreeSet::new();
            while let Some(path) = stack.pop() {
                let last = path.last().cloned().unwrap_or_default();
                for parent in crate::roles::parents(&roles, &last) {
                    if parent == *name {
                        let mut cycle = path.clone();
                        cycle.push(parent);
                        cyclic.push((name.clone(), cycle));
                        stack.clear();
                        break;
                    }
                    if visited.insert(parent.clone()) {
                        let mut next = path.clone();
                        next.push(parent);
                        stack.push(next);
                    }
                }
            }
        }
        for (name, cycle) in cyclic {
            self.report(
                Rule::Constraint,
                Code::Conflict,
                &child_path(&child_path("security.roles", &name), "inherits"),
                format!("inheritance cycle: {}", cycle.join(" -> ")),
            );
            if let Some(role) = roles.get_mut(&name) {
                role.inherits.clear();
            }
        }
        roles
    }

    fn api_key(
        &mut self,
        path: &str,
        raw: &RawApiKey,
        roles: &BTreeSet<String>,
    ) -> Option<ApiKeyConfig> {
        let id = self.required(path, "id", raw.id.clone());
        let sha256 = self.required(path, "sha256", raw.sha256.as_deref());
        let tenant = self.required(path, "tenant", raw.tenant.clone());
        let role = self.required(path, "role", raw.role.clone());
        let id_ok = id
            .as_deref()
            .is_some_and(|v| self.name(&child_path(path, "id"), v, "key id"));
        let tenant_ok = tenant
            .as_deref()
            .is_some_and(|v| self.name(&child_path(path, "tenant"), v, "tenant name"));
        let hash = sha256.and_then(|h| {
            let bytes = decode_sha256(h);
            if bytes.is_none() {
                self.report(
                    Rule::Format,
                    Code::Format,
                    &child_path(path, "sha256"),
                    format!("invalid SHA-256 `{h}`: expected 64 lowercase hexadecimal digits"),
                );
            }
            bytes
        });
        let role_ok = match role.as_deref() {
            Some(r) if !roles.contains(r) => {
                self.report(
                    Rule::Constraint,
                    Code::Reference,
                    &child_path(path, "role"),
                    format!(
                        "unknown role `{r}`; known roles: {}{}",
                        known(roles),
                        self.drop_note()
                    ),
                );
                false
            }
            Some(_) => true,
            None => false,
        };
        let expires_at = raw.expires_at.as_deref().and_then(|text| match humantime::parse_rfc3339(text) {
            Ok(t) => Some(t),
            Err(e) => {
                self.report(
                    Rule::Format,
                    Code::Format,
                    &child_path(path, "expires_at"),
                    format!("invalid timestamp `{text}`: {e}; expected RFC 3339 UTC, like `2030-01-01T00:00:00Z`"),
                );
                None
            }
        });
        if !(id_ok && tenant_ok && role_ok) {
            return None;
        }
        Some(ApiKeyConfig {
            id: id?,
            sha256: hash?,
            tenant: tenant?,
            role: role?,
            expires_at,
        })
    }

    fn lockout(&mut self, raw: &RawLockout) -> LockoutConfig {
        const DAY: Duration = Duration::from_secs(86_400);
        const MAX_TRUSTED_PROXIES: usize = 64;
        let defaults = LockoutConfig::default();
        let path = "security.lockout";
        let max_failures = self.range(
            &child_path(path, "max_failures"),
            raw.max_failures,
            1,
            100_000,
            defaults.max_failures,
        );
        let window = self.duration(
            &child_path(path, "window"),
            raw.window.as_ref(),
            defaults.window,
            DAY,
        );
        let duration = self.duration(
            &child_path(path, "duration"),
            raw.duration.as_ref(),
            defaults.duration,
            DAY,
        );
        let max_tracked = self.range(
            &child_path(path, "max_tracked"),
            raw.max_tracked,
            16,
            1_000_000,
            defaults.max_tracked,
        );
        let proxies = raw.trusted_proxies.as_deref().unwrap_or_default();
        if proxies.len() > MAX_TRUSTED_PROXIES {
            self.report(
                Rule::Constraint,
                Code::Range,
                &child_path(path, "trusted_proxies"),
                format!(
                    "{} trusted proxies listed, at most {MAX_TRUSTED_PROXIES} are allowed",
                    proxies.len()
                ),
            );
        }
        let mut trusted_proxies = Vec::new();
        for (i, text) in proxies.iter().enumerate().take(MAX_TRUSTED_PROXIES) {
            // A bare address is a network of one.
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net.trunc()),
                Err(_) => self.report(
                    Rule::Format,
                    Code::Format,
                    &index_path(&child_path(path, "trusted_proxies"), i),
                    format!(
                        "invalid network `{text}`: expected an address or a CIDR network, like `10.0.0.0/8`"
                    ),
                ),
            }
        }
        LockoutConfig {
            max_failures,
            window,
            duration,
            max_tracked,
            trusted_proxies,
        }
    }

    fn keys(&mut self, raw: &RawKeys) -> KeysConfig {
        const DAY: Duration = Duration::from_secs(86_400);
        let defaults = KeysConfig::default();
        let path = "security.keys";
        let rotation_interval = self.duration(
            &child_path(path, "rotation_interval"),
            raw.rotation_interval.as_ref(),
            defaults.rotation_interval,
            DAY * 3650,
        );
        let warning_before = self.duration(
            &child_path(path, "warning_before"),
            raw.warning_before.as_ref(),
            defaults.warning_before.min(rotation_interval),
            DAY * 3650,
        );
        if warning_before > rotation_interval {
            self.report(
                Rule::Constraint,
                Code::Conflict,
                &child_path(path, "warning_before"),
                format!(
                    "warning_before `{}` is longer than rotation_interval `{}`: every key would be due from the start",
                    format_duration(warning_before),
                    format_duration(rotation_interval)
                ),
            );
        }
        let rotation_overlap = self.duration(
            &child_path(path, "rotation_overlap"),
            raw.rotation_overlap.as_ref(),
            defaults.rotation_overlap,
            DAY * 7,
        );
        let max_keys = self.range(
            &child_path(path, "max_keys"),
            raw.max_keys,
            1,
            100_000,
            defaults.max_keys,
        );
        KeysConfig {
            rotation_interval,
            warning_before: warning_before.min(rotation_interval),
            rotation_overlap,
            max_keys,
        }
    }

    fn rate_limit(&mut self, path: &str, raw: &RawRateLimit) -> RateLimitConfig {
        let rps = self
            .required(path, "requests_per_second", raw.requests_per_second)
            .unwrap_or(20);
        let requests_per_second = self.range(
            &child_path(path, "requests_per_second"),
            Some(rps),
            1,
            100_000,
            20,
        );
        let burst = self.range(
            &child_path(path, "burst"),
            raw.burst,
            1,
            100_000,
            requests_per_second.saturating_mul(2).min(100_000),
        );
        RateLimitConfig {
            requests_per_second,
            burst,
        }
    }

    fn tasks(&mut self, raw: &RawTasks) -> TasksConfig {
        let default_tools = || {
            ["search", "http_get", "summarize"]
                .map(String::from)
                .to_vec()
        };
        let mut allowed_tools = Vec::new();
        match &raw.allowed_tools {
            None => allowed_tools = default_tools(),
            Some(tools) => {
                if tools.is_empty() || tools.len() > 64 {
                    self.report(
                        Rule::Constraint,
                        Code::Range,
                        "tasks.allowed_tools",
                        format!("{} tools listed, expected 1 to 64", tools.len()),
                    );
                }
                for (i, tool) in tools.iter().enumerate().take(64) {
                    let path = index_path("tasks.allowed_tools", i);
                    let ok = tool.len() <= 64
                        && tool.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                        && tool
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !ok {
                        self.report(
                            Rule::Format,
                            Code::Format,
                            &path,
                            format!("invalid tool name `{tool}`: expected a-z, 0-9 and `_`, starting with a letter"),
                        );
                    } else if allowed_tools.contains(tool) {
                        self.report(
                            Rule::Constraint,
                            Code::Duplicate,
                            &path,
                            format!("tool `{tool}` is listed twice"),
                        );
                    } else {
                        allowed_tools.push(tool.clone());
                    }
                }
                if allowed_tools.is_empty() {
                    allowed_tools = default_tools();
                }
            }
        }
        TasksConfig {
            allowed_tools,
            max_prompt_bytes: self.size(
                "tasks.max_prompt_size",
                raw.max_prompt_size.as_ref(),
                32 << 10,
                1 << 20,
            ),
            max_output_bytes: self.size(
                "tasks.max_output_size",
                raw.max_output_size.as_ref(),
                64 << 10,
                4 << 20,
            ),
        }
    }

    fn degradation(&mut self, raw: &RawDegradation) -> DegradationConfig {
        let rate = |v: &mut Self, field: &str, value: Option<f64>, default: f64| {
            let path = child_path("degradation", field);
            match value {
                Some(x) if x.is_nan() => {
                    v.report(
                        Rule::Format,
                        Code::Format,
                        &path,
                        "NaN is not an error rate",
                    );
                    default
                }
                x => v.range(&path, x, 0.0, 1.0, default),
            }
        };
        let degraded_error_rate = rate(self, "degraded_error_rate", raw.degraded_error_rate, 0.25);
        let mut unhealthy_error_rate =
            rate(self, "unhealthy_error_rate", raw.unhealthy_error_rate, 0.5);
        if unhealthy_error_rate < degraded_error_rate {
            self.report(
                Rule::Constraint,
                Code::Conflict,
                "degradation.unhealthy_error_rate",
                format!(
                    "unhealthy_error_rate {unhealthy_error_rate} is below degraded_error_rate {degraded_error_rate}{}",
                    self.fallback(degraded_error_rate)
                ),
            );
            unhealthy_error_rate = degraded_error_rate;
        }
        let enter_after = self.duration(
            "degradation.enter_after",
            raw.enter_after.as_ref(),
            Duration::from_secs(2),
            Duration::from_secs(600),
        );
        let mut leave_after = self.duration(
            "degradation.leave_after",
            raw.leave_after.as_ref(),
            Duration::from_secs(10),
            Duration::from_secs(3600),
        );
        if leave_after <= enter_after {
            // Five times enter_after, the defaults' ratio.
            let corrected = enter_after.saturating_mul(5);
            self.report(
                Rule::Constraint,
                Code::Conflict,
                "degradation.leave_after",
                format!(
                    "leave_after {} must be longer than enter_after {}, or a recovering service flaps between levels{}",
                    format_duration(leave_after),
                    format_duration(enter_after),
                    self.fallback(format_duration(corrected)),
                ),
            );
            leave_after = corrected;
        }
        DegradationConfig {
            degraded_error_rate,
            unhealthy_error_rate,
            window: self.duration(
                "degradation.window",
                raw.window.as_ref(),
                Duration::from_secs(30),
                Duration::from_secs(3600),
            ),
            enter_after,
            leave_after,
            slow_store: self.duration(
                "degradation.slow_store",
                raw.slow_store.as_ref(),
                Duration::from_secs(1),
                Duration::from_secs(60),
            ),
        }
    }
}

fn known(roles: &BTreeSet<String>) -> String {
    if roles.is_empty() {
        return "none".to_owned();
    }
    roles
        .iter()
        .map(|r| format!("`{r}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes 64 lowercase hex digits.
pub(super) fn decode_sha256(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}
