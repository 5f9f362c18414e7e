//! Bring-up, the first stage of a run: the whole system on either backend,
//! behind one interface ([`up`] gives a [`Rig`]), so the later stages do not
//! know which backend runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::system::{Deployment, Mock, Redis, System};
use super::{Backend, MAX_RESTARTS, READY_TIMEOUT, config};
use crate::docker::{DockerConfig, DockerDeployment, DockerNeeds, RedisOptions};
use crate::images::ImageNames;
use crate::local::{self, Launcher, LocalConfig, LocalSystem, Needs, RedisServer};
use crate::mock_llm::{MockClient, MockConfig, MockLlm};
use crate::proxy::{ProxyClient, ProxyConfig, ProxyServer, ProxyServerConfig};
use crate::scenario::{Link, Scenario, StoreKind};
use crate::sink::{SinkConfig, SinkLimits, Trap, WebhookSink};

/// Brings the system up for `scenario` on `backend`: the mock provider, the
/// fault proxy with its `llm` and `client` links, and the orchestrator with
/// the run's configuration, ready.
pub async fn up(
    backend: &Backend,
    scenario: &Scenario,
    seed: u64,
    run_id: &str,
    run_dir: &Path,
    needs: Needs,
) -> Result<Rig, String> {
    let rig = match backend {
        Backend::Local(launcher) => {
            bring_up_local(scenario, seed, run_id, run_dir, launcher, needs).await
        }
        Backend::Docker(images) => {
            bring_up_docker(scenario, seed, run_id, run_dir, images, &needs).await
        }
    }?;
    let standing = super::faults::standing_program(scenario);
    if !standing.rules.is_empty()
        && let Err(e) = rig.mock.install(standing).await
    {
        rig.abandon().await;
        return Err(format!(
            "cannot install the standing rules on the mock provider: {e}"
        ));
    }
    Ok(rig)
}

/// What a backend brought up, ready for the load and the faults.
pub struct Rig {
    /// The replicas and Redis.
    pub system: Arc<Deployment>,
    pub mock: Mock,
    pub proxy_client: ProxyClient,
    /// The in-process fault proxy of the local backend, shut down at the end.
    pub proxy: Option<ProxyServer>,
    pub run_config: config::RunConfig,
    /// Where the load goes: each replica's `client` proxy, in order.
    pub client_urls: Vec<String>,
    /// The first replica itself, for the harness's probes.
    pub direct: String,
    /// The webhook sink and trap, when the load sends webhooks (local
    /// backend only).
    pub webhooks: Option<RigWebhooks>,
}

