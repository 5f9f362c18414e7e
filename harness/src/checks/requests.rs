//! Invariants of what each request was answered, judged against the
//! configuration's contract: who may do what (`access_enforced`), the
//! body and time limits (`limits_enforced`), the headers every answer
//! carries (`security_headers`), the brute-force lockout
//! (`lockout_effective`), key rotation (`rotation_seamless`) and load
//! shedding (`shed_fast`).

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use super::slo::describe_op;
use super::{CheckResult, Evidence};
use crate::load::{
    Credential, HSTS_HEADER, OVERLOADED, Op, OpKind, Outcome, SECURITY_HEADERS, VICTIM_KEY_ID,
};

/// How much later than `server.request_timeout` a slow request's 504 may
/// come: the service's timer, the proxy and the scheduler on a loaded
/// 2-core machine.
pub(super) const TIMEOUT_SLACK_MS: f64 = 1000.0;

/// What the contract says a request must be answered, as far as access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// No valid key: 401.
    Unauthenticated,
    /// A valid key whose role lacks the route's permission: 403 (or 429, as
    /// the limiter counts a key's requests before the permission check).
    Forbidden,
    /// A valid key whose role holds the permission: anything but 401 or 403.
    Allowed,
}

/// The role of an operation's key, if it carried a valid one.
fn role_of<'e>(evidence: &'e Evidence, op: &'e Op) -> Option<&'e str> {
    match &op.credential {
        Credential::Tenant | Credential::Victim => {
            evidence.tenant_roles.get(&op.tenant).map(String::as_str)
        }
        Credential::Role(role) => Some(role.as_str()),
        Credential::Missing
        | Credential::Unknown
        | Credential::Expired
        | Credential::Guess
        | Credential::Rotating
        | Credential::Successor => None,
    }
}

fn due(evidence: &Evidence, op: &Op) -> Due {
    match role_of(evidence, op) {
        None => Due::Unauthenticated,
        Some(role) if evidence.contract.permits(role, op.kind) => Due::Allowed,
        Some(_) => Due::Forbidden,
    }
}

/// Every answer agrees with the role→permission table of the run's
/// configuration: 401 for a missing, unknown or expired key; 403 for a role
/// without the route's permission; never 401 or 403 for a role with it.
/// Unanswered requests are not judged here, nor are the lockout's refusals
/// (429 `auth-locked`, which `lockout_effective` judges), nor keys issued
/// during the run (whose validity `rotation_seamless` judges).
pub(super) fn access_enforced(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "access_enforced",
        "401 without a valid key, 403 without the permission, neither with it",
    );
    let mut violations = 0;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for op in &evidence.history {
        let Outcome::Status(status) = op.outcome else {
            continue;
        };
        if op.auth_locked() || op.credential.is_issued() {
            continue;
        }
        let due = due(evidence, op);
        let agrees = match due {
            Due::Unauthenticated => status == 401,
            Due::Forbidden => status == 403 || status == 429,
            Due::Allowed => status != 401 && status != 403,
        };
        let label = match due {
            Due::Unauthenticated => "due 401",
            Due::Forbidden => "due 403",
            Due::Allowed => "allowed",
        };
        *counts.entry(label).or_default() += 1;
        if !agrees {
            violations += 1;
            let role = role_of(evidence, op)
                .map(|role| format!("role {role}"))
                .unwrap_or_else(|| format!("{:?} key", op.credential).to_lowercase());
            r.violation(format!(
                "{label} ({role} on {:?}, which needs {}): {}",
                op.kind,
                op.kind.permissions().join(" and "),
                describe_op(op)
            ));
        }
    }
    let refused =
        counts.get("due 401").copied().unwrap_or(0) + counts.get("due 403").copied().unwrap_or(0);
    r.observed = counts
        .iter()
        .map(|(label, n)| format!("{n} {label}"))
        .collect::<Vec<_>>()
        .join(", ");
    let judged = counts.values().sum();
    let missing = (refused == 0).then(|| {
        "no answered request was due a refusal (the mix has no bad key or forbidden role)"
            .to_owned()
    });
    r.finish(violations).evidenced(judged, missing)
}

