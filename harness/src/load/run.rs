//! Sending the schedule: one task per operation, spawned at its intended
//! time, waiting for one of `max_in_flight` slots, then sending its request
//! under the request timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::history::{
    ATTACKER_ADDRESS, Credential, Op, OpKind, Outcome, ROTATED_KEY_ADDRESS, ROTATOR_ADDRESS,
    SUCCESSOR_KEY_ADDRESS, WebhookTarget, probe_address,
};
use super::plan::{PlannedKind, PlannedOp};
use super::stats::{per_second, summary_over};
use super::{
    CancellationSignal, LoadError, LoadLimits, LoadOutcome, LoadTarget, Progress, WebhookUrls,
};
use crate::scenario::{Attack, KeyRotation, LoadSpec};

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

/// The replica (an index into `replicas` base URLs) `planned` goes to:
/// round robin by index, except that an operation reusing an earlier one's
/// key goes to the replica after that one's, so that with several replicas
/// a retry never lands where its key was first sent.
fn replica_of(planned: &PlannedOp, replicas: usize) -> usize {
    let replicas = replicas.max(1) as u64;
    let slot = match planned.reuse_of {
        Some(first) => first + 1,
        None => planned.index,
    };
    usize::try_from(slot % replicas).unwrap_or(0)
}

/// The id sent where a route needs a job and the run knows none: requests
/// that authorisation must refuse never get as far as looking it up.
const NO_JOB: &str = "job-gauntlet-none";

/// The prefix of problem types the orchestrator sends.
const PROBLEM_PREFIX: &str = "urn:orchestrator:problem:";

/// What every operation task shares.
struct Shared {
    client: Result<reqwest::Client, String>,
    /// One per replica, in order.
    bases: Result<Vec<Url>, String>,
    keys: HashMap<(String, Credential), String>,
    /// The keys issued during the run ([`Credential::is_issued`]), with
    /// their ids, as the answers that issued them said.
    issued: Mutex<HashMap<Credential, IssuedKey>>,
    /// Ids of the jobs accepted so far (202), by tenant, in acceptance order.
    accepted: Mutex<HashMap<String, Vec<String>>>,
    /// Jobs seen dead (by a read or a DLQ listing) and not replayed since,
    /// by tenant, oldest sighting first.
    dead: Mutex<HashMap<String, DeadJobs>>,
    /// The body of every oversized task, made once.
    oversized: bytes::Bytes,
    /// What is left of the kept-body budget, and how many bodies it refused.
    body_budget: AtomicU64,
    bodies_dropped: AtomicU64,
    /// Another tenant's name for each tenant, for reads of another's budget.
    other_tenant: HashMap<String, String>,
    slots: Arc<Semaphore>,
    progress: Progress,
    epoch: Instant,
    request_timeout: Duration,
    webhooks: Option<WebhookUrls>,
}

/// A key issued during the run.
#[derive(Clone, Debug)]
struct IssuedKey {
    id: String,
    key: String,
}

