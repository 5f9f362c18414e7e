//! The program format over fixtures/mock-llm: every invalid program's error
//! is snapshotted (one failure class each, named by JSON path); every valid
//! one parses, round-trips, and installs on a live mock over HTTP.

use std::path::{Path, PathBuf};

use gauntlet::mock_llm::{Limits, MockClient, MockConfig, MockLlm, Program, ProgramError};

fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mock-llm");
    dir.canonicalize().unwrap_or(dir)
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join(dir))
        .unwrap_or_else(|e| panic!("cannot read fixtures/mock-llm/{dir}: {e}"))
        .map(|e| e.expect("readable directory entry").path())
        .collect();
    files.sort();
    files
}

/// Parses one fixture with the default limits.
fn check(path: &Path) -> Result<Program, ProgramError> {
    let text =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Program::from_json(&text, &Limits::default())
}

#[test]
fn invalid_programs_report_their_json_path() {
    insta::glob!("../../fixtures/mock-llm/invalid", "*.json", |path| {
        let error = match check(path) {
            Ok(program) => panic!("{} must be invalid, got {program:?}", path.display()),
            Err(error) => error,
        };
        insta::assert_snapshot!(format!("path: {:?}\n{error}\n", error.path()));
    });
}

#[test]
fn there_are_enough_fixtures_of_each_kind() {
    assert!(files("invalid").len() >= 10, "{:?}", files("invalid"));
    assert!(files("valid").len() >= 5, "{:?}", files("valid"));
}

#[test]
fn valid_programs_parse_and_round_trip() {
    for file in files("valid") {
        let program = check(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let again = Program::from_json(program.to_json().as_bytes(), &Limits::default());
        assert_eq!(again.as_ref(), Ok(&program), "{}", file.display());
    }
}

#[tokio::test]
async fn valid_programs_install_on_a_live_mock() {
    let mock = MockLlm::start(MockConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        ..MockConfig::default()
    })
    .await
    .expect("the mock starts");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let client = MockClient::new(&mock.url()).expect("a valid URL");
    for file in files("valid") {
        let text = std::fs::read(&file).expect("readable fixture");
        let response = http
            .put(format!("{}/_mock/program", mock.url()))
            .header("content-type", "application/json")
            .body(text)
            .send()
            .await
            .expect("the mock answers");
        assert_eq!(response.status(), 200, "{}", file.display());
        let expected = check(&file).expect("valid fixture");
        assert_eq!(mock.program(), expected, "{}", file.display());
        assert_eq!(
            client.program().await.expect("the program is shown"),
            expected,
            "{}",
            file.display()
        );
    }
}

#[test]
fn limits_apply_to_rule_count_and_size() {
    let limits = Limits {
        max_rules: 2,
        max_request_bytes: 200,
        ..Limits::default()
    };
    let three = br#"{"rules": [{"effect": {"kind": "hang"}}, {"effect": {"kind": "hang"}}, {"effect": {"kind": "hang"}}]}"#;
    let error = Program::from_json(three, &limits).expect_err("too many rules");
    assert_eq!(error.to_string(), "rules: 3 rules, over the limit of 2");
    let padded = format!(r#"{{"rules": [], "x": "{}"}}"#, " ".repeat(300));
    let error = Program::from_json(padded.as_bytes(), &limits).expect_err("too large");
    assert_eq!(
        error,
        ProgramError::TooLarge {
            size_bytes: padded.len(),
            limit_bytes: 200
        }
    );
}
