//! Example tests of durable jobs and webhook deliveries on the Redis store,
//! on a real `redis-server`: fencing (a stale lease changes nothing), one
//! charge per job, the dead-letter queue with its outbox row, replay within
//! the queue's capacity, the outbox's delivery records, a restart that takes
//! no lease back, and two replicas (two stores on one server, one prefix)
//! racing for leases from several threads.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::Duration;

use orchestrator::config::BudgetConfig;
use orchestrator::store::{
    Begin, BeginTask, CompleteJob, Completion, DeliveryOutcome, DeliveryState, FailJob, Failure,
    FinishTask, JobState, LeaseId, LeasedJob, NewJob, Reclaimed, RedisStore, Replay, ReservationId,
    Store, StoreOptions, Submit,
};
use redis_support::RedisServer;

mod redis_support;

const TENANT: &str = "alpha";
const STRANGER: &str = "beta";
const LIMIT: u64 = 1_000_000;
const LEASE_MS: i64 = 1_000;
/// A fixed test clock: every operation takes its time from the test.
const T0: i64 = 1_900_000_000_000;

/// The test binary's one server, or `None` when `redis-server` is missing
/// outside CI.
fn server() -> Option<&'static RedisServer> {
    static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start).as_ref()
}

fn options() -> StoreOptions {
    let mut options = StoreOptions::new(BudgetConfig {
        default_limit_tokens: 0,
        tenants: BTreeMap::from([(TENANT.to_owned(), LIMIT)]),
    });
    // No liveness thread acts during a test: a replica is gone when its
    // store is dropped.
    options.instance_ttl = Duration::from_secs(3600);
    options
}

/// A store on the server under `prefix` (each test its own).
fn open(server: &RedisServer, prefix: &str) -> Store {
    Store::Redis(RedisStore::open(&server.url(), prefix, &options()).expect("open the redis store"))
}

fn new_job(id: &str, max_attempts: u32, webhook: Option<&str>, capacity: u32) -> NewJob {
    NewJob {
        id: id.to_owned(),
        tenant: TENANT.to_owned(),
        actor: "key-1".to_owned(),
        idempotency: None,
        prompt: format!("prompt of {id}"),
        max_tokens: 100,
        webhook: webhook.map(str::to_owned),
        max_attempts,
        queue_capacity: capacity,
    }
}

fn submit(store: &Store, id: &str, max_attempts: u32, webhook: Option<&str>, now: i64) {
    let submitted = store
        .submit_job(&new_job(id, max_attempts, webhook, 1_000), now)
        .unwrap();
    assert_eq!(submitted, Submit::Accepted { id: id.to_owned() });
}

/// Reserves for an attempt of `id`, as a worker does before the provider.
fn reserve(store: &Store, id: &str, tokens: u64) -> ReservationId {
    match store
        .begin_task(&BeginTask {
            tenant: TENANT.to_owned(),
            task_id: id.to_owned(),
            idempotency: None,
            reserve_tokens: tokens,
        })
        .unwrap()
    {
        Begin::Started { reservation } => reservation,
        other => panic!("begin_task answered {other:?}"),
    }
}

fn complete(store: &Store, job: &LeasedJob, tokens: u64, now: i64) -> Completion {
    let reservation = reserve(store, &job.id, 50);
    store
        .complete_job(
            &CompleteJob {
                id: job.id.clone(),
                lease: job.lease,
                reservation,
                charge_tokens: tokens,
                output: format!("{{\"answer\":\"{}\"}}", job.id),
                actor: "worker".to_owned(),
            },
            now,
        )
        .unwrap()
}

fn fail(
    store: &Store,
    job: &LeasedJob,
    error: &str,
    retry_at_ms: Option<i64>,
    now: i64,
) -> Failure {
    let reservation = reserve(store, &job.id, 50);
    store
        .fail_job(
            &FailJob {
                id: job.id.clone(),
                lease: job.lease,
                reservation: Some(reservation),
                error: error.to_owned(),
                retry_at_ms,
                actor: "worker".to_owned(),
            },
            now,
        )
        .unwrap()
}

