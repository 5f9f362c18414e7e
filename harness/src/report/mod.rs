//! Reports: `report.json` (everything; its schema is in REPORT.md),
//! `history.jsonl` (one operation per line), `verdict.yaml` (redacted: no
//! timings, ports or ids, so that it is stable across runs and insta can
//! snapshot it), the terminal summary and the progress bar.

pub mod html;
pub mod junit;
pub mod markdown;
mod svg;
mod terminal;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::checks::{CheckKind, CheckResult, Verdict};
use crate::evidence::{BudgetSample, Evidence, FaultRecord, HealthSample, Settle};
use crate::load::{LatencySummary, LoadOutcome, Op, WindowStats};
use crate::local::ProcessEvent;
use crate::scenario::Scenario;

pub use terminal::{summary, use_colour};

/// The version of report.json's shape; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 3;

/// Everything a run found. Serialized as report.json.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The harness's version.
    pub gauntlet_version: String,
    /// The backend that ran the system (`local` or `docker`).
    pub backend: String,
    /// The scenario's name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The file it came from.
    pub source: String,
    /// The seed the run used (replay with `--seed`).
    pub seed: u64,
    /// The duration multiplier.
    pub scale: f64,
    /// SHA-256 (first 16 hex digits) of the scenario as run, its system
    /// config included: two runs with the same digest and seed ran the same
    /// test, whatever their ports and paths.
    pub config_digest: String,
    /// The command that replays this run, from the directory it was started
    /// in; `None` when the run's faults were not its file's (an explored
    /// schedule, which explore.json and minimal.yaml replay instead).
    pub replay_command: Option<String>,
    /// A unique id of this run.
    pub run_id: String,
    /// Start, in Unix milliseconds.
    pub started_unix_ms: u64,
    /// Wall time of the whole run, bring-up and teardown included.
    pub duration_ms: u64,
    /// Whether every check passed (none failed, none was vacuous).
    pub passed: bool,
    /// The checks: SLOs, then invariants, in file order, then the run
    /// checks (`fault_applied` per fault, `clean_shutdown`).
    pub checks: Vec<CheckResult>,
    /// The fault timeline as it happened.
    pub faults: Vec<FaultRecord>,
    /// What the load generator saw.
    pub load: LoadSection,
    /// Starts, exits and restarts of the orchestrator.
    pub process_events: Vec<ProcessRecord>,
    /// Health probe samples.
    pub health: Vec<HealthSample>,
    /// Budget samples taken through the API during the run.
    pub budgets: Vec<BudgetSample>,
    /// How the wait for jobs to settle ended.
    pub settle: Settle,
    /// Jobs acknowledged with 202, by the state the database left them in
    /// (`missing` when it has no such job, `unread` when it could not be read).
    pub jobs: BTreeMap<String, u64>,
    /// Ledger entries and provider calls.
    pub ledger: LedgerSection,
}

/// The load part of the report.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LoadSection {
    /// Operations planned.
    pub planned: u64,
    /// Operations sent.
    pub sent: u64,
    /// Answers by status; `timeout`, `connect_error`, `io_error`,
    /// `cancelled` and `not_sent` for the rest.
    pub outcomes: BTreeMap<String, u64>,
    /// Latency over the whole run, from intended send times.
    pub overall: LatencySummary,
    /// One entry per second.
    pub windows: Vec<WindowStats>,
    /// The history file, beside report.json.
    pub history_file: String,
    /// 200 bodies the history did not keep (its budget ran out).
    pub bodies_dropped: u64,
}

/// The ledger part of the report, as the database left it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LedgerSection {
    /// Why the database could not be read, if it could not.
    pub database_error: Option<String>,
    /// Charges in the database after the run (absent if it could not be read).
    pub charges: Option<u64>,
    /// Reservations still held after the run.
    pub held_reservations: Option<u64>,
    /// Audit entries.
    pub audit_entries: Option<u64>,
    /// Tokens charged in all.
    pub charged_tokens: Option<u64>,
    /// Provider calls in the mock's journal.
    pub provider_calls: u64,
    /// Journal records dropped (its ring is bounded).
    pub provider_calls_dropped: u64,
}

