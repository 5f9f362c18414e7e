//! The exit codes of every command of both binaries (`orchestrator` and
//! `gauntlet`), declared once. A command returns an [`Exit`]; only `main`
//! turns it into a process exit code, so no number is written anywhere else.

use std::fmt;

/// How a command ended, as its process exit code says it.
///
/// The order is severity: when several results combine (several scenarios,
/// several files), the run exits with the worst, [`Exit::worst`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exit {
    /// 0: the command did what was asked, and every check it made passed.
    Pass,
    /// 1: the command ran, and a check it made failed (a scenario's SLO or
    /// invariant, a vacuous check, a tampered audit log).
    CheckFailed,
    /// 2: bad input (a file, a configuration, arguments) or an environment
    /// that cannot run the command (a missing tool, no root, an unknown
    /// database schema); nothing was judged.
    BadInput,
}

impl Exit {
    /// Every exit code, in order.
    pub const ALL: [Exit; 3] = [Exit::Pass, Exit::CheckFailed, Exit::BadInput];

    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Pass => 0,
            Exit::CheckFailed => 1,
            Exit::BadInput => 2,
        }
    }

    /// The more severe of two results.
    pub fn worst(self, other: Exit) -> Exit {
        self.max(other)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.code().fmt(f)
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> std::process::ExitCode {
        std::process::ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_zero_one_two_in_order_of_severity() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2]);
        assert_eq!(Exit::Pass.worst(Exit::CheckFailed), Exit::CheckFailed);
        assert_eq!(Exit::BadInput.worst(Exit::CheckFailed), Exit::BadInput);
    }
}