/// Oversized bodies were answered 413 and slow requests 504 within the
/// service's request timeout (plus [`TIMEOUT_SLACK_MS`]), and no other
/// request got either. A slow request the client gave up on counts against
/// the service: the load waits longer than the service's timeout.
pub(super) fn limits_enforced(evidence: &Evidence) -> CheckResult {
    let contract = &evidence.contract;
    let timeout_ms = contract.request_timeout.as_secs_f64() * 1000.0;
    let mut r = CheckResult::invariant(
        "limits_enforced",
        format!(
            "bodies over {} bytes get 413, requests over {} get 504 within {:.0}ms, nothing else does",
            contract.body_limit_bytes,
            super::slo::humantime_like(contract.request_timeout),
            timeout_ms + TIMEOUT_SLACK_MS
        ),
    );
    let mut violations = 0;
    let (mut oversized, mut slow) = (0u64, 0u64);
    for op in &evidence.history {
        let status = op.outcome.status();
        let problem = match op.kind {
            OpKind::OversizedTask => match status {
                Some(413) => {
                    oversized += 1;
                    None
                }
                Some(other) => {
                    oversized += 1;
                    Some(format!("an oversized body was answered {other}"))
                }
                None => None,
            },
            OpKind::SlowTask => match (status, &op.outcome) {
                (Some(504), _) => {
                    slow += 1;
                    let took_ms = op.end_ms - op.start_ms;
                    (took_ms > timeout_ms + TIMEOUT_SLACK_MS)
                        .then(|| format!("a slow request's 504 took {took_ms:.0}ms"))
                }
                (Some(other), _) => {
                    slow += 1;
                    Some(format!("a slow request was answered {other}"))
                }
                (None, Outcome::Timeout) => {
                    slow += 1;
                    Some("the service never answered a slow request".to_owned())
                }
                (None, _) => None,
            },
            _ => match status {
                Some(code @ (413 | 504)) => Some(format!(
                    "a request neither oversized nor slow was answered {code}"
                )),
                _ => None,
            },
        };
        if let Some(problem) = problem {
            violations += 1;
            r.violation(format!("{problem}: {}", describe_op(op)));
        }
    }
    r.observed = format!("{oversized} oversized and {slow} slow requests judged");
    let mut missing = Vec::new();
    if oversized == 0 {
        missing.push("no oversized body was answered");
    }
    if slow == 0 {
        missing.push("no slow request was judged");
    }
    let missing = (!missing.is_empty()).then(|| missing.join(", and "));
    r.finish(violations).evidenced(oversized + slow, missing)
}

/// Every answer, whatever its status (a 401, a 413 and a 504 included),
/// carries each of [`SECURITY_HEADERS`] with its fixed value, and
/// `Strict-Transport-Security` exactly when the configuration sets
/// `security.hsts`. Unanswered requests are not judged.
pub(super) fn security_headers(evidence: &Evidence) -> CheckResult {
    let hsts = evidence.contract.hsts;
    let due: Vec<String> = SECURITY_HEADERS
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != HSTS_HEADER || hsts)
        .map(|(_, (name, value))| match value {
            Some(v) => format!("{name}: {v}"),
            None => (*name).to_owned(),
        })
        .collect();
    let mut r = CheckResult::invariant(
        "security_headers",
        format!(
            "every answer carries {}{}",
            due.join(", "),
            if hsts {
                ""
            } else {
                "; no strict-transport-security"
            }
        ),
    );
    let mut violations = 0;
    let mut answered = 0u64;
    let mut missing: BTreeMap<&str, u64> = BTreeMap::new();
    for op in &evidence.history {
        if !matches!(op.outcome, Outcome::Status(_)) {
            continue;
        }
        answered += 1;
        let wrong: Vec<&str> = SECURITY_HEADERS
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let carried = op.security_headers & (1 << i) != 0;
                if *i == HSTS_HEADER {
                    carried != hsts
                } else {
                    !carried
                }
            })
            .map(|(_, (name, _))| *name)
            .collect();
        if !wrong.is_empty() {
            violations += 1;
            for name in &wrong {
                *missing.entry(name).or_default() += 1;
            }
            r.violation(format!(
                "{}: wrong or missing {}",
                describe_op(op),
                wrong.join(", ")
            ));
        }
    }
    r.observed = if missing.is_empty() {
        format!("{answered} answers, every one as due")
    } else {
        missing
            .iter()
            .map(|(name, n)| format!("{name} wrong in {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    r.finish(violations)
        .exercised(answered, || "no request was answered".to_owned())
}

/// What a failed authentication is counted against, as the contract says:
/// the client address, and the key id an issued-format key names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Address(IpAddr),
    KeyId,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Address(addr) => write!(f, "address {addr}"),
            Subject::KeyId => write!(f, "key id {VICTIM_KEY_ID}"),
        }
    }
}