/// The local backend: the mock provider and the fault proxy in this
/// process, the orchestrator a child process, all on loopback.
async fn bring_up_local(
    scenario: &Scenario,
    seed: u64,
    run_id: &str,
    run_dir: &Path,
    launcher: &Launcher,
    needs: Needs,
) -> Result<Rig, String> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mock = Arc::new(
        MockLlm::start(MockConfig {
            listen: loopback,
            seed,
            ..MockConfig::default()
        })
        .await
        .map_err(|e| format!("cannot start the mock LLM provider: {e}"))?,
    );
    let proxy = ProxyServer::start(ProxyServerConfig {
        listen: loopback,
        seed,
        ..ProxyServerConfig::default()
    })
    .await
    .map_err(|e| format!("cannot start the fault proxy: {e}"))?;
    let proxy_client = proxy
        .client()
        .map_err(|e| format!("cannot reach the fault proxy: {e}"))?;
    let llm_proxy = proxy_client
        .create_proxy(&ProxyConfig::new(
            "llm",
            "127.0.0.1:0",
            mock.addr().to_string(),
        ))
        .await
        .map_err(|e| format!("cannot create the llm proxy: {e}"))?;
    let secrets = config::webhook_secrets(seed);
    let webhooks = match scenario.load.webhooks {
        None => None,
        Some(_) => Some(start_webhooks(&secrets, seed).await?),
    };
    let run_config = config::render(
        scenario,
        seed,
        &format!("http://{}/v1", llm_proxy.listen),
        None,
        webhooks.as_ref().map(RigWebhooks::targets),
    )?;
    let redis = match scenario.system.store {
        StoreKind::Sqlite => None,
        StoreKind::Redis { appendonly } => Some(Redis::Local(Box::new(
            RedisServer::start(&run_dir.join("redis"), appendonly)
                .await
                .map_err(|e| format!("cannot start redis: {e}"))?,
        ))),
    };
    let mut replicas = Vec::new();
    let mut client_urls = Vec::new();
    let mut directs = Vec::new();
    for i in 0..u8::try_from(scenario.system.replicas).unwrap_or(1) {
        // Each replica reaches Redis through its own link, so that a fault
        // can cut one replica off while the others carry on.
        let yaml = match &redis {
            None | Some(Redis::Docker(_)) => run_config.yaml.clone(),
            Some(Redis::Local(server)) => {
                let link = proxy_client
                    .create_proxy(&ProxyConfig::new(
                        Link::Redis(i).as_str(),
                        "127.0.0.1:0",
                        server.addr().to_string(),
                    ))
                    .await
                    .map_err(|e| {
                        format!("cannot create the {} proxy: {e}", Link::Redis(i).as_str())
                    })?;
                config::on_redis(&run_config, &format!("redis://{}/0", link.listen))?
            }
        };
        // Replica 0 keeps the run directory itself, as a one-replica run has.
        let (id, dir) = if i == 0 {
            (run_id.to_owned(), run_dir.to_path_buf())
        } else {
            let dir = run_dir.join(format!("replica-{i}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            (format!("{run_id}-r{i}"), dir)
        };
        let mut local_config = LocalConfig::new(id, dir, yaml, launcher.clone());
        if webhooks.is_some() {
            local_config.env = config::WEBHOOK_SECRET_ENVS
                .iter()
                .zip(secrets.iter().cloned())
                .map(|(k, v)| ((*k).to_owned(), v))
                .collect();
        }
        local_config.seed = seed.wrapping_add(u64::from(i));
        local_config.needs = needs.clone();
        local_config.ready_timeout = READY_TIMEOUT;
        local_config.max_restarts = MAX_RESTARTS;
        let system = LocalSystem::start(local_config)
            .await
            .map_err(|e| format!("cannot start orchestrator replica {i}: {e}"))?;
        let client_proxy = proxy_client
            .create_proxy(&ProxyConfig::new(
                Link::Client(i).as_str(),
                "127.0.0.1:0",
                system.addr().to_string(),
            ))
            .await
            .map_err(|e| format!("cannot create the {} proxy: {e}", Link::Client(i).as_str()))?;
        client_urls.push(format!("http://{}", client_proxy.listen));
        directs.push(format!("http://{}", system.addr()));
        replicas.push(System::Local(system));
    }
    Ok(Rig {
        direct: directs.first().cloned().unwrap_or_default(),
        system: Arc::new(Deployment { replicas, redis }),
        mock: Mock::Local(mock),
        proxy_client,
        proxy: Some(proxy),
        run_config,
        client_urls,
        webhooks,
    })
}

/// The webhook sink (verifying with both of the run's secrets) and the trap.
async fn start_webhooks(secrets: &[String], seed: u64) -> Result<RigWebhooks, String> {
    let sink = WebhookSink::start(SinkConfig {
        secrets: secrets.iter().map(|s| s.clone().into_bytes()).collect(),
        seed,
        limits: SinkLimits::default(),
    })
    .await
    .map_err(|e| format!("cannot start the webhook sink: {e}"))?;
    let trap = Trap::start()
        .await
        .map_err(|e| format!("cannot start the webhook trap: {e}"))?;
    Ok(RigWebhooks {
        sink: Arc::new(sink),
        trap,
    })
}

/// A run's webhook receivers, in this process.
pub struct RigWebhooks {
    /// Records and answers deliveries.
    pub sink: Arc<WebhookSink>,
    /// Counts connections that should never come.
    pub trap: Trap,
}

impl RigWebhooks {
    /// Their ports, for the configuration and the load.
    pub fn targets(&self) -> config::WebhookTargets {
        config::WebhookTargets {
            sink_port: self.sink.addr().port(),
            trap_port: self.trap.addr().port(),
        }
    }
}

/// The Docker backend: every service in its own container on the run's
/// network ([`crate::docker`]), each replica behind its own `client[i]` and
/// `redis[i]` links of the proxy container.
async fn bring_up_docker(
    scenario: &Scenario,
    seed: u64,
    run_id: &str,
    run_dir: &Path,
    images: &ImageNames,
    needs: &Needs,
) -> Result<Rig, String> {
    let listen: SocketAddr = ([0, 0, 0, 0], crate::docker::ORCHESTRATOR_PORT).into();
    let run_config = config::render(
        scenario,
        seed,
        &crate::docker::llm_base_url(run_id),
        Some(listen),
        None,
    )?;
    let redis = match scenario.system.store {
        StoreKind::Sqlite => None,
        StoreKind::Redis { appendonly } => Some(RedisOptions { appendonly }),
    };
    let configs = (0..u8::try_from(scenario.system.replicas).unwrap_or(1))
        .map(|i| match redis {
            None => Ok(run_config.yaml.clone()),
            Some(_) => config::on_redis(&run_config, &crate::docker::redis_link_url(run_id, i)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deployment = DockerDeployment::start(DockerConfig {
        run_id: run_id.to_owned(),
        run_dir: run_dir.to_path_buf(),
        configs,
        images: images.clone(),
        seed,
        needs: DockerNeeds {
            disk_tmpfs_bytes: needs.disk_tmpfs_bytes,
            memory: needs.memory,
        },
        ready_timeout: READY_TIMEOUT,
        state_dir: local::default_state_dir(),
        redis,
    })
    .await
    .map_err(|e| format!("cannot bring the system up in containers: {e}"))?;
    let first = deployment
        .replicas
        .first()
        .ok_or_else(|| "the docker deployment has no replica".to_owned())?;
    let proxy_client = first.proxy_client()?;
    let mock = MockClient::new(&first.mock_url()).map_err(|e| e.to_string())?;
    let direct = format!("http://{}", first.addr());
    let client_urls = deployment
        .replicas
        .iter()
        .map(|r| format!("http://{}", r.client_addr()))
        .collect();
    let DockerDeployment { replicas, redis } = deployment;
    Ok(Rig {
        direct,
        client_urls,
        system: Arc::new(Deployment {
            replicas: replicas
                .into_iter()
                .map(|r| System::Docker(Box::new(r)))
                .collect(),
            redis: redis.map(|r| Redis::Docker(Box::new(r))),
        }),
        mock: Mock::Remote(mock),
        proxy_client,
        proxy: None,
        run_config,
        webhooks: None,
    })
}

impl Rig {
    /// Tears everything down after an interrupted run, without waiting for
    /// a graceful stop.
    pub async fn abandon(self) {
        if let Ok(deployment) = Arc::try_unwrap(self.system) {
            for replica in deployment.replicas {
                match replica {
                    // The watchdog removes the containers on the signal that
                    // cancelled the run; removing them here too would race it.
                    System::Docker(docker) => docker.abandon(),
                    local => drop(local),
                }
            }
            if let Some(redis) = deployment.redis {
                redis.abandon().await;
            }
        }
        if let Some(proxy) = self.proxy {
            proxy.shutdown().await;
        }
    }
}
