//! The mock LLM provider: an OpenAI-compatible chat completions server whose
//! answers a fault program controls.
//!
//! Run it in-process with [`MockLlm::start`], or as
//! `gauntlet mock-llm --listen ADDR [--seed N]` (which calls [`serve`]). It
//! speaks:
//!
//! - `POST /v1/chat/completions`: plain, or with `"stream": true` as
//!   server-sent events ending in `data: [DONE]`;
//! - `GET /v1/models` and `GET /v1/models/{id}`;
//! - the admin API under `/_mock/`: `PUT /_mock/program` installs a
//!   [`Program`], `GET /_mock/program` shows it, `GET /_mock/calls` returns the
//!   journal (`?after_seq=N&limit=M`), `POST /_mock/reset` forgets calls,
//!   program and counts. [`MockClient`] calls it from another process.
//!
//! **The default answer.** A call no rule matches gets a valid action plan in
//! the orchestrator's schema, derived from the SHA-256 of the prompt (the last
//! user message): one to three steps using the tools listed after `Tools:` in
//! the system message (or `search`), with fixed benign words as arguments. The
//! plan does not depend on the seed, so the same prompt always gets the same
//! plan. The content is bare JSON when `response_format` is `json_object` or
//! `json_schema`, and one `` ```json `` fence otherwise. Usage is counted, not
//! tokenized: a token is four bytes rounded up, each message adds 4 and the
//! reply 3. A content longer than `max_tokens` (or `max_completion_tokens`) is
//! cut there with `finish_reason` `length`.
//!
//! **Faults.** Rules match calls by sequence number (1 for the first call
//! since start or reset, counting every chat completion request, refused ones
//! included), every n-th call, a seeded probability or a prompt substring; the
//! first matching rule applies its [`Effect`]. See `PROGRAM.md` for the format.
//!
//! **Limits.** The mock binds loopback by default and bounds everything a
//! client controls: connections, body sizes, the journal, the rules, waits and
//! oversized bodies ([`Limits`]).
//!
//! **Determinism.** Every random choice is drawn from [`crate::seed`] keyed by
//! the rule's index and the call's sequence number, so which calls a rule
//! affects does not depend on timing. Only the `created` timestamps and the
//! journal's `received_unix_ms` come from the clock.

mod answer;
mod client;
mod content;
mod journal;
mod program;
mod raw;
mod request;
mod server;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use answer::MODEL_ID;
pub use client::{ClientError, MockClient};
pub use content::{FALLBACK_TOOL, MAX_TOOL_NAME_BYTES, MAX_TOOLS, default_plan, tools_from_system};
pub use journal::{CallRecord, CallsPage, MAX_HEADER_BYTES, Usage};
pub use program::{
    CallRange, DEFAULT_INJECTION, Effect, EffectKind, Every, InjectionField, MAX_NAME_BYTES,
    MAX_RETRY_AFTER_BYTES, MAX_RETRY_AFTER_S, Match, Program, ProgramError, RetryAfter, Rule,
    Target, Violation, probability_draw,
};

use server::{LimitedListener, Shared};

/// The address the mock listens on by default: loopback, on the port the
/// orchestrator's base configuration calls.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// How long [`MockLlm::shutdown`] waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Bounds on everything a client controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// The largest request body (chat request or program), in bytes.
    pub max_request_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout_ms: u64,
    /// The most rules in a program.
    pub max_rules: usize,
    /// The most journal records kept; older ones are dropped and counted.
    pub max_journal_records: usize,
    /// The most records one `GET /_mock/calls` returns.
    pub max_page_records: usize,
    /// The largest `oversized` body and `stall.after_bytes`.
    pub max_oversized_bytes: u64,
    /// The longest delay, stall or hang.
    pub max_wait_ms: u64,
    /// The longest free text in a program (`prompt_contains`, `payload`, a
    /// status `body` as JSON), in bytes.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            max_request_bytes: 1024 * 1024,
            body_timeout_ms: 30_000,
            max_rules: 1000,
            max_journal_records: 100_000,
            max_page_records: 10_000,
            max_oversized_bytes: 64 * 1024 * 1024,
            max_wait_ms: 10 * 60 * 1000,
            max_text_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    /// Checks that every limit lets something through.
    pub fn validate(&self) -> Result<(), MockError> {
        let zero = [
            ("max_connections", self.max_connections == 0),
            ("max_request_bytes", self.max_request_bytes == 0),
            ("body_timeout_ms", self.body_timeout_ms == 0),
            ("max_journal_records", self.max_journal_records == 0),
            ("max_page_records", self.max_page_records == 0),
            ("max_text_bytes", self.max_text_bytes == 0),
        ];
        match zero.iter().find(|(_, is_zero)| *is_zero) {
            Some((field, _)) => Err(MockError::Limits {
                field,
                message: "must be at least 1".into(),
            }),
            None => Ok(()),
        }
    }
}

/// How to run a mock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The seed of every random choice.
    pub seed: u64,
    /// The bounds.
    pub limits: Limits,
}

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            listen: DEFAULT_LISTEN,
            seed: 0,
            limits: Limits::default(),
        }
    }
}

/// Why the mock could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// A limit would refuse everything.
    #[error("limits.{field}: {message}")]
    Limits {
        /// The limit's name.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running mock. Dropping it stops the server; [`shutdown`](Self::shutdown)
/// also waits for it.
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MockLlm {
    /// Binds `config.listen` and starts serving on the current tokio runtime.
    pub async fn start(config: MockConfig) -> Result<MockLlm, MockError> {
        config.limits.validate()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| MockError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| MockError::Bind {
            addr: config.listen,
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            config.seed,
            config.limits.clone(),
            stopped.clone(),
        ));
        let listener = LimitedListener::new(listener, config.limits.max_connections);
        let mut server_stop = stopped;
        let server = axum::serve(listener, server::router(shared.clone())).with_graceful_shutdown(
            async move {
                let _ = server_stop.wait_for(|s| *s).await;
            },
        );
        let task = tokio::spawn(async move {
            // Serving a listener only ends on shutdown; accept errors are
            // retried inside the listener.
            let _ = server.await;
        });
        tracing::info!(%addr, seed = config.seed, "mock llm listening");
        Ok(MockLlm {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the root of the admin API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR/v1`, the base URL for OpenAI clients.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The seed of its random choices.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Validates and installs `program` in place of the current one; its
    /// rules' `times` counts start from zero. Sequence numbers and the journal
    /// carry on (see [`reset`](Self::reset)).
    pub fn install(&self, program: Program) -> Result<(), ProgramError> {
        self.shared.install(program)
    }

    /// The installed program.
    pub fn program(&self) -> Program {
        self.shared.program()
    }

    /// Every journal record held, in sequence order.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.journal().calls
    }

    /// The journal: the records held and how many were dropped.
    pub fn journal(&self) -> CallsPage {
        self.shared.page(0, usize::MAX)
    }

    /// Back to the state at start: no program, no calls, sequence numbers
    /// from 1 again.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, ends delays, stalls and hangs (a delayed or hanging
    /// call gets 503), and waits up to five seconds for connections to close.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Runs a mock until `shutdown` completes: what `gauntlet mock-llm` does.
/// Prints `listening on http://ADDR` on stdout once the socket is bound, the
/// line scripts wait for.
pub async fn serve(
    config: MockConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MockError> {
    let mock = MockLlm::start(config).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // If stdout is gone nobody is waiting for the line; serving still works.
        let _ = writeln!(out, "listening on http://{}", mock.addr());
        let _ = out.flush();
    }
    shutdown.await;
    mock.shutdown().await;
    Ok(())
}
