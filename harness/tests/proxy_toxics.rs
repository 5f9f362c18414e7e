//! Every toxic over real sockets, toxics changing under live connections,
//! partitions, and seeded toxicity. Every wait is bounded, so a hang fails
//! fast; timing assertions are only made where timing is the behaviour, with
//! generous upper bounds for a loaded 2-core machine.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gauntlet::proxy::{
    Limits, ProxyClient, ProxyConfig, ProxyServer, ProxyServerConfig, Stream, Toxic, ToxicKind,
};
use gauntlet::seed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bound on any single wait.
const PATIENCE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

async fn start(seed: u64) -> (ProxyServer, ProxyClient) {
    start_with(seed, Limits::default()).await
}

async fn start_with(seed: u64, limits: Limits) -> (ProxyServer, ProxyClient) {
    let server = ProxyServer::start(ProxyServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        seed,
        limits,
    })
    .await
    .expect("the proxy server starts");
    let client = server.client().expect("client");
    (server, client)
}

/// An upstream that echoes what it reads until the client closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 16 << 10];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// An upstream that sends `payload` to each client, then closes.
async fn sending_server(payload: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let _ = stream.write_all(&payload).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Creates proxy `name` in front of `upstream`; returns its listen address.
async fn proxy(client: &ProxyClient, name: &str, upstream: SocketAddr) -> SocketAddr {
    let proxy = client
        .create_proxy(&ProxyConfig::new(name, "127.0.0.1:0", upstream.to_string()))
        .await
        .expect("proxy created");
    proxy.listen.parse().expect("listen is the bound address")
}

async fn add(client: &ProxyClient, proxy: &str, toxic: Toxic) {
    client.add_toxic(proxy, &toxic).await.expect("toxic added");
}

/// Sends `message` and reads the echo; returns the round trip time.
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Duration {
    let started = Instant::now();
    within("a round trip", async {
        stream.write_all(message).await.expect("write");
        let mut echo = vec![0; message.len()];
        stream.read_exact(&mut echo).await.expect("echo");
        assert_eq!(echo, message);
    })
    .await;
    started.elapsed()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within("connect", TcpStream::connect(addr))
        .await
        .expect("connects")
}

/// Reads until the end; returns the bytes and when the end came.
async fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    within("the end of the stream", stream.read_to_end(&mut received))
        .await
        .expect("an orderly end");
    (received, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_adds_at_least_the_delay_in_each_stream() {
    let (server, client) = start(1).await;
    let listen = proxy(&client, "lat", echo_server().await).await;
    let mut stream = connect(listen).await;
    round_trip(&mut stream, b"warm").await;

    let down = ToxicKind::Latency {
        latency_ms: 150,
        jitter_ms: 0,
    };
    add(&client, "lat", Toxic::new(Stream::Downstream, down)).await;
    let rtt = round_trip(&mut stream, b"one way").await;
    assert!(rtt >= Duration::from_millis(150), "{rtt:?}");
    assert!(rtt < Duration::from_secs(3), "{rtt:?}");

    let up = ToxicKind::Latency {
        latency_ms: 100,
        jitter_ms: 0,
    };
    add(&client, "lat", Toxic::new(Stream::Upstream, up)).await;
    let rtt = round_trip(&mut stream, b"both ways").await;
    assert!(rtt >= Duration::from_millis(250), "{rtt:?}");
    assert!(rtt < Duration::from_secs(3), "{rtt:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_with_jitter_stays_within_its_spread() {
    let (server, client) = start(2).await;
    let listen = proxy(&client, "jit", echo_server().await).await;
    let kind = ToxicKind::Latency {
        latency_ms: 100,
        jitter_ms: 50,
    };
    add(&client, "jit", Toxic::new(Stream::Downstream, kind)).await;
    let mut stream = connect(listen).await;
    for i in 0u8..5 {
        let rtt = round_trip(&mut stream, &[i; 8]).await;
        assert!(rtt >= Duration::from_millis(50), "round trip {i}: {rtt:?}");
        assert!(rtt < Duration::from_secs(3), "round trip {i}: {rtt:?}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_caps_throughput_within_a_fifth() {
    const RATE_KB_PER_S: u32 = 400;
    const TOTAL_BYTES: usize = 400_000;
    let (server, client) = start(3).await;
    let data = payload(TOTAL_BYTES);
    let listen = proxy(&client, "bw", sending_server(data.clone()).await).await;
    let kind = ToxicKind::Bandwidth {
        rate_kb_per_s: RATE_KB_PER_S,
    };
    add(&client, "bw", Toxic::new(Stream::Downstream, kind)).await;

    let started = Instant::now();
    let mut stream = connect(listen).await;
    let (received, ended) = read_to_end(&mut stream).await;
    assert_eq!(received, data);
    let elapsed = ended - started;
    let rate_bytes_per_s = TOTAL_BYTES as f64 / elapsed.as_secs_f64();
    let target = f64::from(RATE_KB_PER_S) * 1000.0;
    assert!(
        (0.8 * target..=1.2 * target).contains(&rate_bytes_per_s),
        "{rate_bytes_per_s:.0} B/s over {elapsed:?}, target {target} B/s"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_closes_after_the_limit() {
    let (server, client) = start(4).await;
    let data = payload(10_000);
    let listen = proxy(&client, "lim", sending_server(data.clone()).await).await;
    let kind = ToxicKind::LimitData { limit_bytes: 1000 };
    add(&client, "lim", Toxic::new(Stream::Downstream, kind)).await;

    let mut stream = connect(listen).await;
    let (received, _) = read_to_end(&mut stream).await;
    assert_eq!(received, data[..1000]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_upstream_cuts_the_request() {
    let (server, client) = start(5).await;
    let listen = proxy(&client, "limup", echo_server().await).await;
    let kind = ToxicKind::LimitData { limit_bytes: 4 };
    add(&client, "limup", Toxic::new(Stream::Upstream, kind)).await;

    let mut stream = connect(listen).await;
    within("write", stream.write_all(b"abcdefgh"))
        .await
        .expect("write");
    // Only the first four bytes reach the echo server before the close.
    let (received, _) = read_to_end(&mut stream).await;
    assert!(b"abcd".starts_with(&received), "{received:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_resets_the_connection() {
    let (server, client) = start(6).await;
    let listen = proxy(&client, "rst", echo_server().await).await;
    let kind = ToxicKind::ResetPeer { timeout_ms: 100 };
    add(&client, "rst", Toxic::new(Stream::Downstream, kind)).await;

    let mut stream = connect(listen).await;
    let started = Instant::now();
    within("write", stream.write_all(b"ping"))
        .await
        .expect("write");
    let mut buf = [0; 16];
    let read = within("the reset", stream.read(&mut buf)).await;
    let error = read.expect_err("a reset, not data or an orderly end");
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stalls_then_closes() {
    let (server, client) = start(7).await;
    let listen = proxy(&client, "to", echo_server().await).await;
    let kind = ToxicKind::Timeout { timeout_ms: 300 };
    add(&client, "to", Toxic::new(Stream::Downstream, kind)).await;

    let started = Instant::now();
    let mut stream = connect(listen).await;
    within("write", stream.write_all(b"ping"))
        .await
        .expect("write");
    let (received, ended) = read_to_end(&mut stream).await;
    assert!(received.is_empty(), "the echo is dropped: {received:?}");
    let elapsed = ended - started;
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_zero_stalls_until_removed_then_closes() {
    let (server, client) = start(8).await;
    let listen = proxy(&client, "stall", echo_server().await).await;
    let kind = ToxicKind::Timeout { timeout_ms: 0 };
    add(&client, "stall", Toxic::new(Stream::Downstream, kind)).await;

    let mut stream = connect(listen).await;
    within("write", stream.write_all(b"ping"))
        .await
        .expect("write");
    let mut buf = [0; 16];
    // Stalling is the behaviour: nothing, not even the end, for a while.
    let stalled = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(stalled.is_err(), "read returned {stalled:?}");

    client
        .remove_toxic("stall", "timeout_downstream")
        .await
        .expect("removed");
    // As in Toxiproxy, removing the timeout closes the connection it held.
    let (received, _) = read_to_end(&mut stream).await;
    assert!(received.is_empty(), "{received:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_close_delays_the_end() {
    let (server, client) = start(9).await;
    let listen = proxy(&client, "slow", sending_server(b"bye".to_vec()).await).await;
    let kind = ToxicKind::SlowClose { delay_ms: 300 };
    add(&client, "slow", Toxic::new(Stream::Downstream, kind)).await;

    let started = Instant::now();
    let mut stream = connect(listen).await;
    let (received, ended) = read_to_end(&mut stream).await;
    assert_eq!(received, b"bye");
    let elapsed = ended - started;
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slicer_delivers_everything_in_delayed_slices() {
    let (server, client) = start(10).await;
    let data = payload(1000);
    let listen = proxy(&client, "slice", sending_server(data.clone()).await).await;
    let kind = ToxicKind::Slicer {
        average_size_bytes: 100,
        size_variation_bytes: 20,
        delay_us: 20_000,
    };
    add(&client, "slice", Toxic::new(Stream::Downstream, kind)).await;

    let started = Instant::now();
    let mut stream = connect(listen).await;
    let mut received = Vec::new();
    let mut reads = 0;
    let mut buf = [0; 4096];
    loop {
        let n = within("a slice", stream.read(&mut buf))
            .await
            .expect("read");
        if n == 0 {
            break;
        }
        reads += 1;
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(received, data);
    // At least 1000 / 120 slices, 20 ms apart.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    assert!(reads >= 3, "{reads} reads");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxics_added_and_removed_act_on_a_live_connection() {
    let (server, client) = start(11).await;
    let listen = proxy(&client, "live", echo_server().await).await;
    let mut stream = connect(listen).await;
    round_trip(&mut stream, b"before").await;

    let kind = ToxicKind::Latency {
        latency_ms: 300,
        jitter_ms: 0,
    };
    add(&client, "live", Toxic::new(Stream::Downstream, kind)).await;
    let rtt = round_trip(&mut stream, b"slowed").await;
    assert!(rtt >= Duration::from_millis(300), "{rtt:?}");

    client
        .remove_toxic("live", "latency_downstream")
        .await
        .expect("removed");
    let rtt = round_trip(&mut stream, b"after").await;
    assert!(rtt < Duration::from_millis(300), "{rtt:?}");

    // A toxic that closes acts on the same live connection too.
    add(
        &client,
        "live",
        Toxic::new(Stream::Downstream, ToxicKind::LimitData { limit_bytes: 2 }),
    )
    .await;
    within("write", stream.write_all(b"cut"))
        .await
        .expect("write");
    let (received, _) = read_to_end(&mut stream).await;
    assert_eq!(received, b"cu");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_toxics_act_on_a_live_connection() {
    let (server, client) = start(12).await;
    let listen = proxy(&client, "upd", echo_server().await).await;
    let kind = ToxicKind::Latency {
        latency_ms: 1,
        jitter_ms: 0,
    };
    add(&client, "upd", Toxic::new(Stream::Downstream, kind)).await;
    let mut stream = connect(listen).await;
    round_trip(&mut stream, b"quick").await;

    let update = gauntlet::proxy::ToxicUpdate {
        attributes: Some(ToxicKind::Latency {
            latency_ms: 250,
            jitter_ms: 0,
        }),
        toxicity: None,
    };
    client
        .update_toxic("upd", "latency_downstream", &update)
        .await
        .expect("updated");
    let rtt = round_trip(&mut stream, b"slow").await;
    assert!(rtt >= Duration::from_millis(250), "{rtt:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_proxy_cuts_connections_and_refuses_until_enabled() {
    let (server, client) = start(13).await;
    let listen = proxy(&client, "part", echo_server().await).await;
    let mut open = connect(listen).await;
    round_trip(&mut open, b"up").await;

    let disabled = client.set_enabled("part", false).await.expect("disabled");
    assert!(!disabled.enabled);
    let mut buf = [0; 8];
    let cut = within("the cut", open.read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(0)) || cut.is_err(),
        "the open connection must end, got {cut:?}"
    );
    let refused = within("connect", TcpStream::connect(listen))
        .await
        .expect_err("a disabled proxy refuses");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

    let enabled = client.set_enabled("part", true).await.expect("enabled");
    assert!(enabled.enabled);
    assert_eq!(enabled.listen, listen.to_string(), "the same address again");
    let mut again = connect(listen).await;
    round_trip(&mut again, b"back").await;
    server.shutdown().await;
}

/// Which of `count` sequential connections a toxic with toxicity 0.5 hits on
/// a fresh server with `seed`: hit connections end without the echo.
async fn affected_connections(seed: u64, count: u64) -> Vec<bool> {
    let (server, client) = start(seed).await;
    let listen = proxy(&client, "flaky", echo_server().await).await;
    let toxic = Toxic::new(Stream::Downstream, ToxicKind::LimitData { limit_bytes: 0 })
        .named("cut")
        .with_toxicity(0.5);
    add(&client, "flaky", toxic).await;
    let mut affected = Vec::new();
    for _ in 0..count {
        let mut stream = connect(listen).await;
        within("write", stream.write_all(b"ping"))
            .await
            .expect("write");
        let mut echo = Vec::new();
        within("the echo or the end", async {
            let mut buf = [0; 4];
            while echo.len() < 4 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => echo.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        affected.push(echo != b"ping");
    }
    server.shutdown().await;
    affected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_toxicity_hits_the_same_connections_every_run() {
    const COUNT: u64 = 20;
    let first = affected_connections(42, COUNT).await;
    let second = affected_connections(42, COUNT).await;
    let other = affected_connections(43, COUNT).await;

    assert_eq!(first, second, "the same seed hits the same connections");
    assert!(first.iter().any(|a| *a), "some connections are hit");
    assert!(!first.iter().all(|a| *a), "not every connection is hit");
    assert_ne!(first, other, "another seed hits others");
    // And exactly those the documented draw names.
    let expected: Vec<bool> = (0..COUNT)
        .map(|i| seed::unit(42, &[b"flaky", b"cut", &i.to_be_bytes()]) < 0.5)
        .collect();
    assert_eq!(first, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let limits = Limits {
        max_connections_per_proxy: 1,
        ..Limits::default()
    };
    let (server, client) = start_with(14, limits).await;
    let listen = proxy(&client, "one", echo_server().await).await;
    let mut first = connect(listen).await;
    round_trip(&mut first, b"in").await;

    let mut second = connect(listen).await;
    let _ = second.write_all(b"out").await;
    let mut buf = [0; 8];
    let refused = within("the close", second.read(&mut buf)).await;
    assert!(
        matches!(refused, Ok(0)) || refused.is_err(),
        "the second connection must be closed, got {refused:?}"
    );
    round_trip(&mut first, b"still").await;

    // Once the first connection has ended, a new one is served.
    within("shutdown", first.shutdown())
        .await
        .expect("shutdown");
    let (rest, _) = read_to_end(&mut first).await;
    assert!(rest.is_empty(), "{rest:?}");
    let mut third = connect(listen).await;
    round_trip(&mut third, b"again").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_closes_the_client() {
    let (server, client) = start(15).await;
    let gone = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let listen = proxy(&client, "void", gone).await;
    let mut stream = connect(listen).await;
    let mut buf = [0; 8];
    let ended = within("the close", stream.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(0)) || ended.is_err(),
        "the client must be closed, got {ended:?}"
    );
    server.shutdown().await;
}
