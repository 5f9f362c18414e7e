//! Test support for the service tests: a small OpenAI-compatible provider
//! stub that answers from a script and keeps a journal, and a service
//! fixture that runs the orchestrator in-process against it.
//!
//! The stub is deliberately small; the harness's mock LLM provider is the
//! full product. This one lives here so that the orchestrator's own tests do
//! not depend on the harness.

// Each test binary uses part of this module; and like the tests themselves,
// support code fails by panicking with a message.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use orchestrator::config::{self, Config, StorageConfig, ValidateOptions};
use orchestrator::{AppOptions, AppState};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The development key in `fixtures/configs/base.yaml` (tenant `dev`, role `admin`).
pub const DEV_KEY: &str = "gauntlet-dev-key";

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with a valid action plan and this usage (prompt, completion).
    Plan {
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    /// 200 with this message content and usage 10 + 20.
    Content(String),
    /// An error status, with an optional `Retry-After` value.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
}

impl Reply {
    /// The default answer: a valid plan, 10 prompt and 20 completion tokens.
    pub fn plan() -> Reply {
        Reply::Plan {
            prompt_tokens: 10,
            completion_tokens: 20,
        }
    }

    /// An error status without `Retry-After`.
    pub fn status(status: u16) -> Reply {
        Reply::Status {
            status,
            retry_after: None,
        }
    }
}

/// One call the stub received.
#[derive(Clone, Debug)]
pub struct Call {
    /// When it arrived.
    pub at: Instant,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its JSON body.
    pub body: Value,
}

#[derive(Default)]
struct StubState {
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Option<Reply>>,
    calls: Mutex<Vec<Call>>,
}

