//! `gauntlet explore`: property-based chaos. Run *i* draws a fault schedule
//! from the scenario's `explore:` space and the seed ([`schedule::draw`]),
//! runs it through the engine like any scenario, and judges it by the
//! scenario's checks that judge any schedule
//! ([`crate::scenario::schedule_checks`]). The first failure is rerun to
//! see whether it reproduces; one that does is shrunk ([`shrink::shrink`])
//! to the smallest schedule that still fails the same check, and written
//! as `minimal.yaml`, a scenario file `gauntlet run` replays.
//!
//! Stages stay apart as in the engine: drawing and shrinking are pure,
//! running is the engine's, judging is the checks'; this module only
//! sequences them, keeps the budget and writes what happened.

pub mod schedule;
pub mod shrink;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orchestrator::exit::Exit;
use serde::Serialize;

use crate::checks::{CheckKind, CheckResult, Verdict};
use crate::engine::{self, Backend, Cancel, RunError, RunOptions};
use crate::scenario::{self, Explore, Scenario};
use schedule::Schedule;
use shrink::{Bounds, Trial};

/// How many times a failure is rerun before it is shrunk: it is shrunk only
/// when every rerun fails the same check.
pub const REPRODUCE_RUNS: u32 = 3;
/// Time kept after the last fault when the load is shortened: the service
/// is seen after the fault, not only during it.
pub const TAIL_MS: u64 = 1000;
/// The shortest load shrinking leaves.
pub const MIN_LOAD_MS: u64 = 2000;
/// The most runs `--runs` and `--shrink-runs` may ask for.
pub const MAX_RUNS: u32 = 10_000;
/// The version of explore.json's shape.
pub const SCHEMA_VERSION: u32 = 1;

/// How an exploration is made.
#[derive(Clone, Debug)]
pub struct ExploreOptions {
    /// Schedules drawn at most.
    pub runs: u32,
    /// Candidates tried at most while shrinking.
    pub shrink_runs: u32,
    /// Wall time for everything; no run starts that the last one's length
    /// says would end past it.
    pub budget: Duration,
    /// Replaces the scenario's seed: schedules and runs derive from it.
    pub seed: Option<u64>,
    /// Multiplies every duration of each run (the schedules themselves are
    /// written unscaled).
    pub scale: f64,
    /// Where the output goes: `<report_dir>/<scenario name>/`.
    pub report_dir: PathBuf,
    /// Where the system runs.
    pub backend: Backend,
    /// Whether to draw each run's progress bar.
    pub progress: bool,
    /// The JUnit and Markdown files to write over every run, beside the
    /// index.html of the runs.
    pub outputs: crate::report::Outputs,
}

/// A check, as runs are compared by: the same kind, name and window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckId {
    /// SLO, invariant or run check.
    pub kind: CheckKind,
    /// The metric or the invariant.
    pub name: String,
    /// The SLO's window.
    pub window: Option<String>,
}

impl CheckId {
    fn of(check: &CheckResult) -> CheckId {
        CheckId {
            kind: check.kind,
            name: check.name.clone(),
            window: check.window.clone(),
        }
    }

    fn label(&self) -> String {
        let kind = match self.kind {
            CheckKind::Slo => "slo",
            CheckKind::Invariant => "invariant",
            CheckKind::Run => "run check",
        };
        match &self.window {
            Some(w) => format!("{kind} {} over {w}", self.name),
            None => format!("{kind} {}", self.name),
        }
    }
}

/// The checks a run failed that count as findings: every failure but a
/// fault the harness could not apply, which says nothing of the system. A
/// vacuous check is not one: a drawn schedule may well not exercise it.
pub fn findings(checks: &[CheckResult]) -> Vec<CheckId> {
    checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .filter(|c| !(c.kind == CheckKind::Run && c.name == "fault_applied"))
        .map(CheckId::of)
        .collect()
}

/// Why a run was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A drawn schedule.
    Explore,
    /// A rerun of the first failure.
    Reproduce,
    /// A shrinking candidate.
    Shrink,
}

