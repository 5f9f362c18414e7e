//! The SSRF guard over real sockets, with a resolver the test controls: a
//! host the allowlist admits but which resolves to loopback, a private or a
//! link-local address is refused before any connection, and delivered once
//! an entry names the address; a name that changes its answer between calls
//! is checked on every connection.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator::outbound::{self, CallError, Limits, Policy, Refusal, Resolver, Resolving};
use url::Url;

/// Answers from a table; a name with several answers gives them in turn,
/// one per call (a rebinding name).
struct Table {
    answers: BTreeMap<String, Vec<IpAddr>>,
    calls: AtomicUsize,
}

impl Table {
    fn new(answers: &[(&str, &[&str])]) -> Arc<Table> {
        Arc::new(Table {
            answers: answers
                .iter()
                .map(|(h, ips)| {
                    (
                        h.to_string(),
                        ips.iter().map(|i| i.parse().unwrap()).collect(),
                    )
                })
                .collect(),
            calls: AtomicUsize::new(0),
        })
    }
}

impl Resolver for Table {
    fn resolve(&self, host: &str) -> Resolving {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers.get(host).map(|ips| vec![ips[n % ips.len()]]);
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"))
        })
    }
}

/// A receiver on `ip`: counts the requests that reached it.
async fn receiver(ip: &str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(uri.to_string());
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

const LIMITS: Limits = Limits {
    connect_timeout: Duration::from_secs(2),
    timeout: Duration::from_secs(5),
};

async fn call(policy: Policy, resolver: Arc<Table>, target: &str) -> Result<u16, CallError> {
    let policy = Arc::new(policy);
    let client = outbound::client(policy.clone(), resolver, LIMITS).unwrap();
    outbound::post(
        &client,
        &policy,
        &Url::parse(target).unwrap(),
        &[],
        b"{}".to_vec(),
    )
    .await
    .map(|(status, _)| status)
}

fn refusal(result: Result<u16, CallError>) -> Refusal {
    match result {
        Err(CallError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_allowed_name_resolving_to_an_internal_address_is_refused_until_an_entry_names_it() {
    let (addr, seen) = receiver("127.0.0.1").await;
    let port = addr.port();
    let resolver = Table::new(&[
        ("hooks.test", &["127.0.0.1"]),
        ("private.test", &["10.0.0.5"]),
        ("metadata.test", &["169.254.169.254"]),
    ]);
    let allow = |extra: &[String]| {
        let mut urls = vec![
            Url::parse(&format!("http://hooks.test:{port}/")).unwrap(),
            Url::parse(&format!("http://private.test:{port}/")).unwrap(),
            Url::parse(&format!("http://metadata.test:{port}/")).unwrap(),
        ];
        urls.extend(extra.iter().map(|u| Url::parse(u).unwrap()));
        Policy::new(&urls)
    };
    for (host, range) in [
        ("hooks.test", "loopback"),
        ("private.test", "private"),
        ("metadata.test", "link-local"),
    ] {
        let r = refusal(
            call(
                allow(&[]),
                resolver.clone(),
                &format!("http://{host}:{port}/job"),
            )
            .await,
        );
        assert_eq!(r.code(), "forbidden-address");
        assert!(r.to_string().contains(range), "{host}: {r}");
    }
    // A literal address is checked too: the client would not resolve it.
    let r = refusal(
        call(
            allow(&[]),
            resolver.clone(),
            &format!("http://127.0.0.1:{port}/job"),
        )
        .await,
    );
    assert_eq!(r.code(), "not-allowlisted");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the receiver"
    );

    let named = allow(&[format!("http://127.0.0.1:{port}/")]);
    assert_eq!(
        call(
            named.clone(),
            resolver.clone(),
            &format!("http://hooks.test:{port}/job")
        )
        .await
        .unwrap(),
        200
    );
    assert_eq!(
        call(named, resolver, &format!("http://127.0.0.1:{port}/direct"))
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["/job".to_owned(), "/direct".to_owned()]
    );
}

#[tokio::test]
async fn a_rebinding_name_is_checked_at_every_connection() {
    // The receiver listens on 127.0.0.2, which the allowlist names; the
    // name's second answer is 127.0.0.1, which it does not.
    let (addr, seen) = receiver("127.0.0.2").await;
    let port = addr.port();
    let resolver = Table::new(&[("rebind.test", &["127.0.0.2", "127.0.0.1"])]);
    let policy = Policy::new(&[
        Url::parse(&format!("http://rebind.test:{port}/")).unwrap(),
        Url::parse(&format!("http://127.0.0.2:{port}/")).unwrap(),
    ]);
    let target = format!("http://rebind.test:{port}/hook");
    assert_eq!(
        call(policy.clone(), resolver.clone(), &target)
            .await
            .unwrap(),
        200
    );
    let r = refusal(call(policy, resolver.clone(), &target).await);
    assert_eq!(
        r.to_string(),
        "rebind.test resolves to 127.0.0.1, a loopback address"
    );
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 2);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (target_addr, target_seen) = receiver("127.0.0.1").await;
    let app = axum::Router::new().fallback(move || async move {
        axum::response::Redirect::temporary(&format!(
            "http://127.0.0.1:{}/stolen",
            target_addr.port()
        ))
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let policy = Policy::new(&[Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap()]);
    let status = call(
        policy,
        Table::new(&[]),
        &format!("http://127.0.0.1:{port}/hook"),
    )
    .await
    .unwrap();
    assert_eq!(status, 307);
    assert!(target_seen.lock().unwrap().is_empty());
}
