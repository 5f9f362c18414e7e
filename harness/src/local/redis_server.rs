//! The run's Redis server on the local backend: Debian's `redis-server`,
//! on a free loopback port, its files in the run's directory, and the
//! process faults the scenarios aim at `redis` (kill, pause, restart).
//!
//! With `appendonly` every write is logged and synced before Redis answers
//! (`appendfsync always`), so a killed server comes back with everything it
//! acknowledged; without it nothing is persisted (`save ""` too), and a
//! killed server comes back empty: what that loses is what the scenarios
//! show.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::process;

/// The program, from Debian's `redis-server` package.
pub const REDIS_SERVER: &str = "redis-server";

/// How long a (re)started server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a graceful stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause between two readiness probes: the server's socket has no
/// event to wait on.
const PROBE_PAUSE: Duration = Duration::from_millis(20);

/// What can go wrong with the run's Redis server.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    /// `redis-server` is not installed.
    #[error("the redis store needs `{REDIS_SERVER}` (apt-get install -y redis-server): {source}")]
    NotInstalled {
        /// Why it could not be run.
        source: std::io::Error,
    },
    /// No free port or the directory could not be made.
    #[error("cannot prepare redis in {}: {source}", dir.display())]
    Prepare {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The server did not answer `PING` in time.
    #[error("redis on {addr} did not answer within {waited_ms} ms; last lines of {}:\n{tail}", log.display())]
    NotReady {
        /// Its address.
        addr: SocketAddr,
        /// How long it was given.
        waited_ms: u64,
        /// Its log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// A signal could not be sent.
    #[error("redis: {0}")]
    Signal(#[from] super::LocalError),
    /// The fault needs a running server.
    #[error("{fault}: redis is not running")]
    NotRunning {
        /// The fault.
        fault: &'static str,
    },
}

/// The run's Redis server.
pub struct RedisServer {
    addr: SocketAddr,
    dir: PathBuf,
    appendonly: bool,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts a server in `dir` (created), waited for.
    pub async fn start(dir: &Path, appendonly: bool) -> Result<RedisServer, RedisServerError> {
        let prepare = |source| RedisServerError::Prepare {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(prepare)?;
        // Free now; the server binds it a moment later. Its readiness probe
        // is what tells if another process took it meanwhile.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(prepare)?
            .port();
        let server = RedisServer {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir: dir.to_path_buf(),
            appendonly,
            child: Mutex::new(None),
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `127.0.0.1:PORT`, the same across restarts.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Whether writes are persisted before they are acknowledged.
    pub fn appendonly(&self) -> bool {
        self.appendonly
    }

    async fn spawn(&self) -> Result<(), RedisServerError> {
        let mut command = Command::new(REDIS_SERVER);
        command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--daemonize", "no", "--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|source| RedisServerError::NotInstalled { source })?;
        *self.child.lock().await = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<(), RedisServerError> {
        let started = Instant::now();
        loop {
            if ping(self.addr).await {
                return Ok(());
            }
            if started.elapsed() >= READY_TIMEOUT {
                return Err(RedisServerError::NotReady {
                    addr: self.addr,
                    waited_ms: u64::try_from(READY_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
                    log: self.log_path(),
                    tail: tail(&self.log_path(), 10),
                });
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
    }

    async fn pid(&self, fault: &'static str) -> Result<u32, RedisServerError> {
        self.child
            .lock()
            .await
            .as_ref()
            .and_then(Child::id)
            .ok_or(RedisServerError::NotRunning { fault })
    }

    /// SIGKILL: what was not persisted is gone.
    pub async fn kill(&self) -> Result<(), RedisServerError> {
        let mut child = self.child.lock().await;
        let Some(mut running) = child.take() else {
            return Err(RedisServerError::NotRunning { fault: "kill" });
        };
        // A paused server dies on SIGKILL too.
        let _ = running.start_kill();
        let _ = running.wait().await;
        Ok(())
    }

    /// Starts it again after a kill, on the same port and files.
    pub async fn start_again(&self) -> Result<(), RedisServerError> {
        if self.child.lock().await.is_some() {
            return Ok(());
        }
        self.spawn().await
    }

    /// SIGSTOP.
    pub async fn pause(&self) -> Result<(), RedisServerError> {
        let pid = self.pid("pause").await?;
        process::signal(pid, Signal::SIGSTOP)?;
        Ok(())
    }

    /// SIGCONT.
    pub async fn resume(&self) -> Result<(), RedisServerError> {
        let pid = self.pid("resume").await?;
        process::signal(pid, Signal::SIGCONT)?;
        Ok(())
    }

    /// SIGTERM (Redis flushes its append-only file and exits), waited for,
    /// then started again.
    pub async fn restart(&self) -> Result<(), RedisServerError> {
        self.stop().await;
        self.spawn().await
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    pub async fn stop(&self) {
        let mut child = self.child.lock().await;
        let Some(mut running) = child.take() else {
            return;
        };
        if let Some(pid) = running.id() {
            // A paused server must be woken to hear SIGTERM.
            let _ = process::signal(pid, Signal::SIGCONT);
            let _ = process::signal(pid, Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, running.wait())
            .await
            .is_err()
        {
            let _ = running.start_kill();
            let _ = running.wait().await;
        }
    }
}

/// Whether a Redis server answers `PING` on `addr` within a short bound
/// (the Docker backend's Redis container is probed the same way).
pub(crate) async fn ping(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut answer = [0u8; 7];
        stream.read_exact(&mut answer).await.ok()?;
        Some(&answer == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The last `lines` lines of `path`, or a note that it cannot be read.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
