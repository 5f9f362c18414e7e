//! The HTTP service: state, routes, middleware and the serve loop.

pub mod admission;
mod audit;
pub mod degradation;
mod jobs;
mod keys;
mod middleware;
mod ops;
mod tasks;
mod webhooks;
pub mod worker;

pub use webhooks::{ConfiguredResolver, SecretError, Secrets};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::NewEntry;
use crate::auth::Auth;
use crate::config::{Config, StorageConfig};
use crate::llm::{self, LlmClient, LlmOptions};
use crate::lockout::Lockout;
use crate::metrics::Metrics;
use crate::outbound::{Policy, Resolver};
use crate::pii::{PiiError, Redactor};
use crate::plan::PlanPolicy;
use crate::store::{REDIS_PREFIX, RedisStore, SYSTEM_ACTOR, Store, StoreError, StoreOptions};

pub use keys::MAX_EXPIRES_IN;
pub use tasks::{DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT};

/// Everything a request handler needs, shared by all requests.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// Keys, roles and rate limiters.
    pub auth: Auth,
    /// Failed authentications by address and key id.
    pub lockout: Lockout,
    /// SQLite state.
    pub store: Store,
    /// The LLM client with its breakers.
    pub llm: LlmClient,
    /// Output validation rules.
    pub plan: PlanPolicy,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The seed of the service's random choices (given, or drawn at start).
    pub seed: u64,
    /// Wakes an idle job worker when a job is submitted or replayed.
    pub job_wake: Arc<Notify>,
    /// Takes personal data out of what leaves a request: problem details,
    /// audit details and stored errors (through the store), logs.
    pub redactor: Arc<Redactor>,
    /// What client-supplied URLs may reach: `security.outbound_url_allowlist`
    /// and the address rule.
    pub outbound: Arc<Policy>,
    /// The HTTP client of webhook deliveries: guarded resolver, no
    /// redirects, no proxies, bounded time.
    pub webhook_client: reqwest::Client,
    /// The webhook signing secrets.
    pub webhook_secrets: Secrets,
    /// The degradation level and the error-rate window behind it.
    pub degradation: degradation::Degradation,
}

/// Options of a service instance beyond its configuration.
#[derive(Clone, Default)]
pub struct AppOptions {
    /// Seed of every random choice the service makes (retry jitter), so that a
    /// scenario replays. `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Environment variables, for `api_key_env` and `hash_key_env`.
    pub env: Vec<(String, String)>,
    /// The redactor, when the caller built it already (the logger shares
    /// it); else built from `security.pii_redaction`.
    pub redactor: Option<Arc<Redactor>>,
    /// The resolver of webhook hosts; `webhooks.resolve`, then the system's,
    /// when `None`. Tests pass one they control.
    pub resolver: Option<Arc<dyn Resolver>>,
}

