//! What the harness watches besides the load: health probes and budgets
//! during the run, the settling of jobs and the service's own audit
//! verification after it. All of it talks to
//! the orchestrator directly, not through the client link, because probes
//! model the platform's own checks, not a client's view.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Client;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::evidence::{AuditAnswer, BudgetSample, DLQ_PAGE, HealthSample, Settle};

/// How often health is probed.
pub const HEALTH_PERIOD: Duration = Duration::from_millis(250);
/// How often budgets are sampled.
pub const BUDGET_PERIOD: Duration = Duration::from_secs(1);
/// The timeout of every probe and read.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many samples of each kind are kept (a bound on memory for
/// long runs; at the periods above it covers hours).
pub const MAX_SAMPLES: usize = 50_000;

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
    Instant::now()
        .saturating_duration_since(epoch)
        .as_secs_f64()
        * 1000.0
}

async fn status_of(client: &Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Probes `/health/live` and `/health/ready` every [`HEALTH_PERIOD`] until `stop`.
pub async fn health(
    client: Client,
    base: String,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<HealthSample> {
    let (live_url, ready_url) = (
        format!("{base}/health/live"),
        format!("{base}/health/ready"),
    );
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
            status_of(&client, &live_url),
            status_of(&client, &ready_url),
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
struct JobList {
    counts: JobCountsAnswer,
    // Absent before webhooks existed: nothing to wait for then.
    #[serde(default)]
    webhooks: WebhooksAnswer,
}

#[derive(Deserialize, Default)]
struct WebhooksAnswer {
    pending: u64,
}

#[derive(Deserialize)]
struct JobCountsAnswer {
    queued: u64,
    running: u64,
}

/// Waits until no tenant has a job queued or running or a webhook delivery
/// pending, asking each tenant's counts (`GET /v1/jobs?limit=1` with the
/// tenant's ops key), or until `settle` runs out, and says which happened.
pub async fn settle_jobs(
    client: &Client,
    base: &str,
    tenants: &[(String, String)],
    settle: Duration,
) -> Settle {
    let deadline = Instant::now() + settle;
    loop {
        let mut pending = Vec::new();
        for (tenant, key) in tenants {
            let answer = client
                .get(format!("{base}/v1/jobs?limit=1"))
                .bearer_auth(key)
                .send()
                .await;
            match answer {
                Ok(a) if a.status().is_success() => match a.json::<JobList>().await {
                    Ok(list)
                        if list.counts.queued + list.counts.running + list.webhooks.pending
                            == 0 => {}
                    Ok(list) => pending.push(format!(
                        "{tenant}: {} queued, {} running, {} webhook deliveries pending",
                        list.counts.queued, list.counts.running, list.webhooks.pending
                    )),
                    Err(e) => pending.push(format!("{tenant}: unreadable job counts: {e}")),
                },
                Ok(a) => pending.push(format!("{tenant}: job counts answered {}", a.status())),
                Err(e) => pending.push(format!("{tenant}: job counts failed: {e}")),
            }
        }
        if pending.is_empty() {
            return Settle::Settled;
        }
        if Instant::now() >= deadline {
            return Settle::TimedOut {
                after_ms: u64::try_from(settle.as_millis()).unwrap_or(u64::MAX),
                pending: pending.join("; "),
            };
        }
        tokio::time::sleep(Duration::from_millis(250).min(deadline - Instant::now())).await;
    }
}

/// `GET /v1/audit/verify`.
pub async fn audit_online(
    client: &Client,
    base: &str,
    ops_key: &str,
) -> Result<AuditAnswer, String> {
    #[derive(Deserialize)]
    struct Answer {
        ok: bool,
        entries: u64,
        first_bad_seq: Option<u64>,
        reason: Option<String>,
        head_hash: Option<String>,
    }
    let url = format!("{base}/v1/audit/verify");
    let a: Answer = get_json(client, &url, ops_key, "GET /v1/audit/verify").await?;
    Ok(AuditAnswer {
        ok: a.ok,
        entries: a.entries,
        first_bad_seq: a.first_bad_seq,
        reason: a.reason,
        head_hash: a.head_hash,
    })
}

/// Each tenant's dead-letter queue, `GET /v1/dlq?limit=1000` with the
/// tenant's ops key (the queue is per tenant): the ids listed.
pub async fn dlq_listing(
    client: &Client,
    base: &str,
    tenants: &[(String, String)],
) -> Result<BTreeMap<String, Vec<String>>, String> {
    #[derive(Deserialize)]
    struct Listed {
        id: String,
    }
    #[derive(Deserialize)]
    struct Answer {
        jobs: Vec<Listed>,
    }
    let mut listing = BTreeMap::new();
    for (tenant, key) in tenants {
        let url = format!("{base}/v1/dlq?limit={DLQ_PAGE}");
        let what = format!("GET /v1/dlq for {tenant}");
        let a: Answer = get_json(client, &url, key, &what).await?;
        listing.insert(tenant.clone(), a.jobs.into_iter().map(|j| j.id).collect());
    }
    Ok(listing)
}

/// `GET url` with `key`, a 2xx answer's JSON body decoded; errors name the
/// request as `what`.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    url: &str,
    key: &str,
    what: &str,
) -> Result<T, String> {
    let answer = client
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let status = answer.status();
    if !status.is_success() {
        return Err(format!("{what} answered {status}"));
    }
    answer
        .json()
        .await
        .map_err(|e| format!("{what}: bad body: {e}"))
}
