//! The mutant catalogue stays usable: every patch in `fixtures/mutants/`
//! still applies to the tree (a stale mutant breaks nothing, so it proves
//! nothing), and the README lists every one with the check that catches it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[test]
fn every_mutant_applies_and_is_listed() {
    let dir = root().join("fixtures/mutants");
    let readme =
        std::fs::read_to_string(dir.join("README.md")).expect("fixtures/mutants/README.md");
    let mut patches: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/mutants")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    assert!(patches.len() >= 3, "{patches:?}");
    // `git apply --check` needs a work tree; outside one (an unpacked
    // tarball) the check cannot be made, which CI never is.
    let in_git = Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(root())
        .output()
        .is_ok_and(|o| o.status.success());
    if !in_git {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true runs in a git checkout"
        );
        eprintln!("not checked: the workspace is not a git work tree");
    }
    let mut stale = Vec::new();
    for patch in &patches {
        let name = patch
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not listed in fixtures/mutants/README.md"
        );
        if in_git {
            let output = Command::new("git")
                .arg("apply")
                .arg("--check")
                .arg(patch)
                .current_dir(root())
                .output()
                .expect("git runs");
            if !output.status.success() {
                stale.push(format!(
                    "{name}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "mutants that no longer apply:\n{}",
        stale.join("\n")
    );
}