/// A provider stub listening on a loopback port.
pub struct Provider {
    /// `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<StubState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Provider {
    /// Starts a stub that answers valid plans until scripted otherwise.
    pub async fn start() -> Provider {
        Provider::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a stub on a chosen address (to bring a stopped one back).
    pub async fn start_on(addr: SocketAddr) -> Provider {
        let state = Arc::new(StubState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Provider {
            base_url: format!("http://{addr}/v1"),
            addr,
            state,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Queues answers for the next calls, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// The answer once the script is used up (default: a valid plan).
    pub fn otherwise(&self, reply: Reply) {
        *self.state.fallback.lock().unwrap() = Some(reply);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Stops answering: closes the listener and every idle connection, so
    /// the port refuses connections, as a crashed provider's would.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

async fn complete(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    state.calls.lock().unwrap().push(Call {
        at: Instant::now(),
        headers,
        body,
    });
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.fallback.lock().unwrap().clone())
        .unwrap_or_else(Reply::plan);
    answer(reply).await
}

async fn answer(mut reply: Reply) -> Response {
    loop {
        match reply {
            Reply::Delay(wait, next) => {
                tokio::time::sleep(wait).await;
                reply = *next;
            }
            Reply::Plan {
                prompt_tokens,
                completion_tokens,
            } => {
                let plan = json!({
                    "action_plan": [
                        {"step": 1, "tool": "search", "args": {"query": "rust circuit breakers"}},
                        {"step": 2, "tool": "summarize", "args": {"max_words": 100}}
                    ],
                    "reasoning": "Search first, then summarise what was found."
                });
                return completion(&plan.to_string(), prompt_tokens, completion_tokens);
            }
            Reply::Content(content) => return completion(&content, 10, 20),
            Reply::Status {
                status,
                retry_after,
            } => {
                let mut response = (
                    StatusCode::from_u16(status).unwrap(),
                    json!({"error": {"message": "scripted failure"}}).to_string(),
                )
                    .into_response();
                if let Some(value) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", value.parse().unwrap());
                }
                return response;
            }
        }
    }
}

fn completion(content: &str, prompt_tokens: u64, completion_tokens: u64) -> Response {
    axum::Json(json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "model": "gauntlet-mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
    .into_response()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh directory under the system temp dir, unique per call.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "orchestrator-test-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `fixtures/configs/base.yaml`, validated, pointed at `provider` with its
/// database in a fresh temp dir, and with fast retries so tests stay quick.
pub fn base_config(provider: &Provider, name: &str) -> Config {
    let path = repo_root().join("fixtures/configs/base.yaml");
    let outcome = config::validate_file(&path, &ValidateOptions::default());
    let mut config = outcome
        .config
        .unwrap_or_else(|| panic!("base.yaml is invalid: {:?}", outcome.diagnostics));
    let p = &mut config.llm.providers[0];
    p.base_url = provider.base_url.parse().unwrap();
    p.retry.initial_delay = Duration::from_millis(10);
    p.retry.max_delay = Duration::from_millis(200);
    config.storage = StorageConfig::Sqlite {
        path: temp_dir(name).join("orchestrator.db"),
    };
    config
}

/// A service running in-process; requests go through `oneshot`.
pub struct Service {
    /// Its state, for direct inspection of the store.
    pub state: Arc<AppState>,
    router: Router,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON, or `Value::String` of the raw text.
    pub json: Value,
    /// The raw body.
    pub text: String,
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Service {
    /// Starts a service with this configuration and a fixed seed.
    pub fn start(config: Config) -> Service {
        Service::start_with(config, Vec::new())
    }

    /// [`Service::start`] with these environment variables (secrets).
    pub fn start_with(config: Config, env: Vec<(String, String)>) -> Service {
        let state = AppState::new(
            config,
            AppOptions {
                seed: Some(1),
                env,
                ..AppOptions::default()
            },
        )
        .unwrap();
        Service {
            router: orchestrator::app(state.clone()),
            state,
        }
    }

    /// Sends a request built by the caller.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        Answer {
            status,
            headers,
            json,
            text,
        }
    }

    /// `POST /v1/tasks` with the dev key, an optional idempotency key and a body.
    pub async fn task(&self, idempotency_key: Option<&str>, body: Value) -> Answer {
        self.post("/v1/tasks", idempotency_key, body).await
    }

    /// `POST path` with the dev key, an optional idempotency key and a JSON body.
    pub async fn post(&self, path: &str, idempotency_key: Option<&str>, body: Value) -> Answer {
        let mut request = Request::post(path)
            .header("authorization", format!("Bearer {DEV_KEY}"))
            .header("content-type", "application/json");
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    /// `GET path` with an optional key.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        let mut request = Request::get(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// The dev tenant's budget as the store sees it.
    pub fn budget(&self) -> orchestrator::store::BudgetSnapshot {
        self.state.store.budget("dev").unwrap()
    }
}

/// Polls `condition` every 10 ms until it holds, for at most `limit`;
/// panics with `what` otherwise. For conditions that settle asynchronously
/// (a release on the blocking pool, a breaker's recovery timeout).
pub async fn eventually(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The orchestrator binary, running.
pub struct Running {
    /// The process.
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its database file (empty when the configuration names another store).
    pub db: PathBuf,
    stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

/// Starts `orchestrator serve` with `fixtures/configs/base.yaml` pointed at
/// `provider`, a fresh database, and `extra_env` overrides; waits for its
/// one `listening on` line.
pub async fn start(provider: &Provider, extra_env: &[(&str, &str)]) -> Running {
    start_on_db(
        provider,
        &temp_dir("serve").join("orchestrator.db"),
        extra_env,
    )
    .await
}

/// [`start`] on a given database (to restart on the same state).
pub async fn start_on_db(
    provider: &Provider,
    db: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> Running {
    spawn(
        provider,
        &base_yaml(),
        Some(db),
        extra_env,
        std::process::Stdio::inherit(),
    )
    .await
}

/// [`start`] with another configuration file, whose storage is used as it
/// is (no database path is set); `db` in the result is empty.
pub async fn start_with_config(
    provider: &Provider,
    config: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> Running {
    spawn(
        provider,
        config,
        None,
        extra_env,
        std::process::Stdio::inherit(),
    )
    .await
}

/// `fixtures/configs/base.yaml`.
pub fn base_yaml() -> PathBuf {
    repo_root().join("fixtures/configs/base.yaml")
}

/// [`start`] with the service's log (its stderr) written to `log`.
pub async fn start_logging_to(
    provider: &Provider,
    log: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> Running {
    let file = std::fs::File::create(log).unwrap();
    spawn(
        provider,
        &base_yaml(),
        Some(&temp_dir("serve").join("orchestrator.db")),
        extra_env,
        file.into(),
    )
    .await
}

async fn spawn(
    provider: &Provider,
    config: &std::path::Path,
    db: Option<&std::path::Path>,
    extra_env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> Running {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--seed", "7"])
        .env(
            "ORCHESTRATOR__LLM__PROVIDERS__0__BASE_URL",
            &provider.base_url,
        )
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    if let Some(db) = db {
        command.env("ORCHESTRATOR__STORAGE__SQLITE__PATH", db);
    }
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
        .await
        .expect("the service announces itself within 30 s")
        .unwrap();
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .trim()
        .to_owned();
    Running {
        child,
        base: format!("http://{addr}"),
        db: db.map(std::path::Path::to_path_buf).unwrap_or_default(),
        stdout,
    }
}

impl Running {
    /// Sends SIGTERM and returns the exit code and whatever else was printed on stdout.
    pub async fn terminate(self) -> (Option<i32>, String) {
        self.signal("-TERM").await
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub async fn kill(self) {
        let (code, _) = self.signal("-KILL").await;
        assert_eq!(code, None, "a killed process has no exit code");
    }

    async fn signal(mut self, signal: &str) -> (Option<i32>, String) {
        use tokio::io::AsyncReadExt;
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the service exits within 30 s of the signal")
            .unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).await.unwrap();
        (exit.code(), rest)
    }
}

/// An HTTP client for the binary's tests.
pub fn client() -> reqwest::Client {
    // reqwest is built without a default crypto provider (no aws-lc, no
    // OpenSSL); plain HTTP needs none, but the builder insists on one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}
