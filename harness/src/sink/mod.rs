//! The webhook sink: an HTTP server that receives the orchestrator's webhook
//! deliveries, records every one, verifies its signature with the harness's
//! own HMAC code, and fails, slows down or stalls deliveries by a
//! [`SinkProgram`], as the mock provider does calls.
//!
//! Beside it, a [`Trap`]: a TCP listener that only counts connections. A
//! run points webhooks at it under a name that resolves to loopback; the
//! orchestrator's SSRF guard must refuse them, so any connection it counts
//! is a violation.
//!
//! **What a record holds.** The path, the `Gauntlet-Delivery` and
//! `Gauntlet-Event` headers, the job id read from the body, the body itself
//! (at most [`SinkLimits::max_body_bytes`]), whether the
//! `Gauntlet-Signature` verified under one of the configured secrets, and
//! what the sink answered. Records are kept up to
//! [`SinkLimits::max_records`]; later ones are counted as dropped.

pub mod program;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use program::{SinkEffect, SinkProgram, SinkProgramError, SinkRule};

/// Bounds on what a sender controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkLimits {
    /// The largest body read; a larger one is answered 413 and recorded.
    pub max_body_bytes: usize,
    /// The most records kept.
    pub max_records: usize,
}

impl Default for SinkLimits {
    fn default() -> SinkLimits {
        SinkLimits {
            max_body_bytes: 64 * 1024,
            max_records: 100_000,
        }
    }
}

/// How to run a sink.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The secrets a signature may be made with (the orchestrator's current
    /// and previous ones).
    pub secrets: Vec<Vec<u8>>,
    /// The seed of the program's probability draws.
    pub seed: u64,
    /// The bounds.
    pub limits: SinkLimits,
}

/// What a signature check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signature {
    /// A `v1` matched `t.body` under one of the secrets.
    Valid,
    /// The header is there but no `v1` matched (or it is malformed).
    Invalid,
    /// No `Gauntlet-Signature` header.
    Missing,
}

/// One delivery as the sink received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SinkRecord {
    /// Its position, from 1, in arrival order.
    pub seq: u64,
    /// The request path.
    pub path: String,
    /// `Gauntlet-Delivery`.
    pub delivery_id: Option<String>,
    /// `Gauntlet-Event`.
    pub event: Option<String>,
    /// `job.id` of the body, when it is JSON that has one.
    pub job_id: Option<String>,
    /// The body, when at most `max_body_bytes`.
    pub body: String,
    /// The signature check.
    pub signature: Signature,
    /// The status answered; 0 for a stalled delivery (no answer).
    pub answered: u16,
}

struct Shared {
    config: SinkConfig,
    program: Mutex<SinkProgram>,
    records: Mutex<Vec<SinkRecord>>,
    seq: AtomicU64,
    dropped: AtomicU64,
    stop: watch::Receiver<bool>,
}

/// A running sink. Dropping it stops the server.
pub struct WebhookSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl WebhookSink {
    /// Binds a free loopback port and serves on the current runtime.
    pub async fn start(config: SinkConfig) -> std::io::Result<WebhookSink> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            program: Mutex::new(SinkProgram::default()),
            records: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            stop: stopped.clone(),
        });
        let app = axum::Router::new()
            .fallback(receive)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let mut server_stop = stopped;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(WebhookSink { addr, shared, stop })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Installs `program` in place of the current one.
    pub fn install(&self, program: SinkProgram) {
        *lock(&self.shared.program) = program;
    }

    /// Every record held, in arrival order, and how many were dropped.
    pub fn records(&self) -> (Vec<SinkRecord>, u64) {
        let records = lock(&self.shared.records).clone();
        (records, self.shared.dropped.load(Ordering::Relaxed))
    }

    /// Stops the server; stalled deliveries end at once.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let oversized = body.len() > shared.config.limits.max_body_bytes;
    let effect = if oversized {
        Some(SinkEffect::Status(413))
    } else {
        lock(&shared.program)
            .effect(seq, shared.config.seed)
            .map(|(_, e)| e)
    };
    let answered = match effect {
        None | Some(SinkEffect::Delay { .. }) => 204,
        Some(SinkEffect::Status(status)) => status,
        Some(SinkEffect::Stall { .. }) => 0,
    };
    let text = if oversized {
        String::new()
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    let job_id = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["job"]["id"].as_str().map(str::to_owned));
    let record = SinkRecord {
        seq,
        path: uri.path().to_owned(),
        delivery_id: header("gauntlet-delivery"),
        event: header("gauntlet-event"),
        job_id,
        signature: verify(
            &shared.config.secrets,
            header("gauntlet-signature").as_deref(),
            &body,
        ),
        body: text,
        answered,
    };
    {
        let mut records = lock(&shared.records);
        if records.len() < shared.config.limits.max_records {
            records.push(record);
        } else {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut stop = shared.stop.clone();
    match effect {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(SinkEffect::Status(status)) => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Some(SinkEffect::Delay { delay_ms }) => {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Some(SinkEffect::Stall { stall_ms }) => {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(stall_ms)) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            // The sender has given up by now (or the sink is stopping); the
            // answer says the attempt was not taken.
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// Checks `Gauntlet-Signature: t=<secs>,v1=<hex>[,v1=<hex>]`: HMAC-SHA256
/// over `<t>.<body>`, written here from the README's description, not from
/// the orchestrator's code.
pub fn verify(secrets: &[Vec<u8>], header: Option<&str>, body: &[u8]) -> Signature {
    let Some(header) = header else {
        return Signature::Missing;
    };
    let mut t = None;
    let mut macs = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => macs.push(v),
            _ => {}
        }
    }
    let Some(t) = t.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())) else {
        return Signature::Invalid;
    };
    for secret in secrets {
        for mac_hex in &macs {
            let Ok(expected) = hex::decode(mac_hex) else {
                continue;
            };
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                continue;
            };
            mac.update(t.as_bytes());
            mac.update(b".");
            mac.update(body);
            // verify_slice compares in constant time.
            if mac.verify_slice(&expected).is_ok() {
                return Signature::Valid;
            }
        }
    }
    Signature::Invalid
}

