//! Replays every committed fuzz corpus file through the same check function
//! its fuzz target calls, so the corpora are a regression suite on stable Rust.

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use orchestrator::config::{Config, check};
use orchestrator::plan;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus files", dir.display());
    files
}

/// Runs `check` on every file, catching panics so that one failure does not hide the others.
fn replay(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let mut failures = Vec::new();
    for file in corpus(target) {
        let bytes = std::fs::read(&file).expect("readable corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| check(&bytes)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {message}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus files failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn config_yaml_corpus() {
    replay("config_yaml", check::config_bytes);
}

#[test]
fn config_roundtrip_corpus() {
    replay("config_roundtrip", |bytes| {
        // Exactly what libfuzzer-sys does with the input of a typed fuzz target.
        if let Ok(config) = Config::arbitrary_take_rest(Unstructured::new(bytes)) {
            check::config_roundtrip(&config);
        }
    });
}

#[test]
fn llm_output_corpus() {
    replay("llm_output", plan::check::llm_output);
}
