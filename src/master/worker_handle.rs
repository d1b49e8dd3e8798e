//! The master's view of one worker: its pid, slot, generation and what the
//! master has asked of it, with TERM → KILL and ABRT → KILL escalation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::Config;
use crate::scoreboard::{Board, SlotState};

/// After SIGABRT for a missed heartbeat, how long before SIGKILL.
pub const ABORT_GRACE: Duration = Duration::from_secs(1);
/// After SIGINT in a quick stop, how long before SIGKILL.
pub const QUICK_STOP_GRACE: Duration = Duration::from_secs(1);

/// Why the master asked a worker to leave; also the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    Reload,
    MaxRequests,
    Memory,
    ScaleDown,
    Shutdown,
    Timeout,
    BootTimeout,
}

impl Retirement {
    pub fn reason(self) -> &'static str {
        match self {
            Retirement::Reload => "reload",
            Retirement::MaxRequests => "max_requests",
            Retirement::Memory => "memory",
            Retirement::ScaleDown => "scale_down",
            Retirement::Shutdown => "shutdown",
            Retirement::Timeout | Retirement::BootTimeout => "timeout",
        }
    }
}

pub struct WorkerHandle {
    pub pid: Pid,
    pub slot: usize,
    pub generation: u32,
    /// The configuration this worker was started with (its listeners).
    pub config: Arc<Config>,
    pub spawned_at: Instant,
    /// Set once the worker reported ready.
    pub ready_at: Option<Instant>,
    /// What the master asked of it, if anything.
    pub retirement: Option<Retirement>,
    /// When to SIGKILL it if it is still there.
    kill_at: Option<Instant>,
    killed: bool,
    /// Memory checks in a row above `max_worker_memory`.
    pub memory_strikes: u32,
    /// To be replaced for using too much memory (like a retiring worker).
    pub memory_retire: bool,
}

impl WorkerHandle {
    pub fn new(pid: Pid, slot: usize, generation: u32, config: Arc<Config>) -> WorkerHandle {
        WorkerHandle {
            pid,
            slot,
            generation,
            config,
            spawned_at: Instant::now(),
            ready_at: None,
            retirement: None,
            kill_at: None,
            killed: false,
            memory_strikes: 0,
            memory_retire: false,
        }
    }

    /// The worker's own report, from the scoreboard.
    pub fn state(&self, board: &Board) -> SlotState {
        board.slot(self.slot).state()
    }

    /// Asked to leave (drain, abort or kill) already.
    pub fn leaving(&self) -> bool {
        self.retirement.is_some()
    }

    /// Graceful: stop accepting, finish in-flight requests, exit; killed if
    /// still there after `graceful_timeout`.
    pub fn drain(&mut self, why: Retirement, graceful_timeout: Duration) {
        if self.retirement.is_some() {
            return;
        }
        self.retirement = Some(why);
        self.send(Signal::SIGTERM);
        self.kill_at = Some(Instant::now() + graceful_timeout);
    }

    /// Missed heartbeats or boot deadline: SIGABRT (a core dump shows where
    /// it was stuck), then SIGKILL after [`ABORT_GRACE`].
    pub fn abort(&mut self, why: Retirement) {
        self.retirement = Some(why);
        self.send(Signal::SIGABRT);
        self.kill_at = Some(Instant::now() + ABORT_GRACE);
    }

    /// Quick stop: SIGINT (default action: exit now), SIGKILL shortly after.
    pub fn quick_stop(&mut self) {
        self.retirement = Some(Retirement::Shutdown);
        self.send(Signal::SIGINT);
        let deadline = Instant::now() + QUICK_STOP_GRACE;
        self.kill_at = Some(self.kill_at.map_or(deadline, |d| d.min(deadline)));
    }

    /// Sends SIGKILL once the deadline passed; returns true if it did.
    pub fn escalate(&mut self, now: Instant) -> bool {
        match self.kill_at {
            Some(at) if now >= at && !self.killed => {
                self.killed = true;
                self.send(Signal::SIGKILL);
                true
            }
            _ => false,
        }
    }

    pub fn kill_deadline(&self) -> Option<Instant> {
        if self.killed {
            None
        } else {
            self.kill_at
        }
    }

    /// Forwards a signal (USR1) to the worker.
    pub fn signal(&self, sig: Signal) {
        self.send(sig);
    }

    fn send(&self, sig: Signal) {
        // ESRCH: it is already gone and will be reaped; nothing to do.
        let _ = kill(self.pid, sig);
    }
}
