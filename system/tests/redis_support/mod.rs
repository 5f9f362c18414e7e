//! A real `redis-server` for the store's tests, on a free loopback port in
//! a temporary directory, stopped when dropped. Without `redis-server` on
//! the PATH a test skips with the reason printed, except under `CI=true`,
//! where the tests must run.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a started server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server without persistence, or `None` (with the reason
    /// printed) when `redis-server` is missing outside CI.
    pub fn start() -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let reason = "redis-server is not installed (apt-get install -y redis-server)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{reason}: under CI=true the redis tests must run"
            );
            eprintln!("skipped: {reason}");
            return None;
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "orch-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The port is free when asked; another process could take it before
        // redis binds it, which shows as the server not answering.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = spawn(port, &dir);
        let server = RedisServer { child, port, dir };
        server.wait_ready();
        Some(server)
    }

    /// Kills the server (SIGKILL): what it held in memory is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, &self.dir);
        self.wait_ready();
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection for the test's own commands.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            let answered = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
            match answered {
                Ok(_) => return,
                Err(e) if Instant::now() >= deadline => {
                    let log =
                        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                    panic!(
                        "redis-server on port {} did not answer: {e}\n{log}",
                        self.port
                    );
                }
                // Waiting on a condition that has no event to await: the
                // server's socket. Bounded by the deadline.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// `redis-server` on `port`, without persistence, logging into `dir`.
fn spawn(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
