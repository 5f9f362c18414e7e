//! The task path in-process: `POST /v1/tasks` through the whole middleware
//! stack, auth, rate limit, idempotency, budget reservation, a real HTTP call
//! to an instant provider on loopback, output validation and the store's
//! commit, on SQLite and on Redis with one and three replicas. Requests run
//! 64 at a time, so the throughput criterion prints is requests per second
//! on this machine.

// A bench that cannot set itself up should stop at once, loudly.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orchestrator::config::{Level, RateLimitConfig, StorageConfig, ValidateOptions, validate_file};
use orchestrator::{AppOptions, AppState};
use serde_json::json;
use tower::ServiceExt;

const CONCURRENCY: usize = 64;

/// An OpenAI-compatible provider that answers at once with a valid plan.
async fn instant_provider() -> String {
    let content = json!({
        "action_plan": [{"step": 1, "tool": "search", "args": {"query": "benchmarks"}}],
        "reasoning": "One search is enough."
    })
    .to_string();
    let body = json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    })
    .to_string();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

/// The service on `storage`, with `base.yaml`'s settings pointed at the
/// provider at `base_url` and neither the budget nor the rate limit in the way.
fn app_on(storage: StorageConfig, base_url: &str) -> axum::Router {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let options = ValidateOptions {
        level: Level::Strict,
        ..ValidateOptions::default()
    };
    let mut config = validate_file(&root.join("fixtures/configs/base.yaml"), &options)
        .config
        .expect("base.yaml is valid");
    config.llm.providers[0].base_url = base_url.parse().unwrap();
    config.storage = storage;
    // Neither the budget nor the rate limit may be what is measured.
    config.budget.default_limit_tokens = u64::MAX / 4;
    config.security.rate_limits.insert(
        "admin".into(),
        RateLimitConfig {
            requests_per_second: 100_000,
            burst: 100_000,
        },
    );
    let state = AppState::new(
        config,
        AppOptions {
            seed: Some(1),
            ..AppOptions::default()
        },
    )
    .unwrap();
    orchestrator::app(state)
}

fn request() -> Request<Body> {
    Request::post("/v1/tasks")
        .header("authorization", "Bearer gauntlet-dev-key")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"prompt": "plan a search", "max_tokens": 64}"#,
        ))
        .unwrap()
}

/// `CONCURRENCY` tasks at once, spread round robin over `replicas`.
async fn batch(replicas: &[axum::Router]) {
    let handles: Vec<_> = (0..CONCURRENCY)
        .map(|n| {
            let app = replicas[n % replicas.len()].clone();
            tokio::spawn(async move { app.oneshot(request()).await.unwrap().status() })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap(), StatusCode::OK);
    }
}

/// The task path on one SQLite replica, and on one and three replicas
/// sharing a real `redis-server` (in this process, each its own store
/// instance, as separate processes would be), in one run so that the
/// ratios hold on a shared machine.
fn tasks(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base_url = runtime.block_on(instant_provider());
    let dir = std::env::temp_dir().join(format!("gauntlet-bench-tasks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let redis = runtime
        .block_on(gauntlet::local::RedisServer::start(
            &dir.join("redis"),
            true,
        ))
        .expect("redis-server runs (apt-get install -y redis-server)");
    let on_redis = || StorageConfig::Redis {
        url: redis.url().parse().unwrap(),
    };
    let setups: [(&str, Vec<axum::Router>); 3] = [
        (
            "sqlite/1_replica",
            vec![app_on(
                StorageConfig::Sqlite {
                    path: dir.join("orchestrator.db"),
                },
                &base_url,
            )],
        ),
        ("redis/1_replica", vec![app_on(on_redis(), &base_url)]),
        (
            "redis/3_replicas",
            (0..3).map(|_| app_on(on_redis(), &base_url)).collect(),
        ),
    ];
    for (name, replicas) in &setups {
        let status = runtime
            .block_on(replicas[0].clone().oneshot(request()))
            .unwrap()
            .status();
        assert_eq!(
            status,
            StatusCode::OK,
            "{name}: the task path works before it is measured"
        );
    }

    let mut group = c.benchmark_group("tasks");
    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    group.measurement_time(Duration::from_secs(10));
    for (name, replicas) in &setups {
        group.bench_function(format!("post_task/{name}"), |b| {
            b.iter(|| runtime.block_on(batch(replicas)))
        });
    }
    group.finish();
    drop(setups);
    runtime.block_on(redis.stop());
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, tasks);
criterion_main!(benches);