impl std::fmt::Debug for AppOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppOptions")
            .field("seed", &self.seed)
            .field("env", &self.env.len())
            .field("redactor", &self.redactor)
            .field("resolver", &self.resolver.is_some())
            .finish()
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The LLM client could not be set up.
    #[error(transparent)]
    Llm(#[from] llm::SetupError),
    /// The PII redactor's key is missing or too short.
    #[error(transparent)]
    Pii(#[from] PiiError),
    /// A webhook secret is missing or too short.
    #[error(transparent)]
    WebhookSecret(#[from] SecretError),
    /// The webhook HTTP client could not be set up.
    #[error("cannot build the webhook client: {0}")]
    WebhookClient(reqwest::Error),
    /// The configuration asks for a store this build cannot use yet.
    #[error("storage: {0}")]
    Unsupported(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed after it started.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

impl AppState {
    /// Opens the store and builds the clients. Blocking (it opens SQLite), so
    /// call it before serving, or from `spawn_blocking`.
    pub fn new(config: Config, options: AppOptions) -> Result<Arc<AppState>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let lookup = |var: &str| {
            options
                .env
                .iter()
                .find(|(k, _)| k == var)
                .map(|(_, v)| v.clone())
        };
        let redactor = match &options.redactor {
            Some(r) => r.clone(),
            None => Arc::new(Redactor::new(&config.security.pii_redaction, lookup)?),
        };
        let store_options = StoreOptions {
            redactor: redactor.clone(),
            ..StoreOptions::new(config.budget.clone())
        };
        let store = match &config.storage {
            StorageConfig::Sqlite { path } => Store::open(path, &store_options)?,
            StorageConfig::Redis { url } => {
                if url.scheme() == "rediss" {
                    return Err(StartError::Unsupported(format!(
                        "redis over tls ({url}) is not supported by this build; use redis://"
                    )));
                }
                Store::Redis(RedisStore::open(
                    url.as_str(),
                    REDIS_PREFIX,
                    &store_options,
                )?)
            }
        };
        let seed = options.seed.unwrap_or_else(rand::random);
        // Which configuration the service runs with, by digest: the audit log
        // then shows when it changed, without holding secrets or paths.
        let digest = hex::encode(Sha256::digest(config.to_yaml().as_bytes()));
        store.record_audit(NewEntry::new(
            SYSTEM_ACTOR,
            "config.loaded",
            "orchestrator",
            json!({
                "config_sha256": digest,
                "version": env!("CARGO_PKG_VERSION"),
                "workers": config.jobs.workers,
                "providers": config.llm.providers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            }),
        ))?;
        let api_keys = llm::resolve_api_keys(&config.llm, lookup)?;
        let llm = LlmClient::new(
            &config.llm,
            LlmOptions {
                seed,
                max_response_bytes: max_response_bytes(config.tasks.max_output_bytes),
                api_keys,
            },
            metrics.clone(),
        )?;
        let outbound = Arc::new(Policy::new(&config.security.outbound_url_allowlist));
        let resolver = match &options.resolver {
            Some(r) => r.clone(),
            None => Arc::new(ConfiguredResolver::new(&config.webhooks)),
        };
        let webhook_client = crate::outbound::client(
            outbound.clone(),
            resolver,
            crate::outbound::Limits {
                connect_timeout: config.webhooks.connect_timeout,
                timeout: config.webhooks.timeout,
            },
        )
        .map_err(StartError::WebhookClient)?;
        let webhook_secrets = Secrets::new(&config.webhooks, lookup)?;
        let auth = Auth::new(&config.security);
        let now = std::time::SystemTime::now();
        auth.load(
            store.live_keys(crate::auth::unix_ms(now), config.security.keys.max_keys)?,
            now,
        );
        Ok(Arc::new(AppState {
            auth,
            lockout: Lockout::new(&config.security.lockout),
            plan: PlanPolicy::from(&config.tasks),
            store,
            llm,
            metrics,
            seed,
            job_wake: Arc::new(Notify::new()),
            redactor,
            outbound,
            webhook_client,
            webhook_secrets,
            degradation: degradation::Degradation::new(&config.degradation),
            config,
        }))
    }
}

/// The largest provider response read: the output limit, doubled for JSON
/// string escaping inside the envelope, plus room for the envelope itself.
fn max_response_bytes(max_output_bytes: u64) -> usize {
    usize::try_from(max_output_bytes.saturating_mul(2).saturating_add(64 * 1024))
        .unwrap_or(usize::MAX)
}

/// The service's routes and middleware, ready to serve or to call in-process
/// with `tower::ServiceExt::oneshot`.
pub fn app(state: Arc<AppState>) -> Router {
    // Admission control sits inside authorisation: a request is
    // authenticated (and counted by the lockout) before it can be shed.
    let admit = |route| {
        admission::layer(
            route,
            &state.config.server.admission,
            state.metrics.as_ref(),
        )
    };
    let api = Router::new()
        .route(
            "/v1/tasks",
            post(tasks::create).layer(admit(admission::Route::Tasks)),
        )
        .route("/v1/budgets/{tenant}", get(ops::budget))
        .route(
            "/v1/jobs",
            post(jobs::create)
                .layer(admit(admission::Route::Jobs))
                .get(jobs::list),
        )
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/dlq", get(jobs::dlq))
        .route("/v1/dlq/{id}/replay", post(jobs::replay))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/roles", get(ops::roles))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}/rotate", post(keys::rotate))
        .route("/v1/keys/{id}", delete(keys::revoke))
        // Shedding by degradation level, inside authorisation like admission.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            degradation::shed,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authorize,
        ));
    let public = Router::new()
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics));
    let router = Router::new()
        .merge(api)
        .merge(public)
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed);
    middleware::wrap(router, &state).with_state(state)
}

