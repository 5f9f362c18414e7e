//! The command line's work, separate from argument parsing so that it writes
//! to any output and can be tested in-process.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::config::{self, Level, ValidateOptions};
use crate::exit::Exit;
use crate::yaml::Severity;

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

/// Validates every file and reports. Returns [`Exit::Pass`] when all are valid
/// (warnings allowed) and [`Exit::BadInput`] otherwise.
pub fn config_validate(
    args: &ValidateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Exit> {
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
    Ok(if all_valid {
        Exit::Pass
    } else {
        Exit::BadInput
    })
}

fn plural(n: usize, word: &str) -> String {
    match (n, word.strip_suffix('y')) {
        (1, _) => format!("1 {word}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {word}s"),
    }
}

/// Prints the configuration's JSON Schema.
pub fn config_schema(out: &mut dyn Write) -> io::Result<Exit> {
    serde_json::to_writer_pretty(&mut *out, &config::json_schema())?;
    writeln!(out)?;
    Ok(Exit::Pass)
}

/// Arguments of `audit verify`.
#[derive(Clone, Debug)]
pub struct AuditVerifyArgs {
    /// The database file.
    pub db: PathBuf,
    /// Output format.
    pub format: Format,
}

/// Verifies a database's audit chain offline (read-only; the service may be
/// running). Returns [`Exit::Pass`] when it is intact, [`Exit::CheckFailed`]
/// when an entry does not verify (naming the first), and [`Exit::BadInput`]
/// when the file cannot be read or holds no audit log.
pub fn audit_verify(
    args: &AuditVerifyArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Exit> {
    let verification = match crate::store::verify_audit_file(&args.db) {
        Ok(v) => v,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(Exit::BadInput);
        }
    };
    let name = args.db.display();
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &verification)?;
            writeln!(out)?;
        }
        Format::Text => match (&verification.first_bad_seq, &verification.reason) {
            (Some(seq), reason) => writeln!(
                out,
                "{name}: audit log tampered: entry {seq} does not verify: {} ({} entries read)",
                reason.as_deref().unwrap_or("unknown reason"),
                verification.entries
            )?,
            (None, _) => writeln!(
                out,
                "{name}: audit log intact ({}, head hash {})",
                plural(
                    usize::try_from(verification.entries).unwrap_or(usize::MAX),
                    "entry"
                ),
                verification.head_hash
            )?,
        },
    }
    Ok(if verification.ok {
        Exit::Pass
    } else {
        Exit::CheckFailed
    })
}

/// Arguments of `serve`.
#[derive(Clone, Debug)]
pub struct ServeArgs {
    /// The configuration file.
    pub config: PathBuf,
    /// Overrides `server.listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// Validation level of the configuration.
    pub level: Level,
    /// Seed of the service's random choices.
    pub seed: Option<u64>,
    /// Environment variables: `ORCHESTRATOR__` overrides and `api_key_env` values.
    pub env: Vec<(String, String)>,
}

/// Validates the configuration, then serves until SIGINT or SIGTERM.
/// Returns [`Exit::Pass`] after a graceful shutdown and [`Exit::BadInput`] when
/// the configuration is invalid or the service cannot start.
pub fn serve(args: ServeArgs, err: &mut dyn Write) -> io::Result<Exit> {
    let options = ValidateOptions {
        level: args.level,
        overrides: config::env_overrides(args.env.iter().cloned()),
        ..ValidateOptions::default()
    };
    let name = args.config.display().to_string();
    let outcome = config::validate_file(&args.config, &options);
    for d in &outcome.diagnostics {
        writeln!(err, "{}", d.display_with_file(&name))?;
    }
    let Some(config) = outcome.config else {
        writeln!(err, "error: {name} is invalid; not starting")?;
        return Ok(Exit::BadInput);
    };
    init_logging(config.observability.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            writeln!(err, "error: cannot start the async runtime: {e}")?;
            return Ok(Exit::BadInput);
        }
    };
    let serve_options = crate::ServeOptions {
        listen: args.listen,
        app: crate::AppOptions {
            seed: args.seed,
            env: args.env,
        },
    };
    let result = runtime.block_on(crate::serve(
        config,
        serve_options,
        crate::server::shutdown_signal(),
    ));
    // Blocking releases handed off by dropped requests get a moment to run;
    // anything left is released by crash recovery at the next start.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => Ok(Exit::Pass),
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(Exit::BadInput)
        }
    }
}

/// Logs go to stderr (stdout carries only the `listening on` line), as JSON
/// or text, filtered by `RUST_LOG` (default `info`).
fn init_logging(format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        config::LogFormat::Json => builder.json().with_current_span(true).try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}
