//! Every file in `scenarios/` runs as a test (in nextest's `heavy` group, one
//! at a time): the whole suite is part of `cargo nextest run --workspace`.
//! Each must pass, and its redacted verdict must match the reviewed snapshot
//! in `tests/snapshots/`, so a PR that changes what a scenario checks shows
//! the change.
//!
//! `GAUNTLET_TEST_SCALE` multiplies the scenarios' durations (default 1).

use std::path::{Path, PathBuf};

use gauntlet::engine::{self, Cancel, RunOptions};
use gauntlet::local::Launcher;
use libtest_mimic::{Arguments, Failed, Trial};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run_one(path: &Path) -> Result<(), Failed> {
    let scenario = gauntlet::scenario::load_file(path).map_err(|e| Failed::from(e.to_string()))?;
    let scale = std::env::var("GAUNTLET_TEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    let reports = tempfile::tempdir().map_err(|e| Failed::from(e.to_string()))?;
    let options = RunOptions {
        seed: None,
        scale,
        report_dir: reports.path().to_path_buf(),
        launcher: Launcher::gauntlet_binary(env!("CARGO_BIN_EXE_gauntlet")),
        progress: false,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    let report = runtime
        .block_on(engine::run(&scenario, &options, &Cancel::new()))
        .map_err(|e| Failed::from(e.to_string()))?;
    // Everything the run found is printed on failure, as the CLI would.
    let summary = gauntlet::report::summary(&report, false);
    if !report.passed {
        let log =
            std::fs::read_to_string(reports.path().join(&scenario.name).join("orchestrator.log"))
                .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Failed::from(format!(
            "{summary}\norchestrator log tail:\n{}",
            tail.join("\n")
        )));
    }
    let verdict = report.verdict().to_yaml();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_input_file(path);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(format!("verdict@{}", scenario.name), verdict));
    }));
    result.map_err(|_| {
        Failed::from(format!(
            "the verdict of {} differs from its snapshot\n{summary}",
            scenario.name
        ))
    })
}

fn main() {
    let args = Arguments::from_args();
    let dir = workspace_root().join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let trials = files
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Trial::test(format!("scenario::{name}"), move || run_one(&path))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
