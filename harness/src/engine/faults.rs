//! The fault executor: applies each fault of the timeline at its time and
//! reverts it at its end, recording when each really happened.

use std::sync::Arc;

use tokio::time::Instant;

use super::system::{Deployment, Mock};
use crate::evidence::FaultRecord;
use crate::load::CancellationSignal;
use crate::mock_llm::{Effect, Match, Program, Rule};
use crate::proxy::ProxyClient;
use crate::proxy::Toxic;
use crate::scenario::{Fault, FaultAction, Scenario};
use crate::sink::{self, SinkProgram, WebhookSink};

/// What the executor acts through.
pub struct Hands {
    /// The fault proxy's API.
    pub proxy: ProxyClient,
    /// The mock LLM provider.
    pub mock: Mock,
    /// The replicas and Redis, on whichever backend.
    pub system: Arc<Deployment>,
    /// The rules the mock provider keeps for the whole run
    /// ([`standing_program`]), ahead of any fault's.
    pub standing: Program,
    /// The webhook sink, when the run has one.
    pub sink: Option<Arc<WebhookSink>>,
}

/// How much longer than the service's request timeout the mock provider
/// holds a slow request's call: the service must give up first.
const SLOW_EXTRA: std::time::Duration = std::time::Duration::from_secs(2);

/// The rules the mock provider holds for the whole run, installed when the
/// system is up and kept ahead of every fault program's rules: with `slow`
/// requests in the mix, calls whose prompt carries
/// [`SLOW_MARKER`](crate::load::SLOW_MARKER) are delayed past the service's
/// request timeout, so the service must answer 504.
pub fn standing_program(scenario: &Scenario) -> Program {
    let mut rules = Vec::new();
    if scenario.load.mix.slow > 0 {
        let delay = scenario.system.contract.request_timeout + SLOW_EXTRA;
        rules.push(
            Rule::always(Effect::Delay {
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            })
            .named("gauntlet-slow")
            .when(Match::prompt_contains(crate::load::SLOW_MARKER)),
        );
    }
    Program { rules }
}

/// `program` with the standing rules ahead of its own.
fn with_standing(standing: &Program, program: Program) -> Program {
    let mut rules = standing.rules.clone();
    rules.extend(program.rules);
    Program { rules }
}

fn sink_of(hands: &Hands) -> Result<&WebhookSink, String> {
    hands
        .sink
        .as_deref()
        .ok_or_else(|| "the run has no webhook sink (`load.webhooks` is not given)".to_owned())
}

fn class_name(action: &FaultAction) -> String {
    format!("{:?}", action.class()).to_lowercase()
}

/// Runs the timeline from `epoch`. Each fault runs in its own task so that
/// overlapping faults keep their own times. When `stop` turns true (the run
/// was interrupted or the load ended early), pending faults are skipped and
/// active ones reverted at once. Returns one record per fault, in timeline order.
pub async fn execute(
    faults: Vec<Fault>,
    hands: Arc<Hands>,
    epoch: Instant,
    stop: CancellationSignal,
) -> Vec<FaultRecord> {
    let mut tasks = Vec::new();
    for fault in faults.iter().cloned() {
        let hands = hands.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut record = FaultRecord {
                name: fault.name.clone(),
                kind: fault.action.kind().to_owned(),
                class: class_name(&fault.action),
                target: fault.action.target().to_owned(),
                scheduled_ms: fault.at.as_secs_f64() * 1000.0,
                applied_ms: None,
                reverted_ms: None,
                error: None,
            };
            if !wait_until(epoch + fault.at, &stop).await {
                record.error = Some("the run ended before the fault's time".to_owned());
                return record;
            }
            let ms = |i: Instant| i.saturating_duration_since(epoch).as_secs_f64() * 1000.0;
            // The fault counts from when applying began: some take effect
            // while being applied (an OOM kill happens before `oom` returns).
            let began = Instant::now();
            if let Err(e) = apply(&fault, &hands).await {
                record.error = Some(format!("could not apply: {e}"));
                // A partly applied fault is reverted all the same.
                let _ = revert(&fault, &hands).await;
                return record;
            }
            record.applied_ms = Some(ms(began));
            if let Some(d) = fault.duration {
                wait_until(epoch + fault.at + d, &stop).await;
            }
            if let Err(e) = revert(&fault, &hands).await {
                record.error = Some(format!("could not revert: {e}"));
            }
            record.reverted_ms = Some(ms(Instant::now()));
            record
        }));
    }
    let mut records = Vec::new();
    for (task, fault) in tasks.into_iter().zip(&faults) {
        match task.await {
            Ok(r) => records.push(r),
            Err(e) => records.push(FaultRecord {
                name: fault.name.clone(),
                kind: fault.action.kind().to_owned(),
                class: class_name(&fault.action),
                target: fault.action.target().to_owned(),
                scheduled_ms: fault.at.as_secs_f64() * 1000.0,
                applied_ms: None,
                reverted_ms: None,
                error: Some(format!("the fault's task failed: {e}")),
            }),
        }
    }
    records
}

