//! The mock LLM provider over real HTTP on loopback: the default answer, the
//! stream, every effect as a client sees it, rule matching, the journal, the
//! admin API and the limits.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gauntlet::mock_llm::{
    CallRecord, Effect, EffectKind, Every, InjectionField, Limits, Match, MockClient, MockConfig,
    MockLlm, Program, RetryAfter, Rule, Target, Usage, Violation, default_plan, probability_draw,
    tools_from_system,
};
use orchestrator::plan::{self, PlanError, check::base_policy};
use proptest::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

async fn start() -> MockLlm {
    start_with(0, Limits::default()).await
}

async fn start_with(seed: u64, limits: Limits) -> MockLlm {
    MockLlm::start(MockConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        seed,
        limits,
    })
    .await
    .expect("the mock starts on a free loopback port")
}

fn http() -> reqwest::Client {
    client(None)
}

fn client(timeout: Option<Duration>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().retry(reqwest::retry::never());
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build().expect("the test client builds")
}

/// The system message the orchestrator sends.
fn system() -> String {
    format!(
        "{} Tools: search, http_get, summarize.",
        orchestrator::llm::SYSTEM_PROMPT
    )
}

/// A request shaped like the orchestrator's.
fn request(prompt: &str) -> Value {
    json!({
        "model": "gauntlet-mock",
        "messages": [
            {"role": "system", "content": system()},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 1024,
        "response_format": {"type": "json_object"},
    })
}

fn streamed(prompt: &str, include_usage: bool) -> Value {
    let mut body = request(prompt);
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn post(mock: &MockLlm, body: &Value) -> reqwest::Response {
    post_with(&http(), mock, body).await
}

async fn post_with(client: &reqwest::Client, mock: &MockLlm, body: &Value) -> reqwest::Response {
    client
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("x-request-id", "req-1")
        .header("idempotency-key", "idem-1")
        .header("authorization", "Bearer test")
        .json(body)
        .send()
        .await
        .expect("the mock answers")
}

/// Posts and reads a 200 JSON completion.
async fn complete(mock: &MockLlm, body: &Value) -> Value {
    let response = post(mock, body).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON completion")
}

fn content(completion: &Value) -> String {
    completion["choices"][0]["message"]["content"]
        .as_str()
        .expect("choices[0].message.content is a string")
        .to_owned()
}

fn usage(completion: &Value) -> Usage {
    serde_json::from_value(completion["usage"].clone()).expect("usage has the three counts")
}

fn validate(content: &str) -> Result<plan::ActionPlan, PlanError> {
    plan::validate(content, &base_policy())
}

fn rule(effect: Effect) -> Rule {
    Rule::always(effect)
}

fn install(mock: &MockLlm, rules: Vec<Rule>) {
    mock.install(Program::new(rules))
        .expect("the test program is valid");
}

/// The data lines of an event stream, in order.
fn data_lines(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("every event is a data line: {e:?}"))
                .to_owned()
        })
        .collect()
}

/// The concatenated deltas, the finish reason and the usage of a stream.
fn replay(events: &[String]) -> (String, Option<String>, Option<Usage>) {
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).expect("each chunk is JSON");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(choice) = chunk["choices"].get(0) {
            if let Some(piece) = choice["delta"]["content"].as_str() {
                text.push_str(piece);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_owned());
            }
        }
        if !chunk["usage"].is_null() {
            usage = Some(serde_json::from_value(chunk["usage"].clone()).expect("usage"));
        }
    }
    (text, finish, usage)
}

// ---- The default answer ----

#[tokio::test]
async fn the_default_answer_is_a_valid_plan_that_depends_only_on_the_prompt() {
    let mock = start().await;
    let first = complete(&mock, &request("compare rust retry crates")).await;
    let again = complete(&mock, &request("compare rust retry crates")).await;
    let other = complete(&mock, &request("summarise the incident report")).await;

    let plan = validate(&content(&first)).expect("the default answer validates");
    assert!((1..=3).contains(&plan.action_plan.len()));
    assert_eq!(content(&first), content(&again));
    assert_ne!(content(&first), content(&other));
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["model"], "gauntlet-mock");
    assert_eq!(first["choices"][0]["finish_reason"], "stop");
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");

    // Another mock with another seed writes the same plan.
    let elsewhere = start_with(99, Limits::default()).await;
    let there = complete(&elsewhere, &request("compare rust retry crates")).await;
    assert_eq!(content(&first), content(&there));
    assert_eq!(
        content(&first),
        serde_json::to_string(&default_plan(
            "compare rust retry crates",
            &tools_from_system(&system())
        ))
        .expect("plans serialise")
    );
}

