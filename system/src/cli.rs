//! The command line's work, separate from argument parsing so that it writes
//! to any output and can be tested in-process.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let lookup = |var: &str| {
        args.env
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
    };
    let redactor = match crate::pii::Redactor::new(&config.security.pii_redaction, lookup) {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            writeln!(err, "error: {e}; not starting")?;
            return Ok(Exit::BadInput);
        }
    };
    init_logging(config.observability.log_format, redactor.clone());
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
            redactor: Some(redactor),
            resolver: None,
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
/// or text, filtered by `RUST_LOG` (default `info`), every line through the
/// PII redactor. Colour codes are off so that they cannot split a value.
fn init_logging(format: config::LogFormat, redactor: std::sync::Arc<crate::pii::Redactor>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(crate::pii::RedactedStderr(redactor));
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        config::LogFormat::Json => builder.json().with_current_span(true).try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

/// What `orchestrator keys` does.
#[derive(Clone, Debug)]
pub enum KeysAction {
    /// Issue a key.
    Create {
        /// Its tenant.
        tenant: String,
        /// Its role.
        role: String,
        /// Its id; a random one when absent.
        id: Option<String>,
        /// How long it works, like `2160h`.
        expires_in: Option<String>,
    },
    /// Rotate a key.
    Rotate {
        /// The key.
        id: String,
        /// How long the old key keeps working; the configuration's
        /// `security.keys.rotation_overlap` (or its default) when absent.
        overlap: Option<String>,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key.
        id: String,
    },
    /// List issued keys.
    List {
        /// Only this tenant's.
        tenant: Option<String>,
    },
}

/// Arguments of `orchestrator keys`.
#[derive(Clone, Debug)]
pub struct KeysArgs {
    /// The database file.
    pub db: PathBuf,
    /// The service's configuration, for its roles and `security.keys`; the
    /// built-in roles and the defaults without it.
    pub config: Option<PathBuf>,
    /// Output format.
    pub format: Format,
    /// What to do.
    pub action: KeysAction,
}

/// The actor `orchestrator keys` writes in the audit log.
pub const CLI_ACTOR: &str = "cli";

/// Manages issued keys on a database the service is not running on (the
/// store's lock refuses a running one: use the HTTP API then). Returns
/// [`Exit::Pass`] when done and [`Exit::BadInput`] for a bad argument, an
/// unknown key, or a database that cannot be opened.
pub fn keys(args: &KeysArgs, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<Exit> {
    match run_keys(args, out) {
        Ok(result) => result.map(|()| Exit::Pass),
        Err(message) => {
            writeln!(err, "error: {message}")?;
            Ok(Exit::BadInput)
        }
    }
}

/// The work of [`keys`]: `Err` is a message for stderr, `Ok(Err)` an
/// output failure.
fn run_keys(args: &KeysArgs, out: &mut dyn Write) -> Result<io::Result<()>, String> {
    use crate::auth::{generate_key, unix_ms, valid_key_id};
    use crate::store::{Issue, NewKey, Revocation, Rotation, Store, StoreError, StoreOptions};

    let security = match &args.config {
        Some(path) => {
            let outcome = config::validate_file(path, &ValidateOptions::default());
            match outcome.config {
                Some(c) => Some(c.security),
                None => {
                    let first = outcome
                        .diagnostics
                        .iter()
                        .find(|d| d.severity == Severity::Error)
                        .map(|d| d.display_with_file(&path.display().to_string()).to_string())
                        .unwrap_or_default();
                    return Err(format!("{} is invalid: {first}", path.display()));
                }
            }
        }
        None => None,
    };
    let roles: Vec<String> = match &security {
        Some(s) => crate::roles::resolve(s).into_keys().collect(),
        None => crate::roles::BUILTIN
            .iter()
            .map(|r| r.name.to_owned())
            .collect(),
    };
    let bootstrap: Vec<String> = security
        .iter()
        .flat_map(|s| s.api_keys.iter().map(|k| k.id.clone()))
        .collect();
    let policy = security
        .as_ref()
        .map(|s| s.keys.clone())
        .unwrap_or_default();
    let store = Store::open(&args.db, &StoreOptions::offline()).map_err(|e| match e {
        StoreError::Locked { .. } => {
            format!("{e}; while the service runs, manage keys with its /v1/keys API")
        }
        e => e.to_string(),
    })?;
    let now = SystemTime::now();
    let now_ms = unix_ms(now);
    let duration_ms = |field: &str, text: &str, max: Duration| -> Result<i64, String> {
        let d = config::parse_duration(text).map_err(|e| format!("{field}: {e}"))?;
        if d.is_zero() || d > max {
            return Err(format!(
                "{field}: `{text}` must be greater than zero and at most {}",
                config::format_duration(max)
            ));
        }
        Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    let written = match &args.action {
        KeysAction::Create {
            tenant,
            role,
            id,
            expires_in,
        } => {
            if !roles.contains(role) {
                return Err(format!(
                    "--role: unknown role `{role}`; known roles: {}",
                    roles.join(", ")
                ));
            }
            if tenant.is_empty() || tenant.len() > 128 {
                return Err("--tenant: expected 1 to 128 characters".to_owned());
            }
            if let Some(id) = id {
                if !valid_key_id(id) {
                    return Err(format!(
                        "--id: `{id}` is not a key id: 1 to 64 of a-z, 0-9, `_` and `-`"
                    ));
                }
                if bootstrap.contains(id) {
                    return Err(format!(
                        "--id: {id} is a bootstrap key of the configuration"
                    ));
                }
            }
            let expires_ms = match expires_in {
                Some(text) => {
                    Some(now_ms + duration_ms("--expires-in", text, crate::server::MAX_EXPIRES_IN)?)
                }
                None => None,
            };
            let (id, plaintext, sha256) = generate_key(id.as_deref());
            let new = NewKey {
                id: id.clone(),
                tenant: tenant.clone(),
                role: role.clone(),
                sha256,
                expires_ms,
            };
            match store
                .create_key(&new, CLI_ACTOR, policy.max_keys, now_ms)
                .map_err(|e| e.to_string())?
            {
                Issue::Created(record) => show_key(
                    out,
                    args.format,
                    &record,
                    now_ms,
                    &plaintext,
                    &format!("created key {id} for tenant {tenant} (role {role})"),
                ),
                Issue::IdTaken => return Err(format!("--id: a key with id {id} exists already")),
                Issue::Full { max } => {
                    return Err(format!(
                        "{max} issued keys are live already (security.keys.max_keys); revoke one first"
                    ));
                }
            }
        }
        KeysAction::Rotate { id, overlap } => {
            let overlap_ms = match overlap {
                Some(text) => duration_ms("--overlap", text, Duration::from_secs(7 * 86_400))?,
                None => i64::try_from(policy.rotation_overlap.as_millis()).unwrap_or(i64::MAX),
            };
            let (new_id, plaintext, sha256) = generate_key(None);
            let successor = NewKey {
                id: new_id.clone(),
                tenant: String::new(),
                role: String::new(),
                sha256,
                expires_ms: None,
            };
            match store
                .rotate_key(
                    id,
                    &successor,
                    overlap_ms,
                    CLI_ACTOR,
                    policy.max_keys,
                    now_ms,
                )
                .map_err(|e| e.to_string())?
            {
                Rotation::Rotated { old, new } => show_key(
                    out,
                    args.format,
                    &new,
                    now_ms,
                    &plaintext,
                    &format!(
                        "rotated key {id}: {new_id} works now, {id} until {}",
                        format_ms(old.overlap_until_ms.unwrap_or(now_ms))
                    ),
                ),
                Rotation::NotFound => return Err(no_key(id, &bootstrap)),
                Rotation::NotLive(record) => {
                    return Err(format!(
                        "key {id} is {}; only a live key that was not rotated yet can be rotated",
                        record.state(now_ms)
                    ));
                }
                Rotation::IdTaken => {
                    return Err(format!("the new id {new_id} is taken; run again"));
                }
                Rotation::Full { max } => {
                    return Err(format!(
                        "{max} issued keys are live already (security.keys.max_keys); revoke one first"
                    ));
                }
            }
        }
        KeysAction::Revoke { id } => {
            match store
                .revoke_key(id, CLI_ACTOR, now_ms)
                .map_err(|e| e.to_string())?
            {
                Revocation::Revoked(record) | Revocation::AlreadyRevoked(record) => {
                    match args.format {
                        Format::Json => write_json(out, &record.to_json(now_ms)),
                        Format::Text => writeln!(
                            out,
                            "revoked key {id} (tenant {}, role {})",
                            record.tenant, record.role
                        ),
                    }
                }
                Revocation::NotFound => return Err(no_key(id, &bootstrap)),
            }
        }
        KeysAction::List { tenant } => {
            let records = store
                .keys(tenant.as_deref(), crate::store::MAX_KEY_PAGE)
                .map_err(|e| e.to_string())?;
            match args.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({
                        "keys": records.iter().map(|r| r.to_json(now_ms)).collect::<Vec<_>>()
                    }),
                ),
                Format::Text => list_keys(out, &records, now_ms),
            }
        }
    };
    Ok(written)
}

fn no_key(id: &str, bootstrap: &[String]) -> String {
    if bootstrap.iter().any(|b| b == id) {
        format!("key {id} is a bootstrap key of security.api_keys: change it in the configuration")
    } else {
        format!("no issued key has id {id}")
    }
}

fn show_key(
    out: &mut dyn Write,
    format: Format,
    record: &crate::store::KeyRecord,
    now_ms: i64,
    plaintext: &str,
    summary: &str,
) -> io::Result<()> {
    match format {
        Format::Json => {
            let mut body = record.to_json(now_ms);
            body["key"] = serde_json::json!(plaintext);
            write_json(out, &body)
        }
        Format::Text => {
            writeln!(out, "{summary}")?;
            writeln!(out, "key: {plaintext}")?;
            writeln!(
                out,
                "the key is shown this once: only its SHA-256 is stored"
            )
        }
    }
}

fn list_keys(
    out: &mut dyn Write,
    records: &[crate::store::KeyRecord],
    now_ms: i64,
) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<16} {:<12} {:<8} {:<20} {:<20} last used",
        "id", "tenant", "role", "state", "created", "expires"
    )?;
    for r in records {
        writeln!(
            out,
            "{:<24} {:<16} {:<12} {:<8} {:<20} {:<20} {}",
            r.id,
            r.tenant,
            r.role,
            r.state(now_ms),
            format_ms(r.created_ms),
            r.expires_ms.map_or_else(|| "never".to_owned(), format_ms),
            r.last_used_ms.map_or_else(|| "never".to_owned(), format_ms),
        )?;
    }
    writeln!(out, "{}", plural(records.len(), "key"))
}

/// Unix milliseconds as RFC 3339 to the second, UTC.
fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn write_json(out: &mut dyn Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}
