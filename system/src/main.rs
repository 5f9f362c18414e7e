//! `orchestrator`: the service and its tools.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orchestrator::cli::{
    self, AuditVerifyArgs, Format, KeysAction, KeysArgs, ServeArgs, ValidateArgs,
};
use orchestrator::config::Level;

/// The hardened LLM agent orchestration service that Gauntlet battle-tests.
#[derive(Parser)]
#[command(name = "orchestrator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service. Prints `listening on http://ADDR` on stdout when ready;
    /// stops gracefully on SIGINT or SIGTERM and exits 0. Exits 2 when the
    /// configuration is invalid or the service cannot start.
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// How demanding configuration validation is.
        #[arg(long, value_enum, default_value_t = Level::Strict)]
        level: Level,
        /// Seed of the service's random choices (retry jitter), for replays.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Check configuration files and print their schema.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage issued API keys on a database the service is not running on
    /// (while it runs, use its /v1/keys API). Every change is audited with
    /// actor `cli`. Exits 0 when done, 2 for a bad argument, an unknown key
    /// or a database that cannot be opened.
    Keys {
        /// The orchestrator's SQLite database (`storage.sqlite.path`).
        #[arg(long, global = true)]
        db: Option<PathBuf>,
        /// The service's configuration, for its roles and `security.keys`
        /// (the built-in roles and the defaults without it).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Issue a key; its plaintext is printed this once.
    Create {
        /// The tenant it acts for.
        #[arg(long)]
        tenant: String,
        /// Its role.
        #[arg(long)]
        role: String,
        /// Its id (1 to 64 of a-z, 0-9, `_`, `-`); random when absent.
        #[arg(long)]
        id: Option<String>,
        /// How long it works, like `2160h` (90 days); forever when absent.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Issue a key's successor; the old key keeps working for the overlap.
    Rotate {
        /// The key's id.
        id: String,
        /// How long the old key keeps working, like `1h` (up to 168h); the
        /// configuration's `security.keys.rotation_overlap` when absent.
        #[arg(long)]
        overlap: Option<String>,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key's id.
        id: String,
    },
    /// List issued keys, newest first (never a secret).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of a database's audit log, offline and read-only
    /// (the service may keep running). Exits 0 when intact, 1 when an entry
    /// was altered, removed or reordered (the first one is named), 2 when the
    /// file cannot be read or has no audit log.
    Verify {
        /// The orchestrator's SQLite database (`storage.sqlite.path`).
        #[arg(long)]
        db: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate configuration files. Exits 0 when all are valid (warnings allowed),
    /// 2 when any is invalid or unreadable. `ORCHESTRATOR__SECTION__FIELD=value`
    /// environment variables override fields before validation.
    Validate {
        /// The files to validate.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// How demanding validation is.
        #[arg(long, value_enum, default_value_t = Level::Strict)]
        level: Level,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the JSON Schema of the configuration file.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let stderr = io::stderr();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            level,
            seed,
        } => cli::serve(
            ServeArgs {
                config,
                listen,
                level,
                seed,
                env: std::env::vars().collect(),
            },
            // Not a lock: the service's log writers need stderr too.
            &mut io::stderr(),
        ),
        Command::Config {
            command:
                ConfigCommand::Validate {
                    files,
                    level,
                    format,
                },
        } => {
            let args = ValidateArgs {
                files,
                level,
                format,
                env: std::env::vars().collect(),
            };
            cli::config_validate(&args, &mut stdout.lock(), &mut stderr.lock())
        }
        Command::Config {
            command: ConfigCommand::Schema,
        } => cli::config_schema(&mut stdout.lock()),
        Command::Audit {
            command: AuditCommand::Verify { db, format },
        } => cli::audit_verify(
            &AuditVerifyArgs { db, format },
            &mut stdout.lock(),
            &mut stderr.lock(),
        ),
        Command::Keys {
            db,
            config,
            format,
            command,
        } => {
            let action = match command {
                KeysCommand::Create {
                    tenant,
                    role,
                    id,
                    expires_in,
                } => KeysAction::Create {
                    tenant,
                    role,
                    id,
                    expires_in,
                },
                KeysCommand::Rotate { id, overlap } => KeysAction::Rotate { id, overlap },
                KeysCommand::Revoke { id } => KeysAction::Revoke { id },
                KeysCommand::List { tenant } => KeysAction::List { tenant },
            };
            match db {
                Some(db) => cli::keys(
                    &KeysArgs {
                        db,
                        config,
                        format,
                        action,
                    },
                    &mut stdout.lock(),
                    &mut stderr.lock(),
                ),
                None => {
                    let _ = writeln!(
                        stderr.lock(),
                        "error: --db PATH is required: the orchestrator's database (storage.sqlite.path)"
                    );
                    Ok(orchestrator::exit::Exit::BadInput)
                }
            }
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::from(orchestrator::exit::Exit::Pass)
        }
        Err(e) => {
            let _ = writeln!(stderr.lock(), "error: cannot write output: {e}");
            ExitCode::from(orchestrator::exit::Exit::BadInput)
        }
    }
}
