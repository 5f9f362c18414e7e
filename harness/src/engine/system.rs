//! What the engine drives, whichever backend runs it: the orchestrator (a
//! child process or a container) and the mock provider (in this process or
//! in a container, reached through its admin API). The fault executor and
//! the run's end go through these, so the rest of the engine does not know
//! which backend it has.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::docker::{DockerRedis, DockerSystem};
use crate::local::{LocalSystem, ProcessEvent, RedisServer, ShutdownReport};
use crate::mock_llm::{CallsPage, MockClient, MockLlm, Program};
use crate::scenario::{Link, Process};

/// Everything of the system under test a run drives: its orchestrator
/// replicas and, with the Redis store, the Redis server they share.
pub struct Deployment {
    /// One per replica, in order (at least one).
    pub replicas: Vec<System>,
    /// The Redis server, with the Redis store.
    pub redis: Option<Redis>,
}

impl Deployment {
    /// Replica `i`.
    pub fn replica(&self, i: u8) -> Result<&System, String> {
        self.replicas
            .get(usize::from(i))
            .ok_or_else(|| format!("there is no replica {i}"))
    }

    /// The first replica: where a one-replica system's probes and final
    /// reads go.
    pub fn first(&self) -> &System {
        // `up` never builds a deployment without a replica.
        &self.replicas[0]
    }

    fn redis(&self) -> Result<&Redis, String> {
        self.redis
            .as_ref()
            .ok_or_else(|| "the system has no redis".to_owned())
    }

    /// SIGKILL `process`; down until [`Deployment::start_again`].
    pub async fn kill(&self, process: Process) -> Result<(), String> {
        match process {
            Process::Orchestrator(i) => self.replica(i)?.kill().await,
            Process::Redis => self.redis()?.kill().await,
        }
    }

    /// Starts `process` again after a kill, waited for.
    pub async fn start_again(&self, process: Process) -> Result<(), String> {
        match process {
            Process::Orchestrator(i) => self.replica(i)?.start_again().await,
            Process::Redis => self.redis()?.start_again().await,
        }
    }

    /// Freezes `process`.
    pub async fn pause(&self, process: Process) -> Result<(), String> {
        match process {
            Process::Orchestrator(i) => self.replica(i)?.pause().await,
            Process::Redis => self.redis()?.pause().await,
        }
    }

    /// Thaws `process`.
    pub async fn resume(&self, process: Process) -> Result<(), String> {
        match process {
            Process::Orchestrator(i) => self.replica(i)?.resume().await,
            Process::Redis => self.redis()?.resume().await,
        }
    }

    /// Graceful stop and start of `process`, waited for.
    pub async fn restart(&self, process: Process) -> Result<(), String> {
        match process {
            Process::Orchestrator(i) => self.replica(i)?.restart().await,
            Process::Redis => self.redis()?.restart().await,
        }
    }

    /// Every replica's events, by time since its own start (the replicas
    /// start within moments of each other).
    pub fn events(&self) -> Vec<ProcessEvent> {
        let mut all: Vec<ProcessEvent> = self.replicas.iter().flat_map(System::events).collect();
        all.sort_by_key(|e| e.elapsed);
        all
    }
}

/// The Redis server of one run, on either backend.
pub enum Redis {
    /// A child process on loopback (boxed: the handle is large, and there
    /// is one per run).
    Local(Box<RedisServer>),
    /// A container on the run's network (boxed likewise).
    Docker(Box<DockerRedis>),
}

impl Redis {
    /// Where the harness reads it after the run (`redis://127.0.0.1:PORT/0`).
    pub fn url(&self) -> String {
        match self {
            Redis::Local(r) => r.url(),
            Redis::Docker(r) => r.url(),
        }
    }

    /// SIGKILL; down until [`Redis::start_again`].
    pub async fn kill(&self) -> Result<(), String> {
        match self {
            Redis::Local(r) => r.kill().await.map_err(text),
            Redis::Docker(r) => r.kill().await.map_err(text),
        }
    }

