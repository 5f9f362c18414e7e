//! Evidence: what a run observed, in the harness's own types, and the
//! harness's own readers of what the system left behind ([`db`], [`audit`]).
//! The engine gathers it; the checks only judge it. Nothing here uses the
//! orchestrator's store or audit code: a bug there must not hide from the
//! check meant to catch it.

pub mod audit;
pub mod db;
pub mod redis;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::load::Op;
use crate::mock_llm::CallRecord;
use crate::scenario::Contract;
pub use db::Database;

/// The most dead jobs one `GET /v1/dlq` lists (the service's page limit),
/// so a listing of that many may be cut short.
pub const DLQ_PAGE: usize = 1000;

/// Time after a process fault's end during which liveness failures are
/// expected: the orchestrator is being started again.
pub const RESTART_GRACE_MS: f64 = 5000.0;

/// Everything the checks judge.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// Every operation the load generator planned, in plan order.
    pub history: Vec<Op>,
    /// How long the load ran, in milliseconds from its epoch.
    pub load_end_ms: f64,
    /// The load's epoch on the wall clock, Unix milliseconds: what puts the
    /// system's own timestamps (audit entries) on the load's time axis.
    pub epoch_unix_ms: f64,
    /// The fault timeline as it happened, in timeline order.
    pub faults: Vec<FaultRecord>,
    /// Health probe samples, in time order.
    pub health: Vec<HealthSample>,
    /// Budget samples read through the API during the run.
    pub budgets: Vec<BudgetSample>,
    /// How the wait for jobs to settle ended.
    pub settle: Settle,
    /// The database the orchestrator left, read from a copy after it
    /// stopped, or why it could not be read.
    pub database: Result<Database, String>,
    /// The mock provider's journal.
    pub journal: Vec<CallRecord>,
    /// Records the journal dropped (its ring is bounded).
    pub journal_dropped: u64,
    /// `GET /v1/audit/verify` before shutdown, or why it failed.
    pub audit_service: Result<AuditAnswer, String>,
    /// The configured rate limit of each tenant's key: (per second, burst).
    pub rate_limits: BTreeMap<String, (u32, u32)>,
    /// The role of each tenant's own key.
    pub tenant_roles: BTreeMap<String, String>,
    /// What the system's configuration promises (roles, retry bounds,
    /// limits, the plan policy).
    pub contract: Contract,
    /// Answer bodies the history did not keep (its budget ran out), so
    /// checks of delivered output know how much they did not see.
    pub bodies_dropped: u64,
    /// The payloads the mock provider was told to inject, by the fault
    /// programs of the timeline.
    pub injected: Vec<String>,
    /// Each tenant's dead-letter queue as `GET /v1/dlq` listed it after the
    /// jobs settled (ids), or why it could not be read.
    pub dlq_listing: Result<BTreeMap<String, Vec<String>>, String>,
    /// The orchestrator's log, or why it could not be read.
    pub log: Result<LogEvidence, String>,
    /// How the orchestrator's final stop went, or why it could not be made.
    pub shutdown: Result<ShutdownEvidence, String>,
    /// What the webhook sink and the trap saw, when the run had them.
    pub webhooks: Option<WebhookEvidence>,
}

/// What the webhook sink received and the trap counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WebhookEvidence {
    /// Every delivery the sink kept, in arrival order.
    pub records: Vec<crate::sink::SinkRecord>,
    /// Deliveries past the sink's record limit, not kept.
    pub dropped: u64,
    /// Connections the trap accepted (each one an SSRF the guard let through).
    pub trap_connections: u64,
}

impl Evidence {
    /// When the named fault was in force, if it was applied and reverted.
    pub fn span(&self, name: &str) -> Option<FaultSpan> {
        self.faults
            .iter()
            .find(|f| f.name == name)
            .and_then(FaultRecord::span)
    }

    /// Windows in which the orchestrator was meant to be down (process and
    /// memory faults, plus [`RESTART_GRACE_MS`] to come back), so liveness
    /// failures there are expected.
    pub fn process_down(&self) -> Vec<(f64, f64)> {
        self.faults
            .iter()
            .filter(|f| f.class == "process" || f.class == "memory")
            .filter_map(FaultRecord::span)
            .map(|s| (s.start_ms, s.end_ms + RESTART_GRACE_MS))
            .collect()
    }
}

/// What happened to one fault of the timeline.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct FaultRecord {
    /// The fault's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its class (`network`, `llm`, `process`, `disk`, `memory`).
    pub class: String,
    /// Its target.
    pub target: String,
    /// When it was scheduled to start, from the load's epoch.
    pub scheduled_ms: f64,
    /// When applying it began; `None` if it never was applied.
    pub applied_ms: Option<f64>,
    /// When reverting it completed (the service may still be recovering).
    pub reverted_ms: Option<f64>,
    /// Why applying or reverting failed.
    pub error: Option<String>,
}

impl FaultRecord {
    /// When it was in force, if it was applied and reverted.
    pub fn span(&self) -> Option<FaultSpan> {
        Some(FaultSpan {
            start_ms: self.applied_ms?,
            end_ms: self.reverted_ms?,
        })
    }
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
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct HealthSample {
    /// When, from the load's epoch.
    pub at_ms: f64,
    /// The live probe's status; `None` when it got no answer.
    pub live: Option<u16>,
    /// The ready probe's status; `None` when it got no answer.
    pub ready: Option<u16>,
}

/// A tenant's budget as the service reported it during the run.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
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

/// The service's answer to `GET /v1/audit/verify`.
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
    /// The hash of the last entry it read, hex.
    pub head_hash: Option<String>,
}

/// How the wait for jobs to settle ended.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Settle {
    /// No job was queued or running any more.
    Settled,
    /// The wait ran out first.
    TimedOut {
        /// How long it waited, in milliseconds.
        after_ms: u64,
        /// What was still pending, per tenant.
        pending: String,
    },
}

/// The orchestrator's log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogEvidence {
    /// Lines read.
    pub lines: u64,
    /// Lines holding a panic: (1-based line number, the line), at most 100.
    pub panics: Vec<(usize, String)>,
    /// The whole text, for checks that look for what must not be there.
    pub text: String,
}

impl LogEvidence {
    /// Reads a log's text: its line count and its panics (lines holding
    /// `panicked`, which the panic hook and the service's panic recovery
    /// both write), each cut to 300 characters.
    pub fn from_text(text: &str) -> LogEvidence {
        LogEvidence {
            lines: text.lines().count() as u64,
            panics: text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains("panicked"))
                .take(100)
                .map(|(i, l)| (i + 1, l.chars().take(300).collect()))
                .collect(),
            text: text.to_owned(),
        }
    }
}

/// How the orchestrator's final stop went.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ShutdownEvidence {
    /// It exited 0 after SIGTERM, within the bound.
    pub graceful: bool,
    /// How the last process ended, in words (`exit code 0`, `killed by
    /// SIGKILL`, `not running`).
    pub exit: String,
}
