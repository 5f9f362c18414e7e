//! Sending the schedule: one task per operation, spawned at its intended
//! time, waiting for one of `max_in_flight` slots, then sending its request
//! under the request timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::history::{Op, OpKind, Outcome};
use super::plan::{PlannedKind, PlannedOp};
use super::stats::{per_second, summary_over};
use super::{CancellationSignal, LoadError, LoadLimits, LoadOutcome, LoadTarget, Progress};
use crate::scenario::LoadSpec;

/// The largest response body read, in bytes: the orchestrator's answers
/// (plans, problems, job records) are a few KiB; a larger one is a fault.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What operations still running must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Carry on.
    Running,
    /// The drain timeout ran out: give up and record `Cancelled`.
    Drained,
    /// The run was cancelled: give up; not yet sent means `NotSent`.
    Cancelled,
}

/// The base URL, checked: http, and able to take path segments.
pub(super) fn base_url(text: &str) -> Result<Url, LoadError> {
    let invalid = |reason: String| LoadError::InvalidBaseUrl {
        url: text.to_owned(),
        reason,
    };
    let url = Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "http" {
        return Err(invalid("the scheme must be http".to_owned()));
    }
    if url.cannot_be_a_base() {
        return Err(invalid("it cannot be a base url".to_owned()));
    }
    Ok(url)
}

/// What every operation task shares.
struct Shared {
    client: Result<reqwest::Client, String>,
    base: Result<Url, String>,
    keys: HashMap<String, String>,
    /// Ids of the jobs accepted so far (202), by tenant, in acceptance order.
    accepted: Mutex<HashMap<String, Vec<String>>>,
    slots: Arc<Semaphore>,
    progress: Progress,
    epoch: Instant,
    request_timeout: Duration,
}

impl Shared {
    fn ms_now(&self) -> f64 {
        ms_since(self.epoch, Instant::now())
    }
}

fn ms_since(epoch: Instant, instant: Instant) -> f64 {
    instant.saturating_duration_since(epoch).as_secs_f64() * 1000.0
}

/// Sends `plan` at `target`, open loop, from `epoch` (see the module
/// documentation), and returns the history with its statistics.
///
/// Each operation is sent at `epoch + offset` whatever became of the earlier
/// ones, holding one of `spec.max_in_flight` slots; its latency counts from
/// the intended time, slot wait included. Each request gets
/// `spec.request_timeout`. After the last operation was due, those still
/// running get `limits.drain_timeout`, then are recorded as cancelled.
/// Cancelling `cancel` stops sending: operations on the wire are recorded as
/// cancelled, the rest (waiting for a slot or not yet due) as not sent.
pub async fn run(
    spec: &LoadSpec,
    plan: Vec<PlannedOp>,
    target: &LoadTarget,
    limits: &LoadLimits,
    epoch: Instant,
    progress: &Progress,
    cancel: CancellationSignal,
) -> LoadOutcome {
    progress.set_planned(plan.len() as u64);
    let shared = Arc::new(Shared {
        client: client(spec.max_in_flight),
        base: base_url(&target.base_url).map_err(|e| e.to_string()),
        keys: target.keys.iter().cloned().collect(),
        accepted: Mutex::new(HashMap::new()),
        // At least one slot: zero would wait forever, and validation
        // guarantees a positive bound anyway.
        slots: Arc::new(Semaphore::new(
            usize::try_from(spec.max_in_flight.max(1)).unwrap_or(usize::MAX),
        )),
        progress: progress.clone(),
        epoch,
        request_timeout: spec.request_timeout,
    });
    let (stop_sender, stop) = watch::channel(Stop::Running);
    let mut history: Vec<Op> = Vec::with_capacity(plan.len());
    let mut tasks: JoinSet<Op> = JoinSet::new();
    // What a task was running, should it panic.
    let mut running: HashMap<tokio::task::Id, PlannedOp> = HashMap::new();

    let mut plan = plan.into_iter();
    let mut cancelled = false;
    'send: for planned in plan.by_ref() {
        let due = epoch + planned.offset;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    cancelled = true;
                    history.push(unsent(&planned, shared.ms_now()));
                    break 'send;
                }
                _ = tokio::time::sleep_until(due) => break,
                // Collect finished operations meanwhile, so that memory
                // holds the history, not a backlog of finished tasks.
                Some(joined) = tasks.join_next_with_id() => {
                    collect(joined, &mut running, &mut history, &shared);
                }
            }
        }
        let handle = tasks.spawn(execute(shared.clone(), planned.clone(), stop.clone()));
        running.insert(handle.id(), planned);
    }

    if cancelled {
        stop_sender.send_replace(Stop::Cancelled);
        let now = shared.ms_now();
        history.extend(plan.map(|planned| unsent(&planned, now)));
    }
    let deadline = Instant::now() + limits.drain_timeout;
    let mut state = if cancelled {
        Stop::Cancelled
    } else {
        Stop::Running
    };
    while !tasks.is_empty() {
        tokio::select! {
            biased;
            joined = tasks.join_next_with_id() => {
                if let Some(joined) = joined {
                    collect(joined, &mut running, &mut history, &shared);
                }
            }
            _ = cancel.cancelled(), if state == Stop::Running => {
                state = Stop::Cancelled;
                stop_sender.send_replace(state);
            }
            _ = tokio::time::sleep_until(deadline), if state == Stop::Running => {
                state = Stop::Drained;
                stop_sender.send_replace(state);
            }
        }
    }
    let elapsed_ms = shared.ms_now();

    history.sort_by_key(|op| op.index);
    let last_second = history
        .last()
        .map_or(0.0, |op| (op.intended_ms / 1000.0).floor() + 1.0);
    let seconds = spec.duration().as_secs_f64().ceil().max(last_second);
    // Saturating cast: a load longer than u32 seconds cannot be scheduled.
    let windows = per_second(&history, seconds as u32);
    let overall = summary_over(&history, f64::NEG_INFINITY, f64::INFINITY);
    LoadOutcome {
        history,
        windows,
        overall,
        elapsed_ms,
    }
}