#[tokio::test]
async fn usage_is_counted_deterministically() {
    let mock = start().await;
    let prompt = "count my tokens please";
    let first = complete(&mock, &request(prompt)).await;
    let again = complete(&mock, &request(prompt)).await;
    let counted = usage(&first);
    assert_eq!(counted, usage(&again));
    let text = content(&first);
    // 3 for the reply, then 4 plus a quarter of the bytes per message.
    let expected_prompt = 3 + (4 + system().len().div_ceil(4)) + (4 + prompt.len().div_ceil(4));
    assert_eq!(counted.prompt_tokens, expected_prompt as u64);
    assert_eq!(counted.completion_tokens, text.len().div_ceil(4) as u64);
    assert_eq!(
        counted.total_tokens,
        counted.prompt_tokens + counted.completion_tokens
    );
}

#[tokio::test]
async fn without_json_mode_the_plan_comes_in_one_fence() {
    let mock = start().await;
    let mut body = request("fenced please");
    body.as_object_mut()
        .expect("the request is an object")
        .remove("response_format");
    let text = content(&complete(&mock, &body).await);
    assert!(
        text.starts_with("```json\n") && text.ends_with("\n```"),
        "{text}"
    );
    validate(&text).expect("one fence is accepted");
}

#[tokio::test]
async fn max_tokens_cuts_the_content_with_finish_reason_length() {
    let mock = start().await;
    let mut body = request("a long plan");
    body["max_tokens"] = json!(5);
    let completion = complete(&mock, &body).await;
    let text = content(&completion);
    assert!(text.len() <= 20, "{} bytes", text.len());
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    assert!(usage(&completion).completion_tokens <= 5);
    assert!(matches!(validate(&text), Err(PlanError::NotJson { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the prompt, even an injection attempt, the default plan passes
    /// the orchestrator's validation with the base policy.
    #[test]
    fn the_default_plan_validates_for_any_prompt(prompt in any::<String>()) {
        let tools = tools_from_system(&system());
        let plan = default_plan(&prompt, &tools);
        let json = serde_json::to_string(&plan).expect("plans serialise");
        let validated = validate(&json);
        prop_assert_eq!(validated, Ok(plan));
    }

    /// The fallback tool is `search`, which the base policy allows.
    #[test]
    fn the_plan_without_tools_uses_search(prompt in ".{0,64}") {
        let plan = default_plan(&prompt, &[]);
        prop_assert!(plan.action_plan.iter().all(|s| s.tool == "search"));
        let json = serde_json::to_string(&plan).expect("plans serialise");
        prop_assert!(validate(&json).is_ok());
    }
}

// ---- Streaming ----

#[tokio::test]
async fn a_stream_ends_with_done_and_its_deltas_make_the_plain_content() {
    let mock = start().await;
    let plain = complete(&mock, &request("stream this")).await;
    let response = post(&mock, &streamed("stream this", true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        response.headers()
    );
    let body = response.text().await.expect("the stream completes");
    let events = data_lines(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.len() > 4, "several deltas: {events:?}");
    let (text, finish, streamed_usage) = replay(&events);
    assert_eq!(text, content(&plain));
    assert_eq!(finish.as_deref(), Some("stop"));
    assert_eq!(streamed_usage, Some(usage(&plain)));

    let response = post(&mock, &streamed("stream this", false)).await;
    let events = data_lines(&response.text().await.expect("the stream completes"));
    let (text, _, no_usage) = replay(&events);
    assert_eq!(text, content(&plain));
    assert_eq!(no_usage, None);
    let journal = mock.calls();
    assert_eq!(journal[1].usage, Some(usage(&plain)));
    assert!(journal[1].stream && journal[2].stream);
    assert_eq!(journal[2].usage, None);
}

// ---- Requests the mock refuses, routes it does not know ----

#[tokio::test]
async fn bad_requests_get_openai_errors_and_are_journaled() {
    let limits = Limits {
        max_request_bytes: 4096,
        ..Limits::default()
    };
    let mock = start_with(0, limits).await;
    let response = http()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the request body is not valid JSON")),
        "{error}"
    );

    let response = post(&mock, &json!({"model": "m", "messages": []})).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["param"], "messages");

    let response = post(&mock, &request(&"x".repeat(5000))).await;
    assert_eq!(response.status(), 413);

    let response = http()
        .get(format!("{}/v1/nothing", mock.url()))
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["code"], "unknown_url");
    assert_eq!(error["error"]["message"], "unknown route GET /v1/nothing");

    let response = http()
        .get(format!("{}/chat/completions", mock.base_url()))
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(response.status(), 405);

    let journal = mock.calls();
    let statuses: Vec<u16> = journal.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 400, 413]);
    assert_eq!(journal.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(
        journal
            .iter()
            .all(|r| r.error.is_some() && r.effect.is_none())
    );
}

#[tokio::test]
async fn models_are_listed_and_any_model_is_served() {
    let mock = start().await;
    let list: Value = http()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .expect("the mock answers")
        .json()
        .await
        .expect("a JSON list");
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "gauntlet-mock");
    let one: Value = http()
        .get(format!("{}/models/gpt-4o", mock.base_url()))
        .send()
        .await
        .expect("the mock answers")
        .json()
        .await
        .expect("a JSON model");
    assert_eq!(one["id"], "gpt-4o");
    let mut body = request("echo the model");
    body["model"] = json!("gpt-4o");
    assert_eq!(complete(&mock, &body).await["model"], "gpt-4o");
}