    /// Starts it again after a kill, waited for.
    pub async fn start_again(&self) -> Result<(), String> {
        match self {
            Redis::Local(r) => r.start_again().await.map_err(text),
            Redis::Docker(r) => r.start_again().await.map_err(text),
        }
    }

    /// Freezes it.
    pub async fn pause(&self) -> Result<(), String> {
        match self {
            Redis::Local(r) => r.pause().await.map_err(text),
            Redis::Docker(r) => r.pause().await.map_err(text),
        }
    }

    /// Thaws it.
    pub async fn resume(&self) -> Result<(), String> {
        match self {
            Redis::Local(r) => r.resume().await.map_err(text),
            Redis::Docker(r) => r.resume().await.map_err(text),
        }
    }

    /// Graceful stop and start, waited for.
    pub async fn restart(&self) -> Result<(), String> {
        match self {
            Redis::Local(r) => r.restart().await.map_err(text),
            Redis::Docker(r) => r.restart().await.map_err(text),
        }
    }

    /// Stops it for good at the run's end, after its state was read. On
    /// Docker this also removes its container (and the run's network, being
    /// the last handle); what that could not remove is left to `gauntlet
    /// gc`, with a warning, since the evidence is already read.
    pub async fn stop(self) {
        match self {
            Redis::Local(r) => r.stop().await,
            Redis::Docker(r) => {
                if let Err(e) = (*r).stop().await {
                    tracing::warn!("redis: {e}");
                }
            }
        }
    }

    /// Tears it down after an interrupted run: the watchdog removes a
    /// container (see [`DockerRedis::abandon`]).
    pub async fn abandon(self) {
        match self {
            Redis::Local(r) => r.stop().await,
            Redis::Docker(r) => (*r).abandon(),
        }
    }
}

/// The orchestrator of one run.
pub enum System {
    /// A child process on loopback.
    Local(LocalSystem),
    /// A container on the run's network (boxed: the handle is large, and
    /// there is one per run).
    Docker(Box<DockerSystem>),
}