fn audit_actions(store: &Store) -> Vec<String> {
    store
        .audit_entries(0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

fn assert_nothing_reserved(store: &Store) {
    assert_eq!(store.budget(TENANT).unwrap().reserved_tokens, 0);
}

#[test]
fn a_stale_lease_cannot_heartbeat_complete_fail_or_release() {
    let Some(server) = server() else { return };
    let store = open(server, "fencing");
    submit(&store, "job-1", 3, None, T0);
    let first = store.lease_job("worker-1", T0, LEASE_MS).unwrap().unwrap();
    assert_eq!((first.attempt, first.lease), (1, LeaseId(1)));
    // A live lease may be extended; once expired and reclaimed, it is gone.
    assert!(
        store
            .heartbeat_job("job-1", first.lease, T0 + 500, LEASE_MS)
            .unwrap()
    );
    let later = T0 + 500 + LEASE_MS;
    assert_eq!(
        store.reclaim_expired_jobs(later - 1, 10).unwrap(),
        Vec::new(),
        "the heartbeat moved the expiry"
    );
    assert_eq!(
        store.reclaim_expired_jobs(later, 10).unwrap(),
        vec![Reclaimed {
            id: "job-1".to_owned(),
            now: JobState::Queued
        }]
    );
    let second = store
        .lease_job("worker-2", later, LEASE_MS)
        .unwrap()
        .unwrap();
    assert_eq!((second.attempt, second.lease), (2, LeaseId(2)));

    // The stalled worker wakes up: nothing it does counts, and the
    // reservations it makes are released.
    assert!(
        !store
            .heartbeat_job("job-1", first.lease, later, LEASE_MS)
            .unwrap()
    );
    assert_eq!(complete(&store, &first, 40, later), Completion::LeaseLost);
    assert_eq!(
        fail(&store, &first, "boom", Some(later), later),
        Failure::LeaseLost
    );
    assert!(
        !store
            .release_job("job-1", first.lease, None, "worker", later)
            .unwrap()
    );
    assert_nothing_reserved(&store);
    assert!(store.charges_by_task().unwrap().is_empty());
    let job = store.job(TENANT, "job-1").unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Running, 2));

    // The live lease completes.
    let Completion::Succeeded(charge) = complete(&store, &second, 40, later) else {
        panic!("the live lease completes");
    };
    assert_eq!(charge.charged, 40);
    assert_eq!(
        store.job(TENANT, "job-1").unwrap().unwrap().state,
        JobState::Succeeded
    );
    let audit = store.verify_audit().unwrap();
    assert!(audit.ok, "{audit:?}");
}

#[test]
fn a_job_that_ran_twice_is_charged_once() {
    let Some(server) = server() else { return };
    let store = open(server, "one-charge");
    submit(&store, "job-1", 3, None, T0);
    let first = store.lease_job("worker-1", T0, LEASE_MS).unwrap().unwrap();
    // The worker stalls past its lease; another takes the job over and both
    // finish.
    let later = T0 + LEASE_MS;
    store.reclaim_expired_jobs(later, 10).unwrap();
    let second = store
        .lease_job("worker-2", later, LEASE_MS)
        .unwrap()
        .unwrap();
    // The stalled worker finishes first: its lease no longer counts.
    assert_eq!(complete(&store, &first, 90, later), Completion::LeaseLost);
    assert!(matches!(
        complete(&store, &second, 70, later),
        Completion::Succeeded(_)
    ));
    // Completing again with the winning lease changes nothing either.
    assert_eq!(complete(&store, &second, 90, later), Completion::LeaseLost);
    // Nor can a stray task charge the job's id a second time: the ledger
    // holds one charge per task or job id, whoever settles.
    let stray = reserve(&store, "job-1", 5);
    let refused = store.finish_task(&FinishTask {
        reservation: stray,
        charge_tokens: 5,
        actor: "test".to_owned(),
        response: None,
    });
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("already charged")),
        "{refused:?}"
    );
    store.abort_task(stray).unwrap();
    assert_eq!(
        store.charges_by_task().unwrap(),
        BTreeMap::from([("job-1".to_owned(), (1, 70))])
    );
    let budget = store.budget(TENANT).unwrap();
    assert_eq!((budget.used_tokens, budget.reserved_tokens), (70, 0));
    let job = store.job(TENANT, "job-1").unwrap().unwrap();
    assert_eq!(job.charged_tokens, Some(70));
    assert_eq!(job.output.as_deref(), Some("{\"answer\":\"job-1\"}"));
}

