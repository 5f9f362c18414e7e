//! The proxies: their configuration, toxics, listeners and connections.
//!
//! One lock serialises every API operation, as in Toxiproxy; operations are
//! short except enabling (a bind) and disabling (waiting for the listener and
//! every connection to close), which callers want finished before the API
//! answers anyway. Connections never take the lock: each watches its proxy's
//! toxic lists through `watch` channels.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::Limits;
use super::error::ApiError;
use super::link::{self, LinkContext};
use super::model::{
    Proxy, ProxyConfig, ProxyUpdate, RawToxic, RawToxicUpdate, Stream, Toxic, ToxicKind,
    check_toxicity,
};

/// A toxic as the links see it: `id` stays the same across updates, which
/// replace the `Arc`, so a link can tell an update from a new toxic.
#[derive(Debug)]
pub(crate) struct ActiveToxic {
    pub id: u64,
    pub toxic: Toxic,
}

/// The toxics of one stream, in order.
pub(crate) type Chain = Arc<[Arc<ActiveToxic>]>;

/// Every proxy of one server.
pub(crate) struct Registry {
    seed: u64,
    limits: Limits,
    state: Mutex<State>,
}

struct State {
    proxies: BTreeMap<String, Entry>,
    next_toxic_id: u64,
}

/// One proxy.
struct Entry {
    name: Arc<str>,
    /// The listen address as configured.
    listen: String,
    /// The address last bound, which a re-enable binds again.
    bound: Option<SocketAddr>,
    upstream: Arc<str>,
    toxics: [Vec<Arc<ActiveToxic>>; 2],
    chains: [watch::Sender<Chain>; 2],
    /// Connections accepted over the proxy's life: numbers them for the seed.
    accepted: Arc<AtomicU64>,
    /// Present while enabled.
    runner: Option<Runner>,
}

/// A listening proxy's accept loop.
struct Runner {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Entry {
    fn new(config: &ProxyConfig) -> Entry {
        let empty: Chain = Arc::from(Vec::new());
        Entry {
            name: Arc::from(config.name.as_str()),
            listen: config.listen.clone(),
            bound: None,
            upstream: Arc::from(config.upstream.as_str()),
            toxics: [Vec::new(), Vec::new()],
            chains: [watch::Sender::new(empty.clone()), watch::Sender::new(empty)],
            accepted: Arc::new(AtomicU64::new(0)),
            runner: None,
        }
    }

    /// The listen address to show: the bound one once there is one.
    fn listen_shown(&self) -> String {
        self.bound
            .map_or_else(|| self.listen.clone(), |addr| addr.to_string())
    }

    /// Whether `listen` names the address this proxy listens on.
    fn listens_on(&self, listen: &str) -> bool {
        listen == self.listen || self.bound.is_some_and(|addr| addr.to_string() == listen)
    }

    fn view(&self) -> Proxy {
        Proxy {
            name: self.name.to_string(),
            listen: self.listen_shown(),
            upstream: self.upstream.to_string(),
            enabled: self.runner.is_some(),
            toxics: self.toxic_list(),
        }
    }

    fn toxic_list(&self) -> Vec<Toxic> {
        self.toxics
            .iter()
            .flatten()
            .map(|t| t.toxic.clone())
            .collect()
    }

    fn find_toxic(&self, name: &str) -> Option<(Stream, usize)> {
        Stream::ALL.into_iter().find_map(|stream| {
            self.toxics[stream.index()]
                .iter()
                .position(|t| t.toxic.name == name)
                .map(|i| (stream, i))
        })
    }

    fn toxic_count(&self) -> usize {
        self.toxics.iter().map(Vec::len).sum()
    }

    /// Tells the links of `stream` its new toxic list.
    fn publish(&self, stream: Stream) {
        let chain: Chain = Arc::from(self.toxics[stream.index()].clone());
        self.chains[stream.index()].send_replace(chain);
    }

    /// Binds and starts accepting; a no-op if enabled already.
    async fn start(&mut self, seed: u64, limits: &Limits) -> Result<(), ApiError> {
        if self.runner.is_some() {
            return Ok(());
        }
        let (proxy, shown) = (self.name.to_string(), self.listen_shown());
        let listen_error = |source| ApiError::Listen {
            proxy: proxy.clone(),
            listen: shown.clone(),
            source,
        };
        let listener = match self.bound {
            Some(addr) => TcpListener::bind(addr).await,
            None => match listen_addr(&self.listen).await {
                Ok(addr) => TcpListener::bind(addr).await,
                Err(e) => Err(e),
            },
        }
        .map_err(listen_error)?;
        self.bound = Some(listener.local_addr().map_err(listen_error)?);
        let context = Arc::new(ProxyContext {
            name: self.name.clone(),
            upstream: self.upstream.clone(),
            chains: [self.chains[0].subscribe(), self.chains[1].subscribe()],
            accepted: self.accepted.clone(),
            seed,
            limits: limits.clone(),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, stopped, context));
        tracing::info!(proxy = %self.name, listen = %self.listen_shown(), upstream = %self.upstream, "proxy started");
        self.runner = Some(Runner { stop, task });
        Ok(())
    }

