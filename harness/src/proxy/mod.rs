//! The fault proxy: a TCP proxy with toxics, driven through Toxiproxy's HTTP
//! API, so that Toxiproxy clients and the README's curl examples work against
//! it unchanged.
//!
//! - `model.rs`: the JSON shapes, shared by the server and [`ProxyClient`].
//! - `api.rs`: the routes, with Toxiproxy's status codes and error bodies.
//! - `registry.rs`: the proxies, their listeners, toxics and connections.
//! - `link.rs`: one connection, bytes through the toxics in each direction.
//! - `client.rs`: the typed async client the rest of the harness uses.
//!
//! Differences from Toxiproxy 2.x, all deliberate:
//!
//! - Every random draw (toxicity, jitter, slice sizes) comes from the seed
//!   (see [`crate::seed`]): whether a toxic affects a connection is
//!   `seed::unit(seed, [proxy, toxic, connection number]) < toxicity`, the
//!   connection number counting the proxy's accepted connections from 0.
//!   Jitter and slices draw from a generator per proxy, connection, stream
//!   and toxic. The same seed and the same traffic draw the same values
//!   (chunking still follows what each read returns).
//! - The API and proxies with an empty listen host (`:8080`, or no listen
//!   at all) bind loopback, not every interface.
//! - Everything is bounded ([`Limits`]); attributes are 32-bit whole numbers
//!   and a toxicity outside `[0, 1]` is refused.
//! - `POST /populate` keeps a proxy whose listen address is the one it
//!   listens on, also when given as the bound address (Toxiproxy compares the
//!   text and would restart it), and answers `[]` rather than `null` for an
//!   empty list.
//! - `reset_peer` resets with SO_LINGER 0 whenever it fires (Toxiproxy only
//!   when the toxic was there when the connection opened), and a removed
//!   `reset_peer` no longer fires.
//! - An orderly end of one direction is passed on as a half-close; Toxiproxy
//!   closes the whole connection.
//! - `GET /version` answers `gauntlet-VERSION` as `text/plain`, as Toxiproxy
//!   did before 2.6.
//! - No `/metrics` endpoint, and the toxics beyond Toxiproxy's seven are
//!   absent.

mod api;
mod client;
mod error;
mod link;
mod model;
mod registry;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use api::VERSION;
pub use client::ProxyClient;
pub use error::{ApiError, ClientError, ConfigFileError, ProxyError};
pub use model::{
    Proxy, ProxyConfig, ProxyUpdate, Stream, TOXIC_TYPES, Toxic, ToxicKind, ToxicUpdate,
};

pub(crate) use model::check_toxicity;
use model::{RawProxy, populate_entries};
use registry::Registry;

/// Toxiproxy's API port.
pub const DEFAULT_API_PORT: u16 = 8474;

/// How long [`ProxyServer::shutdown`] lets API requests in flight finish.
const API_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Bounds on everything the server holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Proxies (default 256).
    pub max_proxies: usize,
    /// Toxics on one proxy, both streams together (default 32).
    pub max_toxics_per_proxy: usize,
    /// Open connections through one proxy; more are accepted and closed at
    /// once (default 1024).
    pub max_connections_per_proxy: usize,
    /// Open API connections; more wait in the backlog (default 64).
    pub max_api_connections: usize,
    /// An API request body, and a config file (default 1 MiB).
    pub max_body_bytes: usize,
    /// The largest read from a socket (default 32 KiB).
    pub chunk_bytes: usize,
    /// Chunks buffered per direction of a connection with toxics, in its
    /// channel and again in its queue, so at most twice this many chunks
    /// (default 16).
    pub channel_chunks: usize,
    /// A proxy or toxic name (default 256 bytes).
    pub max_name_bytes: usize,
    /// A listen or upstream address (default 512 bytes).
    pub max_address_bytes: usize,
    /// Connecting to an upstream (default 10 s).
    pub upstream_connect_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_proxies: 256,
            max_toxics_per_proxy: 32,
            max_connections_per_proxy: 1024,
            max_api_connections: 64,
            max_body_bytes: 1 << 20,
            chunk_bytes: 32 << 10,
            channel_chunks: 16,
            max_name_bytes: 256,
            max_address_bytes: 512,
            upstream_connect_timeout_ms: 10_000,
        }
    }
}