/// Options of [`serve`].
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Overrides `server.listen`.
    pub listen: Option<SocketAddr>,
    /// Passed to [`AppState::new`].
    pub app: AppOptions,
}

/// Serves until `shutdown` completes, then stops accepting, and within
/// `server.shutdown_timeout` lets in-flight requests and running job attempts
/// finish; attempts still running then give their leases back. Prints
/// `listening on http://ADDR` on stdout once the socket is bound.
pub async fn serve(
    config: Config,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let addr = options.listen.unwrap_or(config.server.listen);
    let grace = config.server.shutdown_timeout;
    let state = tokio::task::spawn_blocking(move || AppState::new(config, options.app))
        .await
        .map_err(|e| StartError::Serve(std::io::Error::other(e)))??;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(StartError::Serve)?;
    let workers = worker::spawn(state.clone());
    let sampler = AbortOnDrop(tokio::spawn(degradation::sampler(state.clone())));
    // Signal handlers register when the shutdown future is first polled. Poll
    // it once before announcing readiness: a SIGTERM sent the moment the line
    // appears must find them installed, or its default action kills us.
    let mut shutdown = Box::pin(shutdown);
    let already = tokio::select! {
        biased;
        () = &mut shutdown => true,
        () = std::future::ready(()) => false,
    };
    announce(local);
    tracing::info!(addr = %local, workers = state.config.jobs.workers, "listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    let signal = stop.clone();
    tokio::spawn(async move {
        if !already {
            shutdown.await;
        }
        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
        signal.send_replace(true);
    });
    let mut server_stop = stopped.clone();
    let last = state.clone();
    // The peer address is what the brute-force lockout counts by.
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        let _ = server_stop.wait_for(|s| *s).await;
    });
    let mut grace_stop = stopped.clone();
    let requests = async move {
        // However serving ends (an I/O error included), the workers stop too.
        let _stop_workers = StopOnDrop(stop);
        tokio::select! {
            result = server => result.map_err(StartError::Serve),
            () = async {
                let _ = grace_stop.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("shutdown grace period over; abandoning in-flight requests");
                Ok(())
            }
        }
    };
    let mut jobs_stop = stopped;
    let jobs = async move {
        let _ = jobs_stop.wait_for(|s| *s).await;
        workers.shutdown(grace).await;
    };
    let (result, ()) = tokio::join!(requests, jobs);
    drop(sampler);
    settle_releases(&last).await;
    result
}

/// How often the last releases are tried at shutdown, and the pause between.
const SHUTDOWN_RELEASE_ATTEMPTS: u32 = 10;
const SHUTDOWN_RELEASE_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Retries, a bounded number of times, the releases that failed during the
/// run, so that a clean shutdown leaves no reservation held and no key in
/// flight. What still fails is left to crash recovery at the next start.
async fn settle_releases(state: &AppState) {
    for attempt in 1..=SHUTDOWN_RELEASE_ATTEMPTS {
        let pending = worker::retry_releases(state).await;
        if pending == 0 {
            return;
        }
        if attempt == SHUTDOWN_RELEASE_ATTEMPTS {
            tracing::error!(
                pending,
                "reservations still unreleased at shutdown; they are released at the next start"
            );
            return;
        }
        tokio::time::sleep(SHUTDOWN_RELEASE_PAUSE).await;
    }
}

/// Signals shutdown when dropped.
struct StopOnDrop(Arc<tokio::sync::watch::Sender<bool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The one line the harness waits for.
fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // If stdout is gone nobody is waiting for the line; serving still works.
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
