//! The Docker backend of the scenario engine: the same topology as the local
//! backend, each service in a container of its own on a network of the run.
//!
//! ```text
//!  harness ──127.0.0.1:P──▶ proxy ──client──▶ orchestrator ──llm──▶ proxy ──▶ mock-llm
//!                          (fault proxy)                     (same proxy)    (mock provider)
//! ```
//!
//! [`DockerSystem::start`] creates the network `gauntlet-<run id>`, then the
//! mock LLM provider and the fault proxy from the harness image, creates the
//! `llm` and `client` proxies through the proxy's API, and starts the
//! orchestrator from its image, waiting for its `listening on` line. Every
//! container and the network carry the labels of [`labels`], which is how
//! `gauntlet gc` finds what a killed harness left behind. Ports are published
//! on 127.0.0.1 only, at host ports chosen once, so that a restarted
//! container keeps its address.
//!
//! Containers run through `testcontainers` (with its `watchdog`, which stops
//! and removes them on SIGINT/SIGTERM; there is no reaper container). The
//! network and the faults that testcontainers has no verb for go through
//! bollard, which it re-exports.
//!
//! The faults and how they work:
//! - kill / pause / resume / restart: the Docker API (SIGKILL, the freezer,
//!   stop and start).
//! - partition of the `llm` link: the mock provider's container is
//!   disconnected from the network and reconnected after (the `client` link
//!   goes through the proxy, because cutting the orchestrator off the network
//!   would cut its provider link and the harness's probes with it).
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
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use testcontainers::bollard::Docker;
use testcontainers::bollard::models::{
    ContainerUpdateBody, EndpointSettings, ExecConfig, NetworkConnectRequest, NetworkCreateRequest,
    NetworkDisconnectRequest,
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

use crate::images::ImageNames;
use crate::local::{EventKind, Exit, ProcessEvent, ShutdownReport};
use crate::proxy::{ProxyClient, ProxyConfig};

/// The label every resource of a run carries: its run id.
pub const LABEL_RUN: &str = "gauntlet.run";
/// The label naming a container's role (`orchestrator`, `proxy`, `mock-llm`).
pub const LABEL_ROLE: &str = "gauntlet.role";
/// The label naming the harness process that owns the run, as
/// `PID:START_TICKS` (a pid alone could be reused).
pub const LABEL_OWNER: &str = "gauntlet.owner";

/// The orchestrator's port inside its container.
pub const ORCHESTRATOR_PORT: u16 = 8080;
/// The mock provider's port inside its container.
pub const MOCK_PORT: u16 = 8081;
/// The fault proxy's API port inside its container (Toxiproxy's).
pub const PROXY_API_PORT: u16 = 8474;
/// The `llm` proxy's listen port inside the proxy container.
pub const LLM_PROXY_PORT: u16 = 9000;
/// The `client` proxy's listen port inside the proxy container.
pub const CLIENT_PROXY_PORT: u16 = 9001;
/// Where the run directory (config, `data/`) is mounted in the orchestrator.
pub const RUN_DIR_IN_CONTAINER: &str = "/gauntlet-run";

/// How long a stopped orchestrator gets to exit gracefully before SIGKILL.
const STOP_TIMEOUT_S: i32 = 20;
/// How long the harness's helper containers get on stop (they exit at once
/// on SIGTERM).
const HELPER_STOP_TIMEOUT_S: i32 = 5;
/// How long the memory hog may take to get the orchestrator killed.
const OOM_WAIT_MS: u64 = 30_000;
/// The most the hog allocates, whatever the limit: a bound on a fault that
/// misfires (no limit applied) on the host's memory.
const MAX_HOG_BYTES: u64 = 1 << 30;
/// The memory limit outside an OOM fault when the run has one (the limit
/// and swap are set together, and Docker cannot lift a limit once set).
const ROOMY_MEMORY_BYTES: i64 = 4 << 30;
/// How often readiness is polled after a start.
const READY_POLL_MS: u64 = 50;
/// Longest run id: container names are DNS names (at most 63 characters),
/// made of the run id and a role.
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

/// One run's Docker system.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// Names the network, the containers and their labels (1 to 48 of
    /// `a-z 0-9 . _ -`, starting with a letter or digit).
    pub run_id: String,
    /// An existing host directory, bind-mounted into the orchestrator's
    /// container: it holds `orchestrator.yaml` and `data/`.
    pub run_dir: PathBuf,
    /// The orchestrator's config; its `server.listen` should be
    /// `0.0.0.0:8080` and its database `data/orchestrator.db`.
    pub config_yaml: String,
    /// The images to run.
    pub images: ImageNames,
    /// Seed of the services' random choices.
    pub seed: u64,
    /// Fault machinery to prepare.
    pub needs: DockerNeeds,
    /// Bound on the wait for readiness at every (re)start.
    pub ready_timeout: Duration,
    /// Where the state record of a host mount goes (`gauntlet gc`).
    pub state_dir: PathBuf,
}

