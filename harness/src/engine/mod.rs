//! The scenario engine: brings the system up on the local backend, drives
//! the load while the fault timeline runs, gathers the evidence, judges it
//! and writes the report. Teardown happens on every path: the backend's
//! handles tear down when dropped, so an error or a panic leaves nothing.

pub mod config;
pub mod faults;
pub mod observe;
pub mod system;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checks::{self, Evidence, FaultSpan};
use crate::docker::{DockerConfig, DockerNeeds, DockerSystem};
use crate::images::ImageNames;
use crate::load::{self, LoadLimits, LoadTarget, OpKind, Outcome};
use crate::local::{self, Launcher, LocalConfig, LocalSystem, Needs};
use crate::mock_llm::{MockClient, MockConfig, MockLlm};
use crate::proxy::ProxyConfig;
use crate::proxy::{ProxyClient, ProxyServer, ProxyServerConfig};
use crate::report::{self, Report};
use crate::scenario::{FaultAction, Invariant, Scenario};
use system::{DOCKER_NO_FIU, Mock, System};

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
/// backend's static orchestrator cannot be preloaded with libfiu.
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
                FaultAction::IoErrors { .. } | FaultAction::ReadOnly
            )
        })
        .map(|f| f.action.kind())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    (!kinds.is_empty()).then(|| format!("its {} faults {DOCKER_NO_FIU}", kinds.join(" and ")))
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
            FaultAction::DiskFull => needs.disk_tmpfs_bytes = Some(DATA_TMPFS_BYTES),
            // The kernel refuses to remount a filesystem read-only while a
            // file on it is open for writing (SQLite always has one), so a
            // running service is made read-only through libfiu (EROFS).
            FaultAction::ReadOnly => {
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

/// The size of the data directory's tmpfs when a disk fault needs one.
pub const DATA_TMPFS_BYTES: u64 = 64 * 1024 * 1024;

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
    let scenario = scaled(scenario, options.scale);
    let seed = options.seed.unwrap_or(scenario.seed);
    let name = scenario.name.clone();
    let env_err = |message: String| RunError::Environment {
        scenario: name.clone(),
        message,
    };
    if let Some(reason) = unsupported_on(&options.backend, &scenario) {
        return Err(RunError::Unmet {
            scenario: name,
            reason: format!(
                "cannot run on the {} backend: {reason}",
                options.backend.name()
            ),
        });
    }
    let needs = needs_of(&scenario);
    // The Docker backend mounts the disk faults' tmpfs on the host too; its
    // memory faults need only the engine.
    let host_needs = match &options.backend {
        Backend::Local(_) => needs.clone(),
        Backend::Docker(_) => Needs {
            disk_tmpfs_bytes: needs.disk_tmpfs_bytes,
            ..Needs::default()
        },
    };
    local::check_needs(&host_needs).map_err(|e| RunError::Unmet {
        scenario: name.clone(),
        reason: e.to_string(),
    })?;
    let started = std::time::SystemTime::now();
    let run_id = run_id_of(&name, seed, started);
    let report_dir = options.report_dir.join(&name);
    std::fs::create_dir_all(&report_dir)
        .map_err(|e| env_err(format!("cannot create {}: {e}", report_dir.display())))?;
    let run_dir = tempfile::Builder::new()
        .prefix("gauntlet-run-")
        .tempdir()
        .map_err(|e| env_err(format!("cannot create a temporary directory: {e}")))?;
    let rig = match &options.backend {
        Backend::Local(launcher) => {
            bring_up_local(&scenario, seed, &run_id, run_dir.path(), launcher, needs).await
        }
        Backend::Docker(images) => {
            bring_up_docker(&scenario, seed, &run_id, run_dir.path(), images, &needs).await
        }
    }
    .map_err(env_err)?;
    let Rig {
        system,
        mock,
        proxy_client,
        proxy,
        run_config,
        client_url,
        direct,
    } = rig;

    // The load, planned before anything starts so that a bad plan costs nothing.
    let limits = LoadLimits {
        max_requests: MAX_REQUESTS,
        drain_timeout: DRAIN_TIMEOUT,
    };
    let plan = load::schedule(&scenario.load, seed, &limits).map_err(|e| env_err(e.to_string()))?;
    let target = LoadTarget {
        base_url: client_url,
        keys: run_config
            .tenants
            .iter()
            .map(|t| (t.tenant.clone(), t.key.clone()))
            .collect(),
    };
    target
        .validate(&scenario.load)
        .map_err(|e| env_err(e.to_string()))?;
    let progress = load::Progress::new();
    let bar = report::progress_bar(options.progress, &scenario, plan.len() as u64);

    let probe = observe::client().map_err(env_err)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let epoch = Instant::now() + Duration::from_millis(200);
    let hands = Arc::new(faults::Hands {
        proxy: proxy_client.clone(),
        mock: mock.clone(),
        system: system.clone(),
    });
    // Faults stop early when the run is cancelled; otherwise they keep their
    // own schedule, which ends within the load.
    let fault_task = tokio::spawn(faults::execute(
        scenario.faults.clone(),
        hands,
        epoch,
        cancel.clone(),
    ));
    let health_task = tokio::spawn(observe::health(
        probe.clone(),
        direct.clone(),
        epoch,
        stop_rx.clone(),
    ));
    let budget_task = tokio::spawn(observe::budgets(
        probe.clone(),
        direct.clone(),
        run_config.ops_key.clone(),
        run_config
            .tenants
            .iter()
            .map(|t| t.tenant.clone())
            .collect(),
        epoch,
        stop_rx.clone(),
    ));
    let ticker = report::spawn_ticker(bar.clone(), progress.clone());
    let mut outcome = load::run(
        &scenario.load,
        plan,
        &target,
        &limits,
        epoch,
        &progress,
        cancel.clone(),
    )
    .await;
    ticker.abort();
    let fault_records = fault_task.await.unwrap_or_default();
    stop_tx.send_replace(true);
    let health = health_task.await.unwrap_or_default();
    let mut budgets = budget_task.await.unwrap_or_default();
    if cancel.is_cancelled() {
        bar.abandon_with_message("interrupted");
        match Arc::try_unwrap(system) {
            // The watchdog removes the containers on the signal that
            // cancelled the run; removing them here too would race it.
            Ok(System::Docker(docker)) => docker.abandon(),
            other => drop(other),
        }
        if let Some(proxy) = proxy {
            proxy.shutdown().await;
        }
        return Err(RunError::Interrupted { scenario: name });
    }
    bar.set_message("settling jobs");

    // Jobs acknowledged, with their tenants (a job is visible to its tenant only).
    let accepted: Vec<(String, String)> = outcome
        .history
        .iter()
        .filter(|op| op.kind == OpKind::Job && op.outcome == Outcome::Status(202))
        .filter_map(|op| op.resource_id.clone().map(|id| (id, op.tenant.clone())))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let settle = scenario
        .invariants
        .iter()
        .find_map(|i| match i {
            Invariant::NoLostJobs { settle } => Some(*settle),
            _ => None,
        })
        .unwrap_or(DEFAULT_SETTLE);
    let tenant_keys: Vec<(String, String)> = run_config
        .tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.ops_key.clone()))
        .collect();
    let settled = observe::settle_jobs(&probe, &direct, &tenant_keys, settle).await;
    let audit_online = observe::audit_online(&probe, &direct, &run_config.ops_key).await;
    let page = match mock.journal().await {
        Ok(page) => page,
        Err(e) => {
            return Err(env_err(format!(
                "cannot read the mock provider's journal: {e}"
            )));
        }
    };
    let process_events = system.events();
    let log_path = system.log_path();
    // The database is read after shutdown from a copy, because a tmpfs data
    // directory goes with the teardown.
    let kept = run_dir.path().join("final");
    let db_path = kept.join(
        system
            .db_path()
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default(),
    );

    // Shut the system down before reading its database offline.
    let system = Arc::try_unwrap(system)
        .map_err(|_| env_err("the orchestrator handle is still shared after the run".to_owned()))?;
    let shutdown = system.shutdown_preserving(&kept).await;
    if let Some(proxy) = proxy {
        proxy.shutdown().await;
    }
    if let Mock::Local(mock) = mock
        && let Ok(mock) = Arc::try_unwrap(mock)
    {
        mock.shutdown().await;
    }
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let audit_offline = orchestrator::store::verify_audit_file(&db_path)
        .map(|v| checks::AuditAnswer {
            ok: v.ok,
            entries: v.entries,
            first_bad_seq: v.first_bad_seq,
            reason: v.reason,
        })
        .map_err(|e| e.to_string());
    let end_ms = epoch.elapsed().as_secs_f64() * 1000.0;
    let (charges, jobs) = match read_final(&db_path, &run_config, &accepted, end_ms) {
        Ok(f) => {
            budgets.extend(f.budgets);
            (Ok(f.charges), f.jobs)
        }
        Err(e) => (
            Err(e),
            accepted.iter().map(|(id, _)| (id.clone(), None)).collect(),
        ),
    };

    let mut fault_spans = std::collections::BTreeMap::new();
    let mut process_down = Vec::new();
    for (record, fault) in fault_records.iter().zip(&scenario.faults) {
        if let (Some(start_ms), Some(end_ms)) = (record.applied_ms, record.reverted_ms) {
            fault_spans.insert(record.name.clone(), FaultSpan { start_ms, end_ms });
            if matches!(
                fault.action,
                FaultAction::Kill
                    | FaultAction::Pause
                    | FaultAction::Restart
                    | FaultAction::Oom { .. }
            ) {
                process_down.push((
                    start_ms,
                    end_ms + faults::RESTART_GRACE.as_secs_f64() * 1000.0,
                ));
            }
        }
    }
    let evidence = Evidence {
        // Moved, not copied: a run's history can hold 200,000 operations.
        history: std::mem::take(&mut outcome.history),
        load_end_ms: scenario.load.duration().as_secs_f64() * 1000.0,
        faults: fault_spans,
        health,
        budgets,
        jobs,
        charges,
        journal: page.calls,
        journal_dropped: page.dropped,
        audit_online,
        audit_offline,
        rate_limits: config::rate_limits(&run_config),
        panics: observe::panics_in_log(&log_text),
        process_down,
    };
    let mut results = checks::run_all(&scenario, &evidence);
    if let Err(pending) = &settled {
        for r in results.iter_mut().filter(|r| r.name == "no_lost_jobs") {
            r.evidence.insert(
                0,
                format!(
                    "jobs had not settled after {:.0}s: {pending}",
                    settle.as_secs_f64()
                ),
            );
        }
    }
    // A fault that could not be applied means the scenario did not test what
    // it says: that is a failed check, named, not a silent pass.
    for r in &fault_records {
        if let Some(error) = &r.error {
            results.push(checks::CheckResult {
                kind: checks::CheckKind::Invariant,
                name: "fault_applied".to_owned(),
                window: Some(r.name.clone()),
                passed: false,
                expected: format!("fault {} applied and reverted", r.name),
                observed: error.clone(),
                evidence: vec![error.clone()],
            });
        }
    }
    if let Err(e) = &shutdown {
        results.push(checks::CheckResult {
            kind: checks::CheckKind::Invariant,
            name: "clean_shutdown".to_owned(),
            window: None,
            passed: false,
            expected: "the orchestrator stops gracefully".to_owned(),
            observed: e.to_string(),
            evidence: vec![e.to_string()],
        });
    }
    let finished = std::time::SystemTime::now();
    let report = Report::new(report::ReportInput {
        scenario: &scenario,
        seed,
        scale: options.scale,
        run_id,
        started,
        finished,
        checks: results,
        faults: fault_records,
        load: &outcome,
        evidence: &evidence,
        process_events: process_events
            .iter()
            .map(report::ProcessRecord::from)
            .collect(),
        backend: options.backend.name(),
    });
    bar.finish_and_clear();
    report::write(&report, &evidence.history, &log_path, &report_dir).map_err(|e| {
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

/// What a backend brought up, ready for the load and the faults.
struct Rig {
    system: Arc<System>,
    mock: Mock,
    proxy_client: ProxyClient,
    /// The in-process fault proxy of the local backend, shut down at the end.
    proxy: Option<ProxyServer>,
    run_config: config::RunConfig,
    /// Where the load goes: the `client` proxy.
    client_url: String,
    /// The orchestrator itself, for the harness's probes.
    direct: String,
}

/// The local backend: the mock provider and the fault proxy in this
/// process, the orchestrator a child process, all on loopback.
async fn bring_up_local(
    scenario: &Scenario,
    seed: u64,
    run_id: &str,
    run_dir: &std::path::Path,
    launcher: &Launcher,
    needs: Needs,
) -> Result<Rig, String> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mock = Arc::new(
        MockLlm::start(MockConfig {
            listen: loopback,
            seed,
            ..MockConfig::default()
        })
        .await
        .map_err(|e| format!("cannot start the mock LLM provider: {e}"))?,
    );
    let proxy = ProxyServer::start(ProxyServerConfig {
        listen: loopback,
        seed,
        ..ProxyServerConfig::default()
    })
    .await
    .map_err(|e| format!("cannot start the fault proxy: {e}"))?;
    let proxy_client = proxy
        .client()
        .map_err(|e| format!("cannot reach the fault proxy: {e}"))?;
    let llm_proxy = proxy_client
        .create_proxy(&ProxyConfig::new(
            "llm",
            "127.0.0.1:0",
            mock.addr().to_string(),
        ))
        .await
        .map_err(|e| format!("cannot create the llm proxy: {e}"))?;
    let run_config = config::render(
        scenario,
        seed,
        &format!("http://{}/v1", llm_proxy.listen),
        None,
    )?;
    let mut local_config =
        LocalConfig::new(run_id, run_dir, run_config.yaml.clone(), launcher.clone());
    local_config.seed = seed;
    local_config.needs = needs;
    local_config.ready_timeout = READY_TIMEOUT;
    local_config.max_restarts = MAX_RESTARTS;
    let system = LocalSystem::start(local_config)
        .await
        .map_err(|e| format!("cannot start the orchestrator: {e}"))?;
    let client_proxy = proxy_client
        .create_proxy(&ProxyConfig::new(
            "client",
            "127.0.0.1:0",
            system.addr().to_string(),
        ))
        .await
        .map_err(|e| format!("cannot create the client proxy: {e}"))?;
    Ok(Rig {
        direct: format!("http://{}", system.addr()),
        system: Arc::new(System::Local(system)),
        mock: Mock::Local(mock),
        proxy_client,
        proxy: Some(proxy),
        run_config,
        client_url: format!("http://{}", client_proxy.listen),
    })
}

/// The Docker backend: every service in its own container on the run's
/// network ([`crate::docker`]).
async fn bring_up_docker(
    scenario: &Scenario,
    seed: u64,
    run_id: &str,
    run_dir: &std::path::Path,
    images: &ImageNames,
    needs: &Needs,
) -> Result<Rig, String> {
    let listen: SocketAddr = ([0, 0, 0, 0], crate::docker::ORCHESTRATOR_PORT).into();
    let run_config = config::render(
        scenario,
        seed,
        &crate::docker::llm_base_url(run_id),
        Some(listen),
    )?;
    let system = DockerSystem::start(DockerConfig {
        run_id: run_id.to_owned(),
        run_dir: run_dir.to_path_buf(),
        config_yaml: run_config.yaml.clone(),
        images: images.clone(),
        seed,
        needs: DockerNeeds {
            disk_tmpfs_bytes: needs.disk_tmpfs_bytes,
            memory: needs.memory,
        },
        ready_timeout: READY_TIMEOUT,
        state_dir: local::default_state_dir(),
    })
    .await
    .map_err(|e| format!("cannot bring the system up in containers: {e}"))?;
    let proxy_client = system.proxy_client()?;
    let mock = MockClient::new(&system.mock_url()).map_err(|e| e.to_string())?;
    Ok(Rig {
        direct: format!("http://{}", system.addr()),
        client_url: format!("http://{}", system.client_addr()),
        system: Arc::new(System::Docker(Box::new(system))),
        mock: Mock::Remote(mock),
        proxy_client,
        proxy: None,
        run_config,
    })
}

/// The state the orchestrator left in its database.
struct Final {
    charges: Vec<orchestrator::store::ChargeRecord>,
    budgets: Vec<checks::BudgetSample>,
    jobs: std::collections::BTreeMap<String, Option<checks::JobFinal>>,
}

/// Reads the ledger, the budgets and the acknowledged jobs offline, after
/// the orchestrator stopped: the database is the truth, whatever the API said.
fn read_final(
    db_path: &std::path::Path,
    run: &config::RunConfig,
    accepted: &[(String, String)],
    at_ms: f64,
) -> Result<Final, String> {
    // Opening creates a missing database, which would read as an empty ledger.
    if !db_path.is_file() {
        return Err(format!("{} does not exist", db_path.display()));
    }
    let options = orchestrator::store::StoreOptions::new(run.config.budget.clone());
    let store = orchestrator::store::Store::open(db_path, &options)
        .map_err(|e| format!("cannot open {}: {e}", db_path.display()))?;
    let mut charges = Vec::new();
    let mut budgets = Vec::new();
    for t in &run.tenants {
        charges.extend(store.charges(&t.tenant).map_err(|e| e.to_string())?);
        let b = store.budget(&t.tenant).map_err(|e| e.to_string())?;
        budgets.push(checks::BudgetSample {
            at_ms,
            tenant: t.tenant.clone(),
            used_tokens: b.used_tokens,
            reserved_tokens: b.reserved_tokens,
            limit_tokens: b.limit_tokens,
        });
    }
    let mut jobs = std::collections::BTreeMap::new();
    for (id, tenant) in accepted {
        let job = store.job(tenant, id).map_err(|e| e.to_string())?;
        jobs.insert(
            id.clone(),
            job.map(|j| checks::JobFinal {
                state: j.state.as_str().to_owned(),
                attempts: u64::from(j.attempts),
                last_error: j.last_error,
            }),
        );
    }
    Ok(Final {
        charges,
        budgets,
        jobs,
    })
}

/// The exit code of `gauntlet run`: 0 every check passed, 1 a check failed,
/// 2 bad input or an environment that cannot run a scenario.
pub mod exit {
    /// Every check of every scenario passed.
    pub const PASSED: u8 = 0;
    /// At least one check failed.
    pub const CHECK_FAILED: u8 = 1;
    /// Bad input (scenario, arguments) or an environment that cannot run it.
    pub const BAD_INPUT: u8 = 2;
}

/// `gauntlet run`: validates every scenario first (one bad file stops the
/// run before anything starts), then runs them one after another, printing
/// each summary to `out` and problems to `err`.
pub async fn run_paths(
    paths: &[PathBuf],
    options: &RunOptions,
    cancel: &Cancel,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> u8 {
    let files = match crate::scenario::discover(paths) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::BAD_INPUT;
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
        return exit::BAD_INPUT;
    }
    if !(options.scale > 0.0 && options.scale.is_finite()) {
        let _ = writeln!(
            err,
            "error: --scale must be a positive number, got {}",
            options.scale
        );
        return exit::BAD_INPUT;
    }
    let colour = report::use_colour();
    let mut code = exit::PASSED;
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
        return exit::BAD_INPUT;
    }
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
                        .join("report.json")
                        .display()
                );
                if !report.passed {
                    code = code.max(exit::CHECK_FAILED);
                }
            }
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                code = exit::BAD_INPUT;
            }
        }
    }
    code
}