/// Sleeps until `deadline`; false if `stop` turned true first.
async fn wait_until(deadline: Instant, stop: &CancellationSignal) -> bool {
    if stop.is_cancelled() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep_until(deadline) => true,
        () = stop.cancelled() => false,
    }
}

async fn apply(fault: &Fault, hands: &Hands) -> Result<(), String> {
    let s = &hands.system;
    match &fault.action {
        FaultAction::Toxic {
            link,
            toxic,
            stream,
            toxicity,
        } => {
            let t = Toxic::new(*stream, *toxic)
                .named(fault.name.clone())
                .with_toxicity(*toxicity);
            hands
                .proxy
                .add_toxic(link.as_str(), &t)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        FaultAction::Partition { link } => match s.first().partition(*link, true).await {
            Some(done) => done,
            None => hands
                .proxy
                .set_enabled(link.as_str(), false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        },
        FaultAction::LlmProgram { program } => {
            let bytes = serde_json::to_vec(program).map_err(|e| e.to_string())?;
            let program =
                Program::from_json(&bytes, &hands.mock.limits()).map_err(|e| e.to_string())?;
            hands
                .mock
                .install(with_standing(&hands.standing, program))
                .await
        }
        FaultAction::SinkProgram { program } => {
            let program = sink::program::parse(program).map_err(|e| e.to_string())?;
            sink_of(hands)?.install(program);
            Ok(())
        }
        FaultAction::Kill { process } => s.kill(*process).await,
        FaultAction::Pause { process } => s.pause(*process).await,
        FaultAction::Restart { process } => s.restart(*process).await,
        FaultAction::DiskFull { replica } => s.replica(*replica)?.disk_fill().await,
        FaultAction::IoErrors {
            replica,
            probability,
        } => s.replica(*replica)?.io_errors(*probability).await,
        FaultAction::ReadOnly { replica } => s.replica(*replica)?.set_read_only(true).await,
        FaultAction::Oom {
            replica,
            limit_bytes,
        } => s.replica(*replica)?.oom(*limit_bytes).await,
    }
}

async fn revert(fault: &Fault, hands: &Hands) -> Result<(), String> {
    let s = &hands.system;
    match &fault.action {
        FaultAction::Toxic { link, .. } => hands
            .proxy
            .remove_toxic(link.as_str(), &fault.name)
            .await
            .map_err(|e| e.to_string()),
        FaultAction::Partition { link } => match s.first().partition(*link, false).await {
            Some(done) => done,
            None => hands
                .proxy
                .set_enabled(link.as_str(), true)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        },
        FaultAction::LlmProgram { .. } => hands.mock.install(hands.standing.clone()).await,
        FaultAction::SinkProgram { .. } => {
            sink_of(hands)?.install(SinkProgram::default());
            Ok(())
        }
        FaultAction::Kill { process } => s.start_again(*process).await,
        FaultAction::Pause { process } => s.resume(*process).await,
        FaultAction::Restart { .. } => Ok(()),
        FaultAction::DiskFull { replica } => s.replica(*replica)?.disk_release().await,
        FaultAction::IoErrors { replica, .. } => s.replica(*replica)?.io_errors_off().await,
        FaultAction::ReadOnly { replica } => s.replica(*replica)?.set_read_only(false).await,
        FaultAction::Oom { replica, .. } => s.replica(*replica)?.oom_end().await,
    }
}
