//! Collecting, the third stage of a run: jobs get time to settle, the
//! service is asked for its own audit verification, the orchestrator is
//! stopped (SIGTERM) and its data directory copied out, and the copy is read
//! with the harness's own code. Nothing runs on the database between the
//! stop and the read: the raw state is the evidence.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;

use super::drive::Driven;
use super::rig::Rig;
use super::system::Mock;
use super::{DEFAULT_SETTLE, config, observe};
use crate::evidence::{
    Evidence, LogEvidence, ShutdownEvidence, WebhookEvidence, db, redis as redis_evidence,
};
use crate::load::LoadOutcome;
use crate::local::ProcessEvent;
use crate::mock_llm::{DEFAULT_INJECTION, Effect, Program};
use crate::scenario::{FaultAction, Invariant, Scenario};

/// What the run leaves for judging and reporting.
pub struct Collected {
    /// What the checks judge.
    pub evidence: Evidence,
    /// The load's summaries (its history moved into the evidence).
    pub load: LoadOutcome,
    /// Everything that happened to the orchestrator's process.
    pub process_events: Vec<ProcessEvent>,
    /// The orchestrator's log, for the report directory.
    pub log_path: PathBuf,
}

/// Gathers the evidence and tears the system down. `Err` means the run
/// cannot be judged at all (the mock's journal is unreadable, the database
/// has a schema this harness does not know): exit 2, not a failed check.
pub async fn collect(
    rig: Rig,
    mut driven: Driven,
    scenario: &Scenario,
    run_dir: &Path,
    bar: &ProgressBar,
) -> Result<Collected, String> {
    bar.set_message("settling jobs");
    let probe = observe::client()?;
    let tenant_keys: Vec<(String, String)> = rig
        .run_config
        .tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.ops_key.clone()))
        .collect();
    let settle_timeout = scenario
        .invariants
        .iter()
        .find_map(|i| match i {
            Invariant::NoLostJobs { settle } => Some(*settle),
            _ => None,
        })
        .unwrap_or(DEFAULT_SETTLE);
    let settle = observe::settle_jobs(&probe, &rig.direct, &tenant_keys, settle_timeout).await;
    let audit_service = observe::audit_online(&probe, &rig.direct, &rig.run_config.ops_key).await;
    let dlq_listing = observe::dlq_listing(&probe, &rig.direct, &tenant_keys).await;
    let page = rig
        .mock
        .journal()
        .await
        .map_err(|e| format!("cannot read the mock provider's journal: {e}"))?;
    let process_events = rig.system.events();
    let log_paths: Vec<PathBuf> = rig.system.replicas.iter().map(|r| r.log_path()).collect();
    let log_path = log_paths.first().cloned().unwrap_or_default();
    // The data directory is copied out at the stop (a tmpfs goes with the
    // teardown), and only the copy is read.
    let kept = run_dir.join("final");
    let db_path = kept.join(
        rig.system
            .first()
            .db_path()
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default(),
    );
    let Rig {
        system,
        mock,
        proxy,
        run_config,
        webhooks,
        ..
    } = rig;
    let deployment = Arc::try_unwrap(system)
        .map_err(|_| "the orchestrator handle is still shared after the run".to_owned())?;
    let shutdown = shut_down(deployment.replicas, &kept).await;
    if let Some(proxy) = proxy {
        proxy.shutdown().await;
    }
    // Read after the orchestrator stopped: nothing more can arrive.
    let webhooks = webhooks.map(|w| {
        w.sink.stop();
        let (records, dropped) = w.sink.records();
        WebhookEvidence {
            records,
            dropped,
            trap_connections: w.trap.connections(),
        }
    });
    if let Mock::Local(mock) = mock
        && let Ok(mock) = Arc::try_unwrap(mock)
    {
        mock.shutdown().await;
    }
    // Every replica's log, one after the other: a leak in any is a leak.
    let log = log_paths
        .iter()
        .map(|path| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display())))
        .collect::<Result<Vec<_>, _>>()
        .map(|texts| LogEvidence::from_text(&texts.join("\n")));
    // With Redis, its state is read with the harness's own commands once
    // every replica has stopped (nothing repairs it in between), then the
    // server stops.
    let database = match deployment.redis {
        Some(redis) => {
            let read = redis_evidence::read(&redis.url(), redis_evidence::PREFIX).await;
            redis.stop().await;
            read
        }
        None => match db::read(&db_path) {
            Ok(database) => Ok(database),
            Err(e) if e.is_unknown_schema() => return Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    let evidence = Evidence {
        // Moved, not copied: a run's history can hold 200,000 operations.
        history: std::mem::take(&mut driven.load.history),
        load_end_ms: scenario.load.duration().as_secs_f64() * 1000.0,
        epoch_unix_ms: driven.epoch_unix_ms,
        faults: driven.faults,
        health: driven.health,
        budgets: driven.budgets,
        settle,
        database,
        journal: page.calls,
        journal_dropped: page.dropped,
        audit_service,
        rate_limits: config::rate_limits(&run_config),
        tenant_roles: scenario
            .load
            .tenants
            .iter()
            .map(|t| (t.name.clone(), t.role.clone()))
            .collect(),
        contract: scenario.system.contract.clone(),
        bodies_dropped: driven.load.bodies_dropped,
        injected: injected_payloads(scenario),
        dlq_listing,
        log,
        shutdown,
        webhooks,
    };
    Ok(Collected {
        evidence,
        load: driven.load,
        process_events,
        log_path,
    })
}

/// Stops every replica (SIGTERM), keeping the first's data directory in
/// `kept` and each other's in `kept/replica-I`. The shutdown was graceful
/// when every replica's was; a failure names the replica.
async fn shut_down(
    replicas: Vec<super::system::System>,
    kept: &Path,
) -> Result<ShutdownEvidence, String> {
    let mut graceful = true;
    let mut exits = Vec::new();
    let mut failures = Vec::new();
    let many = replicas.len() > 1;
    for (i, replica) in replicas.into_iter().enumerate() {
        let keep = if i == 0 {
            kept.to_path_buf()
        } else {
            kept.join(format!("replica-{i}"))
        };
        match replica.shutdown_preserving(&keep).await {
            Ok(report) => {
                graceful &= report.graceful;
                let exit = report
                    .exit
                    .map_or_else(|| "not running".to_owned(), |e| e.to_string());
                exits.push(if many {
                    format!("replica {i}: {exit}")
                } else {
                    exit
                });
            }
            Err(e) => failures.push(if many { format!("replica {i}: {e}") } else { e }),
        }
    }
    if failures.is_empty() {
        Ok(ShutdownEvidence {
            graceful,
            exit: exits.join("; "),
        })
    } else {
        Err(failures.join("; "))
    }
}

/// The payloads the timeline's fault programs tell the mock provider to
/// inject (the mock's default for an injection without one), each once.
fn injected_payloads(scenario: &Scenario) -> Vec<String> {
    let mut payloads = Vec::new();
    for fault in &scenario.faults {
        let FaultAction::LlmProgram { program } = &fault.action else {
            continue;
        };
        // Validation parsed every program already; one that no longer
        // parses has no payloads to look for.
        let Ok(bytes) = serde_json::to_vec(program) else {
            continue;
        };
        let Ok(program) = Program::from_json(&bytes, &crate::mock_llm::Limits::default()) else {
            continue;
        };
        for rule in program.rules {
            if let Effect::Injection { payload, .. } = rule.effect {
                let payload = payload.unwrap_or_else(|| DEFAULT_INJECTION.to_owned());
                if !payloads.contains(&payload) {
                    payloads.push(payload);
                }
            }
        }
    }
    payloads
}
