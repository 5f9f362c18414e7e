//! The Docker backend of the scenario engine: the same topology as the local
//! backend, each service in a container of its own on a network of the run.
//!
//! ```text
//!  harness ──127.0.0.1:P──▶ proxy ──client[i]──▶ orchestrator[i] ──llm──▶ proxy ──▶ mock-llm
//!                          (fault proxy)                         (same proxy)    (mock provider)
//!                                          orchestrator[i] ──redis[i]──▶ proxy ──▶ redis
//!                                                                        (its network namespace)
//! ```
//!
//! [`DockerDeployment::start`] creates the network `gauntlet-<run id>`, then
//! the mock LLM provider and the fault proxy from the harness image, creates
//! the `llm` proxy through the proxy's API, starts Redis from its image when
//! the run has the Redis store (with a `redis[i]` proxy per replica), and
//! starts each orchestrator replica from its image behind its own
//! `client[i]` proxy, waiting for its `listening on` line. Every container
//! and the network carry the labels of [`labels`], which is how `gauntlet
//! gc` finds what a killed harness left behind. Ports are published on
//! 127.0.0.1 only, at host ports chosen once, so that a restarted container
//! keeps its address.
//!
//! Each replica is a [`DockerSystem`] and Redis a [`DockerRedis`]; they
//! share the network and the helper containers, which go with the last of
//! them (shut down or dropped).
//!
//! Containers run through `testcontainers` (with its `watchdog`, which stops
//! and removes them on SIGINT/SIGTERM; there is no reaper container). The
//! network and the faults that testcontainers has no verb for go through
//! bollard, which it re-exports.
//!
//! The faults and how they work:
//! - kill / pause / resume / restart (of a replica or of Redis): the Docker
//!   API (SIGKILL, the freezer, stop and start). Redis keeps its files in a
//!   bind mount of the run directory, so a killed Redis with `appendonly`
//!   comes back with everything it acknowledged, as on the local backend.
//!   Redis runs in the proxy container's network namespace and the
//!   `redis[i]` links reach it on loopback there: a stopped container of
//!   its own would take its address with it, and connections to it would
//!   hang (or, while it starts, go unanswered) where a killed local server
//!   refuses them at once; sharing the namespace keeps the local backend's
//!   behaviour. Its port is published on the proxy container.
//! - partition of the `llm` link: the mock provider's container is
//!   disconnected from the network and reconnected after (the `client` link
//!   goes through the proxy, because cutting the orchestrator off the network
//!   would cut its provider link and the harness's probes with it). The
//!   `redis[i]` links are the proxy's, as locally.
//! - disk full: the data directory is a size-limited tmpfs that the harness
//!   mounts on the host and bind-mounts into the container, then fills. A
//!   Docker tmpfs mount would be emptied by every restart and cannot be
//!   filled from outside (a scratch image has no tool to fill it with).
//! - OOM: a memory limit set through the host config at the fault, and a
//!   hog (`/gauntlet __hog`, shipped in the orchestrator image) run inside
//!   the container, so it is charged to the same cgroup; the hog makes the
//!   orchestrator the OOM killer's first choice, and the container's state
//!   (`OOMKilled`) proves the kernel killed it.
//! - I/O errors and read-only: not available. They need libfiu preloaded
//!   into the orchestrator, and a static binary cannot preload a library.

mod error;
pub mod gc;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use testcontainers::bollard::Docker;
use testcontainers::bollard::models::{
    ContainerState, ContainerUpdateBody, EndpointSettings, ExecConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest,
};
use testcontainers::bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptionsBuilder, LogsOptionsBuilder,
    StopContainerOptionsBuilder,
};
use testcontainers::core::{ContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub use error::DockerError;
pub use gc::{DockerGcReport, gc, wait_until_exited};

use crate::images::{ImageNames, ImageRef};
use crate::local::{EventKind, Exit, ProcessEvent, ShutdownReport};
use crate::proxy::{ProxyClient, ProxyConfig};
use crate::scenario::{Link, MAX_REPLICAS};

/// The label every resource of a run carries: its run id.
pub const LABEL_RUN: &str = "gauntlet.run";
/// The label naming a container's role (`orchestrator`, `proxy`, `mock-llm`,
/// `redis`).
pub const LABEL_ROLE: &str = "gauntlet.role";
/// The label naming the harness process that owns the run, as
/// `PID:START_TICKS` (a pid alone could be reused).
pub const LABEL_OWNER: &str = "gauntlet.owner";

/// The orchestrator's port inside its container.
pub const ORCHESTRATOR_PORT: u16 = 8080;
/// The mock provider's port inside its container.
pub const MOCK_PORT: u16 = 8081;
/// Redis's port inside its container.
pub const REDIS_PORT: u16 = 6379;
/// The fault proxy's API port inside its container (Toxiproxy's).
pub const PROXY_API_PORT: u16 = 8474;
/// The `llm` proxy's listen port inside the proxy container.
pub const LLM_PROXY_PORT: u16 = 9000;
/// The `client` proxy's listen port inside the proxy container; replica
/// `i`'s `client[i]` listens on this plus `i`.
pub const CLIENT_PROXY_PORT: u16 = 9001;
/// The `redis[0]` proxy's listen port inside the proxy container; replica
/// `i`'s `redis[i]` listens on this plus `i`.
pub const REDIS_PROXY_PORT: u16 = 9100;
/// Where the run directory (config, `data/`) is mounted in the orchestrator.
pub const RUN_DIR_IN_CONTAINER: &str = "/gauntlet-run";
/// Where Redis keeps its files in its container: a bind mount of the run
/// directory's `redis/`, so they outlive a kill and a restart. (Redis
/// listens on [`REDIS_PORT`] in the proxy container's network namespace.)
pub const REDIS_DIR_IN_CONTAINER: &str = "/data";

/// How long a stopped orchestrator gets to exit gracefully before SIGKILL.
const STOP_TIMEOUT_S: i32 = 20;
/// How long a stopped Redis gets to exit (it flushes its append-only file
/// and exits at once on SIGTERM), as the local backend gives it.
const REDIS_STOP_TIMEOUT_S: i32 = 10;
/// How long the harness's helper containers get on stop (they exit at once
/// on SIGTERM).
const HELPER_STOP_TIMEOUT_S: i32 = 5;
/// How long a killed container may take to be reported stopped.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long the memory hog may take to get the orchestrator killed.
const OOM_WAIT_MS: u64 = 30_000;
/// The most the hog allocates, whatever the limit: a bound on a fault that
/// misfires (no limit applied) on the host's memory.
const MAX_HOG_BYTES: u64 = 1 << 30;
/// The memory limit outside an OOM fault when the run has one (the limit
/// and swap are set together, and Docker cannot lift a limit once set).
const ROOMY_MEMORY_BYTES: i64 = 4 << 30;
/// How often readiness is polled after a start: neither the orchestrator's
/// port nor Redis's has an event to wait on.
const READY_POLL_MS: u64 = 50;
/// Longest run id: container names are DNS names (at most 63 characters),
/// made of the run id and a role (`-orchestrator-4` the longest).
const MAX_RUN_ID_LEN: usize = 48;

/// The fault machinery a Docker run prepares before the orchestrator starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerNeeds {
    /// Mount a tmpfs of this many bytes at `run_dir/data` on the host
    /// (disk-full faults). Needs root and permission to mount.
    pub disk_tmpfs_bytes: Option<u64>,
    /// Give the orchestrator a memory limit that OOM faults can lower.
    pub memory: bool,
}