#[test]
fn a_job_out_of_attempts_is_dead_with_its_outbox_row_and_the_deliveries_are_recorded() {
    let Some(server) = server() else { return };
    let store = open(server, "dlq");
    let hook = "http://hooks.test/done";
    submit(&store, "job-1", 2, Some(hook), T0);
    let card = "provider refused: card 4111 1111 1111 1111";

    let first = store.lease_job("worker", T0, LEASE_MS).unwrap().unwrap();
    assert_eq!(
        fail(&store, &first, card, Some(T0 + 100), T0),
        Failure::Retrying { at_ms: T0 + 100 }
    );
    assert!(
        store.due_deliveries(T0, 10).unwrap().is_empty(),
        "not terminal"
    );
    assert_eq!(store.next_job_due().unwrap(), Some(T0 + 100));
    assert!(
        store
            .lease_job("worker", T0 + 99, LEASE_MS)
            .unwrap()
            .is_none(),
        "the retry waits for its time"
    );
    let second = store
        .lease_job("worker", T0 + 100, LEASE_MS)
        .unwrap()
        .unwrap();
    assert_eq!(second.attempt, 2);
    let at = T0 + 200;
    assert_eq!(fail(&store, &second, card, Some(at), at), Failure::Dead);
    assert_nothing_reserved(&store);

    let dead = store.dead_jobs(TENANT, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].state, dead[0].attempts), (JobState::Dead, 2));
    assert_eq!(dead[0].finished_ms, Some(at));
    let error = dead[0].last_error.clone().unwrap();
    assert!(!error.contains("4111"), "last_error is redacted: {error}");
    assert!(store.dead_jobs(STRANGER, 10).unwrap().is_empty());

    // The outbox row committed with the death.
    let due = store.due_deliveries(at, 10).unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    let delivery = &due[0];
    assert_eq!(
        (delivery.job_id.as_str(), delivery.tenant.as_str()),
        ("job-1", TENANT)
    );
    assert_eq!(
        (delivery.url.as_str(), delivery.event.as_str()),
        (hook, "job.dead")
    );
    assert_eq!(
        (delivery.state, delivery.attempts, delivery.next_attempt_ms),
        (DeliveryState::Pending, 0, Some(at))
    );
    assert!(!delivery.payload.contains("4111"), "{}", delivery.payload);
    let payload: serde_json::Value = serde_json::from_str(&delivery.payload).unwrap();
    assert_eq!(payload["delivery_id"], delivery.id.as_str());
    assert_eq!(payload["job"]["state"], "dead");
    assert_eq!(payload["job"]["attempts"], 2);
    assert_eq!(payload["job"]["finished_ms"], at);
    assert!(store.due_deliveries(at - 1, 10).unwrap().is_empty());
    assert_eq!(store.pending_deliveries(TENANT).unwrap(), 1);
    assert_eq!(store.pending_deliveries(STRANGER).unwrap(), 0);

    // A failed attempt keeps it pending, under the same id, until later.
    let retry = DeliveryOutcome::Failed {
        status: Some(503),
        error: "receiver answered 503".to_owned(),
        retry_at_ms: Some(at + 50),
    };
    assert_eq!(
        store.record_delivery(&delivery.id, &retry, at).unwrap(),
        Some(DeliveryState::Pending)
    );
    assert!(store.due_deliveries(at + 49, 10).unwrap().is_empty());
    let again = store.due_deliveries(at + 50, 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, delivery.id);
    assert_eq!((again[0].attempts, again[0].last_status), (1, Some(503)));
    let delivered = DeliveryOutcome::Delivered { status: 204 };
    assert_eq!(
        store
            .record_delivery(&delivery.id, &delivered, at + 50)
            .unwrap(),
        Some(DeliveryState::Delivered)
    );
    // Recorded once: a second report finds it no longer pending.
    assert_eq!(
        store
            .record_delivery(&delivery.id, &delivered, at + 60)
            .unwrap(),
        None
    );
    assert_eq!(store.pending_deliveries(TENANT).unwrap(), 0);
    assert!(store.due_deliveries(i64::MAX, 10).unwrap().is_empty());
    let shown = store.job_deliveries("job-1").unwrap();
    assert_eq!(shown.len(), 1);
    let d = &shown[0];
    assert_eq!(
        (d.state, d.attempts, d.last_status, d.next_attempt_ms),
        (DeliveryState::Delivered, 2, Some(204), None)
    );
    assert_eq!(d.last_error.as_deref(), Some("receiver answered 503"));
    assert_eq!(d.delivered_ms, Some(at + 50));

    let actions = audit_actions(&store);
    assert_eq!(
        actions,
        [
            "job.accepted",
            "job.leased",
            "job.retrying",
            "job.leased",
            "job.dead",
            "webhook.retrying",
            "webhook.delivered",
        ]
    );
    let audit = store.verify_audit().unwrap();
    assert!(audit.ok, "{audit:?}");
}

