//! Durable jobs through the service, in-process against a provider stub:
//! submission and backpressure, workers and their outcomes (success, retries,
//! the dead-letter queue, replay), lease reclaims, graceful shutdown, the
//! audit API, RBAC and metrics.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use orchestrator::server::worker;
use orchestrator::store::{JobState, now_ms};
use serde_json::{Value, json};
use sha2::Digest;
use support::{DEV_KEY, Provider, Reply, Service, base_config, eventually};

fn job() -> Value {
    json!({"prompt": "summarise the incident reports", "max_tokens": 100})
}

/// The job's current view, via the API.
async fn job_state(service: &Service, id: &str) -> Value {
    let r = service.get(&format!("/v1/jobs/{id}"), Some(DEV_KEY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json
}

async fn wait_for_state(service: &Service, id: &str, state: &str) -> Value {
    eventually(
        &format!("job {id} becomes {state}"),
        Duration::from_secs(20),
        async || job_state(service, id).await["state"] == state,
    )
    .await;
    job_state(service, id).await
}

/// Every audit action, in order.
async fn audit_actions(service: &Service) -> Vec<String> {
    let r = service.get("/v1/audit?limit=1000", Some(DEV_KEY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

async fn submit(service: &Service, key: Option<&str>) -> String {
    let r = service.post("/v1/jobs", key, job()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["state"], "queued");
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    id
}

#[tokio::test]
async fn a_job_is_accepted_run_by_a_worker_charged_once_and_audited() {
    let provider = Provider::start().await;
    provider.script([Reply::Plan {
        prompt_tokens: 12,
        completion_tokens: 30,
    }]);
    let service = Service::start(base_config(&provider, "job-happy"));
    let id = submit(&service, Some("job-1")).await;
    assert_eq!(job_state(&service, &id).await["attempts"], 0);
    // No worker runs yet: the job waits, durably.
    assert_eq!(provider.calls().len(), 0);

    let workers = worker::spawn(service.state.clone());
    let done = wait_for_state(&service, &id, "succeeded").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["charged_tokens"], 42);
    assert_eq!(done["output"]["action_plan"][0]["tool"], "search");
    assert!(done["finished_at"].is_string());
    assert_eq!(service.budget().used_tokens, 42);
    assert_eq!(service.budget().reserved_tokens, 0);
    let calls = provider.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].headers["idempotency-key"].to_str().unwrap(), id);

    let actions = audit_actions(&service).await;
    assert_eq!(
        actions,
        [
            "config.loaded",
            "job.accepted",
            "job.leased",
            "job.completed",
            "budget.charged"
        ]
    );
    let verify = service.get("/v1/audit/verify", Some(DEV_KEY)).await;
    assert_eq!(verify.json["ok"], true, "{}", verify.text);
    assert_eq!(verify.json["entries"], 5);
    assert_eq!(verify.json["first_bad_seq"], Value::Null);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_job_and_refuses_a_different_body() {
    let provider = Provider::start().await;
    let service = Service::start(base_config(&provider, "job-idem"));
    let id = submit(&service, Some("k")).await;
    let again = service.post("/v1/jobs", Some("k"), job()).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json["id"], json!(id));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = service
        .post("/v1/jobs", Some("k"), json!({"prompt": "something else"}))
        .await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.text
    );
    let listed = service.get("/v1/jobs?state=queued", Some(DEV_KEY)).await;
    assert_eq!(listed.json["ids"], json!([id]));
    assert_eq!(listed.json["counts"]["queued"], 1);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_writes_nothing() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "job-full");
    config.jobs.queue_capacity = 2;
    let service = Service::start(config);
    submit(&service, None).await;
    submit(&service, None).await;
    let full = service.post("/v1/jobs", Some("third"), job()).await;
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full.text
    );
    assert_eq!(full.header("retry-after"), Some("1"));
    assert_eq!(full.json["type"], "urn:orchestrator:problem:queue-full");
    assert_eq!(full.json["queue_capacity"], 2);
    let listed = service.get("/v1/jobs", Some(DEV_KEY)).await;
    assert_eq!(listed.json["ids"].as_array().unwrap().len(), 2);
    let metrics = service.get("/metrics", None).await.text;
    assert!(
        metrics.contains("jobs_rejected_total{reason=\"queue_full\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("jobs_queue_depth 2"), "{metrics}");
}

#[tokio::test]
async fn bad_job_requests_are_refused_with_the_field_named() {
    let provider = Provider::start().await;
    let service = Service::start(base_config(&provider, "job-bad"));
    let cases = [
        (json!({"prompt": ""}), 400, "prompt"),
        (json!({"prompt": "x", "max_tokens": 0}), 400, "max_tokens"),
        (
            json!({"prompt": "x", "webhook": "https://evil.example/hook"}),
            422,
            "webhook",
        ),
        (
            json!({"prompt": "x", "webhook": "not a url"}),
            422,
            "webhook",
        ),
    ];
    for (body, status, field) in cases {
        let r = service.post("/v1/jobs", None, body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {}", r.text);
        assert_eq!(r.json["field"], field, "{body}: {}", r.text);
    }
    let unknown = service
        .post("/v1/jobs", None, json!({"prompt": "x", "extra": 1}))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let bad_state = service.get("/v1/jobs?state=lost", Some(DEV_KEY)).await;
    assert_eq!(bad_state.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_state.json["field"], "state");
    let bad_query = service.get("/v1/audit?limit=many", Some(DEV_KEY)).await;
    assert_eq!(
        bad_query.status,
        StatusCode::BAD_REQUEST,
        "{}",
        bad_query.text
    );
    let missing = service.get("/v1/jobs/no-such-job", Some(DEV_KEY)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failures_are_retried_with_backoff_then_dead_lettered_and_a_replay_runs_again() {
    let mut provider = Provider::start().await;
    provider.otherwise(Reply::status(500));
    let mut config = base_config(&provider, "job-dlq");
    config.jobs.max_attempts = 3;
    config.jobs.retry_initial_delay = Duration::from_millis(20);
    config.jobs.retry_max_delay = Duration::from_millis(40);
    config.llm.providers[0].retry.attempts = 1;
    config.llm.providers[0].circuit_breaker.failure_threshold = 100;
    let service = Service::start(config);
    let workers = worker::spawn(service.state.clone());
    let id = submit(&service, None).await;
    let dead = wait_for_state(&service, &id, "dead").await;
    assert_eq!(dead["attempts"], 3);
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("failed after 1 attempts"),
        "{dead}"
    );
    assert_eq!(provider.calls().len(), 3);
    // Each retry waited at least half its backoff (equal jitter).
    let calls = provider.calls();
    for pair in calls.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_millis(10));
    }
    assert_eq!(
        service.budget().used_tokens,
        0,
        "failed attempts charge nothing"
    );
    assert_eq!(service.budget().reserved_tokens, 0);

    let dlq = service.get("/v1/dlq?limit=10", Some(DEV_KEY)).await;
    assert_eq!(dlq.json["jobs"][0]["id"], json!(id));
    assert_eq!(dlq.json["jobs"][0]["last_error"], dead["last_error"]);
    let metrics = service.get("/metrics", None).await.text;
    assert!(metrics.contains("dlq_size 1"), "{metrics}");
    assert!(
        metrics.contains("job_attempts_total{outcome=\"retrying\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("job_attempts_total{outcome=\"dead\"} 1"),
        "{metrics}"
    );

    // The provider recovers; the operator replays the job.
    provider.stop().await;
    let provider = Provider::start_on(provider.addr).await;
    let replayed = service
        .post(&format!("/v1/dlq/{id}/replay"), None, Value::Null)
        .await;
    assert_eq!(replayed.status, StatusCode::ACCEPTED, "{}", replayed.text);
    let done = wait_for_state(&service, &id, "succeeded").await;
    assert_eq!(done["attempts"], 1, "a replay starts the attempts afresh");
    assert_eq!(provider.calls().len(), 1);
    assert_eq!(service.budget().used_tokens, 30);
    let again = service
        .post(&format!("/v1/dlq/{id}/replay"), None, Value::Null)
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "only dead jobs replay");

    let actions = audit_actions(&service).await;
    let count = |a: &str| actions.iter().filter(|x| *x == a).count();
    assert_eq!(count("job.retrying"), 2, "{actions:?}");
    assert_eq!(count("job.dead"), 1);
    assert_eq!(count("job.replayed"), 1);
    assert_eq!(count("job.completed"), 1);
    let entries = service
        .get("/v1/audit?limit=1000", Some(DEV_KEY))
        .await
        .json;
    let replay = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "job.replayed")
        .unwrap();
    assert_eq!(replay["actor"], "dev", "the replay names who asked for it");
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_request_the_provider_refuses_goes_to_the_dead_letter_queue_at_once() {
    let provider = Provider::start().await;
    provider.otherwise(Reply::status(400));
    let service = Service::start(base_config(&provider, "job-400"));
    let workers = worker::spawn(service.state.clone());
    let id = submit(&service, None).await;
    let dead = wait_for_state(&service, &id, "dead").await;
    assert_eq!(
        dead["attempts"], 1,
        "a refused request is not retried: {dead}"
    );
    assert_eq!(provider.calls().len(), 1);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_and_the_stale_worker_cannot_complete() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "job-reclaim");
    config.jobs.lease = Duration::from_millis(200);
    config.jobs.heartbeat_interval = Duration::from_millis(50);
    let service = Service::start(config);
    let id = submit(&service, None).await;
    // A worker that leases the job and then stalls: it never heartbeats.
    let store = service.state.store.clone();
    let stale = store.lease_job("ghost", now_ms(), 200).unwrap().unwrap();
    assert_eq!(stale.id, id);

    let workers = worker::spawn(service.state.clone());
    let done = wait_for_state(&service, &id, "succeeded").await;
    assert_eq!(done["attempts"], 2, "the stalled attempt counts");
    let metrics = service.get("/metrics", None).await.text;
    assert!(metrics.contains("job_lease_reclaims_total 1"), "{metrics}");

    // The stalled worker wakes up: its lease is gone, so nothing changes.
    let heartbeat = store
        .heartbeat_job(&id, stale.lease, now_ms(), 200)
        .unwrap();
    assert!(!heartbeat);
    assert_eq!(service.budget().used_tokens, 30, "charged once");
    let actions = audit_actions(&service).await;
    assert!(actions.contains(&"job.reclaimed".to_owned()), "{actions:?}");
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_lets_a_running_job_finish_within_the_grace_period() {
    let provider = Provider::start().await;
    provider.otherwise(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::plan()),
    ));
    let service = Service::start(base_config(&provider, "job-drain"));
    let workers = worker::spawn(service.state.clone());
    let id = submit(&service, None).await;
    eventually(
        "the job reaches the provider",
        Duration::from_secs(10),
        async || !provider.calls().is_empty(),
    )
    .await;
    workers.shutdown(Duration::from_secs(10)).await;
    assert_eq!(job_state(&service, &id).await["state"], "succeeded");
}