/// One subject's lockout as the harness models it from the answers alone.
/// A time the service saw a request at lies within the request's
/// `[start_ms, end_ms]` (one machine, one clock rate), so each question has
/// a sure answer, or none.
#[derive(Debug, Default)]
struct Model {
    /// Failed authentications counted, as `[start_ms, end_ms]`.
    failures: VecDeque<(f64, f64)>,
    /// The request that locked the subject, as `[start_ms, end_ms]`.
    locked_by: Option<(f64, f64)>,
    /// Whether a lockout of the subject has surely ended.
    ended: bool,
    /// Lost track (a request unanswered, or a boundary too close to call):
    /// nothing more is judged for this subject.
    unsure: bool,
}

/// Whether a subject was locked when the service saw a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lock {
    Surely,
    SurelyNot,
    Unsure,
}

impl Model {
    fn lock_at(&self, op: &Op, duration_ms: f64) -> Lock {
        if self.unsure {
            return Lock::Unsure;
        }
        match self.locked_by {
            None => Lock::SurelyNot,
            Some((lo, hi)) if op.start_ms >= hi && op.end_ms < lo + duration_ms => Lock::Surely,
            Some((_, hi)) if op.start_ms >= hi + duration_ms => Lock::SurelyNot,
            Some(_) => Lock::Unsure,
        }
    }

    /// Counts a failed authentication the service surely saw while the
    /// subject was surely unlocked; returns whether it locked the subject.
    /// A failure at the window's edge, or one whose order against the last
    /// is unknown, loses track instead.
    fn count_failure(&mut self, op: &Op, window_ms: f64, max_failures: usize) -> bool {
        while let Some(&(first_start, first_end)) = self.failures.front() {
            if op.start_ms - first_end >= window_ms {
                self.failures.pop_front();
            } else if op.end_ms - first_start < window_ms {
                break;
            } else {
                self.unsure = true;
                return false;
            }
        }
        // A failure the service may have counted after this one would make
        // the order of the two unknown.
        if self
            .failures
            .back()
            .is_some_and(|(_, end)| *end > op.start_ms)
        {
            self.unsure = true;
            return false;
        }
        self.failures.push_back((op.start_ms, op.end_ms));
        if self.failures.len() < max_failures {
            return false;
        }
        self.failures.clear();
        self.locked_by = Some((op.start_ms, op.end_ms));
        true
    }
}