/// How to run a [`ProxyServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyServerConfig {
    /// The API address (default `127.0.0.1:8474`; port 0 picks one).
    pub listen: SocketAddr,
    /// The seed of every random draw.
    pub seed: u64,
    /// Bounds on everything.
    pub limits: Limits,
}

impl Default for ProxyServerConfig {
    fn default() -> ProxyServerConfig {
        ProxyServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_API_PORT)),
            seed: 0,
            limits: Limits::default(),
        }
    }
}

/// A running proxy server: the API and every proxy it created. Dropping it
/// stops the API, and with it, in the background, every proxy; call
/// [`shutdown`](ProxyServer::shutdown) to wait until all are closed.
pub struct ProxyServer {
    addr: SocketAddr,
    registry: Arc<Registry>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ProxyServer {
    /// Binds the API and starts serving it. Needs a tokio runtime.
    pub async fn start(config: ProxyServerConfig) -> Result<ProxyServer, ProxyError> {
        let bind_error = |source| ProxyError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let registry = Arc::new(Registry::new(config.seed, config.limits.clone()));
        let app = api::router(registry.clone());
        let listener = api::LimitedListener::new(listener, config.limits.max_api_connections);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                // A dropped sender stops the server too.
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "proxy api failed");
            }
        });
        tracing::info!(%addr, seed = config.seed, "proxy api listening");
        Ok(ProxyServer {
            addr,
            registry,
            stop,
            task,
        })
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of this server's API.
    pub fn client(&self) -> Result<ProxyClient, ClientError> {
        ProxyClient::new(&self.url())
    }

    /// Creates or replaces proxies, as `POST /populate` does (for the
    /// `--config` file). Stops at the first failure, with the proxies
    /// handled before it left in place.
    pub async fn populate(&self, proxies: Vec<ProxyConfig>) -> Result<Vec<Proxy>, ApiError> {
        self.registry.populate(proxies).await.map_err(|(e, _)| e)
    }

    /// Stops the API (requests in flight get a few seconds), then every
    /// proxy, returning once every listener and connection is closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(API_SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        self.registry.shutdown().await;
    }
}

/// Reads a Toxiproxy config file (`toxiproxy-server -config`): a JSON array
/// of proxies, `{"name", "listen", "upstream", "enabled"}`, at most
/// [`Limits::max_body_bytes`] by default. Errors name the file, and the line
/// and column of a syntax error.
pub fn load_config_file(path: &Path) -> Result<Vec<ProxyConfig>, ConfigFileError> {
    let limit_bytes = Limits::default().max_body_bytes;
    let read_error = |source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(limit_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > limit_bytes {
        return Err(ConfigFileError::TooLarge {
            path: path.to_owned(),
            limit_bytes,
        });
    }
    let syntax = |e: serde_json::Error| {
        let text = e.to_string();
        // serde_json appends " at line L column C"; the position goes first.
        let message = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(message, _)| message)
            .to_owned();
        ConfigFileError::Syntax {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message,
        }
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(syntax)?;
    let entries: Vec<RawProxy> = match populate_entries(value) {
        Ok(entries) => entries,
        // The shape is wrong; parsing again as a list of proxies locates it.
        Err(_) => serde_json::from_slice(&bytes).map_err(syntax)?,
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            raw.validate()
                .map_err(|field| ConfigFileError::MissingField {
                    path: path.to_owned(),
                    index: i + 1,
                    field,
                })
        })
        .collect()
}