/// How the run's Redis persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// Every write logged and synced before Redis answers
    /// (`--appendonly yes --appendfsync always`); without it nothing is
    /// persisted.
    pub appendonly: bool,
}

/// One run's Docker system.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// Names the network, the containers and their labels (1 to 48 of
    /// `a-z 0-9 . _ -`, starting with a letter or digit).
    pub run_id: String,
    /// An existing host directory, bind-mounted into replica 0's container:
    /// it holds `orchestrator.yaml` and `data/`. Replica `i > 0` gets
    /// `replica-i/` in it, and Redis `redis/`.
    pub run_dir: PathBuf,
    /// The orchestrators' configs, one per replica, replica 0 first (1 to
    /// 5); each's `server.listen` should be `0.0.0.0:8080`, its database
    /// `data/orchestrator.db`, and with Redis its store
    /// [`redis_link_url`] of its index.
    pub configs: Vec<String>,
    /// The images to run.
    pub images: ImageNames,
    /// Seed of the services' random choices (replica `i` gets it plus `i`).
    pub seed: u64,
    /// Fault machinery to prepare, for every replica.
    pub needs: DockerNeeds,
    /// Bound on the wait for readiness at every (re)start.
    pub ready_timeout: Duration,
    /// Where the state record of a host mount goes (`gauntlet gc`).
    pub state_dir: PathBuf,
    /// Redis beside the orchestrators, when the run has the Redis store.
    pub redis: Option<RedisOptions>,
}

/// The labels of every resource of the run `run_id`.
pub fn labels(run_id: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    labels.insert(LABEL_RUN.to_owned(), run_id.to_owned());
    if let Some(me) = crate::local::owner_id() {
        labels.insert(
            LABEL_OWNER.to_owned(),
            format!("{}:{}", me.pid, me.start_ticks),
        );
    }
    labels
}

/// The network of the run `run_id`.
pub fn network_name(run_id: &str) -> String {
    format!("gauntlet-{run_id}")
}

fn container_name(run_id: &str, role: &str) -> String {
    format!("{run_id}-{role}")
}

/// Replica `i`'s container role: `orchestrator` for the first, as a
/// one-replica run has, `orchestrator-I` for the others.
fn replica_role(i: u8) -> String {
    if i == 0 {
        "orchestrator".to_owned()
    } else {
        format!("orchestrator-{i}")
    }
}

/// The orchestrator's provider URL: the `llm` proxy, by container name.
pub fn llm_base_url(run_id: &str) -> String {
    format!(
        "http://{}:{LLM_PROXY_PORT}/v1",
        container_name(run_id, "proxy")
    )
}

/// Replica `i`'s Redis URL: its own `redis[i]` link of the fault proxy, by
/// container name, so that a fault can cut one replica off Redis while the
/// others carry on.
pub fn redis_link_url(run_id: &str, i: u8) -> String {
    format!(
        "redis://{}:{}/0",
        container_name(run_id, "proxy"),
        REDIS_PROXY_PORT + u16::from(i)
    )
}

/// Checks a run id: it names DNS-resolvable containers and a network.
fn check_run_id(run_id: &str) -> Result<(), DockerError> {
    let ok = !run_id.is_empty()
        && run_id.len() <= MAX_RUN_ID_LEN
        && run_id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && run_id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DockerError::BadRunId {
            run_id: run_id.to_owned(),
        })
    }
}

/// `n` distinct free TCP ports on 127.0.0.1: all are held until all are
/// chosen (so none is handed out twice), then released for Docker to bind.
/// Another process could take one in between; the start then fails and
/// says so.
fn free_ports(n: usize) -> Result<Vec<u16>, DockerError> {
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|source| DockerError::Port { source })?;
        ports.push(
            listener
                .local_addr()
                .map_err(|source| DockerError::Port { source })?
                .port(),
        );
        held.push(listener);
    }
    Ok(ports)
}

/// Publishes every mapped port on 127.0.0.1 only: nothing of a run is
/// reachable from outside the machine.
fn loopback_only(host_config: &mut testcontainers::bollard::models::HostConfig) {
    if let Some(bindings) = host_config.port_bindings.as_mut() {
        for binding in bindings.values_mut().flatten().flatten() {
            binding.host_ip = Some(Ipv4Addr::LOCALHOST.to_string());
        }
    }
}

fn path_str(path: &Path) -> Result<String, DockerError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| DockerError::Setup {
            message: format!(
                "the run directory {} is not UTF-8, which Docker needs",
                path.display()
            ),
        })
}

fn create_dir(dir: &Path) -> Result<(), DockerError> {
    std::fs::create_dir_all(dir).map_err(|source| DockerError::File {
        action: "create",
        path: dir.to_owned(),
        source,
    })
}

/// What every container handle of a run shares: the engine, the network
/// and the harness's helper containers (the mock provider and the fault
/// proxy). They go with the last handle: [`Shared::release`] when it shuts
/// down, `Drop` otherwise.
struct Shared {
    docker: Docker,
    run_id: String,
    network: String,
    mock_port: u16,
    proxy_api_port: u16,
    ready_timeout: Duration,
    mock: Option<ContainerAsync<GenericImage>>,
    proxy: Option<ContainerAsync<GenericImage>>,
    /// Set when the run was interrupted: the watchdog and the detached
    /// `gauntlet gc` remove everything, and removing it here would race them.
    abandoned: AtomicBool,
    /// Everything was removed already.
    torn_down: bool,
}