/// One run, as explore.json records it.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    /// Its number, from 0, over the whole exploration.
    pub run: u32,
    /// Why it was made.
    pub phase: Phase,
    /// For drawn schedules, which draw (run *i* of the exploration).
    pub draw: Option<u64>,
    /// For drawn schedules, the seed the schedule was drawn from:
    /// `seed::derive(seed, ["explore", i])`.
    pub draw_seed: Option<u64>,
    /// What ran.
    pub schedule: Schedule,
    /// The schedule in words.
    pub faults: Vec<String>,
    /// `pass`, `fail`, or `error` when the schedule could not be built.
    pub verdict: String,
    /// The checks it failed.
    pub failed: Vec<CheckId>,
    /// The checks that came out vacuous (not findings).
    pub vacuous: Vec<CheckId>,
    /// How long it took.
    pub duration_ms: u64,
    /// Its report.json, relative to explore.json.
    pub report: Option<String>,
    /// Why it could not be run, when it could not.
    pub error: Option<String>,
}

/// What explore.json holds.
#[derive(Clone, Debug, Serialize)]
pub struct ExploreReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The scenario's name.
    pub scenario: String,
    /// Its file.
    pub source: String,
    /// The seed of the schedules and the runs.
    pub seed: u64,
    /// The duration multiplier.
    pub scale: f64,
    /// `no_failure`, `failure` (reproduced and shrunk), `flaky` (did not
    /// reproduce every time) or `interrupted`.
    pub outcome: String,
    /// Every run, in order.
    pub runs: Vec<RunRecord>,
    /// The check the first failure failed, and on which run.
    pub found: Option<Found>,
    /// What shrinking did.
    pub shrink: Option<ShrinkRecord>,
    /// Why exploring stopped before `--runs` draws, if it did.
    pub stopped: Option<String>,
}

/// The first failure.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    /// The check.
    pub check: CheckId,
    /// The run that found it.
    pub run: u32,
    /// Reruns that failed it again, of [`REPRODUCE_RUNS`].
    pub reproduced: u32,
    /// Reruns made (fewer than [`REPRODUCE_RUNS`] when the budget ran out).
    pub reruns: u32,
}

/// What shrinking did.
#[derive(Clone, Debug, Serialize)]
pub struct ShrinkRecord {
    /// Every candidate tried, in order (step *k* is the *k*-th shrink run).
    pub steps: Vec<shrink::Step>,
    /// Whether it went as far as it could.
    pub finished: bool,
    /// Why it stopped early, when it did.
    pub stopped: Option<String>,
    /// The smallest failing schedule.
    pub minimal: Schedule,
}

/// Explores the scenario at `path`: prints progress to `err`, the summary
/// to `out`, writes the output under `--report-dir/<name>/`. Exit 0 when
/// no failure was found within the budget, 1 when one was (shrunk as far
/// as the budget allowed, or flaky), 2 on bad input or an environment that
/// cannot run it.
pub fn explore(
    path: &Path,
    options: &ExploreOptions,
    runtime: &tokio::runtime::Runtime,
    cancel: &Cancel,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let scenario = match scenario::load_file(path) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return Exit::BadInput;
        }
    };
    let Some(space) = scenario.explore.clone() else {
        let _ = writeln!(
            err,
            "error: {} has no `explore:` section, so there is no fault space to draw from (see FORMAT.md, \"explore\")",
            path.display()
        );
        return Exit::BadInput;
    };
    if let Err(e) = engine::check_scale(options.scale) {
        let _ = writeln!(err, "error: {e}");
        return Exit::BadInput;
    }
    for (flag, value) in [
        ("--runs", options.runs),
        ("--shrink-runs", options.shrink_runs),
    ] {
        if !(1..=MAX_RUNS).contains(&value) {
            let _ = writeln!(err, "error: {flag} must be 1 to {MAX_RUNS}, got {value}");
            return Exit::BadInput;
        }
    }
    if let Some(reason) = engine::unsupported_on(&options.backend, &scenario) {
        let _ = writeln!(err, "error: {}: {reason}", scenario.name);
        return Exit::BadInput;
    }
    let dir = options.report_dir.join(&scenario.name);
    if let Err(e) = prepare(&dir, &scenario) {
        let _ = writeln!(err, "error: cannot prepare {}: {e}", dir.display());
        return Exit::BadInput;
    }
    let mut explorer = Explorer {
        base: base_of(&scenario),
        space,
        options,
        runtime,
        cancel,
        seed: options.seed.unwrap_or(scenario.seed),
        dir,
        started: Instant::now(),
        longest_run: Duration::ZERO,
        runs: Vec::new(),
        reports: Vec::new(),
        err,
    };
    let report = explorer.explore(&scenario);
    let code = match report.outcome.as_str() {
        "no_failure" => Exit::Pass,
        "environment" => Exit::BadInput,
        _ if report.found.is_some() => Exit::CheckFailed,
        // Interrupted before anything was found.
        _ => Exit::BadInput,
    };
    let dir = explorer.dir.clone();
    let written = write_json(&dir.join("explore.json"), &report);
    let _ = write!(out, "{}", summary(&report, &explorer.space, &dir, options));
    if let Err(e) = written {
        let _ = writeln!(explorer.err, "error: cannot write explore.json: {e}");
        return code.worst(Exit::BadInput);
    }
    let entries: Vec<crate::report::html::IndexEntry<'_>> = explorer
        .reports
        .iter()
        .map(|(report, href)| crate::report::html::IndexEntry {
            report,
            href: href.clone(),
        })
        .collect();
    let title = format!("gauntlet explore {}", scenario.name);
    if let Err(e) = options.outputs.write(&dir, &title, &entries) {
        let _ = writeln!(explorer.err, "error: {e}");
        return code.worst(Exit::BadInput);
    }
    code
}

