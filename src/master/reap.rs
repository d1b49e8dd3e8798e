//! Step 3: collect exited workers, log how they ended, count why, and
//! apply the boot-failure backoff.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::worker_handle::{Retirement, WorkerHandle};
use super::{Master, Phase};
use crate::exit;

/// First delay before respawning after a worker died during boot; doubles
/// with every further boot failure in a row.
pub const BOOT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Cap of that delay.
pub const BOOT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => {
                let meaning = match *c {
                    exit::WORKER_OK => "normal exit",
                    exit::WORKER_APP_STARTUP_FAILED => "app startup failed",
                    exit::WORKER_SETUP_FAILED => "worker setup failed",
                    exit::WORKER_ORPHANED => "master was gone",
                    exit::WORKER_PANICKED => "panicked",
                    _ => "unexpected exit code",
                };
                write!(f, "exit code {c} ({meaning})")
            }
            Exit::Signal(s) => write!(f, "killed by signal {} ({s})", *s as i32),
        }
    }
}

impl Master {
    pub(super) fn reap_children(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, Exit::Signal(sig)),
                _ => continue,
            };
            let Some(idx) = self.workers.iter().position(|w| w.pid == pid) else {
                self.upgrade_child_exited(pid, how);
                continue;
            };
            let w = self.workers.remove(idx);
            self.worker_exited(w, how);
        }
    }

    fn worker_exited(&mut self, w: WorkerHandle, how: Exit) {
        let was_ready = w.ready_at.is_some();
        let reason = match w.retirement {
            Some(r) => r.reason(),
            None => "crash",
        };
        self.board.release(w.slot);
        self.board.count_exit(reason);
        let pid = w.pid.as_raw();
        match (w.retirement, how) {
            (Some(Retirement::Timeout | Retirement::BootTimeout), _) => {
                warn!(pid, status = %how, "worker stopped after timeout");
            }
            (Some(_), Exit::Code(0)) => {
                info!(pid, reason, "worker exited after draining");
            }
            (Some(r), _) => {
                warn!(pid, reason = r.reason(), status = %how, "worker ended");
            }
            (None, _) if self.phase != Phase::Running => {
                info!(pid, status = %how, "worker exited during shutdown");
            }
            (None, _) => {
                error!(
                    pid,
                    slot = w.slot,
                    status = %how,
                    was_ready,
                    "worker died unexpectedly; replacing it"
                );
            }
        }
        let boot_failure = !was_ready
            && w.generation == self.generation
            && matches!(w.retirement, None | Some(Retirement::BootTimeout));
        if boot_failure && self.phase == Phase::Running {
            self.boot_failed(how);
        }
        self.close_unused_listeners();
    }

    fn boot_failed(&mut self, how: Exit) {
        self.boot_failures += 1;
        if how == Exit::Code(exit::WORKER_APP_STARTUP_FAILED) {
            self.startup_failures += 1;
        }
        let backoff = BOOT_BACKOFF_BASE
            .saturating_mul(1 << (self.boot_failures - 1).min(16))
            .min(BOOT_BACKOFF_MAX);
        self.spawn_not_before = Instant::now() + backoff;
        warn!(
            failures_in_a_row = self.boot_failures,
            retry_in = ?backoff,
            "worker failed during boot"
        );
        if let Some(r) = &mut self.reload {
            r.boot_failed();
        }
    }
}
