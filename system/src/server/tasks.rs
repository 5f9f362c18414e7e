//! `POST /v1/tasks`: body checks, idempotency, budget reservation, the LLM
//! call, output validation, the charge and the stored response.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;
use super::middleware::RequestId;
use crate::auth::Principal;
use crate::llm::{self, AttemptError, ChatRequest, LlmError, Usage};
use crate::plan;
use crate::problem::{self, Problem};
use crate::store::{
    Begin, BeginTask, Charge, FinishTask, IdempotencyClaim, ReservationId, Store, StoreError,
    StoredResponse,
};

/// `max_tokens` when the request leaves it out.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
/// The largest `max_tokens` a request may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 100_000;
/// The longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequest {
    prompt: String,
    max_tokens: Option<u32>,
}

/// `POST /v1/tasks`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: TaskRequest = json_body(&state, body, &headers).await?;
    let max_tokens = check_prompt(&state, &request.prompt, request.max_tokens)?;
    let key = idempotency_key(&headers)?;
    let task_id = uuid::Uuid::now_v7().to_string();
    let reserve_tokens = reserve_tokens(&request.prompt, max_tokens);
    let begin = BeginTask {
        tenant: principal.tenant.to_string(),
        task_id: task_id.clone(),
        idempotency: key.map(|key| IdempotencyClaim {
            fingerprint: fingerprint(&request.prompt, max_tokens),
            key,
        }),
        reserve_tokens,
    };
    let begin = state
        .store
        .run(move |s| s.begin_task(&begin))
        .await
        .map_err(store_problem)?;
    let reservation = match begin {
        Begin::Started { reservation } => reservation,
        Begin::Replay { status, body } => {
            state.metrics.idempotent_replays.inc();
            let mut response = stored_response(status, body);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        Begin::InFlight => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "idempotency-in-flight",
                "Request in progress",
                "a request with this Idempotency-Key is still in progress; retry after it completes",
            )
            .retry_after(Duration::from_secs(1)));
        }
        Begin::FingerprintMismatch => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
                "this Idempotency-Key was used for a different request",
            ));
        }
        Begin::InsufficientBudget {
            limit,
            used,
            reserved,
            requested,
        } => {
            state
                .metrics
                .budget_exhausted
                .with_label_values(&[&principal.tenant])
                .inc();
            return Err(Problem::new(
                StatusCode::PAYMENT_REQUIRED,
                "budget-exhausted",
                "Budget exhausted",
                format!(
                    "tenant {} cannot reserve {requested} tokens: limit {limit}, used {used}, reserved {reserved}",
                    principal.tenant
                ),
            )
            .with("limit_tokens", limit)
            .with("used_tokens", used)
            .with("reserved_tokens", reserved)
            .with("requested_tokens", requested));
        }
    };
    // From here on, every way out of this function (an error, a timeout that
    // drops this future, a client that disconnects, a panic) releases the
    // reservation, unless `finish` commits it first.
    let guard = ReservationGuard::new(state.store.clone(), reservation);
    let executed = execute(&state, &request.prompt, max_tokens, &request_id, &task_id)
        .await
        .map_err(llm_problem)?;
    let usage = executed.usage;
    let (status, body) = match executed.output {
        Ok(output) => (
            StatusCode::OK,
            json!({"id": task_id, "output": output, "usage": usage}),
        ),
        Err(e) => {
            let problem = Problem::new(
                StatusCode::BAD_GATEWAY,
                "llm-output-invalid",
                "Invalid model output",
                format!("the model's output was rejected: {e}"),
            )
            .with("reason", e.reason())
            .with("id", task_id.as_str())
            .with("usage", serde_json::to_value(usage).unwrap_or_default());
            (StatusCode::BAD_GATEWAY, problem.body())
        }
    };
    let body = body.to_string().into_bytes();
    let charge = guard
        .finish(
            usage.total_tokens,
            &principal.key_id,
            Some(StoredResponse {
                status: status.as_u16(),
                body: body.clone(),
            }),
        )
        .await
        .map_err(store_problem)?;
    record_charge(&state, &principal.tenant, &charge);
    Ok(stored_response(status.as_u16(), body))
}

