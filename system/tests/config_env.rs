//! Environment overrides: applied before validation, and named by every
//! diagnostic they cause.

use std::path::Path;

use orchestrator::config::{self, Outcome, ValidateOptions, env_overrides};
use orchestrator::yaml::Code;

fn check(fixture: &str, vars: &[(&str, &str)]) -> Outcome {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/configs")
        .join(fixture);
    let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    config::validate_file(
        &path,
        &ValidateOptions {
            overrides: env_overrides(env),
            ..ValidateOptions::default()
        },
    )
}

#[test]
fn overrides_reach_list_items_by_index() {
    let outcome = check(
        "valid/minimal.yaml",
        &[(
            "ORCHESTRATOR__LLM__PROVIDERS__0__BASE_URL",
            "http://127.0.0.1:9999/v1",
        )],
    );
    let config = outcome.config.expect("valid");
    assert_eq!(
        config.llm.providers[0].base_url.as_str(),
        "http://127.0.0.1:9999/v1"
    );
}

#[test]
fn overrides_create_missing_sections() {
    let outcome = check(
        "invalid/missing-section.yaml",
        &[
            ("ORCHESTRATOR__STORAGE__SQLITE__PATH", "/tmp/x.db"),
            ("ORCHESTRATOR__JOBS__WORKERS", "7"),
        ],
    );
    let config = outcome
        .config
        .unwrap_or_else(|| panic!("valid with the override: {:?}", outcome.diagnostics));
    assert_eq!(config.jobs.workers, 7);
}

#[test]
fn variables_without_the_prefix_are_ignored() {
    let outcome = check(
        "valid/minimal.yaml",
        &[("ORCHESTRATOR_JOBS__WORKERS", "0"), ("PATH", "/bin")],
    );
    assert!(outcome.diagnostics.is_empty(), "{:?}", outcome.diagnostics);
}

#[test]
fn an_error_caused_by_an_override_names_the_variable() {
    for (var, value, code, path) in [
        (
            "ORCHESTRATOR__JOBS__WORKERS",
            "0",
            Code::Range,
            "jobs.workers",
        ),
        (
            "ORCHESTRATOR__JOBS__WORKERS",
            "many",
            Code::Type,
            "jobs.workers",
        ),
        (
            "ORCHESTRATOR__SERVER__REQUEST_TIMEOUT",
            "soon",
            Code::Format,
            "server.request_timeout",
        ),
        (
            "ORCHESTRATOR__LLM__PROVIDERS__5__MODEL",
            "x",
            Code::Range,
            "llm.providers",
        ),
        (
            "ORCHESTRATOR__LLM__PROVIDERS__0__NAME__FIRST",
            "x",
            Code::Type,
            "llm.providers[0].name",
        ),
        (
            "ORCHESTRATOR__SERVER__LISTNE",
            "127.0.0.1:1",
            Code::UnknownField,
            "server.listne",
        ),
    ] {
        let outcome = check("valid/minimal.yaml", &[(var, value)]);
        let found = outcome
            .diagnostics
            .iter()
            .find(|d| d.code == code && d.path == path);
        let Some(d) = found else {
            panic!(
                "{var}={value}: expected {code} at {path}, got {:#?}",
                outcome.diagnostics
            );
        };
        assert_eq!(d.env_var.as_deref(), Some(var), "{var}={value}");
        let line = d.display_with_file("minimal.yaml").to_string();
        assert!(
            line.ends_with(&format!("(value from environment variable {var})")),
            "{line}"
        );
    }
}
