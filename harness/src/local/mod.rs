//! The local backend of the scenario engine: the orchestrator as a child
//! process of the harness, with OS-level faults injected into it.
//!
//! [`LocalSystem::start`] writes the config into the run directory, prepares
//! the fault machinery the run [`Needs`] (a tmpfs for the data directory,
//! libfiu, a memory cgroup), spawns the orchestrator and waits for its
//! `listening on` line. A supervisor task restarts it when it dies on its own
//! (an OOM kill, a crash), with a bounded backoff and a bounded number of
//! restarts; faults that stop it on purpose (kill, restart, shutdown) tell
//! the supervisor first.
//!
//! The faults and how they work on Linux:
//! - kill / pause / resume / restart: SIGKILL, SIGSTOP, SIGCONT, SIGTERM.
//! - disk full: a filler file grown until the data tmpfs answers ENOSPC.
//! - read-only: a read-only remount of the data tmpfs; the kernel refuses it
//!   (EBUSY) while files are open for writing, which they are while the
//!   orchestrator runs, so then libfiu makes its disk writes fail with EROFS.
//! - I/O errors: libfiu failure points on the disk-write functions
//!   ([`fiu`] explains the choice).
//! - OOM: the memory cgroup's limit plus a hog that fills it ([`memory`]).
//!
//! Everything created is named in a state record first, so that
//! [`gc`] can remove what a killed harness left behind; [`LocalSystem`]'s
//! `Drop` tears down synchronously, so a panicking test leaves nothing.

pub(crate) mod disk;
mod error;
mod fiu;
mod gc;
mod memory;
mod process;
mod redis_server;
pub(crate) mod state;

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::watch;

pub use error::{GcError, LocalError, UnmetNeed};
pub use gc::{GcReport, gc, gc_in};
pub(crate) use redis_server::ping as redis_ping;
pub use redis_server::{REDIS_SERVER, RedisServer, RedisServerError};
pub use state::{DEFAULT_STATE_DIR, default_state_dir};

use memory::Cgroup;
use process::{NotReady, Placement};
use state::{ProcessId, StateRecord};

/// How long a SIGTERM'd orchestrator gets to shut down gracefully before
/// SIGKILL (its own `server.shutdown_timeout` plus draining fit well within).
const STOP_WAIT_MS: u64 = 20_000;
/// How long a SIGKILL'd process gets to be reaped.
const KILL_WAIT_MS: u64 = 5_000;
/// How long the memory hog may take to fill the cgroup.
const HOG_WAIT_MS: u64 = 60_000;
/// First supervisor backoff; doubled per restart up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 100;
/// Longest supervisor backoff.
const MAX_BACKOFF_MS: u64 = 2_000;
/// How long `Drop` waits for killed processes to exit before unmounting.
const DROP_WAIT_MS: u64 = 2_000;
/// Lines of the log that start errors carry.
const ERROR_TAIL_LINES: usize = 40;
/// Longest run id: it names a file, a mount source and a cgroup.
const MAX_RUN_ID_LEN: usize = 64;
/// `oom_score_adj` of the orchestrator in a memory cgroup: the OOM killer's
/// first choice.
const ORCHESTRATOR_OOM_SCORE_ADJ: i32 = 1000;

/// How to start the orchestrator: a program and the arguments that make it
/// serve, before `--config FILE --listen ADDR --seed N`.
#[derive(Clone, Debug)]
pub struct Launcher {
    program: PathBuf,
    prefix_args: Vec<OsString>,
}

impl Launcher {
    /// This executable's `__serve-orchestrator`: what `gauntlet run` uses, so
    /// that nothing but the harness needs to be built.
    pub fn current_exe() -> std::io::Result<Launcher> {
        Ok(Launcher::gauntlet_binary(std::env::current_exe()?))
    }

    /// A `gauntlet` executable's `__serve-orchestrator` (tests pass
    /// `env!("CARGO_BIN_EXE_gauntlet")`).
    pub fn gauntlet_binary(path: impl Into<PathBuf>) -> Launcher {
        Launcher {
            program: path.into(),
            prefix_args: vec!["__serve-orchestrator".into()],
        }
    }

    /// An `orchestrator` executable's `serve`.
    pub fn orchestrator_binary(path: impl Into<PathBuf>) -> Launcher {
        Launcher {
            program: path.into(),
            prefix_args: vec!["serve".into()],
        }
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }
}

/// The fault machinery a run prepares before the orchestrator first starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Mount a tmpfs of this many bytes at `run_dir/data` (disk full and
    /// read-only faults). Needs root and permission to mount.
    pub disk_tmpfs_bytes: Option<u64>,
    /// Run the orchestrator under libfiu (I/O error faults, and read-only
    /// on a running orchestrator). Needs `fiu-run` and `fiu-ctrl`.
    pub io_errors: bool,
    /// Put the orchestrator in a memory cgroup of its own (OOM faults).
    /// Needs root and a writable memory controller.
    pub memory: bool,
}

