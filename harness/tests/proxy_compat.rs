//! Compatibility with the Toxiproxy client users already have: the
//! `toxiproxy_rust` crate drives our server. Its client is blocking, and
//! blocking reqwest must not run on a tokio runtime thread, so the server
//! runs on a runtime of its own in a background thread and the tests are
//! plain `#[test]`s.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use gauntlet::proxy::{ProxyServer, ProxyServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use toxiproxy_rust::client::Client;
use toxiproxy_rust::proxy::ProxyPack;
use toxiproxy_rust::toxic::ToxicPack;

const PATIENCE: Duration = Duration::from_secs(10);

/// Our server and an echo upstream, running in a background thread until
/// dropped.
struct Background {
    api: SocketAddr,
    echo: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn start() -> Background {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = ProxyServer::start(ProxyServerConfig {
                    listen: "127.0.0.1:0".parse().expect("address"),
                    ..ProxyServerConfig::default()
                })
                .await
                .expect("the proxy server starts");
                let echo = echo_server().await;
                ready_tx.send((server.addr(), echo)).expect("test waits");
                let _ = stopped.await;
                server.shutdown().await;
            });
        });
        let (api, echo) = ready_rx
            .recv_timeout(PATIENCE)
            .expect("the server starts in time");
        Background {
            api,
            echo,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn client(&self) -> Client {
        Client::new(self.api)
    }

    /// A proxy in front of the echo server, as `toxiproxy_rust` describes it.
    fn pack(&self, name: &str) -> ProxyPack {
        ProxyPack::new(name.into(), "127.0.0.1:0".into(), self.echo.to_string())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Whether `listen` proxies an echo, or refuses connections.
fn echoes(listen: &str) -> Result<(), std::io::Error> {
    let addr: SocketAddr = listen.parse().expect("a bound address");
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(b"ping")?;
    let mut echo = [0; 4];
    stream.read_exact(&mut echo)?;
    assert_eq!(&echo, b"ping");
    Ok(())
}

fn attributes(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn summary(toxic: &ToxicPack) -> (String, String, String, f32, HashMap<String, u32>) {
    (
        toxic.name.clone(),
        toxic.r#type.clone(),
        toxic.stream.clone(),
        toxic.toxicity,
        toxic.attributes.clone(),
    )
}

#[test]
fn version_and_liveness() {
    let background = Background::start();
    let client = background.client();
    assert!(client.is_running());
    assert_eq!(client.version().expect("version"), gauntlet::proxy::VERSION);
}

#[test]
fn populate_creates_and_lists_proxies() {
    let background = Background::start();
    let client = background.client();
    let proxies = client
        .populate(vec![background.pack("one"), background.pack("two")])
        .expect("populated");
    let names: Vec<&str> = proxies.iter().map(|p| p.proxy_pack.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
    assert!(proxies.iter().all(|p| p.proxy_pack.enabled));

    let all = client.all().expect("listed");
    let mut listed: Vec<&String> = all.keys().collect();
    listed.sort();
    assert_eq!(listed, ["one", "two"]);
    for proxy in all.values() {
        assert_eq!(proxy.proxy_pack.upstream, background.echo.to_string());
        echoes(&proxy.proxy_pack.listen).expect("proxies the echo");
    }

    let one = client.find_proxy("one").expect("found");
    assert_eq!(one.proxy_pack.listen, all["one"].proxy_pack.listen);
    assert!(client.find_proxy("three").is_err(), "no such proxy");

    // Populating again with the same proxies keeps them where they are.
    let again = client
        .populate(vec![ProxyPack::new(
            "one".into(),
            one.proxy_pack.listen.clone(),
            background.echo.to_string(),
        )])
        .expect("populated again");
    assert_eq!(again[0].proxy_pack.listen, one.proxy_pack.listen);
    one.delete().expect("deleted");
    assert!(client.find_proxy("one").is_err(), "deleted");
}

#[test]
fn each_toxic_is_added_and_removed() {
    let background = Background::start();
    let client = background.client();
    client
        .populate(vec![background.pack("tox")])
        .expect("populated");
    let proxy = client.find_proxy("tox").expect("found");
    proxy
        .with_latency("downstream".into(), 100, 10, 1.0)
        .with_bandwidth("upstream".into(), 500, 0.5)
        .with_slow_close("downstream".into(), 200, 1.0)
        .with_timeout("upstream".into(), 300, 1.0)
        .with_slicer("downstream".into(), 64, 8, 10, 1.0)
        .with_limit_data("downstream".into(), 2048, 1.0);
    let mut toxics: Vec<_> = proxy
        .toxics()
        .expect("listed")
        .iter()
        .map(summary)
        .collect();
    toxics.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = vec![
        (
            "bandwidth_upstream",
            "bandwidth",
            "upstream",
            0.5,
            attributes(&[("rate", 500)]),
        ),
        (
            "latency_downstream",
            "latency",
            "downstream",
            1.0,
            attributes(&[("latency", 100), ("jitter", 10)]),
        ),
        (
            "limit_data_downstream",
            "limit_data",
            "downstream",
            1.0,
            attributes(&[("bytes", 2048)]),
        ),
        (
            "slicer_downstream",
            "slicer",
            "downstream",
            1.0,
            attributes(&[("average_size", 64), ("size_variation", 8), ("delay", 10)]),
        ),
        (
            "slow_close_downstream",
            "slow_close",
            "downstream",
            1.0,
            attributes(&[("delay", 200)]),
        ),
        (
            "timeout_upstream",
            "timeout",
            "upstream",
            1.0,
            attributes(&[("timeout", 300)]),
        ),
    ];
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(n, t, s, x, a)| (n.to_owned(), t.to_owned(), s.to_owned(), x, a))
        .collect();
    assert_eq!(toxics, expected);

    proxy.delete_all_toxics().expect("removed");
    assert!(proxy.toxics().expect("listed").is_empty());

    // `apply` runs the closure with the toxics, then removes them.
    let mut during = 0;
    proxy
        .with_latency("upstream".into(), 1, 0, 1.0)
        .apply(|| during = proxy.toxics().expect("listed").len())
        .expect("applied");
    assert_eq!(during, 1);
    assert!(proxy.toxics().expect("listed").is_empty());
}

#[test]
fn disable_and_enable() {
    let background = Background::start();
    let client = background.client();
    client
        .populate(vec![background.pack("part")])
        .expect("populated");
    let proxy = client.find_proxy("part").expect("found");
    let listen = proxy.proxy_pack.listen.clone();
    echoes(&listen).expect("up");

    proxy.disable().expect("disabled");
    assert!(!client.find_proxy("part").expect("found").proxy_pack.enabled);
    let refused = echoes(&listen).expect_err("down");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

    proxy.enable().expect("enabled");
    assert!(client.find_proxy("part").expect("found").proxy_pack.enabled);
    echoes(&listen).expect("up again");

    let mut inside = None;
    proxy
        .with_down(|| inside = Some(echoes(&listen).map_err(|e| e.kind())))
        .expect("down and up");
    assert_eq!(inside, Some(Err(ErrorKind::ConnectionRefused)));
    echoes(&listen).expect("up after with_down");
}

#[test]
fn reset_enables_everything_and_removes_toxics() {
    let background = Background::start();
    let client = background.client();
    client
        .populate(vec![background.pack("a"), background.pack("b")])
        .expect("populated");
    let a = client.find_proxy("a").expect("found");
    a.with_latency("downstream".into(), 1000, 0, 1.0);
    let b = client.find_proxy("b").expect("found");
    b.with_timeout("upstream".into(), 0, 1.0);
    b.disable().expect("disabled");

    client.reset().expect("reset");
    for (name, proxy) in client.all().expect("listed") {
        assert!(proxy.proxy_pack.enabled, "{name} enabled");
        assert!(proxy.proxy_pack.toxics.is_empty(), "{name} without toxics");
        echoes(&proxy.proxy_pack.listen).expect("proxies again");
    }

    // find_and_reset_proxy does the same for one proxy.
    a.with_bandwidth("downstream".into(), 1, 1.0);
    a.disable().expect("disabled");
    let reset = client.find_and_reset_proxy("a").expect("found and reset");
    assert!(reset.toxics().expect("listed").is_empty());
    assert!(client.find_proxy("a").expect("found").proxy_pack.enabled);
}