/// What [`Report::new`] is built from.
pub struct ReportInput<'a> {
    /// The scenario as run (scaled).
    pub scenario: &'a Scenario,
    /// The seed used.
    pub seed: u64,
    /// The scale used.
    pub scale: f64,
    /// The run's id.
    pub run_id: String,
    /// When it started.
    pub started: SystemTime,
    /// When it finished.
    pub finished: SystemTime,
    /// The judged checks.
    pub checks: Vec<CheckResult>,
    /// The load's outcome (its history has moved into the evidence).
    pub load: &'a LoadOutcome,
    /// The evidence the checks judged.
    pub evidence: &'a Evidence,
    /// The backend's process events.
    pub process_events: Vec<ProcessRecord>,
    /// The backend that ran the system (`local`, `docker`).
    pub backend: &'static str,
    /// Whether the run's faults were its file's own (else no replay command
    /// can be printed for it).
    pub timeline_from_file: bool,
}

/// Something that happened to the orchestrator's process.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    /// Since the backend started it, in milliseconds.
    pub elapsed_ms: f64,
    /// What happened (`Started { pid: 12 }`, `Exited { .. oom: true .. }`).
    pub event: String,
}

impl From<&ProcessEvent> for ProcessRecord {
    fn from(e: &ProcessEvent) -> ProcessRecord {
        ProcessRecord {
            elapsed_ms: e.elapsed.as_secs_f64() * 1000.0,
            event: format!("{:?}", e.kind),
        }
    }
}

/// The digest of a scenario as run: its canonical rendering (load, faults,
/// checks) and its system config, hashed together.
fn config_digest(scenario: &Scenario) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(crate::scenario::render(scenario, "config.yaml"));
    hasher.update(b"\n---\n");
    hasher.update(&scenario.system.config_yaml);
    hex::encode(&hasher.finalize()[..8])
}

/// `gauntlet run FILE --seed N`, with `--backend` and `--scale` when they
/// are not the defaults; the file is shell-quoted when it needs to be.
pub fn replay_command(source: &Path, seed: u64, backend: &str, scale: f64) -> String {
    let mut command = format!(
        "gauntlet run {} --seed {seed}",
        shell_quote(&source.display().to_string())
    );
    if backend != "local" {
        command.push_str(&format!(" --backend {backend}"));
    }
    if scale != 1.0 {
        command.push_str(&format!(" --scale {scale}"));
    }
    command
}

/// Quotes `word` for a POSIX shell when it holds anything but the
/// characters paths usually have.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The outcome's key in `load.outcomes`.
fn outcome_key(op: &Op) -> String {
    use crate::load::Outcome;
    match &op.outcome {
        Outcome::Status(s) => s.to_string(),
        Outcome::Timeout => "timeout".to_owned(),
        Outcome::ConnectError(_) => "connect_error".to_owned(),
        Outcome::IoError(_) => "io_error".to_owned(),
        Outcome::Cancelled => "cancelled".to_owned(),
        Outcome::NotSent => "not_sent".to_owned(),
    }
}

