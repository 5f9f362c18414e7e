//! The scenario format over fixtures/scenarios: every invalid fixture's
//! diagnostics are snapshotted (one failure class each); every valid one
//! loads into the expected typed scenario; no input panics; and the
//! `validate` and `list` commands report and exit as documented.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gauntlet::cli;
use gauntlet::scenario::{self, FaultAction, FaultClass, Invariant, Objective, Scenario, Window};
use orchestrator::yaml::{Code, Severity, has_errors};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scenarios");
    dir.canonicalize().unwrap_or(dir)
}

fn files(dir: &str) -> Vec<PathBuf> {
    scenario::discover(&[fixtures().join(dir)])
        .unwrap_or_else(|e| panic!("cannot list fixtures/scenarios/{dir}: {e}"))
}

/// Parses one fixture and renders what a user would see, the file named
/// relative to fixtures/scenarios so that snapshots do not depend on the checkout.
fn check(path: &Path) -> (Option<Scenario>, String) {
    let name = path
        .strip_prefix(fixtures())
        .unwrap_or(path)
        .display()
        .to_string();
    let outcome = scenario::parse_file(path);
    let verdict = if outcome.scenario.is_some() {
        "valid"
    } else {
        "invalid"
    };
    let mut report = format!("--- {verdict}\n");
    for d in &outcome.diagnostics {
        assert!(
            d.location.line >= 1 && d.location.column >= 1,
            "{name}: unlocated {d:?}"
        );
        report.push_str(&format!("{}\n", d.display_with_file(&name)));
    }
    (outcome.scenario, report)
}

#[test]
fn invalid_fixtures_report_located_errors() {
    insta::glob!("../../fixtures/scenarios/invalid", "*.yaml", |path| {
        let (scenario, report) = check(path);
        assert!(
            scenario.is_none(),
            "{} must be invalid:\n{report}",
            path.display()
        );
        assert!(
            report.contains(": error["),
            "{} must have an error:\n{report}",
            path.display()
        );
        insta::assert_snapshot!(report);
    });
}

#[test]
fn invalid_fixtures_cover_every_failure_class() {
    let invalid = files("invalid");
    assert!(
        invalid.len() >= 20,
        "at least 20 invalid fixtures, found {invalid:?}"
    );
    let mut codes = BTreeSet::new();
    for file in &invalid {
        for d in scenario::parse_file(file).diagnostics {
            codes.insert(d.code);
        }
    }
    let expected = [
        Code::Encoding,
        Code::Limit,
        Code::Syntax,
        Code::Empty,
        Code::DuplicateKey,
        Code::Type,
        Code::MissingField,
        Code::UnknownField,
        Code::Range,
        Code::Format,
        Code::Reference,
        Code::Duplicate,
        Code::Conflict,
    ];
    let missing: Vec<_> = expected.iter().filter(|c| !codes.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "no invalid fixture produces {missing:?}"
    );
}

/// A valid scenario with its paths made relative to the fixtures and its
/// merged config shown as text, for snapshots.
fn describe(mut scenario: Scenario) -> String {
    let root = fixtures().join("../..");
    let root = root.canonicalize().unwrap_or(root);
    for path in [&mut scenario.source, &mut scenario.system.config_base] {
        if let Ok(relative) = path.strip_prefix(&root) {
            *path = relative.to_path_buf();
        }
    }
    let config = std::mem::take(&mut scenario.system.config_yaml);
    format!("{scenario:#?}\n--- config_yaml\n{config}")
}

#[test]
fn valid_fixtures_load_without_diagnostics() {
    insta::glob!("../../fixtures/scenarios/valid", "*.yaml", |path| {
        let (scenario, report) = check(path);
        assert_eq!(report, "--- valid\n", "{}", path.display());
        let loaded = scenario::load_file(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scenario.as_ref(), Some(&loaded));
        insta::assert_snapshot!(describe(loaded));
    });
}