/// A queue of job ids without duplicates.
#[derive(Default)]
struct DeadJobs {
    queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl DeadJobs {
    fn push(&mut self, id: &str) {
        if self.queued.insert(id.to_owned()) {
            self.queue.push_back(id.to_owned());
        }
    }

    fn pop(&mut self) -> Option<String> {
        let id = self.queue.pop_front()?;
        self.queued.remove(&id);
        Some(id)
    }
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
    let tenants: Vec<&str> = spec.tenants.iter().map(|t| t.name.as_str()).collect();
    let other_tenant = tenants
        .iter()
        .enumerate()
        .map(|(i, tenant)| {
            // The next tenant of the spec, or a name no tenant has.
            let other = match tenants.get((i + 1) % tenants.len()) {
                Some(next) if next != tenant => (*next).to_owned(),
                _ => format!("{tenant}-other"),
            };
            ((*tenant).to_owned(), other)
        })
        .collect();
    let shared = Arc::new(Shared {
        client: client(spec.max_in_flight),
        bases: target
            .base_urls
            .iter()
            .map(|u| base_url(u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string()),
        keys: target
            .keys
            .iter()
            .map(|k| ((k.tenant.clone(), k.credential.clone()), k.key.clone()))
            .collect(),
        issued: Mutex::new(HashMap::new()),
        accepted: Mutex::new(HashMap::new()),
        dead: Mutex::new(HashMap::new()),
        oversized: oversized_body(target.oversized_bytes),
        body_budget: AtomicU64::new(limits.kept_body_bytes),
        bodies_dropped: AtomicU64::new(0),
        other_tenant,
        // At least one slot: zero would wait forever, and validation
        // guarantees a positive bound anyway.
        slots: Arc::new(Semaphore::new(
            usize::try_from(spec.max_in_flight.max(1)).unwrap_or(usize::MAX),
        )),
        progress: progress.clone(),
        epoch,
        request_timeout: spec.request_timeout,
        webhooks: target.webhooks.clone(),
    });
    let (stop_sender, stop) = watch::channel(Stop::Running);
    let attacker = spec.attack.clone().map(|attack| {
        let attacker = Attacker {
            tenant: tenants.first().map(|t| (*t).to_owned()).unwrap_or_default(),
            first_index: plan.len() as u64,
            probe_for: target.lockout_duration + super::ATTACK_TAIL,
            deadline: epoch + spec.duration() + limits.drain_timeout,
        };
        tokio::spawn(attack_run(
            shared.clone(),
            attack,
            attacker,
            stop.clone(),
            cancel.clone(),
        ))
    });
    let rotator = spec.rotation.clone().map(|rotation| {
        let rotator = Rotator {
            tenant: tenants.first().map(|t| (*t).to_owned()).unwrap_or_default(),
            // After the plan and every operation the attacker may send.
            first_index: plan.len() as u64
                + super::MAX_ATTACK_PROBES
                + u64::from(crate::scenario::MAX_ATTACK_GUESSES),
            overlap: target.rotation_overlap,
            old_after_overlap: target.lockout_max_failures.saturating_sub(1).max(1),
            deadline: epoch + spec.duration() + limits.drain_timeout,
        };
        tokio::spawn(rotation_run(
            shared.clone(),
            rotation,
            rotator,
            stop.clone(),
            cancel.clone(),
        ))
    });
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
    if let Some(attacker) = attacker {
        // The attacker stops at its own deadline, and its requests end at the
        // request timeout or the stop sent above.
        match attacker.await {
            Ok(ops) => history.extend(ops),
            Err(e) => tracing::error!(error = %e, "the attacker task failed"),
        }
    }
    if let Some(rotator) = rotator {
        match rotator.await {
            Ok(ops) => history.extend(ops),
            Err(e) => tracing::error!(error = %e, "the rotator task failed"),
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
        bodies_dropped: shared.bodies_dropped.load(Ordering::Relaxed),
    }
}

/// Where and as whom the attacker runs.
struct Attacker {
    /// The tenant whose keys it uses: the spec's first.
    tenant: String,
    /// The index of its first operation: after every planned one.
    first_index: u64,
    /// How long it probes after its last guess.
    probe_for: Duration,
    /// No operation starts after this.
    deadline: Instant,
}

/// The attacker of `attack`: closed loop, each request sent when the one
/// before it was answered, so that the order the service saw them in is the
/// order of their indices. First the guesses from [`ATTACKER_ADDRESS`],
/// then probes with valid keys every `probe_every`: even ones with the
/// tenant's key from the attacker's address, odd ones with the victim key
/// from a fresh [`probe_address`]. Every request reads the tenant's budget,
/// which changes nothing.
async fn attack_run(
    shared: Arc<Shared>,
    attack: Attack,
    attacker: Attacker,
    stop: watch::Receiver<Stop>,
    cancel: CancellationSignal,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut index = attacker.first_index;
    let go_on = |at: Instant| {
        at < attacker.deadline && *stop.borrow() == Stop::Running && !cancel.is_cancelled()
    };
    tokio::select! {
        _ = cancel.cancelled() => return ops,
        _ = tokio::time::sleep_until(shared.epoch + attack.at) => {}
    }
    let mut send = async |credential: Credential, client: std::net::IpAddr| {
        let planned = PlannedOp {
            index,
            offset: Instant::now().saturating_duration_since(shared.epoch),
            kind: PlannedKind::Access {
                route: OpKind::ReadBudget,
            },
            tenant: attacker.tenant.clone(),
            credential,
            client,
            idempotency_key: None,
            reuse_of: None,
            body: None,
            read_pick: 0,
            webhook: None,
            planted: Vec::new(),
            request_id: None,
        };
        index += 1;
        shared.progress.add_planned();
        execute(shared.clone(), planned, stop.clone()).await
    };
    for _ in 0..attack.guesses {
        if !go_on(Instant::now()) {
            return ops;
        }
        ops.push(send(Credential::Guess, ATTACKER_ADDRESS).await);
    }
    let probes_until = Instant::now() + attacker.probe_for;
    let mut at = Instant::now();
    for n in 0..super::MAX_ATTACK_PROBES {
        if at > probes_until || !go_on(at) {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(at) => {}
        }
        let (credential, client) = if n % 2 == 0 {
            (Credential::Tenant, ATTACKER_ADDRESS)
        } else {
            (Credential::Victim, probe_address(n / 2))
        };
        ops.push(send(credential, client).await);
        at = (at + attack.probe_every).max(Instant::now());
    }
    ops
}

/// Where and as whom the rotator runs.
struct Rotator {
    /// The tenant whose key issues and rotates: the spec's first.
    tenant: String,
    /// The index of its first operation.
    first_index: u64,
    /// `security.keys.rotation_overlap`.
    overlap: Duration,
    /// How many probes with the rotated key it sends once the overlap may
    /// have ended: fewer than the lockout's threshold, so that its 401s
    /// never lock its address or the key id, which would change the answer.
    old_after_overlap: u32,
    /// No operation starts after this.
    deadline: Instant,
}

/// How long the rotator probes past the overlap's end.
pub const ROTATION_TAIL: Duration = Duration::from_secs(1);

/// The most probes the rotator sends.
pub const MAX_ROTATION_PROBES: u64 = 1000;

/// The rotator of `rotation`, closed loop like the attacker: at once it
/// issues a `viewer` key with the tenant's key, and reads the roles with it
/// every `probe_every`; at `rotation.at` it rotates the key, then reads
/// with the rotated key and the successor in turn (each from an address of
/// its own) until the overlap must have ended and [`ROTATION_TAIL`] more.
async fn rotation_run(
    shared: Arc<Shared>,
    rotation: KeyRotation,
    rotator: Rotator,
    stop: watch::Receiver<Stop>,
    cancel: CancellationSignal,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut index = rotator.first_index;
    let go_on = |at: Instant| {
        at < rotator.deadline && *stop.borrow() == Stop::Running && !cancel.is_cancelled()
    };
    let mut send = async |kind: OpKind, credential: Credential, client: std::net::IpAddr| {
        let planned = PlannedOp {
            index,
            offset: Instant::now().saturating_duration_since(shared.epoch),
            kind: PlannedKind::Access { route: kind },
            tenant: rotator.tenant.clone(),
            credential,
            client,
            idempotency_key: None,
            reuse_of: None,
            body: (kind == OpKind::CreateKey).then(|| r#"{"role": "viewer"}"#.to_owned()),
            read_pick: 0,
            webhook: None,
            planted: Vec::new(),
            request_id: None,
        };
        index += 1;
        shared.progress.add_planned();
        execute(shared.clone(), planned, stop.clone()).await
    };
    let issued = |credential: &Credential| {
        let issued = shared.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.contains_key(credential)
    };
    ops.push(send(OpKind::CreateKey, Credential::Tenant, ROTATOR_ADDRESS).await);
    if !issued(&Credential::Rotating) {
        return ops;
    }
    let rotate_at = shared.epoch + rotation.at;
    let mut at = Instant::now();
    let mut probes = 0;
    while at < rotate_at && go_on(at) && probes < MAX_ROTATION_PROBES {
        tokio::select! {
            _ = cancel.cancelled() => return ops,
            _ = tokio::time::sleep_until(at) => {}
        }
        ops.push(send(OpKind::ReadRoles, Credential::Rotating, ROTATED_KEY_ADDRESS).await);
        probes += 1;
        at = (at + rotation.probe_every).max(Instant::now());
    }
    tokio::select! {
        _ = cancel.cancelled() => return ops,
        _ = tokio::time::sleep_until(rotate_at) => {}
    }
    if !go_on(Instant::now()) {
        return ops;
    }
    let rotated_at = Instant::now();
    ops.push(send(OpKind::RotateKey, Credential::Tenant, ROTATOR_ADDRESS).await);
    if !issued(&Credential::Successor) {
        return ops;
    }
    // The old key may stop working from the moment the rotation was sent
    // plus the overlap; probes with it from then on are the ones that may
    // fail, and they are bounded.
    let old_may_fail = rotated_at + rotator.overlap;
    let until = Instant::now() + rotator.overlap + ROTATION_TAIL;
    let mut old_after = 0;
    let mut at = Instant::now();
    let mut n = 0u64;
    while at <= until && go_on(at) && probes < MAX_ROTATION_PROBES {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(at) => {}
        }
        let old_turn = n.is_multiple_of(2) && old_after < rotator.old_after_overlap;
        n += 1;
        if old_turn {
            if Instant::now() >= old_may_fail {
                old_after += 1;
            }
            ops.push(send(OpKind::ReadRoles, Credential::Rotating, ROTATED_KEY_ADDRESS).await);
        } else {
            ops.push(
                send(
                    OpKind::ReadRoles,
                    Credential::Successor,
                    SUCCESSOR_KEY_ADDRESS,
                )
                .await,
            );
        }
        probes += 1;
        at = (at + rotation.probe_every).max(Instant::now());
    }
    ops
}

/// A JSON task body of `size` bytes (at least the smallest task body): a
/// small, valid task followed by whitespace, which JSON allows, so that
/// only the body limit can refuse it (a long prompt would meet the prompt
/// limit first).
fn oversized_body(size: usize) -> bytes::Bytes {
    const TASK: &str = r#"{"prompt": "summarise this oversized request", "max_tokens": 16}"#;
    let mut body = String::with_capacity(size.max(TASK.len()));
    body.push_str(TASK);
    body.extend(std::iter::repeat_n(' ', size.saturating_sub(TASK.len())));
    bytes::Bytes::from(body)
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
        PlannedKind::Oversized => OpKind::OversizedTask,
        PlannedKind::Slow => OpKind::SlowTask,
        PlannedKind::Job => OpKind::Job,
        // An unsent read read nothing; budget reads need no earlier job.
        PlannedKind::Read => OpKind::ReadBudget,
        // Likewise, listing needs no dead job.
        PlannedKind::Dlq => OpKind::ListDlq,
        PlannedKind::Access { route } => route,
    }
}

fn skeleton(planned: &PlannedOp, kind: OpKind) -> Op {
    Op {
        webhook: planned.webhook,
        planted: planned.planted.clone(),
        credential: planned.credential.clone(),
        idempotency_key: planned.idempotency_key.clone(),
        reused_key: planned.reuse_of.is_some(),
        client: planned.client,
        ..Op::planned(planned.index, kind, &planned.tenant, planned.offset_ms())
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
    // Which job a read reads, and whether a DLQ operation replays, are
    // decided at the intended time, from what was seen by then, so that slot
    // waits do not change them.
    let (kind, job_id) = decide(&shared, &planned);
    let mut op = skeleton(&planned, kind);
    op.job_id = job_id.clone();

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
        Ok(answer) => record(&shared, &mut op, &answer),
        Err(outcome) => {
            op.outcome = outcome;
            // A replay that got no answer may not have happened: the job
            // stays a candidate.
            if kind == OpKind::ReplayDlq
                && let Some(id) = &job_id
            {
                dead_jobs(&shared, &op.tenant, |dead| dead.push(id));
            }
        }
    }
    shared.progress.add_completed(op.outcome.is_error());
    op
}

/// What a planned operation sends, from what the run has seen by now: the
/// history's kind, and the job it reads or replays.
fn decide(shared: &Shared, planned: &PlannedOp) -> (OpKind, Option<String>) {
    let accepted_job = || {
        let accepted = shared.accepted.lock().unwrap_or_else(|e| e.into_inner());
        let ids = accepted
            .get(&planned.tenant)
            .filter(|ids| !ids.is_empty())?;
        let pick = usize::try_from(planned.read_pick % ids.len() as u64).ok()?;
        ids.get(pick).cloned()
    };
    match planned.kind {
        PlannedKind::Read => match accepted_job() {
            Some(id) => (OpKind::ReadJob, Some(id)),
            None => (OpKind::ReadBudget, None),
        },
        PlannedKind::Dlq => match dead_jobs(shared, &planned.tenant, DeadJobs::pop) {
            Some(id) => (OpKind::ReplayDlq, Some(id)),
            None => (OpKind::ListDlq, None),
        },
        PlannedKind::Access {
            route: OpKind::ReadJob,
        } => (
            OpKind::ReadJob,
            Some(accepted_job().unwrap_or_else(|| NO_JOB.to_owned())),
        ),
        PlannedKind::Access {
            route: OpKind::ReplayDlq,
        } => (OpKind::ReplayDlq, Some(NO_JOB.to_owned())),
        other => (kind_of(other), None),
    }
}

/// Runs `f` on the tenant's dead jobs.
fn dead_jobs<T>(shared: &Shared, tenant: &str, f: impl FnOnce(&mut DeadJobs) -> T) -> T {
    let mut dead = shared.dead.lock().unwrap_or_else(|e| e.into_inner());
    f(dead.entry(tenant.to_owned()).or_default())
}

/// Records an answer in the operation, and what it teaches the rest of the
/// run: jobs accepted, jobs dead.
fn record(shared: &Shared, op: &mut Op, answer: &Answer) {
    op.outcome = Outcome::Status(answer.status);
    op.request_id = header(&answer.headers, "x-request-id");
    op.retry_after = header(&answer.headers, "retry-after");
    op.security_headers = security_headers(&answer.headers);
    op.replayed = header(&answer.headers, "idempotent-replayed")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    op.body_sha256 = Some(hex::encode(Sha256::digest(&answer.body)));
    let json = || serde_json::from_slice::<serde_json::Value>(&answer.body).ok();
    if (200..=202).contains(&answer.status) {
        op.resource_id = json().and_then(|body| body.get("id")?.as_str().map(str::to_owned));
    }
    if answer.status >= 400 {
        op.problem = json().and_then(|body| {
            let kind = body.get("type")?.as_str()?;
            Some(kind.strip_prefix(PROBLEM_PREFIX).unwrap_or(kind).to_owned())
        });
    }
    let keep = answer.status == 200
        && (op.kind.is_task() || matches!(op.kind, OpKind::ReadJob | OpKind::ListDlq));
    if keep {
        op.body = keep_body(shared, &answer.body);
    }
    // Only the tenant's own key teaches the run: an answer to another key
    // (which should have been refused) is no job of the load's.
    if op.credential != Credential::Tenant {
        return;
    }
    match (op.kind, answer.status) {
        // A replay names a job accepted already; listing it twice would only
        // skew which jobs reads pick.
        (OpKind::Job, 202) if !op.replayed => {
            if let Some(id) = &op.resource_id {
                let mut accepted = shared.accepted.lock().unwrap_or_else(|e| e.into_inner());
                accepted
                    .entry(op.tenant.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
        (OpKind::ReadJob, 200) => {
            op.job_state = json().and_then(|body| body.get("state")?.as_str().map(str::to_owned));
            if op.job_state.as_deref() == Some("dead")
                && let Some(id) = &op.job_id
            {
                dead_jobs(shared, &op.tenant, |dead| dead.push(id));
            }
        }
        // What the rotator learns: the key it issued, then its successor.
        (OpKind::CreateKey | OpKind::RotateKey, 201) => {
            let learnt = json().and_then(|body| {
                Some(IssuedKey {
                    id: body.get("id")?.as_str()?.to_owned(),
                    key: body.get("key")?.as_str()?.to_owned(),
                })
            });
            if let Some(learnt) = learnt {
                let credential = if op.kind == OpKind::CreateKey {
                    Credential::Rotating
                } else {
                    Credential::Successor
                };
                let mut issued = shared.issued.lock().unwrap_or_else(|e| e.into_inner());
                issued.insert(credential, learnt);
            }
        }
        (OpKind::ListDlq, 200) => {
            op.dlq_listed = json()
                .and_then(|body| {
                    let jobs = body.get("jobs")?.as_array()?.iter();
                    Some(
                        jobs.filter_map(|job| job.get("id")?.as_str().map(str::to_owned))
                            .collect(),
                    )
                })
                .unwrap_or_default();
            dead_jobs(shared, &op.tenant, |dead| {
                for id in &op.dlq_listed {
                    dead.push(id);
                }
            });
        }
        _ => {}
    }
}

/// The key issued during the run as `credential`, if it was.
fn issued_key(shared: &Shared, credential: &Credential) -> Option<IssuedKey> {
    let issued = shared.issued.lock().unwrap_or_else(|e| e.into_inner());
    issued.get(credential).cloned()
}

/// The body as text if the kept-body budget has room for it; otherwise it
/// is counted as dropped.
fn keep_body(shared: &Shared, body: &[u8]) -> Option<String> {
    let size = body.len() as u64;
    let reserved = shared
        .body_budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(size)
        })
        .is_ok();
    if reserved {
        Some(String::from_utf8_lossy(body).into_owned())
    } else {
        shared.bodies_dropped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Which of [`SECURITY_HEADERS`](super::SECURITY_HEADERS) `headers` carry as due.
fn security_headers(headers: &HeaderMap) -> u16 {
    super::SECURITY_HEADERS
        .iter()
        .enumerate()
        .filter(|(_, (name, value))| {
            headers.get(*name).is_some_and(|v| {
                value.is_none_or(|expected| v.to_str().is_ok_and(|v| v.trim() == expected))
            })
        })
        .fold(0u16, |mask, (i, _)| mask | (1 << i))
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
    let bases = shared
        .bases
        .as_ref()
        .map_err(|e| Outcome::IoError(e.clone()))?;
    let mut url = bases
        .get(replica_of(planned, bases.len()))
        .ok_or_else(|| Outcome::IoError("the load has no base url".to_owned()))?
        .clone();
    {
        // base_url checked that the URL can be a base, so this succeeds.
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| Outcome::IoError("the base url cannot take a path".to_owned()))?;
        segments.pop_if_empty();
        let tenant = planned.tenant.as_str();
        let job = job_id.unwrap_or(NO_JOB);
        match kind {
            OpKind::Task | OpKind::OversizedTask | OpKind::SlowTask => {
                segments.extend(["v1", "tasks"])
            }
            OpKind::Job | OpKind::ListJobs => segments.extend(["v1", "jobs"]),
            OpKind::ReadJob => segments.extend(["v1", "jobs", job]),
            OpKind::ReadBudget => segments.extend(["v1", "budgets", tenant]),
            OpKind::ReadOtherBudget => {
                let other = shared
                    .other_tenant
                    .get(tenant)
                    .map_or(tenant, String::as_str);
                segments.extend(["v1", "budgets", other])
            }
            OpKind::ListDlq => segments.extend(["v1", "dlq"]),
            OpKind::ReplayDlq => segments.extend(["v1", "dlq", job, "replay"]),
            OpKind::ReadAudit => segments.extend(["v1", "audit"]),
            OpKind::VerifyAudit => segments.extend(["v1", "audit", "verify"]),
            OpKind::ReadRoles => segments.extend(["v1", "roles"]),
            OpKind::ListKeys | OpKind::CreateKey => segments.extend(["v1", "keys"]),
            OpKind::RotateKey => {
                let rotating = issued_key(shared, &Credential::Rotating)
                    .map_or_else(|| "gauntlet-no-key".to_owned(), |k| k.id);
                segments.extend(["v1", "keys", rotating.as_str(), "rotate"])
            }
        };
    }
    let post = matches!(
        kind,
        OpKind::Task
            | OpKind::OversizedTask
            | OpKind::SlowTask
            | OpKind::Job
            | OpKind::ReplayDlq
            | OpKind::CreateKey
            | OpKind::RotateKey
    );
    let mut request = if post {
        client.post(url)
    } else {
        client.get(url)
    };
    if planned.credential.is_issued() {
        if let Some(issued) = issued_key(shared, &planned.credential) {
            request = request.bearer_auth(issued.key);
        }
    } else if let Some(key) = shared
        .keys
        .get(&(planned.tenant.clone(), planned.credential.clone()))
    {
        if planned.credential == Credential::Guess {
            // The configured text is the guesses' prefix: each guess is new.
            request = request.bearer_auth(format!("{key}{:x}", planned.index));
        } else {
            request = request.bearer_auth(key);
        }
    }
    request = request.header("x-forwarded-for", planned.client.to_string());
    if let Some(key) = &planned.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    if let Some(id) = &planned.request_id {
        request = request.header("x-request-id", id);
    }
    if kind == OpKind::OversizedTask {
        request = request
            .header(CONTENT_TYPE, "application/json")
            .body(shared.oversized.clone());
    } else if let Some(body) = &planned.body {
        let body = match (planned.webhook, &shared.webhooks) {
            (Some(target), Some(urls)) => with_webhook(body, target, urls),
            _ => body.clone(),
        };
        request = request.header(CONTENT_TYPE, "application/json").body(body);
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

/// `body` (a JSON object) with `"webhook"` set to `target`'s URL.
fn with_webhook(body: &str, target: WebhookTarget, urls: &WebhookUrls) -> String {
    let url = match target {
        WebhookTarget::Sink => &urls.sink,
        WebhookTarget::Trap => &urls.trap,
    };
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("webhook".into(), serde_json::Value::from(url.as_str()));
            serde_json::Value::Object(map).to_string()
        }
        // The plan's bodies are objects; anything else goes as planned.
        _ => body.to_owned(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: u64, reuse_of: Option<u64>) -> PlannedOp {
        PlannedOp {
            index,
            offset: Duration::ZERO,
            kind: PlannedKind::Access {
                route: OpKind::ReadBudget,
            },
            tenant: "t".to_owned(),
            credential: Credential::Tenant,
            client: std::net::IpAddr::from([10, 0, 0, 1]),
            idempotency_key: None,
            reuse_of,
            body: None,
            read_pick: 0,
            webhook: None,
            planted: Vec::new(),
            request_id: None,
        }
    }

    #[test]
    fn operations_go_round_robin_and_a_reused_key_goes_to_the_next_replica() {
        let spread: Vec<usize> = (0..6).map(|i| replica_of(&op(i, None), 3)).collect();
        assert_eq!(spread, [0, 1, 2, 0, 1, 2]);
        for first in 0..6 {
            let original = replica_of(&op(first, None), 3);
            let retry = replica_of(&op(first + 7, Some(first)), 3);
            assert_ne!(
                original, retry,
                "a reuse of op {first} lands where it was first sent"
            );
        }
        // One replica: everything goes to it.
        assert_eq!(replica_of(&op(5, Some(2)), 1), 0);
    }
}
