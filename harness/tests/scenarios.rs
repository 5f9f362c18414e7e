//! Every file in `scenarios/` runs as a test on each backend, `local/<name>`
//! and `docker/<name>` (in nextest's `heavy` group, one at a time): the whole
//! suite is part of `cargo nextest run --workspace`. Each must pass, and its
//! redacted verdict must match the reviewed snapshot in `tests/snapshots/`,
//! the same snapshot on both backends, so a PR that changes what a scenario
//! checks shows the change.
//!
//! A test this machine cannot run (no Docker engine or images for the
//! docker tests; no root, no `fiu-run`, no memory cgroup for the disk and
//! memory scenarios) is listed as ignored, never run as a pass, and the
//! reason is printed when the suite runs (`cargo test` shows it;
//! `cargo nextest run` counts it as skipped, and `--run-ignored all` runs it
//! to fail with the reason). Under `CI=true` nothing is ignored: every test
//! runs, and a missing need fails it. A scenario whose faults a backend
//! cannot inject at all has no test on that backend (`unsupported_on` says
//! which, and a test below checks it).
//!
//! `GAUNTLET_TEST_SCALE` multiplies the scenarios' durations (default 1).
//! `GAUNTLET_TEST_REPORT_DIR` keeps the reports (as
//! `<dir>/<backend>/<scenario>/`) instead of a temporary directory.

#[path = "support/docker.rs"]
mod docker_support;

use std::path::{Path, PathBuf};

use gauntlet::engine::{self, Backend, Cancel, RunOptions};
use gauntlet::local::Launcher;
use libtest_mimic::{Arguments, Failed, Trial};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run_one(path: &Path, backend: &Backend) -> Result<(), Failed> {
    let scenario = gauntlet::scenario::load_file(path).map_err(|e| Failed::from(e.to_string()))?;
    let scale = std::env::var("GAUNTLET_TEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    let temporary = tempfile::tempdir().map_err(|e| Failed::from(e.to_string()))?;
    let report_dir = match std::env::var_os("GAUNTLET_TEST_REPORT_DIR") {
        Some(dir) => PathBuf::from(dir).join(backend.name()),
        None => temporary.path().to_path_buf(),
    };
    let options = RunOptions {
        seed: None,
        scale,
        report_dir: report_dir.clone(),
        backend: backend.clone(),
        progress: false,
        label: None,
        index_href: None,
    };
    // A need this machine lacks was found when the tests were listed (the
    // test is ignored then); met or not, here it is a failure.
    let report = runtime
        .block_on(engine::run(&scenario, &options, &Cancel::new()))
        .map_err(|e| Failed::from(e.to_string()))?;
    if report.backend != backend.name() {
        return Err(Failed::from(format!(
            "the report says backend {}, the run used {}",
            report.backend,
            backend.name()
        )));
    }
    // Everything the run found is printed on failure, as the CLI would.
    let summary = gauntlet::report::summary(&report, false);
    if !report.passed {
        let log = std::fs::read_to_string(report_dir.join(&scenario.name).join("orchestrator.log"))
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
    let local = Backend::Local(Launcher::gauntlet_binary(env!("CARGO_BIN_EXE_gauntlet")));
    let docker = match gauntlet::images::ImageNames::resolve(None, None) {
        Ok(names) => Backend::Docker(names),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(i32::from(orchestrator::exit::Exit::BadInput.code()));
        }
    };
    // What this machine lacks, found once, before anything runs. Under
    // CI=true nothing is ignored: a missing need fails the test instead.
    let in_ci = docker_support::in_ci();
    let docker_missing = if in_ci {
        None
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .and_then(|rt| match &docker {
                Backend::Docker(images) => rt.block_on(docker_support::docker_unavailable(images)),
                Backend::Local(_) => None,
            })
    };
    let listing = std::env::args().any(|a| a == "--list");
    let mut trials = Vec::new();
    for path in files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scenario = gauntlet::scenario::load_file(&path).ok();
        let unsupported = scenario
            .as_ref()
            .and_then(|s| engine::unsupported_on(&docker, s));
        for backend in [&local, &docker] {
            if matches!(backend, Backend::Docker(_)) && unsupported.is_some() {
                continue;
            }
            let test = format!("{}/{name}", backend.name());
            let missing = match (backend, &docker_missing) {
                _ if in_ci => None,
                (Backend::Docker(_), Some(reason)) => Some(reason.clone()),
                _ => scenario
                    .as_ref()
                    .and_then(|s| engine::check_host(backend, s).err()),
            };
            if let Some(reason) = &missing
                && !listing
            {
                eprintln!("ignored: {test}: {reason} (runs under CI=true)");
            }
            let (path, backend) = (path.clone(), backend.clone());
            trials.push(
                Trial::test(test, move || run_one(&path, &backend))
                    .with_ignored_flag(missing.is_some()),
            );
        }
    }
    trials.push(Trial::test("docker_skips_only_libfiu_faults", move || {
        docker_skips_only_libfiu_faults(&docker)
    }));
    libtest_mimic::run(&args, trials).exit();
}

/// The docker backend cannot inject `read_only` and `io_errors` (libfiu
/// cannot be preloaded into a static binary) nor reach the webhook sink on
/// the harness's loopback; every other scenario runs on it. This keeps the set of skipped scenario files honest.
fn docker_skips_only_libfiu_faults(docker: &Backend) -> Result<(), Failed> {
    let dir = workspace_root().join("scenarios");
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Failed::from(e.to_string()))? {
        let path = entry.map_err(|e| Failed::from(e.to_string()))?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let scenario =
            gauntlet::scenario::load_file(&path).map_err(|e| Failed::from(e.to_string()))?;
        if let Some(reason) = engine::unsupported_on(docker, &scenario) {
            skipped.push(format!("{}: {reason}", scenario.name));
        }
    }
    skipped.sort();
    let expected = vec![
        "data-protection: its webhooks go to the harness's own sink on loopback, which the containers cannot reach".to_owned(),
        format!(
            "disk-io: its io_errors and read_only faults {}",
            engine::system::DOCKER_NO_FIU
        ),
    ];
    if skipped == expected {
        Ok(())
    } else {
        Err(Failed::from(format!(
            "scenarios skipped on docker: {skipped:#?}\nexpected: {expected:#?}"
        )))
    }
}