fn load(name: &str) -> Scenario {
    let path = fixtures().join("valid").join(name);
    scenario::load_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn smoke_has_the_documented_values() {
    let smoke = load("smoke.yaml");
    assert_eq!(smoke.name, "smoke");
    assert_eq!(smoke.seed, 42);
    assert_eq!(smoke.load.duration(), Duration::from_secs(20));
    assert_eq!(smoke.load.stages[0].start_rps, 20.0);
    assert_eq!(smoke.load.tenants.len(), 2);
    assert_eq!(smoke.load.tenants[1].name, "tenant-2");
    assert_eq!(smoke.load.max_in_flight, 256);
    assert_eq!(smoke.load.request_timeout, Duration::from_secs(10));
    let kinds: Vec<_> = smoke.faults.iter().map(|f| f.action.kind()).collect();
    assert_eq!(kinds, ["latency", "program"]);
    assert!(matches!(
        smoke.faults[0].action,
        FaultAction::Toxic {
            link: scenario::Link::Llm,
            toxic: gauntlet::proxy::ToxicKind::Latency {
                latency_ms: 300,
                jitter_ms: 50
            },
            stream: gauntlet::proxy::Stream::Downstream,
            ..
        }
    ));
    assert_eq!(
        smoke.slos[0].objective,
        Objective::Latency {
            quantile: 0.99,
            max: Duration::from_secs(2)
        }
    );
    assert!(
        smoke
            .system
            .config_yaml
            .contains("base_url: \"http://127.0.0.1:8081/v1\""),
        "{}",
        smoke.system.config_yaml
    );
}

#[test]
fn overrides_merge_over_the_base_config() {
    let chaos = load("process-chaos.yaml");
    let config = orchestrator::config::validate(
        chaos.system.config_yaml.as_bytes(),
        &orchestrator::config::ValidateOptions::default(),
    )
    .config
    .expect("the merged config is valid");
    assert_eq!(config.jobs.workers, 2, "overridden");
    assert_eq!(config.jobs.lease, Duration::from_secs(10), "overridden");
    assert_eq!(config.jobs.queue_capacity, 1000, "kept from base.yaml");
    assert_eq!(
        config.llm.providers[0].name, "primary",
        "kept from base.yaml"
    );
    let disk = load("disk-and-memory.yaml");
    assert!(disk.system.config_base.ends_with("configs/base.yaml"));
    assert!(disk.system.config_yaml.contains("path: data/stress.db"));
}

/// The valid fixtures together exercise every part of the format.
/// Every SLO metric and every invariant is listed by some scenario of the
/// suite: a check no scenario runs is a guarantee nothing tests.
#[test]
fn the_suite_lists_every_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut listed = BTreeSet::new();
    for path in scenario::discover(&[dir]).expect("scenarios/ lists") {
        let scenario = scenario::load_file(&path)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        listed.extend(scenario.slos.iter().map(|slo| slo.objective.metric()));
        listed.extend(scenario.invariants.iter().map(|i| i.name().to_owned()));
    }
    let unlisted: Vec<&str> = scenario::METRICS
        .iter()
        .chain(Invariant::NAMES.iter())
        .copied()
        .filter(|name| !listed.contains(*name))
        .collect();
    assert!(
        unlisted.is_empty(),
        "no scenario in scenarios/ lists {unlisted:?}"
    );
}

#[test]
fn valid_fixtures_cover_every_part() {
    let scenarios: Vec<Scenario> = files("valid")
        .iter()
        .map(|f| scenario::load_file(f).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(scenarios.len() >= 4);
    let classes: BTreeSet<FaultClass> = scenarios
        .iter()
        .flat_map(|s| s.faults.iter().map(|f| f.action.class()))
        .collect();
    assert_eq!(classes.len(), 6, "every fault class: {classes:?}");
    let kinds: BTreeSet<&str> = scenarios
        .iter()
        .flat_map(|s| s.faults.iter().map(|f| f.action.kind()))
        .collect();
    assert_eq!(kinds.len(), 16, "every fault kind: {kinds:?}");
    let windows: BTreeSet<&str> = scenarios
        .iter()
        .flat_map(|s| s.slos.iter())
        .map(|slo| match &slo.window {
            Window::All => "all",
            Window::Before(_) => "before",
            Window::During(_) => "during",
            Window::After { delay, .. } if delay.is_zero() => "after",
            Window::After { .. } => "after+delay",
            Window::Every(_) => "every",
        })
        .collect();
    assert_eq!(windows.len(), 6, "every window form: {windows:?}");
    let invariants: BTreeSet<&str> = scenarios
        .iter()
        .flat_map(|s| s.invariants.iter().map(Invariant::name))
        .collect();
    assert_eq!(invariants.len(), 12, "every invariant: {invariants:?}");
    let stages = scenarios.iter().flat_map(|s| s.load.stages.iter());
    let (ramps, constant): (Vec<_>, Vec<_>) = stages.partition(|s| s.start_rps != s.end_rps);
    assert!(!ramps.is_empty() && !constant.is_empty());
}

#[test]
fn load_file_errors_render_one_line_per_diagnostic() {
    let path = fixtures().join("invalid/many-errors.yaml");
    let error = scenario::load_file(&path).expect_err("invalid");
    let text = error.to_string();
    let diagnostics = error.diagnostics();
    assert!(diagnostics.len() > 10, "{text}");
    assert_eq!(text.lines().count(), diagnostics.len());
    assert!(
        text.lines()
            .all(|l| l.starts_with(&format!("{}:", path.display())))
    );
    let missing = scenario::load_file(&fixtures().join("no-such-file.yaml")).expect_err("missing");
    assert!(matches!(missing, scenario::ScenarioError::Io { .. }));
    assert!(
        missing
            .to_string()
            .contains(": error[io]: <root>: cannot read file: "),
        "{missing}"
    );
}

#[test]
fn discover_lists_yaml_files_sorted_and_refuses_missing_paths() {
    let valid = files("valid");
    let mut sorted = valid.clone();
    sorted.sort();
    assert_eq!(valid, sorted);
    assert!(
        valid
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "yaml"))
    );
    let one = fixtures().join("valid/smoke.yaml");
    assert_eq!(
        scenario::discover(std::slice::from_ref(&one)).ok(),
        Some(vec![one])
    );
    assert!(matches!(
        scenario::discover(&[fixtures().join("nowhere")]),
        Err(scenario::DiscoverError::NotFound { .. })
    ));
}