// ---- Effects, as the client sees them ----

#[tokio::test]
async fn status_sends_the_code_retry_after_and_an_openai_error() {
    let mock = start().await;
    install(
        &mock,
        vec![
            rule(Effect::Status {
                status: 503,
                retry_after: Some(RetryAfter::Seconds(2)),
                body: None,
            })
            .when(Match::calls(1, 1)),
            rule(Effect::Status {
                status: 429,
                retry_after: Some(RetryAfter::Raw("soon".into())),
                body: Some(json!({"custom": true})),
            })
            .when(Match::calls(2, 2)),
        ],
    );
    let response = post(&mock, &request("p")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    let retry_after =
        orchestrator::llm::retry_after(response.headers(), std::time::SystemTime::now());
    assert_eq!(retry_after, Some(Duration::from_secs(2)));
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["type"], "service_unavailable_error");

    let response = post(&mock, &request("p")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "soon");
    let body: Value = response.json().await.expect("the custom body");
    assert_eq!(body, json!({"custom": true}));

    // A stream asked for gets the error as JSON before any event, as from OpenAI.
    install(&mock, vec![rule(status(500))]);
    let response = post(&mock, &streamed("p", true)).await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["content-type"], "application/json");
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["type"], "server_error");

    let journal = mock.calls();
    assert_eq!(journal[0].effect, Some(EffectKind::Status));
    assert_eq!((journal[0].status, journal[1].status), (503, 429));
    assert_eq!(journal[0].usage, None);
}

#[tokio::test]
async fn delay_holds_the_headers_then_answers_normally() {
    let mock = start().await;
    install(&mock, vec![rule(Effect::Delay { delay_ms: 300 })]);
    let started = Instant::now();
    let completion = complete(&mock, &request("slow")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    validate(&content(&completion)).expect("a delayed answer is still valid");
    assert_eq!(mock.calls()[0].effect, Some(EffectKind::Delay));
}

/// Reads a body until it ends or breaks: the bytes received and whether it
/// broke.
async fn drain(mut response: reqwest::Response) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => return (bytes, false),
            Err(_) => return (bytes, true),
        }
    }
}