/// Past `security.lockout.max_failures` failed authentications within the
/// window from one address (or naming one key id), every request from that
/// address (or naming that key id) is answered 429 `auth-locked` until the
/// lockout's duration has passed, a valid key included; no one else is ever
/// answered `auth-locked`. The harness counts the failures itself, from the
/// 401s the clients saw; a request with no answer, or a moment too close to
/// a boundary to call, ends the judgement of its subjects.
pub(super) fn lockout_effective(evidence: &Evidence) -> CheckResult {
    let lockout = &evidence.contract.lockout;
    let duration_ms = lockout.duration.as_secs_f64() * 1000.0;
    let window_ms = lockout.window.as_secs_f64() * 1000.0;
    let max_failures = lockout.max_failures as usize;
    let mut r = CheckResult::invariant(
        "lockout_effective",
        format!(
            "after {} failed authentications within {}, nothing from the address or naming the key id is served for {}; no one else is locked",
            lockout.max_failures,
            super::slo::humantime_like(lockout.window),
            super::slo::humantime_like(lockout.duration),
        ),
    );
    let mut ops: Vec<&Op> = evidence
        .history
        .iter()
        .filter(|op| op.outcome.was_sent())
        .collect();
    ops.sort_by(|a, b| {
        a.start_ms
            .total_cmp(&b.start_ms)
            .then(a.index.cmp(&b.index))
    });
    let mut models: BTreeMap<Subject, Model> = BTreeMap::new();
    // Each lock the model saw: the subject, and when the request that
    // locked it was answered.
    let mut locks: Vec<(Subject, f64)> = Vec::new();
    let mut last_start_ms = f64::NEG_INFINITY;
    let (mut refused, mut served_after, mut judged) = (0u64, 0u64, 0u64);
    let mut violations = 0;
    for op in ops {
        last_start_ms = last_start_ms.max(op.start_ms);
        let mut subjects = vec![Subject::Address(op.client)];
        if op.credential.names_victim() {
            subjects.push(Subject::KeyId);
        }
        let states: Vec<Lock> = subjects
            .iter()
            .map(|s| {
                models
                    .entry(s.clone())
                    .or_default()
                    .lock_at(op, duration_ms)
            })
            .collect();
        let Outcome::Status(status) = op.outcome else {
            // The service may or may not have counted it.
            for s in &subjects {
                if let Some(m) = models.get_mut(s) {
                    m.unsure = true;
                }
            }
            continue;
        };
        let due_locked = states.contains(&Lock::Surely);
        let due_served = states.iter().all(|l| *l == Lock::SurelyNot);
        if due_locked || due_served {
            judged += 1;
        }
        let locked_subject = subjects
            .iter()
            .zip(&states)
            .find(|(_, l)| **l == Lock::Surely)
            .map(|(s, _)| s.to_string());
        if op.auth_locked() {
            if due_served {
                violations += 1;
                r.violation(format!(
                    "locked out though no subject of it had failed {} times: {}",
                    lockout.max_failures,
                    describe(op)
                ));
            } else if due_locked {
                refused += 1;
            }
            continue;
        }
        if let Some(subject) = locked_subject {
            violations += 1;
            r.violation(format!(
                "answered {status} while {subject} was locked out: {}",
                describe(op)
            ));
            continue;
        }
        // The service counts every 401 to a presented key, whatever the
        // key was meant to be: a rotated key past its overlap too.
        let failed = status == 401 && op.credential != Credential::Missing;
        for (subject, state) in subjects.iter().zip(&states) {
            let Some(model) = models.get_mut(subject) else {
                continue;
            };
            if *state == Lock::Unsure {
                // Whether the service counted it depends on the unknown.
                if failed {
                    model.unsure = true;
                }
                continue;
            }
            if model.locked_by.is_some() {
                // The lockout surely ended: counting starts again.
                model.locked_by = None;
                model.ended = true;
            }
            if model.ended && op.credential.is_valid() {
                served_after += 1;
            }
            if failed && model.count_failure(op, window_ms, max_failures) {
                locks.push((subject.clone(), op.end_ms));
            }
        }
    }
    violations += audit_of_locks(&mut r, evidence, &locks, last_start_ms, duration_ms);
    r.observed = format!(
        "{} lockouts{}; {refused} requests refused while locked, {served_after} valid keys served after a lockout ended",
        locks.len(),
        if locks.is_empty() {
            String::new()
        } else {
            let named: Vec<String> = locks
                .iter()
                .map(|(subject, at_ms)| format!("{subject} at {at_ms:.0}ms"))
                .collect();
            format!(" ({})", named.join(", "))
        }
    );
    let mut missing = Vec::new();
    if locks.is_empty() {
        missing.push(format!(
            "no address or key id failed {} times within {} (the load has no `attack`, or too few guesses)",
            lockout.max_failures,
            super::slo::humantime_like(lockout.window)
        ));
    } else {
        if refused == 0 {
            missing.push("no request was sent during a lockout".to_owned());
        }
        if served_after == 0 {
            missing.push("no valid key was sent after a lockout ended".to_owned());
        }
    }
    let missing = (!missing.is_empty()).then(|| missing.join(", and "));
    r.finish(violations).evidenced(judged, missing)
}

