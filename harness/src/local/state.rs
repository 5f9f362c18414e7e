//! State records: what a run created on this machine, written before it is
//! created, so that `gauntlet gc` can undo it after the harness was killed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default state directory, when `$GAUNTLET_STATE_DIR` is not set.
pub const DEFAULT_STATE_DIR: &str = "/tmp/gauntlet-state";

/// `$GAUNTLET_STATE_DIR`, or [`DEFAULT_STATE_DIR`].
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("GAUNTLET_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from)
}

/// A process as the kernel names it: a pid alone could be reused after the
/// process died, the pair cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot.
    pub start_ticks: u64,
}

impl ProcessId {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<ProcessId> {
        start_ticks(pid).map(|start_ticks| ProcessId { pid, start_ticks })
    }

    /// Whether this very process still exists (a zombie counts as gone: it
    /// holds no memory, mount or cgroup any more).
    pub fn is_alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => parse_stat(&stat)
                .is_some_and(|(state, ticks)| ticks == self.start_ticks && state != 'Z'),
            Err(_) => false,
        }
    }
}

/// Waits, for at most `limit`, until none of `ids` is alive. They are not
/// our children (or their reaper may be gone), so there is nothing to await:
/// the kernel finishes them on its own time, and only then are their mounts
/// free and their cgroups empty. Polls every 10 ms.
pub fn wait_until_gone(ids: &[ProcessId], limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while ids.iter().any(ProcessId::is_alive) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The state and start time from a `/proc/PID/stat` line. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; the start time is field 22, 19 further on.
    let ticks = fields.nth(18)?.parse().ok()?;
    Some((state, ticks))
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, ticks)| ticks)
}

/// The command line of `pid`, arguments joined by spaces (empty for zombies
/// and kernel threads).
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Whether a command line is one the local backend starts: `gc` kills only
/// those, so a recycled pid or a stale record never takes another process.
pub fn is_orchestrator_cmdline(cmdline: &str) -> bool {
    cmdline.contains("__serve-orchestrator")
        || cmdline
            .split(' ')
            .any(|arg| arg == "orchestrator" || arg.ends_with("/orchestrator"))
            && cmdline.split(' ').any(|arg| arg == "serve")
}

/// What one run holds on this machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateRecord {
    /// The run.
    pub run_id: String,
    /// The harness process that owns the run; `gc` leaves the run alone
    /// while it lives.
    pub owner: Option<ProcessId>,
    /// Orchestrator processes (the current one; earlier ones are dead).
    pub pids: Vec<ProcessId>,
    /// Mount points, innermost last.
    pub mounts: Vec<PathBuf>,
    /// Cgroup directories.
    pub cgroups: Vec<PathBuf>,
}

impl StateRecord {
    /// The record's file in `dir`.
    pub fn path(dir: &Path, run_id: &str) -> PathBuf {
        dir.join(format!("{run_id}.json"))
    }

    /// Writes the record atomically (a reader sees the old or the new one).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        let path = Self::path(dir, &self.run_id);
        let tmp = dir.join(format!(".{}.json.tmp", self.run_id));
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        fs::write(&tmp, json)?;
        fs::rename(&tmp, &path)
    }

    /// Removes the record; a missing one is fine.
    pub fn remove(dir: &Path, run_id: &str) -> io::Result<()> {
        match fs::remove_file(Self::path(dir, run_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Whether `path` is a mount point now (per `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    // Field 5 is the mount point, with spaces and the like octal-escaped.
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mount_point(mount_point) == target)
}

fn unescape_mount_point(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 987_654)));
    }

    #[test]
    fn this_process_is_alive_and_a_different_start_time_is_not() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let other = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn only_orchestrator_command_lines_match() {
        assert!(is_orchestrator_cmdline(
            "/x/gauntlet __serve-orchestrator --config a"
        ));
        assert!(is_orchestrator_cmdline(
            "/usr/bin/orchestrator serve --config a"
        ));
        assert!(!is_orchestrator_cmdline(
            "/usr/bin/orchestrator config validate a"
        ));
        assert!(!is_orchestrator_cmdline("sleep 100"));
    }
}
