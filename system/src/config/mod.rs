//! The orchestrator's configuration: YAML in, a typed `Config` out.
//!
//! The pipeline, each step collecting diagnostics rather than stopping:
//! bytes → [`crate::yaml::parse`] (bounded, located tree) → environment
//! overrides → decode into [`raw::RawConfig`] → [`validate`] into [`Config`].

mod arbitrary;
mod model;
pub mod raw;
mod units;
mod validate;

use std::path::Path;

pub use model::*;
pub use units::{format_duration, format_size, parse_duration, parse_size};

use crate::yaml::{self, Code, DecodeOptions, Diagnostic, Limits, Location, Override, Severity};
use raw::RawConfig;

/// How demanding validation is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Level {
    /// Unknown fields are errors; every constraint and safety policy is enforced.
    #[default]
    Strict,
    /// Unknown fields and safety policies are warnings; constraints are enforced.
    Moderate,
    /// Only syntax, type and format errors; a broken constraint is a warning and its
    /// default is used instead.
    Permissive,
}

impl Level {
    /// Every level, strictest first.
    pub const ALL: [Level; 3] = [Level::Strict, Level::Moderate, Level::Permissive];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Strict => "strict",
            Level::Moderate => "moderate",
            Level::Permissive => "permissive",
        }
    }
}

/// The prefix of environment overrides: `ORCHESTRATOR__SERVER__LISTEN=127.0.0.1:9000`.
pub const ENV_PREFIX: &str = "ORCHESTRATOR__";

/// Most diagnostics reported for one file; the rest are counted in a final one.
pub const MAX_DIAGNOSTICS: usize = 100;

/// Options for [`validate`].
#[derive(Clone, Debug, Default)]
pub struct ValidateOptions {
    /// How demanding validation is.
    pub level: Level,
    /// Overrides applied to the document before validation, usually [`env_overrides`].
    pub overrides: Vec<Override>,
    /// Parser limits.
    pub limits: Limits,
}

/// What validation found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The typed configuration, present exactly when there is no error.
    pub config: Option<Config>,
    /// Every finding, ordered by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Outcome {
    fn failed(diagnostic: Diagnostic) -> Self {
        Outcome {
            config: None,
            diagnostics: vec![diagnostic],
        }
    }
}

/// Parses and validates a configuration. Never panics; bounded in time and
/// memory by `options.limits`.
pub fn validate(bytes: &[u8], options: &ValidateOptions) -> Outcome {
    let mut doc = match yaml::parse(bytes, options.limits) {
        Ok(doc) => doc,
        Err(diagnostic) => return Outcome::failed(diagnostic),
    };
    let mut diagnostics = std::mem::take(&mut doc.diagnostics);
    yaml::apply_overrides(&mut doc, &options.overrides, &mut diagnostics);
    if doc.root.is_none() {
        diagnostics.push(Diagnostic {
            severity: Severity::Error,
            code: Code::Empty,
            location: Location::START,
            path: String::new(),
            message: "the file holds no configuration; expected a mapping with at least `llm` and `storage`"
                .to_owned(),
            env_var: None,
        });
        return finish(None, diagnostics);
    }
    let unknown_fields = if options.level == Level::Strict {
        Severity::Error
    } else {
        Severity::Warning
    };
    let mut failed = Vec::new();
    let raw: Option<RawConfig> = yaml::decode(
        &mut doc,
        DecodeOptions { unknown_fields },
        &mut diagnostics,
        &mut failed,
    );
    let Some(raw) = raw else {
        return finish(None, diagnostics);
    };
    let mut validator = validate::Validator::new(options.level, doc.root.as_ref(), &failed);
    let config = validator.config(&raw);
    diagnostics.append(&mut validator.diagnostics);
    finish(Some(config), diagnostics)
}

fn finish(config: Option<Config>, mut diagnostics: Vec<Diagnostic>) -> Outcome {
    diagnostics.sort_by(|a, b| (a.location, &a.path).cmp(&(b.location, &b.path)));
    yaml::cap(&mut diagnostics, MAX_DIAGNOSTICS);
    let config = config.filter(|_| !yaml::has_errors(&diagnostics));
    Outcome {
        config,
        diagnostics,
    }
}

/// Reads and validates a file. An unreadable file yields one `io` error.
pub fn validate_file(path: &Path, options: &ValidateOptions) -> Outcome {
    match std::fs::read(path) {
        Ok(bytes) => validate(&bytes, options),
        Err(e) => Outcome::failed(Diagnostic {
            severity: Severity::Error,
            code: Code::Io,
            location: Location::START,
            path: String::new(),
            message: format!("cannot read file: {}", e.to_string().to_lowercase()),
            env_var: None,
        }),
    }
}

/// The overrides among environment variables: `ORCHESTRATOR__A__B__0__C=value`
/// sets `a.b[0].c`. Segments are lowercased; variables are applied in name order.
pub fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut overrides: Vec<Override> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if segments.iter().any(String::is_empty) {
                return None;
            }
            Some(Override {
                source: name,
                segments,
                value,
            })
        })
        .collect();
    overrides.sort_by(|a, b| a.source.cmp(&b.source));
    overrides
}

/// The JSON Schema of the configuration file.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawConfig)).unwrap_or_default()
}

impl Config {
    /// The raw form that validates back to this configuration.
    pub fn to_raw(&self) -> RawConfig {
        model::to_raw(self)
    }

    /// This configuration as YAML that validates back to it.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(&self.to_raw()).unwrap_or_default()
    }
}

/// Fuzzing and property-test entry points, shared by `fuzz/` and the corpus replay tests
/// so that a committed corpus file checks exactly what the fuzzer checked.
pub mod check {
    use super::*;

    /// Bytes through parsing and validation at every level. Panics (the fuzzer's
    /// signal) if a level returns a config together with an error, or no config
    /// and no error.
    pub fn config_bytes(bytes: &[u8]) {
        for level in Level::ALL {
            let outcome = validate(
                bytes,
                &ValidateOptions {
                    level,
                    ..ValidateOptions::default()
                },
            );
            assert_eq!(
                outcome.config.is_some(),
                !yaml::has_errors(&outcome.diagnostics),
                "a config comes out exactly when there is no error"
            );
        }
    }

    /// A typed config through YAML and back, at every level: it must validate
    /// with no diagnostics to an equal config.
    pub fn config_roundtrip(config: &Config) {
        let text = config.to_yaml();
        for level in Level::ALL {
            let outcome = validate(
                text.as_bytes(),
                &ValidateOptions {
                    level,
                    ..ValidateOptions::default()
                },
            );
            assert!(
                outcome.diagnostics.is_empty(),
                "{level:?}: unexpected diagnostics {:#?}\n{text}",
                outcome.diagnostics
            );
            assert_eq!(
                outcome.config.as_ref(),
                Some(config),
                "{level:?}: round trip changed the config\n{text}"
            );
        }
    }
}
