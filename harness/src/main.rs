//! `gauntlet`: the harness's command line. Argument parsing and exit codes live
//! here; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gauntlet::mock_llm::{self, MockLlm};
use gauntlet::proxy::{self, ProxyServer};
use orchestrator::exit::Exit;

/// Chaos and property-testing harness for a hardened LLM agent orchestration
/// system. Exit codes: 0 pass, 1 a check failed, 2 bad input or environment.
#[derive(Parser)]
#[command(name = "gauntlet", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where `gauntlet run` brings the system up.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Backend {
    /// Child processes on loopback, in temporary directories; no Docker.
    Local,
    /// Containers on a network of the run, from images built by
    /// `gauntlet images build` (never pulled).
    Docker,
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
    /// Run scenarios on the local or Docker backend: brings the orchestrator up behind
    /// the fault proxy, drives the load, injects the faults, checks every SLO
    /// and invariant, prints a summary (ending, on a failure, with the
    /// command that replays it) and writes report.html, report.json,
    /// history.jsonl and verdict.yaml under `--report-dir/<scenario>/`, and
    /// `--report-dir/index.html` for the whole run. Exits 0 when every
    /// check passed, 1 when one failed, 2 on bad input or an environment that
    /// cannot run a scenario (each scenario is validated before any runs).
    Run(RunArgs),
    /// Search a scenario's `explore:` fault space: run N draws a schedule
    /// from the seed, runs it and judges it by the scenario's checks; the
    /// first failure is rerun 3 times and, when it reproduces each time,
    /// shrunk to the smallest schedule that still fails the same check.
    /// Writes minimal.yaml (replay it with `gauntlet run`), original.yaml
    /// and explore.json under `--report-dir/<scenario>/`. Exits 0 when no
    /// failure was found within the budget, 1 when one was, 2 on bad input.
    Explore(ExploreArgs),
    /// Render reports again from their report.json files: every report.json
    /// below DIR (four levels down at most) gets its report.html rewritten
    /// beside it, and DIR/index.html links them all; `--junit` and
    /// `--summary-md` summarise them as `gauntlet run` does. For reports that
    /// the scenario tests wrote (the nightly workflow's summary comes from
    /// here). Exits 0 once written, 2 when DIR holds no report or one cannot
    /// be read; the verdicts inside do not change the exit code.
    Report {
        /// The directory to search, e.g. `target/gauntlet`.
        dir: PathBuf,
        #[command(flatten)]
        outputs: OutputArgs,
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
    /// Remove what killed runs left behind: on the local backend orchestrator
    /// processes, mounts and cgroups, as named by their state records under
    /// `$GAUNTLET_STATE_DIR` (default `/tmp/gauntlet-state`); on the Docker
    /// backend containers, networks and volumes labelled `gauntlet.run`.
    /// Runs whose harness is still alive are left alone. Without a Docker
    /// engine only the local part runs (and says so). Exits 0, or 2 when
    /// something could not be removed.
    Gc {
        /// First wait (at most 120 s) until this process has exited: the
        /// docker backend's signal handler starts a detached gc this way.
        #[arg(long, hide = true)]
        after_pid: Option<u32>,
    },
    /// Allocate memory inside the orchestrator's container until the kernel
    /// OOM-kills it (the docker backend's memory fault; the orchestrator
    /// image carries this binary for it).
    #[command(name = "__hog", hide = true)]
    Hog {
        /// How much to allocate and touch.
        #[arg(long)]
        bytes: u64,
        /// Make this process the OOM killer's first choice.
        #[arg(long)]
        victim_pid: Option<u32>,
    },
    /// Container images, built locally (no registry is used).
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
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

#[derive(Subcommand)]
enum ImagesCommand {
    /// Build the orchestrator and harness images locally, FROM scratch with
    /// static binaries, through the Docker engine's legacy builder; no
    /// registry is used and nothing is pulled. By default the static
    /// binaries are built first (`cargo build --release --target
    /// x86_64-unknown-linux-gnu` with crt-static; slow the first time).
    /// An image whose inputs (Dockerfile and binaries) are unchanged is left
    /// alone. Prints `built: NAME:TAG ...` or `up to date: NAME:TAG ...` per
    /// image on stdout. Exit codes: 0 built or up to date, 2 bad input or
    /// environment (no engine, no workspace, a dynamic binary, a failed
    /// build).
    Build(ImagesBuild),
}

/// The arguments of `gauntlet images build`.
#[derive(clap::Args)]
struct ImagesBuild {
    /// Rebuild every image, even when its inputs are unchanged.
    #[arg(long)]
    force: bool,
    /// Take the static `orchestrator` and `gauntlet` binaries from DIR
    /// instead of building them.
    #[arg(long, value_name = "DIR", conflicts_with = "workspace")]
    binaries: Option<PathBuf>,
    /// The workspace to build the binaries in (default: found by walking
    /// up from the current directory).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// The orchestrator image's name:tag (default: $GAUNTLET_ORCHESTRATOR_IMAGE,
    /// else gauntlet/orchestrator:VERSION).
    #[arg(long, value_name = "NAME")]
    orchestrator_image: Option<String>,
    /// The harness image's name:tag (default: $GAUNTLET_HARNESS_IMAGE,
    /// else gauntlet/harness:VERSION).
    #[arg(long, value_name = "NAME")]
    harness_image: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = run_offline(&cli.command) {
        return code;
    }
    // Before the subscriber and runtime below: the service sets up its own
    // JSON logs and its own runtime.
    let command = match cli.command {
        Command::ServeOrchestrator {
            config,
            listen,
            seed,
        } => return serve_orchestrator(config, listen, seed),
        Command::Gc { after_pid } => return gc(after_pid),
        Command::Hog { bytes, victim_pid } => return hog(bytes, victim_pid),
        Command::Images {
            command: ImagesCommand::Build(args),
        } => return images_build(args),
        Command::Run(args) => return run_scenarios(args),
        Command::Explore(args) => return explore(args),
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
            return ExitCode::from(Exit::BadInput);
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
            // Handled by `run_offline`, before the runtime starts.
            Command::Validate { .. } | Command::List { .. } | Command::Report { .. } => Ok(()),
            Command::Gc { .. }
            | Command::Hog { .. }
            | Command::ServeOrchestrator { .. }
            | Command::Run(_)
            | Command::Explore(_)
            | Command::Images { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::from(Exit::Pass),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(Exit::BadInput)
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
        Command::Report { dir, outputs } => {
            gauntlet::cli::report(dir, &outputs.outputs(), &mut out, &mut err)
        }
        _ => return None,
    };
    Some(match result {
        Ok(code) => ExitCode::from(code),
        // Output failed (a closed pipe): nothing more can be reported.
        Err(_) => ExitCode::from(Exit::BadInput),
    })
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
            ExitCode::from(Exit::BadInput)
        }
    }
}