impl Shared {
    fn labels_of(&self, role: &str) -> HashMap<String, String> {
        let mut labels = labels(&self.run_id);
        let kind = if role.starts_with("orchestrator") {
            "orchestrator"
        } else {
            role
        };
        labels.insert(LABEL_ROLE.to_owned(), kind.to_owned());
        labels
    }

    /// Starts one of the harness's own containers and waits for its
    /// `listening on` line.
    async fn helper(
        &self,
        role: &'static str,
        image: &ImageRef,
        args: &[&str],
        ports: &[(u16, u16)],
    ) -> Result<ContainerAsync<GenericImage>, DockerError> {
        let mut request = GenericImage::new(image.name(), image.tag())
            .with_wait_for(WaitFor::message_on_stdout("listening on"))
            .with_container_name(container_name(&self.run_id, role))
            .with_network(self.network.clone())
            .with_labels(self.labels_of(role))
            .with_startup_timeout(self.ready_timeout)
            .with_cmd(args.iter().map(|a| (*a).to_owned()))
            .with_host_config_modifier(loopback_only);
        for (host, inside) in ports {
            request = request.with_mapped_port(*host, ContainerPort::Tcp(*inside));
        }
        request.start().await.map_err(|e| DockerError::Start {
            role,
            message: e.to_string(),
        })
    }

    fn proxy_client(&self) -> Result<ProxyClient, String> {
        ProxyClient::new(&format!("http://127.0.0.1:{}", self.proxy_api_port))
            .map_err(|e| e.to_string())
    }

    async fn create_proxy(
        &self,
        proxy: &ProxyClient,
        name: &str,
        listen: u16,
        upstream: String,
    ) -> Result<(), DockerError> {
        proxy
            .create_proxy(&ProxyConfig::new(
                name,
                format!("0.0.0.0:{listen}"),
                upstream,
            ))
            .await
            .map(drop)
            .map_err(|e| DockerError::Setup {
                message: format!("cannot create the {name} proxy: {e}"),
            })
    }

    /// The last lines of the log of the container of `role`, for errors.
    async fn logs_of_name(&self, role: &str) -> String {
        let text =
            container_logs(&self.docker, &container_name(&self.run_id, role), Some(40)).await;
        text.unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Removes the helpers and the network when `shared` is the last
    /// handle of the run (the others went already); returns what failed.
    async fn release(shared: Arc<Shared>) -> Vec<String> {
        match Arc::try_unwrap(shared) {
            Ok(mut last) => last.remove_all().await,
            Err(_) => Vec::new(),
        }
    }

    async fn remove_all(&mut self) -> Vec<String> {
        self.torn_down = true;
        let mut errors = Vec::new();
        for (role, container) in [("proxy", self.proxy.take()), ("mock-llm", self.mock.take())] {
            if let Some(c) = container {
                let _ = c.stop_with_timeout(Some(HELPER_STOP_TIMEOUT_S)).await;
                if let Err(e) = c.rm().await {
                    errors.push(format!("cannot remove the {role} container: {e}"));
                }
            }
        }
        if let Err(e) = remove_network(&self.docker, &self.network).await {
            errors.push(e);
        }
        errors
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if self.abandoned.load(Ordering::SeqCst) {
            for container in [self.proxy.take(), self.mock.take()].into_iter().flatten() {
                std::mem::forget(container);
            }
            return;
        }
        // Containers go first (testcontainers removes each on drop,
        // synchronously), then the network they were attached to. The
        // replicas and Redis hold this, so theirs went already.
        drop(self.proxy.take());
        drop(self.mock.take());
        let docker = self.docker.clone();
        let network = self.network.clone();
        // A thread with a runtime of its own: Drop may run inside or outside
        // a runtime, and on a current-thread runtime blocking it would hang.
        let removed = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(remove_network(&docker, &network)))
        })
        .join();
        if !matches!(removed, Ok(Ok(Ok(())))) {
            eprintln!(
                "warning: the network {} may remain; `gauntlet gc` removes it",
                self.network
            );
        }
    }
}

/// A run's system in containers: its orchestrator replicas and, with the
/// Redis store, Redis. Dropping it removes every container and the network
/// (synchronously), so an error or a panic leaves nothing.
pub struct DockerDeployment {
    /// One per replica, in order (at least one).
    pub replicas: Vec<DockerSystem>,
    /// Redis, when the config asked for it.
    pub redis: Option<DockerRedis>,
}

