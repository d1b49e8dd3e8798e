//! The master's view of one worker: its pid, slot, generation, its stage
//! (booting → serving → retiring → leaving), and the TERM → KILL and
//! ABRT → KILL escalation of a worker told to leave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::exec::ExecIo;
use crate::config::Config;
use crate::proto::outcome::ExitReason;
use crate::proto::state::WorkerState;
use crate::shm::scoreboard::SlotState;
use crate::worker::WorkerRole;

/// After SIGABRT for a missed heartbeat, how long before SIGKILL.
pub const ABORT_GRACE: Duration = Duration::from_secs(1);
/// After SIGINT in a quick stop, how long before SIGKILL.
pub const QUICK_STOP_GRACE: Duration = Duration::from_secs(1);

/// Where a worker is in its life, as the master sees it. One reason per
/// worker: the reason it retires is the reason it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Forked; not serving yet.
    Booting,
    Serving,
    /// Wants to be replaced (max_requests, memory): serves on until a
    /// ready replacement takes its place.
    Retiring(ExitReason),
    /// Told to leave.
    Leaving(Leaving),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaving {
    pub reason: ExitReason,
    pub how: LeaveHow,
    /// SIGKILL then, if it is still there.
    kill_at: Instant,
    killed: bool,
    /// SIGABRT is held back until then while its stacks are dumped.
    abort_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveHow {
    /// TERM: stop accepting, finish in-flight requests, exit.
    Drain,
    /// ABRT: it is stuck (a core dump shows where).
    Abort,
    /// INT: exit now.
    Quick,
}

/// How long a worker must stay up after it said it was ready before its
/// start counts as a success. One that exits sooner failed to start: the
/// boot backoff applies, and a reload it belongs to counts a boot failure.
/// An exec worker's "ready" is its own word (`READY=1`, a log line that
/// gunicorn prints before it imports the app), so it also joins the
/// fleet's capacity, and old workers make way for it, only then.
pub const READY_SETTLE: Duration = Duration::from_secs(2);

/// What changed when the master read the worker's own report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Nothing,
    /// Up for [`READY_SETTLE`] since it said it was ready.
    Settled,
}

pub struct WorkerHandle {
    pub pid: Pid,
    pub slot: usize,
    pub generation: u32,
    /// The configuration this worker was started with (its listeners,
    /// its timeouts).
    pub config: Arc<Config>,
    pub spawned_at: Instant,
    /// Set once the worker reported ready.
    pub ready_at: Option<Instant>,
    /// It has stayed up [`READY_SETTLE`] since.
    pub settled: bool,
    pub stage: Stage,
    /// Retire it once it has lived this long (`max_worker_lifetime` plus
    /// its own share of the jitter).
    pub lifetime: Option<Duration>,
    /// Exec mode: the master's end of the program's output and notify
    /// socket.
    pub exec: Option<ExecIo>,
    /// What asks it to drain: TERM, or `app.stop_signal` in exec mode.
    pub stop_signal: Signal,
    /// What a forked worker runs (an app worker, or a helper).
    pub role: WorkerRole,
}

impl WorkerHandle {
    pub fn new(pid: Pid, slot: usize, generation: u32, config: Arc<Config>) -> WorkerHandle {
        let lc = &config.lifecycle;
        let lifetime = lc
            .max_worker_lifetime
            .map(|base| base + lc.max_worker_lifetime_jitter.mul_f64(jitter_fraction(pid)));
        WorkerHandle {
            pid,
            slot,
            generation,
            spawned_at: Instant::now(),
            ready_at: None,
            settled: false,
            stage: Stage::Booting,
            lifetime,
            exec: None,
            stop_signal: Signal::SIGTERM,
            role: WorkerRole::App,
            config,
        }
    }

    /// A helper worker (front worker, metrics sidecar).
    pub fn with_role(mut self, role: WorkerRole) -> WorkerHandle {
        self.role = role;
        self
    }

