//! What the harness watches besides the load: health probes and budgets
//! during the run, and the system's final state after it. All of it talks to
//! the orchestrator directly, not through the client link, because probes
//! model the platform's own checks, not a client's view.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Client;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checks::{AuditAnswer, BudgetSample, HealthSample, JobFinal};

/// How often health is probed.
pub const HEALTH_PERIOD: Duration = Duration::from_millis(250);
/// How often budgets are sampled.
pub const BUDGET_PERIOD: Duration = Duration::from_secs(1);
/// The timeout of every probe and read.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many samples of each kind are kept (a bound on memory for
/// long runs; at the periods above it covers hours).
pub const MAX_SAMPLES: usize = 50_000;
/// Concurrent job lookups while settling.
const LOOKUP_CONCURRENCY: usize = 16;

/// A client for probes: rustls, no proxy, bounded timeouts.
pub fn client() -> Result<Client, String> {
    Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build the probe client: {e}"))
}

fn ms_since(epoch: Instant) -> f64 {
    Instant::now().saturating_duration_since(epoch).as_secs_f64() * 1000.0
}

async fn status_of(client: &Client, url: &str) -> Option<u16> {
    client.get(url).send().await.ok().map(|r| r.status().as_u16())
}

/// Probes `/health/live` and `/health/ready` every [`HEALTH_PERIOD`] until `stop`.
pub async fn health(
    client: Client,
    base: String,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<HealthSample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(HEALTH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while samples.len() < MAX_SAMPLES {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let at_ms = ms_since(epoch);
        let (live, ready) = tokio::join!(
            status_of(&client, &format!("{base}/health/live")),
            status_of(&client, &format!("{base}/health/ready")),
        );
        samples.push(HealthSample { at_ms, live, ready });
    }
    samples
}

#[derive(Deserialize)]
struct BudgetAnswer {
    used_tokens: u64,
    reserved_tokens: u64,
    limit_tokens: u64,
}

/// Reads one tenant's budget; `None` when the service does not answer.
pub async fn budget(
    client: &Client,
    base: &str,
    ops_key: &str,
    tenant: &str,
    epoch: Instant,
) -> Option<BudgetSample> {
    let at_ms = ms_since(epoch);
    let answer = client
        .get(format!("{base}/v1/budgets/{tenant}"))
        .bearer_auth(ops_key)
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        return None;
    }
    let b: BudgetAnswer = answer.json().await.ok()?;
    Some(BudgetSample {
        at_ms,
        tenant: tenant.to_owned(),
        used_tokens: b.used_tokens,
        reserved_tokens: b.reserved_tokens,
        limit_tokens: b.limit_tokens,
    })
}

/// Samples every tenant's budget every [`BUDGET_PERIOD`] until `stop`.
pub async fn budgets(
    client: Client,
    base: String,
    ops_key: String,
    tenants: Vec<String>,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<BudgetSample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(BUDGET_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while samples.len() < MAX_SAMPLES {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        for tenant in &tenants {
            if let Some(s) = budget(&client, &base, &ops_key, tenant, epoch).await {
                samples.push(s);
            }
        }
    }
    samples
}

#[derive(Deserialize)]
struct JobAnswer {
    state: String,
    attempts: u64,
    last_error: Option<String>,
}

/// Looks every job up until each is `succeeded` or `dead`, or `settle`
/// runs out; returns the last state seen of each (`None`: the service said
/// it does not exist, or never answered).
pub async fn settle_jobs(
    client: &Client,
    base: &str,
    ops_key: &str,
    ids: Vec<String>,
    settle: Duration,
) -> BTreeMap<String, Option<JobFinal>> {
    use futures_util::StreamExt;
    let deadline = Instant::now() + settle;
    let mut finals: BTreeMap<String, Option<JobFinal>> =
        ids.iter().map(|id| (id.clone(), None)).collect();
    let mut pending = ids;
    loop {
        let lookups = futures_util::stream::iter(pending.clone())
            .map(|id| async move {
                let answer = client
                    .get(format!("{base}/v1/jobs/{id}"))
                    .bearer_auth(ops_key)
                    .send()
                    .await;
                let job = match answer {
                    Ok(a) if a.status().is_success() => a.json::<JobAnswer>().await.ok().map(|j| JobFinal {
                        state: j.state,
                        attempts: j.attempts,
                        last_error: j.last_error,
                    }),
                    _ => None,
                };
                (id, job)
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        pending.clear();
        for (id, job) in lookups {
            let done = matches!(&job, Some(j) if j.state == "succeeded" || j.state == "dead");
            if !done {
                pending.push(id.clone());
            }
            if job.is_some() || !finals.get(&id).is_some_and(Option::is_some) {
                finals.insert(id, job);
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            return finals;
        }
        pending.sort();
        tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
    }
}

/// `GET /v1/audit/verify`.
pub async fn audit_online(client: &Client, base: &str, ops_key: &str) -> Result<AuditAnswer, String> {
    let answer = client
        .get(format!("{base}/v1/audit/verify"))
        .bearer_auth(ops_key)
        .send()
        .await
        .map_err(|e| format!("GET /v1/audit/verify: {e}"))?;
    let status = answer.status();
    if !status.is_success() {
        return Err(format!("GET /v1/audit/verify answered {status}"));
    }
    #[derive(Deserialize)]
    struct Answer {
        ok: bool,
        entries: u64,
        first_bad_seq: Option<u64>,
        reason: Option<String>,
    }
    let a: Answer = answer
        .json()
        .await
        .map_err(|e| format!("GET /v1/audit/verify: bad body: {e}"))?;
    Ok(AuditAnswer {
        ok: a.ok,
        entries: a.entries,
        first_bad_seq: a.first_bad_seq,
        reason: a.reason,
    })
}

/// Panics in a log file: lines holding `panicked` (the panic hook and the service's panic recovery both say it), with 1-based numbers,
/// at most 100. The log is read whole (it is bounded by the run's length).
pub fn panics_in_log(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains("panicked"))
        .take(100)
        .map(|(i, l)| (i + 1, l.chars().take(300).collect()))
        .collect()
}
