//! The harness's own reader of the orchestrator's Redis layout
//! (`gauntlet::evidence::redis`), on a real `redis-server`: state written
//! through the orchestrator's own store reads back as the same facts the
//! store reports, and values the layout does not allow are errors naming
//! their key and field. Without `redis-server` the tests are skipped with a
//! reason, except under CI=true, where they fail.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use gauntlet::evidence::db::{
    BudgetRow, ChargeRow, Database, DeliveryRow, JobRow, JobState, KeyRow, KeyState,
    ReservationState,
};
use gauntlet::evidence::{audit, redis as evidence};
use gauntlet::local::{RedisServer, RedisServerError};
use orchestrator::audit::NewEntry;
use orchestrator::config::BudgetConfig;
use orchestrator::store::{
    Begin, BeginTask, CompleteJob, Completion, DeliveryOutcome, DeliveryState, FailJob, Failure,
    FinishTask, IdempotencyClaim, LeasedJob, NewJob, RedisStore, ReservationId, StoreOptions,
    StoredResponse, Submit,
};
use serde_json::json;

/// A tenant whose name holds both characters the layout escapes.
const ODD: &str = "be:ta%";
const ALPHA: &str = "alpha";
/// A tenant whose usage runs past its limit, for an overage.
const SMALL: &str = "small";
const LEASE_MS: i64 = 1_000;
/// A fixed clock for the jobs: every job operation takes its time from the
/// test.
const T0: i64 = 1_900_000_000_000;