    /// An exec-mode worker: `app.command` with its output and notify socket.
    pub fn with_exec(mut self, io: ExecIo) -> WorkerHandle {
        self.stop_signal = self.config.app.stop_signal.0;
        self.exec = Some(io);
        self
    }

    /// Whether its heartbeat is watched: always for forked workers; for an
    /// exec worker once it has sent `WATCHDOG=1`.
    pub fn has_heartbeat(&self) -> bool {
        self.exec.as_ref().is_none_or(|e| e.watchdog)
    }

    /// Lived past its `max_worker_lifetime`.
    pub fn lifetime_over(&self, now: Instant) -> bool {
        self.lifetime
            .is_some_and(|l| now.saturating_duration_since(self.spawned_at) >= l)
    }

    /// Takes in what the worker wrote in its slot (ready, asking to retire).
    pub fn observe(&mut self, slot: SlotState, now: Instant) -> Report {
        let serving = matches!(slot, SlotState::Ready | SlotState::Retiring);
        let mut report = Report::Nothing;
        if self.ready_at.is_none() && serving {
            self.ready_at = Some(now);
        }
        if !self.settled && self.settle_deadline().is_some_and(|at| now >= at) {
            self.settled = true;
            report = Report::Settled;
        }
        if self.stage == Stage::Booting && serving && (self.exec.is_none() || self.settled) {
            self.stage = Stage::Serving;
        }
        if self.stage == Stage::Serving && slot == SlotState::Retiring {
            self.stage = Stage::Retiring(ExitReason::MaxRequests);
        }
        report
    }

    /// When it will have been up [`READY_SETTLE`] since it said it was
    /// ready (the master looks again then).
    pub fn settle_deadline(&self) -> Option<Instant> {
        match (self.ready_at, self.settled) {
            (Some(at), false) => Some(at + READY_SETTLE),
            _ => None,
        }
    }

    /// The master decided this worker should be replaced (memory).
    pub fn retire(&mut self, reason: ExitReason) {
        if matches!(self.stage, Stage::Serving) {
            self.stage = Stage::Retiring(reason);
        }
    }

    pub fn booting(&self) -> bool {
        self.stage == Stage::Booting
    }

    /// Booting and not yet said to be ready: the boot deadline applies
    /// (not while an exec worker that said so settles).
    pub fn awaiting_ready(&self) -> bool {
        self.booting() && self.ready_at.is_none()
    }

    pub fn retiring(&self) -> Option<ExitReason> {
        match self.stage {
            Stage::Retiring(r) => Some(r),
            _ => None,
        }
    }

    /// Asked to leave (drain, abort or quick stop) already.
    pub fn leaving(&self) -> bool {
        matches!(self.stage, Stage::Leaving(_))
    }

    /// Serving and staying: counts as capacity.
    pub fn serving(&self) -> bool {
        self.stage == Stage::Serving
    }

    /// Why it left, as counted when it is reaped: what the master asked of
    /// it, or a crash if it was not asked.
    pub fn exit_reason(&self) -> ExitReason {
        match self.stage {
            Stage::Leaving(l) => l.reason,
            _ => ExitReason::Crash,
        }
    }

    pub fn leave_how(&self) -> Option<LeaveHow> {
        match self.stage {
            Stage::Leaving(l) => Some(l.how),
            _ => None,
        }
    }

    /// What `rsvisor status` shows.
    pub fn state(&self) -> WorkerState {
        match self.stage {
            Stage::Booting => WorkerState::Booting,
            Stage::Serving => WorkerState::Ready,
            Stage::Retiring(_) => WorkerState::Retiring,
            Stage::Leaving(Leaving {
                how: LeaveHow::Drain,
                ..
            }) => WorkerState::Draining,
            Stage::Leaving(_) => WorkerState::Stopping,
        }
    }

    /// Graceful: stop accepting, finish in-flight requests, exit; killed if
    /// still there after `graceful_timeout`.
    pub fn drain(&mut self, reason: ExitReason, graceful_timeout: Duration) {
        if self.leaving() {
            return;
        }
        self.leave(reason, LeaveHow::Drain, graceful_timeout, self.stop_signal);
    }

