//! The scenario engine. A run is a pipeline of stages with typed hand-offs,
//! each doing one thing: bring-up ([`rig::up`] gives a `Rig`, whichever the
//! backend), drive ([`drive::drive`]: load, fault timeline, probes; gives
//! `Driven`), collect ([`collect::collect`]: settle, stop, read the copy of
//! the database with the harness's own code; gives the `Evidence`), judge
//! ([`crate::checks::run_all`], the only place verdicts are made) and report.
//! Teardown happens on every path: the backend's handles tear down when
//! dropped, so an error or a panic leaves nothing.

mod collect;
pub mod config;
mod drive;
pub mod faults;
pub mod observe;
mod rig;
pub mod system;

use std::path::PathBuf;
use std::time::Duration;

use orchestrator::exit::Exit;
use thiserror::Error;

use crate::checks;
use crate::images::ImageNames;
use crate::local::{self, Launcher, Needs};
use crate::report::{self, Report};
use crate::scenario::{Fault, FaultAction, Scenario};
use system::DOCKER_NO_FIU;

/// How long the orchestrator gets to say it is listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long jobs get to settle when `no_lost_jobs` does not say.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(10);
/// Restarts the backend's supervisor may make in one run.
pub const MAX_RESTARTS: u32 = 50;
/// The most requests one run may plan.
pub const MAX_REQUESTS: u64 = 200_000;
/// Time given to requests in flight when the load ends.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How a run is made.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Replaces the scenario's seed.
    pub seed: Option<u64>,
    /// Multiplies every duration of the load and the fault timeline.
    pub scale: f64,
    /// Where the report goes: `<report_dir>/<scenario name>/`.
    pub report_dir: PathBuf,
    /// Where the system runs.
    pub backend: Backend,
    /// Whether to draw a progress bar (on stderr).
    pub progress: bool,
    /// The progress bar's prefix, instead of the scenario's name.
    pub label: Option<String>,
    /// The run's index page, relative to each scenario's report.html, for
    /// the page's link back (none when no index is written).
    pub index_href: Option<String>,
}

/// Where the system runs.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Child processes on loopback; the orchestrator started by this launcher.
    Local(Launcher),
    /// Containers on a network of the run, from these images.
    Docker(ImageNames),
}

impl Backend {
    /// The backend's name, as the report records it.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::Docker(_) => "docker",
        }
    }
}

/// Why `scenario` cannot run on `backend`, if it cannot: the Docker
/// backend's static orchestrator cannot be preloaded with libfiu, and its
/// containers cannot reach the webhook sink on the harness's loopback.
/// Replicas and the Redis store run on both backends.
pub fn unsupported_on(backend: &Backend, scenario: &Scenario) -> Option<String> {
    if !matches!(backend, Backend::Docker(_)) {
        return None;
    }
    let kinds: Vec<&str> = scenario
        .faults
        .iter()
        .filter(|f| {
            matches!(
                f.action,
                FaultAction::IoErrors { .. } | FaultAction::ReadOnly { .. }
            )
        })
        .map(|f| f.action.kind())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !kinds.is_empty() {
        return Some(format!(
            "its {} faults {DOCKER_NO_FIU}",
            kinds.join(" and ")
        ));
    }
    let sink_faults = scenario
        .faults
        .iter()
        .any(|f| matches!(f.action, FaultAction::SinkProgram { .. }));
    (scenario.load.webhooks.is_some() || sink_faults).then(|| {
        "its webhooks go to the harness's own sink on loopback, which the containers cannot reach"
            .to_owned()
    })
}

/// Why a run could not be made (as opposed to a check that failed).
#[derive(Debug, Error)]
pub enum RunError {
    /// The machine lacks what a fault needs.
    #[error("scenario {scenario}: {reason}")]
    Unmet {
        /// The scenario.
        scenario: String,
        /// What is missing.
        reason: String,
    },
    /// The system could not be brought up or torn down.
    #[error("scenario {scenario}: {message}")]
    Environment {
        /// The scenario.
        scenario: String,
        /// What went wrong.
        message: String,
    },
    /// The run was interrupted (Ctrl-C).
    #[error("scenario {scenario}: interrupted")]
    Interrupted {
        /// The scenario.
        scenario: String,
    },
}

/// What the scenario's faults need from the machine.
pub fn needs_of(scenario: &Scenario) -> Needs {
    let mut needs = Needs::default();
    for f in &scenario.faults {
        match f.action {
            FaultAction::DiskFull { .. } => needs.disk_tmpfs_bytes = Some(DATA_TMPFS_BYTES),
            // The kernel refuses to remount a filesystem read-only while a
            // file on it is open for writing (SQLite always has one), so a
            // running service is made read-only through libfiu (EROFS).
            FaultAction::ReadOnly { .. } => {
                needs.disk_tmpfs_bytes = Some(DATA_TMPFS_BYTES);
                needs.io_errors = true;
            }
            FaultAction::IoErrors { .. } => needs.io_errors = true,
            FaultAction::Oom { .. } => needs.memory = true,
            _ => {}
        }
    }
    needs
}

