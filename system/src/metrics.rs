//! Prometheus metrics. One registry per service instance (not a global), so
//! that several instances in one test process never mix their numbers.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the service exports. Label values come from the
/// configuration (routes, providers, tenants of configured keys, key ids) or
/// from small closed sets (outcomes, reasons), so cardinality is bounded.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `http_requests_total{route,method,status}`.
    pub http_requests: IntCounterVec,
    /// `http_request_duration_seconds{route}`.
    pub http_duration: HistogramVec,
    /// `llm_attempts_total{provider,outcome}`: every HTTP attempt and how it ended.
    pub llm_attempts: IntCounterVec,
    /// `llm_retries_total{provider,reason}`: attempts that were followed by another.
    pub llm_retries: IntCounterVec,
    /// `llm_failures_total{provider,reason}`: calls that failed after their last attempt.
    pub llm_failures: IntCounterVec,
    /// `llm_breaker_state{provider}`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// `llm_breaker_rejections_total{provider}`: calls refused by an open breaker.
    pub breaker_rejections: IntCounterVec,
    /// `llm_output_rejected_total{reason}`: provider output that failed validation.
    pub output_rejected: IntCounterVec,
    /// `tokens_charged_total{tenant}`.
    pub tokens_charged: IntCounterVec,
    /// `budget_overage_tokens_total{tenant}`: usage beyond the limit, not charged.
    pub budget_overage: IntCounterVec,
    /// `budget_remaining_tokens{tenant}`, updated whenever a charge is committed.
    pub budget_remaining: IntGaugeVec,
    /// `budget_exhausted_total{tenant}`: requests refused with 402.
    pub budget_exhausted: IntCounterVec,
    /// `idempotent_replays_total`.
    pub idempotent_replays: IntCounter,
    /// `rate_limited_total{key}`: requests refused with 429.
    pub rate_limited: IntCounterVec,
    /// `requests_shed_total{route}`: requests refused 503 `overloaded` by
    /// admission control (`tasks`, `jobs`).
    pub requests_shed: IntCounterVec,
    /// `auth_failures_total{reason}`: 401 and 403 responses.
    pub auth_failures: IntCounterVec,
    /// `auth_lockouts_total{scope}`: addresses and key ids locked.
    pub auth_lockouts: IntCounterVec,
    /// `auth_locked_refusals_total{scope}`: requests refused 429 `auth-locked`.
    pub auth_locked_refusals: IntCounterVec,
    /// `auth_lockout_tracked`: addresses and key ids the lockout table holds.
    pub auth_lockout_tracked: IntGauge,
    /// `api_keys_rotation{state}`: keys `due` (within `warning_before`) and
    /// `overdue` (past `rotation_interval`), refreshed on each scrape and
    /// health check.
    pub api_keys_rotation: IntGaugeVec,
    /// `api_key_changes_total{action}`: keys `created`, `rotated`, `revoked`.
    pub api_key_changes: IntCounterVec,
    /// `llm_call_duration_seconds`: one whole LLM call, retries included.
    pub llm_duration: Histogram,
    /// `jobs{state}`: jobs by state, refreshed from the store on each scrape.
    pub jobs: IntGaugeVec,
    /// `jobs_queue_depth`: jobs waiting for a worker (refreshed on each scrape).
    pub jobs_queue_depth: IntGauge,
    /// `dlq_size`: jobs in the dead-letter queue (refreshed on each scrape).
    pub dlq_size: IntGauge,
    /// `jobs_submitted_total`: jobs accepted (202, not replays).
    pub jobs_submitted: IntCounter,
    /// `jobs_rejected_total{reason}`: submissions refused (`queue_full`, ...).
    pub jobs_rejected: IntCounterVec,
    /// `job_attempts_total{outcome}`: how attempts ended (`succeeded`,
    /// `retrying`, `dead`, `lease_lost`, `released`).
    pub job_attempts: IntCounterVec,
    /// `job_lease_reclaims_total`: leases taken back after they expired.
    pub job_lease_reclaims: IntCounter,
    /// `job_duration_seconds`: from submission to success.
    pub job_duration: Histogram,
    /// `webhook_deliveries_total{outcome}`: webhook attempts (`delivered`,
    /// `retried`, `failed`, `refused`).
    pub webhook_deliveries: IntCounterVec,
    /// `degradation_level`: the degradation level, 0 (normal) to 4
    /// (emergency).
    pub degradation_level: IntGauge,
    /// `degradation_shed_total{work}`: requests refused 503 `degraded` by
    /// the level (`task`, `job`, `write`).
    pub degradation_shed: IntCounterVec,
}

