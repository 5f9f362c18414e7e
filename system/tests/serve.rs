//! The real binary: `orchestrator serve` with `fixtures/configs/base.yaml`,
//! environment overrides pointing it at a provider stub, requests over a
//! real socket, and a graceful SIGTERM. This is the acceptance run.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::{DEV_KEY, Provider, Reply, client, eventually, repo_root, start};

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
