//! Job webhooks end to end, in-process with real sockets: a host the
//! allowlist admits but which resolves (through `webhooks.resolve`, the
//! resolver the test controls) to a loopback, private or link-local address
//! is refused and the reason recorded on the job and in the audit log; the
//! same job under an entry naming that address is delivered, signed, and a
//! failing receiver gets the same delivery id on every retry. The outbox row
//! commits with the job's terminal state, so it survives a restart.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use orchestrator::config::Config;
use orchestrator::server::worker;
use serde_json::{Value, json};
use sha2::Sha256;
use support::{DEV_KEY, Provider, Service, base_config, eventually};
use url::Url;

const SECRET: &str = "a webhook secret of some length";

/// What a receiver was sent: headers and body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A webhook receiver on 127.0.0.1: answers the scripted statuses in turn
/// (then 200) and records every request.
struct Receiver {
    addr: SocketAddr,
    seen: Seen,
}

async fn receiver(statuses: &[u16]) -> Receiver {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(
        statuses.iter().copied().collect::<VecDeque<u16>>(),
    ));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: axum::body::Bytes| {
        let record = record.clone();
        let script = script.clone();
        async move {
            record.lock().unwrap().push((headers, body.to_vec()));
            let status = script.lock().unwrap().pop_front().unwrap_or(200);
            StatusCode::from_u16(status).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { addr, seen }
}

/// The base config with `hooks.test` (on the receiver's port) allowed and
/// resolving to `resolves_to`, plus `extra` allowlist entries.
fn config(
    provider: &Provider,
    name: &str,
    port: u16,
    resolves_to: &str,
    extra: &[String],
) -> Config {
    let mut c = base_config(provider, name);
    c.security.outbound_url_allowlist = std::iter::once(format!("http://hooks.test:{port}/"))
        .chain(extra.iter().cloned())
        .map(|u| Url::parse(&u).unwrap())
        .collect();
    c.webhooks.resolve =
        BTreeMap::from([("hooks.test".to_owned(), vec![resolves_to.parse().unwrap()])]);
    c.webhooks.secret_env = Some("HOOK_SECRET".to_owned());
    c.webhooks.backoff = Duration::from_millis(20);
    c.webhooks.max_backoff = Duration::from_millis(100);
    c.webhooks.max_attempts = 4;
    c
}

fn start(config: Config) -> Service {
    Service::start_with(config, vec![("HOOK_SECRET".to_owned(), SECRET.to_owned())])
}

async fn submit(service: &Service, webhook: &str) -> String {
    let r = service
        .post(
            "/v1/jobs",
            None,
            json!({"prompt": "summarise the incident reports", "webhook": webhook}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    r.json["id"].as_str().unwrap().to_owned()
}

/// The job's first delivery once it is no longer pending, as the job view
/// shows it (read from the store: polling the API would spend its rate
/// limit), after checking the view once.
async fn settled_delivery(service: &Service, id: &str) -> Value {
    let store = &service.state.store;
    let view = || json!(store.job_deliveries(id).unwrap().first());
    eventually(
        &format!("job {id}'s delivery settles"),
        Duration::from_secs(20),
        async || {
            let d = view();
            d.is_object() && d["state"] != "pending"
        },
    )
    .await;
    let api = service.get(&format!("/v1/jobs/{id}"), Some(DEV_KEY)).await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.text);
    assert_eq!(
        api.json["deliveries"][0],
        view(),
        "the job view shows the delivery"
    );
    view()
}

/// The audit entries of `action`, from the store (the API's rate limit is
/// spent on polling).
async fn audit_of(service: &Service, action: &str) -> Vec<Value> {
    service
        .state
        .store
        .audit_entries(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| json!({"subject": e.subject, "details": e.details}))
        .collect()
}

#[tokio::test]
async fn an_allowed_host_resolving_inside_is_refused_with_the_reason_until_an_entry_names_it() {
    let provider = Provider::start().await;
    let hook = receiver(&[]).await;
    let port = hook.addr.port();
    for (n, (address, range)) in [
        ("127.0.0.1", "loopback"),
        ("10.0.0.5", "private"),
        ("169.254.169.254", "link-local"),
    ]
    .into_iter()
    .enumerate()
    {
        let service = start(config(
            &provider,
            &format!("hook-refused-{n}"),
            port,
            address,
            &[],
        ));
        let workers = worker::spawn(service.state.clone());
        let id = submit(&service, &format!("http://hooks.test:{port}/done")).await;
        let delivery = settled_delivery(&service, &id).await;
        assert_eq!(delivery["state"], "refused", "{delivery}");
        let error = delivery["last_error"].as_str().unwrap();
        assert_eq!(
            error,
            format!("hooks.test resolves to {address}, a {range} address")
        );
        let refused = audit_of(&service, "webhook.refused").await;
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0]["details"]["reason"], "forbidden-address");
        assert_eq!(refused[0]["subject"], delivery["id"]);
        workers.shutdown(Duration::from_secs(5)).await;
    }
    assert!(
        hook.seen.lock().unwrap().is_empty(),
        "nothing reached the receiver"
    );

    let named = config(
        &provider,
        "hook-named",
        port,
        "127.0.0.1",
        &[format!("http://127.0.0.1:{port}/")],
    );
    let service = start(named);
    let workers = worker::spawn(service.state.clone());
    let id = submit(&service, &format!("http://hooks.test:{port}/done")).await;
    let delivery = settled_delivery(&service, &id).await;
    assert_eq!(delivery["state"], "delivered", "{delivery}");
    assert_eq!(delivery["attempts"], 1);
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    assert_eq!(
        headers["gauntlet-delivery"],
        delivery["id"].as_str().unwrap()
    );
    assert_eq!(headers["gauntlet-event"], "job.succeeded");
    verify_signature(headers["gauntlet-signature"].to_str().unwrap(), body);
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["delivery_id"], delivery["id"]);
    assert_eq!(event["job"]["id"], id.as_str());
    assert_eq!(event["job"]["state"], "succeeded");
    assert_eq!(audit_of(&service, "webhook.delivered").await.len(), 1);
    workers.shutdown(Duration::from_secs(5)).await;
}

