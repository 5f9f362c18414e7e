//! Scenarios: the YAML battle tests `gauntlet run` executes, parsed with the
//! orchestrator's YAML front end (same limits, same located diagnostics) and
//! validated into [`Scenario`]. The format is documented in `FORMAT.md`.
//!
//! The pipeline, each step collecting diagnostics rather than stopping:
//! bytes → [`orchestrator::yaml::parse`] (bounded, located tree) → decode
//! into raw structs (raw.rs) → validate (validate.rs), which loads the base
//! configuration, merges the overrides and validates the result with the
//! orchestrator's own rules (config.rs).

mod config;
mod contract;
mod explore;
pub mod model;
mod raw;
mod render;
mod validate;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use orchestrator::config::MAX_DIAGNOSTICS;
use orchestrator::yaml::{
    self, Code, DecodeOptions, Diagnostic, Limits, Location, Severity, has_errors,
};

pub use contract::{Contract, Lockout};
pub use explore::{MAX_EXPLORE_FAULTS, MAX_SPACE, instantiate, schedule_checks};
pub use model::*;
pub use render::render;
pub use validate::{
    MAX_ATTACK_GUESSES, MAX_DESCRIPTION_BYTES, MAX_FAULTS, MAX_IN_FLIGHT, MAX_INVARIANTS,
    MAX_LIST_ITEMS, MAX_LOAD_DURATION, MAX_MIX_WEIGHT, MAX_NAME_BYTES, MAX_OOM_LIMIT_BYTES,
    MAX_PARAMS, MAX_RATE_RPS, MAX_SLOS, MAX_STAGES, MAX_TENANTS, MAX_THROUGHPUT_RPS, MAX_TOKENS,
    MAX_WAIT, METRICS,
};

use raw::RawScenario;

/// The most files [`discover`] returns from one directory.
pub const MAX_FILES_PER_DIR: usize = 10_000;

/// What parsing found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The scenario, present exactly when no diagnostic is an error.
    pub scenario: Option<Scenario>,
    /// Every finding, ordered by position.
    pub diagnostics: Vec<Diagnostic>,
}

/// Why a scenario file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{}:1:1: error[io]: <root>: cannot read file: {}", path.display(), lowercase(source))]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a valid scenario; every finding, one per line.
    #[error("{}", render_diagnostics(&path.display().to_string(), diagnostics))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every finding, ordered by position, at least one of them an error.
        diagnostics: Vec<Diagnostic>,
    },
}

impl ScenarioError {
    /// The findings: the diagnostics, or one `io` error for an unreadable file.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            ScenarioError::Io { source, .. } => vec![Diagnostic {
                severity: Severity::Error,
                code: Code::Io,
                location: Location::START,
                path: String::new(),
                message: format!("cannot read file: {}", lowercase(source)),
                env_var: None,
            }],
            ScenarioError::Invalid { diagnostics, .. } => diagnostics.clone(),
        }
    }
}

/// Why [`discover`] could not list scenario files.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A path given does not exist.
    #[error("{}: no such file or directory", path.display())]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// A directory could not be listed.
    #[error("cannot list {}: {}", path.display(), lowercase(source))]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A directory holds more scenario files than [`MAX_FILES_PER_DIR`].
    #[error("{} holds more than {MAX_FILES_PER_DIR} scenario files", path.display())]
    TooMany {
        /// The directory.
        path: PathBuf,
    },
}

fn lowercase(e: &std::io::Error) -> String {
    e.to_string().to_lowercase()
}

/// Renders diagnostics as `FILE:LINE:COL: error[CODE]: path: message`, one per line.
pub fn render_diagnostics(file: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{}", d.display_with_file(file));
    }
    out
}