#[tokio::test]
async fn stall_sends_part_of_the_body_waits_and_closes() {
    let mock = start().await;
    install(
        &mock,
        vec![rule(Effect::Stall {
            after_bytes: 40,
            stall_ms: 300,
        })],
    );
    let started = Instant::now();
    let response = post(&mock, &request("stall")).await;
    assert_eq!(response.status(), 200);
    let (bytes, broke) = drain(response).await;
    assert!(broke, "the body must break off");
    assert_eq!(bytes.len(), 40);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let response = post(&mock, &streamed("stall", false)).await;
    assert_eq!(response.status(), 200);
    let (bytes, broke) = drain(response).await;
    assert!(broke, "the stream must break off");
    assert_eq!(bytes.len(), 40);
    assert!(bytes.starts_with(b"data: {"));
}

#[tokio::test]
async fn truncated_json_cuts_the_body_or_the_content() {
    let mock = start().await;
    install(
        &mock,
        vec![
            rule(Effect::TruncatedJson {
                target: Target::Body,
            })
            .when(Match::calls(1, 2)),
            rule(Effect::TruncatedJson {
                target: Target::Content,
            }),
        ],
    );
    let response = post(&mock, &request("cut")).await;
    assert_eq!(response.status(), 200);
    let (bytes, broke) = drain(response).await;
    assert!(!broke, "the HTTP message itself is complete");
    let error = serde_json::from_slice::<Value>(&bytes).expect_err("half an envelope");
    assert!(error.is_eof(), "{error}");

    let response = post(&mock, &streamed("cut", false)).await;
    let (bytes, broke) = drain(response).await;
    assert!(!broke);
    let text = String::from_utf8(bytes).expect("UTF-8 up to the cut");
    assert!(!text.contains("[DONE]"), "{text}");

    let completion = complete(&mock, &request("cut")).await;
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    assert!(matches!(
        validate(&content(&completion)),
        Err(PlanError::NotJson { .. })
    ));
}

#[tokio::test]
async fn invalid_json_breaks_the_body_or_the_content() {
    let mock = start().await;
    install(
        &mock,
        vec![
            rule(Effect::InvalidJson {
                target: Target::Body,
            })
            .when(Match::calls(1, 2)),
            rule(Effect::InvalidJson {
                target: Target::Content,
            }),
        ],
    );
    let bytes = post(&mock, &request("break"))
        .await
        .bytes()
        .await
        .expect("a complete body");
    let error = serde_json::from_slice::<Value>(&bytes).expect_err("a syntax error");
    assert!(error.is_syntax(), "{error}");

    let body = post(&mock, &streamed("break", false))
        .await
        .text()
        .await
        .expect("a complete stream");
    let events = data_lines(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| serde_json::from_str::<Value>(e).is_err())
    );

    let completion = complete(&mock, &request("break")).await;
    assert!(matches!(
        validate(&content(&completion)),
        Err(PlanError::NotJson { .. })
    ));
}

#[tokio::test]
async fn schema_violations_fail_the_orchestrator_validation() {
    let mock = start_with(5, Limits::default()).await;
    let mut rules: Vec<Rule> = Violation::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let seq = i as u64 + 1;
            rule(Effect::SchemaViolation {
                violation: Some(*v),
            })
            .when(Match::calls(seq, seq))
        })
        .collect();
    // Then a seeded pick for every later call.
    rules.push(rule(Effect::SchemaViolation { violation: None }));
    install(&mock, rules);
    for i in 0..Violation::ALL.len() + 6 {
        let completion = complete(&mock, &request("violate")).await;
        let text = content(&completion);
        serde_json::from_str::<Value>(&text).expect("violations are well-formed JSON");
        let error = validate(&text).expect_err("a violation must be refused");
        assert!(
            matches!(
                error,
                PlanError::Schema { .. } | PlanError::ToolNotAllowed { .. }
            ),
            "call {i}: {error}"
        );
    }
}

