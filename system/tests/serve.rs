//! The real binary: `orchestrator serve` with `fixtures/configs/base.yaml`,
//! environment overrides pointing it at a provider stub, requests over a
//! real socket, and a graceful SIGTERM. This is the acceptance run.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    DEV_KEY, Provider, Reply, client, eventually, repo_root, start, start_logging_to, temp_dir,
};

async fn post_task(base: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(DEV_KEY)
        .json(&json!({"prompt": "plan a literature search", "max_tokens": 100}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

async fn status_of(url: &str) -> u16 {
    client().get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn serve_answers_tasks_replays_keys_reports_readiness_and_stops_on_sigterm() {
    let mut provider = Provider::start().await;
    let running = start(
        &provider,
        &[
            ("ORCHESTRATOR__LLM__PROVIDERS__0__RETRY__ATTEMPTS", "1"),
            (
                "ORCHESTRATOR__LLM__PROVIDERS__0__CIRCUIT_BREAKER__FAILURE_THRESHOLD",
                "1",
            ),
            (
                "ORCHESTRATOR__LLM__PROVIDERS__0__CIRCUIT_BREAKER__RECOVERY_TIMEOUT",
                "500ms",
            ),
        ],
    )
    .await;
    let base = running.base.clone();

    let first = post_task(&base, Some("acceptance-1")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers().get("idempotent-replayed"), None);
    let first: Value = first.json().await.unwrap();
    assert!(first["id"].is_string());
    assert!(first["output"]["action_plan"].is_array());
    assert_eq!(first["usage"]["total_tokens"], 30);
    let second = post_task(&base, Some("acceptance-1")).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.json::<Value>().await.unwrap(), first);
    assert_eq!(provider.calls().len(), 1, "the provider received one call");

    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .expect("/metrics parses as Prometheus text");
    assert_eq!(status_of(&format!("{base}/health/ready")).await, 200);

    // The provider goes away: the failed call opens the breaker, and the
    // service reports itself unready while staying live.
    let addr = provider.addr;
    provider.stop().await;
    let failed = post_task(&base, None).await;
    assert_eq!(failed.status(), 502);
    let failed: Value = failed.json().await.unwrap();
    assert_eq!(
        failed["detail"], "provider primary failed after 1 attempts: connection failed",
        "no provider address reaches the client"
    );
    assert_eq!(status_of(&format!("{base}/health/ready")).await, 503);
    assert_eq!(status_of(&format!("{base}/health/live")).await, 200);
    let fast = post_task(&base, None).await;
    assert_eq!(fast.status(), 503, "an open breaker fails fast");
    assert!(fast.headers().contains_key("retry-after"));

    // It comes back: after the recovery timeout the breaker lets a probe
    // through, which succeeds and closes it.
    provider = Provider::start_on(addr).await;
    eventually("ready again", Duration::from_secs(10), async || {
        status_of(&format!("{base}/health/ready")).await == 200
    })
    .await;
    assert_eq!(post_task(&base, None).await.status(), 200);
    assert_eq!(provider.calls().len(), 1);

    let (code, rest) = running.terminate().await;
    assert_eq!(code, Some(0));
    assert_eq!(rest, "", "stdout carries only the listening line");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let provider = Provider::start().await;
    provider.otherwise(Reply::Delay(
        Duration::from_millis(500),
        Box::new(Reply::plan()),
    ));
    let running = start(&provider, &[]).await;
    let base = running.base.clone();
    let request = tokio::spawn(async move { post_task(&base, None).await.status().as_u16() });
    eventually(
        "the request reaches the provider",
        Duration::from_secs(10),
        async || !provider.calls().is_empty(),
    )
    .await;
    let (code, _) = running.terminate().await;
    assert_eq!(code, Some(0));
    assert_eq!(
        request.await.unwrap(),
        200,
        "the in-flight request completed"
    );
}

#[tokio::test]
async fn an_invalid_config_exits_2_naming_the_field() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--config"])
        .arg(repo_root().join("fixtures/configs/base.yaml"))
        .env("ORCHESTRATOR__SERVER__REQUEST_TIMEOUT", "soon")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.request_timeout")
            && stderr.contains("ORCHESTRATOR__SERVER__REQUEST_TIMEOUT"),
        "{stderr}"
    );
}

/// The seven security headers of seed 004, and the response time.
const SECURITY_HEADERS: [&str; 8] = [
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
    "strict-transport-security",
    "content-security-policy",
    "referrer-policy",
    "permissions-policy",
    "x-response-time",
];

/// Sends `request` and checks that the answer carries every security header.
async fn send(request: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    for name in SECURITY_HEADERS {
        assert!(headers.contains_key(name), "{name} missing on a {status}");
    }
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body, headers)
}

async fn roles_with(base: &str, key: &str) -> u16 {
    send(client().get(format!("{base}/v1/roles")).bearer_auth(key))
        .await
        .0
}

