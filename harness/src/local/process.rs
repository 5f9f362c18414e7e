//! Spawning the orchestrator and waiting for it: the command line (cgroup
//! join, libfiu, launcher), the `listening on` line, exits, signals, the log.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;

use super::error::LocalError;
use super::{Exit, Launcher};

/// The prefix of the one stdout line the orchestrator prints when ready.
const READY_PREFIX: &str = "listening on http://";
/// Longest stdout line read while waiting for readiness.
const MAX_LINE_BYTES: u64 = 4096;
/// Most bytes read from the end of the log for a tail.
const MAX_TAIL_BYTES: u64 = 256 * 1024;

/// Joins the cgroup whose `cgroup.procs` is `$GAUNTLET_CGROUP_PROCS`, sets the
/// OOM score adjustment to `$GAUNTLET_OOM_SCORE_ADJ` when given, then becomes
/// the program: the process is in the cgroup before its first allocation, so
/// everything it ever uses is charged there. `/proc/self` in a redirection is
/// the shell itself, which `exec` keeps as the same process.
const JOIN_CGROUP_SCRIPT: &str = r#"echo $$ > "$GAUNTLET_CGROUP_PROCS" && { [ -z "$GAUNTLET_OOM_SCORE_ADJ" ] || echo "$GAUNTLET_OOM_SCORE_ADJ" > /proc/self/oom_score_adj; } && exec "$@""#;

/// How a process is placed before it runs.
pub struct Placement<'a> {
    /// `cgroup.procs` of the cgroup to join, if any.
    pub cgroup_procs: Option<&'a Path>,
    /// Its `oom_score_adj` (with a cgroup only). Raising needs no privilege;
    /// lowering below 0 needs CAP_SYS_RESOURCE, which containers often lack.
    pub oom_score_adj: Option<i32>,
    /// `fiu-run` arguments, when it runs under libfiu.
    pub fiu_args: Option<Vec<String>>,
}

/// Builds `[sh -c JOIN sh] [fiu-run ARGS] PROGRAM ARGS`.
pub fn command(program: &Path, args: &[OsString], placement: &Placement<'_>) -> Command {
    let mut argv: Vec<OsString> = Vec::new();
    if let Some(fiu_args) = &placement.fiu_args {
        argv.push("fiu-run".into());
        argv.extend(fiu_args.iter().map(OsString::from));
    }
    argv.push(program.as_os_str().to_owned());
    argv.extend(args.iter().cloned());
    let mut cmd = match placement.cgroup_procs {
        Some(procs) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(JOIN_CGROUP_SCRIPT)
                .arg("sh")
                .env("GAUNTLET_CGROUP_PROCS", procs)
                .env(
                    "GAUNTLET_OOM_SCORE_ADJ",
                    placement
                        .oom_score_adj
                        .map(|adj| adj.to_string())
                        .unwrap_or_default(),
                );
            cmd.args(&argv);
            cmd
        }
        None => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
    };
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// The orchestrator's own arguments.
pub fn orchestrator_args(
    launcher: &Launcher,
    config: &Path,
    listen: SocketAddr,
    seed: u64,
) -> Vec<OsString> {
    let mut args = launcher.prefix_args.clone();
    args.push("--config".into());
    args.push(config.as_os_str().to_owned());
    args.push("--listen".into());
    args.push(listen.to_string().into());
    args.push("--seed".into());
    args.push(seed.to_string().into());
    args
}

/// Opens the log for appending (every start appends to the same file).
pub fn open_log(path: &Path) -> Result<File, LocalError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LocalError::File {
            action: "open",
            path: path.to_path_buf(),
            source,
        })
}

/// Why readiness was not reached.
pub enum NotReady {
    /// The deadline passed.
    Timeout,
    /// The process exited first.
    Exited(Exit),
}

/// Reads stdout until the `listening on` line, the process's exit, or the
/// deadline. After the line, stdout is drained in the background so that a
/// later print cannot fail with EPIPE.
pub async fn await_ready(
    stdout: ChildStdout,
    exited: &mut watch::Receiver<Option<Exit>>,
    timeout: Duration,
) -> Result<SocketAddr, NotReady> {
    let mut reader = BufReader::new(stdout);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut line = String::new();
    let mut stdout_open = true;
    loop {
        line.clear();
        let step = tokio::select! {
            read = read_line_bounded(&mut reader, &mut line), if stdout_open => Step::Read(read),
            changed = exited.wait_for(Option::is_some) => {
                // A reaper gone without a status is a lost process.
                Step::Exited(changed.ok().and_then(|exit| *exit).unwrap_or(Exit::Unknown))
            }
            () = tokio::time::sleep_until(deadline) => Step::Timeout,
        };
        match step {
            Step::Read(Ok(0) | Err(_)) => stdout_open = false,
            Step::Read(Ok(_)) => {
                if let Some(addr) = line
                    .trim_end()
                    .strip_prefix(READY_PREFIX)
                    .and_then(|a| a.parse().ok())
                {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
                    });
                    return Ok(addr);
                }
            }
            Step::Exited(exit) => return Err(NotReady::Exited(exit)),
            Step::Timeout => return Err(NotReady::Timeout),
        }
    }
}

/// One step of the readiness wait.
enum Step {
    Read(io::Result<usize>),
    Exited(Exit),
    Timeout,
}

async fn read_line_bounded(
    reader: &mut BufReader<ChildStdout>,
    line: &mut String,
) -> io::Result<usize> {
    reader.take(MAX_LINE_BYTES).read_line(line).await
}

impl From<io::Result<ExitStatus>> for Exit {
    fn from(status: io::Result<ExitStatus>) -> Exit {
        match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Unknown,
            },
            Err(_) => Exit::Unknown,
        }
    }
}

/// Waits for the child and returns how it ended.
pub async fn reap(child: &mut Child) -> Exit {
    Exit::from(child.wait().await)
}

/// Sends `signal` to `pid`. A process that is already gone is not an error.
pub fn signal(pid: u32, signal: Signal) -> Result<(), LocalError> {
    let raw = i32::try_from(pid).map_err(|_| LocalError::Signal {
        signal: signal.as_str(),
        pid,
        source: nix::Error::EINVAL,
    })?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(LocalError::Signal {
            signal: signal.as_str(),
            pid,
            source,
        }),
    }
}

/// The last `lines` lines of the file at `path` (at most the last 256 KiB of
/// it); empty when it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.take(MAX_TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The config file's path in the run directory.
pub fn config_path(run_dir: &Path) -> PathBuf {
    run_dir.join("orchestrator.yaml")
}