/// The scenario as every run starts from: no faults of its own, and only
/// the checks that judge any schedule.
fn base_of(scenario: &Scenario) -> Scenario {
    let (slos, invariants) = scenario::schedule_checks(&scenario.slos, &scenario.invariants);
    Scenario {
        faults: Vec::new(),
        slos,
        invariants,
        explore: None,
        ..scenario.clone()
    }
}

/// Makes the output directory, without what an earlier exploration left,
/// and writes the configuration the scenario files there name.
fn prepare(dir: &Path, scenario: &Scenario) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for stale in ["minimal.yaml", "original.yaml", "explore.json"] {
        match std::fs::remove_file(dir.join(stale)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir_all(dir.join("runs")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::write(dir.join(CONFIG_FILE), &scenario.system.config_yaml)
}

/// The configuration the written scenario files name, beside them.
const CONFIG_FILE: &str = "config.yaml";

fn write_json(path: &Path, report: &ExploreReport) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// How a run ended.
enum Ran {
    /// It was judged; these checks failed.
    Judged(Vec<CheckId>),
    /// The schedule could not be built or the run could not be made.
    Error(String),
    /// Interrupted.
    Interrupted,
}

struct Explorer<'a> {
    base: Scenario,
    space: Explore,
    options: &'a ExploreOptions,
    runtime: &'a tokio::runtime::Runtime,
    cancel: &'a Cancel,
    seed: u64,
    dir: PathBuf,
    started: Instant,
    longest_run: Duration,
    runs: Vec<RunRecord>,
    /// Each judged run's report and its page, relative to `dir`.
    reports: Vec<(crate::report::Report, String)>,
    err: &'a mut dyn Write,
}

impl Explorer<'_> {
    fn report(&mut self, scenario: &Scenario, outcome: &str) -> ExploreReport {
        ExploreReport {
            schema_version: SCHEMA_VERSION,
            scenario: scenario.name.clone(),
            source: scenario.source.display().to_string(),
            seed: self.seed,
            scale: self.options.scale,
            outcome: outcome.to_owned(),
            runs: std::mem::take(&mut self.runs),
            found: None,
            shrink: None,
            stopped: None,
        }
    }

    /// Whether another run fits in the budget, judging by the longest so far.
    fn budget_left(&self) -> bool {
        self.started.elapsed() + self.longest_run <= self.options.budget
    }

    fn explore(&mut self, scenario: &Scenario) -> ExploreReport {
        let load_ms = u64::try_from(scenario.load.duration().as_millis()).unwrap_or(u64::MAX);
        let mut stopped = None;
        let mut first = None;
        for draw in 0..u64::from(self.options.runs) {
            if !self.budget_left() {
                stopped = Some(format!(
                    "the budget of {} ran out",
                    fmt(self.options.budget)
                ));
                break;
            }
            let schedule = schedule::draw(&self.space, load_ms, self.seed, draw);
            let label = format!("run {} of {}", draw + 1, self.options.runs);
            match self.run(&schedule, Phase::Explore, Some(draw), &label) {
                Ran::Judged(failed) if !failed.is_empty() => {
                    first = Some((failed[0].clone(), schedule, self.runs.len() - 1));
                    break;
                }
                Ran::Judged(_) => {}
                Ran::Error(message) => {
                    let _ = writeln!(self.err, "error: {}: {message}", scenario.name);
                    let mut report = self.report(scenario, "environment");
                    report.stopped = Some(message);
                    return report;
                }
                Ran::Interrupted => {
                    let mut report = self.report(scenario, "interrupted");
                    report.stopped = Some("interrupted".to_owned());
                    return report;
                }
            }
        }
        let Some((check, original, run)) = first else {
            let mut report = self.report(scenario, "no_failure");
            report.stopped = stopped;
            return report;
        };
        let write_original = self.write_scenario("original.yaml", &original, &check);
        if let Err(e) = write_original {
            let _ = writeln!(self.err, "error: cannot write original.yaml: {e}");
        }
        // Reruns: a failure that does not come back every time is flaky,
        // and shrinking it would chase noise.
        let mut reproduced = 0;
        let mut reruns = 0;
        for k in 1..=REPRODUCE_RUNS {
            if !self.budget_left() || self.cancel.is_cancelled() {
                break;
            }
            reruns += 1;
            let label = format!("rerun {k} of {REPRODUCE_RUNS}");
            match self.run(&original, Phase::Reproduce, None, &label) {
                Ran::Judged(failed) if failed.contains(&check) => reproduced += 1,
                Ran::Judged(_) | Ran::Error(_) => {}
                Ran::Interrupted => break,
            }
        }
        let found = Found {
            check: check.clone(),
            run: u32::try_from(run).unwrap_or(u32::MAX),
            reproduced,
            reruns,
        };
        if reproduced < REPRODUCE_RUNS {
            let outcome = if self.cancel.is_cancelled() {
                "interrupted"
            } else {
                "flaky"
            };
            let mut report = self.report(scenario, outcome);
            report.found = Some(found);
            return report;
        }
        let bounds = Bounds {
            max_at_once: self.space.max_at_once as usize,
            min_for_ms: self
                .space
                .space
                .iter()
                .map(|t| {
                    t.duration
                        .map(|s| u64::try_from(s.min.as_millis()).unwrap_or(0))
                })
                .collect(),
            min_load_ms: min_load_ms(&self.base),
            tail_ms: TAIL_MS,
        };
        let mut shrink_runs = 0;
        let mut why_stopped = None;
        let shrunk = shrink::shrink(&original, &bounds, &mut |candidate| {
            if shrink_runs >= self.options.shrink_runs {
                why_stopped = Some(format!(
                    "--shrink-runs {} reached",
                    self.options.shrink_runs
                ));
                return Trial::Stop;
            }
            if !self.budget_left() {
                why_stopped = Some(format!(
                    "the budget of {} ran out",
                    fmt(self.options.budget)
                ));
                return Trial::Stop;
            }
            shrink_runs += 1;
            let label = format!("shrink step {shrink_runs}");
            match self.run(candidate, Phase::Shrink, None, &label) {
                Ran::Judged(failed) if failed.contains(&check) => Trial::Fails,
                Ran::Judged(_) | Ran::Error(_) => Trial::Passes,
                Ran::Interrupted => {
                    why_stopped = Some("interrupted".to_owned());
                    Trial::Stop
                }
            }
        });
        if let Err(e) = self.write_scenario("minimal.yaml", &shrunk.schedule, &check) {
            let _ = writeln!(self.err, "error: cannot write minimal.yaml: {e}");
        }
        let outcome = if self.cancel.is_cancelled() {
            "interrupted"
        } else {
            "failure"
        };
        let mut report = self.report(scenario, outcome);
        report.found = Some(found);
        report.shrink = Some(ShrinkRecord {
            steps: shrunk.steps,
            finished: shrunk.finished,
            stopped: why_stopped,
            minimal: shrunk.schedule,
        });
        report
    }

    /// Runs one schedule and records it.
    fn run(&mut self, schedule: &Schedule, phase: Phase, draw: Option<u64>, label: &str) -> Ran {
        let number = u32::try_from(self.runs.len()).unwrap_or(u32::MAX);
        let mut record = RunRecord {
            run: number,
            phase,
            draw,
            draw_seed: draw.map(|i| schedule::draw_seed(self.seed, i)),
            schedule: schedule.clone(),
            faults: schedule.describe(&self.space),
            verdict: "error".to_owned(),
            failed: Vec::new(),
            vacuous: Vec::new(),
            duration_ms: 0,
            report: None,
            error: None,
        };
        let mut scenario = match schedule::to_scenario(&self.base, &self.space, schedule) {
            Ok(s) => s,
            Err(e) => {
                // A schedule of valid templates that is not a valid timeline
                // is the space's fault, not the system's: it counts as a pass.
                let _ = writeln!(self.err, "explore: {label}: schedule skipped: {e}");
                record.error = Some(e);
                self.runs.push(record);
                return Ran::Judged(Vec::new());
            }
        };
        let _ = writeln!(
            self.err,
            "explore: {label}: load {}, {} fault{}{}",
            schedule::fmt_ms(schedule.load_ms),
            schedule.faults.len(),
            if schedule.faults.len() == 1 { "" } else { "s" },
            if schedule.faults.is_empty() {
                String::new()
            } else {
                format!(" ({})", record.faults.join("; "))
            }
        );
        let run_dir = format!("runs/{number:03}");
        // The run's own scenario file, beside its report: the report's
        // replay command names it, so every explored run replays as it ran.
        let file = self.dir.join(&run_dir).join("scenario.yaml");
        let written = std::fs::create_dir_all(self.dir.join(&run_dir)).and_then(|()| {
            std::fs::write(
                &file,
                scenario::render(&scenario, &format!("../../{CONFIG_FILE}")),
            )
        });
        if let Err(e) = written {
            let message = format!("cannot write {}: {e}", file.display());
            let _ = writeln!(self.err, "explore: {label}: {message}");
            record.error = Some(message.clone());
            self.runs.push(record);
            return Ran::Error(message);
        }
        scenario.source = file;
        let options = RunOptions {
            seed: Some(self.seed),
            scale: self.options.scale,
            report_dir: self.dir.join(&run_dir),
            backend: self.options.backend.clone(),
            progress: self.options.progress,
            label: Some(format!("{} {label}", scenario.name)),
            index_href: Some("../../../index.html".to_owned()),
        };
        let started = Instant::now();
        let result = self
            .runtime
            .block_on(engine::run(&scenario, &options, self.cancel));
        let took = started.elapsed();
        self.longest_run = self.longest_run.max(took);
        record.duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let ran = match result {
            Ok(report) => {
                let failed = findings(&report.checks);
                record.vacuous = report
                    .checks
                    .iter()
                    .filter(|c| c.verdict == Verdict::Vacuous)
                    .map(CheckId::of)
                    .collect();
                record.verdict = if failed.is_empty() { "pass" } else { "fail" }.to_owned();
                record.report = Some(format!("{run_dir}/{}/report.json", scenario.name));
                let _ = writeln!(
                    self.err,
                    "explore: {label}: {}",
                    if failed.is_empty() {
                        "pass".to_owned()
                    } else {
                        let names: Vec<String> = failed.iter().map(CheckId::label).collect();
                        format!("FAIL {}", names.join(", "))
                    }
                );
                record.failed = failed.clone();
                self.reports
                    .push((report, format!("{run_dir}/{}/report.html", scenario.name)));
                Ran::Judged(failed)
            }
            Err(RunError::Interrupted { .. }) => Ran::Interrupted,
            Err(e) => {
                record.error = Some(e.to_string());
                Ran::Error(e.to_string())
            }
        };
        self.runs.push(record);
        ran
    }

    /// Writes `schedule` as a scenario file judged by `check` alone, beside
    /// the configuration it names, and checks that it validates.
    fn write_scenario(
        &self,
        file: &str,
        schedule: &Schedule,
        check: &CheckId,
    ) -> Result<(), String> {
        let mut scenario = schedule::to_scenario(&self.base, &self.space, schedule)?;
        scenario.seed = self.seed;
        scenario.description = format!(
            "Found by `gauntlet explore` (seed {}): this schedule fails {}.",
            self.seed,
            check.label()
        );
        scenario.slos.retain(|s| {
            check.kind == CheckKind::Slo
                && s.objective.metric() == check.name
                && Some(crate::checks::window_label(&s.window)) == check.window
        });
        scenario
            .invariants
            .retain(|i| check.kind == CheckKind::Invariant && i.name() == check.name);
        let path = self.dir.join(file);
        std::fs::write(&path, scenario::render(&scenario, CONFIG_FILE))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        scenario::load_file(&path)
            .map(|_| ())
            .map_err(|e| format!("the written file does not validate: {e}"))
    }
}