#[tokio::test]
async fn shutdown_gives_the_lease_back_when_the_grace_period_ends_first() {
    let provider = Provider::start().await;
    provider.otherwise(Reply::Delay(
        Duration::from_secs(30),
        Box::new(Reply::plan()),
    ));
    let service = Service::start(base_config(&provider, "job-abandon"));
    let workers = worker::spawn(service.state.clone());
    let id = submit(&service, None).await;
    eventually(
        "the job reaches the provider",
        Duration::from_secs(10),
        async || !provider.calls().is_empty(),
    )
    .await;
    workers.shutdown(Duration::from_millis(100)).await;
    let job = job_state(&service, &id).await;
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "an interrupted attempt does not count");
    assert_eq!(service.budget().reserved_tokens, 0);
    let actions = audit_actions(&service).await;
    assert_eq!(actions.last().map(String::as_str), Some("job.released"));
    let counts = service.state.store.job_counts().unwrap();
    assert_eq!(counts.get(JobState::Queued), 1);
}

#[tokio::test]
async fn a_denied_request_is_audited_and_jobs_are_scoped_to_the_tenant() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "job-rbac");
    config
        .security
        .api_keys
        .push(orchestrator::config::ApiKeyConfig {
            id: "acme-viewer".into(),
            sha256: sha2::Sha256::digest(b"acme-viewer-key").into(),
            tenant: "acme".into(),
            role: "analyst".into(),
            expires_at: None,
        });
    let service = Service::start(config);
    let id = submit(&service, None).await;
    let request = |method: &str, path: &str| {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Bearer acme-viewer-key")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(job().to_string()))
            .unwrap()
    };
    let denied = service.send(request("POST", "/v1/jobs")).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let other_tenant = service
        .send(request("GET", &format!("/v1/jobs/{id}")))
        .await;
    assert_eq!(
        other_tenant.status,
        StatusCode::NOT_FOUND,
        "jobs are per tenant"
    );
    let audit = service.send(request("GET", "/v1/audit")).await;
    assert_eq!(audit.status, StatusCode::OK, "analysts read the audit log");
    let denial = audit.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "auth.denied")
        .cloned()
        .unwrap();
    assert_eq!(denial["actor"], "acme-viewer");
    assert_eq!(denial["subject"], "POST /v1/jobs");
    assert_eq!(denial["details"]["role"], "analyst");
}