#[test]
fn a_refused_delivery_is_final_and_a_succeeded_job_queues_its_own() {
    let Some(server) = server() else { return };
    let store = open(server, "refused");
    submit(&store, "job-1", 1, Some("http://hooks.test/a"), T0);
    let job = store.lease_job("worker", T0, LEASE_MS).unwrap().unwrap();
    assert!(matches!(
        complete(&store, &job, 10, T0),
        Completion::Succeeded(_)
    ));
    let due = store.due_deliveries(T0, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event, "job.succeeded");
    let refused = DeliveryOutcome::Refused {
        code: "forbidden-address",
        reason: "hooks.test resolves to 127.0.0.1, a loopback address".to_owned(),
    };
    assert_eq!(
        store.record_delivery(&due[0].id, &refused, T0 + 1).unwrap(),
        Some(DeliveryState::Refused)
    );
    assert!(store.due_deliveries(i64::MAX, 10).unwrap().is_empty());
    let entry = store
        .audit_entries(0, 1000)
        .unwrap()
        .into_iter()
        .find(|e| e.action == "webhook.refused")
        .unwrap();
    assert_eq!(entry.subject, due[0].id);
    assert_eq!(entry.details["reason"], "forbidden-address");
    assert_eq!(entry.details["job_id"], "job-1");
    assert_eq!(
        store
            .record_delivery("no-such-delivery", &refused, T0)
            .unwrap(),
        None
    );
}

#[test]
fn a_dead_job_is_replayed_within_the_queue_capacity() {
    let Some(server) = server() else { return };
    let store = open(server, "replay");
    let capacity = 2;
    let submitted = store
        .submit_job(&new_job("job-1", 1, None, capacity), T0)
        .unwrap();
    assert_eq!(submitted, Submit::Accepted { id: "job-1".into() });
    let job = store.lease_job("worker", T0, LEASE_MS).unwrap().unwrap();
    assert_eq!(fail(&store, &job, "bad request", None, T0), Failure::Dead);
    assert_eq!(
        store.replay_job(TENANT, "job-1", "admin", 0, T0).unwrap(),
        Replay::QueueFull {
            depth: 0,
            capacity: 0
        }
    );
    for id in ["job-2", "job-3"] {
        store
            .submit_job(&new_job(id, 1, None, capacity), T0)
            .unwrap();
    }
    assert_eq!(
        store
            .submit_job(&new_job("job-4", 1, None, capacity), T0)
            .unwrap(),
        Submit::QueueFull { depth: 2, capacity }
    );
    assert_eq!(
        store
            .replay_job(TENANT, "job-1", "admin", capacity, T0 + 1)
            .unwrap(),
        Replay::QueueFull { depth: 2, capacity }
    );
    assert_eq!(
        store
            .replay_job(STRANGER, "job-1", "admin", capacity, T0 + 1)
            .unwrap(),
        Replay::NotFound
    );
    assert_eq!(
        store
            .replay_job(TENANT, "job-2", "admin", capacity, T0 + 1)
            .unwrap(),
        Replay::NotDead(JobState::Queued)
    );
    let next = store.lease_job("worker", T0, LEASE_MS).unwrap().unwrap();
    assert_eq!(next.id, "job-2", "submission order");
    assert!(matches!(
        complete(&store, &next, 5, T0),
        Completion::Succeeded(_)
    ));
    assert_eq!(
        store
            .replay_job(TENANT, "job-1", "admin", capacity, T0 + 2)
            .unwrap(),
        Replay::Replayed
    );
    let replayed = store.job(TENANT, "job-1").unwrap().unwrap();
    assert_eq!(
        (
            replayed.state,
            replayed.attempts,
            replayed.run_after_ms,
            replayed.finished_ms
        ),
        (JobState::Queued, 0, T0 + 2, None)
    );
    assert_eq!(replayed.last_error.as_deref(), Some("bad request"));
    assert!(store.dead_jobs(TENANT, 10).unwrap().is_empty());
    let (ids, counts) = store.list_jobs(TENANT, None, 10).unwrap();
    assert_eq!(ids, ["job-1", "job-2", "job-3"]);
    assert_eq!((counts.queued, counts.succeeded), (2, 1));
    let (queued, _) = store.list_jobs(TENANT, Some(JobState::Queued), 10).unwrap();
    assert_eq!(queued, ["job-1", "job-3"]);
    // job-3 was queued at T0, job-1 at T0 + 2: the earlier one runs first.
    let first = store
        .lease_job("worker", T0 + 2, LEASE_MS)
        .unwrap()
        .unwrap();
    assert_eq!((first.id.as_str(), first.attempt), ("job-3", 1));
    let second = store
        .lease_job("worker", T0 + 2, LEASE_MS)
        .unwrap()
        .unwrap();
    assert_eq!((second.id.as_str(), second.attempt), ("job-1", 1));
    assert!(audit_actions(&store).contains(&"job.replayed".to_owned()));
}

