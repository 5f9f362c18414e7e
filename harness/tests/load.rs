//! The open-loop load generator: its schedule (pure), and runs over real HTTP
//! against a small axum server whose delay, status and stalls the tests
//! control. The server tells the tests what happened (through watch channels
//! and records) so that tests wait on conditions, not on guessed sleeps;
//! timing assertions are made only where timing is the behaviour, with
//! generous bounds for a loaded 2-core machine.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gauntlet::load::{
    ATTACKER_ADDRESS, CancellationSignal, Credential, LoadError, LoadLimits, LoadOutcome,
    LoadTarget, Op, OpKind, Outcome, PlannedKind, PlannedOp, Progress, TargetKey, client_address,
    probe_address, run, schedule,
};
use gauntlet::scenario::{Attack, LoadSpec, Mix, Stage, Tenant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// The bound on any single wait.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

fn stage(seconds: f64, start_rps: f64, end_rps: f64) -> Stage {
    Stage {
        duration: Duration::from_secs_f64(seconds),
        start_rps,
        end_rps,
    }
}

fn tenant(name: &str) -> Tenant {
    Tenant {
        name: name.to_owned(),
        budget_tokens: None,
        role: "admin".to_owned(),
    }
}

fn spec(stages: Vec<Stage>) -> LoadSpec {
    LoadSpec {
        stages,
        mix: Mix {
            tasks: 1,
            jobs: 1,
            reads: 1,
            ..Mix::default()
        },
        tenants: vec![tenant("a"), tenant("b")],
        idempotency_reuse: 0.2,
        max_in_flight: 256,
        request_timeout: Duration::from_secs(10),
        max_tokens: 64,
        attack: None,
        rotation: None,
        webhooks: None,
        personal_data: 0.0,
    }
}

fn limits() -> LoadLimits {
    LoadLimits {
        max_requests: 200_000,
        drain_timeout: Duration::from_secs(10),
        ..LoadLimits::default()
    }
}

fn offsets_s(plan: &[PlannedOp]) -> Vec<f64> {
    plan.iter().map(|op| op.offset.as_secs_f64()).collect()
}

// ---------------------------------------------------------------- schedule

#[test]
fn the_schedule_is_deterministic_per_seed_and_differs_across_seeds() {
    let spec = spec(vec![stage(5.0, 20.0, 20.0)]);
    let first = schedule(&spec, &[], 1, &limits()).expect("schedule");
    assert_eq!(first, schedule(&spec, &[], 1, &limits()).expect("schedule"));
    let other = schedule(&spec, &[], 2, &limits()).expect("schedule");
    assert_eq!(first.len(), other.len());
    // Timing depends on the stages alone; everything drawn depends on the seed.
    assert_eq!(offsets_s(&first), offsets_s(&other));
    let draws = |plan: &[PlannedOp]| {
        plan.iter()
            .map(|op| {
                (
                    op.kind,
                    op.tenant.clone(),
                    op.idempotency_key.clone(),
                    op.body.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let same = draws(&first)
        .iter()
        .zip(draws(&other).iter())
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        same < first.len() / 4,
        "{same} of {} draws agree",
        first.len()
    );
}

#[test]
fn the_schedule_count_is_rate_times_duration() {
    // Constant: 50 rps for 4 s, evenly spaced.
    let constant =
        schedule(&spec(vec![stage(4.0, 50.0, 50.0)]), &[], 7, &limits()).expect("schedule");
    assert_eq!(constant.len(), 200);
    for pair in constant.windows(2) {
        let gap = pair[1].offset.as_secs_f64() - pair[0].offset.as_secs_f64();
        assert!((gap - 0.02).abs() < 1e-6, "gap {gap}");
    }

    // A ramp from 0 to 100 rps over 2 s: 100 in all, a quarter in the first second.
    let ramp = schedule(&spec(vec![stage(2.0, 0.0, 100.0)]), &[], 7, &limits()).expect("schedule");
    assert_eq!(ramp.len(), 100);
    let first_second = ramp
        .iter()
        .filter(|op| op.offset.as_secs_f64() < 1.0)
        .count();
    assert!((24..=26).contains(&first_second), "{first_second}");

    // Stages chained, a silent one among them: 10 + 40 + 0 + 2.5 (rounded up).
    let stages = vec![
        stage(1.0, 10.0, 10.0),
        stage(2.0, 10.0, 30.0),
        stage(1.0, 0.0, 0.0),
        stage(0.5, 5.0, 5.0),
    ];
    let chained = schedule(&spec(stages), &[], 7, &limits()).expect("schedule");
    assert_eq!(chained.len(), 53);
    let offsets = offsets_s(&chained);
    assert!(offsets.windows(2).all(|pair| pair[0] <= pair[1]));
    assert!(offsets.iter().all(|offset| *offset < 4.5));
    assert_eq!(
        offsets.iter().filter(|o| (1.0..3.0).contains(*o)).count(),
        40
    );
    assert!(!offsets.iter().any(|o| (3.0..4.0).contains(o)));
    assert_eq!(offsets.iter().filter(|o| **o >= 4.0).count(), 3);
    assert!(chained.iter().zip(0u64..).all(|(op, i)| op.index == i));
}

#[test]
fn the_mix_and_the_tenants_are_respected() {
    let mut spec = spec(vec![stage(40.0, 100.0, 100.0)]);
    spec.mix = Mix {
        tasks: 1,
        jobs: 2,
        reads: 1,
        ..Mix::default()
    };
    let plan = schedule(&spec, &[], 11, &limits()).expect("schedule");
    assert_eq!(plan.len(), 4000);
    let count = |kind| plan.iter().filter(|op| op.kind == kind).count();
    // The standard deviations are about 27 and 32: these bounds are 5 of them.
    assert!(
        (850..=1150).contains(&count(PlannedKind::Task)),
        "{}",
        count(PlannedKind::Task)
    );
    assert!(
        (1850..=2150).contains(&count(PlannedKind::Job)),
        "{}",
        count(PlannedKind::Job)
    );
    assert!(
        (850..=1150).contains(&count(PlannedKind::Read)),
        "{}",
        count(PlannedKind::Read)
    );
    let tenant_a = plan.iter().filter(|op| op.tenant == "a").count();
    assert!((1850..=2150).contains(&tenant_a), "{tenant_a}");

    spec.mix = Mix {
        tasks: 0,
        jobs: 1,
        reads: 0,
        ..Mix::default()
    };
    let only_jobs = schedule(&spec, &[], 11, &limits()).expect("schedule");
    assert!(only_jobs.iter().all(|op| op.kind == PlannedKind::Job));
}

#[test]
fn reused_keys_reuse_the_body_of_an_earlier_op_of_the_same_kind_and_tenant() {
    let mut spec = spec(vec![stage(20.0, 100.0, 100.0)]);
    spec.idempotency_reuse = 0.3;
    let plan = schedule(&spec, &[], 5, &limits()).expect("schedule");
    let mut fresh_keys = HashSet::new();
    let (mut writes, mut reused) = (0, 0);
    for op in &plan {
        if op.kind == PlannedKind::Read {
            assert_eq!(
                (&op.idempotency_key, &op.body, op.reuse_of),
                (&None, &None, None)
            );
            continue;
        }
        writes += 1;
        let key = op.idempotency_key.as_deref().expect("a write has a key");
        let body: serde_json::Value =
            serde_json::from_str(op.body.as_deref().expect("a write has a body")).expect("json");
        assert_eq!(body["max_tokens"], 64);
        assert!(
            body["prompt"]
                .as_str()
                .is_some_and(|p| !p.is_empty() && p.len() < 80)
        );
        match op.reuse_of {
            Some(of) => {
                reused += 1;
                let original = &plan[usize::try_from(of).expect("index")];
                assert!(of < op.index);
                assert_eq!(original.reuse_of, None);
                assert_eq!(original.kind, op.kind);
                assert_eq!(original.tenant, op.tenant);
                assert_eq!(original.idempotency_key, op.idempotency_key);
                assert_eq!(original.body, op.body);
            }
            None => {
                assert!(key.starts_with("k-") && key.len() == 18, "{key}");
                assert!(key[2..].chars().all(|c| c.is_ascii_hexdigit()), "{key}");
                assert!(fresh_keys.insert(key.to_owned()), "{key} is fresh twice");
            }
        }
    }
    let share = reused as f64 / writes as f64;
    // A few early ops have nothing to reuse yet; the rest reuse at 0.3.
    assert!((0.26..=0.34).contains(&share), "reuse share {share}");
    let prompts: HashSet<&str> = plan.iter().filter_map(|op| op.body.as_deref()).collect();
    assert!(
        prompts.len() > 500,
        "only {} distinct bodies",
        prompts.len()
    );
}

#[test]
fn a_schedule_over_the_limit_is_refused_naming_the_numbers() {
    let spec = spec(vec![stage(1000.0, 1000.0, 1000.0)]);
    let error = schedule(&spec, &[], 1, &limits()).expect_err("over the limit");
    assert!(matches!(
        error,
        LoadError::TooManyRequests {
            max_requests: 200_000,
            ..
        }
    ));
    let message = error.to_string();
    assert!(
        message.contains("1000000") && message.contains("200000"),
        "{message}"
    );
}

#[test]
fn an_unusable_spec_or_target_is_refused() {
    let mut no_tenants = spec(vec![stage(1.0, 1.0, 1.0)]);
    no_tenants.tenants.clear();
    assert!(matches!(
        schedule(&no_tenants, &[], 1, &limits()),
        Err(LoadError::NoTenants)
    ));
    let mut no_mix = spec(vec![stage(1.0, 1.0, 1.0)]);
    no_mix.mix = Mix {
        tasks: 0,
        jobs: 0,
        reads: 0,
        ..Mix::default()
    };
    assert!(matches!(
        schedule(&no_mix, &[], 1, &limits()),
        Err(LoadError::EmptyMix)
    ));
    let negative = spec(vec![stage(1.0, 1.0, 1.0), stage(1.0, -1.0, 1.0)]);
    assert!(matches!(
        schedule(&negative, &[], 1, &limits()),
        Err(LoadError::InvalidRate { stage: 1, .. })
    ));

    let spec = spec(vec![stage(4.0, 5.0, 5.0)]);
    let plan = schedule(&spec, &[], 1, &limits()).expect("schedule");
    let mut target = LoadTarget {
        base_urls: vec!["http://127.0.0.1:9".to_owned()],
        keys: vec![own_key("a")],
        oversized_bytes: 2048,
        lockout_duration: Duration::from_secs(1),
        lockout_max_failures: 10,
        rotation_overlap: Duration::from_secs(1),
        webhooks: None,
    };
    assert!(matches!(
        target.validate(&plan),
        Err(LoadError::MissingKey { tenant, credential: Credential::Tenant }) if tenant == "b"
    ));
    target.keys.push(own_key("b"));
    assert!(target.validate(&plan).is_ok());
    target.base_urls.push("ftp://127.0.0.1:9".to_owned());
    assert!(matches!(
        target.validate(&plan),
        Err(LoadError::InvalidBaseUrl { .. })
    ));
}

// ---------------------------------------------------------------- test server

/// How the test server answers.
#[derive(Clone, Debug, Default)]
struct Behaviour {
    delay: Duration,
    /// 0: the normal answer; otherwise this status as problem+json.
    status: u16,
    retry_after: Option<&'static str>,
}

#[derive(Default)]
struct Records {
    /// Idempotency key -> (request body, stored answer).
    keys: HashMap<String, (String, String)>,
    /// Every body sent under each key.
    bodies_by_key: HashMap<String, HashSet<String>>,
    /// Job id -> the Authorization it was created with.
    jobs: HashMap<String, String>,
    /// (job id read, Authorization).
    job_reads: Vec<(String, String)>,
    /// (budget tenant, Authorization).
    budget_reads: Vec<(String, String)>,
    /// (Authorization, X-Forwarded-For) of each budget read.
    forwarded: Vec<(String, String)>,
    /// When each request arrived.
    arrivals: Vec<Instant>,
}

struct TestServer {
    behaviour: Mutex<Behaviour>,
    /// Open (true) lets requests through; closed holds them all.
    gate: watch::Sender<bool>,
    /// Requests received so far.
    received: watch::Sender<u64>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    next_id: AtomicU64,
    records: Mutex<Records>,
}

impl TestServer {
    async fn start(behaviour: Behaviour) -> (Arc<TestServer>, SocketAddr) {
        let server = Arc::new(TestServer {
            behaviour: Mutex::new(behaviour),
            gate: watch::Sender::new(true),
            received: watch::Sender::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            records: Mutex::new(Records::default()),
        });
        let app = Router::new()
            .route("/v1/tasks", post(create_task))
            .route("/v1/jobs", post(create_job))
            .route("/v1/jobs/{id}", get(read_job))
            .route("/v1/budgets/{tenant}", get(read_budget))
            .with_state(server.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (server, addr)
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().expect("records")
    }

    async fn wait_received(&self, at_least: u64) {
        let mut received = self.received.subscribe();
        within("requests to arrive", received.wait_for(|n| *n >= at_least))
            .await
            .expect("the server lives");
    }
}

/// Decrements the concurrency count however the handler ends (the client
/// may give up and drop it).
struct InFlight(Arc<TestServer>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts the request, holds it while the gate is closed, then for the
/// delay; returns the failure to answer with, if the behaviour says so.
async fn admit(server: &Arc<TestServer>) -> (InFlight, Option<Response>) {
    let now = server.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    server.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let guard = InFlight(server.clone());
    server.records().arrivals.push(Instant::now());
    server.received.send_modify(|n| *n += 1);
    let mut gate = server.gate.subscribe();
    let _ = gate.wait_for(|open| *open).await;
    let behaviour = server.behaviour.lock().expect("behaviour").clone();
    tokio::time::sleep(behaviour.delay).await;
    if behaviour.status == 0 {
        return (guard, None);
    }
    let status = StatusCode::from_u16(behaviour.status).expect("status");
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        "application/problem+json".parse().expect("value"),
    );
    headers.insert("x-request-id", request_id(server).parse().expect("value"));
    if let Some(retry_after) = behaviour.retry_after {
        headers.insert("retry-after", retry_after.parse().expect("value"));
    }
    let body = r#"{"type":"about:blank","status":0}"#;
    (guard, Some((status, headers, body).into_response()))
}

fn request_id(server: &TestServer) -> String {
    format!("r-{}", server.next_id.fetch_add(1, Ordering::SeqCst))
}

fn auth(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Tasks and jobs: first come stores the answer under its key; later ones
/// with the same key and body replay it.
async fn create(server: Arc<TestServer>, headers: HeaderMap, body: String, job: bool) -> Response {
    let (_guard, failure) = admit(&server).await;
    if let Some(failure) = failure {
        return failure;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let status = if job {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut records = server.records();
    records
        .bodies_by_key
        .entry(key.clone())
        .or_default()
        .insert(body.clone());
    let mut answer_headers = HeaderMap::new();
    answer_headers.insert("x-request-id", request_id(&server).parse().expect("value"));
    if let Some((stored_body, answer)) = records.keys.get(&key) {
        if *stored_body != body {
            return (StatusCode::UNPROCESSABLE_ENTITY, answer_headers, "{}").into_response();
        }
        answer_headers.insert("idempotent-replayed", "true".parse().expect("value"));
        return (status, answer_headers, answer.clone()).into_response();
    }
    let id = format!(
        "{}-{}",
        if job { "j" } else { "t" },
        server.next_id.fetch_add(1, Ordering::SeqCst)
    );
    let answer = if job {
        records.jobs.insert(id.clone(), auth(&headers));
        serde_json::json!({"id": id, "state": "queued"}).to_string()
    } else {
        serde_json::json!({"id": id, "plan": {"steps": [body.len()]}}).to_string()
    };
    records.keys.insert(key, (body, answer.clone()));
    (status, answer_headers, answer).into_response()
}

async fn create_task(
    State(server): State<Arc<TestServer>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    create(server, headers, body, false).await
}

async fn create_job(
    State(server): State<Arc<TestServer>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    create(server, headers, body, true).await
}

async fn read_job(
    State(server): State<Arc<TestServer>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (_guard, failure) = admit(&server).await;
    if let Some(failure) = failure {
        return failure;
    }
    let request_id = request_id(&server);
    let mut records = server.records();
    records.job_reads.push((id.clone(), auth(&headers)));
    let known = records.jobs.contains_key(&id);
    let status = if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let body = serde_json::json!({"id": id, "state": "succeeded", "attempts": 1, "last_error": null, "output": null});
    (status, [("x-request-id", request_id)], body.to_string()).into_response()
}

async fn read_budget(
    State(server): State<Arc<TestServer>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (_guard, failure) = admit(&server).await;
    if let Some(failure) = failure {
        return failure;
    }
    let request_id = request_id(&server);
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut records = server.records();
    records.budget_reads.push((tenant.clone(), auth(&headers)));
    records.forwarded.push((auth(&headers), forwarded));
    drop(records);
    let body = serde_json::json!({"tenant": tenant, "used": 0, "limit": 1000});
    (
        StatusCode::OK,
        [("x-request-id", request_id)],
        body.to_string(),
    )
        .into_response()
}

/// Tenant `tenant`'s own key, `key-TENANT`.
fn own_key(tenant: &str) -> TargetKey {
    TargetKey {
        tenant: tenant.to_owned(),
        credential: Credential::Tenant,
        key: format!("key-{tenant}"),
    }
}

fn target(addr: SocketAddr) -> LoadTarget {
    LoadTarget {
        base_urls: vec![format!("http://{addr}")],
        keys: vec![own_key("a"), own_key("b")],
        oversized_bytes: 2048,
        lockout_duration: Duration::from_secs(1),
        lockout_max_failures: 10,
        rotation_overlap: Duration::from_secs(1),
        webhooks: None,
    }
}

async fn drive(
    spec: &LoadSpec,
    seed: u64,
    addr: SocketAddr,
    limits: &LoadLimits,
) -> (Vec<PlannedOp>, LoadOutcome, Progress) {
    let plan = schedule(spec, &[], seed, limits).expect("schedule");
    let progress = Progress::new();
    let outcome = within(
        "the load",
        run(
            spec,
            plan.clone(),
            &target(addr),
            limits,
            Instant::now(),
            &progress,
            CancellationSignal::new(),
        ),
    )
    .await;
    (plan, outcome, progress)
}

/// The windows add up to the overall counts.
fn assert_windows_add_up(outcome: &LoadOutcome) {
    let windows = &outcome.windows;
    let overall = &outcome.overall;
    assert_eq!(windows.iter().map(|w| w.sent).sum::<u64>(), overall.sent);
    assert_eq!(windows.iter().map(|w| w.ok).sum::<u64>(), overall.ok);
    assert_eq!(
        windows.iter().map(|w| w.errors).sum::<u64>(),
        overall.errors
    );
    assert_eq!(
        windows.iter().map(|w| w.latency.count).sum::<u64>(),
        overall.latency.count
    );
    let mut statuses: HashMap<u16, u64> = HashMap::new();
    for window in windows {
        for (status, n) in &window.statuses {
            *statuses.entry(*status).or_default() += n;
        }
    }
    assert_eq!(
        statuses,
        overall.statuses.iter().map(|(s, n)| (*s, *n)).collect()
    );
    assert_eq!(overall.planned as usize, outcome.history.len());
}

// ---------------------------------------------------------------- runs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_records_every_operation_and_its_windows_add_up() {
    let (server, addr) = TestServer::start(Behaviour {
        delay: Duration::from_millis(5),
        ..Behaviour::default()
    })
    .await;
    let mut spec = spec(vec![stage(2.0, 40.0, 40.0)]);
    spec.mix = Mix {
        tasks: 1,
        jobs: 1,
        reads: 2,
        ..Mix::default()
    };
    spec.idempotency_reuse = 0.3;
    let (plan, outcome, progress) = drive(&spec, 3, addr, &limits()).await;

    let history = &outcome.history;
    assert_eq!(history.len(), 80);
    assert!(history.iter().zip(0u64..).all(|(op, i)| op.index == i));
    for (op, planned) in history.iter().zip(&plan) {
        assert!(op.outcome.is_ok(), "{op:?}");
        assert!(
            op.request_id
                .as_deref()
                .is_some_and(|id| id.starts_with("r-")),
            "{op:?}"
        );
        assert_eq!(op.body_sha256.as_ref().map(String::len), Some(64));
        assert_eq!(op.idempotency_key, planned.idempotency_key);
        assert_eq!(op.reused_key, planned.reuse_of.is_some());
        assert!(
            op.intended_ms <= op.start_ms && op.start_ms <= op.end_ms,
            "{op:?}"
        );
        match op.kind {
            OpKind::Task | OpKind::Job => assert!(op.resource_id.is_some(), "{op:?}"),
            OpKind::ReadJob => {
                let id = op.job_id.as_deref().expect("the job read");
                assert_eq!(op.resource_id.as_deref(), Some(id));
            }
            OpKind::ReadBudget => assert_eq!(op.job_id, None),
            other => panic!("the mix has no {other:?}: {op:?}"),
        }
    }
    assert!(history.iter().any(|op| op.kind == OpKind::ReadJob));

    // Reads read the reader's own tenant's jobs, with its key.
    let records = server.records();
    for (id, auth) in &records.job_reads {
        assert_eq!(
            records.jobs.get(id),
            Some(auth),
            "job {id} read with another key"
        );
    }
    for (tenant, auth) in &records.budget_reads {
        assert_eq!(*auth, format!("Bearer key-{tenant}"));
    }
    // A reused key always came with the same body.
    assert!(
        records
            .bodies_by_key
            .values()
            .all(|bodies| bodies.len() == 1)
    );
    drop(records);
    // A replayed answer is the original's, byte for byte.
    let replays: Vec<_> = history.iter().filter(|op| op.replayed).collect();
    assert!(!replays.is_empty(), "no replay in the run");
    for replay in replays {
        let original = history
            .iter()
            .find(|op| op.idempotency_key == replay.idempotency_key && !op.replayed)
            .expect("the original");
        assert_eq!(original.body_sha256, replay.body_sha256);
        assert_eq!(original.resource_id, replay.resource_id);
    }

    assert_eq!(outcome.windows.len(), 2);
    assert_eq!(
        outcome.windows.iter().map(|w| w.sent).collect::<Vec<_>>(),
        [40, 40]
    );
    assert_windows_add_up(&outcome);
    assert_eq!((outcome.overall.sent, outcome.overall.errors), (80, 0));
    assert!(outcome.overall.latency.max_ms < 5000.0);
    assert!(outcome.elapsed_ms >= 1975.0, "{}", outcome.elapsed_ms);
    let snapshot = progress.snapshot();
    assert_eq!(
        (
            snapshot.planned,
            snapshot.sent,
            snapshot.completed,
            snapshot.errors
        ),
        (80, 80, 80, 0)
    );

    let json = serde_json::to_value(&outcome).expect("serialise");
    assert_eq!(
        json["history"][0]["outcome"]["status"]
            .as_u64()
            .map(|s| s / 100),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_sending_through_a_stall_and_counts_it_in_latency() {
    let (server, addr) = TestServer::start(Behaviour::default()).await;
    let spec = spec(vec![stage(3.0, 50.0, 50.0)]);
    let limits = limits();
    let plan = schedule(&spec, &[], 9, &limits).expect("schedule");
    let epoch = Instant::now();
    let progress = Progress::new();
    let load = tokio::spawn({
        let (spec, target, limits, progress) =
            (spec.clone(), target(addr), limits.clone(), progress.clone());
        async move {
            run(
                &spec,
                plan,
                &target,
                &limits,
                epoch,
                &progress,
                CancellationSignal::new(),
            )
            .await
        }
    });

    // Stall everything for a second once the load is well under way.
    server.wait_received(40).await;
    server.gate.send_replace(false);
    let stall_start = Instant::now();
    // The stall's length is the fault itself, so here a sleep is the point.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let release = Instant::now();
    server.gate.send_replace(true);
    let outcome = within("the load", load).await.expect("the load task");

    let ms = |instant: Instant| instant.duration_since(epoch).as_secs_f64() * 1000.0;
    let (stall_start_ms, release_ms) = (ms(stall_start), ms(release));
    let history = &outcome.history;
    // Everything was sent as scheduled and answered.
    assert_eq!(history.len(), 150);
    assert!(history.iter().all(|op| op.outcome.is_ok()), "{history:?}");
    assert_windows_add_up(&outcome);

    // The generator kept sending while nothing came back: about 50 requests
    // reached the server during the stalled second.
    let arrived_during = server
        .records()
        .arrivals
        .iter()
        .filter(|at| **at >= stall_start && **at < release)
        .count();
    assert!(
        arrived_during >= 35,
        "only {arrived_during} requests sent during the stall"
    );

    // Those intended during the stall were answered only after it, and their
    // latency, counted from the intended time, covers the wait.
    let stalled: Vec<_> = history
        .iter()
        .filter(|op| op.intended_ms >= stall_start_ms + 20.0 && op.intended_ms < release_ms - 20.0)
        .collect();
    assert!(stalled.len() >= 35, "{} ops in the stall", stalled.len());
    for op in &stalled {
        let latency = op.latency_ms().expect("sent");
        assert!(op.end_ms >= release_ms, "{op:?} answered during the stall");
        assert!(latency >= release_ms - op.intended_ms, "{op:?}");
    }
    // The first victims waited most of the stall; requests before it did not.
    let first_latency = stalled[0].latency_ms().expect("sent");
    assert!(
        first_latency >= 900.0,
        "first stalled latency {first_latency}"
    );
    let before = gauntlet::load::stats::latency_over(history, 0.0, stall_start_ms - 50.0);
    assert!(before.count >= 20);
    assert!(before.p50_ms < 200.0, "{before:?}");
    let during = gauntlet::load::stats::latency_over(history, stall_start_ms, release_ms);
    assert!(
        during.max_ms >= 900.0 && during.p50_ms >= 300.0,
        "{during:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_concurrency_and_slot_waits_count_in_latency() {
    let (server, addr) = TestServer::start(Behaviour {
        delay: Duration::from_millis(100),
        ..Behaviour::default()
    })
    .await;
    let mut spec = spec(vec![stage(1.0, 100.0, 100.0)]);
    spec.max_in_flight = 4;
    let (_, outcome, _) = drive(&spec, 4, addr, &limits()).await;

    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 4);
    let history = &outcome.history;
    assert_eq!(history.len(), 100);
    assert!(history.iter().all(|op| op.outcome.is_ok()));
    // 4 slots of 100 ms serve 40 per second: the queue grows through the
    // second, and the wait for a slot is in the latency.
    let first = history[0].latency_ms().expect("sent");
    let last = history[99].latency_ms().expect("sent");
    assert!(first < 500.0, "first latency {first}");
    assert!(last >= 1200.0, "last latency {last}");
    assert!(
        history[99].start_ms - history[99].intended_ms >= 1000.0,
        "{:?}",
        history[99]
    );
    let early = gauntlet::load::stats::latency_over(history, 0.0, 250.0);
    let late = gauntlet::load::stats::latency_over(history, 750.0, 1000.0);
    assert!(
        late.mean_ms > early.mean_ms + 800.0,
        "{early:?} vs {late:?}"
    );
    // Never more than the slots at once, by the client's own account too.
    let mut events: Vec<(f64, i32)> = history
        .iter()
        .flat_map(|op| [(op.start_ms, 1), (op.end_ms, -1)])
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let peak = events
        .iter()
        .scan(0, |open, (_, delta)| {
            *open += delta;
            Some(*open)
        })
        .max();
    assert_eq!(peak, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_times_out() {
    let (_server, addr) = TestServer::start(Behaviour {
        delay: Duration::from_secs(20),
        ..Behaviour::default()
    })
    .await;
    let mut spec = spec(vec![stage(0.5, 10.0, 10.0)]);
    spec.request_timeout = Duration::from_millis(200);
    let (_, outcome, progress) = drive(&spec, 1, addr, &limits()).await;
    assert_eq!(outcome.history.len(), 5);
    for op in &outcome.history {
        assert_eq!(op.outcome, Outcome::Timeout, "{op:?}");
        let waited = op.end_ms - op.start_ms;
        assert!((195.0..2000.0).contains(&waited), "{op:?}");
    }
    assert_eq!((outcome.overall.errors, outcome.overall.timeouts), (5, 5));
    assert_windows_add_up(&outcome);
    assert_eq!(progress.snapshot().errors, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_connect_error() {
    // A port that was just free: nothing listens on it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let spec = spec(vec![stage(0.5, 10.0, 10.0)]);
    let (_, outcome, _) = drive(&spec, 1, addr, &limits()).await;
    assert_eq!(outcome.history.len(), 5);
    for op in &outcome.history {
        assert!(
            matches!(&op.outcome, Outcome::ConnectError(text) if !text.is_empty()),
            "{op:?}"
        );
        assert_eq!(op.outcome.status_or_zero(), Some(0));
    }
    assert_eq!(outcome.overall.errors, 5);
    assert_windows_add_up(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_recorded_with_retry_after() {
    let (_server, addr) = TestServer::start(Behaviour {
        status: 503,
        retry_after: Some("2"),
        ..Behaviour::default()
    })
    .await;
    let spec = spec(vec![stage(1.0, 10.0, 10.0)]);
    let (_, outcome, _) = drive(&spec, 1, addr, &limits()).await;
    for op in &outcome.history {
        assert_eq!(op.outcome, Outcome::Status(503));
        assert_eq!(op.retry_after.as_deref(), Some("2"));
        assert!(op.request_id.is_some() && op.resource_id.is_none());
    }
    assert_eq!(
        (
            outcome.overall.sent,
            outcome.overall.errors,
            outcome.overall.ok
        ),
        (10, 10, 0)
    );
    assert_eq!(outcome.windows[0].errors, 10);
    assert_windows_add_up(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_sending_and_records_the_rest_as_not_sent() {
    let (server, addr) = TestServer::start(Behaviour::default()).await;
    let spec = spec(vec![stage(10.0, 20.0, 20.0)]);
    let limits = limits();
    let plan = schedule(&spec, &[], 2, &limits).expect("schedule");
    let cancel = CancellationSignal::new();
    let progress = Progress::new();
    let load = tokio::spawn({
        let (spec, target, limits, progress, cancel) = (
            spec.clone(),
            target(addr),
            limits.clone(),
            progress.clone(),
            cancel.clone(),
        );
        async move {
            run(
                &spec,
                plan,
                &target,
                &limits,
                Instant::now(),
                &progress,
                cancel,
            )
            .await
        }
    });
    server.wait_received(10).await;
    cancel.cancel();
    assert!(cancel.is_cancelled());
    let outcome = within("the cancelled load", load)
        .await
        .expect("the load task");

    let history = &outcome.history;
    assert_eq!(history.len(), 200);
    assert!(outcome.elapsed_ms < 5000.0, "{}", outcome.elapsed_ms);
    let not_sent = history
        .iter()
        .filter(|op| op.outcome == Outcome::NotSent)
        .count();
    assert!(not_sent >= 150, "{not_sent} not sent");
    // What went out is a prefix of the schedule.
    let first_unsent = history
        .iter()
        .position(|op| op.outcome == Outcome::NotSent)
        .expect("some not sent");
    assert!(first_unsent >= 10);
    assert!(
        history[first_unsent..]
            .iter()
            .all(|op| op.outcome.status().is_none())
    );
    assert_eq!(outcome.overall.not_sent as usize, not_sent);
    let on_wire = history.iter().filter(|op| op.outcome.was_sent()).count() as u64;
    assert_eq!(progress.snapshot().sent, on_wire);
    assert!(server.records().arrivals.len() as u64 <= on_wire);
    assert_windows_add_up(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_cancels_what_is_still_in_flight() {
    let (_server, addr) = TestServer::start(Behaviour {
        delay: Duration::from_secs(20),
        ..Behaviour::default()
    })
    .await;
    let mut spec = spec(vec![stage(0.5, 10.0, 10.0)]);
    spec.request_timeout = Duration::from_secs(60);
    let limits = LoadLimits {
        max_requests: 100,
        drain_timeout: Duration::from_millis(300),
        ..LoadLimits::default()
    };
    let (_, outcome, _) = drive(&spec, 1, addr, &limits).await;
    // The last op is due at 400 ms; the drain ends 300 ms later.
    assert!(
        (690.0..5000.0).contains(&outcome.elapsed_ms),
        "{}",
        outcome.elapsed_ms
    );
    assert!(
        outcome
            .history
            .iter()
            .all(|op| op.outcome == Outcome::Cancelled)
    );
    assert_eq!((outcome.overall.cancelled, outcome.overall.errors), (5, 5));
    let first = outcome.history[0].latency_ms().expect("sent");
    assert!(
        first >= 690.0,
        "a cancelled op's latency covers its wait: {first}"
    );
    assert_windows_add_up(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attacker_guesses_back_to_back_from_its_address_then_probes_past_the_lockout() {
    let (server, addr) = TestServer::start(Behaviour {
        delay: Duration::from_millis(2),
        ..Behaviour::default()
    })
    .await;
    let mut spec = spec(vec![stage(1.0, 4.0, 4.0)]);
    spec.mix = Mix {
        reads: 1,
        ..Mix::default()
    };
    spec.attack = Some(Attack {
        at: Duration::ZERO,
        guesses: 4,
        probe_every: Duration::from_millis(50),
    });
    let plan = schedule(&spec, &[], 5, &limits()).expect("schedule");
    let mut target = target(addr);
    target.lockout_duration = Duration::from_millis(200);
    for (credential, key) in [
        (Credential::Victim, "gk.gauntlet-victim.right"),
        (Credential::Guess, "gk.gauntlet-victim.guess-"),
    ] {
        target.keys.push(TargetKey {
            tenant: "a".to_owned(),
            credential,
            key: key.to_owned(),
        });
    }
    let outcome = within(
        "the load",
        run(
            &spec,
            plan.clone(),
            &target,
            &limits(),
            Instant::now(),
            &Progress::new(),
            CancellationSignal::new(),
        ),
    )
    .await;
    let planned = plan.len() as u64;
    let attack: Vec<&Op> = outcome
        .history
        .iter()
        .filter(|op| op.index >= planned)
        .collect();
    let shown = format!("{attack:#?}");
    assert!(attack.len() > 4, "guesses and probes: {shown}");
    for op in &attack {
        assert_eq!(
            (op.kind, op.tenant.as_str()),
            (OpKind::ReadBudget, "a"),
            "{shown}"
        );
        assert_eq!(op.outcome, Outcome::Status(200), "{shown}");
    }
    // Closed loop: each request went out after the one before was answered.
    for pair in attack.windows(2) {
        assert!(pair[1].start_ms >= pair[0].end_ms, "overlap: {shown}");
    }
    for guess in &attack[..4] {
        assert_eq!(
            (&guess.credential, guess.client),
            (&Credential::Guess, ATTACKER_ADDRESS)
        );
    }
    // Probes alternate: the tenant's key from the attacker's address, the
    // victim key from a fresh address each; for the lockout and a second.
    let probes = &attack[4..];
    for (n, probe) in probes.iter().enumerate() {
        let due = if n % 2 == 0 {
            (Credential::Tenant, ATTACKER_ADDRESS)
        } else {
            (Credential::Victim, probe_address(n as u64 / 2))
        };
        assert_eq!(
            (probe.credential.clone(), probe.client),
            due,
            "probe {n}: {shown}"
        );
    }
    assert!(probes.len() >= 2, "{shown}");
    assert!(
        probes.len() <= 25,
        "at most 1.2s / 50ms + 1 probes: {shown}"
    );
    let last_guess_end = attack[3].end_ms;
    let last_probe = probes.last().map_or(0.0, |p| p.start_ms);
    assert!(last_probe <= last_guess_end + 1200.0 + 100.0, "{shown}");
    // What the server saw: four different guesses naming the key id, from
    // the attacker; every ordinary read from its own address.
    let records = server.records();
    let guesses: HashSet<&str> = records
        .forwarded
        .iter()
        .filter(|(auth, _)| auth.starts_with("Bearer gk.gauntlet-victim.guess-"))
        .map(|(auth, forwarded)| {
            assert_eq!(forwarded, "198.19.255.254");
            auth.as_str()
        })
        .collect();
    assert_eq!(guesses.len(), 4, "{:?}", records.forwarded);
    for op in outcome.history.iter().filter(|op| op.index < planned) {
        assert_eq!(op.client, client_address(op.index));
    }
    let ordinary: HashSet<&str> = records
        .forwarded
        .iter()
        .filter(|(auth, _)| auth == "Bearer key-a" || auth == "Bearer key-b")
        .map(|(_, forwarded)| forwarded.as_str())
        .filter(|f| f.starts_with("198.18."))
        .collect();
    assert_eq!(ordinary.len() as u64, planned, "{:?}", records.forwarded);
}