/// How long after a lockout ended its `auth.unlocked` entry is surely
/// written: the service looks for ended lockouts on the first request at
/// least a quarter of a second after its last look.
const UNLOCK_SWEEP_MS: f64 = 250.0;

/// Every lock the model saw has its `auth.locked` entry in the audit log
/// the run left (read from the database copy), and every lock that ended
/// while requests still came has its `auth.unlocked` entry. Returns the
/// violations.
fn audit_of_locks(
    r: &mut CheckResult,
    evidence: &Evidence,
    locks: &[(Subject, f64)],
    last_start_ms: f64,
    duration_ms: f64,
) -> usize {
    if locks.is_empty() {
        return 0;
    }
    let db = match &evidence.database {
        Ok(db) => db,
        Err(e) => {
            r.violation(format!(
                "the lockouts' audit entries could not be read: {e}"
            ));
            return 1;
        }
    };
    let mut entries: BTreeMap<(String, String), usize> = BTreeMap::new();
    for row in &db.audit {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        *entries
            .entry((text(&row.action), text(&row.subject)))
            .or_default() += 1;
    }
    let mut due: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (subject, at_ms) in locks {
        *due.entry(("auth.locked".to_owned(), subject.to_string()))
            .or_default() += 1;
        if last_start_ms >= at_ms + duration_ms + UNLOCK_SWEEP_MS {
            *due.entry(("auth.unlocked".to_owned(), subject.to_string()))
                .or_default() += 1;
        }
    }
    let mut violations = 0;
    for ((action, subject), n) in due {
        let found = entries
            .get(&(action.clone(), subject.clone()))
            .copied()
            .unwrap_or(0);
        if found < n {
            violations += 1;
            r.violation(format!(
                "{n} `{action}` audit entries due for {subject}, {found} in the audit log"
            ));
        }
    }
    violations
}

/// An operation with its client address and key, for lockout evidence.
fn describe(op: &Op) -> String {
    format!(
        "{} from {} with {:?} key",
        describe_op(op),
        op.client,
        op.credential
    )
    .to_lowercase()
}

/// How far apart the harness's clock and the service's may read, in
/// milliseconds: one machine, but the service's times are whole
/// milliseconds of the wall clock and the harness's fractions of a
/// monotonic one.
const CLOCK_SLACK_MS: f64 = 20.0;

