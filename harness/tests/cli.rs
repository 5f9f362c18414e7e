//! The `gauntlet` binary: `gauntlet proxy` driven by the curl commands of
//! Toxiproxy's README, `gauntlet mock-llm` answering a chat completion, and
//! the exit codes of both when they cannot start.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The binary, started with its one `listening on` line read.
struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// `127.0.0.1:PORT` of its HTTP API.
    addr: String,
}

fn start(args: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("gauntlet starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    // The read returns at the first line or at end of file (a failed start),
    // so it cannot hang past the process's life.
    stdout.read_line(&mut line).expect("stdout is readable");
    let Some(addr) = line.strip_prefix("listening on http://") else {
        let status = child.wait().expect("the process ends");
        panic!(
            "gauntlet {args:?} printed {line:?} instead of its address and exited with {status}"
        );
    };
    let addr = addr.trim().to_owned();
    Running {
        child,
        stdout,
        addr,
    }
}

impl Running {
    /// Sends SIGTERM; returns the exit code and what else was printed on stdout.
    fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid} failed");
        let exit = self.child.wait().expect("the process ends");
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .expect("stdout is readable");
        (exit.code(), rest)
    }
}

/// Runs curl with `args`, the way a user of Toxiproxy's README would, and
/// returns its stdout. `-s` keeps progress off; `--max-time` bounds it.
fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("curl printed UTF-8")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A free loopback port, released for the caller to bind.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An upstream that echoes one line per connection, on a thread.
fn echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_ok() {
                    let _ = reader.get_mut().write_all(line.as_bytes());
                }
            });
        }
    });
    addr
}

/// Sends a line through `addr` and returns the echo.
fn round_trip(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"ping\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn proxy_answers_the_curl_commands_of_toxiproxys_readme() {
    let upstream = echo_upstream();
    let proxy = start(&["proxy", "--listen", "127.0.0.1:0", "--seed", "1"]);
    let api = format!("http://{}", proxy.addr);
    let listen = format!("127.0.0.1:{}", free_port());

    // Create a proxy; curl -d sends a form content type, which Toxiproxy ignores.
    let created = json(&curl(&[
        "-XPOST",
        &format!("{api}/proxies"),
        "-d",
        &format!(r#"{{"name": "redis", "listen": "{listen}", "upstream": "{upstream}"}}"#),
    ]));
    assert_eq!(created["name"], "redis");
    assert_eq!(created["listen"], listen.as_str());
    assert_eq!(created["enabled"], true);
    assert_eq!(round_trip(&listen).expect("proxied echo"), "ping\n");

    let all = json(&curl(&[&format!("{api}/proxies")]));
    assert_eq!(all["redis"]["upstream"], upstream.as_str(), "{all}");

    let toxic = json(&curl(&[
        "-XPOST",
        &format!("{api}/proxies/redis/toxics"),
        "-d",
        r#"{"type": "latency", "attributes": {"latency": 200}}"#,
    ]));
    assert_eq!(toxic["name"], "latency_downstream", "{toxic}");
    assert_eq!(toxic["stream"], "downstream");
    assert_eq!(toxic["attributes"]["latency"], 200);
    let started = std::time::Instant::now();
    assert_eq!(round_trip(&listen).expect("slow echo"), "ping\n");
    assert!(started.elapsed() >= Duration::from_millis(200));

    let deleted = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-XDELETE"])
        .arg(format!("{api}/proxies/redis/toxics/latency_downstream"))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&deleted.stdout), "204");

    let disabled = json(&curl(&[
        "-XPOST",
        &format!("{api}/proxies/redis"),
        "-d",
        r#"{"enabled": false}"#,
    ]));
    assert_eq!(disabled["enabled"], false);
    assert!(
        round_trip(&listen).is_err(),
        "a disabled proxy refuses connections"
    );

    curl(&["-XPOST", &format!("{api}/reset")]);
    assert_eq!(round_trip(&listen).expect("echo after reset"), "ping\n");

    let missing = json(&curl(&[&format!("{api}/proxies/nope")]));
    assert_eq!(
        missing,
        serde_json::json!({"error": "proxy not found", "status": 404})
    );
    assert!(!curl(&[&format!("{api}/version")]).trim().is_empty());

    let (code, rest) = proxy.terminate();
    assert_eq!(code, Some(0), "SIGTERM stops the proxy cleanly");
    assert_eq!(rest, "", "stdout carries only the listening line");
}

#[test]
fn proxy_creates_the_proxies_of_its_config_file() {
    let upstream = echo_upstream();
    let listen = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("gauntlet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("proxies.json");
    std::fs::write(
        &config,
        format!(r#"[{{"name": "llm", "listen": "{listen}", "upstream": "{upstream}"}}]"#),
    )
    .expect("write config");
    let proxy = start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().expect("UTF-8 path"),
    ]);
    assert_eq!(round_trip(&listen).expect("proxied echo"), "ping\n");
    let (code, _) = proxy.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn proxy_exits_2_naming_a_bad_config_file() {
    let dir = std::env::temp_dir().join(format!("gauntlet-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("broken.json");
    std::fs::write(&config, "[{\"name\": \"llm\",\n  \"listen\": }]").expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .expect("gauntlet runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.json") && stderr.contains(":2:"),
        "the error names the file and line: {stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn both_servers_exit_2_when_their_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    for command in ["proxy", "mock-llm"] {
        let output = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args([command, "--listen", &addr])
            .output()
            .expect("gauntlet runs");
        assert_eq!(output.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&addr),
            "{command} names the address: {stderr}"
        );
    }
}

#[test]
fn mock_llm_answers_a_chat_completion() {
    let mock = start(&["mock-llm", "--listen", "127.0.0.1:0", "--seed", "3"]);
    let url = format!("http://{}/v1/chat/completions", mock.addr);
    let body = curl(&[
        "-XPOST",
        &url,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"model": "mock", "messages": [{"role": "user", "content": "plan a trip"}]}"#,
    ]);
    let completion = json(&body);
    let content = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {completion}"));
    let plan = orchestrator::plan::validate(content, &base_policy());
    assert!(plan.is_ok(), "the default answer is a valid plan: {plan:?}");
    assert!(completion["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);

    let models = json(&curl(&[&format!("http://{}/v1/models", mock.addr)]));
    assert_eq!(models["object"], "list", "{models}");

    let (code, rest) = mock.terminate();
    assert_eq!(code, Some(0));
    assert_eq!(rest, "");
}

fn base_policy() -> orchestrator::plan::PlanPolicy {
    orchestrator::plan::PlanPolicy::new(["search", "http_get", "summarize"], 64 * 1024)
}