/// The shortest load that still holds every check's window.
fn min_load_ms(base: &Scenario) -> u64 {
    base.slos
        .iter()
        .filter_map(|s| match s.window {
            scenario::Window::Every(d) => u64::try_from(d.as_millis()).ok(),
            _ => None,
        })
        .fold(MIN_LOAD_MS, u64::max)
}

fn fmt(d: Duration) -> String {
    schedule::fmt_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The terminal summary.
fn summary(
    report: &ExploreReport,
    space: &Explore,
    dir: &Path,
    options: &ExploreOptions,
) -> String {
    let mut out = String::new();
    let drawn = report
        .runs
        .iter()
        .filter(|r| r.phase == Phase::Explore)
        .count();
    let total_ms: u64 = report.runs.iter().map(|r| r.duration_ms).sum();
    out.push_str(&format!(
        "explore {}: seed {}, {drawn} schedule{} drawn, {} run{} in {}\n",
        report.scenario,
        report.seed,
        if drawn == 1 { "" } else { "s" },
        report.runs.len(),
        if report.runs.len() == 1 { "" } else { "s" },
        schedule::fmt_ms(total_ms / 1000 * 1000),
    ));
    if let Some(why) = &report.stopped {
        out.push_str(&format!("stopped: {why}\n"));
    }
    match &report.found {
        None => out.push_str(&format!(
            "result: {}\n",
            match report.outcome.as_str() {
                "no_failure" => "no failure found",
                other => other,
            }
        )),
        Some(found) => {
            out.push_str(&format!(
                "found: {} failed on run {}, and again on {} of {} reruns\n",
                found.check.label(),
                found.run,
                found.reproduced,
                REPRODUCE_RUNS
            ));
            let replay = |file: &str| {
                let scale = if options.scale == 1.0 {
                    String::new()
                } else {
                    format!(" --scale {}", options.scale)
                };
                format!("gauntlet run {}{scale}", dir.join(file).display())
            };
            match &report.shrink {
                None => {
                    out.push_str(&format!(
                        "result: flaky, not shrunk (it reproduced {} of {} times)\n",
                        found.reproduced, REPRODUCE_RUNS
                    ));
                    out.push_str(&format!("original: {}\n", replay("original.yaml")));
                }
                Some(shrunk) => {
                    let original = report
                        .runs
                        .get(found.run as usize)
                        .map_or(0, |r| r.schedule.faults.len());
                    let kept = shrunk.steps.iter().filter(|s| s.kept).count();
                    out.push_str(&format!(
                        "shrunk: {original} fault{} → {} in {} step{} ({kept} kept){}\n",
                        if original == 1 { "" } else { "s" },
                        shrunk.minimal.faults.len(),
                        shrunk.steps.len(),
                        if shrunk.steps.len() == 1 { "" } else { "s" },
                        match (&shrunk.stopped, shrunk.finished) {
                            (_, true) => ", as far as it goes".to_owned(),
                            (Some(why), false) => format!(", stopped early: {why}"),
                            (None, false) => ", stopped early".to_owned(),
                        }
                    ));
                    out.push_str(&format!(
                        "minimal schedule (load {}):\n",
                        schedule::fmt_ms(shrunk.minimal.load_ms)
                    ));
                    for line in shrunk.minimal.describe(space) {
                        out.push_str(&format!("  {line}\n"));
                    }
                    if shrunk.minimal.faults.is_empty() {
                        out.push_str("  (none: it fails without any fault)\n");
                    }
                    out.push_str(&format!("replay: {}\n", replay("minimal.yaml")));
                }
            }
        }
    }
    out.push_str(&format!("report: {}\n", dir.join("explore.json").display()));
    out
}

#[cfg(test)]
mod tests {
    use super::schedule::Drawn;
    use super::*;

    fn space() -> Explore {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/explore/retries.yaml");
        scenario::load_file(&path)
            .expect("the fixture is valid")
            .explore
            .expect("an explore section")
    }

    fn options() -> ExploreOptions {
        ExploreOptions {
            runs: 5,
            shrink_runs: 60,
            budget: Duration::from_secs(600),
            seed: None,
            scale: 0.5,
            report_dir: PathBuf::from("out"),
            backend: Backend::Docker(
                crate::images::ImageNames::resolve(None, None).expect("names"),
            ),
            progress: false,
            outputs: crate::report::Outputs::default(),
        }
    }

    fn run(run: u32, phase: Phase, schedule: &Schedule, failed: bool) -> RunRecord {
        let check = CheckId {
            kind: CheckKind::Invariant,
            name: "allowed_statuses".into(),
            window: None,
        };
        RunRecord {
            run,
            phase,
            draw: (phase == Phase::Explore).then_some(u64::from(run)),
            draw_seed: None,
            schedule: schedule.clone(),
            faults: schedule.describe(&space()),
            verdict: if failed { "fail" } else { "pass" }.into(),
            failed: if failed { vec![check] } else { vec![] },
            vacuous: vec![],
            duration_ms: 6_000,
            report: None,
            error: None,
        }
    }

    #[test]
    fn the_summary_names_the_finding_the_minimal_schedule_and_the_replay() {
        let program = Drawn {
            name: "program-1".into(),
            template: 4,
            target: "provider".into(),
            at_ms: 400,
            for_ms: Some(2400),
            intensity: vec![0.64],
        };
        let latency = Drawn {
            name: "latency-2".into(),
            template: 1,
            target: "llm".into(),
            at_ms: 900,
            for_ms: Some(2100),
            intensity: vec![0.4, 0.4],
        };
        let original = Schedule {
            faults: vec![program.clone(), latency],
            load_ms: 6000,
        };
        let minimal = Schedule {
            faults: vec![Drawn {
                at_ms: 0,
                for_ms: Some(1000),
                intensity: vec![0.0],
                ..program
            }],
            load_ms: 2000,
        };
        let check = CheckId {
            kind: CheckKind::Invariant,
            name: "allowed_statuses".into(),
            window: None,
        };
        let report = ExploreReport {
            schema_version: SCHEMA_VERSION,
            scenario: "explore-retries".into(),
            source: "fixtures/explore/retries.yaml".into(),
            seed: 16,
            scale: 0.5,
            outcome: "failure".into(),
            runs: vec![
                run(0, Phase::Explore, &original, true),
                run(1, Phase::Reproduce, &original, true),
                run(2, Phase::Reproduce, &original, true),
                run(3, Phase::Reproduce, &original, true),
                run(4, Phase::Shrink, &minimal, true),
            ],
            found: Some(Found {
                check,
                run: 0,
                reproduced: 3,
                reruns: 3,
            }),
            shrink: Some(ShrinkRecord {
                steps: vec![shrink::Step {
                    change: "remove latency-2".into(),
                    kept: true,
                    schedule: minimal.clone(),
                }],
                finished: false,
                stopped: Some("the budget of 10m ran out".into()),
                minimal,
            }),
            stopped: None,
        };
        insta::assert_snapshot!(summary(
            &report,
            &space(),
            Path::new("out/explore-retries"),
            &options()
        ));
    }

    #[test]
    fn a_flaky_failure_is_reported_and_not_shrunk() {
        let original = Schedule {
            faults: vec![],
            load_ms: 6000,
        };
        let report = ExploreReport {
            schema_version: SCHEMA_VERSION,
            scenario: "explore-retries".into(),
            source: "fixtures/explore/retries.yaml".into(),
            seed: 16,
            scale: 1.0,
            outcome: "flaky".into(),
            runs: vec![run(0, Phase::Explore, &original, true)],
            found: Some(Found {
                check: CheckId {
                    kind: CheckKind::Slo,
                    name: "error_rate".into(),
                    window: Some("all".into()),
                },
                run: 0,
                reproduced: 1,
                reruns: 3,
            }),
            shrink: None,
            stopped: None,
        };
        let text = summary(
            &report,
            &space(),
            Path::new("out/explore-retries"),
            &ExploreOptions {
                scale: 1.0,
                ..options()
            },
        );
        insta::assert_snapshot!(text);
    }
}
