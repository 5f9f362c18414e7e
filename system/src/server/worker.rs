//! The job workers: `jobs.workers` tasks that lease jobs, run them through
//! the same path as tasks (budget, LLM client, validation), and record the
//! outcome; and one reaper that takes back expired leases.
//!
//! Shutdown has two phases. `Drain`: no new leases; running attempts go on.
//! `Abandon` (when the grace period is over): running attempts stop and give
//! their leases back, uncounted, so the next process runs them at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::AppState;
use super::tasks::{Executed, ReservationGuard, execute, record_charge, reserve_tokens};
use crate::llm::LlmError;
use crate::store::{
    Begin, BeginTask, CompleteJob, Completion, FailJob, Failure, LeasedJob, now_ms,
};

/// The longest an idle worker sleeps before looking for due jobs again
/// (a submission or replay wakes one at once; retries fall due on a timer).
const MAX_IDLE: Duration = Duration::from_secs(1);
/// The pause after a store failure, so a failing disk is not hammered.
const STORE_FAILURE_PAUSE: Duration = Duration::from_millis(500);
/// The most expired leases taken back per reaper pass.
const RECLAIM_BATCH: u32 = 100;
/// How long abandoning workers get to hand their leases back.
const ABANDON_BOUND: Duration = Duration::from_secs(2);

/// Where the pool is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    Run,
    Drain,
    Abandon,
}

/// The running pool.
pub struct Workers {
    phase: watch::Sender<Phase>,
    handles: Vec<JoinHandle<()>>,
}

/// Starts the workers and the reaper.
pub fn spawn(state: Arc<AppState>) -> Workers {
    let (phase, _) = watch::channel(Phase::Run);
    let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(
        state.seed ^ 0x6a6f_6273, // "jobs": a stream apart from the LLM client's
    )));
    let mut handles = Vec::new();
    let workers = state.config.jobs.workers;
    for n in 1..=workers {
        let worker = Worker {
            state: state.clone(),
            name: worker_name(&state.store, n),
            phase: phase.subscribe(),
            rng: rng.clone(),
        };
        handles.push(tokio::spawn(worker.run()));
    }
    handles.push(tokio::spawn(super::webhooks::deliverer(
        state.clone(),
        phase.subscribe(),
    )));
    handles.push(tokio::spawn(reaper(state, phase.subscribe())));
    Workers { phase, handles }
}

/// Worker `n`'s name, as leases and audit entries record it: `worker-N`,
/// and on Redis `worker-N@INSTANCE` (eight digits of the replica's instance
/// id), so that the workers of several replicas are told apart.
fn worker_name(store: &crate::store::Store, n: u32) -> String {
    match store {
        crate::store::Store::Redis(redis) => {
            let instance = redis.instance();
            format!("worker-{n}@{}", &instance[..instance.len().min(8)])
        }
        crate::store::Store::Sqlite(_) => format!("worker-{n}"),
    }
}

