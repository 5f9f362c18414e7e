//! Data-driven tests over fixtures/configs: every invalid fixture's exact
//! diagnostics at each level are snapshotted; every valid one validates clean.

use std::path::{Path, PathBuf};

use orchestrator::config::{self, Level, ValidateOptions};
use orchestrator::yaml::{Code, Severity};
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/configs");
    dir.canonicalize().unwrap_or(dir)
}

/// Validates `path` at every level and renders what a user would see, with the
/// file named relative to fixtures/configs so snapshots do not depend on the checkout.
fn check(path: &Path) -> String {
    let name = path
        .strip_prefix(fixtures())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut out = String::new();
    for level in Level::ALL {
        let outcome = config::validate_file(
            path,
            &ValidateOptions {
                level,
                ..ValidateOptions::default()
            },
        );
        let verdict = if outcome.config.is_some() {
            "valid"
        } else {
            "invalid"
        };
        out.push_str(&format!("--- {}: {verdict}\n", level.as_str()));
        for d in &outcome.diagnostics {
            out.push_str(&format!("{}\n", d.display_with_file(&name)));
        }
    }
    out
}

#[test]
fn invalid_fixtures_report_located_errors() {
    insta::glob!("../../fixtures/configs/invalid", "*.yaml", |path| {
        let report = check(path);
        let strict = config::validate_file(path, &ValidateOptions::default());
        assert!(
            strict.config.is_none(),
            "{} must be invalid under strict:\n{report}",
            path.display()
        );
        assert!(
            strict
                .diagnostics
                .iter()
                .any(|d| d.severity == Severity::Error),
            "{} must have an error:\n{report}",
            path.display()
        );
        insta::assert_snapshot!(report);
    });
}

#[test]
fn valid_fixtures_validate_without_diagnostics_at_every_level() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("valid"))
        .expect("fixtures/configs/valid exists")
        .map(|e| e.expect("readable directory entry").path())
        .collect();
    files.push(fixtures().join("base.yaml"));
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the valid fixtures and base.yaml, found {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        let report = check(file);
        if report
            .lines()
            .any(|l| !l.starts_with("--- ") || l.ends_with("invalid"))
        {
            failures.push(report);
        }
    }
    assert!(
        failures.is_empty(),
        "valid fixtures reported diagnostics:\n{}",
        failures.join("\n")
    );
}

#[test]
fn invalid_fixtures_cover_every_failure_class() {
    let mut codes = std::collections::BTreeSet::new();
    let mut count = 0;
    for entry in
        std::fs::read_dir(fixtures().join("invalid")).expect("fixtures/configs/invalid exists")
    {
        let path = entry.expect("readable directory entry").path();
        count += 1;
        for d in config::validate_file(&path, &ValidateOptions::default()).diagnostics {
            codes.insert(d.code);
        }
    }
    assert!(count >= 25, "at least 25 invalid fixtures, found {count}");
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
        Code::Policy,
        Code::Conflict,
    ];
    let missing: Vec<_> = expected.iter().filter(|c| !codes.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "no invalid fixture produces {missing:?}"
    );
}

#[test]
fn base_config_holds_the_documented_dev_key() {
    let outcome = config::validate_file(&fixtures().join("base.yaml"), &ValidateOptions::default());
    let config = outcome.config.expect("base.yaml is valid");
    let key = config
        .security
        .api_keys
        .iter()
        .find(|k| k.id == "dev")
        .expect("a key with id `dev`");
    let expected: [u8; 32] = Sha256::digest(b"gauntlet-dev-key").into();
    assert_eq!(
        key.sha256, expected,
        "the README documents the plaintext `gauntlet-dev-key`"
    );
    assert_eq!((key.tenant.as_str(), key.role.as_str()), ("dev", "admin"));
    assert_eq!(config.llm.providers[0].name, "primary");
    assert_eq!(
        config.llm.providers[0].base_url.as_str(),
        "http://127.0.0.1:8081/v1"
    );
    assert_eq!(
        config.storage,
        config::StorageConfig::Sqlite {
            path: "data/orchestrator.db".into()
        }
    );
    assert_eq!(
        config.tasks.allowed_tools,
        ["search", "http_get", "summarize"]
    );
}

#[test]
fn levels_differ_as_documented() {
    let public = fixtures().join("invalid/public-listen.yaml");
    let unknown = fixtures().join("invalid/unknown-field.yaml");
    let range = fixtures().join("invalid/retry-attempts-out-of-range.yaml");
    let at = |path: &Path, level| {
        config::validate_file(
            path,
            &ValidateOptions {
                level,
                ..ValidateOptions::default()
            },
        )
    };

    // Policy: an error only under strict.
    assert!(at(&public, Level::Strict).config.is_none());
    let moderate = at(&public, Level::Moderate);
    assert!(moderate.config.is_some());
    assert_eq!(moderate.diagnostics[0].severity, Severity::Warning);

    // Unknown fields: an error only under strict.
    assert!(at(&unknown, Level::Strict).config.is_none());
    assert!(at(&unknown, Level::Moderate).config.is_some());

    // Constraints: errors under strict and moderate; under permissive the default is used.
    assert!(at(&range, Level::Moderate).config.is_none());
    let permissive = at(&range, Level::Permissive);
    let config = permissive
        .config
        .expect("permissive accepts a broken constraint");
    assert_eq!(
        config.llm.providers[0].retry.attempts, 3,
        "the default replaces the out-of-range value"
    );
    assert!(
        permissive.diagnostics[0].message.ends_with("; using 3"),
        "{:?}",
        permissive.diagnostics
    );
}
