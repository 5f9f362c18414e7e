//! Checks of the run itself, made on every run whatever the scenario lists:
//! a fault that was not applied means the scenario did not test what it
//! says, and an orchestrator that did not stop cleanly left state that
//! crash recovery, not the code under test, would have to settle.

use super::{CheckKind, CheckResult, Evidence};
use crate::evidence::FaultRecord;

/// The fault was applied at its time and reverted at its end, without error.
pub(super) fn fault_applied(fault: &FaultRecord) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::Run,
        "fault_applied",
        format!("fault {} applied and reverted", fault.name),
    );
    r.window = Some(fault.name.clone());
    if let Some(error) = &fault.error {
        r.violation(format!("fault {} ({}): {error}", fault.name, fault.kind));
        r.observed = error.clone();
    } else if fault.span().is_none() {
        r.violation(format!(
            "fault {} ({}) has no record of being applied and reverted",
            fault.name, fault.kind
        ));
        r.observed = "not applied".to_owned();
    } else {
        r.observed = "applied and reverted".to_owned();
    }
    let applied = u64::from(fault.applied_ms.is_some());
    r.exercised(applied, || {
        format!("fault {} was never applied", fault.name)
    })
}

/// The orchestrator exited 0 on SIGTERM within its bound at the end.
pub(super) fn clean_shutdown(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::Run,
        "clean_shutdown",
        "the orchestrator exits 0 on SIGTERM",
    );
    let stopped = match &evidence.shutdown {
        Ok(s) => {
            r.observed.clone_from(&s.exit);
            if !s.graceful {
                r.violation(format!(
                    "the orchestrator did not stop gracefully: {}",
                    s.exit
                ));
            }
            1
        }
        Err(why) => {
            r.violation(format!("the orchestrator could not be stopped: {why}"));
            r.observed.clone_from(why);
            0
        }
    };
    r.exercised(stopped, || "no final stop was made".to_owned())
}