fn client(max_in_flight: u32) -> Result<reqwest::Client, String> {
    // reqwest is built without a default crypto provider (see the proxy's
    // client); the load speaks plain HTTP, but building a client needs one.
    // A second install fails harmlessly when one is there.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        // The target is the local fault proxy: an HTTP proxy from the
        // environment would only get in the way.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        // Keep as many connections as may be in use at once, so that a
        // steady load does not churn connections.
        .pool_max_idle_per_host(usize::try_from(max_in_flight).unwrap_or(usize::MAX))
        .build()
        .map_err(|e| format!("building the http client: {}", chain(&e)))
}

/// The history entry of an operation that never went out.
fn unsent(planned: &PlannedOp, now_ms: f64) -> Op {
    let mut op = skeleton(planned, kind_of(planned.kind));
    op.start_ms = now_ms;
    op.end_ms = now_ms;
    op
}

fn kind_of(kind: PlannedKind) -> OpKind {
    match kind {
        PlannedKind::Task => OpKind::Task,
        PlannedKind::Job => OpKind::Job,
        // An unsent read read nothing; budget reads need no earlier job.
        PlannedKind::Read => OpKind::ReadBudget,
    }
}

fn skeleton(planned: &PlannedOp, kind: OpKind) -> Op {
    let intended_ms = planned.offset_ms();
    Op {
        index: planned.index,
        kind,
        tenant: planned.tenant.clone(),
        idempotency_key: planned.idempotency_key.clone(),
        reused_key: planned.reuse_of.is_some(),
        intended_ms,
        start_ms: intended_ms,
        end_ms: intended_ms,
        outcome: Outcome::NotSent,
        request_id: None,
        retry_after: None,
        replayed: false,
        resource_id: None,
        body_sha256: None,
        job_id_read: None,
    }
}

fn collect(
    joined: Result<(tokio::task::Id, Op), JoinError>,
    running: &mut HashMap<tokio::task::Id, PlannedOp>,
    history: &mut Vec<Op>,
    shared: &Shared,
) {
    match joined {
        Ok((id, op)) => {
            running.remove(&id);
            history.push(op);
        }
        Err(error) => {
            // A panicking task is a bug here, but the operation still gets
            // its entry: the history must hold every planned operation.
            if let Some(planned) = running.remove(&error.id()) {
                let mut op = skeleton(&planned, kind_of(planned.kind));
                op.end_ms = shared.ms_now();
                op.outcome = Outcome::IoError(format!("load task failed: {error}"));
                history.push(op);
            }
        }
    }
}

/// Waits until the run says to stop, and says how.
async fn stopped(stop: &mut watch::Receiver<Stop>) -> Stop {
    match stop.wait_for(|state| *state != Stop::Running).await {
        Ok(state) => *state,
        // The sender lives as long as the run waits for its tasks; without
        // it there is no run to carry on for.
        Err(_) => Stop::Cancelled,
    }
}

