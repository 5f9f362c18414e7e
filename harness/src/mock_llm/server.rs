//! The HTTP side: routes, the shared state, and the listener that caps
//! connections.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::Limits;
use super::answer::{self, Call, Framing, MODEL_ID, Rendered, Stall, Wait};
use super::content::{plan_for_digest, prompt_digest};
use super::journal::{CallRecord, CallsPage, Journal, header_text};
use super::program::{Program, ProgramError};
use super::request::{self, ApiError};

/// State shared by every request.
pub(crate) struct Shared {
    pub seed: u64,
    pub limits: Limits,
    state: Mutex<Mutable>,
    /// Becomes `true` when the mock shuts down; waits end early then.
    stop: watch::Receiver<bool>,
}

/// What a reset clears.
struct Mutable {
    /// The last sequence number handed out.
    seq: u64,
    program: Program,
    /// How often each rule of `program` has applied.
    applied: Vec<u64>,
    journal: Journal,
}

impl Mutable {
    fn new(limits: &Limits) -> Mutable {
        Mutable {
            seq: 0,
            program: Program::default(),
            applied: Vec::new(),
            journal: Journal::new(limits.max_journal_records),
        }
    }
}

impl Shared {
    pub fn new(seed: u64, limits: Limits, stop: watch::Receiver<bool>) -> Shared {
        Shared {
            seed,
            state: Mutex::new(Mutable::new(&limits)),
            limits,
            stop,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Mutable> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and installs `program`, restarting its `times` counts.
    pub fn install(&self, program: Program) -> Result<(), ProgramError> {
        program.validate(&self.limits)?;
        let mut state = self.lock();
        state.applied = vec![0; program.rules.len()];
        state.program = program;
        Ok(())
    }

    pub fn program(&self) -> Program {
        self.lock().program.clone()
    }

    pub fn page(&self, after_seq: u64, limit: usize) -> CallsPage {
        self.lock().journal.page(after_seq, limit)
    }

    pub fn reset(&self) {
        *self.lock() = Mutable::new(&self.limits);
    }

    /// Numbers the call, picks its rule, renders the answer and journals it,
    /// all under one lock: sequence numbers, `times` counts and the journal's
    /// order then agree however requests interleave.
    fn decide(&self, call: Incoming) -> Result<answer::Reply, ApiError> {
        let mut guard = self.lock();
        let Mutable {
            seq,
            program,
            applied,
            journal,
        } = &mut *guard;
        *seq += 1;
        let seq = *seq;
        // A call without the header is a first attempt.
        let attempt = call.attempt.unwrap_or(1);
        let mut record = CallRecord {
            seq,
            received_unix_ms: call.received_unix_ms,
            request_id: call.request_id,
            attempt: call.attempt,
            idempotency_key: call.idempotency_key,
            authorization: call.authorization,
            model: None,
            prompt_sha256: None,
            stream: false,
            rule_index: None,
            rule_name: None,
            effect: None,
            status: 0,
            retry_after: None,
            usage: None,
            error: None,
        };
        let Parsed {
            request,
            digest,
            plan,
        } = match call.parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                record.status = error.status.as_u16();
                record.error = Some(error.message.clone());
                journal.push(record);
                return Err(error);
            }
        };
        record.model = Some(header_text(request.model.as_bytes()));
        record.prompt_sha256 = Some(hex::encode(digest));
        record.stream = request.stream;
        let rule_index = program.rules.iter().enumerate().position(|(i, rule)| {
            let left = rule
                .times
                .is_none_or(|times| applied.get(i).is_some_and(|n| *n < times));
            left && rule
                .when
                .matches(seq, &request.prompt, attempt, self.seed, i)
        });
        let rule = rule_index.and_then(|i| program.rules.get(i));
        if let Some(count) = rule_index.and_then(|i| applied.get_mut(i)) {
            *count += 1;
        }
        let reply = answer::reply(
            &request,
            &plan,
            rule.map(|r| &r.effect),
            Call {
                seq,
                seed: self.seed,
                created_unix_s: call.received_unix_ms / 1000,
                rule_index,
            },
        );
        record.rule_index = rule_index;
        record.rule_name = rule.and_then(|r| r.name.clone());
        record.effect = rule.map(|r| r.effect.kind());
        record.status = reply.rendered.status.as_u16();
        record.retry_after = reply
            .rendered
            .retry_after
            .as_ref()
            .map(|v| header_text(v.as_bytes()));
        record.usage = reply.usage;
        journal.push(record);
        Ok(reply)
    }
}