#[tokio::test]
async fn injections_fail_the_screen_in_every_field() {
    let mock = start().await;
    install(
        &mock,
        vec![
            rule(Effect::Injection {
                payload: None,
                field: InjectionField::Args,
            })
            .when(Match::calls(1, 1)),
            rule(Effect::Injection {
                payload: None,
                field: InjectionField::Reasoning,
            })
            .when(Match::calls(2, 2)),
            rule(Effect::Injection {
                payload: Some("'; DROP TABLE users; --".into()),
                field: InjectionField::Tool,
            })
            .when(Match::calls(3, 3)),
        ],
    );
    for expected in ["args", "reasoning", "action_plan[0].tool"] {
        let text = content(&complete(&mock, &request("inject")).await);
        let error = validate(&text).expect_err("an injection must be caught");
        assert_eq!(error.reason(), "injection", "{expected}: {error}");
        let path = error.path().map(|p| p.to_string()).unwrap_or_default();
        assert!(path.contains(expected), "{path} should name {expected}");
    }
    let text = content(&complete(&mock, &request("inject")).await);
    validate(&text).expect("the fourth call is past every rule");
}

#[tokio::test]
async fn oversized_bodies_are_exactly_the_size_asked() {
    let mock = start().await;
    let size: u64 = 200_000;
    install(&mock, vec![rule(Effect::Oversized { size_bytes: size })]);
    let response = post(&mock, &request("big")).await;
    assert_eq!(
        response.headers()["content-length"],
        size.to_string().as_str()
    );
    let bytes = response.bytes().await.expect("the whole body");
    assert_eq!(bytes.len() as u64, size);
    let completion: Value = serde_json::from_slice(&bytes).expect("still a completion");
    assert_eq!(usage(&completion).completion_tokens, size / 4);
    let text = content(&completion);
    // Valid but over the base policy's 64 KiB output limit.
    assert!(matches!(validate(&text), Err(PlanError::TooLarge { .. })));
    let relaxed = plan::PlanPolicy {
        max_output_bytes: usize::MAX,
        max_string_bytes: usize::MAX,
        ..base_policy()
    };
    plan::validate(&text, &relaxed).expect("apart from its size, a valid plan");

    let response = post(&mock, &streamed("big", true)).await;
    let bytes = response.bytes().await.expect("the whole stream");
    assert_eq!(bytes.len() as u64, size);
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    let events = data_lines(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let (streamed_text, _, _) = replay(&events);
    plan::validate(&streamed_text, &relaxed).expect("the streamed plan is valid too");
}

#[tokio::test]
async fn usage_reports_the_chosen_counts() {
    let mock = start().await;
    install(
        &mock,
        vec![
            rule(Effect::Usage {
                prompt_tokens: 7,
                completion_tokens: 9,
                total_tokens: None,
            })
            .when(Match::calls(1, 1)),
            rule(Effect::Usage {
                prompt_tokens: 7,
                completion_tokens: 9,
                total_tokens: Some(99),
            }),
        ],
    );
    let first = complete(&mock, &request("usage")).await;
    assert_eq!(
        usage(&first),
        Usage {
            prompt_tokens: 7,
            completion_tokens: 9,
            total_tokens: 16
        }
    );
    validate(&content(&first)).expect("the content is the default plan");
    let second = complete(&mock, &request("usage")).await;
    assert_eq!(usage(&second).total_tokens, 99);
    assert_eq!(mock.calls()[1].usage.map(|u| u.total_tokens), Some(99));
}

/// Waits until the journal holds `count` records. The journal is written when
/// a call is decided, before any delay or hang, so this is the mock's own
/// signal that the calls are in hand; no sleeping involved.
async fn journaled(mock: &MockLlm, count: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while mock.calls().len() < count {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the calls reach the journal");
}

#[tokio::test]
async fn hang_holds_the_request_until_the_client_gives_up() {
    let mock = start().await;
    install(&mock, vec![rule(Effect::Hang).times(1)]);
    let started = Instant::now();
    let error = client(Some(Duration::from_millis(300)))
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&request("hang"))
        .send()
        .await
        .expect_err("the client gives up");
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    journaled(&mock, 1).await;
    assert_eq!(mock.calls()[0].effect, Some(EffectKind::Hang));
    // The rule is used up; the mock answers again.
    complete(&mock, &request("hang")).await;
}

#[tokio::test]
async fn a_hang_ends_with_504_at_the_wait_limit() {
    let limits = Limits {
        max_wait_ms: 200,
        ..Limits::default()
    };
    let mock = start_with(0, limits).await;
    install(&mock, vec![rule(Effect::Hang)]);
    let started = Instant::now();
    let response = post(&mock, &request("hang")).await;
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn shutdown_ends_hangs_with_503() {
    let mock = start().await;
    install(&mock, vec![rule(Effect::Hang)]);
    let url = format!("{}/chat/completions", mock.base_url());
    let call = tokio::spawn(async move {
        http()
            .post(url)
            .json(&request("hang"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    journaled(&mock, 1).await;
    let started = Instant::now();
    mock.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = call.await.expect("the call task ends");
    assert_eq!(status.expect("the hung call is answered"), 503);
}

// ---- Matching ----

/// Makes `n` calls one after another and returns the sequence numbers a rule
/// applied to.
async fn affected(mock: &MockLlm, n: usize, prompt: impl Fn(usize) -> String) -> Vec<u64> {
    for i in 0..n {
        post(mock, &request(&prompt(i))).await;
    }
    mock.calls()
        .iter()
        .filter(|r| r.effect.is_some())
        .map(|r| r.seq)
        .collect()
}

fn status(code: u16) -> Effect {
    Effect::Status {
        status: code,
        retry_after: None,
        body: None,
    }
}

#[tokio::test]
async fn rules_match_by_call_range() {
    let mock = start().await;
    install(&mock, vec![rule(status(500)).when(Match::calls(3, 5))]);
    assert_eq!(affected(&mock, 7, |_| "p".into()).await, [3, 4, 5]);
}

#[tokio::test]
async fn rules_match_every_nth_call_after_an_offset() {
    let mock = start().await;
    install(
        &mock,
        vec![rule(status(500)).when(Match {
            every: Some(Every {
                period: 3,
                offset: 1,
            }),
            ..Match::default()
        })],
    );
    assert_eq!(affected(&mock, 10, |_| "p".into()).await, [4, 7, 10]);
}

#[tokio::test]
async fn rules_match_by_prompt_substring() {
    let mock = start().await;
    install(
        &mock,
        vec![rule(status(500)).when(Match::prompt_contains("poison"))],
    );
    let hits = affected(&mock, 6, |i| {
        if i % 2 == 0 {
            format!("a poisoned prompt {i}")
        } else {
            format!("a fine prompt {i}")
        }
    })
    .await;
    assert_eq!(hits, [1, 3, 5]);
}

#[tokio::test]
async fn times_limits_a_rule_and_later_rules_take_over() {
    let mock = start().await;
    install(
        &mock,
        vec![
            rule(status(500)).named("first").times(2),
            rule(status(502)).named("second").when(Match::calls(1, 4)),
        ],
    );
    for _ in 0..5 {
        post(&mock, &request("p")).await;
    }
    let journal = mock.calls();
    let statuses: Vec<u16> = journal.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 502, 502, 200]);
    let names: Vec<Option<&str>> = journal.iter().map(|r| r.rule_name.as_deref()).collect();
    assert_eq!(
        names,
        [
            Some("first"),
            Some("first"),
            Some("second"),
            Some("second"),
            None
        ]
    );
    // Installing again restarts the counts.
    install(&mock, vec![rule(status(500)).times(1)]);
    assert_eq!(post(&mock, &request("p")).await.status(), 500);
    assert_eq!(post(&mock, &request("p")).await.status(), 200);
}

/// Makes `n` calls at once and returns the sequence numbers the rule applied to.
async fn concurrent_hits(seed: u64, n: usize) -> BTreeSet<u64> {
    let mock = start_with(seed, Limits::default()).await;
    install(&mock, vec![rule(status(503)).when(Match::probability(0.3))]);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = format!("{}/chat/completions", mock.base_url());
        calls.spawn(async move {
            http()
                .post(url)
                .json(&request(&format!("prompt {i}")))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("the call task ends").expect("the mock answers");
    }
    mock.calls()
        .iter()
        .filter(|r| r.status == 503)
        .map(|r| r.seq)
        .collect()
}

#[tokio::test]
async fn probability_picks_the_same_calls_for_the_same_seed_whatever_the_order() {
    let n = 40;
    let predicted: BTreeSet<u64> = (1..=n as u64)
        .filter(|seq| probability_draw(42, 0, *seq) < 0.3)
        .collect();
    assert!(
        !predicted.is_empty() && predicted.len() < n,
        "{predicted:?}"
    );
    let first = concurrent_hits(42, n).await;
    let second = concurrent_hits(42, n).await;
    assert_eq!(first, predicted);
    assert_eq!(second, predicted);
    let other = concurrent_hits(43, n).await;
    assert_ne!(other, predicted);
}

// ---- The journal and the admin API ----

#[tokio::test]
async fn the_journal_records_headers_digest_rule_effect_and_usage() {
    let mock = start().await;
    install(
        &mock,
        vec![
            rule(Effect::Delay { delay_ms: 1 })
                .named("nudge")
                .when(Match::calls(2, 2)),
        ],
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as u64;
    let first = complete(&mock, &request("journal me")).await;
    let stream = post(&mock, &streamed("journal me", false)).await;
    assert_eq!(stream.status(), 200);
    stream.text().await.expect("the stream completes");
    let journal = mock.calls();
    assert_eq!(journal.len(), 2);
    let record: &CallRecord = &journal[0];
    assert_eq!(record.seq, 1);
    assert!(record.received_unix_ms >= before);
    assert_eq!(record.request_id.as_deref(), Some("req-1"));
    assert_eq!(record.idempotency_key.as_deref(), Some("idem-1"));
    assert!(record.authorization);
    assert_eq!(record.model.as_deref(), Some("gauntlet-mock"));
    assert_eq!(
        record.prompt_sha256.as_deref(),
        Some(hex::encode(Sha256::digest(b"journal me")).as_str())
    );
    assert!(!record.stream);
    assert_eq!((record.rule_index, record.effect), (None, None));
    assert_eq!(record.status, 200);
    assert_eq!(record.usage, Some(usage(&first)));
    let second = &journal[1];
    assert!(second.stream);
    assert_eq!(second.rule_index, Some(0));
    assert_eq!(second.rule_name.as_deref(), Some("nudge"));
    assert_eq!(second.effect, Some(EffectKind::Delay));
}

#[tokio::test]
async fn the_journal_is_bounded_paged_and_reset() {
    let limits = Limits {
        max_journal_records: 3,
        max_page_records: 2,
        ..Limits::default()
    };
    let mock = start_with(0, limits).await;
    for i in 0..5 {
        complete(&mock, &request(&format!("call {i}"))).await;
    }
    let page = mock.journal();
    assert_eq!(page.dropped, 2);
    assert_eq!(page.last_seq, 5);
    let seqs: Vec<u64> = page.calls.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);

    let page: Value = http()
        .get(format!("{}/_mock/calls?after_seq=3", mock.url()))
        .send()
        .await
        .expect("the mock answers")
        .json()
        .await
        .expect("a JSON page");
    let seqs: Vec<u64> = page["calls"]
        .as_array()
        .expect("calls is an array")
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [4, 5]);
    assert_eq!(page["dropped"], 2);
    // The page size is capped by the limit, whatever is asked.
    let client = MockClient::new(&mock.base_url()).expect("a valid URL");
    let capped = client.calls_after(0, 100).await.expect("a page");
    assert_eq!(capped.calls.len(), 2);
    let all = client.calls().await.expect("the whole journal");
    assert_eq!(
        all.calls.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [3, 4, 5]
    );

    let bad = http()
        .get(format!("{}/_mock/calls?after=3", mock.url()))
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(bad.status(), 400);

    let reset = http()
        .post(format!("{}/_mock/reset", mock.url()))
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(reset.status(), 204);
    assert_eq!(mock.journal().dropped, 0);
    assert!(mock.calls().is_empty());
    complete(&mock, &request("after reset")).await;
    assert_eq!(mock.calls()[0].seq, 1);
}

#[tokio::test]
async fn reset_forgets_the_program_too() {
    let mock = start().await;
    install(&mock, vec![rule(status(500))]);
    assert_eq!(post(&mock, &request("p")).await.status(), 500);
    mock.reset();
    assert_eq!(mock.program(), Program::default());
    assert_eq!(post(&mock, &request("p")).await.status(), 200);
}

#[tokio::test]
async fn the_admin_api_installs_shows_and_refuses_programs() {
    let mock = start().await;
    let program = json!({"rules": [
        {"name": "flaky", "match": {"every": 2}, "effect": {"kind": "status", "status": 503, "retry_after_s": 1}},
    ]});
    let response = http()
        .put(format!("{}/_mock/program", mock.url()))
        .json(&program)
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("a JSON answer");
    assert_eq!(answer, json!({"rules": 1}));
    let shown: Value = http()
        .get(format!("{}/_mock/program", mock.url()))
        .send()
        .await
        .expect("the mock answers")
        .json()
        .await
        .expect("the program as JSON");
    assert_eq!(shown, program);

    let response = http()
        .put(format!("{}/_mock/program", mock.url()))
        .json(&json!({"rules": [{"effect": {"kind": "status", "status": 200}}]}))
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["type"], "invalid_program");
    assert_eq!(error["error"]["param"], "rules[0].effect.status");
    // A refused program leaves the installed one in place.
    assert_eq!(mock.program().rules.len(), 1);
}

#[tokio::test]
async fn the_admin_client_drives_a_mock() {
    let mock = start().await;
    let client = MockClient::new(&mock.url()).expect("a valid URL");
    let program = Program::new(vec![
        rule(status(429)).named("throttle").when(Match::calls(1, 1)),
    ]);
    client.install(&program).await.expect("installed");
    assert_eq!(client.program().await.expect("shown"), program);
    assert_eq!(post(&mock, &request("p")).await.status(), 429);
    let page = client.calls().await.expect("the journal");
    assert_eq!(page.calls.len(), 1);
    assert_eq!(page.calls[0].rule_name.as_deref(), Some("throttle"));
    client.reset().await.expect("reset");
    assert!(client.calls().await.expect("the journal").calls.is_empty());

    let bad = Program::new(vec![rule(Effect::Delay { delay_ms: u64::MAX })]);
    let error = client.install(&bad).await.expect_err("over the wait limit");
    let text = error.to_string();
    assert!(text.contains("rules[0].effect.delay_ms"), "{text}");
    assert!(MockClient::new("https://example.com").is_err());
}

// ---- Limits ----

#[tokio::test]
async fn connections_are_capped_and_a_hang_ends_when_its_client_leaves() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let mock = start_with(0, limits).await;
    install(&mock, vec![rule(Effect::Hang).times(1)]);
    let url = format!("{}/chat/completions", mock.base_url());
    let hanging = tokio::spawn(async move {
        let _ = http().post(url).json(&request("hang")).send().await;
    });
    journaled(&mock, 1).await;

    // The one connection is taken: another client gets no answer.
    let error = client(Some(Duration::from_millis(300)))
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&request("blocked"))
        .send()
        .await
        .expect_err("no connection is free");
    assert!(error.is_timeout(), "{error}");

    // The hanging client leaves; its connection closes, the hang ends, and
    // the mock serves again long before its ten-minute wait limit.
    hanging.abort();
    let _ = hanging.await;
    let response = client(Some(Duration::from_secs(20)))
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&request("free again"))
        .send()
        .await
        .expect("a connection is free again");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn zero_limits_are_refused_at_start() {
    let error = MockLlm::start(MockConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        seed: 0,
        limits: Limits {
            max_connections: 0,
            ..Limits::default()
        },
    })
    .await
    .err()
    .expect("no connection could ever be served");
    assert_eq!(
        error.to_string(),
        "limits.max_connections: must be at least 1"
    );
}

#[tokio::test]
async fn a_taken_address_is_reported() {
    let first = start().await;
    let error = MockLlm::start(MockConfig {
        listen: first.addr(),
        ..MockConfig::default()
    })
    .await
    .err()
    .expect("the address is taken");
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot listen on {}: ", first.addr())),
        "{error}"
    );
}

#[test]
fn the_mock_binds_loopback_by_default() {
    assert!(MockConfig::default().listen.ip().is_loopback());
}
