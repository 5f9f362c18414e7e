//! The history: one [`Op`] per planned operation, whatever became of it. SLOs
//! and invariants are checked on it after the run, so it records what the
//! client saw (status, headers that matter, a digest of the body) and when,
//! never an interpretation.

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

/// What an operation does: the route it calls (and, for the two task
/// variants, what is special about its body).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `POST /v1/tasks`.
    Task,
    /// `POST /v1/tasks` with a body over the service's body limit: 413 is due.
    OversizedTask,
    /// `POST /v1/tasks` whose prompt carries [`SLOW_MARKER`], which the mock
    /// provider delays past the service's request timeout: 504 is due.
    SlowTask,
    /// `POST /v1/jobs`.
    Job,
    /// `GET /v1/jobs`.
    ListJobs,
    /// `GET /v1/jobs/{id}` of a job accepted earlier in the run.
    ReadJob,
    /// `GET /v1/budgets/{tenant}` of the key's own tenant: a read when no job
    /// of the tenant has been accepted yet.
    ReadBudget,
    /// `GET /v1/budgets/{tenant}` of another tenant.
    ReadOtherBudget,
    /// `GET /v1/dlq`.
    ListDlq,
    /// `POST /v1/dlq/{id}/replay` of a job the run saw dead.
    ReplayDlq,
    /// `GET /v1/audit`.
    ReadAudit,
    /// `GET /v1/audit/verify`.
    VerifyAudit,
    /// `GET /v1/roles`.
    ReadRoles,
    /// `GET /v1/keys`.
    ListKeys,
    /// `POST /v1/keys`: the rotator issuing its key.
    CreateKey,
    /// `POST /v1/keys/{id}/rotate`: the rotator rotating it.
    RotateKey,
}

/// The text in a prompt that the harness's standing rule on the mock
/// provider delays past the service's request timeout.
pub const SLOW_MARKER: &str = "[gauntlet-slow]";

impl OpKind {
    /// The routes a request with a bad key or a role's key may be sent to,
    /// every route that needs a permission.
    pub const ROUTES: [OpKind; 12] = [
        OpKind::Task,
        OpKind::Job,
        OpKind::ListJobs,
        OpKind::ReadJob,
        OpKind::ReadBudget,
        OpKind::ReadOtherBudget,
        OpKind::ListDlq,
        OpKind::ReplayDlq,
        OpKind::ReadAudit,
        OpKind::VerifyAudit,
        OpKind::ReadRoles,
        OpKind::ListKeys,
    ];

    /// The permissions a key's role needs for this route, as the design
    /// states them (design.md, "Security"), by their configuration names.
    /// Written here, not taken from the orchestrator's own route table, so
    /// that a slip in that table is caught by `access_enforced`. Reading
    /// another tenant's budget needs both `budget.read` (the route) and
    /// `budget.read_all`.
    pub fn permissions(self) -> &'static [&'static str] {
        match self {
            OpKind::Task | OpKind::OversizedTask | OpKind::SlowTask => &["tasks.create"],
            OpKind::Job => &["jobs.create"],
            OpKind::ListJobs => &["jobs.list"],
            OpKind::ReadJob => &["jobs.read"],
            OpKind::ReadBudget => &["budget.read"],
            OpKind::ReadOtherBudget => &["budget.read", "budget.read_all"],
            OpKind::ListDlq => &["dlq.read"],
            OpKind::ReplayDlq => &["dlq.replay"],
            OpKind::ReadAudit => &["audit.read"],
            OpKind::VerifyAudit => &["audit.verify"],
            OpKind::ReadRoles => &["roles.read"],
            OpKind::ListKeys => &["keys.read"],
            OpKind::CreateKey => &["keys.create"],
            OpKind::RotateKey => &["keys.rotate"],
        }
    }

    /// `POST /v1/tasks` in any of its variants: an answer of 200 runs the
    /// model and is charged.
    pub fn is_task(self) -> bool {
        matches!(
            self,
            OpKind::Task | OpKind::OversizedTask | OpKind::SlowTask
        )
    }
}

