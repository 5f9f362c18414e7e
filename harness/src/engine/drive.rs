//! Driving, the second stage of a run: the open-loop load through the
//! `client` link while the fault timeline runs, with health probes and
//! budget samples beside it. It judges nothing: what it saw goes on to be
//! collected.

use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::sync::watch;
use tokio::time::Instant;

use super::rig::Rig;
use super::{Cancel, DRAIN_TIMEOUT, MAX_REQUESTS, faults, observe};
use crate::evidence::{BudgetSample, FaultRecord, HealthSample};
use crate::load::{
    self, Credential, LoadLimits, LoadOutcome, LoadTarget, Progress, TargetKey, WebhookUrls,
};
use crate::report;
use crate::scenario::{Fault, Scenario};

/// What driving saw.
pub struct Driven {
    /// What the load generator saw, its history included.
    pub load: LoadOutcome,
    /// The fault timeline as it happened.
    pub faults: Vec<FaultRecord>,
    /// Health probes.
    pub health: Vec<HealthSample>,
    /// Budget samples.
    pub budgets: Vec<BudgetSample>,
    /// The load's epoch on the wall clock, Unix milliseconds.
    pub epoch_unix_ms: f64,
}

/// The load's plan, made before anything is driven so that a bad plan costs
/// nothing; a plan over the limits is refused.
pub fn plan(scenario: &Scenario, seed: u64) -> Result<Vec<load::PlannedOp>, String> {
    let denied = scenario.system.contract.role_routes();
    load::schedule(&scenario.load, &denied, seed, &limits()).map_err(|e| e.to_string())
}

fn limits() -> LoadLimits {
    LoadLimits {
        max_requests: MAX_REQUESTS,
        drain_timeout: DRAIN_TIMEOUT,
        ..LoadLimits::default()
    }
}

/// How far over the body limit an oversized body goes: enough that no
/// framing or rounding lets it pass.
const OVERSIZED_EXTRA_BYTES: u64 = 1024;

/// Drives `scenario`'s load (its `plan`) with `timeline` as its faults,
/// from an epoch just ahead, until the load has drained and every fault has
/// reverted (or `cancel` fires).
pub async fn drive(
    rig: &Rig,
    scenario: &Scenario,
    plan: Vec<load::PlannedOp>,
    timeline: &[Fault],
    cancel: &Cancel,
    bar: &ProgressBar,
) -> Result<Driven, String> {
    let keys = rig.run_config.tenants.iter().flat_map(|t| {
        let own = std::iter::once((Credential::Tenant, t.key.clone()));
        own.chain(t.access_keys.iter().cloned())
            .map(|(credential, key)| TargetKey {
                tenant: t.tenant.clone(),
                credential,
                key,
            })
    });
    let oversized = scenario.system.contract.body_limit_bytes + OVERSIZED_EXTRA_BYTES;
    let target = LoadTarget {
        base_urls: rig.client_urls.clone(),
        keys: keys.collect(),
        oversized_bytes: usize::try_from(oversized).unwrap_or(usize::MAX),
        lockout_duration: scenario.system.contract.lockout.duration,
        lockout_max_failures: scenario.system.contract.lockout.max_failures,
        rotation_overlap: scenario.system.contract.rotation_overlap,
        webhooks: rig.webhooks.as_ref().map(|w| {
            let targets = w.targets();
            WebhookUrls {
                sink: targets.sink_url(),
                trap: targets.trap_url(),
            }
        }),
    };
    target.validate(&plan).map_err(|e| e.to_string())?;
    let probe = observe::client()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let epoch_lead = Duration::from_millis(200);
    let epoch = Instant::now() + epoch_lead;
    let epoch_unix_ms = (std::time::SystemTime::now() + epoch_lead)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let hands = Arc::new(faults::Hands {
        proxy: rig.proxy_client.clone(),
        mock: rig.mock.clone(),
        system: rig.system.clone(),
        standing: faults::standing_program(scenario),
        sink: rig.webhooks.as_ref().map(|w| w.sink.clone()),
    });
    // Faults stop early when the run is cancelled; otherwise they keep their
    // own schedule, which ends within the load.
    let fault_task = tokio::spawn(faults::execute(
        timeline.to_vec(),
        hands,
        epoch,
        cancel.clone(),
    ));
    let health_task = tokio::spawn(observe::health(
        probe.clone(),
        rig.direct.clone(),
        epoch,
        stop_rx.clone(),
    ));
    let budget_task = tokio::spawn(observe::budgets(
        probe,
        rig.direct.clone(),
        rig.run_config.ops_key.clone(),
        rig.run_config
            .tenants
            .iter()
            .map(|t| t.tenant.clone())
            .collect(),
        epoch,
        stop_rx,
    ));
    let progress = Progress::new();
    let ticker = report::spawn_ticker(bar.clone(), progress.clone());
    let load = load::run(
        &scenario.load,
        plan,
        &target,
        &limits(),
        epoch,
        &progress,
        cancel.clone(),
    )
    .await;
    ticker.abort();
    let faults = fault_task.await.unwrap_or_default();
    stop_tx.send_replace(true);
    Ok(Driven {
        load,
        faults,
        health: health_task.await.unwrap_or_default(),
        budgets: budget_task.await.unwrap_or_default(),
        epoch_unix_ms,
    })
}