/// Checks a prompt and `max_tokens` (tasks and jobs alike) and returns the
/// effective `max_tokens`.
pub(super) fn check_prompt(
    state: &AppState,
    prompt: &str,
    max_tokens: Option<u32>,
) -> Result<u32, Problem> {
    if prompt.trim().is_empty() {
        return Err(Problem::bad_request("prompt: must not be empty").with("field", "prompt"));
    }
    let max_prompt = state.config.tasks.max_prompt_bytes;
    if prompt.len() as u64 > max_prompt {
        return Err(Problem::too_large(format!(
            "prompt: {} bytes is over the limit of {max_prompt} bytes",
            prompt.len()
        ))
        .with("field", "prompt"));
    }
    let max_tokens = max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if !(1..=MAX_TOKENS_LIMIT).contains(&max_tokens) {
        return Err(Problem::bad_request(format!(
            "max_tokens: {max_tokens} is out of range, expected 1 to {MAX_TOKENS_LIMIT}"
        ))
        .with("field", "max_tokens"));
    }
    Ok(max_tokens)
}

/// Tokens to reserve for a prompt: `max_tokens` plus an upper bound on the
/// prompt's own tokens.
pub(super) fn reserve_tokens(prompt: &str, max_tokens: u32) -> u64 {
    u64::from(max_tokens) + prompt_token_bound(prompt)
}

/// What the model produced: its output, validated or rejected, and the usage
/// to charge either way.
pub(super) struct Executed {
    /// The validated action plan, or why it was rejected.
    pub output: Result<plan::ActionPlan, plan::PlanError>,
    /// The provider's reported usage, or the reservation when it reported none.
    pub usage: Usage,
}

/// The part of a task that tasks and jobs share: the LLM call (providers,
/// breakers, retries) and the validation of its output.
pub(super) async fn execute(
    state: &AppState,
    prompt: &str,
    max_tokens: u32,
    request_id: &str,
    idempotency_key: &str,
) -> Result<Executed, LlmError> {
    let completion = state
        .llm
        .complete(&ChatRequest {
            prompt,
            max_tokens,
            tools: &state.config.tasks.allowed_tools,
            request_id,
            idempotency_key,
        })
        .await?;
    // The provider did the work, so its reported usage is charged whether
    // or not the output is usable. Without a report, the reservation is.
    let usage = completion.usage.unwrap_or(Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: reserve_tokens(prompt, max_tokens),
    });
    let output = plan::validate(&completion.content, &state.plan);
    if let Err(e) = &output {
        state
            .metrics
            .output_rejected
            .with_label_values(&[e.reason()])
            .inc();
        tracing::warn!(reason = e.reason(), error = %e, "llm output rejected");
    }
    Ok(Executed { output, usage })
}

/// Updates the budget metrics after a committed charge.
pub(super) fn record_charge(state: &AppState, tenant: &str, charge: &Charge) {
    state
        .metrics
        .tokens_charged
        .with_label_values(&[tenant])
        .inc_by(charge.charged);
    if charge.overage > 0 {
        state
            .metrics
            .budget_overage
            .with_label_values(&[tenant])
            .inc_by(charge.overage);
        tracing::warn!(
            tenant,
            overage = charge.overage,
            "usage beyond the budget limit"
        );
    }
    state
        .metrics
        .budget_remaining
        .with_label_values(&[tenant])
        .set(i64::try_from(charge.remaining).unwrap_or(i64::MAX));
}

