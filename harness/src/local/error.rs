//! Errors of the local backend.

use std::io;
use std::path::PathBuf;

/// What this machine lacks for the fault machinery a run asked for
/// ([`crate::local::check_needs`]).
#[derive(Debug, thiserror::Error)]
pub enum UnmetNeed {
    /// Mounts and cgroups are root's business.
    #[error("{need} needs root, but the harness runs as uid {uid}")]
    NotRoot {
        /// The fault machinery that needs root.
        need: &'static str,
        /// The harness's effective uid.
        uid: u32,
    },
    /// The kernel refused a tmpfs mount (no CAP_SYS_ADMIN in this namespace,
    /// a seccomp profile, a read-only /proc...).
    #[error("disk faults need a tmpfs mount, which is not permitted here: mounting at {}: {source}", path.display())]
    MountNotPermitted {
        /// Where the probe mount was tried.
        path: PathBuf,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// libfiu's tools are missing.
    #[error(
        "io error faults need libfiu's `{tool}`, which is not on PATH: install it with `apt-get install fiu-utils`"
    )]
    FiuNotInstalled {
        /// The missing tool (`fiu-run` or `fiu-ctrl`).
        tool: &'static str,
    },
    /// No memory controller that this process may create cgroups in.
    #[error("memory faults need a writable memory cgroup: {detail}")]
    NoMemoryCgroup {
        /// What is missing or what failed.
        detail: String,
    },
}

/// A failure of the local backend. Messages name what failed and where; the
/// start failures carry the last lines of the orchestrator's log.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The machine lacks what the run's [`crate::local::Needs`] asked for.
    #[error(transparent)]
    Unmet(#[from] UnmetNeed),
    /// The run id names files, mounts and cgroups, so it is restricted.
    #[error(
        "run id {run_id:?} is invalid: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot"
    )]
    BadRunId {
        /// The rejected id.
        run_id: String,
    },
    /// A file or directory of the run could not be written or removed.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// What was attempted (`write`, `create`, `remove`...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's answer.
        source: io::Error,
    },
    /// The orchestrator (or a helper process) could not be spawned.
    #[error("cannot spawn {program}: {source}")]
    Spawn {
        /// The program that was spawned.
        program: String,
        /// The operating system's answer.
        source: io::Error,
    },
    /// The orchestrator did not announce itself in time.
    #[error("the orchestrator did not print `listening on` within {waited_ms} ms; last lines of {}:\n{tail}", log.display())]
    NotReady {
        /// How long the harness waited.
        waited_ms: u64,
        /// The orchestrator's log file.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The orchestrator exited before it was ready (bad config, port taken,
    /// database locked or unwritable...).
    #[error("the orchestrator exited ({exit}) before it was ready; last lines of {}:\n{tail}", log.display())]
    ExitedEarly {
        /// How it ended.
        exit: super::Exit,
        /// The orchestrator's log file.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The orchestrator did not exit after SIGKILL within the bound.
    #[error("the orchestrator (pid {pid}) did not exit within {waited_ms} ms of {signal}")]
    StuckProcess {
        /// Its pid.
        pid: u32,
        /// The signal it ignored or did not get to.
        signal: &'static str,
        /// How long the harness waited.
        waited_ms: u64,
    },
    /// A signal could not be delivered.
    #[error("cannot send {signal} to pid {pid}: {source}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// The target.
        pid: u32,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// The fault needs a running orchestrator and there is none (killed, not
    /// restarted, or the supervisor gave up).
    #[error("{fault}: the orchestrator is not running")]
    NotRunning {
        /// The fault that was asked for.
        fault: &'static str,
    },
    /// The fault's machinery was not prepared at start ([`crate::local::Needs`]).
    #[error("{fault} needs `needs.{need}` in the run's local config, which was not set at start")]
    NotPrepared {
        /// The fault that was asked for.
        fault: &'static str,
        /// The field of `Needs` that prepares it.
        need: &'static str,
    },
    /// A mount, unmount or remount failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Mount {
        /// `mount a tmpfs at`, `unmount`, `remount read-only`...
        action: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// The data directory could not be made read-only: the orchestrator holds
    /// files open for writing there, which makes the kernel refuse the
    /// remount, and libfiu (needs.io_errors) is not there to fail its writes.
    #[error("cannot make {} read-only while the orchestrator has files open for writing there (EBUSY); set needs.io_errors so that its writes fail with EROFS instead", path.display())]
    ReadOnlyBusy {
        /// The data directory.
        path: PathBuf,
    },
    /// Filling the data tmpfs ended with an error other than ENOSPC.
    #[error("cannot fill {} up to ENOSPC: {source}", path.display())]
    Fill {
        /// The filler file.
        path: PathBuf,
        /// The operating system's answer.
        source: io::Error,
    },
    /// A memory cgroup file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Cgroup {
        /// `create`, `write`, `read`, `remove`.
        action: &'static str,
        /// The cgroup file or directory.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// `fiu-ctrl` failed, timed out, or the orchestrator rejected a command.
    #[error("fiu-ctrl {command:?} for pid {pid} failed: {detail}")]
    Fiu {
        /// The libfiu remote control command.
        command: String,
        /// The orchestrator's pid.
        pid: u32,
        /// What went wrong.
        detail: String,
    },
    /// A probability outside [0, 1].
    #[error("io error probability {probability} is outside [0, 1]")]
    BadProbability {
        /// The rejected value.
        probability: f64,
    },
    /// The state record could not be written.
    #[error("cannot write the state record {}: {source}", path.display())]
    StateRecord {
        /// The record file.
        path: PathBuf,
        /// The operating system's answer.
        source: io::Error,
    },
}

/// A failure of `gauntlet gc` on one item; the others are still cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The state directory exists but cannot be listed.
    #[error("cannot read the state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's answer.
        source: io::Error,
    },
    /// A record cannot be read or parsed; it is left in place.
    #[error("cannot read the state record {}: {detail}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A recorded orchestrator could not be killed or did not die.
    #[error("cannot kill pid {pid} of run {run_id}: {detail}")]
    Kill {
        /// The run.
        run_id: String,
        /// The process.
        pid: u32,
        /// What went wrong.
        detail: String,
    },
    /// A recorded mount could not be removed.
    #[error("cannot unmount {} of run {run_id}: {source}", path.display())]
    Unmount {
        /// The run.
        run_id: String,
        /// The mount point.
        path: PathBuf,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// A recorded cgroup or file could not be removed.
    #[error("cannot remove {} of run {run_id}: {source}", path.display())]
    Remove {
        /// The run.
        run_id: String,
        /// The cgroup directory, file or record.
        path: PathBuf,
        /// The operating system's answer.
        source: io::Error,
    },
}
