//! `gauntlet gc`: removes what killed runs left behind, as their state
//! records name it.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::error::GcError;
use super::state::{self, StateRecord};
use super::{disk, memory, process};

/// How long gc waits for a killed orchestrator to be gone before unmounting.
const KILL_WAIT_MS: u64 = 5_000;

/// What [`gc`] did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Orchestrator processes killed: (run id, pid).
    pub killed: Vec<(String, u32)>,
    /// Mount points unmounted.
    pub unmounted: Vec<PathBuf>,
    /// Cgroups removed.
    pub cgroups_removed: Vec<PathBuf>,
    /// Runs whose records were removed.
    pub records_removed: Vec<String>,
    /// Runs left alone, and why.
    pub skipped: Vec<String>,
    /// What could not be removed (the record then stays).
    pub errors: Vec<GcError>,
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (run, pid) in &self.killed {
            writeln!(f, "killed orchestrator pid {pid} of run {run}")?;
        }
        for path in &self.unmounted {
            writeln!(f, "unmounted {}", path.display())?;
        }
        for path in &self.cgroups_removed {
            writeln!(f, "removed cgroup {}", path.display())?;
        }
        for run in &self.records_removed {
            writeln!(f, "removed the state record of run {run}")?;
        }
        for reason in &self.skipped {
            writeln!(f, "skipped {reason}")?;
        }
        if self.killed.is_empty()
            && self.unmounted.is_empty()
            && self.cgroups_removed.is_empty()
            && self.records_removed.is_empty()
            && self.skipped.is_empty()
            && self.errors.is_empty()
        {
            writeln!(f, "local: nothing to clean up")?;
        }
        Ok(())
    }
}

/// Cleans up after every dead run recorded in the default state directory
/// ([`super::default_state_dir`]).
pub fn gc() -> GcReport {
    gc_in(&state::default_state_dir())
}

/// Cleans up after every dead run recorded in `state_dir`: kills its
/// orchestrator if it still runs (only a process with the recorded start time
/// and an orchestrator command line), unmounts its mounts, removes its
/// cgroups, then its record. Runs whose harness still lives are skipped.
pub fn gc_in(state_dir: &Path) -> GcReport {
    let mut report = GcReport::default();
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return report,
        Err(source) => {
            report.errors.push(GcError::StateDir {
                path: state_dir.to_path_buf(),
                source,
            });
            return report;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_record = path.extension().is_some_and(|e| e == "json")
            && !entry.file_name().to_string_lossy().starts_with('.');
        if !is_record {
            continue;
        }
        let record = match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<StateRecord>(&bytes).map_err(|e| e.to_string())
            }) {
            Ok(record) => record,
            Err(detail) => {
                report.errors.push(GcError::Record { path, detail });
                continue;
            }
        };
        if let Some(owner) = record.owner.filter(state::ProcessId::is_alive) {
            report.skipped.push(format!(
                "run {}: its harness (pid {}) is still running",
                record.run_id, owner.pid
            ));
            continue;
        }
        clean(&record, state_dir, &mut report);
    }
    report
}

fn clean(record: &StateRecord, state_dir: &Path, report: &mut GcReport) {
    let errors_before = report.errors.len();
    let run_id = &record.run_id;
    let mut killed = Vec::new();
    for id in &record.pids {
        if !id.is_alive() || !state::is_orchestrator_cmdline(&state::cmdline(id.pid)) {
            continue;
        }
        // A stopped (paused) process dies of SIGKILL too; SIGCONT is for
        // the record, so that nothing is left stopped if SIGKILL is refused.
        let _ = process::signal(id.pid, Signal::SIGCONT);
        match process::signal(id.pid, Signal::SIGKILL) {
            Ok(()) => killed.push(*id),
            Err(e) => report.errors.push(GcError::Kill {
                run_id: run_id.clone(),
                pid: id.pid,
                detail: e.to_string(),
            }),
        }
    }
    state::wait_until_gone(&killed, Duration::from_millis(KILL_WAIT_MS));
    for id in killed {
        if id.is_alive() {
            report.errors.push(GcError::Kill {
                run_id: run_id.clone(),
                pid: id.pid,
                detail: format!("still alive {KILL_WAIT_MS} ms after SIGKILL"),
            });
        } else {
            report.killed.push((run_id.clone(), id.pid));
        }
    }
    // Innermost (latest) mounts first.
    for mount_point in record.mounts.iter().rev() {
        if !state::is_mounted(mount_point) {
            continue;
        }
        match disk::unmount(mount_point) {
            Ok(()) => report.unmounted.push(mount_point.clone()),
            Err(source) => report.errors.push(GcError::Unmount {
                run_id: run_id.clone(),
                path: mount_point.clone(),
                source,
            }),
        }
    }
    for cgroup in &record.cgroups {
        if !cgroup.exists() {
            continue;
        }
        match memory::remove_dir(cgroup) {
            Ok(()) => report.cgroups_removed.push(cgroup.clone()),
            Err(source) => report.errors.push(GcError::Remove {
                run_id: run_id.clone(),
                path: cgroup.clone(),
                source,
            }),
        }
    }
    if report.errors.len() > errors_before {
        return;
    }
    match StateRecord::remove(state_dir, run_id) {
        Ok(()) => report.records_removed.push(run_id.clone()),
        Err(source) => report.errors.push(GcError::Remove {
            run_id: run_id.clone(),
            path: StateRecord::path(state_dir, run_id),
            source,
        }),
    }
}