impl DockerDeployment {
    /// Brings the system up; see the module docs. On an error, what was
    /// created is removed before returning.
    pub async fn start(config: DockerConfig) -> Result<DockerDeployment, DockerError> {
        check_run_id(&config.run_id)?;
        let count = config.configs.len();
        if count == 0 || count > MAX_REPLICAS as usize {
            return Err(DockerError::Setup {
                message: format!(
                    "a docker run has 1 to {MAX_REPLICAS} orchestrator replicas, not {count}"
                ),
            });
        }
        let docker = crate::images::engine().await?;
        crate::images::preflight(&docker, &config.images).await?;
        // The mock's and the proxy API's, then each replica's own and its
        // client link's, then Redis's.
        let ports = free_ports(2 + 2 * count + 1)?;
        let (mock_port, proxy_api_port) = (ports[0], ports[1]);
        let orchestrator_ports = &ports[2..2 + count];
        let client_ports = &ports[2 + count..2 + 2 * count];
        let redis_port = ports[2 + 2 * count];
        let network = network_name(&config.run_id);
        // From here on, `shared`'s Drop removes whatever exists.
        let mut shared = Shared {
            docker: docker.clone(),
            run_id: config.run_id.clone(),
            network: network.clone(),
            mock_port,
            proxy_api_port,
            ready_timeout: config.ready_timeout,
            mock: None,
            proxy: None,
            abandoned: AtomicBool::new(false),
            torn_down: false,
        };
        docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".to_owned()),
                labels: Some(labels(&config.run_id)),
                ..Default::default()
            })
            .await
            .map_err(|e| DockerError::api(format!("create the network {network}"), e))?;

        let harness_image = &config.images.harness;
        let seed = config.seed.to_string();
        let mock_listen = format!("0.0.0.0:{MOCK_PORT}");
        shared.mock = Some(
            shared
                .helper(
                    "mock-llm",
                    harness_image,
                    &["mock-llm", "--listen", &mock_listen, "--seed", &seed],
                    &[(mock_port, MOCK_PORT)],
                )
                .await?,
        );
        let proxy_listen = format!("0.0.0.0:{PROXY_API_PORT}");
        let mut published = vec![(proxy_api_port, PROXY_API_PORT)];
        published.extend(
            client_ports
                .iter()
                .zip(CLIENT_PROXY_PORT..)
                .map(|(host, inside)| (*host, inside)),
        );
        // Redis shares the proxy's network namespace, so its port is
        // published here, for the harness's final read.
        if config.redis.is_some() {
            published.push((redis_port, REDIS_PORT));
        }
        shared.proxy = Some(
            shared
                .helper(
                    "proxy",
                    harness_image,
                    &["proxy", "--listen", &proxy_listen, "--seed", &seed],
                    &published,
                )
                .await?,
        );
        let proxy = shared
            .proxy_client()
            .map_err(|message| DockerError::Setup { message })?;
        shared
            .create_proxy(
                &proxy,
                "llm",
                LLM_PROXY_PORT,
                format!("{}:{MOCK_PORT}", container_name(&config.run_id, "mock-llm")),
            )
            .await?;
        let shared = Arc::new(shared);

        let redis = match config.redis {
            None => None,
            Some(options) => {
                let redis = DockerRedis::start(
                    shared.clone(),
                    &config.images.redis,
                    &config.run_dir.join("redis"),
                    redis_port,
                    options,
                )
                .await?;
                for i in 0..count {
                    let i = u8::try_from(i).unwrap_or(u8::MAX);
                    shared
                        .create_proxy(
                            &proxy,
                            Link::Redis(i).as_str(),
                            REDIS_PROXY_PORT + u16::from(i),
                            format!("127.0.0.1:{REDIS_PORT}"),
                        )
                        .await?;
                }
                Some(redis)
            }
        };

        let mut replicas = Vec::with_capacity(count);
        for (i, yaml) in config.configs.iter().enumerate() {
            let i = u8::try_from(i).unwrap_or(u8::MAX);
            let role = replica_role(i);
            shared
                .create_proxy(
                    &proxy,
                    Link::Client(i).as_str(),
                    CLIENT_PROXY_PORT + u16::from(i),
                    format!(
                        "{}:{ORCHESTRATOR_PORT}",
                        container_name(&config.run_id, &role)
                    ),
                )
                .await?;
            // Replica 0 keeps the run directory itself, as a one-replica
            // run has, and the run id for its state record.
            let (run_dir, state_id) = if i == 0 {
                (config.run_dir.clone(), config.run_id.clone())
            } else {
                (
                    config.run_dir.join(format!("replica-{i}")),
                    format!("{}-r{i}", config.run_id),
                )
            };
            let replica = DockerSystem::start(Replica {
                shared: shared.clone(),
                role,
                run_dir,
                state_id,
                config_yaml: yaml,
                image: &config.images.orchestrator,
                seed: config.seed.wrapping_add(u64::from(i)),
                needs: &config.needs,
                state_dir: &config.state_dir,
                port: orchestrator_ports[usize::from(i)],
                client_port: client_ports[usize::from(i)],
            })
            .await?;
            replicas.push(replica);
        }
        Ok(DockerDeployment { replicas, redis })
    }

    /// Leaves every container and the network to testcontainers' watchdog
    /// and the detached `gauntlet gc` that a SIGINT or SIGTERM started (see
    /// [`DockerSystem::abandon`]).
    pub fn abandon(self) {
        for replica in self.replicas {
            replica.abandon();
        }
        if let Some(redis) = self.redis {
            redis.abandon();
        }
    }
}

/// What [`DockerSystem::start`] needs for one replica.
struct Replica<'a> {
    shared: Arc<Shared>,
    role: String,
    run_dir: PathBuf,
    state_id: String,
    config_yaml: &'a str,
    image: &'a ImageRef,
    seed: u64,
    needs: &'a DockerNeeds,
    state_dir: &'a Path,
    port: u16,
    client_port: u16,
}

/// The tmpfs mounted on the host at a replica's data directory, for
/// disk-full faults: unmounted (with its state record removed) on drop, so
/// an error or a panic leaves no mount.
struct DiskMount {
    bytes: u64,
    data_dir: PathBuf,
    state_dir: PathBuf,
    state_id: String,
    mounted: bool,
}

impl DiskMount {
    fn mount(
        bytes: u64,
        data_dir: &Path,
        state_dir: &Path,
        state_id: &str,
    ) -> Result<DiskMount, DockerError> {
        let record = crate::local::state::StateRecord {
            run_id: state_id.to_owned(),
            owner: crate::local::owner_id(),
            pids: Vec::new(),
            mounts: vec![data_dir.to_owned()],
            cgroups: Vec::new(),
        };
        record.save(state_dir).map_err(|source| DockerError::File {
            action: "write the state record in",
            path: state_dir.to_owned(),
            source,
        })?;
        crate::local::disk::mount_tmpfs(&format!("gauntlet-{state_id}-data"), data_dir, bytes)
            .map_err(|e| DockerError::Setup {
                message: e.to_string(),
            })?;
        Ok(DiskMount {
            bytes,
            data_dir: data_dir.to_owned(),
            state_dir: state_dir.to_owned(),
            state_id: state_id.to_owned(),
            mounted: true,
        })
    }

    /// Unmounts it and removes its state record; says what failed.
    fn unmount(mut self) -> Result<(), String> {
        self.mounted = false;
        crate::local::disk::unmount(&self.data_dir)
            .map_err(|e| format!("cannot unmount {}: {e}", self.data_dir.display()))?;
        crate::local::state::StateRecord::remove(&self.state_dir, &self.state_id)
            .map_err(|e| format!("cannot remove the state record: {e}"))
    }
}

impl Drop for DiskMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = crate::local::disk::unmount(&self.data_dir);
            let _ = crate::local::state::StateRecord::remove(&self.state_dir, &self.state_id);
        }
    }
}

/// One orchestrator replica in its container. Dropping it removes its
/// container (synchronously); the network and the helpers go with the
/// last handle of the run.
pub struct DockerSystem {
    // Fields drop in order: the container before the mount under its data
    // directory, both before the network and helpers `shared` holds.
    orchestrator: Option<ContainerAsync<GenericImage>>,
    disk: Option<DiskMount>,
    shared: Arc<Shared>,
    /// Its container's name.
    name: String,
    run_dir: PathBuf,
    data_dir: PathBuf,
    memory: bool,
    port: u16,
    client_port: u16,
    began: Instant,
    events: Mutex<Vec<ProcessEvent>>,
}