/// One operation, from its intended time to its entry in the history.
async fn execute(shared: Arc<Shared>, planned: PlannedOp, mut stop: watch::Receiver<Stop>) -> Op {
    // Which job a read reads is decided at the intended time, from the jobs
    // accepted by then, so that slot waits do not change it.
    let (kind, job_id) = match planned.kind {
        PlannedKind::Task => (OpKind::Task, None),
        PlannedKind::Job => (OpKind::Job, None),
        PlannedKind::Read => {
            let accepted = shared.accepted.lock().unwrap_or_else(|e| e.into_inner());
            match accepted.get(&planned.tenant).filter(|ids| !ids.is_empty()) {
                Some(ids) => {
                    let pick = planned.read_pick % ids.len() as u64;
                    let id = usize::try_from(pick)
                        .ok()
                        .and_then(|pick| ids.get(pick))
                        .cloned();
                    (OpKind::ReadJob, id)
                }
                None => (OpKind::ReadBudget, None),
            }
        }
    };
    let mut op = skeleton(&planned, kind);
    op.job_id_read = job_id.clone();

    let slot = tokio::select! {
        biased;
        state = stopped(&mut stop) => {
            op.start_ms = shared.ms_now();
            op.end_ms = op.start_ms;
            // Due but stuck behind the slots at the drain deadline: the
            // client gave up on it, which is an error, not an omission.
            op.outcome = if state == Stop::Cancelled { Outcome::NotSent } else { Outcome::Cancelled };
            if op.outcome == Outcome::Cancelled {
                shared.progress.add_completed(true);
            }
            return op;
        }
        // Only a closed semaphore fails to give a slot, and this one is
        // never closed; the permit is held until the answer is complete.
        slot = shared.slots.clone().acquire_owned() => slot,
    };
    op.start_ms = shared.ms_now();
    shared.progress.add_sent();
    let result = tokio::select! {
        biased;
        _ = stopped(&mut stop) => Err(Outcome::Cancelled),
        answer = tokio::time::timeout(shared.request_timeout, perform(&shared, kind, &planned, job_id.as_deref())) => {
            answer.unwrap_or(Err(Outcome::Timeout))
        }
    };
    op.end_ms = shared.ms_now();
    drop(slot);

    match result {
        Ok(answer) => {
            op.outcome = Outcome::Status(answer.status);
            op.request_id = header(&answer.headers, "x-request-id");
            op.retry_after = header(&answer.headers, "retry-after");
            op.replayed = header(&answer.headers, "idempotent-replayed")
                .is_some_and(|value| value.eq_ignore_ascii_case("true"));
            op.body_sha256 = Some(hex::encode(Sha256::digest(&answer.body)));
            if answer.status == 200 || answer.status == 202 {
                op.resource_id = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|body| body.get("id")?.as_str().map(str::to_owned));
            }
            // A replay names a job accepted already; listing it twice would
            // only skew which jobs reads pick.
            if kind == OpKind::Job
                && answer.status == 202
                && !op.replayed
                && let Some(id) = &op.resource_id
            {
                let mut accepted = shared.accepted.lock().unwrap_or_else(|e| e.into_inner());
                accepted
                    .entry(planned.tenant.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
        Err(outcome) => op.outcome = outcome,
    }
    shared.progress.add_completed(op.outcome.is_error());
    op
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// A complete answer.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

async fn perform(
    shared: &Shared,
    kind: OpKind,
    planned: &PlannedOp,
    job_id: Option<&str>,
) -> Result<Answer, Outcome> {
    let client = shared
        .client
        .as_ref()
        .map_err(|e| Outcome::IoError(e.clone()))?;
    let mut url = shared
        .base
        .as_ref()
        .map_err(|e| Outcome::IoError(e.clone()))?
        .clone();
    {
        // base_url checked that the URL can be a base, so this succeeds.
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| Outcome::IoError("the base url cannot take a path".to_owned()))?;
        segments.pop_if_empty();
        match (kind, job_id) {
            (OpKind::Task, _) => segments.extend(["v1", "tasks"]),
            (OpKind::Job, _) => segments.extend(["v1", "jobs"]),
            (OpKind::ReadJob, Some(id)) => segments.extend(["v1", "jobs", id]),
            (OpKind::ReadJob, None) | (OpKind::ReadBudget, _) => {
                segments.extend(["v1", "budgets", planned.tenant.as_str()])
            }
        };
    }
    let mut request = match kind {
        OpKind::Task | OpKind::Job => client.post(url),
        OpKind::ReadJob | OpKind::ReadBudget => client.get(url),
    };
    if let Some(key) = shared.keys.get(&planned.tenant) {
        request = request.bearer_auth(key);
    }
    if let Some(key) = &planned.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = &planned.body {
        request = request
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone());
    }
    let mut response = request.send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(Outcome::IoError(format!(
                "response body of {status} larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn classify(error: reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::Timeout
    } else if error.is_connect() {
        Outcome::ConnectError(chain(&error))
    } else {
        Outcome::IoError(chain(&error))
    }
}

/// An error and its sources, `: `-separated (reqwest's own message rarely
/// says what the socket said).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