/// The arguments of `gauntlet run`.
#[derive(clap::Args)]
struct RunArgs {
    /// Scenario files, or directories standing for their `*.yaml` files
    /// (default: `scenarios/`).
    paths: Vec<PathBuf>,
    /// Where the system runs. `docker` needs a Docker engine and the
    /// images of `gauntlet images build`; scenarios with faults the
    /// backend cannot inject are skipped with the reason.
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    backend: Backend,
    /// The orchestrator's image (docker backend; default
    /// `$GAUNTLET_ORCHESTRATOR_IMAGE`, else `gauntlet/orchestrator:VERSION`).
    #[arg(long)]
    orchestrator_image: Option<String>,
    /// The harness's image: fault proxy and mock provider (docker backend;
    /// default `$GAUNTLET_HARNESS_IMAGE`, else `gauntlet/harness:VERSION`).
    #[arg(long)]
    harness_image: Option<String>,
    /// Replaces each scenario's seed, to replay or vary a run.
    #[arg(long)]
    seed: Option<u64>,
    /// Where reports go, one directory per scenario.
    #[arg(long, default_value = "target/gauntlet")]
    report_dir: PathBuf,
    /// Multiplies every duration of the load and the fault timeline.
    /// Must be positive (a negative value is taken as one, and refused).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    scale: f64,
    #[command(flatten)]
    outputs: OutputArgs,
}

/// The files a whole run writes besides its reports and index.html.
#[derive(clap::Args)]
struct OutputArgs {
    /// Also write JUnit XML here: a testsuite per scenario run, a testcase
    /// per check, failures with their evidence.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write a Markdown summary here (a table per scenario, failed
    /// checks first), e.g. for `$GITHUB_STEP_SUMMARY`.
    #[arg(long, value_name = "FILE")]
    summary_md: Option<PathBuf>,
}

impl OutputArgs {
    fn outputs(&self) -> gauntlet::report::Outputs {
        gauntlet::report::Outputs {
            junit: self.junit.clone(),
            summary_md: self.summary_md.clone(),
        }
    }
}

