//! The API's shapes, status codes and error bodies, as Toxiproxy's, driven
//! the way the README's curl examples drive it (form content type and all),
//! and through the typed client.

use std::net::SocketAddr;
use std::time::Duration;

use gauntlet::proxy::{
    ConfigFileError, Limits, ProxyClient, ProxyConfig, ProxyServer, ProxyServerConfig, ProxyUpdate,
    Stream, Toxic, ToxicKind, ToxicUpdate, load_config_file,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

async fn start_with(limits: Limits) -> ProxyServer {
    ProxyServer::start(ProxyServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        seed: 0,
        limits,
    })
    .await
    .expect("the proxy server starts")
}

async fn start() -> ProxyServer {
    start_with(Limits::default()).await
}

/// An address nothing listens on, for upstreams that are never dialled.
async fn unused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

/// Sends a request as `curl -X METHOD URL -d BODY` does: a body, if any, is
/// labelled `application/x-www-form-urlencoded`.
async fn curl(server: &ProxyServer, method: &str, path: &str, body: Option<&str>) -> Answer {
    // Building a reqwest client needs a rustls provider (see ProxyClient).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = http
        .request(method, format!("{}{path}", server.url()))
        .header("user-agent", "curl/8.5.0");
    if let Some(body) = body {
        request = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
    }
    let response = request.send().await.expect("the request is answered");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    let text = response.text().await.expect("body");
    Answer {
        status,
        content_type,
        text,
    }
}

/// Replaces the port of every `listen` and `upstream` with `PORT`, for
/// snapshots.
fn without_ports(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if (key == "listen" || key == "upstream")
                    && let Some(text) = v.as_str()
                    && let Some((host, _)) = text.rsplit_once(':')
                {
                    *v = json!(format!("{host}:PORT"));
                } else {
                    *v = without_ports(v.take());
                }
            }
        }
        Value::Array(items) => {
            for v in items.iter_mut() {
                *v = without_ports(v.take());
            }
        }
        _ => {}
    }
    value
}

fn error(message: &str, status: u16) -> Value {
    json!({"error": message, "status": status})
}

