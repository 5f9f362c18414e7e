//! Invariants of what each request was answered, judged against the
//! configuration's contract: who may do what (`access_enforced`), the
//! body and time limits (`limits_enforced`), and the headers every answer
//! carries (`security_headers`).

use std::collections::BTreeMap;

use super::slo::describe_op;
use super::{CheckResult, Evidence};
use crate::load::{Credential, HSTS_HEADER, Op, OpKind, Outcome, SECURITY_HEADERS};

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
        Credential::Tenant => evidence.tenant_roles.get(&op.tenant).map(String::as_str),
        Credential::Role(role) => Some(role.as_str()),
        Credential::Missing | Credential::Unknown | Credential::Expired => None,
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
/// Unanswered requests are not judged here.
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