#[test]
fn a_restart_takes_no_lease_back_and_another_replica_reclaims_it_once_expired() {
    let Some(server) = server() else { return };
    let first = open(server, "restart");
    submit(&first, "job-1", 1, None, T0);
    let leased = first.lease_job("worker", T0, LEASE_MS).unwrap().unwrap();
    drop(first);
    let second = open(server, "restart");
    let recovery = second.recovery();
    assert_eq!((recovery.requeued_jobs, recovery.dead_jobs), (0, 0));
    assert_eq!(
        second.job(TENANT, "job-1").unwrap().unwrap().state,
        JobState::Running,
        "other replicas' workers hold leases: open takes none back"
    );
    assert!(
        second
            .reclaim_expired_jobs(T0 + LEASE_MS - 1, 10)
            .unwrap()
            .is_empty()
    );
    // On its last attempt, the job dies when its lease is taken back.
    assert_eq!(
        second.reclaim_expired_jobs(T0 + LEASE_MS, 10).unwrap(),
        vec![Reclaimed {
            id: "job-1".to_owned(),
            now: JobState::Dead
        }]
    );
    assert!(
        !second
            .heartbeat_job("job-1", leased.lease, T0, LEASE_MS)
            .unwrap()
    );
    let job = second.job(TENANT, "job-1").unwrap().unwrap();
    assert!(
        job.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("attempt 1: lease expired")),
        "{job:?}"
    );
}

/// Two replicas, each with `THREADS / 2` workers, lease from one queue
/// until it is empty.
const THREADS: usize = 6;
const JOBS: usize = 60;

#[test]
fn two_replicas_racing_for_leases_run_each_job_once_and_charge_it_once() {
    let Some(server) = server() else { return };
    let replicas = [open(server, "race"), open(server, "race")];
    for n in 0..JOBS {
        submit(&replicas[0], &format!("job-{n}"), 1, None, T0);
    }
    let leased: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = replicas[t % 2].clone();
            let leased = leased.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let worker = format!("worker-{t}");
                barrier.wait();
                // Bounded: each round leases a job or ends the loop.
                for _ in 0..=JOBS {
                    let Some(job) = store.lease_job(&worker, T0, 60_000).unwrap() else {
                        return;
                    };
                    leased
                        .lock()
                        .unwrap()
                        .push((job.id.clone(), worker.clone()));
                    // A long lease nobody reclaims: every completion wins.
                    assert!(
                        matches!(complete(&store, &job, 10, T0), Completion::Succeeded(_)),
                        "{worker} lost the lease of {}",
                        job.id
                    );
                }
                panic!("{worker} leased more jobs than there are");
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let leased = leased.lock().unwrap().clone();
    let ids: BTreeSet<&str> = leased.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        leased.len(),
        JOBS,
        "each job leased exactly once: {leased:?}"
    );
    assert_eq!(ids.len(), JOBS);
    let workers: BTreeSet<&str> = leased.iter().map(|(_, w)| w.as_str()).collect();
    assert!(workers.len() > 1, "the workers raced: {workers:?}");
    let charges = replicas[1].charges_by_task().unwrap();
    assert_eq!(charges.len(), JOBS);
    assert!(charges.values().all(|&c| c == (1, 10)), "{charges:?}");
    let counts = replicas[1].job_counts().unwrap();
    assert_eq!(
        (counts.succeeded, counts.queued, counts.running),
        (60, 0, 0)
    );
    let budget = replicas[0].budget(TENANT).unwrap();
    assert_eq!((budget.used_tokens, budget.reserved_tokens), (600, 0));
    let audit = replicas[0].verify_audit().unwrap();
    assert!(audit.ok, "{audit:?}");
    // Accepted, leased, completed and charged: four entries per job.
    assert_eq!(audit.entries, 4 * JOBS as u64);
}

