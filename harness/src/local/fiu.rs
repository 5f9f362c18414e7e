//! I/O errors through libfiu: the orchestrator is started under
//! `fiu-run -x` (its POSIX wrappers preloaded, a control FIFO per process)
//! and `fiu-ctrl` turns failure points on and off in the running process.
//!
//! Only the file-I/O points are used: `posix/io/*` would also fail
//! `accept`, `recv` and the `write`/`writev` of sockets, which turns a disk
//! fault into a network one and leaves nothing that could report it.
//! SQLite writes its database and WAL with `pwrite64` and syncs with
//! `fsync`/`fdatasync`, while tokio's sockets use `write`/`writev`/`recv`,
//! so the two are told apart by the function.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::error::LocalError;

/// The failure points of disk writes.
pub const DISK_WRITE_POINTS: &[&str] = &[
    "posix/io/rw/pwrite",
    "posix/io/rw/pwritev",
    "posix/io/rw/ftruncate",
    "posix/io/sync/fsync",
    "posix/io/sync/fdatasync",
];
/// How long one `fiu-ctrl` may take. It blocks on the process's FIFO, so a
/// stopped (paused) process would hang it for ever.
const CTRL_TIMEOUT_MS: u64 = 5_000;

/// The libfiu set-up of one run.
#[derive(Clone, Debug)]
pub struct Fiu {
    /// Prefix of the control FIFOs (`PREFIX-PID.in`, `.out`), inside the run
    /// directory so that nothing is left in /tmp.
    pub fifo_prefix: PathBuf,
}

/// Which failure the points give.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Injection {
    /// libfiu's choice of a plausible errno (EIO, ENOSPC, EBADF...), with
    /// this probability.
    Random(f64),
    /// Always EROFS: what writes on a file system the kernel forced
    /// read-only return.
    ReadOnly,
}

impl Fiu {
    /// The set-up for `run_dir`.
    pub fn new(run_dir: &Path) -> Fiu {
        Fiu {
            fifo_prefix: run_dir.join("fiu-ctrl"),
        }
    }

    /// `fiu-run` arguments placed before the program: preload the POSIX
    /// wrappers, control FIFOs under our prefix, and the injections already
    /// in force, so that they survive a restart.
    pub fn run_args(&self, active: &[Injection]) -> Vec<String> {
        let mut args = vec![
            "-x".to_owned(),
            "-f".to_owned(),
            self.fifo_prefix.to_string_lossy().into_owned(),
        ];
        for injection in active {
            for command in enable_commands(*injection) {
                args.push("-c".to_owned());
                args.push(command);
            }
        }
        args
    }

    /// Sends `commands` to the process `pid`. `fiu-ctrl` exits 0 even when it
    /// fails, and says so on stdout, so any output is an error.
    pub async fn control(&self, pid: u32, commands: &[String]) -> Result<(), LocalError> {
        let mut cmd = Command::new("fiu-ctrl");
        cmd.arg("-f").arg(&self.fifo_prefix);
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        cmd.arg(pid.to_string()).kill_on_drop(true);
        let joined = commands.join("; ");
        let fail = |detail: String| LocalError::Fiu {
            command: joined.clone(),
            pid,
            detail,
        };
        let output = tokio::time::timeout(Duration::from_millis(CTRL_TIMEOUT_MS), cmd.output())
            .await
            .map_err(|_| {
                fail(format!(
                    "no answer within {CTRL_TIMEOUT_MS} ms (is the process stopped?)"
                ))
            })?
            .map_err(|e| fail(format!("cannot run fiu-ctrl: {e}")))?;
        let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let complained = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if output.status.success() && said.is_empty() && complained.is_empty() {
            Ok(())
        } else {
            Err(fail(format!("{} {said} {complained}", output.status)))
        }
    }
}

/// The `enable*` commands of an injection.
pub fn enable_commands(injection: Injection) -> Vec<String> {
    DISK_WRITE_POINTS
        .iter()
        .map(|point| match injection {
            Injection::Random(p) => format!("enable_random name={point},probability={p}"),
            Injection::ReadOnly => {
                format!("enable name={point},failinfo={}", nix::libc::EROFS)
            }
        })
        .collect()
}

/// The `disable` commands of every point.
pub fn disable_commands() -> Vec<String> {
    DISK_WRITE_POINTS
        .iter()
        .map(|point| format!("disable name={point}"))
        .collect()
}

/// Finds `tool` on PATH.
pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
