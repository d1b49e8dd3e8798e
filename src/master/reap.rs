//! Step 3: collect exited children, log how they ended, count why, and
//! apply the boot-failure backoff.

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::core::{Ended, Exited};
use super::exec::{ExecEvent, Label};
use super::worker_handle::{LeaveHow, WorkerHandle};
use super::Fleet;
use crate::proto::control::ExitReport;
use crate::proto::exit::WorkerExit;

/// A child the reap step collected that the core hears of.
pub enum Reaped {
    Worker(Exited),
    /// Not a worker, helper or dump helper: the new master of an upgrade,
    /// if it is that one.
    Other {
        pid: Pid,
        how: Ended,
    },
}

impl Fleet {
    /// Collects every exited child. `serving`: the master is not stopping
    /// (what an unexpected exit is logged as).
    pub(super) fn reap(&mut self, serving: bool) -> Vec<Reaped> {
        let mut out = Vec::new();
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return out,
                Ok(s) => s,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, Ended::Code(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, Ended::Signal(sig)),
                _ => continue,
            };
            match self.workers.iter().position(|w| w.pid == pid) {
                Some(idx) => {
                    let mut w = self.workers.remove(idx);
                    self.read_last_output(&mut w);
                    out.push(Reaped::Worker(self.worker_exited(w, how, serving)));
                }
                None if self.helpers.iter().any(|h| h.pid == pid) => {
                    self.helper_exited(pid, how, serving)
                }
                None if self.inspections.helper_exited(pid) => {}
                None => out.push(Reaped::Other { pid, how }),
            }
        }
    }

    /// What an exec worker wrote just before it ended (a traceback, the
    /// stacks its SIGABRT printed) is still in its pipes: no poll will say
    /// so once it is reaped.
    fn read_last_output(&mut self, w: &mut WorkerHandle) {
        let Some(io) = &mut w.exec else {
            return;
        };
        let label = Label {
            slot: w.slot,
            pid: w.pid.as_raw(),
            generation: w.generation,
        };
        for event in io.drain(label) {
            if let ExecEvent::OutputDropped(n) = event {
                self.board
                    .header
                    .app_output_dropped
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.inspections.program_output(w.pid, io.take_capture());
        // Proxy mode: its socket file (the name is not used again).
        if let Some(path) = io.socket() {
            let _ = std::fs::remove_file(path);
        }
    }

    fn worker_exited(&mut self, w: WorkerHandle, how: Ended, serving: bool) -> Exited {
        // Exiting within READY_SETTLE of its ready signal is a failed start.
        let was_ready = w.settled;
        let reason = w.exit_reason();
        self.board.release(w.slot);
        self.board.count_exit(reason);
        // A program that re-raises the stop signal after a clean shutdown
        // (uvicorn does) ended as asked.
        let stopped_as_asked = matches!(
            (w.leave_how(), how),
            (Some(LeaveHow::Drain), Ended::Signal(sig)) if sig == w.stop_signal && w.exec.is_some()
        );
        let status = if stopped_as_asked {
            format!("stopped by its stop signal ({})", w.stop_signal)
        } else {
            how.to_string()
        };
        self.inspections.worker_exited(ExitReport {
            pid: w.pid.as_raw() as u32,
            slot: w.slot,
            generation: w.generation,
            reason,
            status,
            seconds_ago: 0.0,
            forensics: None,
        });
        let pid = w.pid.as_raw();
        let now = Instant::now();
        self.strays
            .worker_exited(pid, w.slot, w.exec.is_some(), w.leftovers_deadline(now));
        match (w.leave_how(), how) {
            (Some(LeaveHow::Abort), _) => {
                warn!(pid, status = %how, "worker stopped after timeout");
            }
            _ if stopped_as_asked => {
                info!(pid, %reason, "worker exited after draining");
            }
            (Some(_), Ended::Code(0)) => {
                info!(pid, %reason, "worker exited after draining");
            }
            (Some(_), _) => {
                warn!(pid, %reason, status = %how, "worker ended");
            }
            (None, _) if !serving => {
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
        // An exec worker that dies before it is ready failed in the app's
        // own startup (an import error, a missing program). One that said
        // it was ready and died soon after is backed off, but is no proof
        // that the app cannot start at all.
        let in_app_startup = w.ready_at.is_none()
            && (how == Ended::Code(WorkerExit::AppStartupFailed.code()) || w.exec.is_some());
        Exited {
            pid: w.pid,
            generation: w.generation,
            reason,
            settled: was_ready,
            said_ready: w.ready_at.is_some(),
            in_app_startup,
            ended: how,
        }
    }

    /// Step 3b: processes the app left behind get SIGTERM when found and
    /// SIGKILL at the end of their worker's graceful_timeout.
    /// `also_known`: the master's children that are not workers (the new
    /// master of a binary upgrade).
    pub(super) fn stop_strays(&mut self, also_known: &[Pid]) {
        let now = Instant::now();
        if !self.strays.due(now) {
            return;
        }
        let table = crate::os::procfs::processes();
        let me = std::process::id() as i32;
        let known = |pid: i32| {
            let pid = Pid::from_raw(pid);
            self.workers
                .iter()
                .chain(&self.helpers)
                .any(|w| w.pid == pid)
                || also_known.contains(&pid)
                || self.inspections.is_helper(pid)
        };
        let actions = self.strays.sweep(now, me, &table, known);
        for a in actions {
            let (worker, slot) = a.worker.map_or((None, None), |(p, s)| (Some(p), Some(s)));
            if a.found {
                let command = crate::os::procfs::cmdline(a.pid).unwrap_or_default();
                warn!(
                    pid = a.pid,
                    worker,
                    slot,
                    command,
                    "a process the app started outlived its worker; stopping it"
                );
            }
            if a.signal == Signal::SIGKILL {
                warn!(
                    pid = a.pid,
                    worker,
                    slot,
                    "stray process still there at the end of graceful_timeout; killed"
                );
            }
            // ESRCH: it went by itself.
            let _ = nix::sys::signal::kill(Pid::from_raw(a.pid), a.signal);
        }
    }

    /// A helper (front worker, metrics sidecar) ended: it is started
    /// again (after a pause) unless the master is stopping.
    fn helper_exited(&mut self, pid: Pid, how: Ended, serving: bool) {
        let Some(i) = self.helpers.iter().position(|h| h.pid == pid) else {
            return;
        };
        let s = self.helpers.remove(i);
        self.board.release(s.slot);
        let what = super::spawn::role_name(s.role);
        if s.leaving() || !serving {
            info!(pid = s.pid.as_raw(), status = %how, "{what} exited");
        } else {
            warn!(pid = s.pid.as_raw(), status = %how, "{what} died; starting it again");
        }
        // Replaced at once after a reload; after a crash, after a pause.
        let pause = if s.leaving() {
            std::time::Duration::ZERO
        } else {
            super::spawn::HELPER_RESTART_DELAY
        };
        self.helpers_not_before = Instant::now() + pause;
    }
}