#[test]
fn replicas_racing_with_short_leases_and_a_reaper_charge_each_job_once() {
    let Some(server) = server() else { return };
    let replicas = [open(server, "race-reaped"), open(server, "race-reaped")];
    const N: usize = 20;
    for n in 0..N {
        submit(&replicas[0], &format!("job-{n}"), 1_000, None, T0);
    }
    // The test clock, moved by every worker step: leases of 3 ticks expire
    // while their workers still run, and the reaper takes them back.
    let clock = Arc::new(AtomicI64::new(T0));
    let won: Arc<Mutex<Vec<String>>> = Arc::default();
    let leases: Arc<Mutex<BTreeMap<String, Vec<i64>>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let mut handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = replicas[t % 2].clone();
            let (clock, won, leases, barrier) =
                (clock.clone(), won.clone(), leases.clone(), barrier.clone());
            std::thread::spawn(move || {
                let worker = format!("worker-{t}");
                barrier.wait();
                for _ in 0..2_000 {
                    if store.job_counts().unwrap().succeeded == N as u64 {
                        return;
                    }
                    let now = clock.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = store.lease_job(&worker, now, 3).unwrap() else {
                        continue;
                    };
                    leases
                        .lock()
                        .unwrap()
                        .entry(job.id.clone())
                        .or_default()
                        .push(job.lease.0);
                    // The first attempt of every even job stalls past its
                    // lease, and this replica's reaper takes it back (if
                    // the other's did not already): its completion must
                    // lose, and the job must be leased again.
                    let stalls = job.attempt == 1
                        && job.id.trim_start_matches("job-").parse::<usize>().unwrap() % 2 == 0;
                    if stalls {
                        let now = clock.fetch_add(10, Ordering::SeqCst) + 10;
                        store.reclaim_expired_jobs(now, 100).unwrap();
                    }
                    let later = clock.fetch_add(1, Ordering::SeqCst);
                    match complete(&store, &job, 10, later) {
                        Completion::Succeeded(_) => {
                            assert!(!stalls, "{worker} completed {} after its reclaim", job.id);
                            won.lock().unwrap().push(job.id);
                        }
                        Completion::LeaseLost => {}
                    }
                }
                panic!("{worker} gave up before every job succeeded");
            })
        })
        .collect();
    let reaper = replicas[1].clone();
    let reaper_clock = clock.clone();
    let reaper_barrier = barrier.clone();
    handles.push(std::thread::spawn(move || {
        reaper_barrier.wait();
        for _ in 0..20_000 {
            if reaper.job_counts().unwrap().succeeded == N as u64 {
                return;
            }
            let now = reaper_clock.load(Ordering::SeqCst);
            reaper.reclaim_expired_jobs(now, 100).unwrap();
        }
        panic!("the reaper gave up before every job succeeded");
    }));
    for handle in handles {
        handle.join().unwrap();
    }
    let mut won = won.lock().unwrap().clone();
    won.sort();
    let mut expected: Vec<String> = (0..N).map(|n| format!("job-{n}")).collect();
    expected.sort();
    assert_eq!(won, expected, "each job's completion won exactly once");
    let taken_over = leases
        .lock()
        .unwrap()
        .values()
        .filter(|seqs| seqs.len() > 1)
        .count();
    assert!(
        taken_over >= N / 2,
        "every stalled job ran again: {taken_over}"
    );
    for (id, seqs) in leases.lock().unwrap().iter() {
        let distinct: BTreeSet<i64> = seqs.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            seqs.len(),
            "{id}'s lease ids are never reused"
        );
    }
    let charges = replicas[0].charges_by_task().unwrap();
    assert_eq!(charges.len(), N);
    assert!(charges.values().all(|&c| c == (1, 10)), "{charges:?}");
    let budget = replicas[0].budget(TENANT).unwrap();
    assert_eq!(
        (budget.used_tokens, budget.reserved_tokens),
        (10 * N as u64, 0)
    );
    let audit = replicas[0].verify_audit().unwrap();
    assert!(audit.ok, "{audit:?}");
}