impl DockerSystem {
    async fn start(replica: Replica<'_>) -> Result<DockerSystem, DockerError> {
        let Replica {
            shared,
            role,
            run_dir,
            state_id,
            config_yaml,
            image,
            seed,
            needs,
            state_dir,
            port,
            client_port,
        } = replica;
        let data_dir = run_dir.join("data");
        create_dir(&data_dir)?;
        let name = container_name(&shared.run_id, &role);
        let mut system = DockerSystem {
            orchestrator: None,
            disk: None,
            shared,
            name,
            run_dir: run_dir.clone(),
            data_dir: data_dir.clone(),
            memory: needs.memory,
            port,
            client_port,
            began: Instant::now(),
            events: Mutex::new(Vec::new()),
        };
        if let Some(bytes) = needs.disk_tmpfs_bytes {
            system.disk = Some(DiskMount::mount(bytes, &data_dir, state_dir, &state_id)?);
        }
        let config_path = run_dir.join("orchestrator.yaml");
        std::fs::write(&config_path, config_yaml).map_err(|source| DockerError::File {
            action: "write",
            path: config_path.clone(),
            source,
        })?;
        let mount_dir = path_str(&run_dir)?;
        let memory = system.memory;
        let request = GenericImage::new(image.name(), image.tag())
            .with_wait_for(WaitFor::message_on_stdout("listening on"))
            .with_container_name(system.name.clone())
            .with_network(system.shared.network.clone())
            .with_labels(system.shared.labels_of(&role))
            .with_mount(Mount::bind_mount(mount_dir, RUN_DIR_IN_CONTAINER))
            .with_working_dir(RUN_DIR_IN_CONTAINER)
            .with_mapped_port(port, ContainerPort::Tcp(ORCHESTRATOR_PORT))
            .with_startup_timeout(system.shared.ready_timeout)
            .with_cmd([
                "serve".to_owned(),
                "--config".to_owned(),
                format!("{RUN_DIR_IN_CONTAINER}/orchestrator.yaml"),
                "--listen".to_owned(),
                format!("0.0.0.0:{ORCHESTRATOR_PORT}"),
                "--seed".to_owned(),
                seed.to_string(),
            ])
            .with_host_config_modifier(move |host| {
                loopback_only(host);
                if memory {
                    host.memory = Some(ROOMY_MEMORY_BYTES);
                    host.memory_swap = Some(ROOMY_MEMORY_BYTES);
                }
            });
        let orchestrator = match request.start().await {
            Ok(c) => c,
            Err(e) => {
                let tail = system.shared.logs_of_name(&role).await;
                return Err(DockerError::Start {
                    role: "orchestrator",
                    message: format!("{e}; last lines of its log:\n{tail}"),
                });
            }
        };
        system.orchestrator = Some(orchestrator);
        let pid = system.orchestrator_pid().await;
        system.event(EventKind::Started { pid });
        system.event(EventKind::Ready { pid });
        Ok(system)
    }

