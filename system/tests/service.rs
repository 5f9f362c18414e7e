//! The service in-process (`oneshot`) against a provider stub on a real
//! loopback socket: the task flow, idempotency, budgets, auth, rate limits,
//! retries, the circuit breaker, limits, health and metrics.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use orchestrator::config::{ApiKeyConfig, RateLimitConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{DEV_KEY, Provider, Reply, Service, base_config, eventually};

fn prompt() -> Value {
    json!({"prompt": "find recent work on circuit breakers", "max_tokens": 200})
}

fn problem_type(kind: &str) -> Value {
    json!(format!("urn:orchestrator:problem:{kind}"))
}

#[tokio::test]
async fn a_task_returns_the_validated_plan_and_charges_the_reported_usage() {
    let provider = Provider::start().await;
    provider.script([Reply::Plan {
        prompt_tokens: 11,
        completion_tokens: 31,
    }]);
    let service = Service::start(base_config(&provider, "happy"));
    let r = service.task(None, prompt()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.json["id"].as_str().is_some_and(|id| id.len() == 36),
        "{}",
        r.text
    );
    assert_eq!(r.json["output"]["action_plan"][0]["tool"], "search");
    assert_eq!(r.json["output"]["action_plan"][1]["step"], 2);
    assert!(r.json["output"]["reasoning"].is_string());
    assert_eq!(
        r.json["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 31, "total_tokens": 42})
    );
    let budget = service.budget();
    assert_eq!((budget.used_tokens, budget.reserved_tokens), (42, 0));

    let calls = provider.calls();
    assert_eq!(calls.len(), 1);
    let sent = &calls[0].body;
    assert_eq!(sent["model"], "gauntlet-mock");
    assert_eq!(sent["max_tokens"], 200);
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert_eq!(
        sent["messages"][1]["content"],
        "find recent work on circuit breakers"
    );
    assert_eq!(
        calls[0].headers["x-request-id"].to_str().unwrap(),
        r.header("x-request-id").unwrap()
    );
}

#[tokio::test]
async fn an_idempotent_retry_replays_the_stored_response_without_calling_or_charging() {
    let provider = Provider::start().await;
    let service = Service::start(base_config(&provider, "replay"));
    let first = service.task(Some("order-42"), prompt()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    let used = service.budget().used_tokens;

    let second = service.task(Some("order-42"), prompt()).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.text, first.text);
    assert_eq!(provider.calls().len(), 1);
    assert_eq!(service.budget().used_tokens, used);

    let other = service
        .task(Some("order-42"), json!({"prompt": "something else"}))
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.json["type"], problem_type("idempotency-key-reused"));
    assert_eq!(provider.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_with_one_key_call_and_charge_once() {
    let provider = Provider::start().await;
    // A slow answer keeps the first request in flight while the rest arrive.
    provider.otherwise(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::plan()),
    ));
    let service = std::sync::Arc::new(Service::start(base_config(&provider, "dupes")));
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.task(Some("same-key"), prompt()).await })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for r in requests {
        let r = r.await.unwrap();
        let replayed = r.header("idempotent-replayed").is_some();
        *statuses.entry((r.status.as_u16(), replayed)).or_insert(0) += 1;
    }
    let fresh = statuses.get(&(200, false)).copied().unwrap_or(0);
    assert_eq!(fresh, 1, "exactly one request runs: {statuses:?}");
    let others: u32 = statuses
        .iter()
        .filter(|((status, replayed), _)| *status == 409 || (*status == 200 && *replayed))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(others, 7, "the rest are refused or replayed: {statuses:?}");
    assert_eq!(provider.calls().len(), 1);
    assert_eq!(service.budget().used_tokens, 30);
    assert_eq!(service.state.store.charges("dev").unwrap().len(), 1);
}

#[tokio::test]
async fn a_budget_too_small_for_the_reservation_answers_402_and_calls_nothing() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "budget");
    config.budget.default_limit_tokens = 100;
    let service = Service::start(config);
    let r = service.task(None, prompt()).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", r.text);
    assert_eq!(r.json["type"], problem_type("budget-exhausted"));
    assert_eq!(r.json["limit_tokens"], 100);
    assert_eq!(provider.calls().len(), 0);
    assert_eq!(service.budget().reserved_tokens, 0);
}