impl Report {
    /// Assembles the report.
    pub fn new(input: ReportInput<'_>) -> Report {
        let unix_ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default()
        };
        let mut outcomes = BTreeMap::new();
        for op in &input.evidence.history {
            *outcomes.entry(outcome_key(op)).or_insert(0u64) += 1;
        }
        let sent = input
            .evidence
            .history
            .iter()
            .filter(|op| crate::checks::was_sent(op))
            .count() as u64;
        let database = input.evidence.database.as_ref();
        let mut jobs = BTreeMap::new();
        let acknowledged: std::collections::BTreeSet<&str> = input
            .evidence
            .history
            .iter()
            .filter_map(Op::acknowledged_job)
            .collect();
        for id in acknowledged {
            let state = match database {
                Ok(db) => db.job(id).map_or("missing", |j| j.state.as_str()),
                Err(_) => "unread",
            };
            *jobs.entry(state.to_owned()).or_insert(0u64) += 1;
        }
        let charges = database.ok().map(|db| &db.charges);
        Report {
            schema_version: SCHEMA_VERSION,
            gauntlet_version: env!("CARGO_PKG_VERSION").to_owned(),
            backend: input.backend.to_owned(),
            scenario: input.scenario.name.clone(),
            description: input.scenario.description.clone(),
            source: input.scenario.source.display().to_string(),
            seed: input.seed,
            scale: input.scale,
            config_digest: config_digest(input.scenario),
            replay_command: input.timeline_from_file.then(|| {
                replay_command(
                    &input.scenario.source,
                    input.seed,
                    input.backend,
                    input.scale,
                )
            }),
            run_id: input.run_id,
            started_unix_ms: unix_ms(input.started),
            duration_ms: input
                .finished
                .duration_since(input.started)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64,
            passed: input.checks.iter().all(CheckResult::passed),
            checks: input.checks,
            faults: input.evidence.faults.clone(),
            load: LoadSection {
                planned: input.evidence.history.len() as u64,
                sent,
                outcomes,
                overall: input.load.overall.latency.clone(),
                windows: input.load.windows.clone(),
                history_file: "history.jsonl".to_owned(),
                bodies_dropped: input.load.bodies_dropped,
            },
            process_events: input.process_events,
            health: input.evidence.health.clone(),
            budgets: input.evidence.budgets.clone(),
            settle: input.evidence.settle.clone(),
            jobs,
            ledger: LedgerSection {
                database_error: database.err().cloned(),
                charges: charges.map(|c| c.len() as u64),
                held_reservations: database.ok().map(|db| {
                    db.reservations
                        .iter()
                        .filter(|r| r.state == crate::evidence::db::ReservationState::Held)
                        .count() as u64
                }),
                audit_entries: database.ok().map(|db| db.audit.len() as u64),
                charged_tokens: charges.map(|c| c.iter().map(|c| c.tokens).sum()),
                provider_calls: input.evidence.journal.len() as u64,
                provider_calls_dropped: input.evidence.journal_dropped,
            },
        }
    }

    /// Reads a report.json back (as written by [`write`]).
    pub fn from_json(text: &str) -> serde_json::Result<Report> {
        serde_json::from_str(text)
    }

    /// The redacted verdict: what passed and failed, without timings, ports,
    /// ids or measured values, so two runs of a healthy system agree.
    pub fn verdict(&self) -> VerdictFile {
        VerdictFile {
            scenario: self.scenario.clone(),
            seed: self.seed,
            passed: self.passed,
            faults: self
                .faults
                .iter()
                .map(|f| VerdictFault {
                    name: f.name.clone(),
                    kind: f.kind.clone(),
                    target: f.target.clone(),
                    applied: f.applied_ms.is_some() && f.error.is_none(),
                })
                .collect(),
            checks: self
                .checks
                .iter()
                .map(|c| VerdictCheck {
                    kind: c.kind,
                    name: c.name.clone(),
                    window: c.window.clone(),
                    expected: c.expected.clone(),
                    verdict: c.verdict,
                    exercised: c.exercised > 0,
                })
                .collect(),
        }
    }
}

/// The redacted verdict (verdict.yaml).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VerdictFile {
    /// The scenario.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Whether every check passed.
    pub passed: bool,
    /// The faults and whether each was applied.
    pub faults: Vec<VerdictFault>,
    /// The checks and their results.
    pub checks: Vec<VerdictCheck>,
}

/// A fault in the verdict.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VerdictFault {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its target.
    pub target: String,
    /// Whether it was applied and reverted without error.
    pub applied: bool,
}