/// Where a job's webhook points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookTarget {
    /// The harness's webhook sink, under a name the allowlist admits and an
    /// address an entry names: delivered.
    Sink,
    /// The trap: a loopback port under a name the allowlist admits, but at an
    /// address no entry names: refused.
    Trap,
}

/// The key a request carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// The tenant's own key, of the tenant's role.
    Tenant,
    /// A key of the tenant with this role.
    Role(String),
    /// No `Authorization` header.
    Missing,
    /// A well-formed key that no one configured.
    Unknown,
    /// A key of the tenant that has expired.
    Expired,
    /// An attacker's guess: a wrong key in the issued format, naming the key
    /// id of the tenant's [`Credential::Victim`] key (401 due, and counted
    /// against the address and the key id).
    Guess,
    /// The tenant's key in the issued format (`gk.<id>.<secret>`), of the
    /// tenant's role, whose id the attacker guesses at.
    Victim,
    /// The key the rotator issued at the start and later rotated: valid
    /// until the rotation's overlap ends, then 401 is due.
    Rotating,
    /// Its successor, issued by the rotation.
    Successor,
}

impl Credential {
    /// Whether a valid key is presented (the tenant's or a role's), so that
    /// the answer depends on the role's permissions; otherwise 401 is due.
    pub fn is_valid(&self) -> bool {
        matches!(
            self,
            Credential::Tenant | Credential::Role(_) | Credential::Victim
        )
    }

    /// Whether the key was issued during the run, so that whether it is
    /// valid depends on when: `rotation_seamless` judges its answers.
    pub fn is_issued(&self) -> bool {
        matches!(self, Credential::Rotating | Credential::Successor)
    }

    /// The key id the presented key names in the issued format, which the
    /// service locks like an address.
    pub fn names_victim(&self) -> bool {
        matches!(self, Credential::Guess | Credential::Victim)
    }
}

/// How an operation ended.
///
/// Serialised externally tagged in snake case: `{"status": 200}`,
/// `"timeout"`, `{"connect_error": "..."}`, `{"io_error": "..."}`,
/// `"cancelled"`, `"not_sent"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An answer with this status and a complete body.
    Status(u16),
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection could not be made (refused, reset during connect...);
    /// the text says why.
    ConnectError(String),
    /// Any other failure to send the request or read the answer; the text
    /// says what failed.
    IoError(String),
    /// Due and sent (or waiting for a slot) but abandoned: the drain timeout
    /// ran out, or the run was cancelled while it was on the wire.
    Cancelled,
    /// Never sent: the run was cancelled before it went out.
    NotSent,
}

impl Outcome {
    /// The status of an answer, `None` when there was none.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Status(status) => Some(*status),
            _ => None,
        }
    }

    /// The status, with 0 for no answer, as the `allowed_statuses` invariant
    /// counts it. `None` for an operation never sent, which had no chance to
    /// be answered.
    pub fn status_or_zero(&self) -> Option<u16> {
        match self {
            Outcome::Status(status) => Some(*status),
            Outcome::NotSent => None,
            _ => Some(0),
        }
    }

    /// Whether the operation went out (everything but [`Outcome::NotSent`]).
    pub fn was_sent(&self) -> bool {
        !matches!(self, Outcome::NotSent)
    }

    /// A 2xx answer.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Status(status) if (200..300).contains(status))
    }

    /// An error as SLOs count them: a 5xx answer, or no answer to a request
    /// that was sent. 4xx answers are the service working as specified.
    pub fn is_error(&self) -> bool {
        match self {
            Outcome::Status(status) => *status >= 500,
            Outcome::NotSent => false,
            Outcome::Timeout
            | Outcome::ConnectError(_)
            | Outcome::IoError(_)
            | Outcome::Cancelled => true,
        }
    }
}