/// What a receiver does: recompute HMAC-SHA256 over `t.body` and compare.
fn verify_signature(header: &str, body: &[u8]) {
    let mut parts = header.split(',');
    let t = parts.next().unwrap().strip_prefix("t=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert!(parts.any(|p| p == expected), "{header} does not verify");
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_delivery_id_on_every_retry() {
    let provider = Provider::start().await;
    let hook = receiver(&[503, 500]).await;
    let port = hook.addr.port();
    let service = start(config(
        &provider,
        "hook-retry",
        port,
        "127.0.0.1",
        &[format!("http://127.0.0.1:{port}/")],
    ));
    let workers = worker::spawn(service.state.clone());
    let id = submit(&service, &format!("http://hooks.test:{port}/done")).await;
    let delivery = settled_delivery(&service, &id).await;
    assert_eq!(delivery["state"], "delivered", "{delivery}");
    assert_eq!(delivery["attempts"], 3);
    let ids: Vec<String> = hook
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h["gauntlet-delivery"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![delivery["id"].as_str().unwrap().to_owned(); 3]);
    assert_eq!(audit_of(&service, "webhook.retrying").await.len(), 2);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_outbox_row_commits_with_the_terminal_state_and_outlives_a_restart() {
    let provider = Provider::start().await;
    let hook = receiver(&[]).await;
    let port = hook.addr.port();
    let cfg = config(
        &provider,
        "hook-outbox",
        port,
        "127.0.0.1",
        &[format!("http://127.0.0.1:{port}/")],
    );
    let service = start(cfg.clone());
    let id = submit(&service, &format!("http://hooks.test:{port}/done")).await;
    // Run the job by hand, without the deliverer: the state change is the
    // last thing that happens before the "crash".
    let store = &service.state.store;
    let now = orchestrator::store::now_ms();
    let job = store.lease_job("test", now, 60_000).unwrap().unwrap();
    let failed = store
        .fail_job(
            &orchestrator::store::FailJob {
                id: job.id.clone(),
                lease: job.lease,
                reservation: None,
                error: "provider refused: card 4111 1111 1111 1111".to_owned(),
                retry_at_ms: None,
                actor: "test".to_owned(),
            },
            now,
        )
        .unwrap();
    assert_eq!(failed, orchestrator::store::Failure::Dead);
    let due = store.due_deliveries(now, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event, "job.dead");
    assert!(
        !due[0].payload.contains("4111"),
        "the payload is redacted: {}",
        due[0].payload
    );
    drop(service);

    let restarted = start(cfg);
    let workers = worker::spawn(restarted.state.clone());
    let delivery = settled_delivery(&restarted, &id).await;
    assert_eq!(delivery["state"], "delivered");
    assert_eq!(delivery["id"], due[0].id.as_str());
    let body = hook.seen.lock().unwrap()[0].1.clone();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["event"], "job.dead");
    assert_eq!(
        event["job"]["last_error"],
        "provider refused: card [REDACTED:credit_card]"
    );
    workers.shutdown(Duration::from_secs(5)).await;
}
