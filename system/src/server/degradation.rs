//! Degradation levels, wired: the sampler that reads the health signals and
//! moves the level ([`crate::degradation`] has the rules), the request
//! accounting behind the error-rate signal, and the middleware that refuses
//! what the level sheds with 503 `degraded` and `Retry-After`.
//!
//! Every transition is audited (`degradation.changed`, with the moment it
//! happened). A transition made while the store fails cannot be written at
//! once, so it waits in a bounded queue and is written, in order, as soon
//! as the store takes writes again: a store outage is exactly when the level
//! moves.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::audit::NewEntry;
use crate::config::DegradationConfig;
use crate::degradation::{
    self, ErrorWindow, Hysteresis, Level, LevelState, Signals, Thresholds, Work,
};
use crate::problem::{Problem, ProblemKind};
use crate::store::SYSTEM_ACTOR;

/// The fastest and slowest the sampler ticks: a quarter of `enter_after`
/// within these bounds, so a level is entered at most a quarter late.
const TICK_MIN: Duration = Duration::from_millis(50);
const TICK_MAX: Duration = Duration::from_millis(500);
/// The longest a store probe may take before it counts as failed.
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(5);
/// Transitions kept for the audit log while the store refuses writes. Past
/// this the oldest is dropped and logged: the level moves at most once per
/// `enter_after`, so this is minutes of outage.
const UNAUDITED_LIMIT: usize = 256;

/// Problem kinds that are the service shedding load, not failing: they do
/// not count as errors, or the level would hold itself up.
const SHED_KINDS: [&str; 3] = ["overloaded", "degraded", "queue-full"];

/// The service's degradation level and what feeds it.
pub struct Degradation {
    started: Instant,
    level: AtomicUsize,
    hysteresis: Hysteresis,
    thresholds: Thresholds,
    /// Retry-After of a degraded refusal: the level cannot fall sooner.
    retry_after: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    state: LevelState,
    errors: ErrorWindow,
    unaudited: VecDeque<Value>,
}

impl Degradation {
    /// Normal, from `degradation` config.
    pub fn new(config: &DegradationConfig) -> Degradation {
        Degradation {
            started: Instant::now(),
            level: AtomicUsize::new(Level::Normal.index()),
            hysteresis: Hysteresis {
                enter_after: config.enter_after,
                leave_after: config.leave_after,
            },
            thresholds: Thresholds {
                degraded_error_rate: config.degraded_error_rate,
                unhealthy_error_rate: config.unhealthy_error_rate,
                slow_store_ms: u64::try_from(config.slow_store.as_millis()).unwrap_or(u64::MAX),
            },
            retry_after: config.leave_after,
            inner: Mutex::new(Inner {
                state: LevelState::new(),
                errors: ErrorWindow::new(config.window),
                unaudited: VecDeque::new(),
            }),
        }
    }

    /// The current level.
    pub fn level(&self) -> Level {
        Level::ALL[self.level.load(Ordering::Relaxed).min(Level::ALL.len() - 1)]
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one answered request toward the error rate.
    pub fn record(&self, failed: bool) {
        let now = self.now_ms();
        self.lock().errors.record(now, failed);
    }

    fn error_rate(&self) -> f64 {
        let now = self.now_ms();
        self.lock().errors.rate(now)
    }

    /// Observes the signals' level; on a change, publishes the new level and
    /// queues its audit entry.
    fn observe(&self, signals: &Signals) -> Option<(Level, Level)> {
        let target = degradation::target(signals, &self.thresholds);
        let now = self.now_ms();
        let mut inner = self.lock();
        let t = inner.state.observe(target, now, &self.hysteresis)?;
        self.level.store(t.to.index(), Ordering::Relaxed);
        if inner.unaudited.len() >= UNAUDITED_LIMIT {
            inner.unaudited.pop_front();
            tracing::error!("a degradation transition could not be audited and was dropped");
        }
        inner.unaudited.push_back(json!({
            "from": t.from.as_str(),
            "to": t.to.as_str(),
            "target": target.as_str(),
            "at_ms": crate::store::now_ms(),
            "signals": {
                "error_rate": signals.error_rate,
                "open_breakers": signals.open_breakers,
                "providers": signals.providers,
                "queue_depth": signals.queue_depth,
                "queue_capacity": signals.queue_capacity,
                "store_latency_ms": signals.store_latency_ms,
            },
        }));
        Some((t.from, t.to))
    }
}

/// Whether a response counts as a failure for the error rate: a 5xx that is
/// not the service shedding load.
pub fn is_failure(response: &Response) -> bool {
    let shed = response
        .extensions()
        .get::<ProblemKind>()
        .is_some_and(|k| SHED_KINDS.contains(&k.0));
    response.status().is_server_error() && !shed
}

/// Whether requests on `route` count toward the error rate: probes and
/// scrapes say nothing about whether work succeeds.
pub fn counts(route: &str) -> bool {
    !(route.starts_with("/health") || route == "/metrics")
}

/// Samples the signals every tick and moves the level, until dropped.
pub async fn sampler(state: Arc<AppState>) {
    let tick = (state.config.degradation.enter_after / 4).clamp(TICK_MIN, TICK_MAX);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let signals = signals(&state).await;
        if let Some((from, to)) = state.degradation.observe(&signals) {
            state
                .metrics
                .degradation_level
                .set(i64::try_from(to.index()).unwrap_or(0));
            tracing::warn!(
                from = from.as_str(),
                to = to.as_str(),
                error_rate = signals.error_rate,
                open_breakers = signals.open_breakers,
                queue_depth = signals.queue_depth,
                store_latency_ms = signals.store_latency_ms,
                "degradation level changed"
            );
        }
        audit_transitions(&state).await;
    }
}