/// One operation of the run, as the client saw it. Times are milliseconds
/// since the load's epoch, all read from one monotonic clock.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Op {
    /// Its position in the plan, from 0.
    pub index: u64,
    /// What it did; a planned read becomes [`OpKind::ReadJob`] or
    /// [`OpKind::ReadBudget`] when it is sent.
    pub kind: OpKind,
    /// The tenant it acted as.
    pub tenant: String,
    /// The key it carried.
    pub credential: Credential,
    /// The client address it came from, sent as `X-Forwarded-For` (the
    /// service trusts the proxy in front of it to say).
    pub client: IpAddr,
    /// The `Idempotency-Key` sent, for tasks and jobs.
    pub idempotency_key: Option<String>,
    /// Whether the key (and body) are those of an earlier operation.
    pub reused_key: bool,
    /// When the plan meant to send it.
    pub intended_ms: f64,
    /// When it got a slot and went out (equal to `end_ms` when it never did).
    pub start_ms: f64,
    /// When its answer was complete, or it failed, or it was abandoned.
    pub end_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// The answer's `x-request-id`.
    pub request_id: Option<String>,
    /// The answer's `Retry-After`, as sent.
    pub retry_after: Option<String>,
    /// Whether the answer carried `Idempotent-Replayed: true`.
    pub replayed: bool,
    /// The `"id"` of a 200 or 202 answer's JSON body.
    pub resource_id: Option<String>,
    /// Hex SHA-256 of the complete answer body, byte for byte as received.
    pub body_sha256: Option<String>,
    /// The body of a 200 answer to a task, a job read or a DLQ listing, as
    /// received (lossy UTF-8), so that checks judge what clients were given;
    /// `None` for other answers and once the run's body budget is spent.
    pub body: Option<String>,
    /// For [`OpKind::ReadJob`] and [`OpKind::ReplayDlq`], the job it read or
    /// replayed.
    pub job_id: Option<String>,
    /// The `"state"` of a job a 200 [`OpKind::ReadJob`] answer described.
    pub job_state: Option<String>,
    /// The ids a 200 [`OpKind::ListDlq`] answer listed.
    pub dlq_listed: Vec<String>,
    /// The problem type of an error answer in problem+json, without the
    /// `urn:orchestrator:problem:` prefix (`auth-locked`, `rate-limited`).
    pub problem: Option<String>,
    /// Which of [`SECURITY_HEADERS`] the answer carried as expected: bit
    /// `i` for entry `i` (present, with the fixed value where there is one).
    pub security_headers: u16,
    /// Where the job's webhook pointed, for a job that carried one.
    pub webhook: Option<WebhookTarget>,
    /// The personal data planted in the request (its prompt, its
    /// `Idempotency-Key`, its `X-Request-Id`), which must leave no trace.
    pub planted: Vec<String>,
}

/// The response headers every answer is due (seed 004's seven, and the
/// response time), with the value each must have where one is fixed: the
/// harness's own list, not the service's. `Strict-Transport-Security` is
/// due only when `security.hsts` is set.
pub const SECURITY_HEADERS: [(&str, Option<&str>); 8] = [
    ("x-content-type-options", Some("nosniff")),
    ("x-frame-options", Some("DENY")),
    // 0, as OWASP advises: the legacy filter could itself be abused.
    ("x-xss-protection", Some("0")),
    ("strict-transport-security", None),
    ("content-security-policy", None),
    ("referrer-policy", None),
    ("permissions-policy", None),
    ("x-response-time", None),
];

/// The problem type of a lockout's refusal.
pub const AUTH_LOCKED: &str = "auth-locked";

/// The problem type of admission control's refusal.
pub const OVERLOADED: &str = "overloaded";

/// The client address of ordinary operation `index`: each its own, in
/// `198.18.0.0/16` (of the benchmarking range, RFC 2544), so that one
/// client's bad key never locks out another. Wraps after 65536.
pub fn client_address(index: u64) -> IpAddr {
    let host = u32::try_from(index % 65_536).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host,
    ))
}

/// The key id of the key an attacker guesses at ([`Credential::Victim`]).
pub const VICTIM_KEY_ID: &str = "gauntlet-victim";

/// The attacker's address, outside every ordinary one.
pub const ATTACKER_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 255, 254));