    /// Missed heartbeats or boot deadline: SIGABRT (a core dump shows where
    /// it was stuck), then SIGKILL after [`ABORT_GRACE`].
    pub fn abort(&mut self) {
        self.leave(
            ExitReason::Timeout,
            LeaveHow::Abort,
            ABORT_GRACE,
            Signal::SIGABRT,
        );
    }

    /// Quick stop: SIGINT (default action: exit now), SIGKILL shortly after
    /// (or at the earlier deadline it already had).
    pub fn quick_stop(&mut self) {
        let reason = match self.stage {
            Stage::Leaving(l) => l.reason,
            _ => ExitReason::Shutdown,
        };
        let earlier = self.kill_deadline();
        self.leave(reason, LeaveHow::Quick, QUICK_STOP_GRACE, Signal::SIGINT);
        if let (Some(at), Stage::Leaving(l)) = (earlier, &mut self.stage) {
            l.kill_at = l.kill_at.min(at);
        }
    }

    /// Missed heartbeats, but its stacks are being dumped first: SIGABRT
    /// when the dump is done ([`Self::abort_now`]) or at `at` at the latest,
    /// SIGKILL [`ABORT_GRACE`] after that.
    pub fn abort_after(&mut self, at: Instant) {
        if self.leaving() {
            return;
        }
        self.stage = Stage::Leaving(Leaving {
            reason: ExitReason::Timeout,
            how: LeaveHow::Abort,
            kill_at: at + ABORT_GRACE,
            killed: false,
            abort_at: Some(at),
        });
    }

    /// Sends the SIGABRT that [`Self::abort_after`] held back.
    pub fn abort_now(&mut self) {
        let due = match &mut self.stage {
            Stage::Leaving(l) if l.abort_at.is_some() && !l.killed => {
                l.abort_at = None;
                l.kill_at = Instant::now() + ABORT_GRACE;
                true
            }
            _ => false,
        };
        if due {
            self.send(Signal::SIGABRT);
        }
    }

    fn leave(&mut self, reason: ExitReason, how: LeaveHow, grace: Duration, sig: Signal) {
        self.stage = Stage::Leaving(Leaving {
            reason,
            how,
            kill_at: Instant::now() + grace,
            killed: false,
            abort_at: None,
        });
        self.send(sig);
    }

    /// Sends a held-back SIGABRT, or SIGKILL, once its deadline passed;
    /// returns true if it sent SIGKILL.
    pub fn escalate(&mut self, now: Instant) -> bool {
        let pid = self.pid;
        if let Stage::Leaving(l) = &self.stage {
            if l.abort_at.is_some_and(|at| now >= at) {
                self.abort_now();
                return false;
            }
        }
        match &mut self.stage {
            Stage::Leaving(l) if now >= l.kill_at && !l.killed => {
                l.killed = true;
                // ESRCH: it is already gone and will be reaped.
                let _ = kill(pid, Signal::SIGKILL);
                if self.exec.is_some() {
                    // Everything still in the app's own process group.
                    let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                }
                true
            }
            _ => false,
        }
    }

    /// Until when what it leaves behind may run: the end of its
    /// graceful_timeout if it was asked to leave (now if it was killed),
    /// a graceful_timeout from now if it ended by itself.
    pub fn leftovers_deadline(&self, now: Instant) -> Instant {
        match self.stage {
            Stage::Leaving(l) if l.killed => now,
            Stage::Leaving(l) => l.kill_at,
            _ => now + self.config.lifecycle.graceful_timeout,
        }
    }

    /// When it is next signalled (held-back SIGABRT, then SIGKILL).
    pub fn kill_deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Leaving(l) if !l.killed => Some(l.abort_at.unwrap_or(l.kill_at)),
            _ => None,
        }
    }

    /// Forwards a signal (USR1) to the worker.
    pub fn signal(&self, sig: Signal) {
        self.send(sig);
    }

    fn send(&self, sig: Signal) {
        // An app.command worker's SIGABRT goes to its whole process group,
        // so that every Python process of it (gunicorn's workers under
        // their arbiter) prints its stacks before it ends.
        let target = if sig == Signal::SIGABRT && self.exec.is_some() {
            Pid::from_raw(-self.pid.as_raw())
        } else {
            self.pid
        };
        // ESRCH: it is already gone and will be reaped; nothing to do.
        let _ = kill(target, sig);
    }
}

