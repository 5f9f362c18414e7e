//! The official OpenAI Python SDK against the mock: a completion and a
//! streamed completion (tests/openai_sdk_check.py).
//!
//! The interpreter is `$GAUNTLET_PYTHON`, else `python3`. When it cannot
//! `import openai` the test cannot run: under CI (`CI=true`) that is a failure,
//! since CI is where the compatibility promise is kept; elsewhere the test
//! says why on stderr and passes, so a machine without the SDK can still run
//! the suite. Install it with
//! `python3 -m venv .venv && .venv/bin/pip install openai` and set
//! `GAUNTLET_PYTHON=.venv/bin/python`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use gauntlet::mock_llm::{MockConfig, MockLlm};
use tokio::process::Command;

fn python() -> String {
    std::env::var("GAUNTLET_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Why the SDK cannot be used, or `None` when it can.
async fn sdk_missing(python: &str) -> Option<String> {
    let output = Command::new(python)
        .args(["-c", "import openai"])
        .stdin(Stdio::null())
        .output()
        .await;
    match output {
        Err(e) => Some(format!("cannot run {python}: {e}")),
        Ok(out) if !out.status.success() => {
            // The traceback's last line says what went wrong.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or("no error output");
            Some(format!("{python} cannot import openai: {last}"))
        }
        Ok(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_gets_a_completion_and_a_stream() {
    let python = python();
    if let Some(reason) = sdk_missing(&python).await {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "the OpenAI SDK check must run in CI: {reason} (set GAUNTLET_PYTHON to an interpreter with `openai` installed)"
        );
        eprintln!("skipping the OpenAI SDK check: {reason}");
        return;
    }
    let mock = MockLlm::start(MockConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        ..MockConfig::default()
    })
    .await
    .expect("the mock starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk_check.py");
    let run = Command::new(&python)
        .arg(&script)
        .arg(mock.base_url())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK check finishes within a minute")
        .expect("the SDK check runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "OK",
        "the SDK check failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    // Both calls reached the mock, and the second was streamed.
    let calls = mock.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(!calls[0].stream && calls[1].stream);
    assert!(calls.iter().all(|c| c.status == 200 && c.authorization));
}
