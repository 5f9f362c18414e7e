//! `gauntlet run` refusing bad input, with the real binary: every case exits
//! 2 before anything runs (no scenario is started here; the scenario tests
//! run them), and `gauntlet list` from the workspace root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root, the binary's working directory in every case.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness is inside the workspace")
        .to_path_buf()
}

/// Runs `gauntlet ARGS` in the workspace root, with reports in a temporary
/// directory should anything get as far as writing one.
fn gauntlet(args: &[&str]) -> Output {
    let reports = tempfile::tempdir().expect("a temporary directory");
    Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .current_dir(root())
        .env("GAUNTLET_STATE_DIR", reports.path().join("state"))
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("gauntlet starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one assertion: `gauntlet ARGS` exits 2, prints nothing on stdout
/// (no summary: nothing ran) and says each of `says` on stderr.
#[track_caller]
fn check(args: &[&str], says: &[&str]) -> String {
    let output = gauntlet(args);
    let stderr = text(&output.stderr);
    let shown = format!(
        "gauntlet {args:?}: {}\nstdout:\n{}\nstderr:\n{stderr}",
        output.status,
        text(&output.stdout)
    );
    assert_eq!(output.status.code(), Some(2), "{shown}");
    assert!(output.stdout.is_empty(), "{shown}");
    for s in says {
        assert!(stderr.contains(s), "{shown}\ndoes not say {s:?}");
    }
    stderr
}

#[test]
fn run_refuses_bad_input_before_running_anything() {
    let valid = "scenarios/smoke.yaml";
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["run", "no/such/scenario.yaml"],
            &["no/such/scenario.yaml"],
        ),
        (&["run", valid, "--scale", "0"], &["--scale", "0"]),
        // Taken as a number, not a flag, and refused as one.
        (
            &["run", valid, "--scale", "-1"],
            &["--scale must be a positive number, got -1"],
        ),
        (
            &["run", valid, "--scale=-1"],
            &["--scale must be a positive number, got -1"],
        ),
        (
            &["run", valid, "--scale", "NaN"],
            &["--scale must be a positive number"],
        ),
        (
            &["run", valid, "--backend", "kubernetes"],
            &["kubernetes", "--backend", "local", "docker"],
        ),
    ];
    for (args, says) in cases {
        check(args, says);
    }
}

#[test]
fn run_reports_an_invalid_scenario_with_its_location() {
    let file = "fixtures/scenarios/invalid/bad-duration.yaml";
    let stderr = check(
        &["run", file],
        &[&format!("{file}:"), ": error[", "nothing was run"],
    );
    // FILE:LINE:COL: error[CODE]: ...
    let located = stderr.lines().any(|line| {
        let Some(rest) = line.strip_prefix(&format!("{file}:")) else {
            return false;
        };
        let mut parts = rest.splitn(3, ':');
        let number = |p: Option<&str>| p.is_some_and(|p| p.parse::<u32>().is_ok());
        number(parts.next())
            && number(parts.next())
            && parts.next().is_some_and(|p| p.starts_with(" error["))
    });
    assert!(located, "no FILE:LINE:COL: error[ line in:\n{stderr}");
    // Paths are relative to the working directory; drop the root in case.
    let stderr = stderr.replace(&root().display().to_string(), "[ROOT]");
    insta::assert_snapshot!(stderr);
}

#[test]
fn list_prints_one_line_per_scenario_file() {
    let output = gauntlet(&["list", "scenarios/"]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&output.stderr)
    );
    let mut files: Vec<String> = std::fs::read_dir(root().join("scenarios"))
        .expect("scenarios/ is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| {
            path.file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), files.len(), "{stdout}");
    assert!(!files.is_empty());
    // Each file's scenario is named after it, first on its line.
    let mut names: Vec<&str> = lines
        .iter()
        .map(|line| line.split_whitespace().next().unwrap_or_default())
        .collect();
    names.sort();
    assert_eq!(names, files, "{stdout}");
}