/// Runs a command of the library's CLI from the harness directory, with
/// paths relative to it, and renders its exit code and output.
fn run(
    command: fn(
        &[PathBuf],
        &mut dyn std::io::Write,
        &mut dyn std::io::Write,
    ) -> std::io::Result<orchestrator::exit::Exit>,
    args: &[&str],
) -> String {
    let paths: Vec<PathBuf> = args.iter().map(PathBuf::from).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = command(&paths, &mut out, &mut err).expect("writing to memory works");
    format!(
        "exit {code}\n--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    )
}

#[test]
fn validate_command_output() {
    // Tests run in the package directory.
    let report = run(
        cli::validate,
        &[
            "../fixtures/scenarios/valid",
            "../fixtures/scenarios/invalid/fault-overlaps-end.yaml",
            "../fixtures/scenarios/invalid/override-invalid-config.yaml",
        ],
    );
    insta::assert_snapshot!(report);
    let missing = run(cli::validate, &["../fixtures/scenarios/nowhere.yaml"]);
    insta::assert_snapshot!(missing);
}

#[test]
fn list_command_output() {
    insta::assert_snapshot!(run(cli::list, &["../fixtures/scenarios/valid"]));
    insta::assert_snapshot!(run(
        cli::list,
        &[
            "../fixtures/scenarios/valid/smoke.yaml",
            "../fixtures/scenarios/invalid/two-replicas.yaml"
        ]
    ));
}

#[test]
fn the_binary_exits_as_documented() {
    let gauntlet = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(args)
            .current_dir(fixtures())
            .output()
            .expect("gauntlet runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, stdout) = gauntlet(&["validate", "valid"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        files("valid").len()
    );
    let (code, stdout) = gauntlet(&["validate", "valid/smoke.yaml", "invalid/two-replicas.yaml"]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("ok: valid/smoke.yaml (smoke)"), "{stdout}");
    assert!(
        stdout.contains("invalid/two-replicas.yaml:4:13: error[conflict]: system.replicas: "),
        "{stdout}"
    );
    assert_eq!(gauntlet(&["validate", "invalid"]).0, Some(2));
    assert_eq!(gauntlet(&["validate", "nowhere"]).0, Some(2));
    let (code, stdout) = gauntlet(&["list", "valid"]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.lines().count(), files("valid").len(), "{stdout}");
    // No argument: `scenarios/`, which the fixtures directory does not have.
    assert_eq!(gauntlet(&["list"]).0, Some(2));
}

/// Lists as long as the input limit allows cost one finding each, not one
/// per item (locating a finding walks the tree, so per-item findings would
/// be quadratic).
#[test]
fn huge_lists_are_refused_quickly() {
    let head = "name: huge\ndescription: Huge lists.\nload: {duration: 20s, rate: 10}\n";
    let invariants = format!("{head}invariants:\n{}", "  - no_panics\n".repeat(50_000));
    let params: String = (0..40_000).map(|i| format!("k{i}: 1, ")).collect();
    let params = format!(
        "{head}faults:\n  - {{name: a, at: 1s, for: 1s, target: llm, kind: latency, params: {{{params}}}}}\n"
    );
    let faults = format!(
        "{head}faults:\n{}",
        "  - {name: a, at: 1s, for: 1s, target: llm, kind: partition}\n".repeat(15_000)
    );
    let slos = format!(
        "{head}slo:\n{}",
        "  - {metric: error_rate, max: 2}\n".repeat(25_000)
    );
    for text in [invariants, params, faults, slos] {
        assert!(text.len() < 1024 * 1024, "{} bytes", text.len());
        let started = std::time::Instant::now();
        let outcome = scenario::parse(text.as_bytes(), &fixtures().join("valid/huge.yaml"));
        assert!(outcome.scenario.is_none());
        assert!(
            outcome.diagnostics.len() <= 2,
            "{:#?}",
            &outcome.diagnostics[..3]
        );
        assert_eq!(outcome.diagnostics[0].code, Code::Limit);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

/// Edits applied to a valid file's bytes by the mutation property.
#[derive(Clone, Debug)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Replace { at: usize, byte: u8 },
    DuplicateLine { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    let syntax = prop::sample::select(vec![
        b':', b'-', b'{', b'}', b'[', b']', b'&', b'*', b'!', b'#', b'\n', b' ', b'"', b'\'', b'0',
        b'9', b'a', b'(', b')', b'+', b'|', b'>', 0xff,
    ]);
    prop_oneof![
        (any::<usize>(), 0..40usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), prop::collection::vec(syntax.clone(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), syntax).prop_map(|(at, byte)| Edit::Replace { at, byte }),
        any::<usize>().prop_map(|at| Edit::DuplicateLine { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, edit: &Edit) -> Vec<u8> {
    let len = bytes.len().max(1);
    match edit {
        Edit::Delete { at, len: n } => {
            let at = at % len;
            let end = (at + n).min(bytes.len());
            bytes.drain(at.min(end)..end);
        }
        Edit::Insert { at, bytes: new } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Edit::Replace { at, byte } => {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = *byte;
            }
        }
        Edit::DuplicateLine { at } => {
            let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
            if !lines.is_empty() {
                let line = lines[at % lines.len()].to_vec();
                let start: usize = lines[..at % lines.len()].iter().map(|l| l.len()).sum();
                bytes.splice(start..start, line);
            }
        }
    }
    bytes
}

/// The scenario comes out exactly when there is no error, and every
/// diagnostic is located.
fn assert_consistent(outcome: &scenario::Outcome) {
    assert_eq!(
        outcome.scenario.is_some(),
        !has_errors(&outcome.diagnostics)
    );
    for d in &outcome.diagnostics {
        assert!(d.location.line >= 1 && d.location.column >= 1, "{d:?}");
        assert!(d.severity == Severity::Error || d.severity == Severity::Warning);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let source = fixtures().join("valid/fuzz.yaml");
        assert_consistent(&scenario::parse(&bytes, &source));
    }

    #[test]
    fn mutated_valid_files_never_panic(
        file in prop::sample::select(files("valid")),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let original = std::fs::read(&file).expect("fixture is readable");
        let mutated = edits.iter().fold(original, apply);
        assert_consistent(&scenario::parse(&mutated, &file));
    }
}

/// Every scenario of the suite and every valid fixture, written back as a
/// file (what `gauntlet explore` leaves as `minimal.yaml`), reads back as
/// the same scenario: only the configuration's location and the explore
/// section differ.
#[test]
fn rendered_scenarios_read_back_the_same() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut paths = scenario::discover(&[suite, fixtures().join("valid")]).expect("listed");
    paths.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/explore/retries.yaml"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    for path in paths {
        let original = scenario::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("config.yaml"), &original.system.config_yaml)
            .expect("written");
        let text = scenario::render(&original, "config.yaml");
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &text).expect("written");
        let back = scenario::load_file(&file).unwrap_or_else(|e| {
            panic!(
                "{}: the rendered file is invalid:\n{e}\n{text}",
                path.display()
            )
        });
        let expected = Scenario {
            source: file.clone(),
            explore: None,
            system: scenario::SystemSpec {
                config_base: dir.path().join("config.yaml"),
                ..original.system.clone()
            },
            ..original
        };
        assert_eq!(back, expected, "{}:\n{text}", path.display());
    }
}