    /// The orchestrator's address on the host (127.0.0.1, published).
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// Its `client[i]` proxy's address on the host: where its share of the
    /// load goes.
    pub fn client_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.client_port).into()
    }

    /// The mock provider's root URL on the host (its admin API).
    pub fn mock_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.mock_port)
    }

    /// A client of the fault proxy's API.
    pub fn proxy_client(&self) -> Result<ProxyClient, String> {
        self.shared.proxy_client()
    }

    /// The run's network.
    pub fn network(&self) -> &str {
        &self.shared.network
    }

    /// The database file on the host (the data directory is bind-mounted).
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("orchestrator.db")
    }

    /// Where [`DockerSystem::shutdown_preserving`] writes the orchestrator's
    /// log (its container's stdout and stderr, every start of it).
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("orchestrator.log")
    }

    /// Everything that happened to the orchestrator's container so far.
    pub fn events(&self) -> Vec<ProcessEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn event(&self, kind: EventKind) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ProcessEvent {
                elapsed: self.began.elapsed(),
                kind,
            });
    }

    fn orchestrator(&self) -> Result<&ContainerAsync<GenericImage>, DockerError> {
        self.orchestrator.as_ref().ok_or(DockerError::Setup {
            message: format!("the orchestrator's container {} is gone", self.name),
        })
    }

    fn orchestrator_id(&self) -> Result<&str, DockerError> {
        self.orchestrator().map(|c| c.id())
    }

    /// Reads how the stopped orchestrator ended and records it as an
    /// `Exited` event; returns the exit and whether the kernel OOM-killed it.
    async fn record_exit(&self, pid: u32, expected: bool) -> (Exit, bool) {
        let (exit, oom) = self.exit_of().await;
        self.event(EventKind::Exited {
            pid,
            exit,
            oom,
            expected,
        });
        (exit, oom)
    }

    async fn inspect_orchestrator(&self) -> Result<ContainerState, DockerError> {
        inspect_state(&self.shared.docker, self.orchestrator_id()?, &self.name).await
    }

    /// The orchestrator's pid on the host (0 when it is not running).
    async fn orchestrator_pid(&self) -> u32 {
        self.inspect_orchestrator()
            .await
            .ok()
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0)
    }

    async fn exit_of(&self) -> (Exit, bool) {
        match self.inspect_orchestrator().await {
            Ok(state) => {
                let code = state.exit_code.unwrap_or(-1);
                // Docker reports a signal death as 128 + the signal.
                let exit = if code > 128 {
                    Exit::Signal(i32::try_from(code - 128).unwrap_or(-1))
                } else {
                    Exit::Code(i32::try_from(code).unwrap_or(-1))
                };
                (exit, state.oom_killed.unwrap_or(false))
            }
            Err(_) => (Exit::Unknown, false),
        }
    }

    /// Waits until the orchestrator answers `/health/live` on its published
    /// port, for at most the ready timeout.
    async fn await_ready(&self) -> Result<(), DockerError> {
        let url = format!("http://{}/health/live", self.addr());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| DockerError::Setup {
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        let ready_timeout = self.shared.ready_timeout;
        let deadline = tokio::time::Instant::now() + ready_timeout;
        loop {
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let tail = container_logs(&self.shared.docker, &self.name, Some(40))
                    .await
                    .unwrap_or_else(|e| format!("(no log: {e})"));
                return Err(DockerError::NotReady {
                    waited_ms: u64::try_from(ready_timeout.as_millis()).unwrap_or(u64::MAX),
                    tail,
                });
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
        }
    }

    /// SIGKILL through the Docker API; the container stays stopped until
    /// [`DockerSystem::start_again`].
    pub async fn kill(&self) -> Result<(), DockerError> {
        let id = self.orchestrator_id()?;
        let pid = self.orchestrator_pid().await;
        kill_container(&self.shared.docker, id, &self.name).await?;
        self.wait_stopped(KILL_WAIT).await?;
        self.record_exit(pid, true).await;
        Ok(())
    }

    /// Starts the orchestrator's container again and waits until it is
    /// ready; nothing to do when it runs.
    pub async fn start_again(&self) -> Result<(), DockerError> {
        if self.inspect_orchestrator().await?.running.unwrap_or(false) {
            return Ok(());
        }
        let container = self.orchestrator()?;
        container.start().await.map_err(|e| DockerError::Start {
            role: "orchestrator",
            message: e.to_string(),
        })?;
        let pid = self.orchestrator_pid().await;
        self.event(EventKind::Started { pid });
        self.await_ready().await?;
        self.event(EventKind::Ready { pid });
        Ok(())
    }

    /// Freezes the orchestrator's container (the cgroup freezer).
    pub async fn pause(&self) -> Result<(), DockerError> {
        let container = self.orchestrator()?;
        container.pause().await.map_err(|e| DockerError::Fault {
            fault: "pause",
            message: e.to_string(),
        })
    }

    /// Thaws it; nothing to do when it is not paused.
    pub async fn resume(&self) -> Result<(), DockerError> {
        if !self.inspect_orchestrator().await?.paused.unwrap_or(false) {
            return Ok(());
        }
        let container = self.orchestrator()?;
        container.unpause().await.map_err(|e| DockerError::Fault {
            fault: "resume",
            message: e.to_string(),
        })
    }

    /// Stops the orchestrator (SIGTERM, SIGKILL after 20 s) and starts it
    /// again, waited for.
    pub async fn restart(&self) -> Result<(), DockerError> {
        let pid = self.orchestrator_pid().await;
        self.stop_orchestrator().await?;
        self.record_exit(pid, true).await;
        self.start_again().await
    }

    async fn stop_orchestrator(&self) -> Result<(), DockerError> {
        let id = self.orchestrator_id()?;
        stop_container(&self.shared.docker, id, &self.name, STOP_TIMEOUT_S).await
    }

    async fn wait_stopped(&self, limit: Duration) -> Result<(), DockerError> {
        wait_not_running(
            &self.shared.docker,
            self.orchestrator_id()?,
            &self.name,
            limit,
        )
        .await
    }

    /// Cuts the mock provider's container off the run's network (`cut`),
    /// or connects it again.
    pub async fn partition_provider(&self, cut: bool) -> Result<(), DockerError> {
        let name = container_name(&self.shared.run_id, "mock-llm");
        let docker = &self.shared.docker;
        let network = &self.shared.network;
        if cut {
            docker
                .disconnect_network(
                    network,
                    NetworkDisconnectRequest {
                        container: name.clone(),
                        force: Some(true),
                    },
                )
                .await
                .map_err(|e| DockerError::api(format!("disconnect {name} from the network"), e))
        } else {
            docker
                .connect_network(
                    network,
                    NetworkConnectRequest {
                        container: name.clone(),
                        endpoint_config: Some(EndpointSettings::default()),
                    },
                )
                .await
                .map_err(|e| DockerError::api(format!("connect {name} to the network again"), e))
        }
    }

    fn disk_bytes(&self, fault: &'static str) -> Result<u64, DockerError> {
        self.disk
            .as_ref()
            .map(|d| d.bytes)
            .ok_or(DockerError::NotPrepared {
                fault,
                need: "disk_tmpfs_bytes",
            })
    }

    /// Fills the data tmpfs until ENOSPC; returns the bytes written.
    pub async fn disk_fill(&self) -> Result<u64, DockerError> {
        let bytes = self.disk_bytes("disk_fill")?;
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || crate::local::disk::fill(&dir, bytes))
            .await
            .map_err(|e| DockerError::Fault {
                fault: "disk_full",
                message: e.to_string(),
            })?
            .map_err(|e| DockerError::Fault {
                fault: "disk_full",
                message: e.to_string(),
            })
    }

    /// Deletes the filler file.
    pub async fn disk_release(&self) -> Result<(), DockerError> {
        self.disk_bytes("disk_release")?;
        crate::local::disk::release(&self.data_dir).map_err(|e| DockerError::Fault {
            fault: "disk_full",
            message: e.to_string(),
        })
    }

    /// Sets the orchestrator's memory limit to `limit_bytes` (memory and
    /// swap) and runs the hog inside its container until the kernel
    /// OOM-kills the orchestrator; fails unless the container's state says
    /// `OOMKilled`. The container stays down until [`DockerSystem::oom_end`].
    pub async fn oom(&self, limit_bytes: u64) -> Result<(), DockerError> {
        if !self.memory {
            return Err(DockerError::NotPrepared {
                fault: "oom",
                need: "memory",
            });
        }
        let id = self.orchestrator_id()?.to_owned();
        let pid = self.orchestrator_pid().await;
        self.set_memory(i64::try_from(limit_bytes).unwrap_or(i64::MAX))
            .await?;
        let hog_bytes = (limit_bytes.saturating_mul(2)).min(MAX_HOG_BYTES);
        let docker = &self.shared.docker;
        let exec = docker
            .create_exec(
                &id,
                ExecConfig {
                    cmd: Some(vec![
                        "/gauntlet".to_owned(),
                        "__hog".to_owned(),
                        "--bytes".to_owned(),
                        hog_bytes.to_string(),
                        "--victim-pid".to_owned(),
                        "1".to_owned(),
                    ]),
                    attach_stdout: Some(false),
                    attach_stderr: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| DockerError::api("create the memory hog in the orchestrator", e))?;
        docker
            .start_exec(
                &exec.id,
                Some(testcontainers::bollard::exec::StartExecOptions {
                    detach: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| DockerError::api("start the memory hog", e))?;
        self.wait_stopped(Duration::from_millis(OOM_WAIT_MS))
            .await?;
        let (exit, oom) = self.record_exit(pid, false).await;
        if oom {
            Ok(())
        } else {
            Err(DockerError::Fault {
                fault: "oom",
                message: format!(
                    "the orchestrator's container stopped ({exit}) but its state does not say OOMKilled"
                ),
            })
        }
    }

    /// Ends [`DockerSystem::oom`]: lifts the limit and starts the
    /// orchestrator again, waited for.
    pub async fn oom_end(&self) -> Result<(), DockerError> {
        self.set_memory(ROOMY_MEMORY_BYTES).await?;
        self.start_again().await
    }

    async fn set_memory(&self, bytes: i64) -> Result<(), DockerError> {
        let id = self.orchestrator_id()?;
        self.shared
            .docker
            .update_container(
                id,
                ContainerUpdateBody {
                    memory: Some(bytes),
                    memory_swap: Some(bytes),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| DockerError::api("set the orchestrator's memory limit", e))
    }

    /// Stops the orchestrator gracefully (SIGTERM, SIGKILL after 20 s),
    /// copies the database files into `preserve`, writes the container's log
    /// to [`DockerSystem::log_path`], then removes its container and the data
    /// mount, and, when it is the run's last handle, the helpers and the
    /// network. Errors of the teardown are returned after every step was
    /// tried.
    pub async fn shutdown_preserving(
        mut self,
        preserve: Option<&Path>,
    ) -> Result<ShutdownReport, DockerError> {
        // A paused container cannot stop gracefully.
        let _ = self.resume().await;
        let pid = self.orchestrator_pid().await;
        let was_running = self
            .inspect_orchestrator()
            .await
            .ok()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let stopped = if was_running {
            self.stop_orchestrator().await
        } else {
            Ok(())
        };
        let exit = if was_running {
            self.record_exit(pid, true).await.0
        } else {
            self.exit_of().await.0
        };
        let mut errors = Vec::new();
        if let Err(e) = stopped {
            errors.push(e.to_string());
        }
        if let Some(dest) = preserve
            && let Err(e) = crate::local::copy_data(&self.data_dir, dest)
        {
            errors.push(e.to_string());
        }
        match container_logs(&self.shared.docker, &self.name, None).await {
            Ok(text) => {
                if let Err(e) = std::fs::write(self.log_path(), text) {
                    errors.push(format!("cannot write {}: {e}", self.log_path().display()));
                }
            }
            Err(e) => errors.push(e),
        }
        let events = self.events();
        if let Some(c) = self.orchestrator.take()
            && let Err(e) = c.rm().await
        {
            errors.push(format!("cannot remove the container {}: {e}", self.name));
        }
        if let Some(disk) = self.disk.take()
            && let Err(e) = disk.unmount()
        {
            errors.push(e);
        }
        errors.extend(Shared::release(self.shared).await);
        let graceful = was_running && exit == Exit::Code(0);
        if errors.is_empty() {
            Ok(ShutdownReport {
                exit: was_running.then_some(exit),
                graceful,
                restarts: 0,
                events,
            })
        } else {
            Err(DockerError::Teardown {
                errors: errors.join("; "),
            })
        }
    }

    /// Leaves the containers and the network to testcontainers' watchdog and
    /// the detached `gauntlet gc` that a SIGINT or SIGTERM started (see
    /// `gauntlet run`): removing them here would race the watchdog, which
    /// ends the process once it has removed them. A data mount stays for
    /// `gauntlet gc` too (its state record names it).
    pub fn abandon(mut self) {
        self.shared.abandoned.store(true, Ordering::SeqCst);
        if let Some(container) = self.orchestrator.take() {
            std::mem::forget(container);
        }
        if let Some(disk) = self.disk.take() {
            std::mem::forget(disk);
        }
    }
}

/// The run's Redis server in its container: Debian's `redis-server`,
/// started with the local backend's arguments, its files in the run
/// directory's `redis/` (bind-mounted), in the proxy container's network
/// namespace (see the module docs), its port published on 127.0.0.1 for the
/// harness's final read. Dropping it removes its container.
pub struct DockerRedis {
    container: Option<ContainerAsync<GenericImage>>,
    shared: Arc<Shared>,
    /// Its container's name.
    name: String,
    port: u16,
    dir: PathBuf,
    appendonly: bool,
}

impl DockerRedis {
    async fn start(
        shared: Arc<Shared>,
        image: &ImageRef,
        dir: &Path,
        port: u16,
        options: RedisOptions,
    ) -> Result<DockerRedis, DockerError> {
        create_dir(dir)?;
        let mut redis = DockerRedis {
            container: None,
            name: container_name(&shared.run_id, "redis"),
            shared,
            port,
            dir: dir.to_owned(),
            appendonly: options.appendonly,
        };
        let appendonly = if options.appendonly { "yes" } else { "no" };
        // Not `with_network`: testcontainers would try to create a network
        // of that name. The mode is set on the host config instead, with no
        // ports of its own (Docker refuses them in this mode).
        let network_mode = format!(
            "container:{}",
            container_name(&redis.shared.run_id, "proxy")
        );
        let request = GenericImage::new(image.name(), image.tag())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_container_name(redis.name.clone())
            .with_labels(redis.shared.labels_of("redis"))
            .with_mount(Mount::bind_mount(path_str(dir)?, REDIS_DIR_IN_CONTAINER))
            .with_startup_timeout(redis.shared.ready_timeout)
            // The local backend's arguments (redis_server.rs), but listening
            // on every interface of the namespace (the published port
            // arrives on the proxy container's address), where no protected
            // mode is wanted: only the proxy and the harness reach it.
            .with_cmd(
                [
                    "--bind",
                    "0.0.0.0",
                    "--port",
                    &REDIS_PORT.to_string(),
                    "--protected-mode",
                    "no",
                    "--daemonize",
                    "no",
                    "--save",
                    "",
                    "--appendonly",
                    appendonly,
                    "--appendfsync",
                    "always",
                    "--dir",
                    REDIS_DIR_IN_CONTAINER,
                ]
                .map(str::to_owned),
            )
            .with_host_config_modifier(move |host| {
                host.network_mode = Some(network_mode.clone());
                host.publish_all_ports = None;
                host.port_bindings = None;
            });
        match request.start().await {
            Ok(container) => redis.container = Some(container),
            Err(e) => {
                let tail = redis.shared.logs_of_name("redis").await;
                return Err(DockerError::Start {
                    role: "redis",
                    message: format!("{e}; last lines of its log:\n{tail}"),
                });
            }
        }
        Ok(redis)
    }

    /// `127.0.0.1:PORT` on the host, the same across restarts.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// `redis://127.0.0.1:PORT/0`: where the harness reads it after the run.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr())
    }

    /// Whether writes are persisted before they are acknowledged.
    pub fn appendonly(&self) -> bool {
        self.appendonly
    }

    /// Where [`DockerRedis::stop`] writes its container's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn id(&self) -> Result<&str, DockerError> {
        self.container
            .as_ref()
            .map(|c| c.id())
            .ok_or(DockerError::Setup {
                message: format!("the redis container {} is gone", self.name),
            })
    }

    async fn state(&self) -> Result<ContainerState, DockerError> {
        inspect_state(&self.shared.docker, self.id()?, &self.name).await
    }

    /// SIGKILL through the Docker API: what was not persisted is gone. The
    /// container stays stopped until [`DockerRedis::start_again`].
    pub async fn kill(&self) -> Result<(), DockerError> {
        let id = self.id()?;
        kill_container(&self.shared.docker, id, &self.name).await?;
        wait_not_running(&self.shared.docker, id, &self.name, KILL_WAIT).await
    }

    /// Starts the container again after a kill (the same files, the same
    /// published port) and waits until Redis answers `PING`; nothing to do
    /// when it runs.
    pub async fn start_again(&self) -> Result<(), DockerError> {
        if self.state().await?.running.unwrap_or(false) {
            return Ok(());
        }
        let container = self.container.as_ref().ok_or(DockerError::Setup {
            message: format!("the redis container {} is gone", self.name),
        })?;
        container.start().await.map_err(|e| DockerError::Start {
            role: "redis",
            message: e.to_string(),
        })?;
        self.await_ready().await
    }

    /// Freezes its container (the cgroup freezer).
    pub async fn pause(&self) -> Result<(), DockerError> {
        self.shared
            .docker
            .pause_container(self.id()?)
            .await
            .map_err(|e| DockerError::api(format!("pause {}", self.name), e))
    }

    /// Thaws it; nothing to do when it is not paused.
    pub async fn resume(&self) -> Result<(), DockerError> {
        if !self.state().await?.paused.unwrap_or(false) {
            return Ok(());
        }
        self.shared
            .docker
            .unpause_container(self.id()?)
            .await
            .map_err(|e| DockerError::api(format!("unpause {}", self.name), e))
    }

    /// SIGTERM (Redis flushes its append-only file and exits; SIGKILL after
    /// 10 s), then started again, waited for.
    pub async fn restart(&self) -> Result<(), DockerError> {
        self.resume().await?;
        stop_container(
            &self.shared.docker,
            self.id()?,
            &self.name,
            REDIS_STOP_TIMEOUT_S,
        )
        .await?;
        self.start_again().await
    }

    async fn await_ready(&self) -> Result<(), DockerError> {
        let ready_timeout = self.shared.ready_timeout;
        let deadline = tokio::time::Instant::now() + ready_timeout;
        loop {
            if crate::local::redis_ping(self.addr()).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DockerError::Start {
                    role: "redis",
                    message: format!(
                        "no answer to PING on {} within {} ms; last lines of its log:\n{}",
                        self.addr(),
                        ready_timeout.as_millis(),
                        self.shared.logs_of_name("redis").await
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
        }
    }

    /// Stops Redis (SIGTERM, SIGKILL after 10 s), writes its log to
    /// [`DockerRedis::log_path`], removes its container and, when it is the
    /// run's last handle, the helpers and the network. Errors are returned
    /// after every step was tried.
    pub async fn stop(mut self) -> Result<(), DockerError> {
        let mut errors = Vec::new();
        if let Err(e) = self.resume().await {
            errors.push(e.to_string());
        }
        if let Ok(id) = self.id()
            && let Err(e) =
                stop_container(&self.shared.docker, id, &self.name, REDIS_STOP_TIMEOUT_S).await
        {
            errors.push(e.to_string());
        }
        match container_logs(&self.shared.docker, &self.name, None).await {
            Ok(text) => {
                if let Err(e) = std::fs::write(self.log_path(), text) {
                    errors.push(format!("cannot write {}: {e}", self.log_path().display()));
                }
            }
            Err(e) => errors.push(e),
        }
        if let Some(c) = self.container.take()
            && let Err(e) = c.rm().await
        {
            errors.push(format!("cannot remove the container {}: {e}", self.name));
        }
        errors.extend(Shared::release(self.shared).await);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DockerError::Teardown {
                errors: errors.join("; "),
            })
        }
    }

    /// Leaves its container to the watchdog, as [`DockerSystem::abandon`].
    pub fn abandon(mut self) {
        self.shared.abandoned.store(true, Ordering::SeqCst);
        if let Some(container) = self.container.take() {
            std::mem::forget(container);
        }
    }
}

/// The state of the container `id` (named `name` in errors).
async fn inspect_state(
    docker: &Docker,
    id: &str,
    name: &str,
) -> Result<ContainerState, DockerError> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(|e| DockerError::api(format!("inspect the container {name}"), e))?;
    Ok(info.state.unwrap_or_default())
}