/// One run's local system.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Names the cgroup, the state record and the tmpfs mount (1 to 64 of
    /// `A-Z a-z 0-9 . _ -`).
    pub run_id: String,
    /// An existing directory: the orchestrator's working directory, holding
    /// `orchestrator.yaml`, `orchestrator.log` and `data/`.
    pub run_dir: PathBuf,
    /// The orchestrator's config. Its `storage.sqlite.path` should be
    /// `data/orchestrator.db` (relative to `run_dir`), where the disk faults
    /// act and where [`LocalSystem::db_path`] points.
    pub config_yaml: String,
    /// How to start the orchestrator.
    pub launcher: Launcher,
    /// Seed of the orchestrator's random choices.
    pub seed: u64,
    /// Fault machinery to prepare.
    pub needs: Needs,
    /// Bound on the wait for `listening on` at every (re)start.
    pub ready_timeout: Duration,
    /// Bound on the supervisor's restarts over the whole run.
    pub max_restarts: u32,
    /// Where the state record goes (see [`default_state_dir`]).
    pub state_dir: PathBuf,
    /// Environment variables the orchestrator gets beside the harness's
    /// own (secrets its configuration names, such as the webhook secret).
    pub env: Vec<(String, String)>,
}

impl LocalConfig {
    /// A config with no fault machinery, seed 0, a 30 s ready timeout, 3
    /// restarts and the default state directory.
    pub fn new(
        run_id: impl Into<String>,
        run_dir: impl Into<PathBuf>,
        config_yaml: impl Into<String>,
        launcher: Launcher,
    ) -> LocalConfig {
        LocalConfig {
            run_id: run_id.into(),
            run_dir: run_dir.into(),
            config_yaml: config_yaml.into(),
            launcher,
            seed: 0,
            needs: Needs::default(),
            ready_timeout: Duration::from_secs(30),
            max_restarts: 3,
            state_dir: default_state_dir(),
            env: Vec::new(),
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// The status could not be collected.
    Unknown,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => match Signal::try_from(*signal) {
                Ok(s) => write!(f, "killed by {}", s.as_str()),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            Exit::Unknown => f.write_str("unknown exit status"),
        }
    }
}

/// Something that happened to the orchestrator process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessEvent {
    /// Time since [`LocalSystem::start`] was called.
    pub elapsed: Duration,
    /// What happened.
    pub kind: EventKind,
}

/// What happened to the orchestrator process.
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// A process was spawned.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// It printed `listening on`.
    Ready {
        /// Its pid.
        pid: u32,
    },
    /// It ended.
    Exited {
        /// Its pid.
        pid: u32,
        /// How.
        exit: Exit,
        /// The kernel's OOM killer killed it: SIGKILL while the cgroup's
        /// `oom_kill` counter rose.
        oom: bool,
        /// A fault or the shutdown ended it on purpose.
        expected: bool,
    },
    /// The supervisor restarted it and it is ready.
    Restarted {
        /// The new pid.
        pid: u32,
        /// Restart number, from 1.
        attempt: u32,
    },
    /// A supervisor restart failed (the error names why).
    RestartFailed {
        /// Restart number, from 1.
        attempt: u32,
        /// The start error.
        error: String,
    },
    /// `max_restarts` were used up; the orchestrator stays down.
    GaveUp {
        /// Restarts made.
        restarts: u32,
    },
}

/// What [`LocalSystem::shutdown`] saw.
#[derive(Clone, Debug)]
pub struct ShutdownReport {
    /// How the last orchestrator process ended (`None`: none was running).
    pub exit: Option<Exit>,
    /// It exited 0 after SIGTERM, within the bound.
    pub graceful: bool,
    /// Restarts the supervisor made.
    pub restarts: u32,
    /// Every event of the run.
    pub events: Vec<ProcessEvent>,
}

/// This harness process, as state records and Docker labels name their owner.
pub(crate) fn owner_id() -> Option<ProcessId> {
    ProcessId::of(std::process::id())
}