#[tokio::test]
async fn invalid_model_output_is_a_502_that_returns_none_of_it_but_charges_the_usage() {
    let provider = Provider::start().await;
    let payload = "<script>alert(document.cookie)</script>";
    provider.script([Reply::Content(
        json!({
            "action_plan": [{"step": 1, "tool": "search", "args": {"query": payload}}],
            "reasoning": "ok"
        })
        .to_string(),
    )]);
    let service = Service::start(base_config(&provider, "invalid-output"));
    let r = service.task(Some("k1"), prompt()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json["type"], problem_type("llm-output-invalid"));
    assert_eq!(r.json["reason"], "injection");
    for leaked in ["<script", "alert", "cookie", "query"] {
        assert!(!r.text.contains(leaked), "output leaked: {}", r.text);
    }
    assert_eq!(service.budget().used_tokens, 30);
    // The charge is tied to the key: a retry replays the 502, charging nothing.
    let again = service.task(Some("k1"), prompt()).await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(provider.calls().len(), 1);
    assert_eq!(service.budget().used_tokens, 30);
}

#[tokio::test]
async fn transient_failures_are_retried_and_client_errors_are_not() {
    let provider = Provider::start().await;
    provider.script([Reply::status(503), Reply::status(500), Reply::plan()]);
    let service = Service::start(base_config(&provider, "retries"));
    let r = service.task(None, prompt()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(provider.calls().len(), 3);

    provider.script([Reply::status(400)]);
    let r = service.task(None, prompt()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(r.json["type"], problem_type("llm-rejected"));
    assert_eq!(r.json["upstream_status"], 400);
    assert_eq!(
        r.json["detail"],
        "provider primary refused the request with status 400"
    );
    assert_eq!(provider.calls().len(), 4, "a 400 is not retried");
    eventually(
        "the reservation is released",
        Duration::from_secs(5),
        async || service.budget().reserved_tokens == 0,
    )
    .await;
    assert_eq!(service.budget().used_tokens, 30);
}

#[tokio::test]
async fn retry_after_is_honoured_between_attempts() {
    let provider = Provider::start().await;
    provider.script([
        Reply::Status {
            status: 429,
            retry_after: Some("1".into()),
        },
        Reply::plan(),
    ]);
    let mut config = base_config(&provider, "retry-after");
    config.llm.providers[0].retry.max_delay = Duration::from_secs(2);
    let service = Service::start(config);
    let r = service.task(None, prompt()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let calls = provider.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at - calls[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test]
async fn a_retry_after_beyond_max_delay_ends_the_call_with_503_and_the_providers_wait() {
    let provider = Provider::start().await;
    provider.script([Reply::Status {
        status: 503,
        retry_after: Some("30".into()),
    }]);
    let service = Service::start(base_config(&provider, "retry-after-long"));
    let r = service.task(None, prompt()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json["type"], problem_type("llm-overloaded"));
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(provider.calls().len(), 1);
}

#[tokio::test]
async fn the_breaker_opens_after_the_threshold_fails_fast_and_recovers_through_half_open() {
    let provider = Provider::start().await;
    provider.otherwise(Reply::status(500));
    let mut config = base_config(&provider, "breaker");
    let p = &mut config.llm.providers[0];
    p.retry.attempts = 1;
    p.circuit_breaker.failure_threshold = 2;
    p.circuit_breaker.recovery_timeout = Duration::from_millis(300);
    p.circuit_breaker.half_open_max_calls = 1;
    let service = Service::start(config);
    for _ in 0..2 {
        let r = service.task(None, prompt()).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    }
    assert_eq!(provider.calls().len(), 2);

    let r = service.task(None, prompt()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json["type"], problem_type("llm-circuit-open"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(provider.calls().len(), 2, "an open breaker calls nothing");
    let ready = service.get("/health/ready", None).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text
    );
    assert_eq!(
        ready.json["components"]["provider:primary"]["status"],
        "failing"
    );
    let live = service.get("/health/live", None).await;
    assert_eq!(live.status, StatusCode::OK);

    provider.otherwise(Reply::plan());
    eventually(
        "the breaker goes half-open",
        Duration::from_secs(5),
        async || service.get("/health/ready", None).await.status == StatusCode::OK,
    )
    .await;
    let r = service.task(None, prompt()).await;
    assert_eq!(r.status, StatusCode::OK, "the probe succeeds: {}", r.text);
    let health = service.get("/health", None).await;
    assert_eq!(health.json["status"], "ok", "{}", health.text);
    assert_eq!(
        health.json["components"]["provider:primary"]["message"],
        "circuit closed"
    );
}

#[tokio::test]
async fn a_slow_provider_hits_the_request_timeout_and_the_reservation_is_released() {
    let provider = Provider::start().await;
    provider.otherwise(Reply::Delay(
        Duration::from_secs(5),
        Box::new(Reply::plan()),
    ));
    let mut config = base_config(&provider, "timeout");
    config.server.request_timeout = Duration::from_millis(300);
    let service = Service::start(config);
    let r = service.task(Some("slow"), prompt()).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text);
    assert_eq!(r.json["type"], problem_type("request-timeout"));
    eventually(
        "the reservation is released",
        Duration::from_secs(5),
        async || service.budget().reserved_tokens == 0,
    )
    .await;
    assert_eq!(service.budget().used_tokens, 0);
    // The key was released with it, so the client may retry.
    provider.otherwise(Reply::plan());
    let r = service.task(Some("slow"), prompt()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

fn key(id: &str, plaintext: &str, tenant: &str, role: &str) -> ApiKeyConfig {
    ApiKeyConfig {
        id: id.into(),
        sha256: Sha256::digest(plaintext.as_bytes()).into(),
        tenant: tenant.into(),
        role: role.into(),
        expires_at: None,
    }
}

#[tokio::test]
async fn keys_and_roles_decide_who_may_do_what() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "rbac");
    config
        .security
        .api_keys
        .push(key("viewer", "viewer-key", "acme", "viewer"));
    config
        .security
        .api_keys
        .push(key("op", "operator-key", "acme", "operator"));
    for role in ["guest", "analyst", "super_admin"] {
        let plaintext = format!("{role}-key");
        config
            .security
            .api_keys
            .push(key(role, &plaintext, "acme", role));
    }
    let mut expired = key("old", "expired-key", "acme", "admin");
    expired.expires_at = Some(SystemTime::now() - Duration::from_secs(60));
    config.security.api_keys.push(expired);
    let service = Service::start(config);

    let send = async |key: Option<&str>, method: &str, path: &str| {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let body = if method == "POST" {
            Body::from(prompt().to_string())
        } else {
            Body::empty()
        };
        service.send(request.body(body).unwrap()).await
    };
    let cases: &[(Option<&str>, &str, &str, u16)] = &[
        (None, "POST", "/v1/tasks", 401),
        (Some("wrong-key"), "POST", "/v1/tasks", 401),
        (Some("expired-key"), "POST", "/v1/tasks", 401),
        (Some("viewer-key"), "POST", "/v1/tasks", 403),
        (Some("operator-key"), "POST", "/v1/tasks", 200),
        (Some(DEV_KEY), "POST", "/v1/tasks", 200),
        (Some("viewer-key"), "GET", "/v1/budgets/acme", 200),
        (Some("viewer-key"), "GET", "/v1/budgets/dev", 403),
        (Some(DEV_KEY), "GET", "/v1/budgets/acme", 403),
        (Some("super_admin-key"), "GET", "/v1/budgets/dev", 200),
        (Some("guest-key"), "GET", "/v1/budgets/acme", 200),
        (Some("guest-key"), "GET", "/v1/jobs", 403),
        (Some("guest-key"), "GET", "/v1/roles", 403),
        (Some("viewer-key"), "GET", "/v1/roles", 200),
        (None, "GET", "/v1/budgets/acme", 401),
        (Some("viewer-key"), "POST", "/v1/jobs", 403),
        (Some("operator-key"), "POST", "/v1/jobs", 202),
        (Some("viewer-key"), "GET", "/v1/jobs", 200),
        (Some("viewer-key"), "GET", "/v1/dlq", 403),
        (Some("operator-key"), "GET", "/v1/dlq", 200),
        (
            Some("viewer-key"),
            "POST",
            "/v1/dlq/no-such-job/replay",
            403,
        ),
        (
            Some("operator-key"),
            "POST",
            "/v1/dlq/no-such-job/replay",
            404,
        ),
        (Some("viewer-key"), "GET", "/v1/audit", 403),
        (Some("analyst-key"), "GET", "/v1/audit", 200),
        (Some("analyst-key"), "GET", "/v1/audit/verify", 403),
        (Some("analyst-key"), "POST", "/v1/tasks", 403),
        (Some("operator-key"), "GET", "/v1/audit", 200),
        (Some("operator-key"), "GET", "/v1/audit/verify", 403),
        (Some(DEV_KEY), "GET", "/v1/audit/verify", 200),
        (None, "GET", "/v1/audit/verify", 401),
        (None, "GET", "/health/live", 200),
        (None, "GET", "/health/ready", 200),
        (None, "GET", "/health", 200),
        (None, "GET", "/metrics", 200),
    ];
    let mut failures = Vec::new();
    for (key, method, path, expected) in cases {
        let r = send(*key, method, path).await;
        if r.status.as_u16() != *expected {
            failures.push(format!(
                "{method} {path} with {key:?}: expected {expected}, got {} {}",
                r.status, r.text
            ));
        }
        if *expected == 401 {
            assert_eq!(r.json["type"], problem_type("unauthenticated"));
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let budget = send(Some("viewer-key"), "GET", "/v1/budgets/acme").await;
    assert_eq!(budget.json["tenant"], "acme");
    assert_eq!(budget.json["used_tokens"], 30);
    // The role table as the service resolves it: inherited permissions
    // included, each role's parents and rate limit.
    // The viewer's burst of 10 is spent by now: asked as the analyst.
    let roles = send(Some("analyst-key"), "GET", "/v1/roles").await;
    assert_eq!(roles.json["your_role"], "analyst", "{}", roles.text);
    let operator = &roles.json["roles"]["operator"];
    assert_eq!(operator["inherits"], json!(["developer", "analyst"]));
    for held in ["budget.read", "audit.read", "tasks.create", "dlq.replay"] {
        assert!(
            operator["permissions"]
                .as_array()
                .unwrap()
                .contains(&json!(held)),
            "operator lacks {held}: {operator}"
        );
    }
    assert_eq!(
        roles.json["roles"]["guest"]["rate_limit"],
        json!({"requests_per_second": 2, "burst": 5})
    );
    assert_eq!(
        roles.json["roles"].as_object().unwrap().len(),
        7,
        "{}",
        roles.text
    );
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "rate");
    config.security.rate_limits.insert(
        "admin".into(),
        RateLimitConfig {
            requests_per_second: 1,
            burst: 2,
        },
    );
    let service = Service::start(config);
    let get = async || service.get("/v1/budgets/dev", Some(DEV_KEY)).await;
    let first = get().await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("ratelimit-limit"), Some("2"));
    assert_eq!(first.header("ratelimit-remaining"), Some("1"));
    assert_eq!(first.header("ratelimit-reset"), Some("1"));
    let second = get().await;
    assert_eq!(second.header("ratelimit-remaining"), Some("0"));
    let third = get().await;
    assert_eq!(
        third.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        third.text
    );
    assert_eq!(third.json["type"], problem_type("rate-limited"));
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(third.header("ratelimit-remaining"), Some("0"));
    let metrics = service.get("/metrics", None).await.text;
    assert!(
        metrics.contains("rate_limited_total{key=\"dev\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_requests_get_problem_details_naming_the_fault() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "malformed");
    config.server.body_limit_bytes = 1024;
    let service = Service::start(config);
    let post = async |body: String, extra: &[(&str, &str)]| {
        let mut request =
            Request::post("/v1/tasks").header("authorization", format!("Bearer {DEV_KEY}"));
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        service.send(request.body(Body::from(body)).unwrap()).await
    };
    let big = json!({"prompt": "x".repeat(2000)}).to_string();
    // (body, extra headers, expected status, expected problem kind)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (big.clone(), vec![], 413, "payload-too-large"),
        (
            big,
            vec![("content-length", "999999")],
            413,
            "payload-too-large",
        ),
        ("{\"prompt\": ".into(), vec![], 400, "bad-request"),
        (
            "{\"prompt\": \"hi\", \"temperature\": 2}".into(),
            vec![],
            400,
            "bad-request",
        ),
        ("{\"prompt\": \"  \"}".into(), vec![], 400, "bad-request"),
        (
            "{\"prompt\": \"hi\", \"max_tokens\": 0}".into(),
            vec![],
            400,
            "bad-request",
        ),
        (
            "{\"prompt\": \"hi\"}".into(),
            vec![("idempotency-key", "has space")],
            400,
            "bad-request",
        ),
    ];
    for (body, headers, status, kind) in cases {
        let r = post(body.clone(), &headers).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{body:.60} {headers:?}: {}",
            r.text
        );
        assert_eq!(r.json["type"], problem_type(kind), "{}", r.text);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(provider.calls().len(), 0);
    let r = service.get("/nowhere", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json["type"], problem_type("not-found"));
    let r = service.get("/v1/tasks", Some(DEV_KEY)).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json["type"], problem_type("method-not-allowed"));
}

#[tokio::test]
async fn every_response_carries_security_headers_and_a_request_id() {
    let provider = Provider::start().await;
    let service = Service::start(base_config(&provider, "headers"));
    let r = service
        .send(
            Request::get("/health/live")
                .header("x-request-id", "trace-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("trace-123"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert!(r.header("content-security-policy").is_some());
    assert_eq!(r.header("strict-transport-security"), None);
    let generated = service.get("/nowhere", None).await;
    assert_eq!(generated.header("x-request-id").map(str::len), Some(36));
    assert_eq!(generated.header("x-frame-options"), Some("DENY"));
}

#[tokio::test]
async fn cors_admits_listed_origins_only() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "cors");
    config.security.cors_allowed_origins = vec!["https://console.example.com".into()];
    let service = Service::start(config);
    let preflight = async |origin: &str| {
        service
            .send(
                Request::options("/v1/tasks")
                    .header("origin", origin)
                    .header("access-control-request-method", "POST")
                    .header(
                        "access-control-request-headers",
                        "authorization,idempotency-key",
                    )
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
    };
    let allowed = preflight("https://console.example.com").await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://console.example.com")
    );
    let refused = preflight("https://evil.example.com").await;
    assert_eq!(refused.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let provider = Provider::start().await;
    provider.script([Reply::status(503), Reply::plan()]);
    let service = Service::start(base_config(&provider, "metrics"));
    assert_eq!(
        service.task(Some("m1"), prompt()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        service.task(Some("m1"), prompt()).await.status,
        StatusCode::OK
    );
    let r = service.get("/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let lines = r.text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let route = [("route", "/v1/tasks"), ("status", "200")];
    assert_eq!(value("http_requests_total", &route), 2.0);
    assert_eq!(
        value("llm_attempts_total", &[("outcome", "status_5xx")]),
        1.0
    );
    assert_eq!(value("llm_attempts_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(value("llm_retries_total", &[("provider", "primary")]), 1.0);
    assert_eq!(value("tokens_charged_total", &[("tenant", "dev")]), 30.0);
    assert_eq!(value("idempotent_replays_total", &[]), 1.0);
    assert_eq!(value("llm_breaker_state", &[("provider", "primary")]), 0.0);
    assert_eq!(
        value("budget_remaining_tokens", &[("tenant", "dev")]),
        1_000_000.0 - 30.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "http_request_duration_seconds"),
        "latency histogram present"
    );
}

/// A request from `peer` with `key`, as the server's connect info would
/// have it.
fn from_peer(peer: [u8; 4], path: &str, key: &str) -> Request<Body> {
    let mut request = Request::get(path)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let addr = std::net::SocketAddr::from((peer, 40_000));
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    request
}

#[tokio::test]
async fn failed_authentications_lock_the_address_and_the_key_id_even_for_a_valid_key() {
    let provider = Provider::start().await;
    let mut config = base_config(&provider, "lockout");
    config.security.lockout.max_failures = 3;
    config.security.lockout.duration = Duration::from_millis(600);
    config
        .security
        .api_keys
        .push(key("victim", "gk.victim.right", "dev", "admin"));
    let service = Service::start(config);
    let attacker = [192, 0, 2, 1];
    for i in 0..3 {
        let r = service
            .send(from_peer(attacker, "/v1/jobs", &format!("wrong-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "guess {i}: {}", r.text);
    }
    // Locked: the valid key from that address is refused without a look.
    let locked = service.send(from_peer(attacker, "/v1/jobs", DEV_KEY)).await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.text
    );
    assert_eq!(locked.json["type"], problem_type("auth-locked"));
    let retry_after: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry_after), "retry-after {retry_after}");
    // Another address is served.
    let other = service
        .send(from_peer([192, 0, 2, 2], "/v1/jobs", DEV_KEY))
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text);

    // Guesses at one issued key id from three addresses lock the key id.
    for i in 0..3u8 {
        let r = service
            .send(from_peer(
                [198, 51, 100, i],
                "/v1/jobs",
                &format!("gk.victim.wrong{i}"),
            ))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "guess {i}: {}", r.text);
    }
    let victim = service
        .send(from_peer([203, 0, 113, 9], "/v1/jobs", "gk.victim.right"))
        .await;
    assert_eq!(
        victim.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        victim.text
    );
    assert_eq!(victim.json["type"], problem_type("auth-locked"));

    // Both locks end after their duration.
    eventually(
        "the address is unlocked",
        Duration::from_secs(5),
        async || {
            service
                .send(from_peer(attacker, "/v1/jobs", DEV_KEY))
                .await
                .status
                == StatusCode::OK
        },
    )
    .await;
    eventually(
        "the key id is unlocked",
        Duration::from_secs(5),
        async || {
            let r = service
                .send(from_peer([203, 0, 113, 9], "/v1/jobs", "gk.victim.right"))
                .await;
            r.status == StatusCode::OK
        },
    )
    .await;
    eventually(
        "both unlocks are audited",
        Duration::from_secs(5),
        async || {
            let audit = service
                .send(from_peer([192, 0, 2, 2], "/v1/audit?limit=1000", DEV_KEY))
                .await;
            let actions: Vec<(String, String)> = audit.json["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["action"] == "auth.locked" || e["action"] == "auth.unlocked")
                .map(|e| {
                    let field = |name: &str| e[name].as_str().unwrap().to_owned();
                    (field("action"), field("subject"))
                })
                .collect();
            let mut want = vec![
                ("auth.locked".to_owned(), "address 192.0.2.1".to_owned()),
                ("auth.locked".to_owned(), "key id victim".to_owned()),
                ("auth.unlocked".to_owned(), "address 192.0.2.1".to_owned()),
                ("auth.unlocked".to_owned(), "key id victim".to_owned()),
            ];
            let mut got = actions;
            got.sort();
            want.sort();
            got == want
        },
    )
    .await;
    let metrics = service.get("/metrics", None).await.text;
    for line in [
        "auth_lockouts_total{scope=\"address\"} 1",
        "auth_lockouts_total{scope=\"key_id\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

/// Admission control: with room for one task, a second one while the first
/// waits on the provider is refused at once, 503 `overloaded` with
/// `Retry-After`, without reaching the provider; reads are not held back,
/// and the freed room admits the next task.
#[tokio::test]
async fn beyond_the_admitted_tasks_in_flight_a_task_is_shed_at_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let provider = Provider::start().await;
    provider.script([Reply::Delay(
        Duration::from_secs(2),
        Box::new(Reply::plan()),
    )]);
    let mut config = base_config(&provider, "admission");
    config.server.admission.tasks_in_flight = 1;
    config.server.admission.retry_after = Duration::from_secs(3);
    let service = Service::start(config);
    let first_done = AtomicBool::new(false);
    let first = async {
        let answer = service.task(Some("first"), prompt()).await;
        first_done.store(true, Ordering::SeqCst);
        answer
    };
    let second = async {
        eventually(
            "the first task reaches the provider",
            Duration::from_secs(5),
            async || provider.calls().len() == 1,
        )
        .await;
        let shed = service.task(Some("second"), prompt()).await;
        let read = service.get("/v1/jobs", Some(DEV_KEY)).await;
        // Answered while the first still held the only room: nothing waited.
        assert!(
            !first_done.load(Ordering::SeqCst),
            "the second task waited for the first"
        );
        (shed, read)
    };
    let (first, (shed, read)) = tokio::join!(first, second);
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(
        shed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        shed.text
    );
    assert_eq!(
        shed.json["type"],
        problem_type("overloaded"),
        "{}",
        shed.text
    );
    assert_eq!(shed.header("retry-after"), Some("3"));
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(
        provider.calls().len(),
        1,
        "the shed task never reached the provider"
    );

    let after = service.task(Some("third"), prompt()).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text);
    let metrics = service.get("/metrics", None).await;
    assert!(
        metrics
            .text
            .contains("requests_shed_total{route=\"tasks\"} 1"),
        "{}",
        metrics.text
    );
    // The shed task was never charged nor reserved.
    let budget = service.budget();
    assert_eq!((budget.used_tokens, budget.reserved_tokens), (60, 0));
}