/// SIGKILL to the container `id`.
async fn kill_container(docker: &Docker, id: &str, name: &str) -> Result<(), DockerError> {
    docker
        .kill_container(
            id,
            Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
        )
        .await
        .map_err(|e| DockerError::api(format!("kill the container {name}"), e))
}

/// `docker stop`: SIGTERM, SIGKILL after `timeout_s`.
async fn stop_container(
    docker: &Docker,
    id: &str,
    name: &str,
    timeout_s: i32,
) -> Result<(), DockerError> {
    docker
        .stop_container(
            id,
            Some(StopContainerOptionsBuilder::new().t(timeout_s).build()),
        )
        .await
        .map_err(|e| DockerError::api(format!("stop the container {name}"), e))
}

/// Waits until the container `id` no longer runs, for at most `limit`.
async fn wait_not_running(
    docker: &Docker,
    id: &str,
    name: &str,
    limit: Duration,
) -> Result<(), DockerError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !inspect_state(docker, id, name)
            .await?
            .running
            .unwrap_or(false)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DockerError::Fault {
                fault: "wait for a container to stop",
                message: format!("{name} still running after {} ms", limit.as_millis()),
            });
        }
        tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
    }
}

/// Removes a network; a missing one is fine.
pub(crate) async fn remove_network(docker: &Docker, name: &str) -> Result<(), String> {
    match docker.remove_network(name).await {
        Ok(()) => Ok(()),
        Err(testcontainers::bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }) => Ok(()),
        Err(e) => Err(format!("cannot remove the network {name}: {e}")),
    }
}

/// The stdout and stderr of a container, interleaved as written; the last
/// `tail` lines when given.
async fn container_logs(
    docker: &Docker,
    name: &str,
    tail: Option<usize>,
) -> Result<String, String> {
    let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
    let mut stream = docker.logs(
        name,
        Some(
            LogsOptionsBuilder::new()
                .stdout(true)
                .stderr(true)
                .tail(&tail)
                .build(),
        ),
    );
    let mut text = Vec::new();
    // A bound on what is read back: the report keeps the log, and a run's
    // log is far below this.
    const MAX_LOG_BYTES: usize = 64 << 20;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("cannot read the log of {name}: {e}"))?;
        text.extend_from_slice(&chunk.into_bytes());
        if text.len() > MAX_LOG_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}
