//! The real binary on the Redis store: two `orchestrator serve` processes
//! on one `redis-server` share idempotency keys and budgets, and a lost
//! Redis makes readiness drop and requests fail fast with 503.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

mod redis_support;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use orchestrator::store::{REDIS_PREFIX, RedisStore, StoreOptions};
use redis_support::RedisServer;
use serde_json::{Value, json};
use support::{
    DEV_KEY, Provider, Reply, Running, base_yaml, client, eventually, start_with_config, temp_dir,
};

/// `fixtures/configs/base.yaml` with its storage on `url`.
fn redis_config(url: &str) -> PathBuf {
    redis_config_with(url, "")
}

/// [`redis_config`] with `security` lines added (indented by two spaces).
fn redis_config_with(url: &str, security: &str) -> PathBuf {
    let base = std::fs::read_to_string(base_yaml()).unwrap();
    let sqlite = "storage:\n  sqlite:\n    path: data/orchestrator.db\n";
    assert!(base.contains(sqlite), "base.yaml's storage section moved");
    let config = base
        .replace(sqlite, &format!("storage:\n  redis:\n    url: {url}\n"))
        .replace("security:\n", &format!("security:\n{security}"));
    let path = temp_dir("redis-serve").join("redis.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn post_task(base: &str, key: &str) -> (u16, Value) {
    let response = client()
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(DEV_KEY)
        .header("idempotency-key", key)
        .json(&json!({"prompt": "plan a literature search", "max_tokens": 100}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{base}{path}"))
        .bearer_auth(DEV_KEY)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn two_replicas_charge_a_key_sent_to_both_at_once_exactly_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let provider = Provider::start().await;
    // Slow answers, so that the two requests of a key overlap.
    provider.otherwise(Reply::Delay(
        Duration::from_millis(150),
        Box::new(Reply::plan()),
    ));
    let config = redis_config(&redis.url());
    let a = start_with_config(&provider, &config, &[]).await;
    let b = start_with_config(&provider, &config, &[]).await;

    const KEYS: usize = 8;
    let mut winners = 0;
    for n in 0..KEYS {
        let key = format!("both-{n}");
        let ((sa, ba), (sb, bb)) = tokio::join!(post_task(&a.base, &key), post_task(&b.base, &key));
        // One runs; the other is refused while it runs (409) or, if it came
        // after, replays the stored answer (200 with the same body).
        match (sa, sb) {
            (200, 409) | (409, 200) => winners += 1,
            (200, 200) => {
                assert_eq!(ba, bb, "key {key}: a replay is the stored answer");
                winners += 1;
            }
            other => panic!("key {key}: unexpected statuses {other:?}: {ba} {bb}"),
        }
    }
    assert_eq!(winners, KEYS);
    assert_eq!(provider.calls().len(), KEYS, "one provider call per key");

    // Both replicas see the one budget, charged once per key (30 tokens a
    // call), and agree that the chain both appended to verifies.
    for replica in [&a, &b] {
        let (status, budget) = get(&replica.base, "/v1/budgets/dev").await;
        assert_eq!(status, 200, "{budget}");
        assert_eq!(budget["used_tokens"], json!(KEYS * 30), "{budget}");
        assert_eq!(budget["reserved_tokens"], json!(0), "{budget}");
        let (status, verified) = get(&replica.base, "/v1/audit/verify").await;
        assert_eq!(status, 200, "{verified}");
        assert_eq!(verified["ok"], json!(true), "{verified}");
    }
    // The ledger, read straight from Redis: one charge per key.
    let store = RedisStore::open(&redis.url(), REDIS_PREFIX, &StoreOptions::offline()).unwrap();
    let mut keys: Vec<String> = store
        .charges("dev")
        .unwrap()
        .into_iter()
        .filter_map(|c| c.idempotency_key)
        .collect();
    keys.sort();
    let expected: Vec<String> = (0..KEYS).map(|n| format!("both-{n}")).collect();
    assert_eq!(keys, expected);
    stop(a).await;
    stop(b).await;
}

async fn stop(running: Running) {
    let (code, _) = running.terminate().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_lost_redis_drops_readiness_and_fails_requests_with_503_until_it_is_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let provider = Provider::start().await;
    let config = redis_config(&redis.url());
    let running = start_with_config(&provider, &config, &[]).await;
    let base = running.base.clone();
    assert_eq!(post_task(&base, "before").await.0, 200);
    assert_eq!(get(&base, "/health/ready").await.0, 200);

    redis.kill();
    let (status, problem) = post_task(&base, "during").await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        problem["type"],
        json!("urn:orchestrator:problem:store-unavailable"),
        "{problem}"
    );
    eventually("readiness drops", Duration::from_secs(10), async || {
        get(&base, "/health/ready").await.0 == 503
    })
    .await;
    assert_eq!(get(&base, "/health/live").await.0, 200, "still live");

    // Back, empty (no persistence): the service is ready again and serves.
    redis.restart();
    eventually("readiness returns", Duration::from_secs(10), async || {
        get(&base, "/health/ready").await.0 == 200
    })
    .await;
    assert_eq!(post_task(&base, "after").await.0, 200);
    stop(running).await;
}

#[tokio::test]
async fn what_a_killed_replica_held_is_released_by_the_other_after_its_liveness_expires() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let provider = Provider::start().await;
    provider.otherwise(Reply::Delay(
        Duration::from_secs(20),
        Box::new(Reply::plan()),
    ));
    let config = redis_config(&redis.url());
    let doomed = start_with_config(&provider, &config, &[]).await;
    let survivor = start_with_config(&provider, &config, &[]).await;
    // Read from Redis itself: polling the API would hit the key's rate limit.
    let mut con = redis.connection();
    let mut reserved = move || -> i64 {
        redis::cmd("HGET")
            .arg(format!("{REDIS_PREFIX}:budget:dev"))
            .arg("reserved")
            .query::<Option<i64>>(&mut con)
            .unwrap()
            .unwrap_or(0)
    };
    let request = client()
        .post(format!("{}/v1/tasks", doomed.base))
        .bearer_auth(DEV_KEY)
        .header("idempotency-key", "orphan")
        .json(&json!({"prompt": "plan a literature search", "max_tokens": 100}));
    // Its connection dies with the replica; the answer does not matter.
    let stuck = tokio::spawn(request.send());
    eventually(
        "the doomed replica holds tokens",
        Duration::from_secs(10),
        async || reserved() > 0,
    )
    .await;
    doomed.kill().await;
    let _ = stuck.await;
    // While the dead replica's key is in flight, a retry is refused; once its
    // liveness key expires (5 s) the survivor releases it, and the retry runs.
    assert_eq!(post_task(&survivor.base, "orphan").await.0, 409);
    eventually(
        "the survivor releases the dead replica's hold",
        Duration::from_secs(15),
        async || reserved() == 0,
    )
    .await;
    provider.otherwise(Reply::plan());
    assert_eq!(post_task(&survivor.base, "orphan").await.0, 200);
    stop(survivor).await;
}

#[tokio::test]
async fn a_key_spread_over_two_replicas_gets_one_rate_limit_not_two() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let provider = Provider::start().await;
    let config = redis_config_with(
        &redis.url(),
        "  rate_limits:\n    admin:\n      requests_per_second: 1\n      burst: 6\n",
    );
    let a = start_with_config(&provider, &config, &[]).await;
    let b = start_with_config(&provider, &config, &[]).await;
    let mut statuses = Vec::new();
    for n in 0..12 {
        let replica = if n % 2 == 0 { &a } else { &b };
        statuses.push(get(&replica.base, "/v1/budgets/dev").await.0);
    }
    // Six admitted in all (a second more may admit one more on a slow
    // machine), the rest refused, on both replicas alike.
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!((6..=7).contains(&admitted), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(statuses[..6], [200; 6], "{statuses:?}");
    stop(a).await;
    stop(b).await;
}