/// Job latency buckets in seconds: jobs queue and retry, so they span minutes.
const JOB_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// Latency buckets in seconds: fine below 100 ms, where a healthy service
/// lives, and coarse up to the longest request timeout worth measuring.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name} is malformed: {e}"));
            register(&registry, Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name} is malformed: {e}"));
            register(&registry, Box::new(g.clone()));
            g
        };
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Request latency by route.")
                .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("metric http_request_duration_seconds: {e}"));
        register(&registry, Box::new(http_duration.clone()));
        let llm_duration = Histogram::with_opts(
            HistogramOpts::new(
                "llm_call_duration_seconds",
                "LLM call latency, all attempts and backoff included.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("metric llm_call_duration_seconds: {e}"));
        register(&registry, Box::new(llm_duration.clone()));
        let idempotent_replays = IntCounter::new(
            "idempotent_replays_total",
            "Requests answered from a stored idempotent response.",
        )
        .unwrap_or_else(|e| unreachable!("metric idempotent_replays_total: {e}"));
        register(&registry, Box::new(idempotent_replays.clone()));
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)
                .unwrap_or_else(|e| unreachable!("metric {name} is malformed: {e}"));
            register(&registry, Box::new(c.clone()));
            c
        };
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)
                .unwrap_or_else(|e| unreachable!("metric {name} is malformed: {e}"));
            register(&registry, Box::new(g.clone()));
            g
        };
        let job_duration = Histogram::with_opts(
            HistogramOpts::new(
                "job_duration_seconds",
                "Job latency from submission to success, retries and queueing included.",
            )
            .buckets(JOB_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("metric job_duration_seconds: {e}"));
        register(&registry, Box::new(job_duration.clone()));
        Metrics {
            jobs: gauge("jobs", "Jobs by state.", &["state"]),
            jobs_queue_depth: plain_gauge("jobs_queue_depth", "Jobs waiting for a worker."),
            degradation_level: plain_gauge(
                "degradation_level",
                "The degradation level: 0 normal, 1 to 3, 4 emergency.",
            ),
            degradation_shed: counter(
                "degradation_shed_total",
                "Requests refused 503 degraded by the degradation level, by the work asked.",
                &["work"],
            ),
            dlq_size: plain_gauge("dlq_size", "Jobs in the dead-letter queue."),
            jobs_submitted: plain_counter("jobs_submitted_total", "Jobs accepted."),
            jobs_rejected: counter(
                "jobs_rejected_total",
                "Job submissions refused, by reason.",
                &["reason"],
            ),
            job_attempts: counter(
                "job_attempts_total",
                "Job attempts by how they ended.",
                &["outcome"],
            ),
            job_lease_reclaims: plain_counter(
                "job_lease_reclaims_total",
                "Job leases taken back after they expired (a worker crashed or stalled).",
            ),
            job_duration,
            webhook_deliveries: counter(
                "webhook_deliveries_total",
                "Webhook delivery attempts by outcome: delivered, retried, failed (the last attempt), refused (the outbound policy).",
                &["outcome"],
            ),
            http_requests: counter(
                "http_requests_total",
                "Requests by route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration,
            llm_attempts: counter(
                "llm_attempts_total",
                "LLM HTTP attempts by provider and outcome.",
                &["provider", "outcome"],
            ),
            llm_retries: counter(
                "llm_retries_total",
                "LLM attempts retried, by provider and the reason of the failed attempt.",
                &["provider", "reason"],
            ),
            llm_failures: counter(
                "llm_failures_total",
                "LLM calls that failed for good, by provider and reason.",
                &["provider", "reason"],
            ),
            breaker_state: gauge(
                "llm_breaker_state",
                "Circuit breaker state per provider: 0 closed, 1 open, 2 half-open.",
                &["provider"],
            ),
            breaker_rejections: counter(
                "llm_breaker_rejections_total",
                "Calls refused because a provider's circuit breaker was open.",
                &["provider"],
            ),
            output_rejected: counter(
                "llm_output_rejected_total",
                "Provider outputs that failed validation, by reason.",
                &["reason"],
            ),
            tokens_charged: counter(
                "tokens_charged_total",
                "Tokens charged to budgets, by tenant.",
                &["tenant"],
            ),
            budget_overage: counter(
                "budget_overage_tokens_total",
                "Reported usage beyond a tenant's limit, not charged.",
                &["tenant"],
            ),
            budget_remaining: gauge(
                "budget_remaining_tokens",
                "Tokens left in a tenant's budget after the last commit.",
                &["tenant"],
            ),
            budget_exhausted: counter(
                "budget_exhausted_total",
                "Requests refused because the budget could not cover them.",
                &["tenant"],
            ),
            idempotent_replays,
            rate_limited: counter(
                "rate_limited_total",
                "Requests refused by the per-key rate limit, by key id.",
                &["key"],
            ),
            requests_shed: counter(
                "requests_shed_total",
                "Requests refused 503 overloaded by admission control, by route.",
                &["route"],
            ),
            auth_failures: counter(
                "auth_failures_total",
                "Requests refused by authentication or authorisation, by reason.",
                &["reason"],
            ),
            auth_lockouts: counter(
                "auth_lockouts_total",
                "Client addresses and key ids locked after repeated failed authentications.",
                &["scope"],
            ),
            auth_locked_refusals: counter(
                "auth_locked_refusals_total",
                "Requests refused because their address or key id was locked.",
                &["scope"],
            ),
            auth_lockout_tracked: plain_gauge(
                "auth_lockout_tracked",
                "Addresses and key ids held by the lockout table (bounded by max_tracked).",
            ),
            api_keys_rotation: gauge(
                "api_keys_rotation",
                "API keys due for rotation (state due) and past their rotation interval (state overdue).",
                &["state"],
            ),
            api_key_changes: counter(
                "api_key_changes_total",
                "API keys created, rotated and revoked through the service.",
                &["action"],
            ),
            llm_duration,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format, and a metric
        // family that fails to encode should not take the endpoint down.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn register(registry: &Registry, collector: Box<dyn prometheus::core::Collector>) {
    // Names are constants of this module, registered once per registry, so a
    // failure is a programming error caught by every test.
    if let Err(e) = registry.register(collector) {
        unreachable!("metric registered twice: {e}");
    }
}

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