    /// Stops accepting and closes every connection, returning once all are
    /// closed; a no-op if disabled already.
    async fn stop(&mut self) {
        if let Some(runner) = self.runner.take() {
            let _ = runner.stop.send(());
            if let Err(e) = runner.task.await {
                tracing::error!(proxy = %self.name, error = %e, "proxy accept loop failed");
            }
            tracing::info!(proxy = %self.name, "proxy stopped");
        }
    }
}

/// Resolves a listen address. An empty host means loopback: Toxiproxy would
/// listen on every interface, but a fault proxy open to the network is a
/// hazard nobody asked for. A host name takes its first IPv4 address, like
/// Go's `net.Listen`.
async fn listen_addr(listen: &str) -> std::io::Result<SocketAddr> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if listen.is_empty() {
        return Ok(SocketAddr::new(loopback, 0));
    }
    if let Some(port) = listen.strip_prefix(':') {
        let port = port.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid port in {listen:?}"),
            )
        })?;
        return Ok(SocketAddr::new(loopback, port));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen).await?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{listen:?} resolves to no address"),
            )
        })
}

/// What an accept loop and its connections share.
struct ProxyContext {
    name: Arc<str>,
    upstream: Arc<str>,
    chains: [watch::Receiver<Chain>; 2],
    accepted: Arc<AtomicU64>,
    seed: u64,
    limits: Limits,
}