/// A check in the verdict.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VerdictCheck {
    /// SLO or invariant.
    pub kind: CheckKind,
    /// Its name.
    pub name: String,
    /// Its window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Its threshold.
    pub expected: String,
    /// What it concluded.
    pub verdict: Verdict,
    /// Whether it judged any evidence (a stable form of the report's
    /// count, so that a snapshot diff shows a check that stopped being
    /// exercised).
    pub exercised: bool,
}

impl VerdictFile {
    /// The verdict as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self)
            .unwrap_or_else(|e| format!("# cannot render the verdict: {e}\n"))
    }
}

/// Writes report.json, report.html, history.jsonl, verdict.yaml and a copy
/// of the orchestrator's log into `dir`.
/// The page links back to the index at `index_href` (relative to it).
pub fn write(
    report: &Report,
    history: &[Op],
    log: &Path,
    dir: &Path,
    index_href: Option<&str>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    std::fs::write(
        dir.join("report.html"),
        html::scenario_page(report, index_href),
    )?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    for op in history {
        serde_json::to_writer(&mut out, op).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    std::fs::write(dir.join("verdict.yaml"), report.verdict().to_yaml())?;
    if log.is_file() {
        std::fs::copy(log, dir.join("orchestrator.log"))?;
    }
    Ok(())
}

/// What a whole run writes besides each scenario's report: `index.html`
/// always, JUnit XML and a Markdown summary when asked.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Where to write the JUnit XML (`--junit`).
    pub junit: Option<std::path::PathBuf>,
    /// Where to write the Markdown summary (`--summary-md`).
    pub summary_md: Option<std::path::PathBuf>,
}

impl Outputs {
    /// Writes `dir/index.html` (a row per entry, titled `title`) and the
    /// files asked for; says which file could not be written.
    pub fn write(
        &self,
        dir: &Path,
        title: &str,
        entries: &[html::IndexEntry<'_>],
    ) -> Result<(), String> {
        let index = dir.join("index.html");
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&index, html::index_page(title, entries)))
            .map_err(|e| format!("cannot write {}: {e}", index.display()))?;
        let reports: Vec<Report> = entries.iter().map(|e| e.report.clone()).collect();
        if let Some(path) = &self.junit {
            std::fs::write(path, junit::render(title, &reports))
                .map_err(|e| format!("cannot write the JUnit file {}: {e}", path.display()))?;
        }
        if let Some(path) = &self.summary_md {
            std::fs::write(path, markdown::render(&reports)).map_err(|e| {
                format!("cannot write the Markdown summary {}: {e}", path.display())
            })?;
        }
        Ok(())
    }
}

/// The progress bar of a run, drawn on stderr when `enabled` and stderr is
/// a terminal; otherwise hidden.
pub fn progress_bar(enabled: bool, label: &str, planned: u64) -> ProgressBar {
    let bar = if enabled {
        ProgressBar::with_draw_target(Some(planned), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let style = ProgressStyle::with_template(
        "{prefix:.bold} [{elapsed_precise}] {wide_bar} {pos}/{len} requests {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

/// Moves the bar along with the load's progress every 100 ms.
pub fn spawn_ticker(
    bar: ProgressBar,
    progress: crate::load::Progress,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let snapshot = progress.snapshot();
            bar.set_position(snapshot.completed.min(snapshot.planned));
            bar.set_message(format!("{} errors", snapshot.errors));
        }
    })
}

/// How many checks came to each verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Vacuous.
    pub vacuous: usize,
}

/// Counts checks by verdict.
pub fn tally(report: &Report) -> Tally {
    let mut tally = Tally::default();
    for c in &report.checks {
        match c.verdict {
            Verdict::Pass => tally.passed += 1,
            Verdict::Fail => tally.failed += 1,
            Verdict::Vacuous => tally.vacuous += 1,
        }
    }
    tally
}