/// The arguments of `gauntlet explore`.
#[derive(clap::Args)]
struct ExploreArgs {
    /// The scenario file; it must have an `explore:` section.
    scenario: PathBuf,
    /// Schedules drawn at most.
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// Candidates tried at most while shrinking.
    #[arg(long, default_value_t = 60)]
    shrink_runs: u32,
    /// Wall time for drawing, rerunning and shrinking (`30m`, `90s`); no
    /// run starts that would, by the longest so far, end past it.
    #[arg(long, default_value = "30m", value_parser = parse_budget)]
    budget: std::time::Duration,
    /// Replaces the scenario's seed; the same seed replays the exploration.
    #[arg(long)]
    seed: Option<u64>,
    /// Multiplies every duration of each run.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    scale: f64,
    /// Where the output goes: `<DIR>/<scenario>/`.
    #[arg(long, default_value = "target/gauntlet-explore")]
    report_dir: PathBuf,
    #[command(flatten)]
    outputs: OutputArgs,
}

/// Logs of warnings and worse on stderr (`RUST_LOG` overrides), so that the
/// progress bars and summaries of `run` and `explore` stay readable.
fn quiet_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,gauntlet::proxy=error")
            }),
        )
        .init();
}

fn parse_budget(text: &str) -> Result<std::time::Duration, String> {
    orchestrator::config::parse_duration(text)
}

/// `gauntlet explore`: like `gauntlet run`, a runtime of its own, quiet
/// logs and Ctrl-C as a cancellation; the runs happen one at a time on
/// this thread.
fn explore(args: ExploreArgs) -> ExitCode {
    use gauntlet::engine::{self, Cancel};
    use gauntlet::explore::ExploreOptions;
    quiet_logs();
    let launcher = match gauntlet::local::Launcher::current_exe() {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot find the gauntlet executable to start the orchestrator with: {e}"
            );
            return ExitCode::from(Exit::BadInput);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::BadInput);
        }
    };
    let cancel = Cancel::new();
    let on_signal = cancel.clone();
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut terminate) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            result = tokio::signal::ctrl_c() => if result.is_err() { return },
            _ = terminate.recv() => {}
        }
        eprintln!("interrupted: stopping the run, reverting faults, tearing down");
        on_signal.cancel();
    });
    let options = ExploreOptions {
        runs: args.runs,
        shrink_runs: args.shrink_runs,
        budget: args.budget,
        seed: args.seed,
        scale: args.scale,
        report_dir: args.report_dir,
        backend: engine::Backend::Local(launcher),
        progress: true,
        outputs: args.outputs.outputs(),
    };
    let code = gauntlet::explore::explore(
        &args.scenario,
        &options,
        &runtime,
        &cancel,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code)
}

/// `gauntlet run`: a runtime of its own, quiet logs (warnings only, so the
/// progress bar and summary stay readable), and Ctrl-C turned into a
/// cancellation that tears everything down before exiting.
///
/// On the docker backend, testcontainers' watchdog also acts on SIGINT and
/// SIGTERM: it stops and removes the run's containers and then ends the
/// process as the signal would. The run's network would outlive it, so the
/// handler first starts a detached `gauntlet gc --after-pid` that removes it
/// once this process is gone.
fn run_scenarios(args: RunArgs) -> ExitCode {
    use gauntlet::engine::{self, Cancel, RunOptions};
    quiet_logs();
    let backend = match args.backend {
        Backend::Local => match gauntlet::local::Launcher::current_exe() {
            Ok(l) => engine::Backend::Local(l),
            Err(e) => {
                eprintln!(
                    "error: cannot find the gauntlet executable to start the orchestrator with: {e}"
                );
                return ExitCode::from(Exit::BadInput);
            }
        },
        Backend::Docker => match gauntlet::images::ImageNames::resolve(
            args.orchestrator_image.as_deref(),
            args.harness_image.as_deref(),
        ) {
            Ok(names) => engine::Backend::Docker(names),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(Exit::BadInput);
            }
        },
    };
    let docker = matches!(backend, engine::Backend::Docker(_));
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(gauntlet::cli::DEFAULT_SCENARIO_DIR)]
    } else {
        args.paths
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::BadInput);
        }
    };
    let options = RunOptions {
        seed: args.seed,
        scale: args.scale,
        report_dir: args.report_dir,
        backend,
        progress: true,
        label: None,
        index_href: Some("../index.html".to_owned()),
    };
    let outputs = args.outputs.outputs();
    let code = runtime.block_on(async {
        let cancel = Cancel::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut terminate) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                result = tokio::signal::ctrl_c() => if result.is_err() { return },
                _ = terminate.recv() => {}
            }
            eprintln!("interrupted: stopping the load, reverting faults, tearing down");
            if docker {
                start_detached_gc();
            }
            on_signal.cancel();
        });
        // Unlocked handles: a lock held across the run would block every
        // log line other threads write, and with them the runtime.
        engine::run_paths(
            &paths,
            &options,
            &outputs,
            &cancel,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
        .await
    });
    ExitCode::from(code)
}