/// The rotator's key works beside its successor until the overlap
/// (`security.keys.rotation_overlap`) from the rotation ends, then gets 401
/// and nothing else; the successor works from the rotation on; the rotator
/// could issue and rotate its key, and the audit log the run left holds
/// `key.created` and `key.rotated` for it. Probes too close to the overlap's
/// end to call are not judged.
pub(super) fn rotation_seamless(evidence: &Evidence) -> CheckResult {
    let overlap = evidence.contract.rotation_overlap;
    let overlap_ms = overlap.as_secs_f64() * 1000.0;
    let mut r = CheckResult::invariant(
        "rotation_seamless",
        format!(
            "a rotated key works beside its successor for {}, then gets 401 and nothing else; the successor always works",
            super::slo::humantime_like(overlap)
        ),
    );
    let mut violations = 0;
    let find = |kind: OpKind| {
        evidence.history.iter().find(|op| {
            op.kind == kind
                && op.credential == Credential::Tenant
                && op.client == crate::load::ROTATOR_ADDRESS
        })
    };
    let created = find(OpKind::CreateKey);
    let rotated = find(OpKind::RotateKey);
    for (what, op) in [("issue", created), ("rotate", rotated)] {
        if let Some(op) = op
            && let Outcome::Status(status) = op.outcome
            && status != 201
        {
            violations += 1;
            r.violation(format!(
                "the rotator could not {what} its key: {}",
                describe(op)
            ));
        }
    }
    let (mut before, mut during, mut after, mut successor, mut unsure) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let rotation = rotated.filter(|op| op.outcome == Outcome::Status(201));
    for op in evidence
        .history
        .iter()
        .filter(|op| op.credential.is_issued())
    {
        let Outcome::Status(status) = op.outcome else {
            continue;
        };
        // What is due: served, 401, or not sure.
        let due = match (&op.credential, rotation) {
            (Credential::Successor, _) => Some(true),
            (_, None) => Some(true),
            (_, Some(rot)) if op.end_ms < rot.start_ms => Some(true),
            (_, Some(rot)) if op.end_ms < rot.start_ms + overlap_ms - CLOCK_SLACK_MS => Some(true),
            (_, Some(rot)) if op.start_ms > rot.end_ms + overlap_ms + CLOCK_SLACK_MS => Some(false),
            _ => None,
        };
        let phase = match (&op.credential, rotation) {
            (Credential::Successor, _) => "successor",
            (_, Some(rot)) if op.end_ms >= rot.start_ms => {
                if due == Some(false) {
                    "after the overlap"
                } else {
                    "in the overlap"
                }
            }
            _ => "before the rotation",
        };
        match due {
            None => unsure += 1,
            Some(true) if status == 200 => match phase {
                "successor" => successor += 1,
                "in the overlap" => during += 1,
                _ => before += 1,
            },
            Some(false) if status == 401 => after += 1,
            Some(served) => {
                violations += 1;
                let whose = if op.credential == Credential::Successor {
                    "the successor".to_owned()
                } else {
                    format!("the rotated key {phase}")
                };
                r.violation(format!(
                    "{whose} answered {status}, {} due: {}",
                    if served { "200" } else { "401" },
                    describe(op)
                ));
            }
        }
    }
    violations += audit_of_rotation(&mut r, evidence, created, rotation);
    r.observed = format!(
        "rotated key served {before} times before the rotation and {during} in the overlap, refused {after} times after it; successor served {successor} times; {unsure} too close to the overlap's end to judge"
    );
    let mut missing = Vec::new();
    if rotation.is_none() {
        missing.push("no rotation was answered".to_owned());
    }
    if during == 0 {
        missing.push("no probe with the rotated key was surely in the overlap".to_owned());
    }
    if after == 0 {
        missing.push("no probe with the rotated key was surely after the overlap".to_owned());
    }
    if successor == 0 {
        missing.push("the successor was never served".to_owned());
    }
    let missing = (!missing.is_empty()).then(|| missing.join(", and "));
    r.finish(violations)
        .evidenced(during + after + successor, missing)
}

/// The rotator's key has its `key.created` and `key.rotated` entries in the
/// audit log the run left. Returns the violations.
fn audit_of_rotation(
    r: &mut CheckResult,
    evidence: &Evidence,
    created: Option<&Op>,
    rotated: Option<&Op>,
) -> usize {
    let Some(id) = created.and_then(|op| op.resource_id.as_deref()) else {
        return 0;
    };
    let db = match &evidence.database {
        Ok(db) => db,
        Err(e) => {
            r.violation(format!(
                "the rotation's audit entries could not be read: {e}"
            ));
            return 1;
        }
    };
    let mut due = vec!["key.created"];
    if rotated.is_some() {
        due.push("key.rotated");
    }
    let mut violations = 0;
    for action in due {
        let found = db
            .audit
            .iter()
            .any(|row| row.action == action.as_bytes() && row.subject == id.as_bytes());
        if !found {
            violations += 1;
            r.violation(format!(
                "no `{action}` audit entry for the rotator's key {id}"
            ));
        }
    }
    violations
}