/// The address of the attack's `n`th probe with the victim key: a fresh
/// one each, in `198.19.0.0/17`, so that only the key id can lock it.
pub fn probe_address(n: u64) -> IpAddr {
    let host = u32::try_from(n % 32_768).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(198, 19, 0, 0)) + host,
    ))
}

/// The address the rotator issues and rotates its key from.
pub const ROTATOR_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 255, 251));

/// The address the rotated key ([`Credential::Rotating`]) is sent from: its
/// 401s after the overlap count against this address alone.
pub const ROTATED_KEY_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 255, 252));

/// The address the successor ([`Credential::Successor`]) is sent from.
pub const SUCCESSOR_KEY_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 255, 253));

/// The index of `Strict-Transport-Security` in [`SECURITY_HEADERS`].
pub const HSTS_HEADER: usize = 3;

impl Op {
    /// An operation as planned and not (yet) sent: the tenant's own key, no
    /// answer, every time at `intended_ms`.
    pub fn planned(index: u64, kind: OpKind, tenant: &str, intended_ms: f64) -> Op {
        Op {
            index,
            kind,
            tenant: tenant.to_owned(),
            credential: Credential::Tenant,
            client: client_address(index),
            idempotency_key: None,
            reused_key: false,
            intended_ms,
            start_ms: intended_ms,
            end_ms: intended_ms,
            outcome: Outcome::NotSent,
            request_id: None,
            retry_after: None,
            replayed: false,
            resource_id: None,
            body_sha256: None,
            body: None,
            job_id: None,
            job_state: None,
            dlq_listed: Vec::new(),
            problem: None,
            security_headers: 0,
            webhook: None,
            planted: Vec::new(),
        }
    }

    /// Whether the answer was the lockout's refusal.
    pub fn auth_locked(&self) -> bool {
        self.outcome == Outcome::Status(429) && self.problem.as_deref() == Some(AUTH_LOCKED)
    }

    /// The job's id, if this operation is a job submission acknowledged
    /// with 202: what `no_lost_jobs` holds the system to.
    pub fn acknowledged_job(&self) -> Option<&str> {
        (self.kind == OpKind::Job && self.outcome == Outcome::Status(202))
            .then_some(self.resource_id.as_deref())
            .flatten()
    }

    /// The latency the client experienced, counted from the intended send
    /// time (so that time spent waiting for a slot or behind a stall is not
    /// hidden): `end_ms - intended_ms`. `None` for an operation never sent.
    /// For a cancelled operation it is a lower bound.
    pub fn latency_ms(&self) -> Option<f64> {
        self.outcome
            .was_sent()
            .then(|| (self.end_ms - self.intended_ms).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_serialise_in_the_documented_shape() {
        let shapes = [
            (Outcome::Status(200), json!({"status": 200})),
            (Outcome::Timeout, json!("timeout")),
            (
                Outcome::ConnectError("refused".into()),
                json!({"connect_error": "refused"}),
            ),
            (Outcome::IoError("eof".into()), json!({"io_error": "eof"})),
            (Outcome::Cancelled, json!("cancelled")),
            (Outcome::NotSent, json!("not_sent")),
        ];
        for (outcome, expected) in shapes {
            assert_eq!(serde_json::to_value(&outcome).ok(), Some(expected));
        }
        assert_eq!(
            serde_json::to_value(OpKind::ReadBudget).ok(),
            Some(json!("read_budget"))
        );
    }

    #[test]
    fn errors_are_5xx_and_unanswered_requests() {
        assert!(Outcome::Status(503).is_error());
        assert!(!Outcome::Status(429).is_error());
        assert!(Outcome::Timeout.is_error());
        assert!(Outcome::Cancelled.is_error());
        assert!(!Outcome::NotSent.is_error());
        assert!(Outcome::Status(202).is_ok());
        assert_eq!(Outcome::Timeout.status_or_zero(), Some(0));
        assert_eq!(Outcome::NotSent.status_or_zero(), None);
    }
}