/// A response as stored for idempotent replay: success bodies are JSON, the
/// rest are problem details.
fn stored_response(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        problem::CONTENT_TYPE
    };
    let mut response = (status, Bytes::from(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Reads the body within `server.body_limit` and parses it as JSON, naming
/// the line and column of a syntax error or unknown field.
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
    headers: &HeaderMap,
) -> Result<T, Problem> {
    let bytes = read_body(body, headers, state.config.server.body_limit_bytes).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Problem::bad_request(format!(
            "invalid request body at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

/// Reads the body, refusing more than `limit` bytes: at once when
/// `Content-Length` says so, else as soon as the stream passes it.
pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::too_large(format!(
            "the request body is over the limit of {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // `to_bytes` reports the limit as a `LengthLimitError` source; any
        // other failure is the client's connection breaking mid-body.
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = s.source();
        }
        Problem::bad_request(format!("cannot read the request body: {e}"))
    })
}

/// The `Idempotency-Key` header: absent, or 1 to 128 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = || {
        Problem::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters, sent once"
        ))
        .with("field", "Idempotency-Key")
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !bytes.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// What makes two requests "the same" for idempotency: the prompt and the
/// effective `max_tokens` (so leaving it out equals sending the default).
fn fingerprint(prompt: &str, max_tokens: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((prompt.len() as u64).to_be_bytes());
    h.update(prompt.as_bytes());
    h.update(max_tokens.to_be_bytes());
    h.finalize().into()
}

/// An upper bound on the prompt's tokens: no tokenizer in use emits more
/// tokens than UTF-8 bytes, plus the system prompt and per-message framing.
/// Reserving this bound is what keeps the budget from being overdrawn.
fn prompt_token_bound(prompt: &str) -> u64 {
    const FRAMING_TOKENS: u64 = 16;
    (prompt.len() + llm::SYSTEM_PROMPT.len()) as u64 + FRAMING_TOKENS
}

/// Releases a reservation when dropped, unless it was settled: every way out
/// of a handler or a job attempt (an error, a timeout that drops the future, a
/// client that disconnects, a panic) gives the tokens back.
pub(super) struct ReservationGuard {
    store: Store,
    reservation: Option<ReservationId>,
}

impl ReservationGuard {
    /// Guards `reservation`.
    pub(super) fn new(store: Store, reservation: ReservationId) -> ReservationGuard {
        ReservationGuard {
            store,
            reservation: Some(reservation),
        }
    }

    /// Commits the charge and stores the response under the task's key, in
    /// one transaction.
    async fn finish(
        self,
        charge_tokens: u64,
        actor: &str,
        response: Option<StoredResponse>,
    ) -> Result<Charge, StoreError> {
        let actor = actor.to_owned();
        self.settle(move |s, reservation| {
            s.finish_task(&FinishTask {
                reservation,
                charge_tokens,
                actor,
                response,
            })
        })
        .await
    }

    /// Runs `work`, which settles the reservation in a store transaction of
    /// its own (a charge, or a release together with another change). If that
    /// transaction fails, the reservation is still held, and the guard releases
    /// it rather than leave it to the next restart.
    pub(super) async fn settle<T, F>(mut self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Store, ReservationId) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let Some(reservation) = self.reservation else {
            return Err(StoreError::Task {
                store: self.store.describe(),
                message: "reservation already settled".to_owned(),
            });
        };
        let result = self.store.run(move |s| work(s, reservation)).await;
        if result.is_ok() {
            self.reservation = None;
        }
        result
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let store = self.store.clone();
        let release = move || {
            if let Err(e) = store.release_or_retry_later(reservation) {
                tracing::error!(error = %e, %reservation, "cannot release a reservation; retrying later");
            }
        };
        // Drop cannot await, and SQLite blocks: hand the release to the
        // blocking pool. Outside a runtime (shutdown), do it here.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

/// A store failure as a response: busy means try again, the rest is ours.
pub fn store_problem(e: StoreError) -> Problem {
    tracing::error!(error = %e, "store failure");
    if let StoreError::Unsupported { operation, .. } = &e {
        Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "not-on-this-store",
            "Not available on this store",
            format!("{operation} is not available on the configured store yet"),
        )
    } else if matches!(e, StoreError::Busy { .. } | StoreError::Contended { .. }) {
        Problem::unavailable("store-busy", "the store is busy; retry shortly")
            .retry_after(Duration::from_secs(1))
    } else {
        Problem::unavailable("store-unavailable", "the store failed; retry later")
            .retry_after(Duration::from_secs(5))
    }
}

