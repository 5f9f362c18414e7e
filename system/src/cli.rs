//! The command line's work, separate from argument parsing so that it writes
//! to any output and can be tested in-process.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::config::{self, Level, ValidateOptions};
use crate::yaml::Severity;

/// Exit code: every check passed.
pub const EXIT_OK: u8 = 0;
/// Exit code: a check failed (used by commands that check a running system).
pub const EXIT_CHECK_FAILED: u8 = 1;
/// Exit code: bad input (a file, a configuration, arguments) or an unusable environment.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Output format of `config validate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Diagnostics on stderr, one per line; a summary per file on stdout.
    #[default]
    Text,
    /// One JSON document on stdout with every file and diagnostic.
    Json,
}

/// Arguments of `config validate`.
#[derive(Clone, Debug)]
pub struct ValidateArgs {
    /// Files to validate.
    pub files: Vec<PathBuf>,
    /// Validation level.
    pub level: Level,
    /// Output format.
    pub format: Format,
    /// Environment variables; those starting with `ORCHESTRATOR__` override fields.
    pub env: Vec<(String, String)>,
}

/// Validates every file and reports. Returns [`EXIT_OK`] when all are valid
/// (warnings allowed) and [`EXIT_BAD_INPUT`] otherwise.
pub fn config_validate(
    args: &ValidateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<u8> {
    let options = ValidateOptions {
        level: args.level,
        overrides: config::env_overrides(args.env.iter().cloned()),
        ..ValidateOptions::default()
    };
    let mut all_valid = true;
    let mut reports = Vec::new();
    for file in &args.files {
        let name = file.display().to_string();
        let outcome = config::validate_file(file, &options);
        let errors = outcome
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        let warnings = outcome.diagnostics.len() - errors;
        all_valid &= outcome.config.is_some();
        match args.format {
            Format::Text => {
                for d in &outcome.diagnostics {
                    writeln!(err, "{}", d.display_with_file(&name))?;
                }
                let verdict = if outcome.config.is_some() {
                    "valid"
                } else {
                    "invalid"
                };
                writeln!(
                    out,
                    "{name}: {verdict} ({}, {})",
                    plural(errors, "error"),
                    plural(warnings, "warning")
                )?;
            }
            Format::Json => reports.push(serde_json::json!({
                "file": name,
                "valid": outcome.config.is_some(),
                "diagnostics": outcome.diagnostics,
            })),
        }
    }
    if args.format == Format::Json {
        let doc = serde_json::json!({ "level": args.level.as_str(), "files": reports });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    }
    Ok(if all_valid { EXIT_OK } else { EXIT_BAD_INPUT })
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Prints the configuration's JSON Schema.
pub fn config_schema(out: &mut dyn Write) -> io::Result<u8> {
    serde_json::to_writer_pretty(&mut *out, &config::json_schema())?;
    writeln!(out)?;
    Ok(EXIT_OK)
}