/// A TCP listener that accepts, counts and closes: the forbidden target of
/// a run's SSRF checks. Nothing should ever reach it.
pub struct Trap {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Trap {
    /// Binds a free loopback port.
    pub async fn start() -> std::io::Result<Trap> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                }
            }
        });
        Ok(Trap {
            addr,
            connections,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(timeout: Duration) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().timeout(timeout).build().unwrap()
    }

    fn sign(secret: &[u8], t: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn a_signature_verifies_under_either_secret_and_nothing_else() {
        let secrets = vec![
            b"current-secret-0001".to_vec(),
            b"previous-secret-001".to_vec(),
        ];
        let body = br#"{"job":{"id":"j1"}}"#;
        let old = sign(&secrets[1], "1700000000", body);
        let header = format!("t=1700000000,v1={},v1={old}", "00".repeat(32));
        assert_eq!(verify(&secrets, Some(&header), body), Signature::Valid);
        assert_eq!(
            verify(&secrets[..1], Some(&header), body),
            Signature::Invalid
        );
        assert_eq!(
            verify(&secrets, Some(&header), b"{}"),
            Signature::Invalid,
            "another body"
        );
        let other_t = format!("t=1700000001,v1={old}");
        assert_eq!(verify(&secrets, Some(&other_t), body), Signature::Invalid);
        assert_eq!(verify(&secrets, Some("v1=zz"), body), Signature::Invalid);
        assert_eq!(verify(&secrets, None, body), Signature::Missing);
    }

    #[tokio::test]
    async fn records_every_delivery_and_answers_by_program() {
        let secret = b"current-secret-0001".to_vec();
        let sink = WebhookSink::start(SinkConfig {
            secrets: vec![secret.clone()],
            seed: 3,
            limits: SinkLimits {
                max_body_bytes: 1024,
                max_records: 3,
            },
        })
        .await
        .unwrap();
        sink.install(
            program::parse(&serde_json::json!({"rules": [
                {"match": {"every": 2}, "effect": {"status": 503}},
            ]}))
            .unwrap(),
        );
        let client = client(Duration::from_secs(10));
        let url = format!("http://{}/hooks/a", sink.addr());
        let body = r#"{"job":{"id":"j1"}}"#;
        let signature = format!("t=5,v1={}", sign(&secret, "5", body.as_bytes()));
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let r = client
                .post(&url)
                .header("gauntlet-delivery", "d1")
                .header("gauntlet-event", "job.succeeded")
                .header("gauntlet-signature", &signature)
                .body(body)
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
        }
        assert_eq!(statuses, [204, 503, 204, 503]);
        let (records, dropped) = sink.records();
        assert_eq!(dropped, 1, "a fourth record is over max_records");
        assert_eq!(records.len(), 3);
        let first = &records[0];
        assert_eq!(first.path, "/hooks/a");
        assert_eq!(first.delivery_id.as_deref(), Some("d1"));
        assert_eq!(first.event.as_deref(), Some("job.succeeded"));
        assert_eq!(first.job_id.as_deref(), Some("j1"));
        assert_eq!(first.signature, Signature::Valid);
        assert_eq!(
            records.iter().map(|r| r.answered).collect::<Vec<_>>(),
            [204, 503, 204]
        );
    }

    #[tokio::test]
    async fn a_stalled_delivery_is_not_answered_before_the_sender_gives_up() {
        let sink = WebhookSink::start(SinkConfig {
            secrets: Vec::new(),
            seed: 0,
            limits: SinkLimits::default(),
        })
        .await
        .unwrap();
        sink.install(
            program::parse(&serde_json::json!({"rules": [{"effect": {"stall_ms": 60000}}]}))
                .unwrap(),
        );
        let client = client(Duration::from_millis(200));
        let e = client
            .post(format!("http://{}/", sink.addr()))
            .body("{}")
            .send()
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        let (records, _) = sink.records();
        assert_eq!(records[0].answered, 0);
        assert_eq!(records[0].signature, Signature::Missing);
    }

    #[tokio::test]
    async fn the_trap_counts_connections() {
        let trap = Trap::start().await.unwrap();
        assert_eq!(trap.connections(), 0);
        let _ = client(Duration::from_secs(10))
            .post(format!("http://{}/", trap.addr()))
            .send()
            .await;
        assert_eq!(trap.connections(), 1);
    }
}
