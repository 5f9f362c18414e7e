//! Checks: SLOs over windows of the history, and invariants over the history
//! and the system's final state. Pure functions of [`Evidence`]: the engine
//! gathers the evidence, only the checks make verdicts, so every check can be
//! tested on hand-made evidence.
//!
//! Every check states the evidence it needs. A check that found none cannot
//! have failed, so it proves nothing: its verdict is [`Verdict::Vacuous`],
//! which fails the run like a violation does.

mod data;
mod degradation;
mod invariants;
mod output;
mod provider;
mod requests;
mod run;
mod slo;

use serde::{Deserialize, Serialize};

use crate::evidence::Evidence;
use crate::scenario::{Invariant, Scenario};

pub(crate) use slo::was_sent;
pub use slo::window_label;

/// The most evidence lines a failed check keeps; the count of the rest is said.
pub const MAX_EVIDENCE_LINES: usize = 20;

/// Whether a check is an SLO, an invariant the scenario lists, or one the
/// harness makes on every run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// A service-level objective.
    Slo,
    /// An invariant.
    Invariant,
    /// A check of the run itself, made on every run: each fault applied
    /// (`fault_applied`), the orchestrator stopped cleanly (`clean_shutdown`).
    Run,
}

/// What a check concluded.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It held, on the evidence it needs.
    Pass,
    /// It was violated; the evidence lines name how.
    Fail,
    /// It found none of the evidence it needs, so it could not have failed;
    /// the evidence line says what was missing. Fails the run.
    Vacuous,
}

impl CheckKind {
    /// The kind as reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Slo => "slo",
            CheckKind::Invariant => "invariant",
            CheckKind::Run => "run",
        }
    }
}

impl Verdict {
    /// The verdict as report.json and verdict.yaml write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Vacuous => "vacuous",
        }
    }
}

/// The judgement of one check.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    /// SLO, invariant or run check.
    pub kind: CheckKind,
    /// The check's name: the metric or the invariant.
    pub name: String,
    /// The window, for SLOs (`all`, `during(F)`...); the fault, for
    /// `fault_applied`.
    pub window: Option<String>,
    /// What it concluded.
    pub verdict: Verdict,
    /// The threshold, in words (`<= 2s`).
    pub expected: String,
    /// What was measured, in words; timings live here, so the redacted
    /// verdict leaves it out.
    pub observed: String,
    /// How much evidence it judged: requests, jobs, charges, entries,
    /// probes... (what counts is the check's own; 0 makes it vacuous).
    pub exercised: u64,
    /// For a failure: the evidence (request ids, keys, entries), at most
    /// [`MAX_EVIDENCE_LINES`] lines; for a vacuous check, what was missing.
    pub evidence: Vec<String>,
    /// For an SLO: its threshold as a number and each position of its window
    /// as judged, so that a report can draw them. `None` for other checks
    /// and for an SLO whose window could not be resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloPlot>,
}

/// An SLO's threshold and judged spans, in the units of its metric.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SloPlot {
    /// What the threshold measures: `latency_ms`, `error_rate`,
    /// `availability`, `throughput_rps` or `recovery_ms`.
    pub unit: SloUnit,
    /// The threshold, in `unit`.
    pub threshold: f64,
    /// Whether a value above the threshold is a violation (latency, error
    /// rate, recovery time) rather than one below it.
    pub upper_bound: bool,
    /// Each position of the window, in order.
    pub spans: Vec<JudgedSpan>,
}

/// The unit an SLO's threshold is in.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SloUnit {
    /// A latency quantile, in milliseconds.
    LatencyMs,
    /// A share of requests, in [0, 1].
    ErrorRate,
    /// A share of seconds, in [0, 1].
    Availability,
    /// 2xx answers per second.
    ThroughputRps,
    /// Milliseconds until the error rate settled.
    RecoveryMs,
}

/// One position of an SLO's window as judged: `[from_ms, to_ms)` from the
/// load's epoch, the value measured there (none without traffic) and
/// whether it met the threshold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JudgedSpan {
    /// Start, from the load's epoch.
    pub from_ms: f64,
    /// End (exclusive).
    pub to_ms: f64,
    /// What was measured, in the plot's unit.
    pub value: Option<f64>,
    /// Whether it met the threshold.
    pub passed: bool,
}

impl CheckResult {
    /// A check that holds until a violation is recorded.
    fn new(kind: CheckKind, name: &str, expected: impl Into<String>) -> CheckResult {
        CheckResult {
            kind,
            name: name.to_owned(),
            window: None,
            verdict: Verdict::Pass,
            expected: expected.into(),
            observed: String::new(),
            exercised: 0,
            evidence: Vec::new(),
            slo: None,
        }
    }

