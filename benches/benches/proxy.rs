//! The fault proxy with no toxics against a direct loopback connection: the
//! latency it adds to a small request/response round trip, and bulk
//! throughput. The targets are at most 50 µs added at p50 and at least
//! 1 GB/s.
//!
//! The client and the upstream servers are plain blocking threads, so that
//! the direct baseline is as cheap as loopback gets and the difference is the
//! proxy's. The proxy runs on a multi-thread tokio runtime, as the `gauntlet
//! proxy` command does. Before criterion's runs, a one-off pass times 20 000
//! round trips each way and prints their p50 and p99, since criterion reports
//! means.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gauntlet::proxy::{ProxyConfig, ProxyServer, ProxyServerConfig};

/// The request and the response of a round trip.
const MESSAGE_BYTES: usize = 64;
/// What one bulk iteration sends.
const BULK_BYTES: usize = 16 << 20;
/// Round trips timed one by one for the percentiles.
const SAMPLES: usize = 20_000;

/// Serves each connection on its own thread with `handle`.
fn serve(handle: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || handle(stream));
        }
    });
    addr
}

/// Echoes until the client closes.
fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0; 64 << 10];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Reads `BULK_BYTES` and answers one byte, until the client closes.
fn sink(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0; 256 << 10];
    loop {
        let mut left = BULK_BYTES;
        while left > 0 {
            match stream.read(&mut buf[..left.min(256 << 10)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
        }
        if stream.write_all(b"k").is_err() {
            return;
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

fn round_trip(stream: &mut TcpStream, message: &[u8], reply: &mut [u8]) {
    stream.write_all(message).expect("write");
    stream.read_exact(reply).expect("read");
}

fn bulk(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).expect("write");
    let mut ack = [0; 1];
    stream.read_exact(&mut ack).expect("ack");
}

/// p50 and p99 of `SAMPLES` round trips, after a warm-up.
fn percentiles(addr: SocketAddr) -> (Duration, Duration) {
    let mut stream = connect(addr);
    let message = [7u8; MESSAGE_BYTES];
    let mut reply = [0u8; MESSAGE_BYTES];
    for _ in 0..1000 {
        round_trip(&mut stream, &message, &mut reply);
    }
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            round_trip(&mut stream, &message, &mut reply);
            started.elapsed()
        })
        .collect();
    times.sort();
    (times[SAMPLES / 2], times[SAMPLES * 99 / 100])
}

fn proxy(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let echo_addr = serve(echo);
    let sink_addr = serve(sink);
    let (server, proxied_echo, proxied_sink) = runtime.block_on(async {
        let server = ProxyServer::start(ProxyServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..ProxyServerConfig::default()
        })
        .await
        .expect("proxy server");
        let proxies = server
            .populate(vec![
                ProxyConfig::new("echo", "127.0.0.1:0", echo_addr.to_string()),
                ProxyConfig::new("sink", "127.0.0.1:0", sink_addr.to_string()),
            ])
            .await
            .expect("proxies");
        let listen = |i: usize| -> SocketAddr { proxies[i].listen.parse().expect("bound") };
        (server, listen(0), listen(1))
    });

    let (direct_p50, direct_p99) = percentiles(echo_addr);
    let (proxied_p50, proxied_p99) = percentiles(proxied_echo);
    eprintln!(
        "round trip of {MESSAGE_BYTES} B over {SAMPLES}: direct p50 {direct_p50:?} p99 {direct_p99:?}; \
         proxied p50 {proxied_p50:?} p99 {proxied_p99:?}; added at p50 {:?}",
        proxied_p50.saturating_sub(direct_p50)
    );

    let mut group = c.benchmark_group("proxy/round_trip");
    group.throughput(Throughput::Elements(1));
    for (name, addr) in [("direct", echo_addr), ("proxied", proxied_echo)] {
        let mut stream = connect(addr);
        let message = [7u8; MESSAGE_BYTES];
        let mut reply = [0u8; MESSAGE_BYTES];
        group.bench_function(name, |b| {
            b.iter(|| round_trip(&mut stream, black_box(&message), &mut reply))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("proxy/bulk");
    group.throughput(Throughput::Bytes(BULK_BYTES as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    let data = vec![0x5au8; BULK_BYTES];
    for (name, addr) in [("direct", sink_addr), ("proxied", proxied_sink)] {
        let mut stream = connect(addr);
        group.bench_function(name, |b| b.iter(|| bulk(&mut stream, black_box(&data))));
    }
    group.finish();

    runtime.block_on(server.shutdown());
}

criterion_group!(benches, proxy);
criterion_main!(benches);
