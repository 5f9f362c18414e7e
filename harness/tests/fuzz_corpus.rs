//! Replays every committed `scenario_yaml` fuzz corpus file through the fuzz
//! target's check function, on stable Rust: the corpus is a regression suite.
//! Every file is tried and every failure reported, not only the first.

use std::path::{Path, PathBuf};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/scenario_yaml");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus files", dir.display());
    files
}

#[test]
fn scenario_yaml_corpus() {
    let mut failures = Vec::new();
    for file in corpus() {
        let bytes = std::fs::read(&file).expect("readable corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| {
            gauntlet::scenario::check::scenario_bytes(&bytes);
        }) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
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