/// A chat request as read, before it is numbered.
struct Incoming {
    received_unix_ms: u64,
    request_id: Option<String>,
    attempt: Option<u32>,
    idempotency_key: Option<String>,
    authorization: bool,
    /// The request, its prompt's SHA-256 and its default plan, or why it was
    /// refused. Digest and plan are worked out before taking the lock,
    /// because hashing a large prompt takes a while.
    parsed: Result<Parsed, ApiError>,
}

struct Parsed {
    request: request::ChatRequest,
    digest: [u8; 32],
    plan: orchestrator::plan::ActionPlan,
}

/// The routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/_mock/program", put(put_program).get(get_program))
        .route("/_mock/calls", get(calls))
        .route("/_mock/reset", post(reset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let body = read_body(body, &headers, &shared.limits).await;
    let received_unix_ms = now_unix_ms();
    let header = |name: &str| headers.get(name).map(|v| header_text(v.as_bytes()));
    let parsed = body
        .and_then(|bytes| request::parse(&bytes))
        .map(|request| {
            let digest = prompt_digest(&request.prompt);
            let plan = plan_for_digest(&digest, &request.tools);
            Parsed {
                request,
                digest,
                plan,
            }
        });
    let incoming = Incoming {
        received_unix_ms,
        request_id: header("x-request-id"),
        attempt: headers
            .get("x-attempt")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()),
        idempotency_key: header("idempotency-key"),
        authorization: headers.contains_key(header::AUTHORIZATION),
        parsed,
    };
    let reply = match shared.decide(incoming) {
        Ok(reply) => reply,
        Err(error) => return error.into_response(),
    };
    let stop = shared.stop.clone();
    match reply.wait {
        Wait::Now => {}
        Wait::Delay(delay) => {
            if !wait(delay, stop.clone()).await {
                return shutting_down();
            }
        }
        Wait::Hang => {
            // The client giving up drops this future, which ends the hang.
            let limit = Duration::from_millis(shared.limits.max_wait_ms);
            if !wait(limit, stop.clone()).await {
                return shutting_down();
            }
        }
    }
    send(reply.rendered, reply.stall, stop)
}

fn shutting_down() -> Response {
    ApiError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        "the mock provider is shutting down",
    )
    .into_response()
}

/// Sleeps for `duration` unless the mock stops first; `true` if it slept the
/// whole time.
async fn wait(duration: Duration, mut stop: watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        _ = stop.wait_for(|stopped| *stopped) => false,
    }
}

