//! Checks: SLOs over windows of the history, and invariants over the history
//! and the system's final state. Pure functions of [`Evidence`]: the engine
//! gathers the evidence, the checks only judge it, so every check can be
//! tested on hand-made histories.

mod invariants;
mod slo;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::load::Op;
use crate::mock_llm::CallRecord;
use crate::scenario::{Invariant, Scenario};

pub(crate) use slo::was_sent;
pub use slo::window_label;

/// The most evidence lines a failed check keeps; the count of the rest is said.
pub const MAX_EVIDENCE_LINES: usize = 20;

/// What the run observed, as the checks need it.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// Every operation the load generator planned, in plan order.
    pub history: Vec<Op>,
    /// How long the load ran, in milliseconds from its epoch.
    pub load_end_ms: f64,
    /// When each fault was applied and reverted, by fault name.
    pub faults: BTreeMap<String, FaultSpan>,
    /// Health probe samples, in time order.
    pub health: Vec<HealthSample>,
    /// Budget samples (during the run and one final per tenant).
    pub budgets: Vec<BudgetSample>,
    /// Final state of every job acknowledged with 202, by id; a job whose
    /// state could not be read maps to `None`.
    pub jobs: BTreeMap<String, Option<JobFinal>>,
    /// The ledger, read from the store after the run, or why it could not be.
    pub charges: Result<Vec<orchestrator::store::ChargeRecord>, String>,
    /// The mock provider's journal, and how many records it dropped.
    pub journal: Vec<CallRecord>,
    /// Records the journal dropped (its ring is bounded).
    pub journal_dropped: u64,
    /// `GET /v1/audit/verify` after the run, or why it failed.
    pub audit_online: Result<AuditAnswer, String>,
    /// `orchestrator audit verify` on the database after shutdown.
    pub audit_offline: Result<AuditAnswer, String>,
    /// The configured rate limit of each tenant's key: (per second, burst).
    pub rate_limits: BTreeMap<String, (u32, u32)>,
    /// Panics found in the orchestrator's log: (line number, line).
    pub panics: Vec<(usize, String)>,
    /// Windows in which the process was meant to be down (kill, pause,
    /// restart, OOM faults), so liveness failures there are expected.
    pub process_down: Vec<(f64, f64)>,
}

/// When a fault was in force, in milliseconds from the load's epoch.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct FaultSpan {
    /// When it was applied.
    pub start_ms: f64,
    /// When it was reverted (equal to `start_ms` for an instant fault).
    pub end_ms: f64,
}

/// One probe of `/health/live` and `/health/ready`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct HealthSample {
    /// When, from the load's epoch.
    pub at_ms: f64,
    /// The live probe's status; `None` when it got no answer.
    pub live: Option<u16>,
    /// The ready probe's status; `None` when it got no answer.
    pub ready: Option<u16>,
}

/// A tenant's budget as the service reported it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BudgetSample {
    /// When, from the load's epoch.
    pub at_ms: f64,
    /// The tenant.
    pub tenant: String,
    /// Tokens charged.
    pub used_tokens: u64,
    /// Tokens reserved by calls in flight.
    pub reserved_tokens: u64,
    /// The limit.
    pub limit_tokens: u64,
}

/// A job's state at the end of the run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JobFinal {
    /// `queued`, `running`, `succeeded` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// The audit verification answer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AuditAnswer {
    /// Whether the chain verified.
    pub ok: bool,
    /// Entries read.
    pub entries: u64,
    /// The first entry that does not verify.
    pub first_bad_seq: Option<u64>,
    /// Why.
    pub reason: Option<String>,
}

/// Whether a check is an SLO or an invariant.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// A service-level objective.
    Slo,
    /// An invariant.
    Invariant,
}

/// The judgement of one check.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CheckResult {
    /// SLO or invariant.
    pub kind: CheckKind,
    /// The check's name: the metric or the invariant.
    pub name: String,
    /// The window, for SLOs (`all`, `during(F)`...).
    pub window: Option<String>,
    /// Whether it held.
    pub passed: bool,
    /// The threshold, in words (`<= 2s`).
    pub expected: String,
    /// What was measured, in words; timings live here, so the redacted
    /// verdict leaves it out.
    pub observed: String,
    /// For a failure: the evidence (request ids, keys, entries), at most
    /// [`MAX_EVIDENCE_LINES`] lines.
    pub evidence: Vec<String>,
}

impl CheckResult {
    fn invariant(name: &str, expected: impl Into<String>) -> CheckResult {
        CheckResult {
            kind: CheckKind::Invariant,
            name: name.to_owned(),
            window: None,
            passed: true,
            expected: expected.into(),
            observed: String::new(),
            evidence: Vec::new(),
        }
    }

    /// Records one violation: the check fails and keeps the line, up to the limit.
    fn violation(&mut self, line: impl Into<String>) {
        self.passed = false;
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
}

/// Runs every SLO and invariant of the scenario against the evidence, in
/// file order (SLOs first).
pub fn run_all(scenario: &Scenario, evidence: &Evidence) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for slo in &scenario.slos {
        results.push(slo::check(slo, scenario, evidence));
    }
    for invariant in &scenario.invariants {
        results.push(check_invariant(invariant, evidence));
    }
    results
}

/// Judges one invariant.
pub fn check_invariant(invariant: &Invariant, evidence: &Evidence) -> CheckResult {
    match invariant {
        Invariant::NoLostJobs { .. } => invariants::no_lost_jobs(evidence),
        Invariant::ExactlyOnceCharge => invariants::exactly_once_charge(evidence),
        Invariant::BudgetNeverOverdrawn => invariants::budget_never_overdrawn(evidence),
        Invariant::AuditChainIntact => invariants::audit_chain_intact(evidence),
        Invariant::IdempotentReplayConsistent => invariants::idempotent_replay_consistent(evidence),
        Invariant::AllowedStatuses { statuses } => invariants::allowed_statuses(evidence, statuses),
        Invariant::RateLimitRespected => invariants::rate_limit_respected(evidence),
        Invariant::ReadyReflectsFaults { faults, within } => {
            invariants::ready_reflects_faults(evidence, faults, *within)
        }
        Invariant::NoPanics => invariants::no_panics(evidence),
    }
}