#[tokio::test]
async fn the_readme_curl_examples_work_unchanged() {
    let server = start().await;
    let upstream = unused_addr().await;
    let create = format!(r#"{{"name":"redis","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
    let created = curl(&server, "POST", "/proxies", Some(&create)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.content_type, "application/json");
    let proxy = created.json();
    assert_eq!(proxy["name"], "redis");
    assert_eq!(proxy["upstream"], upstream.to_string());
    assert_eq!(proxy["enabled"], true);
    assert_eq!(proxy["toxics"], json!([]));
    let listen: SocketAddr = proxy["listen"]
        .as_str()
        .expect("text")
        .parse()
        .expect("the bound address");
    assert_ne!(listen.port(), 0, "the port picked is shown");

    let listed = curl(&server, "GET", "/proxies", None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json(), json!({"redis": proxy}));

    let toxic = r#"{"type":"latency","attributes":{"latency":1000}}"#;
    let added = curl(&server, "POST", "/proxies/redis/toxics", Some(toxic)).await;
    assert_eq!(added.status, 200, "{}", added.text);
    assert_eq!(
        added.json(),
        json!({
            "name": "latency_downstream",
            "type": "latency",
            "stream": "downstream",
            "toxicity": 1.0,
            "attributes": {"latency": 1000, "jitter": 0}
        })
    );
    let shown = curl(
        &server,
        "GET",
        "/proxies/redis/toxics/latency_downstream",
        None,
    )
    .await;
    assert_eq!((shown.status, shown.json()), (200, added.json()));
    let toxics = curl(&server, "GET", "/proxies/redis/toxics", None).await;
    assert_eq!((toxics.status, toxics.json()), (200, json!([added.json()])));

    let removed = curl(
        &server,
        "DELETE",
        "/proxies/redis/toxics/latency_downstream",
        None,
    )
    .await;
    assert_eq!((removed.status, removed.text.as_str()), (204, ""));

    let disabled = curl(
        &server,
        "POST",
        "/proxies/redis",
        Some(r#"{"enabled": false}"#),
    )
    .await;
    assert_eq!(disabled.status, 200, "{}", disabled.text);
    assert_eq!(disabled.json()["enabled"], false);
    assert_eq!(disabled.json()["listen"], proxy["listen"]);

    let reset = curl(&server, "POST", "/reset", None).await;
    assert_eq!((reset.status, reset.text.as_str()), (204, ""));
    let shown = curl(&server, "GET", "/proxies/redis", None).await;
    assert_eq!(shown.json()["enabled"], true, "reset enables every proxy");

    let populate = format!(
        r#"[{{"name":"web_dev_frontend_1","listen":"127.0.0.1:0","upstream":"{upstream}"}},{{"name":"web_dev_mysql_1","listen":"127.0.0.1:0","upstream":"{upstream}","enabled":false}}]"#
    );
    let populated = curl(&server, "POST", "/populate", Some(&populate)).await;
    assert_eq!(populated.status, 201, "{}", populated.text);
    let body = populated.json();
    let names: Vec<&str> = body["proxies"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["web_dev_frontend_1", "web_dev_mysql_1"]);
    assert_eq!(body["proxies"][1]["enabled"], false);

    let deleted = curl(&server, "DELETE", "/proxies/redis", None).await;
    assert_eq!(deleted.status, 204);
    let gone = curl(&server, "GET", "/proxies/redis", None).await;
    assert_eq!(
        (gone.status, gone.json()),
        (404, error("proxy not found", 404))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn version_is_plain_text() {
    let server = start().await;
    let version = curl(&server, "GET", "/version", None).await;
    assert_eq!(version.status, 200);
    assert_eq!(version.content_type, "text/plain;charset=utf-8");
    assert_eq!(version.text, gauntlet::proxy::VERSION);
    assert!(version.text.starts_with("gauntlet-"));
    server.shutdown().await;
}

#[tokio::test]
async fn proxy_errors_have_toxiproxys_bodies() {
    let server = start().await;
    let upstream = unused_addr().await;
    let body = format!(r#"{{"name":"db","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
    assert_eq!(
        curl(&server, "POST", "/proxies", Some(&body)).await.status,
        201
    );

    let cases = [
        (
            "POST",
            "/proxies",
            Some(body.as_str()),
            409,
            "proxy already exists",
        ),
        (
            "POST",
            "/proxies",
            Some(r#"{"upstream":"x:1"}"#),
            400,
            "missing required field: name",
        ),
        (
            "POST",
            "/proxies",
            Some(r#"{"name":"x","upstream":""}"#),
            400,
            "missing required field: upstream",
        ),
        ("GET", "/proxies/nope", None, 404, "proxy not found"),
        ("DELETE", "/proxies/nope", None, 404, "proxy not found"),
        (
            "POST",
            "/proxies/nope",
            Some(r#"{"enabled":false}"#),
            404,
            "proxy not found",
        ),
        ("GET", "/proxies/nope/toxics", None, 404, "proxy not found"),
        (
            "POST",
            "/proxies/nope/toxics",
            Some(r#"{"type":"latency"}"#),
            404,
            "proxy not found",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let answer = curl(&server, method, path, body).await;
        assert_eq!(
            (answer.status, answer.json()),
            (status, error(message, status)),
            "{method} {path} {body:?}"
        );
    }

    let bad = curl(&server, "POST", "/proxies", Some("{not json")).await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .expect("text")
            .starts_with("bad request body: "),
        "{}",
        bad.text
    );
    let wrong_type = curl(&server, "POST", "/proxies", Some(r#"{"name":5}"#)).await;
    assert_eq!(wrong_type.status, 400);
    assert!(wrong_type.text.contains("bad request body: "));
    let bad_update = curl(&server, "POST", "/proxies/db", Some("[")).await;
    assert_eq!(bad_update.status, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn toxic_errors_have_toxiproxys_bodies() {
    let server = start().await;
    let upstream = unused_addr().await;
    let body = format!(r#"{{"name":"db","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
    assert_eq!(
        curl(&server, "POST", "/proxies", Some(&body)).await.status,
        201
    );
    let latency = r#"{"type":"latency","attributes":{"latency":10}}"#;
    assert_eq!(
        curl(&server, "POST", "/proxies/db/toxics", Some(latency))
            .await
            .status,
        200
    );

    let cases = [
        (
            "POST",
            "/proxies/db/toxics",
            Some(latency),
            409,
            "toxic already exists",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"latency","stream":"sideways"}"#),
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"mars"}"#),
            400,
            "invalid toxic type",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"stream":"upstream"}"#),
            400,
            "invalid toxic type",
        ),
        (
            "GET",
            "/proxies/db/toxics/nope",
            None,
            404,
            "toxic not found",
        ),
        (
            "DELETE",
            "/proxies/db/toxics/nope",
            None,
            404,
            "toxic not found",
        ),
        (
            "POST",
            "/proxies/db/toxics/nope",
            Some(r#"{"toxicity":0.5}"#),
            404,
            "toxic not found",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"latency","name":"neg","attributes":{"latency":-1}}"#),
            400,
            "bad request body: attributes.latency must be a whole number from 0 to 4294967295, not -1",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"slicer","name":"s"}"#),
            400,
            "bad request body: attributes.average_size of a slicer must be at least 1",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"timeout","name":"t","toxicity":1.5}"#),
            400,
            "bad request body: toxicity must be between 0 and 1, not 1.5",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let answer = curl(&server, method, path, body).await;
        assert_eq!(
            (answer.status, answer.json()),
            (status, error(message, status)),
            "{method} {path} {body:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn every_toxic_type_is_listed_in_toxiproxys_shape() {
    let server = start().await;
    let upstream = unused_addr().await;
    let body = format!(r#"{{"name":"all","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
    assert_eq!(
        curl(&server, "POST", "/proxies", Some(&body)).await.status,
        201
    );
    let toxics = [
        r#"{"type":"latency","stream":"upstream","attributes":{"latency":100,"jitter":10}}"#,
        r#"{"type":"bandwidth","attributes":{"rate":64}}"#,
        r#"{"type":"slow_close","attributes":{"delay":200}}"#,
        r#"{"type":"timeout","stream":"UPSTREAM","attributes":{"timeout":300}}"#,
        r#"{"type":"reset_peer","name":"rst","toxicity":0.25,"attributes":{"timeout":5}}"#,
        r#"{"type":"slicer","attributes":{"average_size":64,"size_variation":8,"delay":10}}"#,
        r#"{"type":"limit_data","stream":"upstream","attributes":{"bytes":4096,"extra":1}}"#,
    ];
    for toxic in toxics {
        let answer = curl(&server, "POST", "/proxies/all/toxics", Some(toxic)).await;
        assert_eq!(answer.status, 200, "{toxic}: {}", answer.text);
    }
    let shown = curl(&server, "GET", "/proxies/all", None).await;
    assert_eq!(shown.status, 200);
    insta::assert_json_snapshot!("proxy_with_every_toxic", without_ports(shown.json()));
    server.shutdown().await;
}

#[tokio::test]
async fn toxic_updates_merge_attributes() {
    let server = start().await;
    let upstream = unused_addr().await;
    let body = format!(r#"{{"name":"db","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
    curl(&server, "POST", "/proxies", Some(&body)).await;
    let latency = r#"{"type":"latency","attributes":{"latency":100,"jitter":5}}"#;
    curl(&server, "POST", "/proxies/db/toxics", Some(latency)).await;

    let update = r#"{"attributes":{"jitter":20},"toxicity":0.5,"type":"bandwidth"}"#;
    let updated = curl(
        &server,
        "POST",
        "/proxies/db/toxics/latency_downstream",
        Some(update),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(
        updated.json(),
        json!({
            "name": "latency_downstream",
            "type": "latency",
            "stream": "downstream",
            "toxicity": 0.5,
            "attributes": {"latency": 100, "jitter": 20}
        })
    );
    let patched = curl(
        &server,
        "PATCH",
        "/proxies/db/toxics/latency_downstream",
        Some(r#"{"attributes":{"latency":7}}"#),
    )
    .await;
    assert_eq!(
        patched.json()["attributes"],
        json!({"latency": 7, "jitter": 20})
    );
    assert_eq!(patched.json()["toxicity"], 0.5);
    server.shutdown().await;
}

#[tokio::test]
async fn populate_keeps_unchanged_proxies_and_recreates_changed_ones() {
    let server = start().await;
    let upstream = unused_addr().await;
    let other = unused_addr().await;
    let first = format!(
        r#"{{"proxies":[{{"name":"a","listen":"127.0.0.1:0","upstream":"{upstream}"}},{{"name":"b","listen":"127.0.0.1:0","upstream":"{upstream}"}}]}}"#
    );
    let populated = curl(&server, "POST", "/populate", Some(&first)).await;
    assert_eq!(populated.status, 201, "{}", populated.text);
    let a_listen = populated.json()["proxies"][0]["listen"].clone();
    let b_listen = populated.json()["proxies"][1]["listen"].clone();
    for proxy in ["a", "b"] {
        let toxic = r#"{"type":"timeout","attributes":{"timeout":1}}"#;
        let path = format!("/proxies/{proxy}/toxics");
        assert_eq!(curl(&server, "POST", &path, Some(toxic)).await.status, 200);
    }

    // `a` again at the address it listens on, `b` with a new upstream.
    let second = format!(
        r#"[{{"name":"a","listen":{a_listen},"upstream":"{upstream}"}},{{"name":"b","listen":{b_listen},"upstream":"{other}"}}]"#
    );
    let populated = curl(&server, "POST", "/populate", Some(&second)).await;
    assert_eq!(populated.status, 201, "{}", populated.text);
    let proxies = populated.json()["proxies"].clone();
    assert_eq!(
        proxies[0]["toxics"].as_array().map(Vec::len),
        Some(1),
        "a is kept"
    );
    assert_eq!(proxies[1]["toxics"], json!([]), "b is recreated");
    assert_eq!(proxies[1]["upstream"], other.to_string());
    assert_eq!(proxies[1]["listen"], b_listen, "b takes its old address");

    let invalid = r#"[{"name":"c","upstream":"x:1"},{"listen":":0","upstream":"x:1"}]"#;
    let refused = curl(&server, "POST", "/populate", Some(invalid)).await;
    assert_eq!(
        (refused.status, refused.json()),
        (400, error("missing required field: name at proxy 2", 400))
    );
    let listed = curl(&server, "GET", "/proxies", None).await.json();
    assert!(listed.get("c").is_none(), "nothing is created: {listed}");

    let empty = curl(&server, "POST", "/populate", Some("[]")).await;
    assert_eq!((empty.status, empty.json()), (201, json!({"proxies": []})));
    server.shutdown().await;
}

#[tokio::test]
async fn listen_addresses_default_to_loopback() {
    let server = start().await;
    let upstream = unused_addr().await;
    for (name, listen) in [("empty", ""), ("port", ":0")] {
        let body = format!(r#"{{"name":"{name}","listen":"{listen}","upstream":"{upstream}"}}"#);
        let created = curl(&server, "POST", "/proxies", Some(&body)).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let bound: SocketAddr = created.json()["listen"]
            .as_str()
            .expect("text")
            .parse()
            .expect("an address");
        assert!(bound.ip().is_loopback(), "{name}: {bound}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_api_refuses_browsers_unknown_routes_and_large_bodies() {
    let server = start_with(Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    })
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let browser = http
        .get(format!("{}/proxies", server.url()))
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .send()
        .await
        .expect("answered");
    assert_eq!(browser.status().as_u16(), 403);
    assert_eq!(
        browser.text().await.expect("body"),
        "User agent not allowed\n"
    );

    let unknown = curl(&server, "GET", "/toxics", None).await;
    assert_eq!(
        (unknown.status, unknown.text.as_str()),
        (404, "404 page not found\n")
    );

    let large = format!(r#"{{"name":"{}","upstream":"x:1"}}"#, "n".repeat(2000));
    let refused = curl(&server, "POST", "/proxies", Some(&large)).await;
    assert_eq!(
        (refused.status, refused.json()),
        (413, error("bad request body: larger than 1024 bytes", 413))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn limits_on_proxies_toxics_and_names_are_enforced() {
    let server = start_with(Limits {
        max_proxies: 2,
        max_toxics_per_proxy: 1,
        max_name_bytes: 8,
        ..Limits::default()
    })
    .await;
    let upstream = unused_addr().await;
    for name in ["a", "b"] {
        let body = format!(r#"{{"name":"{name}","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
        assert_eq!(
            curl(&server, "POST", "/proxies", Some(&body)).await.status,
            201
        );
    }
    let body = format!(r#"{{"name":"c","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
    let third = curl(&server, "POST", "/proxies", Some(&body)).await;
    assert_eq!(
        (third.status, third.json()),
        (400, error("too many proxies: the limit is 2", 400))
    );
    let long = format!(r#"{{"name":"abcdefghi","upstream":"{upstream}"}}"#);
    let long = curl(&server, "POST", "/proxies", Some(&long)).await;
    assert_eq!(
        (long.status, long.json()),
        (
            400,
            error("bad request body: proxy name is longer than 8 bytes", 400)
        )
    );

    let toxic = r#"{"type":"latency","name":"l"}"#;
    assert_eq!(
        curl(&server, "POST", "/proxies/a/toxics", Some(toxic))
            .await
            .status,
        200
    );
    let second = curl(
        &server,
        "POST",
        "/proxies/a/toxics",
        Some(r#"{"type":"timeout","name":"t"}"#),
    )
    .await;
    assert_eq!(
        (second.status, second.json()),
        (
            400,
            error("too many toxics on proxy a: the limit is 1", 400)
        )
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_proxy_that_cannot_listen_is_not_created() {
    let server = start().await;
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let body = format!(r#"{{"name":"clash","listen":"{taken_addr}","upstream":"x:1"}}"#);
    let refused = curl(&server, "POST", "/proxies", Some(&body)).await;
    assert_eq!(refused.status, 500);
    let message = refused.json()["error"].as_str().expect("text").to_owned();
    assert!(
        message.starts_with(&format!("proxy clash cannot listen on {taken_addr}: ")),
        "{message}"
    );
    let listed = curl(&server, "GET", "/proxies", None).await;
    assert_eq!(listed.json(), json!({}));

    // A populate stops at the proxy that cannot listen and says which
    // proxies it did create.
    let populate = format!(
        r#"[{{"name":"ok","listen":"127.0.0.1:0","upstream":"x:1"}},{{"name":"clash","listen":"{taken_addr}","upstream":"x:1"}},{{"name":"never","upstream":"x:1"}}]"#
    );
    let partial = curl(&server, "POST", "/populate", Some(&populate)).await;
    assert_eq!(partial.status, 500, "{}", partial.text);
    let body = partial.json();
    assert_eq!(body["status"], 500);
    assert!(
        body["error"]
            .as_str()
            .expect("text")
            .starts_with("proxy clash cannot listen on "),
        "{body}"
    );
    let created: Vec<&Value> = body["proxies"].as_array().expect("a list").iter().collect();
    assert_eq!(created.len(), 1, "{body}");
    assert_eq!(created[0]["name"], "ok");
    let listed = curl(&server, "GET", "/proxies", None).await.json();
    let names: Vec<&String> = listed.as_object().expect("an object").keys().collect();
    assert_eq!(names, ["ok"]);
    server.shutdown().await;
}

#[tokio::test]
async fn the_typed_client_covers_the_api() {
    let server = start().await;
    let client: ProxyClient = server.client().expect("client");
    let upstream = unused_addr().await;
    assert_eq!(
        client.version().await.expect("version"),
        gauntlet::proxy::VERSION
    );

    let created = client
        .create_proxy(&ProxyConfig::new(
            "svc",
            "127.0.0.1:0",
            upstream.to_string(),
        ))
        .await
        .expect("created");
    assert!(created.enabled);
    let exists = client
        .create_proxy(&ProxyConfig::new("svc", "", upstream.to_string()))
        .await
        .expect_err("exists");
    assert_eq!(exists.status(), Some(409));
    assert!(
        exists.to_string().contains("proxy already exists"),
        "{exists}"
    );

    let toxic = Toxic::new(Stream::Upstream, ToxicKind::Bandwidth { rate_kb_per_s: 10 })
        .named("thin")
        .with_toxicity(0.75);
    assert_eq!(client.add_toxic("svc", &toxic).await.expect("added"), toxic);
    assert_eq!(client.toxic("svc", "thin").await.expect("shown"), toxic);
    let updated = client
        .update_toxic(
            "svc",
            "thin",
            &ToxicUpdate {
                toxicity: Some(0.25),
                attributes: Some(ToxicKind::Bandwidth { rate_kb_per_s: 20 }),
            },
        )
        .await
        .expect("updated");
    let expected = Toxic {
        toxicity: 0.25,
        kind: ToxicKind::Bandwidth { rate_kb_per_s: 20 },
        ..toxic.clone()
    };
    assert_eq!(updated, expected);
    assert_eq!(
        client.toxics("svc").await.expect("listed"),
        vec![updated.clone()]
    );
    assert_eq!(
        client.proxy("svc").await.expect("shown").toxics,
        vec![updated]
    );

    let moved = client
        .update_proxy(
            "svc",
            &ProxyUpdate {
                listen: Some("127.0.0.1:0".into()),
                ..ProxyUpdate::default()
            },
        )
        .await
        .expect("moved");
    assert!(moved.enabled);
    assert_eq!(moved.toxics.len(), 1, "toxics survive a restart");
    assert!(!client.set_enabled("svc", false).await.expect("off").enabled);

    let populated = client
        .populate(&[ProxyConfig::new("other", "", upstream.to_string())])
        .await
        .expect("populated");
    assert_eq!(populated.len(), 1);
    client.reset().await.expect("reset");
    let all = client.proxies().await.expect("listed");
    assert_eq!(all.keys().collect::<Vec<_>>(), ["other", "svc"]);
    assert!(all.values().all(|p| p.enabled && p.toxics.is_empty()));

    client
        .remove_toxic("svc", "thin")
        .await
        .expect_err("reset removed it");
    client.delete_proxy("svc").await.expect("deleted");
    let missing = client.proxy("svc").await.expect_err("gone");
    assert_eq!(missing.status(), Some(404));
    server.shutdown().await;
}

#[test]
fn config_files_load_with_located_errors() {
    let dir = std::env::temp_dir().join(format!("gauntlet-proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };

    let good = write(
        "good.json",
        r#"[
  {"name": "web", "listen": "[::1]:18080", "upstream": "web.local:8080", "enabled": true},
  {"name": "db", "listen": ":13306", "upstream": "db.local:3306", "enabled": false}
]"#,
    );
    let loaded = load_config_file(&good).expect("loads");
    assert_eq!(
        loaded,
        vec![
            ProxyConfig::new("web", "[::1]:18080", "web.local:8080"),
            ProxyConfig {
                enabled: false,
                ..ProxyConfig::new("db", ":13306", "db.local:3306")
            },
        ]
    );

    let broken = write("broken.json", "[\n  {\"name\": \"web\",,}\n]");
    match load_config_file(&broken) {
        Err(ConfigFileError::Syntax { line, column, .. }) => assert_eq!((line, column), (2, 18)),
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let message = load_config_file(&broken).expect_err("broken").to_string();
    assert!(
        message.starts_with(&format!("{}:2:18: ", broken.display())),
        "{message}"
    );

    let shape = write("shape.json", r#"[{"name": "web", "upstream": 5}]"#);
    let message = load_config_file(&shape)
        .expect_err("wrong type")
        .to_string();
    assert!(
        message.starts_with(&format!("{}:1:", shape.display())),
        "{message}"
    );

    let missing = write(
        "missing.json",
        r#"[{"name": "a", "upstream": "b:1"}, {"name": "c"}]"#,
    );
    let message = load_config_file(&missing).expect_err("missing").to_string();
    assert_eq!(
        message,
        format!(
            "{}: proxy 2: missing required field: upstream",
            missing.display()
        )
    );

    let absent = dir.join("absent.json");
    let message = load_config_file(&absent).expect_err("absent").to_string();
    assert!(
        message.starts_with(&format!("cannot read proxy config {}: ", absent.display())),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}