/// A server in a fresh directory, or `None` (with the reason printed) when
/// `redis-server` is not installed outside CI.
async fn server(dir: &tempfile::TempDir) -> Option<RedisServer> {
    match RedisServer::start(&dir.path().join("redis"), false).await {
        Ok(server) => Some(server),
        Err(e @ RedisServerError::NotInstalled { .. })
            if std::env::var("CI").as_deref() != Ok("true") =>
        {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("cannot start redis-server (under CI=true it must start): {e}"),
    }
}

fn options() -> StoreOptions {
    let mut options = StoreOptions::new(BudgetConfig {
        default_limit_tokens: 10_000,
        tenants: BTreeMap::from([
            (ALPHA.to_owned(), 5_000),
            (ODD.to_owned(), 3_000),
            (SMALL.to_owned(), 100),
        ]),
    });
    // The liveness thread must not act while the test writes: a replica is
    // gone only when its store is dropped.
    options.instance_ttl = Duration::from_secs(3600);
    options
}

fn begin(store: &RedisStore, tenant: &str, task: &str, key: Option<&str>, tokens: u64) -> i64 {
    let begun = store
        .begin_task(&BeginTask {
            tenant: tenant.to_owned(),
            task_id: task.to_owned(),
            idempotency: key.map(|key| IdempotencyClaim {
                key: key.to_owned(),
                fingerprint: [7; 32],
            }),
            reserve_tokens: tokens,
        })
        .unwrap();
    match begun {
        Begin::Started { reservation } => reservation.0,
        other => panic!("begin_task of {task} answered {other:?}"),
    }
}

fn finish(store: &RedisStore, reservation: i64, charge: u64, response: bool) {
    store
        .finish_task(&FinishTask {
            reservation: ReservationId(reservation),
            charge_tokens: charge,
            actor: "key-1".to_owned(),
            response: response.then(|| StoredResponse {
                status: 200,
                body: b"{\"ok\":true}".to_vec(),
            }),
        })
        .unwrap();
}

fn submit(store: &RedisStore, id: &str, max_attempts: u32, webhook: bool, now: i64) {
    let submitted = store
        .submit_job(
            &NewJob {
                id: id.to_owned(),
                tenant: ALPHA.to_owned(),
                actor: "key-1".to_owned(),
                idempotency: None,
                prompt: format!("prompt of {id}"),
                max_tokens: 100,
                webhook: webhook.then(|| "https://hooks.test/done".to_owned()),
                max_attempts,
                queue_capacity: 1_000,
            },
            now,
        )
        .unwrap();
    assert_eq!(submitted, Submit::Accepted { id: id.to_owned() });
}

fn lease(store: &RedisStore, id: &str, now: i64) -> LeasedJob {
    let leased = store.lease_job("worker-1", now, LEASE_MS).unwrap().unwrap();
    assert_eq!(leased.id, id, "jobs are leased in submission order");
    leased
}

fn fail(store: &RedisStore, job: &LeasedJob, retry_at_ms: Option<i64>, now: i64) -> Failure {
    let reservation = begin(store, &job.tenant, &job.id, None, 20);
    store
        .fail_job(
            &FailJob {
                id: job.id.clone(),
                lease: job.lease,
                reservation: Some(ReservationId(reservation)),
                error: format!("attempt {} failed", job.attempt),
                retry_at_ms,
                actor: "worker-1".to_owned(),
            },
            now,
        )
        .unwrap()
}

/// What the store reports, gathered before it is dropped.
struct Expected {
    budgets: Vec<BudgetRow>,
    charges: BTreeMap<String, Vec<ChargeRow>>,
    reservations: BTreeMap<i64, (String, String, Option<String>, u64, ReservationState)>,
    keys: Vec<KeyRow>,
    jobs: Vec<JobRow>,
    deliveries: Vec<DeliveryRow>,
    audit_entries: u64,
    audit_actions: Vec<String>,
    charged_tasks: Vec<String>,
}

/// Writes one of everything through the orchestrator's store and returns
/// what the store then reports about it.
fn write_state(url: &str) -> Expected {
    let store = RedisStore::open(url, evidence::PREFIX, &options()).unwrap();
    let mut reservations = BTreeMap::new();
    let mut held = |id: i64,
                    tenant: &str,
                    task: &str,
                    key: Option<&str>,
                    tokens: u64,
                    state: ReservationState| {
        reservations.insert(
            id,
            (
                tenant.to_owned(),
                task.to_owned(),
                key.map(str::to_owned),
                tokens,
                state,
            ),
        );
    };

    // A task without a key, charged.
    let plain = begin(&store, ALPHA, "task-plain", None, 100);
    finish(&store, plain, 60, true);
    held(
        plain,
        ALPHA,
        "task-plain",
        None,
        100,
        ReservationState::Charged,
    );
    // A keyed task whose key holds both escaped characters, completed.
    let keyed = begin(&store, ALPHA, "task-keyed", Some("k:1%"), 200);
    finish(&store, keyed, 150, true);
    held(
        keyed,
        ALPHA,
        "task-keyed",
        Some("k:1%"),
        200,
        ReservationState::Charged,
    );
    // A keyed task of the oddly named tenant, aborted: its key is deleted.
    let aborted = begin(&store, ODD, "task-aborted", Some("k2"), 50);
    store.abort_task(ReservationId(aborted)).unwrap();
    held(
        aborted,
        ODD,
        "task-aborted",
        Some("k2"),
        50,
        ReservationState::Released,
    );
    // A keyed task left in flight, as a crash leaves it.
    let left = begin(&store, ODD, "task-held", Some("k3"), 70);
    held(
        left,
        ODD,
        "task-held",
        Some("k3"),
        70,
        ReservationState::Held,
    );
    // A task whose usage exceeds its tenant's limit: charged up to the
    // limit, the rest overage.
    let over = begin(&store, SMALL, "task-over", None, 100);
    finish(&store, over, 130, false);
    held(
        over,
        SMALL,
        "task-over",
        None,
        100,
        ReservationState::Charged,
    );
    store
        .record_audit(NewEntry::new(
            "tester",
            "test.note",
            "subject",
            json!({"note": "written by the test"}),
        ))
        .unwrap();

    // Jobs: one succeeds, one retries then dies, one stays queued, one is
    // left running; the first two have webhooks, so deliveries.
    submit(&store, "job:ok", 3, true, T0);
    submit(&store, "job-dead", 2, true, T0 + 1);
    let job = lease(&store, "job:ok", T0 + 2);
    let reservation = begin(&store, ALPHA, "job:ok", None, 50);
    let completed = store
        .complete_job(
            &CompleteJob {
                id: job.id.clone(),
                lease: job.lease,
                reservation: ReservationId(reservation),
                charge_tokens: 40,
                output: "{\"answer\":1}".to_owned(),
                actor: "worker-1".to_owned(),
            },
            T0 + 3,
        )
        .unwrap();
    assert!(matches!(completed, Completion::Succeeded(_)));
    held(
        reservation,
        ALPHA,
        "job:ok",
        None,
        50,
        ReservationState::Charged,
    );
    let job = lease(&store, "job-dead", T0 + 4);
    assert_eq!(
        fail(&store, &job, Some(T0 + 5), T0 + 4),
        Failure::Retrying { at_ms: T0 + 5 }
    );
    let job = lease(&store, "job-dead", T0 + 5);
    assert_eq!(fail(&store, &job, Some(T0 + 6), T0 + 5), Failure::Dead);
    submit(&store, "job-queued", 3, false, T0 + 6);
    submit(&store, "job-running", 3, false, T0 + 7);
    // Each submission is leased in turn: the queued one first, so it is
    // failed back to the queue for later.
    let queued = lease(&store, "job-queued", T0 + 8);
    fail(&store, &queued, Some(T0 + 1_000_000), T0 + 8);
    lease(&store, "job-running", T0 + 9);
    // The failed attempts' reservations are made inside `fail`, which does
    // not return their ids: they are judged by their states below.
    let job_ids = ["job:ok", "job-dead", "job-queued", "job-running"];

    // One delivery delivered, one failed and retrying: three states.
    let ok_delivery = store.job_deliveries("job:ok").unwrap().remove(0);
    store
        .record_delivery(
            &ok_delivery.id,
            &DeliveryOutcome::Delivered { status: 200 },
            T0 + 10,
        )
        .unwrap();
    let dead_delivery = store.job_deliveries("job-dead").unwrap().remove(0);
    store
        .record_delivery(
            &dead_delivery.id,
            &DeliveryOutcome::Failed {
                status: Some(503),
                error: "unavailable".to_owned(),
                retry_at_ms: Some(T0 + 20),
            },
            T0 + 11,
        )
        .unwrap();

    let tenants = [ALPHA, ODD, SMALL];
    let budgets = tenants
        .iter()
        .map(|t| {
            let b = store.budget(t).unwrap();
            BudgetRow {
                tenant: b.tenant,
                limit_tokens: b.limit_tokens,
                used_tokens: b.used_tokens,
                reserved_tokens: b.reserved_tokens,
            }
        })
        .collect::<Vec<_>>();
    let charges = tenants
        .iter()
        .map(|t| {
            let rows = store
                .charges(t)
                .unwrap()
                .into_iter()
                .map(|c| ChargeRow {
                    tenant: c.tenant,
                    reservation_id: c.reservation.0,
                    task_id: c.task_id,
                    idempotency_key: c.idempotency_key,
                    tokens: c.tokens,
                    overage_tokens: c.overage_tokens,
                })
                .collect();
            ((*t).to_owned(), rows)
        })
        .collect();
    let jobs = job_ids
        .iter()
        .map(|id| {
            let j = store.job(ALPHA, id).unwrap().unwrap();
            JobRow {
                id: j.id,
                tenant: j.tenant,
                state: match j.state.as_str() {
                    "queued" => JobState::Queued,
                    "running" => JobState::Running,
                    "succeeded" => JobState::Succeeded,
                    "dead" => JobState::Dead,
                    other => panic!("a job state the harness does not know: {other}"),
                },
                attempts: u64::from(j.attempts),
                max_attempts: u64::from(j.max_attempts),
                last_error: j.last_error,
            }
        })
        .collect();
    let mut stored_deliveries = job_ids
        .iter()
        .flat_map(|id| store.job_deliveries(id).unwrap())
        .collect::<Vec<_>>();
    stored_deliveries.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    let states: Vec<DeliveryState> = stored_deliveries.iter().map(|d| d.state).collect();
    assert_eq!(
        states,
        [DeliveryState::Delivered, DeliveryState::Pending],
        "the test meant to leave one delivered and one pending delivery"
    );
    let deliveries = stored_deliveries
        .into_iter()
        .map(|d| DeliveryRow {
            id: d.id,
            job_id: d.job_id,
            event: d.event,
            payload: d.payload,
            state: d.state.as_str().to_owned(),
            attempts: u64::from(d.attempts),
            last_error: d.last_error,
        })
        .collect();
    let verification = store.verify_audit().unwrap();
    assert!(verification.ok, "the store's own chain verifies");
    let audit_actions = store
        .audit_entries(0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    let expected = Expected {
        budgets,
        charges,
        reservations,
        keys: vec![
            KeyRow {
                tenant: ALPHA.to_owned(),
                key: "k:1%".to_owned(),
                reservation_id: keyed,
                state: KeyState::Completed,
            },
            KeyRow {
                tenant: ODD.to_owned(),
                key: "k3".to_owned(),
                reservation_id: left,
                state: KeyState::InFlight,
            },
        ],
        jobs,
        deliveries,
        audit_entries: verification.entries,
        audit_actions,
        charged_tasks: ["task-plain", "task-keyed", "task-over", "job:ok"]
            .map(str::to_owned)
            .to_vec(),
    };
    // Dropped before reading, as the service stops before the harness reads.
    drop(store);
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_written_by_the_store_reads_back_as_the_store_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(&dir).await else {
        return;
    };
    let url = server.url();
    let expected = tokio::task::spawn_blocking({
        let url = url.clone();
        move || write_state(&url)
    })
    .await
    .unwrap();
    let db = evidence::read(&url, evidence::PREFIX).await.unwrap();
    server.stop().await;

    assert_eq!(db.schema_version, 4);
    assert_eq!(db.budgets, expected.budgets, "budgets, by tenant");
    let small = db.budgets.iter().find(|b| b.tenant == SMALL).unwrap();
    assert_eq!(small.used_tokens, 100, "charged up to the limit");

    for (tenant, rows) in &expected.charges {
        let read: Vec<&ChargeRow> = db.charges.iter().filter(|c| &c.tenant == tenant).collect();
        assert_eq!(read, rows.iter().collect::<Vec<_>>(), "charges of {tenant}");
    }
    let tasks: Vec<&str> = db.charges.iter().map(|c| c.task_id.as_str()).collect();
    assert_eq!(tasks, expected.charged_tasks, "the ledger in its order");
    assert_eq!(
        db.charges
            .iter()
            .find(|c| c.tenant == SMALL)
            .unwrap()
            .overage_tokens,
        30
    );

    let ids: Vec<i64> = db.reservations.iter().map(|r| r.id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "reservations by id, each once");
    for (id, (tenant, task, key, tokens, state)) in &expected.reservations {
        let row = db.reservations.iter().find(|r| r.id == *id).unwrap();
        assert_eq!(
            (
                &row.tenant,
                &row.task_id,
                &row.idempotency_key,
                row.tokens,
                row.state
            ),
            (tenant, task, key, *tokens, *state),
            "reservation {id}"
        );
    }
    // The job attempts' reservations: one charged (the completion), the
    // failed attempts' released, none of them held.
    let attempts: Vec<ReservationState> = db
        .reservations
        .iter()
        .filter(|r| r.task_id.starts_with("job"))
        .map(|r| r.state)
        .collect();
    assert_eq!(attempts.len(), 4);
    assert!(!attempts.contains(&ReservationState::Held));
    let held: Vec<&str> = db
        .reservations
        .iter()
        .filter(|r| r.state == ReservationState::Held)
        .map(|r| r.task_id.as_str())
        .collect();
    assert_eq!(held, ["task-held"], "only the task left in flight is held");

    assert_eq!(db.keys, expected.keys, "keys by tenant then key");
    assert_eq!(db.jobs, expected.jobs, "jobs in submission order");
    let states: Vec<JobState> = db.jobs.iter().map(|j| j.state).collect();
    assert_eq!(
        states,
        [
            JobState::Succeeded,
            JobState::Dead,
            JobState::Queued,
            JobState::Running
        ]
    );
    assert_eq!(db.deliveries, expected.deliveries, "deliveries by creation");

    let report = audit::verify(&db.audit, db.audit_head.as_ref());
    assert!(report.ok(), "the harness's verifier: {report:?}");
    assert_eq!(report.entries, expected.audit_entries);
    let actions: Vec<String> = db
        .audit
        .iter()
        .map(|r| String::from_utf8(r.action.clone()).unwrap())
        .collect();
    assert_eq!(actions, expected.audit_actions);
    let head = db.audit_head.as_ref().unwrap();
    assert_eq!(head.last_seq, db.audit.last().unwrap().seq);
    assert_eq!(head.last_hash, db.audit.last().unwrap().hash);
}

/// Runs a raw command on the server.
fn raw(url: &str, args: &[&str]) {
    let client = redis::Client::open(url).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.exec(&mut con).unwrap();
}

/// Writes a little state under `prefix` through the store: one charged
/// task of `alpha`.
fn seed(url: &str, prefix: &str) {
    let store = RedisStore::open(url, prefix, &options()).unwrap();
    let id = begin(&store, ALPHA, "task-1", Some("key-1"), 100);
    finish(&store, id, 60, true);
}

async fn read_error(url: &str, prefix: &str) -> String {
    match evidence::read(url, prefix).await {
        Ok(db) => panic!("read {prefix} although it is malformed: {db:?}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_layout_does_not_allow_are_errors_naming_key_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(&dir).await else {
        return;
    };
    let url = server.url();
    let cases: [(&str, &[&str], &[&str]); 5] = [
        (
            "bad-used",
            &["HSET", "bad-used:budget:alpha", "used", "x"],
            &["bad-used:budget:alpha: used is `x`", "integer"],
        ),
        (
            "bad-state",
            &["HSET", "bad-state:reservation:1", "state", "lost"],
            &["bad-state:reservation:1: state is `lost`"],
        ),
        (
            "bad-escape",
            &[
                "HSET",
                "bad-escape:idem:alpha:k%2",
                "reservation",
                "1",
                "state",
                "completed",
            ],
            &["bad-escape:idem:alpha:k%2: key name is `k%2`"],
        ),
        (
            "bad-charge",
            &["RPUSH", "bad-charge:charges", "{\"tenant\":\"alpha\"}"],
            &["bad-charge:charges[1]: no reservation"],
        ),
        (
            "bad-hash",
            &["HSET", "bad-hash:audit:head", "hash", "zz"],
            &["bad-hash:audit:head: hash is `zz`", "64 hex digits"],
        ),
    ];
    let inputs: Vec<(String, Vec<String>)> = cases
        .iter()
        .map(|(prefix, cmd, _)| {
            (
                (*prefix).to_owned(),
                cmd.iter().map(|s| (*s).to_owned()).collect(),
            )
        })
        .collect();
    tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            for (prefix, cmd) in inputs {
                seed(&url, &prefix);
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                raw(&url, &args);
            }
        }
    })
    .await
    .unwrap();
    for (prefix, _, wanted) in cases {
        let error = read_error(&url, prefix).await;
        for part in wanted {
            assert!(
                error.contains(part),
                "{prefix}: the error names {part:?}: {error}"
            );
        }
        assert!(!error.ends_with('.'), "no trailing full stop: {error}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_is_read_literally_and_an_empty_one_reads_empty() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(&dir).await else {
        return;
    };
    let url = server.url();
    tokio::task::spawn_blocking({
        let url = url.clone();
        move || seed(&url, "glob-ab")
    })
    .await
    .unwrap();
    let seeded = evidence::read(&url, "glob-ab").await.unwrap();
    assert_eq!(seeded.budgets.len(), 1);
    assert_eq!(seeded.keys.len(), 1);
    assert_eq!(seeded.charges.len(), 1);
    // `glob-a*` as a pattern would match `glob-ab`'s keys; as a prefix it
    // names none.
    let db = evidence::read(&url, "glob-a*").await.unwrap();
    assert_eq!(
        db,
        Database {
            schema_version: 4,
            ..Database::default()
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_naming_it() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = evidence::read(&format!("redis://127.0.0.1:{port}/0"), evidence::PREFIX)
        .await
        .unwrap_err();
    assert!(
        error.contains(&format!("127.0.0.1:{port}")) && error.contains("cannot connect"),
        "{error}"
    );
}