/// Reads and validates a scenario file.
pub fn load_file(path: &Path) -> Result<Scenario, ScenarioError> {
    let bytes = read_limited(path).map_err(|source| ScenarioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let outcome = parse(&bytes, path);
    outcome.scenario.ok_or_else(|| ScenarioError::Invalid {
        path: path.to_path_buf(),
        diagnostics: outcome.diagnostics,
    })
}

/// Reads and validates a scenario file, keeping warnings (which
/// [`load_file`] drops when the file is valid). An unreadable file yields
/// one `io` error.
pub fn parse_file(path: &Path) -> Outcome {
    match read_limited(path) {
        Ok(bytes) => parse(&bytes, path),
        Err(source) => Outcome {
            scenario: None,
            diagnostics: ScenarioError::Io {
                path: path.to_path_buf(),
                source,
            }
            .diagnostics(),
        },
    }
}

/// Reads at most one byte past the parser's input limit, so that an
/// oversized file is reported without being read whole.
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let limit = Limits::default().max_input_bytes;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses and validates scenario text read from `source` (which locates the
/// base configuration: `config: base` is looked up from its directory up).
/// Never panics; bounded in time and memory by the YAML front end's limits.
pub fn parse(bytes: &[u8], source: &Path) -> Outcome {
    let mut doc = match yaml::parse(bytes, Limits::default()) {
        Ok(doc) => doc,
        Err(diagnostic) => return finish(None, vec![diagnostic]),
    };
    let mut diagnostics = std::mem::take(&mut doc.diagnostics);
    if doc.root.is_none() {
        diagnostics.push(Diagnostic {
            severity: Severity::Error,
            code: Code::Empty,
            location: Location::START,
            path: String::new(),
            message: "the file holds no scenario; expected a mapping with at least `name`, `description` and `load`"
                .to_owned(),
            env_var: None,
        });
        return finish(None, diagnostics);
    }
    let mut failed = Vec::new();
    let raw: Option<RawScenario> = yaml::decode(
        &mut doc,
        DecodeOptions {
            unknown_fields: Severity::Error,
        },
        &mut diagnostics,
        &mut failed,
    );
    let Some(raw) = raw else {
        return finish(None, diagnostics);
    };
    let mut validator = validate::Validator::new(source, doc.root.as_ref(), &failed);
    let scenario = validator.scenario(&raw);
    diagnostics.append(&mut validator.diagnostics);
    finish(scenario, diagnostics)
}

fn finish(scenario: Option<Scenario>, mut diagnostics: Vec<Diagnostic>) -> Outcome {
    let misspelt = misspelt_fields(&diagnostics);
    diagnostics.retain(|d| !(d.code == Code::MissingField && misspelt.contains(&d.path)));
    diagnostics.sort_by(|a, b| (a.location, &a.path).cmp(&(b.location, &b.path)));
    diagnostics.dedup();
    yaml::cap(&mut diagnostics, MAX_DIAGNOSTICS);
    let scenario = scenario.filter(|_| !has_errors(&diagnostics));
    Outcome {
        scenario,
        diagnostics,
    }
}

/// The paths of fields that an unknown field's suggestion names (`descripton`
/// → `description`): their missing-field errors would repeat one mistake.
fn misspelt_fields(diagnostics: &[Diagnostic]) -> std::collections::HashSet<String> {
    diagnostics
        .iter()
        .filter(|d| d.code == Code::UnknownField)
        .filter_map(|d| {
            let field = d
                .message
                .rsplit_once("did you mean `")?
                .1
                .strip_suffix("`?")?;
            // The unknown key is the path's last segment; its sibling is the field.
            let parent = match d.path.rfind(['.', '[']) {
                Some(i) => &d.path[..i],
                None => "",
            };
            Some(yaml::child_path(parent, field))
        })
        .collect()
}

/// The scenario files among `paths`: a directory stands for its `*.yaml`
/// files (not recursively), sorted by name; a file stands for itself. A path
/// that does not exist is an error.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DiscoverError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| DiscoverError::Io {
                path: path.clone(),
                source,
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| DiscoverError::Io {
                    path: path.clone(),
                    source,
                })?;
                let file = entry.path();
                if file.extension().is_some_and(|e| e == "yaml") && file.is_file() {
                    if found.len() == MAX_FILES_PER_DIR {
                        return Err(DiscoverError::TooMany { path: path.clone() });
                    }
                    found.push(file);
                }
            }
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(DiscoverError::NotFound { path: path.clone() });
        }
    }
    Ok(files)
}

/// The check the `scenario_yaml` fuzz target runs, and that
/// `harness/tests/fuzz_corpus.rs` replays over the committed corpus on
/// stable Rust.
pub mod check {
    use std::path::Path;

    /// Any bytes as a scenario file: parsing never panics, every diagnostic
    /// is located (1-based line and column), and a scenario comes out exactly
    /// when no diagnostic is an error. The source names a file in the current
    /// directory, so `config: base` is looked up from there.
    pub fn scenario_bytes(data: &[u8]) {
        let outcome = super::parse(data, Path::new("fuzz.yaml"));
        for d in &outcome.diagnostics {
            assert!(
                d.location.line >= 1 && d.location.column >= 1,
                "unlocated diagnostic: {d:?}"
            );
        }
        assert_eq!(
            outcome.scenario.is_some(),
            !orchestrator::yaml::has_errors(&outcome.diagnostics),
            "a scenario must come out exactly when there is no error: {:?}",
            outcome.diagnostics
        );
        if let Some(s) = &outcome.scenario {
            assert!(
                s.faults.windows(2).all(|w| w[0].at <= w[1].at),
                "faults must be sorted by start"
            );
            assert!(s.faults.iter().all(|f| f.end() <= s.load.duration()));
        }
    }
}