async fn signals(state: &AppState) -> Signals {
    let config = &state.config;
    let probe_timeout = config
        .degradation
        .slow_store
        .saturating_mul(2)
        .min(PROBE_TIMEOUT_MAX);
    let started = Instant::now();
    // A read, then writes (the readiness probe's pair), then the queue depth.
    let probe = tokio::time::timeout(
        probe_timeout,
        state.store.run(|s| {
            s.probe()?;
            s.probe_writes()?;
            s.job_counts()
        }),
    )
    .await;
    let (store_latency_ms, queue_depth) = match probe {
        Ok(Ok(counts)) => (
            Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
            counts.queued.saturating_add(counts.running),
        ),
        _ => (None, 0),
    };
    let breakers = state.llm.breakers(Instant::now());
    let open = breakers
        .iter()
        .filter(|(_, s, _)| *s == crate::breaker::State::Open)
        .count();
    Signals {
        error_rate: state.degradation.error_rate(),
        open_breakers: u32::try_from(open).unwrap_or(u32::MAX),
        providers: u32::try_from(breakers.len()).unwrap_or(u32::MAX),
        queue_depth,
        queue_capacity: u64::from(config.jobs.queue_capacity),
        store_latency_ms,
    }
}

/// Writes the queued transitions, oldest first, stopping at the first the
/// store refuses (it is tried again next tick).
async fn audit_transitions(state: &Arc<AppState>) {
    loop {
        let Some(details) = state.degradation.lock().unaudited.front().cloned() else {
            return;
        };
        let entry = NewEntry::new(SYSTEM_ACTOR, "degradation.changed", "orchestrator", details);
        match state.store.run(move |s| s.record_audit(entry)).await {
            Ok(_) => {
                state.degradation.lock().unaudited.pop_front();
            }
            Err(e) => {
                tracing::debug!(error = %e, "degradation transition not audited yet");
                return;
            }
        }
    }
}

/// What a request asks of the service.
fn work(method: &Method, route: &str) -> Work {
    match (method, route) {
        (&Method::GET | &Method::HEAD, _) => Work::Read,
        (&Method::POST, "/v1/tasks") => Work::Task,
        (&Method::POST, "/v1/jobs") => Work::Job,
        _ => Work::Write,
    }
}

fn work_name(work: Work) -> &'static str {
    match work {
        Work::Task => "task",
        Work::Job => "job",
        Work::Write => "write",
        Work::Read => "read",
    }
}

/// The refusal of `work` at `level`, counted.
pub fn refusal(state: &AppState, level: Level, work: Work) -> Problem {
    let name = work_name(work);
    state
        .metrics
        .degradation_shed
        .with_label_values(&[name])
        .inc();
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "degraded",
        "Degraded",
        format!(
            "the service is at degradation level {}, which refuses new {name} requests; retry later",
            level.as_str()
        ),
    )
    .retry_after(state.degradation.retry_after)
    .with("level", level.as_str())
}

/// Refuses what the current level sheds, before the handler reads the body.
pub async fn shed(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let level = state.degradation.level();
    if level > Level::Normal {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("", MatchedPath::as_str);
        let work = work(req.method(), route);
        if degradation::sheds(level, work) {
            return refusal(&state, level, work).into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classed_by_method_and_route() {
        let cases = [
            (Method::POST, "/v1/tasks", Work::Task),
            (Method::POST, "/v1/jobs", Work::Job),
            (Method::GET, "/v1/jobs", Work::Read),
            (Method::GET, "/v1/jobs/{id}", Work::Read),
            (Method::POST, "/v1/dlq/{id}/replay", Work::Write),
            (Method::DELETE, "/v1/keys/{id}", Work::Write),
            (Method::HEAD, "/v1/audit", Work::Read),
        ];
        for (method, route, expected) in cases {
            assert_eq!(work(&method, route), expected, "{method} {route}");
        }
    }

    #[test]
    fn shed_answers_are_not_failures_and_other_server_errors_are() {
        let degraded = Problem::unavailable("degraded", "x").into_response();
        let overloaded = Problem::unavailable("overloaded", "x").into_response();
        let provider = Problem::unavailable("provider-unavailable", "x").into_response();
        let internal = Problem::internal().into_response();
        let bad = Problem::bad_request("x").into_response();
        assert!(!is_failure(&degraded));
        assert!(!is_failure(&overloaded));
        assert!(is_failure(&provider));
        assert!(is_failure(&internal));
        assert!(!is_failure(&bad));
        assert!(!counts("/health/ready") && !counts("/metrics") && counts("/v1/tasks"));
    }
}