/// Degradation levels, end to end in-process: a queue filled to nine tenths
/// (no worker runs) calls for level 3; the level climbs one step per
/// `enter_after`, and at level 3 new tasks and jobs are refused 503
/// `degraded` with `Retry-After` while reads are served. Once workers drain
/// the queue the level falls back to normal one step per `leave_after`.
/// `/health`, the gauge and the audit log say the same.
#[tokio::test]
async fn a_full_queue_raises_the_level_step_by_step_and_a_drained_one_brings_it_back() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "job-degradation");
    config.jobs.queue_capacity = 10;
    config.degradation.enter_after = Duration::from_millis(200);
    config.degradation.leave_after = Duration::from_millis(600);
    let service = Service::start(config);
    let sampler = tokio::spawn(orchestrator::server::degradation::sampler(
        service.state.clone(),
    ));
    for i in 0..9 {
        submit(&service, Some(&format!("fill-{i}"))).await;
    }
    let level = async || {
        let r = service.get("/health", None).await;
        r.json["degradation"]["level"].as_str().unwrap().to_owned()
    };
    eventually("the level reaches 3", Duration::from_secs(10), async || {
        level().await == "level_3"
    })
    .await;
    let task = service.task(None, json!({"prompt": "plan a trip"})).await;
    assert_eq!(
        task.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        task.text
    );
    assert_eq!(
        task.json["type"], "urn:orchestrator:problem:degraded",
        "{}",
        task.text
    );
    assert_eq!(task.json["level"], "level_3");
    assert_eq!(task.header("retry-after"), Some("1"));
    let refused = service.post("/v1/jobs", None, job()).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json["type"], "urn:orchestrator:problem:degraded");
    let read = service.get("/v1/jobs", Some(DEV_KEY)).await;
    assert_eq!(read.status, StatusCode::OK, "reads are never shed");
    assert_eq!(provider.calls().len(), 0, "the refused task reached nobody");
    let metrics = service.get("/metrics", None).await;
    assert!(
        metrics.text.contains("degradation_level 3"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("degradation_shed_total{work=\"task\"} 1"),
        "{}",
        metrics.text
    );

    let workers = worker::spawn(service.state.clone());
    eventually(
        "the level returns to normal",
        Duration::from_secs(20),
        async || level().await == "normal",
    )
    .await;
    workers.shutdown(Duration::from_secs(5)).await;
    sampler.abort();
    let r = service.get("/v1/audit?limit=1000", Some(DEV_KEY)).await;
    let steps: Vec<(String, String, i64)> = r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "degradation.changed")
        .map(|e| {
            let d = &e["details"];
            (
                d["from"].as_str().unwrap().to_owned(),
                d["to"].as_str().unwrap().to_owned(),
                d["at_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    let path: Vec<(&str, &str)> = steps
        .iter()
        .map(|(f, t, _)| (f.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        path,
        [
            ("normal", "level_1"),
            ("level_1", "level_2"),
            ("level_2", "level_3"),
            ("level_3", "level_2"),
            ("level_2", "level_1"),
            ("level_1", "normal"),
        ]
    );
    // Each step waited its hysteresis: rises enter_after apart, falls
    // leave_after apart.
    let rank = |l: &str| {
        ["normal", "level_1", "level_2", "level_3"]
            .iter()
            .position(|x| *x == l)
    };
    for pair in steps.windows(2) {
        let gap_ms = pair[1].2 - pair[0].2;
        let rising = rank(&pair[1].1) > rank(&pair[1].0);
        let wait_ms = if rising { 200 } else { 600 };
        assert!(
            gap_ms >= wait_ms - 5,
            "{pair:?}: {gap_ms}ms apart, less than {wait_ms}ms"
        );
    }
}
