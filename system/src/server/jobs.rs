//! The job API: submit, read, list, the dead-letter queue and its replay.
//! Every route is scoped to the caller's tenant; `?tenant=` names another
//! one for a role with the route's `*_all` permission.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::middleware::forbidden;
use super::tasks::{check_prompt, idempotency_key, json_body, store_problem};
use crate::auth::Principal;
use crate::config::Permission;
use crate::problem::Problem;
use crate::store::{IdempotencyClaim, Job, JobState, NewJob, Replay, Submit, now_ms};

/// The longest webhook URL accepted.
const MAX_WEBHOOK_LEN: usize = 2048;
/// Listing size when the request names none.
const DEFAULT_PAGE: u32 = 100;
/// What a client waits before retrying a full queue.
const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    prompt: String,
    max_tokens: Option<u32>,
    webhook: Option<String>,
}

/// `POST /v1/jobs`: answers 202 only once the job is committed.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: JobRequest = json_body(&state, body, &headers).await?;
    let max_tokens = check_prompt(&state, &request.prompt, request.max_tokens)?;
    let webhook = match &request.webhook {
        Some(url) => Some(check_webhook(&state, url)?),
        None => None,
    };
    let key = idempotency_key(&headers)?;
    let fingerprint = fingerprint(&request.prompt, max_tokens, webhook.as_deref());
    let jobs = &state.config.jobs;
    // From level 2 jobs may fill only half the queue.
    let level = state.degradation.level();
    let queue_capacity = crate::degradation::job_capacity(level, jobs.queue_capacity);
    let job = NewJob {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: principal.tenant.to_string(),
        actor: principal.key_id.to_string(),
        idempotency: key.map(|key| IdempotencyClaim { key, fingerprint }),
        prompt: request.prompt,
        max_tokens,
        webhook,
        max_attempts: jobs.max_attempts,
        queue_capacity,
    };
    let submitted = state
        .store
        .run(move |s| s.submit_job(&job, now_ms()))
        .await
        .map_err(store_problem)?;
    match submitted {
        Submit::Accepted { id } => {
            state.metrics.jobs_submitted.inc();
            state.job_wake.notify_one();
            Ok(accepted(&id, JobState::Queued, false))
        }
        Submit::Existing {
            id,
            state: job_state,
        } => {
            state.metrics.idempotent_replays.inc();
            Ok(accepted(&id, job_state, true))
        }
        Submit::FingerprintMismatch => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used for a different job",
        )),
        // Full only for the level: refused as degraded, not as a full queue.
        Submit::QueueFull { depth, .. } if depth < u64::from(state.config.jobs.queue_capacity) => {
            Err(super::degradation::refusal(
                &state,
                level,
                crate::degradation::Work::Job,
            ))
        }
        Submit::QueueFull { depth, capacity } => Err(queue_full(&state, depth, capacity)),
    }
}

/// 503 for a full queue (a submission or a replay), counted.
fn queue_full(state: &AppState, depth: u64, capacity: u32) -> Problem {
    state
        .metrics
        .jobs_rejected
        .with_label_values(&["queue_full"])
        .inc();
    Problem::unavailable(
        "queue-full",
        format!(
            "the job queue is full ({depth} of {capacity} jobs queued or running); retry later"
        ),
    )
    .retry_after(QUEUE_FULL_RETRY_AFTER)
    .with("queue_depth", depth)
    .with("queue_capacity", capacity)
}

/// 202 `{"id", "state"}` with the job's location.
fn accepted(id: &str, job_state: JobState, replayed: bool) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": job_state})),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// A webhook must be an `http(s)` URL admitted by the outbound policy (an
/// entry of `security.outbound_url_allowlist` by scheme, host, port and path
/// prefix, and no credentials); with no entry, no webhook is accepted. Where
/// it resolves is checked at delivery, connection by connection.
fn check_webhook(state: &AppState, text: &str) -> Result<String, Problem> {
    let invalid = |message: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook-not-allowed",
            "Webhook not allowed",
            message,
        )
        .with("field", "webhook")
    };
    if text.len() > MAX_WEBHOOK_LEN {
        return Err(invalid(format!(
            "webhook: {} bytes is over the limit of {MAX_WEBHOOK_LEN}",
            text.len()
        )));
    }
    let url =
        url::Url::parse(text).map_err(|e| invalid(format!("webhook: not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "webhook: scheme {} is not http or https",
            url.scheme()
        )));
    }
    state
        .outbound
        .admit(&url)
        .and_then(|()| state.outbound.check_literal(&url))
        .map_err(|r| invalid(format!("webhook: {r}")))?;
    Ok(url.to_string())
}

/// What makes two submissions "the same" for idempotency.
fn fingerprint(prompt: &str, max_tokens: u32, webhook: Option<&str>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"job");
    h.update((prompt.len() as u64).to_be_bytes());
    h.update(prompt.as_bytes());
    h.update(max_tokens.to_be_bytes());
    if let Some(webhook) = webhook {
        h.update([1]);
        h.update(webhook.as_bytes());
    } else {
        h.update([0]);
    }
    h.finalize().into()
}