impl Workers {
    /// Stops leasing, lets running attempts finish for at most `grace`, then
    /// makes the rest give their leases back (bounded too). Whatever is still
    /// running after that is taken back by crash recovery at the next start.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.phase.send(Phase::Drain);
        let mut handles = self.handles;
        let all = async {
            for handle in &mut handles {
                let _ = handle.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_ok() {
            tracing::info!("job workers drained");
            return;
        }
        tracing::warn!("job workers still running after the grace period; giving leases back");
        let _ = self.phase.send(Phase::Abandon);
        let rest = async {
            for handle in &mut handles {
                if !handle.is_finished() {
                    let _ = handle.await;
                }
            }
        };
        if tokio::time::timeout(ABANDON_BOUND, rest).await.is_err() {
            tracing::error!(
                "job workers did not stop; their leases are reclaimed at the next start"
            );
            for handle in &handles {
                handle.abort();
            }
        }
    }
}

/// Completes once the phase reaches `target` (never if the pool is gone
/// without reaching it).
pub(super) async fn reached(phase: &mut watch::Receiver<Phase>, target: Phase) {
    loop {
        if *phase.borrow_and_update() >= target {
            return;
        }
        if phase.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Takes back expired leases, and retries failed reservation releases, every
/// heartbeat interval (at most every second).
async fn reaper(state: Arc<AppState>, mut phase: watch::Receiver<Phase>) {
    let period = state.config.jobs.heartbeat_interval.min(MAX_IDLE);
    loop {
        tokio::select! {
            () = reached(&mut phase, Phase::Drain) => return,
            () = tokio::time::sleep(period) => {}
        }
        match state
            .store
            .run(|s| s.reclaim_expired_jobs(now_ms(), RECLAIM_BATCH))
            .await
        {
            Ok(reclaimed) if !reclaimed.is_empty() => {
                state
                    .metrics
                    .job_lease_reclaims
                    .inc_by(reclaimed.len() as u64);
                for job in &reclaimed {
                    tracing::warn!(job_id = %job.id, now = %job.now, "took back an expired job lease");
                }
                state.job_wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot reclaim expired job leases"),
        }
        retry_releases(&state).await;
    }
}

/// Tries again the reservation releases that failed (a disk error), so that
/// their tokens and idempotency keys come back without a restart.
pub(super) async fn retry_releases(state: &AppState) -> usize {
    if state.store.pending_releases() == 0 {
        return 0;
    }
    match state.store.run(|s| Ok(s.retry_releases())).await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::error!(error = %e, "cannot retry failed releases");
            state.store.pending_releases()
        }
    }
}

struct Worker {
    state: Arc<AppState>,
    name: String,
    phase: watch::Receiver<Phase>,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

/// How an attempt ended, before it is recorded.
enum Attempt {
    Ran(Result<Executed, LlmError>),
    LeaseLost,
    Abandoned,
}

impl Worker {
    async fn run(mut self) {
        let lease_ms = millis(self.state.config.jobs.lease);
        while *self.phase.borrow() == Phase::Run {
            let name = self.name.clone();
            let leased = self
                .state
                .store
                .run(move |s| s.lease_job(&name, now_ms(), lease_ms))
                .await;
            match leased {
                Ok(Some(job)) => {
                    let span = tracing::info_span!("job", job_id = %job.id, attempt = job.attempt, worker = %self.name);
                    tracing::Instrument::instrument(self.attempt(job), span).await;
                }
                Ok(None) => self.idle().await,
                Err(e) => {
                    tracing::error!(worker = %self.name, error = %e, "cannot lease a job");
                    self.pause(STORE_FAILURE_PAUSE).await;
                }
            }
        }
    }

    /// Waits until a job may be due: a wake-up, the next retry time, or
    /// [`MAX_IDLE`].
    async fn idle(&mut self) {
        let wait = match self.state.store.run(|s| s.next_job_due()).await {
            Ok(Some(due)) => Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)),
            _ => MAX_IDLE,
        };
        let wait = wait.clamp(Duration::from_millis(5), MAX_IDLE);
        let wake = self.state.job_wake.clone();
        tokio::select! {
            () = wake.notified() => {}
            () = self.pause(wait) => {}
        }
    }

    /// Sleeps for `wait`, or less if shutdown begins.
    async fn pause(&mut self, wait: Duration) {
        tokio::select! {
            () = reached(&mut self.phase, Phase::Drain) => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    async fn attempt(&mut self, job: LeasedJob) {
        let state = self.state.clone();
        let store = &state.store;
        let begin = BeginTask {
            tenant: job.tenant.clone(),
            task_id: job.id.clone(),
            idempotency: None,
            reserve_tokens: reserve_tokens(&job.prompt, job.max_tokens),
        };
        let reservation = match store.run(move |s| s.begin_task(&begin)).await {
            Ok(Begin::Started { reservation }) => reservation,
            Ok(Begin::InsufficientBudget {
                limit,
                used,
                reserved,
                requested,
            }) => {
                let error = format!(
                    "budget exhausted: tenant {} cannot reserve {requested} tokens (limit {limit}, used {used}, reserved {reserved})",
                    job.tenant
                );
                self.fail(&job, error, Some(Duration::ZERO)).await;
                return;
            }
            Ok(other) => {
                // Jobs reserve without an idempotency key; nothing else is possible.
                let error = format!("unexpected reservation outcome {other:?}");
                self.fail(&job, error, None).await;
                return;
            }
            Err(e) => {
                // The lease expires and the reaper takes the job back.
                tracing::error!(job_id = %job.id, error = %e, "cannot reserve budget for a job");
                self.pause(STORE_FAILURE_PAUSE).await;
                return;
            }
        };
        let guard = ReservationGuard::new(store.clone(), reservation);
        let request_id = format!("{}/{}", job.id, job.attempt);
        let mut phase = self.phase.clone();
        let outcome = tokio::select! {
            result = execute(&state, &job.prompt, job.max_tokens, &request_id, &job.id) => Attempt::Ran(result),
            () = self.keep_lease(&job) => Attempt::LeaseLost,
            () = reached(&mut phase, Phase::Abandon) => Attempt::Abandoned,
        };
        match outcome {
            Attempt::Ran(Ok(Executed {
                output: Ok(plan),
                usage,
            })) => {
                let done = CompleteJob {
                    id: job.id.clone(),
                    lease: job.lease,
                    reservation,
                    charge_tokens: usage.total_tokens,
                    output: serde_json::to_string(&plan).unwrap_or_default(),
                    actor: self.name.clone(),
                };
                match guard
                    .settle(move |s, _| s.complete_job(&done, now_ms()))
                    .await
                {
                    Ok(Completion::Succeeded(charge)) => {
                        self.outcome("succeeded");
                        record_charge(&state, &job.tenant, &charge);
                        let age_ms = now_ms().saturating_sub(job.created_ms).max(0);
                        state.metrics.job_duration.observe(age_ms as f64 / 1000.0);
                        tracing::info!(job_id = %job.id, attempt = job.attempt, "job succeeded");
                    }
                    Ok(Completion::LeaseLost) => self.lease_lost(&job),
                    Err(e) => {
                        tracing::error!(job_id = %job.id, error = %e, "cannot record a job's success; it runs again after its lease expires");
                    }
                }
            }
            Attempt::Ran(Ok(Executed { output: Err(e), .. })) => {
                // Model output varies from call to call: worth another attempt.
                let error = format!("the model's output was rejected: {e}");
                self.fail_guarded(&job, guard, error, Some(Duration::ZERO))
                    .await;
            }
            Attempt::Ran(Err(e)) => {
                let retry = retry_floor(&e);
                self.fail_guarded(&job, guard, e.client_detail(), retry)
                    .await;
            }
            Attempt::LeaseLost => {
                // The guard releases the reservation as it drops.
                drop(guard);
                self.lease_lost(&job);
            }
            Attempt::Abandoned => {
                let (id, lease, actor) = (job.id.clone(), job.lease, self.name.clone());
                let released = guard
                    .settle(move |s, r| s.release_job(&id, lease, Some(r), &actor, now_ms()))
                    .await;
                match released {
                    Ok(true) => self.outcome("released"),
                    Ok(false) => self.lease_lost(&job),
                    Err(e) => {
                        tracing::error!(job_id = %job.id, error = %e, "cannot give a job lease back; it is reclaimed at the next start")
                    }
                }
            }
        }
    }

    /// Renews the lease every heartbeat interval; completes when it is lost.
    async fn keep_lease(&self, job: &LeasedJob) {
        let jobs = &self.state.config.jobs;
        let lease_ms = millis(jobs.lease);
        loop {
            tokio::time::sleep(jobs.heartbeat_interval).await;
            let (id, lease) = (job.id.clone(), job.lease);
            match self
                .state
                .store
                .run(move |s| s.heartbeat_job(&id, lease, now_ms(), lease_ms))
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                // The next heartbeat may get through before the lease expires.
                Err(e) => tracing::warn!(job_id = %job.id, error = %e, "job heartbeat failed"),
            }
        }
    }

    /// Records a failed attempt whose reservation the guard holds.
    async fn fail_guarded(
        &mut self,
        job: &LeasedJob,
        guard: ReservationGuard,
        error: String,
        retry: Option<Duration>,
    ) {
        let failed = self.failure(job, error, retry);
        let result = guard
            .settle(move |s, reservation| {
                s.fail_job(
                    &FailJob {
                        reservation: Some(reservation),
                        ..failed
                    },
                    now_ms(),
                )
            })
            .await;
        self.failed(job, result);
    }

    /// Records a failed attempt that holds no reservation.
    async fn fail(&mut self, job: &LeasedJob, error: String, retry: Option<Duration>) {
        let failed = self.failure(job, error, retry);
        let result = self
            .state
            .store
            .run(move |s| s.fail_job(&failed, now_ms()))
            .await;
        self.failed(job, result);
    }

    /// The failure record: `retry` is `None` for a failure not worth
    /// retrying, else the least wait before the next attempt, which the
    /// backoff may lengthen.
    fn failure(&self, job: &LeasedJob, error: String, retry: Option<Duration>) -> FailJob {
        let retry_at_ms = retry.map(|floor| {
            let wait = self.backoff(job.attempt).max(floor);
            now_ms().saturating_add(millis(wait))
        });
        FailJob {
            id: job.id.clone(),
            lease: job.lease,
            reservation: None,
            error,
            retry_at_ms,
            actor: self.name.clone(),
        }
    }

    fn failed(&self, job: &LeasedJob, result: Result<Failure, crate::store::StoreError>) {
        match result {
            Ok(Failure::Retrying { at_ms }) => {
                self.outcome("retrying");
                tracing::warn!(job_id = %job.id, attempt = job.attempt, retry_in_ms = at_ms - now_ms(), "job attempt failed; retrying");
            }
            Ok(Failure::Dead) => {
                self.outcome("dead");
                tracing::warn!(job_id = %job.id, attempt = job.attempt, "job moved to the dead-letter queue");
            }
            Ok(Failure::LeaseLost) => self.lease_lost(job),
            Err(e) => {
                tracing::error!(job_id = %job.id, error = %e, "cannot record a job failure; it runs again after its lease expires");
            }
        }
    }

    fn lease_lost(&self, job: &LeasedJob) {
        self.outcome("lease_lost");
        tracing::warn!(job_id = %job.id, attempt = job.attempt, "job lease lost; the attempt's result is discarded");
    }

    fn outcome(&self, outcome: &str) {
        self.state
            .metrics
            .job_attempts
            .with_label_values(&[outcome])
            .inc();
    }

    /// The pause after failed attempt `attempt` (from 1): doubling from
    /// `retry_initial_delay` up to `retry_max_delay`, with equal jitter (half
    /// fixed, half random) from the seeded generator, so that retries spread
    /// out but never come back at once.
    fn backoff(&self, attempt: u32) -> Duration {
        let jobs = &self.state.config.jobs;
        let exponent = attempt.saturating_sub(1).min(30);
        let full = jobs
            .retry_initial_delay
            .saturating_mul(1 << exponent)
            .min(jobs.retry_max_delay);
        let half = full / 2;
        let jitter = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            rng.random_range(0.0..=1.0)
        };
        half + half.mul_f64(jitter)
    }
}

/// The least wait a failed LLM call asks for before the next attempt, or
/// `None` when the failure is not worth retrying (the provider refused the
/// request itself, which another attempt will not change).
fn retry_floor(error: &LlmError) -> Option<Duration> {
    match error {
        LlmError::Unavailable { retry_after } => Some(*retry_after),
        LlmError::Rejected { .. } => None,
        _ => Some(Duration::ZERO),
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
