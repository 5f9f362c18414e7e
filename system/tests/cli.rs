//! The `orchestrator` binary as users run it: exit codes, the one-line
//! diagnostic format, JSON output and the schema.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the binary from the repository root with a clean `ORCHESTRATOR__` environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.args(args).current_dir(root());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ORCHESTRATOR__")) {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("the orchestrator binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn files_in(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .expect("fixture directory exists")
        .map(|e| format!("{dir}/{}", e.expect("entry").file_name().to_string_lossy()))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_fixtures_exit_zero() {
    let files = files_in("fixtures/configs/valid");
    let mut args = vec!["config", "validate"];
    args.extend(files.iter().map(String::as_str));
    let out = run(&args, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "");
    assert_eq!(text(&out.stdout).lines().count(), files.len());
}

#[test]
fn every_invalid_fixture_exits_two_with_well_formed_lines() {
    let line = regex::Regex::new(r"^.+:[0-9]+:[0-9]+: (error|warning)\[[A-Za-z0-9_-]+\]: ")
        .expect("regex");
    let mut problems = Vec::new();
    for file in files_in("fixtures/configs/invalid") {
        let out = run(&["config", "validate", &file], &[]);
        let stderr = text(&out.stderr);
        if out.status.code() != Some(2) {
            problems.push(format!("{file}: exit {:?}", out.status.code()));
        }
        if stderr.is_empty() {
            problems.push(format!("{file}: no diagnostics"));
        }
        for l in stderr.lines().filter(|l| !line.is_match(l)) {
            problems.push(format!("{file}: malformed line {l:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn one_invalid_file_among_valid_ones_fails_the_run() {
    let out = run(
        &[
            "config",
            "validate",
            "fixtures/configs/valid/minimal.yaml",
            "fixtures/configs/invalid/empty.yaml",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(text(&out.stdout), @r"
    fixtures/configs/valid/minimal.yaml: valid (0 errors, 0 warnings)
    fixtures/configs/invalid/empty.yaml: invalid (1 error, 0 warnings)
    ");
}

#[test]
fn warnings_alone_exit_zero() {
    let out = run(
        &[
            "config",
            "validate",
            "--level",
            "moderate",
            "fixtures/configs/invalid/public-listen.yaml",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(": warning[policy]: server.listen: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unreadable_file_exits_two() {
    let out = run(
        &["config", "validate", "fixtures/configs/no-such-file.yaml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(text(&out.stderr), @"fixtures/configs/no-such-file.yaml:1:1: error[io]: <root>: cannot read file: no such file or directory (os error 2)");
}

#[test]
fn environment_overrides_apply_and_are_named() {
    let out = run(
        &["config", "validate", "fixtures/configs/valid/minimal.yaml"],
        &[("ORCHESTRATOR__LLM__PROVIDERS__0__RETRY__ATTEMPTS", "42")],
    );
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(text(&out.stderr), @"fixtures/configs/valid/minimal.yaml:5:7: error[range]: llm.providers[0].retry.attempts: 42 is out of range, expected 1 to 10 (value from environment variable ORCHESTRATOR__LLM__PROVIDERS__0__RETRY__ATTEMPTS)");
}

#[test]
fn json_format_reports_every_diagnostic() {
    let out = run(
        &[
            "config",
            "validate",
            "--format",
            "json",
            "fixtures/configs/invalid/duplicate-key.yaml",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), "");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    insta::assert_json_snapshot!(doc);
}

#[test]
fn bad_arguments_exit_two() {
    let out = run(&["config", "validate", "--level", "lenient", "x.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value 'lenient'"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["config", "validate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn schema_is_json_with_documented_fields() {
    let out = run(&["config", "schema"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    assert_eq!(schema["title"], "Orchestrator configuration");
    assert_eq!(schema["additionalProperties"], false);
    let retry = &schema["$defs"]["RawRetry"]["properties"]["attempts"];
    assert!(
        retry["description"]
            .as_str()
            .is_some_and(|d| d.contains("1 to 10")),
        "field doc comments become descriptions: {retry}"
    );
}

/// A fresh database path of its own under the system's temp directory.
fn fresh_db(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("orchestrator-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("orchestrator.db").display().to_string()
}

fn json_of(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json output")
}

#[test]
fn keys_are_managed_offline_and_every_change_is_audited() {
    let db = fresh_db("keys");
    let keys = |args: &[&str]| {
        let mut all = vec!["keys", "--db", &db, "--format", "json"];
        all.extend_from_slice(args);
        run(&all, &[])
    };
    let created = json_of(&keys(&[
        "create", "--tenant", "acme", "--role", "viewer", "--id", "ci-bot",
    ]));
    assert_eq!(created["id"], "ci-bot");
    assert_eq!(created["state"], "live");
    let key = created["key"].as_str().expect("plaintext shown once");
    assert!(key.starts_with("gk.ci-bot.") && key.len() == "gk.ci-bot.".len() + 64);

    let rotated = json_of(&keys(&["rotate", "ci-bot", "--overlap", "1h"]));
    assert_eq!(rotated["rotated_from"], "ci-bot");
    assert_eq!(rotated["role"], "viewer");
    let successor = rotated["id"].as_str().expect("successor id").to_owned();
    json_of(&keys(&["revoke", &successor]));

    let listed = json_of(&keys(&["list", "--tenant", "acme"]));
    let states: Vec<(String, String)> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| (k["id"].to_string(), k["state"].to_string()))
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(
        states.contains(&("\"ci-bot\"".into(), "\"overlap\"".into())),
        "{states:?}"
    );
    assert!(
        !listed.to_string().contains(key),
        "a listing never holds a secret"
    );

    let audit = run(&["audit", "verify", "--db", &db, "--format", "json"], &[]);
    let audit = json_of(&audit);
    assert_eq!(audit["entries"], 3, "created, rotated, revoked: {audit}");
}

#[test]
fn keys_refuse_bad_arguments_naming_them() {
    let db = fresh_db("keys-bad");
    let cases: [&[&str]; 5] = [
        &["create", "--tenant", "acme", "--role", "root"],
        &[
            "create",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--id",
            "Not.An.Id",
        ],
        &[
            "create",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--expires-in",
            "soon",
        ],
        &["rotate", "nobody"],
        &["revoke", "nobody"],
    ];
    let mut report = String::new();
    for args in cases {
        let mut all = vec!["keys", "--db", &db];
        all.extend_from_slice(args);
        let out = run(&all, &[]);
        report.push_str(&format!(
            "{} -> exit {:?}: {}",
            args.join(" "),
            out.status.code(),
            text(&out.stderr)
        ));
    }
    insta::assert_snapshot!(report);
}