/// An LLM failure as a response.
pub(super) fn llm_problem(e: LlmError) -> Problem {
    tracing::warn!(error = %e, "llm call failed");
    let detail = e.client_detail();
    match e {
        LlmError::Unavailable { retry_after } => {
            Problem::unavailable("llm-circuit-open", detail).retry_after(retry_after)
        }
        LlmError::Exhausted {
            attempts,
            last:
                AttemptError::Status {
                    retry_after: Some(wait),
                    ..
                },
            ..
        } => Problem::unavailable("llm-overloaded", detail)
            .retry_after(wait)
            .with("attempts", attempts),
        LlmError::Exhausted { attempts, .. } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "llm-failed",
            "LLM provider failed",
            detail,
        )
        .with("attempts", attempts),
        LlmError::Deadline { attempts, .. } => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "llm-timeout",
            "LLM provider timed out",
            detail,
        )
        .with("attempts", attempts),
        LlmError::Rejected { status, .. } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "llm-rejected",
            "LLM provider refused the request",
            detail,
        )
        .with("upstream_status", status),
        LlmError::BadResponse { .. } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "llm-bad-response",
            "LLM provider sent an unusable response",
            detail,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BudgetConfig;
    use crate::store::StoreOptions;

    fn store(name: &str) -> Store {
        let dir =
            std::env::temp_dir().join(format!("orchestrator-guard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let budgets = BudgetConfig {
            default_limit_tokens: 1000,
            tenants: Default::default(),
        };
        Store::open(&dir.join("o.db"), &StoreOptions::new(budgets)).unwrap()
    }

    fn begin(store: &Store, key: &str) -> ReservationId {
        let begin = store
            .begin_task(&BeginTask {
                tenant: "t".into(),
                task_id: key.into(),
                idempotency: Some(IdempotencyClaim {
                    key: key.into(),
                    fingerprint: [0; 32],
                }),
                reserve_tokens: 100,
            })
            .unwrap();
        match begin {
            Begin::Started { reservation } => reservation,
            other => panic!("expected a fresh start, got {other:?}"),
        }
    }

    async fn released(store: &Store) {
        for _ in 0..500 {
            if store.budget("t").unwrap().reserved_tokens == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the reservation was not released within 5 s");
    }

    #[tokio::test]
    async fn a_panicking_handler_releases_its_reservation_and_key() {
        let store = store("panic");
        let reservation = begin(&store, "k");
        let guard = ReservationGuard::new(store.clone(), reservation);
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("handler bug");
        });
        assert!(task.await.unwrap_err().is_panic());
        released(&store).await;
        // The key was released too: the same key starts afresh.
        begin(&store, "k");
    }

    #[tokio::test]
    async fn a_cancelled_handler_releases_its_reservation() {
        let store = store("cancel");
        let guard = ReservationGuard::new(store.clone(), begin(&store, "k"));
        let task = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        released(&store).await;
    }

    #[tokio::test]
    async fn a_finished_reservation_is_charged_once_and_not_released() {
        let store = store("finish");
        let guard = ReservationGuard::new(store.clone(), begin(&store, "k"));
        let response = StoredResponse {
            status: 200,
            body: b"{}".to_vec(),
        };
        let charge = guard.finish(42, "dev", Some(response)).await.unwrap();
        assert_eq!(charge.charged, 42);
        let budget = store.budget("t").unwrap();
        assert_eq!((budget.used_tokens, budget.reserved_tokens), (42, 0));
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_128() {
        let check = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert("idempotency-key", HeaderValue::from_str(value).unwrap());
            idempotency_key(&h).is_ok()
        };
        assert!(check("a"));
        assert!(check(&"k".repeat(128)));
        assert!(!check(&"k".repeat(129)));
        assert!(!check(""));
        assert!(!check("has space"));
        assert!(!check("tab\tinside"));
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
    }
}