    fn invariant(name: &str, expected: impl Into<String>) -> CheckResult {
        CheckResult::new(CheckKind::Invariant, name, expected)
    }

    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// Records one violation: the check fails and keeps the line, up to the limit.
    fn violation(&mut self, line: impl Into<String>) {
        self.verdict = Verdict::Fail;
        if self.evidence.len() < MAX_EVIDENCE_LINES {
            self.evidence.push(line.into());
        }
    }

    /// Closes the evidence list with the count of violations it left out.
    fn finish(mut self, violations: usize) -> CheckResult {
        if violations > self.evidence.len() {
            let more = violations - self.evidence.len();
            self.evidence.push(format!("... and {more} more"));
        }
        self
    }

    /// Records how much evidence the check judged; with none, a check that
    /// found no violation is vacuous, and says what it lacked.
    fn exercised(self, count: u64, missing: impl FnOnce() -> String) -> CheckResult {
        self.evidenced(count, (count == 0).then(missing))
    }

    /// Records how much evidence the check judged, and what it lacked (for
    /// checks that need evidence of several parts, such as a probe inside
    /// each named fault): a check that found no violation but lacked some is
    /// vacuous.
    fn evidenced(mut self, count: u64, missing: Option<String>) -> CheckResult {
        self.exercised = count;
        if let Some(missing) = missing
            && self.verdict == Verdict::Pass
        {
            self.verdict = Verdict::Vacuous;
            self.evidence.push(format!("vacuous: {missing}"));
        }
        self
    }
}

/// Runs every SLO and invariant of the scenario against the evidence, in
/// file order (SLOs first), then the run checks: one `fault_applied` per
/// fault of the timeline and `clean_shutdown`.
pub fn run_all(scenario: &Scenario, evidence: &Evidence) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for slo in &scenario.slos {
        results.push(slo::check(slo, evidence));
    }
    for invariant in &scenario.invariants {
        results.push(check_invariant(invariant, evidence));
    }
    for fault in &evidence.faults {
        results.push(run::fault_applied(fault));
    }
    results.push(run::clean_shutdown(evidence));
    results
}

/// Judges one invariant.
pub fn check_invariant(invariant: &Invariant, evidence: &Evidence) -> CheckResult {
    match invariant {
        Invariant::NoLostJobs { .. } => invariants::no_lost_jobs(evidence),
        Invariant::ExactlyOnceCharge => invariants::exactly_once_charge(evidence),
        Invariant::BudgetNeverOverdrawn => invariants::budget_never_overdrawn(evidence),
        Invariant::BudgetConserved => invariants::budget_conserved(evidence),
        Invariant::AuditChainIntact => invariants::audit_chain_intact(evidence),
        Invariant::IdempotentReplayConsistent => invariants::idempotent_replay_consistent(evidence),
        Invariant::AllowedStatuses { statuses } => invariants::allowed_statuses(evidence, statuses),
        Invariant::RateLimitRespected => invariants::rate_limit_respected(evidence),
        Invariant::ReadyReflectsFaults { faults, within } => {
            invariants::ready_reflects_faults(evidence, faults, *within)
        }
        Invariant::NoPanics => invariants::no_panics(evidence),
        Invariant::RetryAfterHonoured => provider::retry_after_honoured(evidence),
        Invariant::AttemptsBounded => provider::attempts_bounded(evidence),
        Invariant::DeliveredOutputValid => output::delivered_output_valid(evidence),
        Invariant::DlqComplete => invariants::dlq_complete(evidence),
        Invariant::LimitsEnforced => requests::limits_enforced(evidence),
        Invariant::AccessEnforced => requests::access_enforced(evidence),
        Invariant::LockoutEffective => requests::lockout_effective(evidence),
        Invariant::RotationSeamless => requests::rotation_seamless(evidence),
        Invariant::SecurityHeaders => requests::security_headers(evidence),
        Invariant::NoPiiLeaked => data::no_pii_leaked(evidence),
        Invariant::WebhooksDelivered => data::webhooks_delivered(evidence),
        Invariant::SsrfRefused => data::ssrf_refused(evidence),
        Invariant::LeasesFenced => invariants::leases_fenced(evidence),
        Invariant::ShedFast { within } => requests::shed_fast(evidence, *within),
        Invariant::DegradationGraceful { reaches, within } => {
            degradation::degradation_graceful(evidence, *reaches, *within)
        }
    }
}