/// Starts `gauntlet gc --after-pid <this process>` in a session of its own,
/// so that it outlives this process and removes what the signal left.
fn start_detached_gc() {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("warning: cannot find this executable; run `gauntlet gc` afterwards");
        return;
    };
    let mut command = std::process::Command::new(exe);
    command
        .args(["gc", "--after-pid", &std::process::id().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Err(e) = command.spawn() {
        eprintln!("warning: cannot start the cleanup ({e}); run `gauntlet gc` afterwards");
    }
}

/// `gauntlet __hog`: makes `victim_pid` the OOM killer's first choice, then
/// allocates and touches `bytes` in 1 MiB chunks and holds them for at most
/// 60 s (the kernel normally ends the whole container before).
fn hog(bytes: u64, victim_pid: Option<u32>) -> ExitCode {
    const CHUNK_BYTES: usize = 1 << 20;
    const HOLD: std::time::Duration = std::time::Duration::from_secs(60);
    if let Some(pid) = victim_pid {
        let path = format!("/proc/{pid}/oom_score_adj");
        if let Err(e) = std::fs::write(&path, "1000") {
            eprintln!("error: cannot write {path}: {e}");
            return ExitCode::from(Exit::BadInput);
        }
    }
    let chunks = usize::try_from(bytes.div_ceil(CHUNK_BYTES as u64)).unwrap_or(usize::MAX);
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..chunks {
        // Non-zero bytes: pages of zeroes could be left unbacked.
        held.push(vec![0x5a; CHUNK_BYTES]);
    }
    std::thread::sleep(HOLD);
    drop(held);
    ExitCode::from(Exit::Pass)
}

/// `gauntlet gc`: the local backend's records, then the Docker backend's
/// labelled resources; prints what it removed, exits 2 when something could
/// not be.
fn gc(after_pid: Option<u32>) -> ExitCode {
    if let Some(pid) = after_pid {
        gauntlet::docker::wait_until_exited(pid, std::time::Duration::from_secs(120));
    }
    let report = gauntlet::local::gc();
    print!("{report}");
    let mut failed = !report.errors.is_empty();
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::BadInput);
        }
    };
    runtime.block_on(async {
        match gauntlet::images::engine().await {
            Ok(docker) => {
                let report = gauntlet::docker::gc(&docker, None).await;
                print!("{report}");
                for e in &report.errors {
                    eprintln!("error: {e}");
                }
                failed |= !report.errors.is_empty();
            }
            Err(e) => println!("docker: skipped ({e})"),
        }
    });
    if failed {
        ExitCode::from(Exit::BadInput)
    } else {
        ExitCode::from(Exit::Pass)
    }
}

/// `gauntlet images build`: results on stdout, an error on stderr.
fn images_build(args: ImagesBuild) -> ExitCode {
    match try_images_build(args) {
        Ok(()) => ExitCode::from(Exit::Pass),
        Err(e) => {
            eprintln!("error: {e:#}");
            let exit = e
                .downcast_ref::<gauntlet::images::ImageError>()
                .map_or(Exit::BadInput, gauntlet::images::ImageError::exit);
            ExitCode::from(exit)
        }
    }
}

/// Names and binaries are settled before the engine is asked anything, and
/// the engine is reached before the slow static build starts.
fn try_images_build(args: ImagesBuild) -> anyhow::Result<()> {
    use gauntlet::images::{self, Binaries, BuildOptions, ImageNames};
    let names = ImageNames::resolve(
        args.orchestrator_image.as_deref(),
        args.harness_image.as_deref(),
    )?;
    let binaries = match (args.binaries, args.workspace) {
        (Some(dir), _) => Binaries::Dir(dir),
        (None, Some(workspace)) => Binaries::Cargo { workspace },
        (None, None) => {
            let here = std::env::current_dir()
                .context("cannot read the current directory to find the workspace")?;
            Binaries::Cargo {
                workspace: images::find_workspace(&here)?,
            }
        }
    };
    let options = BuildOptions {
        names,
        force: args.force,
        binaries,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let docker = images::engine().await?;
        images::build(&docker, &options, &mut |line| println!("{line}")).await?;
        Ok(())
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
    let stop = shutdown_signals()?;
    println!("listening on http://{}", server.addr());
    stop.await;
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
    let stop = shutdown_signals()?;
    println!("listening on http://{}", server.addr());
    stop.await;
    server.shutdown().await;
    Ok(())
}

/// SIGINT and SIGTERM, watched from the moment this returns: call it before
/// announcing readiness, so that a signal sent as soon as the `listening`
/// line appears finds the handlers installed instead of the default action.
fn shutdown_signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