/// A number in [0, 1) that differs from worker to worker, so that workers
/// started together do not all reach their lifetime together.
fn jitter_fraction(pid: Pid) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i32(pid.as_raw());
    (h.finish() % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> WorkerHandle {
        // A pid that is never a real process of ours: signals to it fail
        // harmlessly (pid_max is far below this).
        WorkerHandle::new(
            Pid::from_raw(i32::MAX - 7),
            0,
            1,
            Arc::new(Config::default()),
        )
    }

    #[test]
    fn stages_follow_the_workers_reports() {
        let now = Instant::now();
        let mut w = handle();
        assert_eq!(w.observe(SlotState::Booting, now), Report::Nothing);
        assert!(w.booting());
        // A forked worker serves at once; its start counts as a success
        // once it has stayed up READY_SETTLE.
        assert_eq!(w.observe(SlotState::Ready, now), Report::Nothing);
        assert!(w.serving());
        assert_eq!(w.settle_deadline(), Some(now + READY_SETTLE));
        let later = now + READY_SETTLE;
        assert_eq!(w.observe(SlotState::Ready, later), Report::Settled);
        assert_eq!(w.observe(SlotState::Ready, later), Report::Nothing);
        assert_eq!(w.settle_deadline(), None);
        w.observe(SlotState::Retiring, now);
        assert_eq!(w.retiring(), Some(ExitReason::MaxRequests));
        assert_eq!(w.state(), WorkerState::Retiring);
        // A crash while retiring is still a crash.
        assert_eq!(w.exit_reason(), ExitReason::Crash);
    }

    #[test]
    fn the_reason_it_retired_for_is_the_reason_it_leaves_for() {
        let mut w = handle();
        w.observe(SlotState::Ready, Instant::now());
        w.retire(ExitReason::Memory);
        w.drain(
            w.retiring().unwrap_or(ExitReason::Reload),
            Duration::from_secs(5),
        );
        assert_eq!(w.exit_reason(), ExitReason::Memory);
        assert_eq!(w.state(), WorkerState::Draining);
        // A second request to leave changes nothing.
        w.drain(ExitReason::Shutdown, Duration::from_secs(5));
        assert_eq!(w.exit_reason(), ExitReason::Memory);
    }

    #[test]
    fn kill_follows_the_deadline_once() {
        let mut w = handle();
        w.drain(ExitReason::Reload, Duration::ZERO);
        let at = w.kill_deadline().expect("a deadline");
        assert!(w.escalate(at));
        assert!(!w.escalate(at + Duration::from_secs(1)));
        assert_eq!(w.kill_deadline(), None);
    }

    #[test]
    fn a_held_back_abort_goes_out_at_its_deadline_then_kill_follows() {
        let mut w = handle();
        let now = Instant::now();
        w.abort_after(now + Duration::from_secs(1));
        assert_eq!(w.kill_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(w.exit_reason(), ExitReason::Timeout);
        // At the deadline: SIGABRT, not SIGKILL.
        assert!(!w.escalate(now + Duration::from_secs(1)));
        let kill_at = w.kill_deadline().expect("a kill deadline");
        assert!(kill_at >= now + ABORT_GRACE);
        assert!(w.escalate(kill_at));
    }

    #[test]
    fn a_quick_stop_keeps_an_earlier_kill_deadline() {
        let mut w = handle();
        w.abort();
        let abort_deadline = w.kill_deadline().expect("a deadline");
        w.quick_stop();
        assert!(w.kill_deadline().expect("a deadline") <= abort_deadline);
        assert_eq!(w.exit_reason(), ExitReason::Timeout);
        assert_eq!(w.state(), WorkerState::Stopping);
    }
}