/// Accepts connections until told to stop, then closes the listener (new
/// connections are refused from then on) and every connection.
async fn accept_loop(
    listener: TcpListener,
    mut stop: oneshot::Receiver<()>,
    context: Arc<ProxyContext>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let connection = context.accepted.fetch_add(1, Ordering::Relaxed);
                    // Connections that have ended count no more, even if the
                    // loop has not been woken to reap them yet.
                    while connections.try_join_next().is_some() {}
                    if connections.len() >= context.limits.max_connections_per_proxy {
                        tracing::warn!(
                            proxy = %context.name, %peer,
                            limit = context.limits.max_connections_per_proxy,
                            "connection limit reached; closing the new connection"
                        );
                        continue;
                    }
                    connections.spawn(serve(client, connection, context.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off rather
                    // than spin, and try again.
                    tracing::warn!(proxy = %context.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Dials the upstream for a client and proxies between them.
async fn serve(client: TcpStream, connection: u64, context: Arc<ProxyContext>) {
    let timeout = Duration::from_millis(context.limits.upstream_connect_timeout_ms);
    let upstream = match tokio::time::timeout(timeout, TcpStream::connect(&*context.upstream)).await
    {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            tracing::warn!(proxy = %context.name, upstream = %context.upstream, error = %e, "cannot connect upstream");
            return;
        }
        Err(_) => {
            tracing::warn!(proxy = %context.name, upstream = %context.upstream, timeout_ms = context.limits.upstream_connect_timeout_ms, "upstream connect timed out");
            return;
        }
    };
    let link = LinkContext {
        seed: context.seed,
        proxy: context.name.clone(),
        connection,
        chunk_bytes: context.limits.chunk_bytes,
        channel_chunks: context.limits.channel_chunks,
    };
    link::run(client, upstream, context.chains.clone(), link).await;
}

impl Registry {
    pub(crate) fn new(seed: u64, limits: Limits) -> Registry {
        Registry {
            seed,
            limits,
            state: Mutex::new(State {
                proxies: BTreeMap::new(),
                next_toxic_id: 0,
            }),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) async fn list(&self) -> BTreeMap<String, Proxy> {
        let state = self.state.lock().await;
        state
            .proxies
            .iter()
            .map(|(name, entry)| (name.clone(), entry.view()))
            .collect()
    }

    pub(crate) async fn get(&self, name: &str) -> Result<Proxy, ApiError> {
        let state = self.state.lock().await;
        state
            .proxies
            .get(name)
            .map(Entry::view)
            .ok_or(ApiError::ProxyNotFound)
    }

    fn check_config(&self, config: &ProxyConfig) -> Result<(), ApiError> {
        let limits = &self.limits;
        for (field, value, limit) in [
            ("name", &config.name, limits.max_name_bytes),
            ("listen", &config.listen, limits.max_address_bytes),
            ("upstream", &config.upstream, limits.max_address_bytes),
        ] {
            if value.len() > limit {
                return Err(ApiError::BadRequestBody(format!(
                    "proxy {field} is longer than {limit} bytes"
                )));
            }
        }
        Ok(())
    }

    /// Creates a proxy, listening at once if enabled; nothing is created if
    /// it cannot listen.
    pub(crate) async fn create(&self, config: ProxyConfig) -> Result<Proxy, ApiError> {
        self.check_config(&config)?;
        let mut state = self.state.lock().await;
        if state.proxies.contains_key(&config.name) {
            return Err(ApiError::ProxyAlreadyExists);
        }
        if state.proxies.len() >= self.limits.max_proxies {
            return Err(ApiError::LimitReached {
                what: "proxies".into(),
                limit: self.limits.max_proxies,
            });
        }
        let mut entry = Entry::new(&config);
        if config.enabled {
            entry.start(self.seed, &self.limits).await?;
        }
        let view = entry.view();
        state.proxies.insert(config.name, entry);
        Ok(view)
    }

    /// Creates or replaces each proxy in order: one whose listen and upstream
    /// are unchanged is kept as it is (toxics, connections and all), others
    /// are created afresh. Stops at the first failure, returning it with the
    /// proxies handled before it.
    pub(crate) async fn populate(
        &self,
        configs: Vec<ProxyConfig>,
    ) -> Result<Vec<Proxy>, (ApiError, Vec<Proxy>)> {
        let mut done = Vec::with_capacity(configs.len());
        for config in &configs {
            if let Err(e) = self.check_config(config) {
                return Err((e, done));
            }
        }
        let mut state = self.state.lock().await;
        for config in configs {
            if let Some(existing) = state.proxies.get(&config.name) {
                if existing.listens_on(&config.listen) && *existing.upstream == *config.upstream {
                    done.push(existing.view());
                    continue;
                }
            } else if state.proxies.len() >= self.limits.max_proxies {
                let e = ApiError::LimitReached {
                    what: "proxies".into(),
                    limit: self.limits.max_proxies,
                };
                return Err((e, done));
            }
            let mut old = state.proxies.remove(&config.name);
            if let Some(old) = &mut old {
                // Stopped first, so that the new proxy can take its address.
                old.stop().await;
            }
            let mut entry = Entry::new(&config);
            if config.enabled
                && let Err(e) = entry.start(self.seed, &self.limits).await
            {
                // As in Toxiproxy, the old proxy stays, stopped.
                if let Some(old) = old {
                    state.proxies.insert(config.name, old);
                }
                return Err((e, done));
            }
            done.push(entry.view());
            state.proxies.insert(config.name, entry);
        }
        Ok(done)
    }

    /// Applies the fields given; a new listen or upstream address restarts
    /// the proxy (if enabled), which keeps its toxics.
    pub(crate) async fn update(&self, name: &str, update: ProxyUpdate) -> Result<Proxy, ApiError> {
        let mut state = self.state.lock().await;
        let entry = state.proxies.get_mut(name).ok_or(ApiError::ProxyNotFound)?;
        let limit = self.limits.max_address_bytes;
        for value in [&update.listen, &update.upstream].into_iter().flatten() {
            if value.len() > limit {
                return Err(ApiError::BadRequestBody(format!(
                    "proxy address is longer than {limit} bytes"
                )));
            }
        }
        let enabled = update.enabled.unwrap_or(entry.runner.is_some());
        let listen = update.listen.filter(|l| !entry.listens_on(l));
        let upstream = update.upstream.filter(|u| **u != *entry.upstream);
        if listen.is_some() || upstream.is_some() {
            entry.stop().await;
            if let Some(listen) = listen {
                entry.listen = listen;
                entry.bound = None;
            }
            if let Some(upstream) = upstream {
                entry.upstream = Arc::from(upstream.as_str());
            }
        }
        if enabled {
            entry.start(self.seed, &self.limits).await?;
        } else {
            entry.stop().await;
        }
        Ok(entry.view())
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut state = self.state.lock().await;
        let mut entry = state.proxies.remove(name).ok_or(ApiError::ProxyNotFound)?;
        entry.stop().await;
        Ok(())
    }

    /// Enables every proxy and removes every toxic. Stops at the first proxy
    /// that cannot listen again, as Toxiproxy does.
    pub(crate) async fn reset(&self) -> Result<(), ApiError> {
        let mut state = self.state.lock().await;
        for entry in state.proxies.values_mut() {
            entry.start(self.seed, &self.limits).await?;
            for stream in Stream::ALL {
                if !entry.toxics[stream.index()].is_empty() {
                    entry.toxics[stream.index()].clear();
                    entry.publish(stream);
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn toxics(&self, proxy: &str) -> Result<Vec<Toxic>, ApiError> {
        let state = self.state.lock().await;
        let entry = state.proxies.get(proxy).ok_or(ApiError::ProxyNotFound)?;
        Ok(entry.toxic_list())
    }

    pub(crate) async fn toxic(&self, proxy: &str, name: &str) -> Result<Toxic, ApiError> {
        let state = self.state.lock().await;
        let entry = state.proxies.get(proxy).ok_or(ApiError::ProxyNotFound)?;
        let (stream, i) = entry.find_toxic(name).ok_or(ApiError::ToxicNotFound)?;
        Ok(entry.toxics[stream.index()][i].toxic.clone())
    }

    /// Adds a toxic, checking in Toxiproxy's order: stream, type, name taken,
    /// attributes.
    pub(crate) async fn add_toxic(&self, proxy: &str, raw: RawToxic) -> Result<Toxic, ApiError> {
        let mut state = self.state.lock().await;
        let next_id = state.next_toxic_id;
        let entry = state
            .proxies
            .get_mut(proxy)
            .ok_or(ApiError::ProxyNotFound)?;
        let stream = raw.stream()?;
        let type_name = raw.kind.as_deref().unwrap_or("");
        let name = raw.name(type_name, stream);
        if ToxicKind::zeroed(type_name).is_none() {
            return Err(ApiError::InvalidToxicType);
        }
        if entry.find_toxic(&name).is_some() {
            return Err(ApiError::ToxicAlreadyExists);
        }
        let kind = raw.kind()?;
        if name.len() > self.limits.max_name_bytes {
            return Err(ApiError::BadRequestBody(format!(
                "toxic name is longer than {} bytes",
                self.limits.max_name_bytes
            )));
        }
        let toxicity = check_toxicity(raw.toxicity.unwrap_or(1.0))?;
        if entry.toxic_count() >= self.limits.max_toxics_per_proxy {
            return Err(ApiError::LimitReached {
                what: format!("toxics on proxy {proxy}"),
                limit: self.limits.max_toxics_per_proxy,
            });
        }
        let toxic = Toxic {
            name,
            stream,
            toxicity,
            kind,
        };
        entry.toxics[stream.index()].push(Arc::new(ActiveToxic {
            id: next_id,
            toxic: toxic.clone(),
        }));
        entry.publish(stream);
        state.next_toxic_id += 1;
        Ok(toxic)
    }

    /// Updates a toxic's attributes (those given) and toxicity in place; live
    /// connections pick the change up.
    pub(crate) async fn update_toxic(
        &self,
        proxy: &str,
        name: &str,
        update: RawToxicUpdate,
    ) -> Result<Toxic, ApiError> {
        let mut state = self.state.lock().await;
        let entry = state
            .proxies
            .get_mut(proxy)
            .ok_or(ApiError::ProxyNotFound)?;
        let (stream, i) = entry.find_toxic(name).ok_or(ApiError::ToxicNotFound)?;
        let current = &entry.toxics[stream.index()][i];
        let mut toxic = current.toxic.clone();
        if let Some(attributes) = &update.attributes {
            toxic
                .kind
                .merge(attributes)
                .map_err(ApiError::BadRequestBody)?;
        }
        if let Some(toxicity) = update.toxicity {
            toxic.toxicity = check_toxicity(toxicity)?;
        }
        let id = current.id;
        entry.toxics[stream.index()][i] = Arc::new(ActiveToxic {
            id,
            toxic: toxic.clone(),
        });
        entry.publish(stream);
        Ok(toxic)
    }

    pub(crate) async fn remove_toxic(&self, proxy: &str, name: &str) -> Result<(), ApiError> {
        let mut state = self.state.lock().await;
        let entry = state
            .proxies
            .get_mut(proxy)
            .ok_or(ApiError::ProxyNotFound)?;
        let (stream, i) = entry.find_toxic(name).ok_or(ApiError::ToxicNotFound)?;
        entry.toxics[stream.index()].remove(i);
        entry.publish(stream);
        Ok(())
    }

    /// Stops every proxy and forgets them.
    pub(crate) async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        for entry in state.proxies.values_mut() {
            entry.stop().await;
        }
        state.proxies.clear();
    }
}