/// Checks that this machine can run `scenario` on `backend`: what its
/// faults need from the host (root for mounts, libfiu, a memory cgroup),
/// named when missing. The Docker backend mounts the disk faults' tmpfs on
/// the host too; its memory faults need only the engine.
pub fn check_host(backend: &Backend, scenario: &Scenario) -> Result<(), String> {
    let needs = needs_of(scenario);
    let host_needs = match backend {
        Backend::Local(_) => needs,
        Backend::Docker(_) => Needs {
            disk_tmpfs_bytes: needs.disk_tmpfs_bytes,
            ..Needs::default()
        },
    };
    local::check_needs(&host_needs).map_err(|e| e.to_string())
}

/// The size of the data directory's tmpfs when a disk fault needs one.
pub const DATA_TMPFS_BYTES: u64 = 64 * 1024 * 1024;

/// Refuses a `--scale` that is not a positive, finite number.
pub fn check_scale(scale: f64) -> Result<(), String> {
    if scale > 0.0 && scale.is_finite() {
        Ok(())
    } else {
        Err(format!("--scale must be a positive number, got {scale}"))
    }
}

/// Returns a copy with every duration of the load and the timeline
/// multiplied by `factor` (SLO thresholds are not scaled).
pub fn scaled(scenario: &Scenario, factor: f64) -> Scenario {
    let scale = |d: Duration| Duration::from_secs_f64(d.as_secs_f64() * factor);
    let mut s = scenario.clone();
    for stage in &mut s.load.stages {
        stage.duration = scale(stage.duration);
    }
    for fault in &mut s.faults {
        fault.at = scale(fault.at);
        fault.duration = fault.duration.map(scale);
    }
    for slo in &mut s.slos {
        match &mut slo.window {
            crate::scenario::Window::After { delay, .. } => *delay = scale(*delay),
            crate::scenario::Window::Every(d) => *d = scale(*d).max(Duration::from_secs(1)),
            _ => {}
        }
    }
    s
}

/// Cancels a run (Ctrl-C): the load stops sending, faults revert, the
/// system is torn down, and the run reports [`RunError::Interrupted`].
pub use crate::load::CancellationSignal as Cancel;

/// Runs one scenario and writes its report. `Ok` carries the report
/// whatever the checks found; `Err` means the run could not be made.
pub async fn run(
    scenario: &Scenario,
    options: &RunOptions,
    cancel: &Cancel,
) -> Result<Report, RunError> {
    run_with_timeline(scenario, &scenario.faults, options, cancel).await
}

/// Runs `scenario` with `timeline` in place of its own faults (the same
/// checks judge it; a window naming a fault the timeline lacks fails), and
/// writes its report. This is how a caller varies the faults without
/// copying engine code.
pub async fn run_with_timeline(
    scenario: &Scenario,
    timeline: &[Fault],
    options: &RunOptions,
    cancel: &Cancel,
) -> Result<Report, RunError> {
    let timeline_from_file = timeline == scenario.faults.as_slice();
    let scenario = scaled(
        &Scenario {
            faults: timeline.to_vec(),
            ..scenario.clone()
        },
        options.scale,
    );
    let seed = options.seed.unwrap_or(scenario.seed);
    let name = scenario.name.clone();
    let env_err = |message: String| RunError::Environment {
        scenario: name.clone(),
        message,
    };
    let unmet = |reason: String| RunError::Unmet {
        scenario: name.clone(),
        reason,
    };
    if let Some(reason) = unsupported_on(&options.backend, &scenario) {
        return Err(unmet(format!(
            "cannot run on the {} backend: {reason}",
            options.backend.name()
        )));
    }
    check_host(&options.backend, &scenario).map_err(unmet)?;
    // The load is planned before anything starts, so that a bad plan costs nothing.
    let plan = drive::plan(&scenario, seed).map_err(env_err)?;
    let started = std::time::SystemTime::now();
    let run_id = run_id_of(&name, seed, started);
    let report_dir = options.report_dir.join(&name);
    std::fs::create_dir_all(&report_dir)
        .map_err(|e| env_err(format!("cannot create {}: {e}", report_dir.display())))?;
    let run_dir = tempfile::Builder::new()
        .prefix("gauntlet-run-")
        .tempdir()
        .map_err(|e| env_err(format!("cannot create a temporary directory: {e}")))?;

    let rig = rig::up(
        &options.backend,
        &scenario,
        seed,
        &run_id,
        run_dir.path(),
        needs_of(&scenario),
    )
    .await
    .map_err(env_err)?;
    let label = options.label.as_deref().unwrap_or(&scenario.name);
    let bar = report::progress_bar(options.progress, label, plan.len() as u64);
    let driven = match drive::drive(&rig, &scenario, plan, &scenario.faults, cancel, &bar).await {
        Ok(driven) => driven,
        Err(e) => {
            rig.abandon().await;
            return Err(env_err(e));
        }
    };
    if cancel.is_cancelled() {
        bar.abandon_with_message("interrupted");
        rig.abandon().await;
        return Err(RunError::Interrupted { scenario: name });
    }
    let collected = collect::collect(rig, driven, &scenario, run_dir.path(), &bar)
        .await
        .map_err(env_err)?;
    let results = checks::run_all(&scenario, &collected.evidence);
    let finished = std::time::SystemTime::now();
    let report = Report::new(report::ReportInput {
        scenario: &scenario,
        seed,
        scale: options.scale,
        run_id,
        started,
        finished,
        checks: results,
        load: &collected.load,
        evidence: &collected.evidence,
        process_events: collected
            .process_events
            .iter()
            .map(report::ProcessRecord::from)
            .collect(),
        backend: options.backend.name(),
        timeline_from_file,
    });
    bar.finish_and_clear();
    report::write(
        &report,
        &collected.evidence.history,
        &collected.log_path,
        &report_dir,
        options.index_href.as_deref(),
    )
    .map_err(|e| {
        env_err(format!(
            "cannot write the report to {}: {e}",
            report_dir.display()
        ))
    })?;
    Ok(report)
}