#[tokio::test]
async fn keys_are_issued_rotated_with_an_overlap_revoked_and_guessing_locks_out() {
    let provider = Provider::start().await;
    let running = start(
        &provider,
        &[
            ("ORCHESTRATOR__SECURITY__HSTS", "true"),
            ("ORCHESTRATOR__SECURITY__KEYS__ROTATION_OVERLAP", "1500ms"),
        ],
    )
    .await;
    let base = running.base.clone();

    // Issue: the plaintext comes back once, and works.
    let (status, created, _) = send(
        client()
            .post(format!("{base}/v1/keys"))
            .bearer_auth(DEV_KEY)
            .json(&json!({"role": "developer"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let first = created["key"].as_str().unwrap().to_owned();
    let first_id = created["id"].as_str().unwrap().to_owned();
    assert!(first.starts_with(&format!("gk.{first_id}.")));
    assert_eq!(created["tenant"], "dev");
    assert_eq!(roles_with(&base, &first).await, 200);

    // A developer key cannot issue an admin key: it cannot even issue.
    let (status, _, _) = send(
        client()
            .post(format!("{base}/v1/keys"))
            .bearer_auth(&first)
            .json(&json!({"role": "admin"})),
    )
    .await;
    assert_eq!(status, 403);

    // Rotate: both keys work until the overlap ends, then only the new one.
    let (status, rotated, _) = send(
        client()
            .post(format!("{base}/v1/keys/{first_id}/rotate"))
            .bearer_auth(DEV_KEY),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let second = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["rotated_from"], first_id.as_str());
    assert_eq!(rotated["rotated"]["state"], "overlap");
    assert_eq!(
        roles_with(&base, &first).await,
        200,
        "the old key in the overlap"
    );
    assert_eq!(roles_with(&base, &second).await, 200, "the new key");
    eventually("the overlap ends", Duration::from_secs(10), async || {
        roles_with(&base, &first).await == 401
    })
    .await;
    assert_eq!(roles_with(&base, &second).await, 200);

    // The listing shows both, and never a secret.
    let (status, listed, _) =
        send(client().get(format!("{base}/v1/keys")).bearer_auth(DEV_KEY)).await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(!text.contains(&first) && !text.contains(&second), "{text}");
    let states: Vec<(&str, &str)> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert!(states.contains(&("dev", "live")), "{states:?}");
    assert!(
        states.contains(&(first_id.as_str(), "rotated")),
        "{states:?}"
    );

    // Revoke: at once.
    let second_id = rotated["id"].as_str().unwrap().to_owned();
    let (status, revoked, _) = send(
        client()
            .delete(format!("{base}/v1/keys/{second_id}"))
            .bearer_auth(DEV_KEY),
    )
    .await;
    assert_eq!((status, revoked["state"].as_str()), (200, Some("revoked")));
    assert_eq!(roles_with(&base, &second).await, 401);

    let (_, health, _) = send(client().get(format!("{base}/health"))).await;
    assert_eq!(health["keys"]["overdue"], 0, "{health}");
    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "api_key_changes_total{action=\"created\"} 1",
        "api_key_changes_total{action=\"rotated\"} 1",
        "api_key_changes_total{action=\"revoked\"} 1",
        "api_keys_rotation{state=\"due\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    // Guessing from 127.0.0.1: two failures above already count, so eight
    // more reach the default threshold of ten; then even the valid key waits.
    for n in 0..8 {
        let (status, _, _) = send(
            client()
                .get(format!("{base}/v1/roles"))
                .bearer_auth(format!("wrong-{n}")),
        )
        .await;
        assert_eq!(status, 401, "guess {n}");
    }
    let (status, body, headers) = send(
        client()
            .get(format!("{base}/v1/roles"))
            .bearer_auth(DEV_KEY),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["type"], "urn:orchestrator:problem:auth-locked");
    assert!(headers.contains_key("retry-after"));

    let (code, _) = running.terminate().await;
    assert_eq!(code, Some(0));
}

/// Issue 18's acceptance: a task whose prompt holds an email address, a
/// Luhn-valid card number and an SSN leaves none of the three in the log or
/// the audit table. The values also ride where clients really put them and
/// the service does write: the request id (in every request's log line) and
/// the idempotency key (in the audit details), so the redaction on both
/// paths is seen at work, not merely not needed.
#[tokio::test]
async fn personal_data_in_a_task_leaves_no_trace_in_the_log_or_the_audit_table() {
    let provider = Provider::start().await;
    let log = temp_dir("pii-log").join("orchestrator.log");
    let running = start_logging_to(&provider, &log, &[("RUST_LOG", "info")]).await;
    let (email, card, ssn) = (
        "ada.lovelace@example.com",
        "4111 1111 1111 1111",
        "123-45-6789",
    );
    let response = client()
        .post(format!("{}/v1/tasks", running.base))
        .bearer_auth(DEV_KEY)
        .header("idempotency-key", format!("refund/{email}/{ssn}"))
        .header("x-request-id", format!("refund:{email}"))
        .json(&json!({
            "prompt": format!("Refund {email} on card {card}, SSN {ssn}, and confirm."),
            "max_tokens": 100,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let db = running.db.clone();
    let (code, _) = running.terminate().await;
    assert_eq!(code, Some(0));

    let log = std::fs::read_to_string(&log).unwrap();
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let audit: String = conn
        .query_row(
            "SELECT group_concat(actor || ' ' || subject || ' ' || details, char(10)) FROM audit",
            [],
            |row| row.get(0),
        )
        .unwrap();
    for value in [email, card, &card.replace(' ', ""), ssn] {
        assert!(!log.contains(value), "{value} is in the log:\n{log}");
        assert!(
            !audit.contains(value),
            "{value} is in the audit table:\n{audit}"
        );
    }
    assert!(
        log.contains("refund:[REDACTED:email]"),
        "the request id was logged, redacted:\n{log}"
    );
    assert!(
        audit.contains("refund/[REDACTED:email]/[REDACTED:ssn]"),
        "the idempotency key was audited, redacted:\n{audit}"
    );
}
