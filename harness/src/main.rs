//! `gauntlet`: the harness's command line. Argument parsing and exit codes live
//! here; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gauntlet::mock_llm::{self, MockLlm};
use gauntlet::proxy::{self, ProxyServer};

/// Chaos and property-testing harness for a hardened LLM agent orchestration
/// system. Exit codes: 0 pass, 1 a check failed, 2 bad input or environment.
#[derive(Parser)]
#[command(name = "gauntlet", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fault proxy: Toxiproxy's HTTP API and TCP proxies with toxics.
    /// Prints `listening on http://ADDR` on stdout when ready; stops on SIGINT
    /// or SIGTERM and exits 0. Exits 2 when it cannot start.
    Proxy {
        /// Address of the HTTP API (Toxiproxy's default port; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:8474")]
        listen: SocketAddr,
        /// Seed of every random draw (jitter, toxicity, slicer sizes), for replays.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Proxies to create at start: a JSON array in Toxiproxy's `-config` format.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the mock LLM provider: OpenAI-compatible chat completions with
    /// programmable faults (admin API under `/_mock/`). Prints
    /// `listening on http://ADDR` on stdout when ready; stops on SIGINT or
    /// SIGTERM and exits 0. Exits 2 when it cannot start.
    MockLlm {
        /// Address to serve on (port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Seed of every random draw (probabilistic rules), for replays.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Check scenario files: prints every finding as
    /// `FILE:LINE:COL: error[CODE]: path: message` and `ok: FILE (NAME)` for
    /// each valid file. Exits 0 when all are valid, 2 otherwise.
    Validate {
        /// Scenario files, or directories standing for their `*.yaml` files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List scenarios: name, duration and fault kinds by class, one per line.
    /// Exits 2 when a file is invalid (its findings go to stderr).
    List {
        /// Scenario files or directories (default: `scenarios/`).
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = run_offline(&cli.command) {
        return code;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Proxy {
                listen,
                seed,
                config,
            } => run_proxy(listen, seed, config).await,
            Command::MockLlm { listen, seed } => run_mock_llm(listen, seed).await,
            // Handled by `run_offline`, before the runtime starts.
            Command::Validate { .. } | Command::List { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The commands that need no runtime and no logging: scenario files in,
/// a report and an exit code out. `None` for the other commands.
fn run_offline(command: &Command) -> Option<ExitCode> {
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    let result = match command {
        Command::Validate { paths } => gauntlet::cli::validate(paths, &mut out, &mut err),
        Command::List { paths } => gauntlet::cli::list(paths, &mut out, &mut err),
        _ => return None,
    };
    Some(match result {
        Ok(code) => ExitCode::from(code),
        // Output failed (a closed pipe): nothing more can be reported.
        Err(_) => ExitCode::from(gauntlet::cli::EXIT_BAD_INPUT),
    })
}

async fn run_proxy(listen: SocketAddr, seed: u64, config: Option<PathBuf>) -> anyhow::Result<()> {
    // Read the file before binding anything, so that bad input fails fast.
    let proxies = match &config {
        Some(path) => proxy::load_config_file(path)?,
        None => Vec::new(),
    };
    let server = ProxyServer::start(proxy::ProxyServerConfig {
        listen,
        seed,
        limits: proxy::Limits::default(),
    })
    .await
    .with_context(|| format!("cannot start the fault proxy on {listen}"))?;
    if !proxies.is_empty() {
        server
            .populate(proxies)
            .await
            .context("cannot create the proxies of --config")?;
    }
    println!("listening on http://{}", server.addr());
    shutdown_signal().await?;
    server.shutdown().await;
    Ok(())
}

async fn run_mock_llm(listen: SocketAddr, seed: u64) -> anyhow::Result<()> {
    let server = MockLlm::start(mock_llm::MockConfig {
        listen,
        seed,
        limits: mock_llm::Limits::default(),
    })
    .await
    .with_context(|| format!("cannot start the mock LLM provider on {listen}"))?;
    println!("listening on http://{}", server.addr());
    shutdown_signal().await?;
    server.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