/// Host ports of the run, chosen once.
#[derive(Clone, Copy, Debug)]
struct HostPorts {
    orchestrator: u16,
    mock: u16,
    proxy_api: u16,
    client: u16,
}

/// A running system in containers. Dropping it removes its containers and
/// its network (synchronously), so an error or a panic leaves nothing.
pub struct DockerSystem {
    docker: Docker,
    run_id: String,
    network: String,
    run_dir: PathBuf,
    data_dir: PathBuf,
    disk_bytes: Option<u64>,
    memory: bool,
    ports: HostPorts,
    ready_timeout: Duration,
    state_dir: PathBuf,
    began: Instant,
    events: Mutex<Vec<ProcessEvent>>,
    orchestrator: Option<ContainerAsync<GenericImage>>,
    proxy: Option<ContainerAsync<GenericImage>>,
    mock: Option<ContainerAsync<GenericImage>>,
    torn_down: bool,
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

/// The orchestrator's provider URL: the `llm` proxy, by container name.
pub fn llm_base_url(run_id: &str) -> String {
    format!(
        "http://{}:{LLM_PROXY_PORT}/v1",
        container_name(run_id, "proxy")
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

/// `N` distinct free TCP ports on 127.0.0.1: all are held until all are
/// chosen (so none is handed out twice), then released for Docker to bind.
/// Another process could take one in between; the start then fails and
/// says so.
fn free_ports<const N: usize>() -> Result<[u16; N], DockerError> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|source| DockerError::Port { source })?;
        *port = listener
            .local_addr()
            .map_err(|source| DockerError::Port { source })?
            .port();
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

impl DockerSystem {
    /// Brings the system up; see the module docs. On an error, what was
    /// created is removed before returning.
    pub async fn start(config: DockerConfig) -> Result<DockerSystem, DockerError> {
        check_run_id(&config.run_id)?;
        let docker = crate::images::engine().await?;
        crate::images::preflight(&docker, &config.images).await?;
        let [orchestrator, mock, proxy_api, client] = free_ports()?;
        let ports = HostPorts {
            orchestrator,
            mock,
            proxy_api,
            client,
        };
        let network = network_name(&config.run_id);
        let data_dir = config.run_dir.join("data");
        std::fs::create_dir_all(&data_dir).map_err(|source| DockerError::File {
            action: "create",
            path: data_dir.clone(),
            source,
        })?;
        let mut system = DockerSystem {
            docker: docker.clone(),
            run_id: config.run_id.clone(),
            network: network.clone(),
            run_dir: config.run_dir.clone(),
            data_dir: data_dir.clone(),
            disk_bytes: None,
            memory: config.needs.memory,
            ports,
            ready_timeout: config.ready_timeout,
            state_dir: config.state_dir.clone(),
            began: Instant::now(),
            events: Mutex::new(Vec::new()),
            orchestrator: None,
            proxy: None,
            mock: None,
            torn_down: false,
        };
        // From here on, `system`'s Drop removes whatever exists.
        if let Some(bytes) = config.needs.disk_tmpfs_bytes {
            system.mount_data_tmpfs(bytes)?;
        }
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
        system.mock = Some(
            system
                .helper(
                    "mock-llm",
                    harness_image,
                    &["mock-llm", "--listen", &mock_listen, "--seed", &seed],
                    &[(ports.mock, MOCK_PORT)],
                )
                .await?,
        );
        let proxy_listen = format!("0.0.0.0:{PROXY_API_PORT}");
        system.proxy = Some(
            system
                .helper(
                    "proxy",
                    harness_image,
                    &["proxy", "--listen", &proxy_listen, "--seed", &seed],
                    &[
                        (ports.proxy_api, PROXY_API_PORT),
                        (ports.client, CLIENT_PROXY_PORT),
                    ],
                )
                .await?,
        );
        let proxy = system
            .proxy_client()
            .map_err(|message| DockerError::Setup { message })?;
        for (name, listen, upstream) in [
            (
                "llm",
                LLM_PROXY_PORT,
                format!("{}:{MOCK_PORT}", container_name(&config.run_id, "mock-llm")),
            ),
            (
                "client",
                CLIENT_PROXY_PORT,
                format!(
                    "{}:{ORCHESTRATOR_PORT}",
                    container_name(&config.run_id, "orchestrator")
                ),
            ),
        ] {
            proxy
                .create_proxy(&ProxyConfig::new(
                    name,
                    format!("0.0.0.0:{listen}"),
                    upstream,
                ))
                .await
                .map_err(|e| DockerError::Setup {
                    message: format!("cannot create the {name} proxy: {e}"),
                })?;
        }

        let config_path = config.run_dir.join("orchestrator.yaml");
        std::fs::write(&config_path, &config.config_yaml).map_err(|source| DockerError::File {
            action: "write",
            path: config_path.clone(),
            source,
        })?;
        let run_dir = config
            .run_dir
            .to_str()
            .ok_or_else(|| DockerError::Setup {
                message: format!(
                    "the run directory {} is not UTF-8, which Docker needs",
                    config.run_dir.display()
                ),
            })?
            .to_owned();
        let memory = system.memory;
        let request = GenericImage::new(
            config.images.orchestrator.name(),
            config.images.orchestrator.tag(),
        )
        .with_wait_for(WaitFor::message_on_stdout("listening on"))
        .with_container_name(container_name(&config.run_id, "orchestrator"))
        .with_network(network.clone())
        .with_labels(system.labels_of("orchestrator"))
        .with_mount(Mount::bind_mount(run_dir, RUN_DIR_IN_CONTAINER))
        .with_working_dir(RUN_DIR_IN_CONTAINER)
        .with_mapped_port(ports.orchestrator, ContainerPort::Tcp(ORCHESTRATOR_PORT))
        .with_startup_timeout(config.ready_timeout)
        .with_cmd([
            "serve".to_owned(),
            "--config".to_owned(),
            format!("{RUN_DIR_IN_CONTAINER}/orchestrator.yaml"),
            "--listen".to_owned(),
            format!("0.0.0.0:{ORCHESTRATOR_PORT}"),
            "--seed".to_owned(),
            seed.clone(),
        ])
        .with_host_config_modifier(move |host| {
            loopback_only(host);
            if memory {
                host.memory = Some(ROOMY_MEMORY_BYTES);
                host.memory_swap = Some(ROOMY_MEMORY_BYTES);
            }
        });
        let started = request.start().await.map_err(|e| DockerError::Start {
            role: "orchestrator",
            message: e.to_string(),
        });
        let orchestrator = match started {
            Ok(c) => c,
            Err(e) => {
                let tail = system.logs_of_name("orchestrator").await;
                return Err(match e {
                    DockerError::Start { role, message } => DockerError::Start {
                        role,
                        message: format!("{message}; last lines of its log:\n{tail}"),
                    },
                    other => other,
                });
            }
        };
        system.orchestrator = Some(orchestrator);
        let pid = system.orchestrator_pid().await;
        system.event(EventKind::Started { pid });
        system.event(EventKind::Ready { pid });
        Ok(system)
    }

    /// Starts one of the harness's own containers and waits for its
    /// `listening on` line.
    async fn helper(
        &self,
        role: &'static str,
        image: &crate::images::ImageRef,
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

    fn labels_of(&self, role: &str) -> HashMap<String, String> {
        let mut labels = labels(&self.run_id);
        labels.insert(LABEL_ROLE.to_owned(), role.to_owned());
        labels
    }

    fn mount_data_tmpfs(&mut self, bytes: u64) -> Result<(), DockerError> {
        let record = crate::local::state::StateRecord {
            run_id: self.run_id.clone(),
            owner: crate::local::owner_id(),
            pids: Vec::new(),
            mounts: vec![self.data_dir.clone()],
            cgroups: Vec::new(),
        };
        record
            .save(&self.state_dir)
            .map_err(|source| DockerError::File {
                action: "write the state record in",
                path: self.state_dir.clone(),
                source,
            })?;
        crate::local::disk::mount_tmpfs(
            &format!("gauntlet-{}-data", self.run_id),
            &self.data_dir,
            bytes,
        )
        .map_err(|e| DockerError::Setup {
            message: e.to_string(),
        })?;
        self.disk_bytes = Some(bytes);
        Ok(())
    }

    /// The orchestrator's address on the host (127.0.0.1, published).
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.ports.orchestrator).into()
    }

    /// The `client` proxy's address on the host: where the load goes.
    pub fn client_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.ports.client).into()
    }

    /// The mock provider's root URL on the host (its admin API).
    pub fn mock_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.mock)
    }

    /// A client of the fault proxy's API.
    pub fn proxy_client(&self) -> Result<ProxyClient, String> {
        ProxyClient::new(&format!("http://127.0.0.1:{}", self.ports.proxy_api))
            .map_err(|e| e.to_string())
    }

    /// The run's network.
    pub fn network(&self) -> &str {
        &self.network
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
            message: "the orchestrator's container is gone".to_owned(),
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

    async fn inspect_orchestrator(
        &self,
    ) -> Result<testcontainers::bollard::models::ContainerState, DockerError> {
        let id = self.orchestrator_id()?;
        let info = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| DockerError::api("inspect the orchestrator's container", e))?;
        Ok(info.state.unwrap_or_default())
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
        let deadline = tokio::time::Instant::now() + self.ready_timeout;
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
                let tail = self.logs_of_name("orchestrator").await;
                return Err(DockerError::NotReady {
                    waited_ms: u64::try_from(self.ready_timeout.as_millis()).unwrap_or(u64::MAX),
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
        self.docker
            .kill_container(
                id,
                Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
            )
            .await
            .map_err(|e| DockerError::api("kill the orchestrator's container", e))?;
        self.wait_stopped(Duration::from_secs(10)).await?;
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
        self.docker
            .stop_container(
                id,
                Some(StopContainerOptionsBuilder::new().t(STOP_TIMEOUT_S).build()),
            )
            .await
            .map_err(|e| DockerError::api("stop the orchestrator's container", e))
    }

    async fn wait_stopped(&self, limit: Duration) -> Result<(), DockerError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.inspect_orchestrator().await?.running.unwrap_or(false) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DockerError::Fault {
                    fault: "wait for the orchestrator to stop",
                    message: format!("still running after {} ms", limit.as_millis()),
                });
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
        }
    }

    /// Cuts the mock provider's container off the run's network (`cut`),
    /// or connects it again.
    pub async fn partition_provider(&self, cut: bool) -> Result<(), DockerError> {
        let name = container_name(&self.run_id, "mock-llm");
        if cut {
            self.docker
                .disconnect_network(
                    &self.network,
                    NetworkDisconnectRequest {
                        container: name.clone(),
                        force: Some(true),
                    },
                )
                .await
                .map_err(|e| DockerError::api(format!("disconnect {name} from the network"), e))
        } else {
            self.docker
                .connect_network(
                    &self.network,
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
        self.disk_bytes.ok_or(DockerError::NotPrepared {
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
        let exec = self
            .docker
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
        self.docker
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
        self.docker
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

    /// The last lines of the log of the container of `role`, for errors.
    async fn logs_of_name(&self, role: &str) -> String {
        let text =
            container_logs(&self.docker, &container_name(&self.run_id, role), Some(40)).await;
        text.unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Stops the orchestrator gracefully (SIGTERM, SIGKILL after 20 s),
    /// copies the database files into `preserve`, writes the container's log
    /// to [`DockerSystem::log_path`], then removes the containers, the
    /// network and the data mount. Errors of the teardown are returned after
    /// every step was tried.
    pub async fn shutdown_preserving(
        mut self,
        preserve: Option<&Path>,
    ) -> Result<ShutdownReport, DockerError> {
        self.torn_down = true;
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
        match container_logs(
            &self.docker,
            &container_name(&self.run_id, "orchestrator"),
            None,
        )
        .await
        {
            Ok(text) => {
                if let Err(e) = std::fs::write(self.log_path(), text) {
                    errors.push(format!("cannot write {}: {e}", self.log_path().display()));
                }
            }
            Err(e) => errors.push(e),
        }
        errors.extend(self.remove_all().await);
        let graceful = was_running && exit == Exit::Code(0);
        if errors.is_empty() {
            Ok(ShutdownReport {
                exit: was_running.then_some(exit),
                graceful,
                restarts: 0,
                events: self.events(),
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
    /// ends the process once it has removed them.
    pub fn abandon(mut self) {
        self.torn_down = true;
        for container in [
            self.orchestrator.take(),
            self.proxy.take(),
            self.mock.take(),
        ]
        .into_iter()
        .flatten()
        {
            std::mem::forget(container);
        }
    }

    /// Removes the containers, then the network, then the data mount and its
    /// state record; returns what failed.
    async fn remove_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for (role, container) in [
            ("orchestrator", self.orchestrator.take()),
            ("proxy", self.proxy.take()),
            ("mock-llm", self.mock.take()),
        ] {
            if let Some(c) = container {
                if role != "orchestrator" {
                    let _ = c.stop_with_timeout(Some(HELPER_STOP_TIMEOUT_S)).await;
                }
                if let Err(e) = c.rm().await {
                    errors.push(format!("cannot remove the {role} container: {e}"));
                }
            }
        }
        if let Err(e) = remove_network(&self.docker, &self.network).await {
            errors.push(e);
        }
        if self.disk_bytes.take().is_some() {
            if let Err(e) = crate::local::disk::unmount(&self.data_dir) {
                errors.push(format!("cannot unmount {}: {e}", self.data_dir.display()));
            } else if let Err(e) =
                crate::local::state::StateRecord::remove(&self.state_dir, &self.run_id)
            {
                errors.push(format!("cannot remove the state record: {e}"));
            }
        }
        errors
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

impl Drop for DockerSystem {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        // Containers go first (testcontainers removes each on drop,
        // synchronously), then the network they were attached to.
        drop(self.orchestrator.take());
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
        if self.disk_bytes.is_some() {
            let _ = crate::local::disk::unmount(&self.data_dir);
            let _ = crate::local::state::StateRecord::remove(&self.state_dir, &self.run_id);
        }
    }
}