/// Sends a rendered answer, stalling and then breaking off if asked.
fn send(rendered: Rendered, stall: Option<Stall>, stop: watch::Receiver<bool>) -> Response {
    let length = rendered.body.len();
    let mut builder = Response::builder()
        .status(rendered.status)
        .header(header::CONTENT_TYPE, rendered.content_type);
    if rendered.framing == Framing::Length {
        builder = builder.header(header::CONTENT_LENGTH, length);
    }
    if rendered.framing == Framing::Chunked {
        builder = builder.header(header::CACHE_CONTROL, "no-cache");
    }
    if let Some(retry_after) = rendered.retry_after {
        builder = builder.header(header::RETRY_AFTER, retry_after);
    }
    let body = match stall {
        None => Body::from_stream(stream::iter(
            rendered.body.chunks(u64::MAX).map(Ok::<Bytes, io::Error>),
        )),
        Some(stall) => {
            let head = stream::iter(
                rendered
                    .body
                    .chunks(stall.after_bytes)
                    .map(Ok::<Bytes, io::Error>),
            );
            let tail = stream::once(async move {
                wait(stall.duration, stop).await;
                // An error mid-body makes hyper close the connection without
                // finishing the message: the client sees the body break off.
                Err(io::Error::other("the mock provider stalled and closed"))
            });
            Body::from_stream(head.chain(tail))
        }
    };
    builder.body(body).unwrap_or_else(|_| {
        ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the mock provider built an invalid response",
        )
        .into_response()
    })
}

/// Reads a request body within the size and time limits.
async fn read_body(body: Body, headers: &HeaderMap, limits: &Limits) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over the limit of {} bytes",
                limits.max_request_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_bytes as u64) {
        return Err(too_large());
    }
    let timeout = Duration::from_millis(limits.body_timeout_ms);
    match tokio::time::timeout(
        timeout,
        Limited::new(body, limits.max_request_bytes).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(error)) => Err(ApiError::invalid(
            None,
            format!("the request body could not be read: {error}"),
        )),
        Err(_) => Err(ApiError::status(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body took longer than {} ms to arrive",
                limits.body_timeout_ms
            ),
        )),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn model_object(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "gauntlet"})
}

async fn models() -> Response {
    axum::Json(json!({"object": "list", "data": [model_object(MODEL_ID)]})).into_response()
}

/// Any model exists: the mock answers whatever model a request names.
async fn model(Path(id): Path<String>) -> Response {
    axum::Json(model_object(&id)).into_response()
}

async fn put_program(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(body, &headers, &shared.limits).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    let installed = Program::from_json(&bytes, &shared.limits).and_then(|program| {
        let rules = program.rules.len();
        shared.install(program).map(|()| rules)
    });
    match installed {
        Ok(rules) => axum::Json(json!({ "rules": rules })).into_response(),
        Err(error) => {
            let status = match error {
                ProgramError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError {
                status,
                message: error.to_string(),
                kind: "invalid_program",
                param: error.path().map(str::to_owned),
                code: None,
            }
            .into_response()
        }
    }
}

async fn get_program(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.program()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    #[serde(default)]
    after_seq: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn calls(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<CallsQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return ApiError::invalid(None, rejection.body_text()).into_response(),
    };
    let max = shared.limits.max_page_records;
    let limit = query.limit.unwrap_or(max).min(max);
    axum::Json(shared.page(query.after_seq.unwrap_or(0), limit)).into_response()
}

async fn reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.reset();
    StatusCode::NO_CONTENT
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let mut error = ApiError::status(
        StatusCode::NOT_FOUND,
        format!("unknown route {method} {}", uri.path()),
    );
    error.code = Some("unknown_url");
    error.into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let mut error = ApiError::status(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    );
    error.code = Some("method_not_allowed");
    error.into_response()
}

/// A listener that holds at most `permits` connections open: past that,
/// it stops accepting, and new connections wait in the kernel's backlog until
/// one closes.
pub(crate) struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max_connections: usize) -> LimitedListener {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed, so this cannot happen; waiting
            // forever is the safe answer if it ever did.
            Err(_) => std::future::pending().await,
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Partial bodies (stalls) must leave at once, not wait
                    // for Nagle's algorithm to fill a segment.
                    let _ = stream.set_nodelay(true);
                    return (
                        LimitedStream {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                Err(error) => {
                    // Per-connection failures (reset before accept) are not
                    // the listener's; out of file descriptors is, and retrying
                    // at once would spin, so wait a little first.
                    if !matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!(%error, "mock llm accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection holding one of the listener's permits until it closes.
pub(crate) struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
