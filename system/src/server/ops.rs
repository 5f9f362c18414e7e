//! Operational endpoints (health, metrics), the budget read, and the
//! fallbacks that keep every error in problem+json.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::middleware::forbidden;
use crate::auth::Principal;
use crate::breaker;
use crate::config::Permission;
use crate::problem::Problem;

/// The longest the readiness probe waits for the store: a probe that hangs
/// is a failed probe.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health/live`: 200 while the process serves requests at all.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// One component's health.
struct Component {
    name: String,
    ok: bool,
    message: String,
}

async fn components(state: &AppState) -> Vec<Component> {
    let store = state.store.clone();
    // A read, then writes: a full or read-only disk still answers reads.
    let probe = tokio::time::timeout(
        STORE_PROBE_TIMEOUT,
        store.run(|s| s.probe().and_then(|()| s.probe_writes())),
    )
    .await;
    let (ok, message) = match probe {
        Ok(Ok(())) => (true, "sqlite reads and writes".to_owned()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (
            false,
            format!(
                "sqlite did not answer within {}ms",
                STORE_PROBE_TIMEOUT.as_millis()
            ),
        ),
    };
    let mut out = vec![Component {
        name: "store".to_owned(),
        ok,
        message,
    }];
    for (name, state, retry_after) in state.llm.breakers(Instant::now()) {
        let (ok, message) = match state {
            breaker::State::Closed => (true, "circuit closed".to_owned()),
            breaker::State::HalfOpen => (true, "circuit half-open: probing".to_owned()),
            breaker::State::Open => (
                false,
                format!(
                    "circuit open; next probe in {}ms",
                    retry_after.unwrap_or_default().as_millis()
                ),
            ),
        };
        out.push(Component {
            name: format!("provider:{name}"),
            ok,
            message,
        });
    }
    out
}

fn components_json(components: &[Component]) -> Value {
    components
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                json!({"status": if c.ok { "ok" } else { "failing" }, "message": c.message}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Ready when the store answers and at least one provider's breaker admits
/// calls: with every breaker open, no task can succeed.
fn is_ready(components: &[Component]) -> bool {
    let store_ok = components.iter().any(|c| c.name == "store" && c.ok);
    let provider_ok = components
        .iter()
        .any(|c| c.name.starts_with("provider:") && c.ok);
    store_ok && provider_ok
}

/// `GET /health/ready`: 200 when ready, else 503 naming what fails.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let components = components(&state).await;
    if is_ready(&components) {
        return Json(json!({"status": "ready", "components": components_json(&components)}))
            .into_response();
    }
    let failing: Vec<&str> = components
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    Problem::unavailable(
        "not-ready",
        format!("not ready: {} failing", failing.join(", ")),
    )
    .with("components", components_json(&components))
    .into_response()
}

/// `GET /health`: every component with its status and message. Always 200;
/// the body's `status` is `ok`, `degraded` (something fails but requests can
/// still succeed) or `unhealthy` (not ready).
pub async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let components = components(&state).await;
    let status = if !is_ready(&components) {
        "unhealthy"
    } else if components.iter().all(|c| c.ok) {
        "ok"
    } else {
        "degraded"
    };
    Json(json!({
        "status": status,
        "components": components_json(&components),
        "keys": rotation(&state),
        "degradation": {"level": state.degradation.level().as_str()},
    }))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if !state.config.observability.metrics {
        return Problem::not_found("metrics are disabled (observability.metrics: false)")
            .into_response();
    }
    // Refresh the breaker gauges, which otherwise change only on calls, and
    // the job gauges from the store, which is the truth across restarts.
    state.llm.breakers(Instant::now());
    rotation(&state);
    match tokio::time::timeout(STORE_PROBE_TIMEOUT, state.store.run(|s| s.job_counts())).await {
        Ok(Ok(counts)) => {
            for job_state in crate::store::JobState::ALL {
                let n = i64::try_from(counts.get(job_state)).unwrap_or(i64::MAX);
                state
                    .metrics
                    .jobs
                    .with_label_values(&[job_state.as_str()])
                    .set(n);
            }
            state
                .metrics
                .jobs_queue_depth
                .set(i64::try_from(counts.queued).unwrap_or(i64::MAX));
            state
                .metrics
                .dlq_size
                .set(i64::try_from(counts.dead).unwrap_or(i64::MAX));
        }
        // Stale job gauges are better than no metrics while the store fails.
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot refresh job metrics"),
        Err(_) => tracing::warn!("job metrics: the store did not answer in time"),
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The keys due for rotation, with the `api_keys_rotation` gauges set to
/// match. Due keys are reported, not counted against health: a key due next
/// week is work for an operator, not a reason to take the service out.
fn rotation(state: &AppState) -> crate::auth::RotationReport {
    let report = state.auth.rotation_report(std::time::SystemTime::now());
    for (label, n) in [("due", report.due), ("overdue", report.overdue)] {
        state
            .metrics
            .api_keys_rotation
            .with_label_values(&[label])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    report
}

/// `GET /v1/budgets/{tenant}`: one's own tenant with `budget.read`, any
/// tenant with `budget.read_all`.
pub async fn budget(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, Problem> {
    if tenant != *principal.tenant && !principal.can(Permission::BudgetReadAll) {
        return Err(forbidden(&principal));
    }
    let snapshot = state
        .store
        .run(move |s| s.budget(&tenant))
        .await
        .map_err(super::tasks::store_problem)?;
    Ok(Json(json!({
        "tenant": snapshot.tenant,
        "limit_tokens": snapshot.limit_tokens,
        "used_tokens": snapshot.used_tokens,
        "reserved_tokens": snapshot.reserved_tokens,
        "remaining_tokens": snapshot.remaining_tokens,
    })))
}

/// `GET /v1/roles`: every role with every permission it holds (its own
/// and inherited), its parents and its rate limit; the caller's own role
/// named.
pub async fn roles(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Json<Value> {
    let security = &state.config.security;
    let resolved = crate::roles::resolve(security);
    let roles: serde_json::Map<String, Value> = resolved
        .iter()
        .map(|(name, held)| {
            let inherits = crate::roles::parents(&security.roles, name);
            let limit = crate::roles::rate_limit_of(security, name);
            (
                name.clone(),
                json!({
                    "builtin": crate::roles::builtin_in_force(&security.roles, name).is_some(),
                    "inherits": inherits,
                    "permissions": held.iter().map(|p| p.name()).collect::<Vec<_>>(),
                    "rate_limit": {
                        "requests_per_second": limit.requests_per_second,
                        "burst": limit.burst,
                    },
                }),
            )
        })
        .collect();
    Json(json!({"your_role": &*principal.role, "roles": roles}))
}

/// Any unknown route.
pub async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

/// A known route with the wrong method.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "the route does not accept this method",
    )
}