/// A run's id: names the state record, the mounts, the containers and the
/// network, so it is short and made of `a-z 0-9 -` (scenario names are
/// longer and freer).
fn run_id_of(name: &str, seed: u64, started: std::time::SystemTime) -> String {
    let millis = started
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let mut slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(16)
        .collect();
    if !slug.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        slug.insert(0, 's');
    }
    format!("{slug}-{}-{millis}", seed % 100_000)
}

/// `gauntlet run`: validates every scenario first (one bad file stops the
/// run before anything starts), then runs them one after another, printing
/// each summary to `out` and problems to `err`.
pub async fn run_paths(
    paths: &[PathBuf],
    options: &RunOptions,
    outputs: &report::Outputs,
    cancel: &Cancel,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Exit {
    let files = match crate::scenario::discover(paths) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return Exit::BadInput;
        }
    };
    let mut scenarios = Vec::new();
    let mut bad = false;
    for file in &files {
        match crate::scenario::load_file(file) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                let _ = writeln!(err, "{e}");
                bad = true;
            }
        }
    }
    if bad {
        let _ = writeln!(err, "error: invalid scenarios; nothing was run");
        return Exit::BadInput;
    }
    if let Err(e) = check_scale(options.scale) {
        let _ = writeln!(err, "error: {e}");
        return Exit::BadInput;
    }
    let colour = report::use_colour();
    let mut code = Exit::Pass;
    // A scenario whose faults this backend cannot inject is skipped, with the
    // reason; if that leaves nothing to run, the request itself was wrong.
    let runnable: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| match unsupported_on(&options.backend, s) {
            Some(reason) => {
                let _ = writeln!(
                    err,
                    "skipped: {} on the {} backend: {reason}",
                    s.name,
                    options.backend.name()
                );
                false
            }
            None => true,
        })
        .collect();
    if runnable.is_empty() {
        let _ = writeln!(
            err,
            "error: no scenario can run on the {} backend",
            options.backend.name()
        );
        return Exit::BadInput;
    }
    let mut reports = Vec::new();
    for scenario in runnable {
        if cancel.is_cancelled() {
            break;
        }
        match run(scenario, options, cancel).await {
            Ok(report) => {
                let _ = write!(out, "{}", report::summary(&report, colour));
                let _ = writeln!(
                    out,
                    "report: {}",
                    options
                        .report_dir
                        .join(&scenario.name)
                        .join("report.html")
                        .display()
                );
                if !report.passed {
                    code = code.worst(Exit::CheckFailed);
                }
                reports.push(report);
            }
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                code = code.worst(Exit::BadInput);
            }
        }
    }
    // Written even when a run could not be made, so that CI always has the
    // index and summaries of what did run.
    let entries: Vec<report::html::IndexEntry<'_>> = reports
        .iter()
        .map(|report| report::html::IndexEntry {
            report,
            href: format!("{}/report.html", report.scenario),
        })
        .collect();
    if let Err(e) = outputs.write(&options.report_dir, "gauntlet run", &entries) {
        let _ = writeln!(err, "error: {e}");
        return code.worst(Exit::BadInput);
    }
    if !reports.is_empty() {
        let _ = writeln!(
            out,
            "index: {}",
            options.report_dir.join("index.html").display()
        );
    }
    code
}