/// Checks that this machine can provide `needs`, naming what it lacks.
pub fn check_needs(needs: &Needs) -> Result<(), UnmetNeed> {
    let uid = effective_uid();
    if needs.disk_tmpfs_bytes.is_some() {
        if uid != 0 {
            return Err(UnmetNeed::NotRoot {
                need: "a disk tmpfs mount",
                uid,
            });
        }
        disk::probe().map_err(|(path, source)| UnmetNeed::MountNotPermitted { path, source })?;
    }
    if needs.io_errors {
        for tool in ["fiu-run", "fiu-ctrl"] {
            if fiu::find_on_path(tool).is_none() {
                return Err(UnmetNeed::FiuNotInstalled { tool });
            }
        }
    }
    if needs.memory {
        if uid != 0 {
            return Err(UnmetNeed::NotRoot {
                need: "a memory cgroup",
                uid,
            });
        }
        memory::probe().map_err(|detail| UnmetNeed::NoMemoryCgroup { detail })?;
    }
    Ok(())
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective ...`);
/// `u32::MAX` when it cannot be read, which counts as not root.
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Why the supervisor must leave the orchestrator down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// A kill fault is active, until `start_again`.
    Killed,
    /// A restart is replacing it.
    Restarting,
    /// The run is ending.
    Stopping,
}

/// How the data directory was made read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadOnly {
    /// A read-only remount.
    Remount,
    /// libfiu fails disk writes with EROFS.
    Fiu,
}

/// The current orchestrator process.
struct ChildHandle {
    pid: u32,
    /// Set before the harness signals it on purpose.
    expected: Arc<AtomicBool>,
    /// Its exit, once reaped.
    exited: watch::Receiver<Option<Exit>>,
}

impl ChildHandle {
    fn alive(&self) -> bool {
        self.exited.borrow().is_none()
    }
}

/// What the fault operations and the supervisor share, behind one async lock
/// so that they never act on the process at the same time.
struct Proc {
    child: Option<ChildHandle>,
    /// Incremented at every spawn: a supervisor acting for an older process
    /// knows that someone else has taken over.
    generation: u64,
    hold: Option<Hold>,
    paused: bool,
    restarts: u32,
    io_errors: Option<f64>,
    read_only: Option<ReadOnly>,
    /// The running process has failure points enabled (libfiu refuses to
    /// disable one that is not).
    fiu_applied: bool,
}

impl Proc {
    fn alive_child(&self) -> Option<&ChildHandle> {
        self.child.as_ref().filter(|c| c.alive())
    }

    fn injections(&self) -> Vec<fiu::Injection> {
        let mut injections = Vec::new();
        if let Some(p) = self.io_errors {
            injections.push(fiu::Injection::Random(p));
        }
        // Last, so that it wins over random errors on the same points.
        if self.read_only == Some(ReadOnly::Fiu) {
            injections.push(fiu::Injection::ReadOnly);
        }
        injections
    }
}

struct Inner {
    run_id: String,
    run_dir: PathBuf,
    data_dir: PathBuf,
    hog_dir: PathBuf,
    launcher: Launcher,
    seed: u64,
    env: Vec<(String, String)>,
    ready_timeout: Duration,
    max_restarts: u32,
    state_dir: PathBuf,
    disk_bytes: Option<u64>,
    cgroup: Option<Cgroup>,
    fiu: Option<fiu::Fiu>,
    started: Instant,
    /// 127.0.0.1:0 until the first start binds a port; then that address.
    addr: Mutex<SocketAddr>,
    events: Mutex<Vec<ProcessEvent>>,
    events_changed: watch::Sender<usize>,
    /// The current orchestrator's pid (0: none), for `Drop`, which cannot
    /// take the async lock.
    pid: AtomicU32,
    /// The running memory hog's pid (0: none).
    hog_pid: AtomicU32,
    hog_mounted: AtomicBool,
    /// Set by shutdown and `Drop`: nothing may be spawned any more.
    closed: AtomicBool,
    record: Mutex<StateRecord>,
    proc: tokio::sync::Mutex<Proc>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these plain-data locks leaves consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RUN_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Inner {
    fn push_event(&self, kind: EventKind) {
        let mut events = lock(&self.events);
        events.push(ProcessEvent {
            elapsed: self.started.elapsed(),
            kind,
        });
        self.events_changed.send_replace(events.len());
    }

    fn log_path(&self) -> PathBuf {
        self.run_dir.join("orchestrator.log")
    }

    /// Saves the state record after `change`. Small synchronous writes: the
    /// record must be on disk before what it names exists.
    fn update_record(&self, change: impl FnOnce(&mut StateRecord)) -> Result<(), LocalError> {
        let mut record = lock(&self.record);
        change(&mut record);
        record
            .save(&self.state_dir)
            .map_err(|source| LocalError::StateRecord {
                path: StateRecord::path(&self.state_dir, &self.run_id),
                source,
            })
    }

    /// Spawns the orchestrator and waits until it is ready. The caller holds
    /// the process lock.
    async fn spawn_ready(self: &Arc<Self>, st: &mut Proc) -> Result<u32, LocalError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LocalError::NotRunning { fault: "start" });
        }
        st.generation += 1;
        let generation = st.generation;
        st.paused = false;
        let listen = *lock(&self.addr);
        let args = process::orchestrator_args(
            &self.launcher,
            &process::config_path(&self.run_dir),
            listen,
            self.seed,
        );
        let procs = self.cgroup.as_ref().map(Cgroup::procs_file);
        let placement = Placement {
            cgroup_procs: procs.as_deref(),
            oom_score_adj: Some(ORCHESTRATOR_OOM_SCORE_ADJ),
            fiu_args: self.fiu.as_ref().map(|f| f.run_args(&st.injections())),
        };
        st.fiu_applied = self.fiu.is_some() && !st.injections().is_empty();
        let mut cmd = process::command(&self.launcher.program, &args, &placement);
        let log_path = self.log_path();
        let log = process::open_log(&log_path)?;
        cmd.current_dir(&self.run_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("GAUNTLET_RUN_ID", &self.run_id)
            // Its own process group: a Ctrl-C at the terminal reaches the
            // harness, which then shuts the orchestrator down in order.
            .process_group(0);
        let oom_before = match &self.cgroup {
            Some(cgroup) => Some(cgroup.oom_kills()?),
            None => None,
        };
        let mut child = cmd.spawn().map_err(|source| LocalError::Spawn {
            program: self.launcher.program.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        self.pid.store(pid, Ordering::SeqCst);
        let stdout = child.stdout.take();
        let (exit_tx, exit_rx) = watch::channel(None);
        let expected = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        st.child = Some(ChildHandle {
            pid,
            expected: expected.clone(),
            exited: exit_rx.clone(),
        });
        self.push_event(EventKind::Started { pid });

        let inner = self.clone();
        let (reaper_expected, reaper_ready) = (expected.clone(), ready.clone());
        tokio::spawn(async move {
            let exit = process::reap(&mut child).await;
            let oom = exit == Exit::Signal(Signal::SIGKILL as i32)
                && match (&inner.cgroup, oom_before) {
                    (Some(cgroup), Some(before)) => {
                        cgroup.oom_kills().is_ok_and(|now| now > before)
                    }
                    _ => false,
                };
            let _ = inner
                .pid
                .compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
            let expected = reaper_expected.load(Ordering::SeqCst);
            inner.push_event(EventKind::Exited {
                pid,
                exit,
                oom,
                expected,
            });
            exit_tx.send_replace(Some(exit));
            // A process that never got ready is its starter's business.
            if !expected && reaper_ready.load(Ordering::SeqCst) {
                supervise(inner, generation).await;
            }
        });

        let record_result = self.update_record(|r| {
            r.pids = ProcessId::of(pid).into_iter().collect();
        });
        let mut exited = exit_rx;
        let outcome = match (record_result, stdout) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(LocalError::Spawn {
                program: self.launcher.program.display().to_string(),
                source: std::io::Error::other("no stdout pipe"),
            }),
            (Ok(()), Some(stdout)) => {
                match process::await_ready(stdout, &mut exited, self.ready_timeout).await {
                    Ok(addr) => {
                        ready.store(true, Ordering::SeqCst);
                        if listen.port() == 0 {
                            *lock(&self.addr) = addr;
                        }
                        self.push_event(EventKind::Ready { pid });
                        return Ok(pid);
                    }
                    Err(NotReady::Exited(exit)) => {
                        return Err(LocalError::ExitedEarly {
                            exit,
                            log: log_path.clone(),
                            tail: process::tail(&log_path, ERROR_TAIL_LINES),
                        });
                    }
                    Err(NotReady::Timeout) => Err(LocalError::NotReady {
                        waited_ms: self.ready_timeout.as_millis() as u64,
                        log: log_path.clone(),
                        tail: process::tail(&log_path, ERROR_TAIL_LINES),
                    }),
                }
            }
        };
        // Not ready: it must not linger holding the port and the database.
        expected.store(true, Ordering::SeqCst);
        process::signal(pid, Signal::SIGKILL)?;
        wait_exit(&mut exited, pid, "SIGKILL", KILL_WAIT_MS).await?;
        outcome.map(|()| pid)
    }

    /// Stops the current process: SIGCONT if paused, then `first`; after
    /// SIGTERM's bound, SIGKILL.
    async fn stop(&self, st: &mut Proc, first: Signal) -> Result<Option<Exit>, LocalError> {
        let Some(child) = st.alive_child() else {
            st.child = None;
            return Ok(None);
        };
        let pid = child.pid;
        let mut exited = child.exited.clone();
        child.expected.store(true, Ordering::SeqCst);
        if st.paused && first != Signal::SIGKILL {
            // A stopped process would keep SIGTERM pending for ever.
            process::signal(pid, Signal::SIGCONT)?;
        }
        process::signal(pid, first)?;
        let exit = if first == Signal::SIGKILL {
            wait_exit(&mut exited, pid, "SIGKILL", KILL_WAIT_MS).await?
        } else {
            match wait_exit(&mut exited, pid, first.as_str(), STOP_WAIT_MS).await {
                Ok(exit) => exit,
                Err(_) => {
                    process::signal(pid, Signal::SIGKILL)?;
                    wait_exit(&mut exited, pid, "SIGKILL", KILL_WAIT_MS).await?
                }
            }
        };
        st.child = None;
        st.paused = false;
        Ok(Some(exit))
    }

    /// Applies the current libfiu injections to the running process (a
    /// process started later gets them from `fiu-run`).
    async fn apply_fiu(&self, st: &mut Proc) -> Result<(), LocalError> {
        let (Some(fiu), Some(child)) = (&self.fiu, st.alive_child()) else {
            return Ok(());
        };
        let mut commands = if st.fiu_applied {
            fiu::disable_commands()
        } else {
            Vec::new()
        };
        let injections = st.injections();
        for injection in &injections {
            commands.extend(fiu::enable_commands(*injection));
        }
        if commands.is_empty() {
            return Ok(());
        }
        fiu.control(child.pid, &commands).await?;
        st.fiu_applied = !injections.is_empty();
        Ok(())
    }

    /// Kills the hog if it still runs, deletes its file and unmounts its tmpfs.
    fn remove_hog(&self) -> Result<(), LocalError> {
        let hog = self.hog_pid.swap(0, Ordering::SeqCst);
        if hog != 0 {
            process::signal(hog, Signal::SIGKILL)?;
        }
        if self.hog_mounted.swap(false, Ordering::SeqCst) {
            // Unmounting frees the pages and with them the cgroup's charge.
            disk::unmount(&self.hog_dir).map_err(|source| LocalError::Mount {
                action: "unmount",
                path: self.hog_dir.clone(),
                source,
            })?;
            let hog_dir = self.hog_dir.clone();
            self.update_record(|r| r.mounts.retain(|m| *m != hog_dir))?;
        }
        Ok(())
    }

    /// Best-effort synchronous teardown for `Drop` and failed starts; true
    /// when everything is gone.
    fn teardown_sync(&self) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let mut pids = Vec::new();
        for pid in [
            self.pid.swap(0, Ordering::SeqCst),
            self.hog_pid.swap(0, Ordering::SeqCst),
        ] {
            if pid != 0 {
                let _ = process::signal(pid, Signal::SIGCONT);
                let _ = process::signal(pid, Signal::SIGKILL);
                pids.extend(ProcessId::of(pid));
            }
        }
        state::wait_until_gone(&pids, Duration::from_millis(DROP_WAIT_MS));
        let mut clean = true;
        if self.hog_mounted.swap(false, Ordering::SeqCst) {
            clean &= disk::unmount(&self.hog_dir).is_ok();
        }
        if self.disk_bytes.is_some() && state::is_mounted(&self.data_dir) {
            clean &= disk::unmount(&self.data_dir).is_ok();
        }
        if let Some(cgroup) = &self.cgroup {
            clean &= cgroup.remove().is_ok();
        }
        if clean {
            clean &= StateRecord::remove(&self.state_dir, &self.run_id).is_ok();
        }
        clean
    }
}

/// Waits up to `wait_ms` for the process's exit.
async fn wait_exit(
    exited: &mut watch::Receiver<Option<Exit>>,
    pid: u32,
    signal: &'static str,
    wait_ms: u64,
) -> Result<Exit, LocalError> {
    let stuck = LocalError::StuckProcess {
        pid,
        signal,
        waited_ms: wait_ms,
    };
    match tokio::time::timeout(
        Duration::from_millis(wait_ms),
        exited.wait_for(Option::is_some),
    )
    .await
    {
        Ok(Ok(exit)) => Ok(exit.unwrap_or(Exit::Unknown)),
        // The reaper dropped its sender without a status.
        Ok(Err(_)) => Ok(Exit::Unknown),
        Err(_) => Err(stuck),
    }
}

fn backoff(attempt: u32) -> Duration {
    let factor = 1u64 << attempt.saturating_sub(1).min(16);
    Duration::from_millis((FIRST_BACKOFF_MS * factor).min(MAX_BACKOFF_MS))
}

/// Restarts an orchestrator that died on its own, with backoff, until it is
/// ready, the restarts are used up, or someone else took over. Boxed: it
/// spawns, and a spawned process's reaper calls it again.
fn supervise(inner: Arc<Inner>, generation: u64) -> BoxFuture {
    Box::pin(async move {
        let mut generation = generation;
        loop {
            let attempt = {
                let mut st = inner.proc.lock().await;
                if st.generation != generation || st.hold.is_some() {
                    return;
                }
                if st.restarts >= inner.max_restarts {
                    inner.push_event(EventKind::GaveUp {
                        restarts: st.restarts,
                    });
                    return;
                }
                st.restarts += 1;
                st.restarts
            };
            // A backoff between attempts, not a wait for a condition.
            tokio::time::sleep(backoff(attempt)).await;
            let mut st = inner.proc.lock().await;
            if st.generation != generation || st.hold.is_some() || st.alive_child().is_some() {
                return;
            }
            match inner.spawn_ready(&mut st).await {
                Ok(pid) => {
                    inner.push_event(EventKind::Restarted { pid, attempt });
                    return;
                }
                Err(e) => {
                    inner.push_event(EventKind::RestartFailed {
                        attempt,
                        error: e.to_string(),
                    });
                    generation = st.generation;
                }
            }
        }
    })
}

/// The orchestrator running as a child process, with its fault machinery.
pub struct LocalSystem {
    inner: Arc<Inner>,
    torn_down: bool,
}

impl LocalSystem {
    /// Prepares the run (config file, data tmpfs or directory, cgroup, state
    /// record), spawns the orchestrator listening on a free loopback port and
    /// waits for it within `ready_timeout`. A failure leaves nothing behind
    /// and, when the orchestrator got as far as running, carries the last
    /// lines of its log.
    pub async fn start(config: LocalConfig) -> Result<LocalSystem, LocalError> {
        if !valid_run_id(&config.run_id) {
            return Err(LocalError::BadRunId {
                run_id: config.run_id,
            });
        }
        check_needs(&config.needs)?;
        let config_path = process::config_path(&config.run_dir);
        std::fs::write(&config_path, &config.config_yaml).map_err(|source| LocalError::File {
            action: "write",
            path: config_path.clone(),
            source,
        })?;
        let data_dir = config.run_dir.join("data");
        let cgroup = if config.needs.memory {
            Some(
                Cgroup::planned(&format!("gauntlet-{}", config.run_id))
                    .map_err(|detail| UnmetNeed::NoMemoryCgroup { detail })?,
            )
        } else {
            None
        };
        let record = StateRecord {
            run_id: config.run_id.clone(),
            owner: owner_id(),
            pids: Vec::new(),
            mounts: config
                .needs
                .disk_tmpfs_bytes
                .map(|_| data_dir.clone())
                .into_iter()
                .collect(),
            cgroups: cgroup.iter().map(|c| c.path.clone()).collect(),
        };
        let (events_changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            hog_dir: config.run_dir.join(".gauntlet-memory-hog"),
            fiu: config
                .needs
                .io_errors
                .then(|| fiu::Fiu::new(&config.run_dir)),
            run_id: config.run_id,
            run_dir: config.run_dir,
            data_dir,
            launcher: config.launcher,
            seed: config.seed,
            env: config.env,
            ready_timeout: config.ready_timeout,
            max_restarts: config.max_restarts,
            state_dir: config.state_dir,
            disk_bytes: config.needs.disk_tmpfs_bytes,
            cgroup,
            started: Instant::now(),
            addr: Mutex::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            events: Mutex::new(Vec::new()),
            events_changed,
            pid: AtomicU32::new(0),
            hog_pid: AtomicU32::new(0),
            hog_mounted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            record: Mutex::new(record),
            proc: tokio::sync::Mutex::new(Proc {
                child: None,
                generation: 0,
                hold: None,
                paused: false,
                restarts: 0,
                io_errors: None,
                read_only: None,
                fiu_applied: false,
            }),
        });
        // From here on a failure returns through `Drop`, which undoes it all.
        let system = LocalSystem {
            inner,
            torn_down: false,
        };
        let inner = &system.inner;
        inner.update_record(|_| ())?;
        match inner.disk_bytes {
            Some(bytes) => disk::mount_tmpfs(
                &format!("gauntlet-{}", inner.run_id),
                &inner.data_dir,
                bytes,
            )?,
            None => {
                std::fs::create_dir_all(&inner.data_dir).map_err(|source| LocalError::File {
                    action: "create",
                    path: inner.data_dir.clone(),
                    source,
                })?
            }
        }
        if let Some(cgroup) = &inner.cgroup {
            cgroup.create()?;
        }
        {
            let mut st = inner.proc.lock().await;
            inner.spawn_ready(&mut st).await?;
        }
        Ok(system)
    }

    /// Where the orchestrator listens; the same across restarts (the same
    /// port is bound again).
    pub fn addr(&self) -> SocketAddr {
        *lock(&self.inner.addr)
    }

    /// `run_dir/data/orchestrator.db`, the database the config should name.
    pub fn db_path(&self) -> PathBuf {
        self.inner.data_dir.join("orchestrator.db")
    }

    /// The current orchestrator's pid, if one is running.
    pub fn pid(&self) -> Option<u32> {
        Some(self.inner.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// The orchestrator's stderr log (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.inner.log_path()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::tail(&self.inner.log_path(), lines)
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<ProcessEvent> {
        lock(&self.inner.events).clone()
    }

    /// Waits up to `timeout` for an event (past or future) that `matches`.
    pub async fn wait_for_event(
        &self,
        timeout: Duration,
        matches: impl Fn(&ProcessEvent) -> bool,
    ) -> Option<ProcessEvent> {
        // Subscribed before looking, so that no event falls between the two.
        let mut changed = self.inner.events_changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = lock(&self.inner.events).iter().find(|e| matches(e)) {
                return Some(event.clone());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// SIGKILL, reaped. The supervisor leaves it down until
    /// [`LocalSystem::start_again`].
    pub async fn kill(&self) -> Result<Exit, LocalError> {
        let mut st = self.inner.proc.lock().await;
        if st.alive_child().is_none() {
            return Err(LocalError::NotRunning { fault: "kill" });
        }
        st.hold = Some(Hold::Killed);
        let exit = self.inner.stop(&mut st, Signal::SIGKILL).await?;
        Ok(exit.unwrap_or(Exit::Unknown))
    }

    /// Starts the orchestrator again (after a kill, or when the supervisor
    /// gave up) and waits until it is ready; nothing to do when it runs.
    pub async fn start_again(&self) -> Result<(), LocalError> {
        let mut st = self.inner.proc.lock().await;
        st.hold = None;
        if st.alive_child().is_some() {
            return Ok(());
        }
        self.inner.spawn_ready(&mut st).await.map(drop)
    }

    /// SIGSTOP: the process stays, answers nothing.
    pub async fn pause(&self) -> Result<(), LocalError> {
        let mut st = self.inner.proc.lock().await;
        let Some(child) = st.alive_child() else {
            return Err(LocalError::NotRunning { fault: "pause" });
        };
        process::signal(child.pid, Signal::SIGSTOP)?;
        st.paused = true;
        Ok(())
    }

    /// SIGCONT after [`LocalSystem::pause`]; nothing to do when not paused.
    pub async fn resume(&self) -> Result<(), LocalError> {
        let mut st = self.inner.proc.lock().await;
        if let Some(child) = st.alive_child().filter(|_| st.paused) {
            process::signal(child.pid, Signal::SIGCONT)?;
        }
        st.paused = false;
        Ok(())
    }

    /// SIGTERM (SIGKILL if it has not exited within 20 s), then a new start,
    /// waited for.
    pub async fn restart(&self) -> Result<(), LocalError> {
        let mut st = self.inner.proc.lock().await;
        st.hold = Some(Hold::Restarting);
        let stopped = self.inner.stop(&mut st, Signal::SIGTERM).await;
        st.hold = None;
        stopped?;
        self.inner.spawn_ready(&mut st).await.map(drop)
    }

    fn disk_bytes(&self, fault: &'static str) -> Result<u64, LocalError> {
        self.inner.disk_bytes.ok_or(LocalError::NotPrepared {
            fault,
            need: "disk_tmpfs_bytes",
        })
    }

    /// Fills the data tmpfs with a filler file until ENOSPC; returns the
    /// bytes written.
    pub async fn disk_fill(&self) -> Result<u64, LocalError> {
        let bytes = self.disk_bytes("disk_fill")?;
        let dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || disk::fill(&dir, bytes))
            .await
            .map_err(|e| LocalError::Fill {
                path: self.inner.data_dir.join(disk::FILLER_NAME),
                source: std::io::Error::other(e),
            })?
    }

    /// Deletes the filler file.
    pub async fn disk_release(&self) -> Result<(), LocalError> {
        self.disk_bytes("disk_release")?;
        disk::release(&self.inner.data_dir)
    }

    /// Makes the data directory read-only, or writable again. A remount when
    /// the kernel allows it (no file open for writing there, i.e. the
    /// orchestrator is down); otherwise libfiu makes its disk writes fail
    /// with EROFS, which needs `needs.io_errors`.
    pub async fn set_read_only(&self, read_only: bool) -> Result<(), LocalError> {
        self.disk_bytes("set_read_only")?;
        let dir = &self.inner.data_dir;
        let mut st = self.inner.proc.lock().await;
        if read_only {
            if st.read_only.is_some() {
                return Ok(());
            }
            match disk::remount(dir, true) {
                Ok(()) => st.read_only = Some(ReadOnly::Remount),
                Err(nix::Error::EBUSY) if self.inner.fiu.is_some() => {
                    st.read_only = Some(ReadOnly::Fiu);
                    if let Err(e) = self.inner.apply_fiu(&mut st).await {
                        st.read_only = None;
                        return Err(e);
                    }
                }
                Err(nix::Error::EBUSY) => {
                    return Err(LocalError::ReadOnlyBusy { path: dir.clone() });
                }
                Err(source) => {
                    return Err(LocalError::Mount {
                        action: "remount read-only",
                        path: dir.clone(),
                        source,
                    });
                }
            }
            return Ok(());
        }
        match st.read_only.take() {
            Some(ReadOnly::Remount) => {
                disk::remount(dir, false).map_err(|source| LocalError::Mount {
                    action: "remount read-write",
                    path: dir.clone(),
                    source,
                })
            }
            Some(ReadOnly::Fiu) => self.inner.apply_fiu(&mut st).await,
            None => Ok(()),
        }
    }

    /// Makes the orchestrator's disk writes fail with this probability
    /// (libfiu picks a plausible errno each time). Kept across restarts.
    pub async fn io_errors(&self, probability: f64) -> Result<(), LocalError> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(LocalError::BadProbability { probability });
        }
        if self.inner.fiu.is_none() {
            return Err(LocalError::NotPrepared {
                fault: "io_errors",
                need: "io_errors",
            });
        }
        let mut st = self.inner.proc.lock().await;
        let before = st.io_errors.replace(probability);
        let applied = self.inner.apply_fiu(&mut st).await;
        if applied.is_err() {
            st.io_errors = before;
        }
        applied
    }

    /// Ends [`LocalSystem::io_errors`].
    pub async fn io_errors_off(&self) -> Result<(), LocalError> {
        if self.inner.fiu.is_none() {
            return Err(LocalError::NotPrepared {
                fault: "io_errors_off",
                need: "io_errors",
            });
        }
        let mut st = self.inner.proc.lock().await;
        st.io_errors = None;
        self.inner.apply_fiu(&mut st).await
    }

    /// Limits the cgroup to `limit_bytes` and fills it, so that the kernel's
    /// OOM killer kills the orchestrator ([`memory`] has the details). Returns
    /// once the hog is done; the kill shows as an `Exited` event with
    /// `oom: true`, after which the supervisor restarts the orchestrator
    /// (which is killed again while the memory is held, within
    /// `max_restarts`).
    pub async fn oom(&self, limit_bytes: u64) -> Result<(), LocalError> {
        let Some(cgroup) = self.inner.cgroup.clone() else {
            return Err(LocalError::NotPrepared {
                fault: "oom",
                need: "memory",
            });
        };
        let limit_cgroup = cgroup.clone();
        tokio::task::spawn_blocking(move || limit_cgroup.set_limit(Some(limit_bytes)))
            .await
            .map_err(|e| LocalError::Cgroup {
                action: "write the limit of",
                path: cgroup.path.clone(),
                source: std::io::Error::other(e),
            })??;
        let hog_dir = self.inner.hog_dir.clone();
        if !self.inner.hog_mounted.load(Ordering::SeqCst) {
            let recorded = hog_dir.clone();
            self.inner.update_record(|r| r.mounts.push(recorded))?;
            disk::mount_tmpfs(
                &format!("gauntlet-{}-memory-hog", self.inner.run_id),
                &hog_dir,
                limit_bytes,
            )?;
            self.inner.hog_mounted.store(true, Ordering::SeqCst);
        }
        let procs = cgroup.procs_file();
        let mib = limit_bytes.div_ceil(1 << 20);
        let args: Vec<OsString> = vec![
            "if=/dev/zero".into(),
            format!("of={}", hog_dir.join("hog").display()).into(),
            "bs=1M".into(),
            format!("count={mib}").into(),
        ];
        let mut cmd = process::command(
            Path::new("dd"),
            &args,
            &Placement {
                cgroup_procs: Some(&procs),
                // Default: the orchestrator at 1000 is chosen first; once it
                // is dead the hog may be killed too, and its pages stay charged.
                oom_score_adj: None,
                fiu_args: None,
            },
        );
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut hog = cmd.spawn().map_err(|source| LocalError::Spawn {
            program: "dd (memory hog)".to_owned(),
            source,
        })?;
        self.inner
            .hog_pid
            .store(hog.id().unwrap_or(0), Ordering::SeqCst);
        // The hog fails with ENOMEM or ENOSPC once the cgroup or its tmpfs is
        // full, which is the point; only the time it takes matters.
        let waited = tokio::time::timeout(Duration::from_millis(HOG_WAIT_MS), hog.wait()).await;
        self.inner.hog_pid.store(0, Ordering::SeqCst);
        match waited {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = hog.start_kill();
                Err(LocalError::StuckProcess {
                    pid: hog.id().unwrap_or(0),
                    signal: "none (the memory hog did not finish)",
                    waited_ms: HOG_WAIT_MS,
                })
            }
        }
    }

    /// Ends [`LocalSystem::oom`]: frees the hog's memory, lifts the limit and
    /// makes sure the orchestrator runs and is ready.
    pub async fn oom_end(&self) -> Result<(), LocalError> {
        let Some(cgroup) = self.inner.cgroup.clone() else {
            return Err(LocalError::NotPrepared {
                fault: "oom_end",
                need: "memory",
            });
        };
        self.inner.remove_hog()?;
        let path = cgroup.path.clone();
        tokio::task::spawn_blocking(move || cgroup.set_limit(None))
            .await
            .map_err(|e| LocalError::Cgroup {
                action: "lift the limit of",
                path,
                source: std::io::Error::other(e),
            })??;
        let mut st = self.inner.proc.lock().await;
        if st.alive_child().is_some() || st.hold.is_some() {
            return Ok(());
        }
        self.inner.spawn_ready(&mut st).await.map(drop)
    }

    /// SIGTERM (resumed first if paused; SIGKILL after 20 s), then removes the
    /// mounts, the cgroup and the state record. On an error the record stays,
    /// for `gauntlet gc`.
    pub async fn shutdown(self) -> Result<ShutdownReport, LocalError> {
        self.shutdown_preserving(None).await
    }

    /// [`LocalSystem::shutdown`], but first, once the process has stopped,
    /// copies the data directory's files (the database and its WAL) into
    /// `preserve`, because a tmpfs data directory vanishes with the teardown
    /// and the checks read the database afterwards. The disk filler is not
    /// copied.
    pub async fn shutdown_preserving(
        mut self,
        preserve: Option<&Path>,
    ) -> Result<ShutdownReport, LocalError> {
        self.torn_down = true;
        let inner = self.inner.clone();
        inner.closed.store(true, Ordering::SeqCst);
        let (exit, restarts) = {
            let mut st = inner.proc.lock().await;
            st.hold = Some(Hold::Stopping);
            let exit = inner.stop(&mut st, Signal::SIGTERM).await;
            (exit, st.restarts)
        };
        let mut results = vec![inner.remove_hog()];
        if let Some(dest) = preserve {
            results.push(copy_data(&inner.data_dir, dest));
        }
        if inner.disk_bytes.is_some() {
            results.push(
                disk::unmount(&inner.data_dir).map_err(|source| LocalError::Mount {
                    action: "unmount",
                    path: inner.data_dir.clone(),
                    source,
                }),
            );
        }
        if let Some(cgroup) = inner.cgroup.clone() {
            let path = cgroup.path.clone();
            results.push(
                tokio::task::spawn_blocking(move || cgroup.remove())
                    .await
                    .unwrap_or_else(|e| {
                        Err(LocalError::Cgroup {
                            action: "remove",
                            path,
                            source: std::io::Error::other(e),
                        })
                    }),
            );
        }
        // Any failure keeps the record, for `gauntlet gc`.
        let exit = exit?;
        results
            .into_iter()
            .collect::<Result<Vec<()>, LocalError>>()?;
        StateRecord::remove(&inner.state_dir, &inner.run_id).map_err(|source| {
            LocalError::File {
                action: "remove",
                path: StateRecord::path(&inner.state_dir, &inner.run_id),
                source,
            }
        })?;
        Ok(ShutdownReport {
            graceful: exit == Some(Exit::Code(0)),
            exit,
            restarts,
            events: lock(&inner.events).clone(),
        })
    }
}

/// Copies the regular files of `data_dir` whose names start with the
/// database's (`orchestrator.db`, `-wal`, `-shm`) into `dest`.
pub(crate) fn copy_data(data_dir: &Path, dest: &Path) -> Result<(), LocalError> {
    let file_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalError::File {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dest).map_err(file_error("create", dest))?;
    let entries = std::fs::read_dir(data_dir).map_err(file_error("read", data_dir))?;
    for entry in entries {
        let entry = entry.map_err(file_error("read", data_dir))?;
        let name = entry.file_name();
        let keep = name.to_string_lossy().starts_with("orchestrator.db");
        if keep && entry.file_type().is_ok_and(|t| t.is_file()) {
            let to = dest.join(&name);
            std::fs::copy(entry.path(), &to).map_err(file_error("copy", &to))?;
        }
    }
    Ok(())
}

impl Drop for LocalSystem {
    fn drop(&mut self) {
        if !self.torn_down {
            self.inner.teardown_sync();
        }
    }
}

impl fmt::Debug for LocalSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSystem")
            .field("run_id", &self.inner.run_id)
            .field("addr", &self.addr())
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}