/// Errors of either backend, as text for fault records.
fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl System {
    /// The backend's name, as reports record it.
    pub fn backend(&self) -> &'static str {
        match self {
            System::Local(_) => "local",
            System::Docker(_) => "docker",
        }
    }

    /// SIGKILL; down until [`System::start_again`].
    pub async fn kill(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.kill().await.map(drop).map_err(text),
            System::Docker(s) => s.kill().await.map_err(text),
        }
    }

    /// Starts it again after a kill, waited for.
    pub async fn start_again(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.start_again().await.map_err(text),
            System::Docker(s) => s.start_again().await.map_err(text),
        }
    }

    /// Freezes it.
    pub async fn pause(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.pause().await.map_err(text),
            System::Docker(s) => s.pause().await.map_err(text),
        }
    }

    /// Thaws it.
    pub async fn resume(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.resume().await.map_err(text),
            System::Docker(s) => s.resume().await.map_err(text),
        }
    }

    /// Graceful stop and start, waited for.
    pub async fn restart(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.restart().await.map_err(text),
            System::Docker(s) => s.restart().await.map_err(text),
        }
    }

    /// Fills the data directory's tmpfs.
    pub async fn disk_fill(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.disk_fill().await.map(drop).map_err(text),
            System::Docker(s) => s.disk_fill().await.map(drop).map_err(text),
        }
    }

    /// Frees it.
    pub async fn disk_release(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.disk_release().await.map_err(text),
            System::Docker(s) => s.disk_release().await.map_err(text),
        }
    }

    /// Makes disk writes fail with this probability (local backend only).
    pub async fn io_errors(&self, probability: f64) -> Result<(), String> {
        match self {
            System::Local(s) => s.io_errors(probability).await.map_err(text),
            System::Docker(_) => Err(format!("io_errors faults {DOCKER_NO_FIU}")),
        }
    }

    /// Ends [`System::io_errors`].
    pub async fn io_errors_off(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.io_errors_off().await.map_err(text),
            System::Docker(_) => Ok(()),
        }
    }

    /// Makes the data directory read-only, or writable again (local only).
    pub async fn set_read_only(&self, read_only: bool) -> Result<(), String> {
        match self {
            System::Local(s) => s.set_read_only(read_only).await.map_err(text),
            System::Docker(_) if read_only => Err(format!("read_only faults {DOCKER_NO_FIU}")),
            System::Docker(_) => Ok(()),
        }
    }

    /// Gets it OOM-killed under a memory limit of `limit_bytes`.
    pub async fn oom(&self, limit_bytes: u64) -> Result<(), String> {
        match self {
            System::Local(s) => s.oom(limit_bytes).await.map_err(text),
            System::Docker(s) => s.oom(limit_bytes).await.map_err(text),
        }
    }

    /// Ends [`System::oom`]: memory back, running and ready.
    pub async fn oom_end(&self) -> Result<(), String> {
        match self {
            System::Local(s) => s.oom_end().await.map_err(text),
            System::Docker(s) => s.oom_end().await.map_err(text),
        }
    }

    /// Cuts `link` (or restores it) when the backend partitions it itself;
    /// `None` when the fault proxy should (the local backend, and the client
    /// link everywhere).
    pub async fn partition(&self, link: Link, cut: bool) -> Option<Result<(), String>> {
        match (self, link) {
            (System::Docker(s), Link::Llm) => Some(s.partition_provider(cut).await.map_err(text)),
            _ => None,
        }
    }

    /// Everything that happened to the orchestrator.
    pub fn events(&self) -> Vec<ProcessEvent> {
        match self {
            System::Local(s) => s.events(),
            System::Docker(s) => s.events(),
        }
    }

    /// Where the orchestrator's log is once the system is shut down.
    pub fn log_path(&self) -> PathBuf {
        match self {
            System::Local(s) => s.log_path(),
            System::Docker(s) => s.log_path(),
        }
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        match self {
            System::Local(s) => s.db_path(),
            System::Docker(s) => s.db_path(),
        }
    }

    /// Graceful shutdown and teardown, keeping the database files in
    /// `preserve`.
    pub async fn shutdown_preserving(self, preserve: &Path) -> Result<ShutdownReport, String> {
        match self {
            System::Local(s) => s.shutdown_preserving(Some(preserve)).await.map_err(text),
            System::Docker(s) => (*s).shutdown_preserving(Some(preserve)).await.map_err(text),
        }
    }
}

/// Why the Docker backend has no I/O-error or read-only faults.
pub const DOCKER_NO_FIU: &str = "need libfiu preloaded into the orchestrator, which the docker backend's static binary cannot load; run it on the local backend";

/// The mock LLM provider of one run.
#[derive(Clone)]
pub enum Mock {
    /// In this process.
    Local(Arc<MockLlm>),
    /// In a container, through its admin API.
    Remote(MockClient),
}

impl Mock {
    /// Installs `program` (parsed from the scenario's JSON).
    pub async fn install(&self, program: Program) -> Result<(), String> {
        match self {
            Mock::Local(m) => m.install(program).map_err(text),
            Mock::Remote(c) => c.install(&program).await.map_err(text),
        }
    }

    /// Limits a program is checked against.
    pub fn limits(&self) -> crate::mock_llm::Limits {
        match self {
            Mock::Local(m) => m.limits().clone(),
            Mock::Remote(_) => crate::mock_llm::Limits::default(),
        }
    }

    /// The journal of calls.
    pub async fn journal(&self) -> Result<CallsPage, String> {
        match self {
            Mock::Local(m) => Ok(m.journal()),
            Mock::Remote(c) => c.calls().await.map_err(text),
        }
    }
}