/// A job as the API shows it.
fn job_json(job: &Job) -> Value {
    let output = job
        .output
        .as_deref()
        .map(|o| serde_json::from_str(o).unwrap_or_else(|_| Value::String(o.to_owned())));
    json!({
        "id": job.id,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "output": output,
        "charged_tokens": job.charged_tokens,
        "idempotency_key": job.idempotency_key,
        "webhook": job.webhook,
        "created_at": rfc3339(Some(job.created_ms)),
        "updated_at": rfc3339(Some(job.updated_ms)),
        "finished_at": rfc3339(job.finished_ms),
    })
}

fn rfc3339(ms: Option<i64>) -> Value {
    match ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => Value::String(
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string(),
        ),
        None => Value::Null,
    }
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    q: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let tenant = acting_tenant(&principal, query(q)?.tenant, Permission::JobsReadAll)?;
    let found = state
        .store
        .run(move |s| {
            let Some(job) = s.job(&tenant, &id)? else {
                return Ok(None);
            };
            let deliveries = if job.webhook.is_some() {
                s.job_deliveries(&job.id)?
            } else {
                Vec::new()
            };
            Ok(Some((job, deliveries)))
        })
        .await
        .map_err(store_problem)?;
    match found {
        Some((job, deliveries)) => {
            let mut body = job_json(&job);
            // A job with a webhook shows where its deliveries are, newest
            // first: what a client checks when a notification did not come.
            if job.webhook.is_some() {
                body["deliveries"] = json!(deliveries);
            }
            Ok(Json(body))
        }
        None => Err(Problem::not_found("no such job")),
    }
}

/// The query of the listings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
    tenant: Option<String>,
}

/// The tenant a request acts on: the caller's own, or the one `asked`
/// names when the caller's role grants `all`.
pub(super) fn acting_tenant(
    principal: &Principal,
    asked: Option<String>,
    all: Permission,
) -> Result<String, Problem> {
    match asked {
        Some(tenant) if tenant != *principal.tenant => {
            if principal.can(all) {
                Ok(tenant)
            } else {
                Err(Problem {
                    detail: format!(
                        "role {} does not grant {} for another tenant",
                        principal.role,
                        all.name()
                    ),
                    ..forbidden(principal)
                })
            }
        }
        _ => Ok(principal.tenant.to_string()),
    }
}

/// The query of the routes on one job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant: Option<String>,
}

pub(super) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    query
        .map(|Query(q)| q)
        .map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))
}

/// `GET /v1/jobs?state=&limit=`: the tenant's job ids (oldest first), its
/// counts by state, and its webhook deliveries still pending.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let q = query(q)?;
    let filter = match q.state.as_deref() {
        None => None,
        Some(name) => Some(JobState::parse(name).ok_or_else(|| {
            Problem::bad_request(format!(
                "state: unknown state {name:?}, expected queued, running, succeeded or dead"
            ))
            .with("field", "state")
        })?),
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let tenant = acting_tenant(&principal, q.tenant, Permission::JobsReadAll)?;
    let (ids, counts, pending) = state
        .store
        .run(move |s| {
            let (ids, counts) = s.list_jobs(&tenant, filter, limit)?;
            Ok((ids, counts, s.pending_deliveries(&tenant)?))
        })
        .await
        .map_err(store_problem)?;
    Ok(Json(
        json!({"ids": ids, "counts": counts, "webhooks": {"pending": pending}}),
    ))
}

/// The query of `GET /v1/dlq`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    limit: Option<u32>,
    tenant: Option<String>,
}

/// `GET /v1/dlq?limit=`: the tenant's dead jobs, oldest death first.
pub async fn dlq(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    q: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let tenant = acting_tenant(&principal, q.tenant, Permission::DlqReadAll)?;
    let jobs = state
        .store
        .run(move |s| s.dead_jobs(&tenant, limit))
        .await
        .map_err(store_problem)?;
    let jobs: Vec<Value> = jobs.iter().map(job_json).collect();
    Ok(Json(json!({"jobs": jobs})))
}

/// `POST /v1/dlq/{id}/replay`: a dead job back to `queued`, attempts reset.
pub async fn replay(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    q: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let tenant = acting_tenant(&principal, query(q)?.tenant, Permission::DlqReplayAll)?;
    let actor = principal.key_id.to_string();
    let capacity = state.config.jobs.queue_capacity;
    let job_id = id.clone();
    let outcome = state
        .store
        .run(move |s| s.replay_job(&tenant, &job_id, &actor, capacity, now_ms()))
        .await
        .map_err(store_problem)?;
    match outcome {
        Replay::Replayed => {
            state.job_wake.notify_one();
            Ok(accepted(&id, JobState::Queued, false))
        }
        Replay::NotFound => Err(Problem::not_found("no such job")),
        Replay::NotDead(job_state) => Err(Problem::new(
            StatusCode::CONFLICT,
            "job-not-dead",
            "Job not in the dead-letter queue",
            format!("job {id} is {job_state}; only dead jobs can be replayed"),
        )
        .with("state", job_state.as_str())),
        Replay::QueueFull { depth, capacity } => Err(queue_full(&state, depth, capacity)),
    }
}
