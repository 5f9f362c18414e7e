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
    /// Remove what killed runs of the local backend left behind (orchestrator
    /// processes, mounts, cgroups), as named by their state records under
    /// `$GAUNTLET_STATE_DIR` (default `/tmp/gauntlet-state`). Records of runs
    /// whose harness is still alive are left alone. Exits 0, or 2 when the
    /// state directory cannot be read.
    Gc,
    /// Run the orchestrator service in this process (the local backend spawns
    /// its own executable with this, so nothing else needs to be built).
    #[command(name = "__serve-orchestrator", hide = true)]
    ServeOrchestrator {
        /// The orchestrator's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Seed of the service's random choices.
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the subscriber and runtime below: the service sets up its own
    // JSON logs and its own runtime.
    let command = match cli.command {
        Command::ServeOrchestrator {
            config,
            listen,
            seed,
        } => return serve_orchestrator(config, listen, seed),
        Command::Gc => return gc(),
        command => command,
    };
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
        match command {
            Command::Proxy {
                listen,
                seed,
                config,
            } => run_proxy(listen, seed, config).await,
            Command::MockLlm { listen, seed } => run_mock_llm(listen, seed).await,
            Command::Gc | Command::ServeOrchestrator { .. } => {
                unreachable!("handled before the runtime starts")
            }
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

/// `gauntlet __serve-orchestrator`: `orchestrator serve`, in this executable.
fn serve_orchestrator(config: PathBuf, listen: Option<SocketAddr>, seed: Option<u64>) -> ExitCode {
    let args = orchestrator::cli::ServeArgs {
        config,
        listen,
        level: orchestrator::config::Level::Strict,
        seed,
        env: std::env::vars().collect(),
    };
    // Not a lock: the service's log writers need stderr too.
    match orchestrator::cli::serve(args, &mut std::io::stderr()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: cannot write diagnostics: {e}");
            ExitCode::from(2)
        }
    }
}

/// `gauntlet gc`: prints what it removed; exits 2 when the state directory
/// cannot be read.
fn gc() -> ExitCode {
    let report = gauntlet::local::gc();
    print!("{report}");
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        ExitCode::from(2)
    }
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