/// Every request admission control shed (problem `overloaded`) was answered
/// 503 with a `Retry-After` of whole seconds, within `within` of being
/// sent, and only when the service could have been full: at least the
/// route's `server.admission` bound of its other requests were on the wire
/// during it. The client's count of its own requests in flight is never
/// below the service's (a request is in flight at the service only while
/// the client waits for it), so a shed with fewer is one the bound did not
/// call for.
pub(super) fn shed_fast(evidence: &Evidence, within: std::time::Duration) -> CheckResult {
    let within_ms = within.as_secs_f64() * 1000.0;
    let contract = &evidence.contract;
    let mut r = CheckResult::invariant(
        "shed_fast",
        format!(
            "every 503 overloaded has Retry-After, comes within {}, and only with at least {} tasks or {} jobs in flight",
            orchestrator::config::format_duration(within),
            contract.tasks_in_flight,
            contract.jobs_in_flight
        ),
    );
    // The routes under admission control, and their bounds.
    let route = |kind: OpKind| match kind {
        OpKind::Task | OpKind::OversizedTask | OpKind::SlowTask => Some(contract.tasks_in_flight),
        OpKind::Job => Some(contract.jobs_in_flight),
        _ => None,
    };
    let same_route = |a: OpKind, b: OpKind| {
        let tasks = |k| matches!(k, OpKind::Task | OpKind::OversizedTask | OpKind::SlowTask);
        tasks(a) == tasks(b) && route(a).is_some() && route(b).is_some()
    };
    let mut violations = 0;
    let mut shed = 0u64;
    let mut slowest_ms = 0.0_f64;
    for op in evidence
        .history
        .iter()
        .filter(|op| op.problem.as_deref() == Some(OVERLOADED))
    {
        shed += 1;
        let took_ms = op.end_ms - op.start_ms;
        slowest_ms = slowest_ms.max(took_ms);
        if op.outcome != Outcome::Status(503) {
            violations += 1;
            r.violation(format!("overloaded but not 503: {}", describe_op(op)));
        }
        if !retry_after_whole_seconds(op) {
            violations += 1;
            r.violation(format!(
                "overloaded without a Retry-After of whole seconds ({:?}): {}",
                op.retry_after,
                describe_op(op)
            ));
        }
        if took_ms > within_ms {
            violations += 1;
            r.violation(format!("shed after {took_ms:.0}ms: {}", describe_op(op)));
        }
        let Some(bound) = route(op.kind) else {
            violations += 1;
            r.violation(format!(
                "shed on a route without admission control: {}",
                describe_op(op)
            ));
            continue;
        };
        let in_flight = evidence
            .history
            .iter()
            .filter(|other| {
                other.index != op.index
                    && same_route(other.kind, op.kind)
                    && other.outcome.was_sent()
                    && other.start_ms < op.end_ms
                    && other.end_ms > op.start_ms
            })
            .count();
        if (in_flight as u64) < u64::from(bound) {
            violations += 1;
            r.violation(format!(
                "shed with at most {in_flight} others in flight, under the bound of {bound}: {}",
                describe_op(op)
            ));
        }
    }
    r.observed = format!("{shed} shed, the slowest answered after {slowest_ms:.0}ms");
    r.finish(violations).exercised(shed, || {
        "no request was shed: the load never went beyond server.admission".to_owned()
    })
}

/// Whether an answer carried a `Retry-After` of whole seconds, at least one:
/// what every refusal that asks a client to come back must say.
pub(super) fn retry_after_whole_seconds(op: &Op) -> bool {
    op.retry_after
        .as_deref()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|s| s > 0)
}
