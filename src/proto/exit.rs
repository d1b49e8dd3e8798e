//! Exit codes, documented in docs/operations.md and the README. The
//! master's codes ([`Exit`]) are what systemd and scripts see; a worker's
//! ([`WorkerExit`]) are what the master logs.

use std::process::{ExitCode, Termination};

/// How `rsvisor` ends: `serve` (the master), `check` and the operator's
/// commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u8)]
pub enum Exit {
    /// Clean stop (TERM, INT, QUIT) or a successful `check`.
    Ok = 0,
    /// A runtime failure of the master (an OS call it cannot do without
    /// failed), or an operator command that could not reach it.
    Failure = 1,
    /// The configuration (file, environment or flags) is invalid, or the
    /// command line is wrong.
    ConfigError = 2,
    /// The app's startup failed in every worker before any became ready:
    /// restarting would only loop (gunicorn's WORKER_BOOT_ERROR).
    AppStartupFailed = 3,
    /// A listening address could not be bound (in use, permission, no such
    /// address).
    BindFailed = 4,
    /// `rsvisor reload`: the reload was refused (invalid config), abandoned
    /// (new workers could not start) or rolled back (its canary failed).
    ReloadFailed = 5,
}

impl Exit {
    /// The process exit status.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl Termination for Exit {
    fn report(self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        e.report()
    }
}

/// How a worker process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[repr(i32)]
pub enum WorkerExit {
    /// Drained and exited normally.
    Ok = 0,
    /// The app's `startup` returned an error.
    AppStartupFailed = 3,
    /// Setting itself up after fork failed (signals, runtime, privileges,
    /// listeners).
    SetupFailed = 4,
    /// Found its master gone at startup (it never serves orphaned).
    Orphaned = 5,
    /// A panic escaped the worker's main function.
    Panicked = 6,
}

impl WorkerExit {
    const ALL: [WorkerExit; 5] = [
        WorkerExit::Ok,
        WorkerExit::AppStartupFailed,
        WorkerExit::SetupFailed,
        WorkerExit::Orphaned,
        WorkerExit::Panicked,
    ];

    /// The process exit status.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The exit a status stands for, if a worker of rsvisor's uses it.
    pub fn from_code(code: i32) -> Option<WorkerExit> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// What the master logs for it.
    pub fn describe(self) -> &'static str {
        match self {
            WorkerExit::Ok => "normal exit",
            WorkerExit::AppStartupFailed => "app startup failed",
            WorkerExit::SetupFailed => "worker setup failed",
            WorkerExit::Orphaned => "master was gone",
            WorkerExit::Panicked => "panicked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_codes_round_trip() {
        for e in WorkerExit::ALL {
            assert_eq!(WorkerExit::from_code(e.code()), Some(e));
        }
        assert_eq!(WorkerExit::from_code(127), None);
        assert_eq!(Exit::ReloadFailed.code(), 5);
    }
}
