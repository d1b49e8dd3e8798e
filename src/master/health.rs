//! Step 2: read what the workers reported in their slots (ready, asking to
//! retire) and measure their memory; carry out the core's verdicts on
//! their health (dump and abort a hung worker, retire one that uses too
//! much memory or lived long enough); abort a helper that stopped
//! answering.

use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tracing::error;

use super::core::health::{verdict, Verdict};
use super::core::{Hung, Usage};
use super::forensics::Trigger;
use super::worker_handle::Report;
use super::{Fleet, Schedule};
use crate::proto::outcome::ExitReason;

/// How often the master reads every worker's RSS from /proc.
pub const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Schedule {
    /// Whether every worker's memory is read now (every
    /// [`MEMORY_CHECK_INTERVAL`]).
    pub(super) fn memory_check_due(&mut self, now: Instant) -> bool {
        if now < self.next_memory_check {
            return false;
        }
        self.next_memory_check = now + MEMORY_CHECK_INTERVAL;
        true
    }
}

impl Fleet {
    /// Takes in each worker's own report; returns the generations of the
    /// workers that stayed up `READY_SETTLE` since they became ready (which
    /// ends a run of boot failures).
    pub(super) fn observe(&mut self, now: Instant) -> Vec<u32> {
        let mut settled = Vec::new();
        for w in &mut self.workers {
            if w.observe(self.board.slot(w.slot).state(), now) == Report::Settled {
                settled.push(w.generation);
            }
        }
        for h in &mut self.helpers {
            h.observe(self.board.slot(h.slot).state(), now);
        }
        settled
    }

    /// A hung worker (the core's verdict): says why, with what the master
    /// knows of it, then dumps its stacks and aborts it.
    pub(super) fn hung(&mut self, pid: Pid, hung: Hung) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let w = &self.workers[i];
        let slot = self.board.slot(w.slot);
        let trigger = match hung {
            Hung::Stalled => {
                error!(
                    pid = pid.as_raw(),
                    outstanding = slot.outstanding(),
                    "app process left a request unanswered for lifecycle.timeout (answered \
                     504); dumping its stacks, then SIGABRT, SIGKILL 1 s later"
                );
                Trigger::Stalled
            }
            Hung::Boot => {
                // Proxy mode: say how far its socket and probe got.
                let waiting = w.exec.as_ref().filter(|e| e.awaiting_socket());
                let socket = waiting
                    .and_then(|e| e.socket())
                    .map(|p| p.display().to_string());
                let probe = waiting.and_then(|e| e.probe_outcome());
                let why = match (&socket, probe) {
                    (Some(_), Some(probe)) => format!(" ({probe})"),
                    (Some(_), None) => " (its socket never accepted a connection: does \
                                        app.command listen on {socket}?)"
                        .to_string(),
                    (None, _) => String::new(),
                };
                error!(
                    pid = pid.as_raw(),
                    waited_ms = w.spawned_at.elapsed().as_millis() as u64,
                    socket,
                    "worker did not become ready within lifecycle.timeout{why}; dumping \
                     its stacks, then SIGABRT",
                );
                Trigger::Boot
            }
            Hung::Heartbeat => {
                let silent = slot.heartbeat_age_ms(crate::os::monotonic_ms());
                error!(
                    pid = pid.as_raw(),
                    silent_ms = silent,
                    active_connections = slot.active_connections(),
                    served = slot.served(),
                    "worker missed its heartbeat for longer than lifecycle.timeout \
                     (its event loop is blocked); dumping its stacks, then SIGABRT, \
                     SIGKILL 1 s later"
                );
                Trigger::Heartbeat
            }
        };
        self.inspect(i, trigger, None);
    }

    /// A helper (front worker, sidecar) that stopped answering is aborted
    /// and started again; it serves no request of its own to dump.
    pub(super) fn check_helpers(&mut self) {
        let now_ms = crate::os::monotonic_ms();
        for s in &mut self.helpers {
            if !s.leaving() && (s.has_heartbeat() || s.booting()) {
                let slot = self.board.slot(s.slot);
                let silent = Duration::from_millis(slot.heartbeat_age_ms(now_ms));
                let limit = s.config.lifecycle.timeout;
                if verdict(s.booting(), s.spawned_at.elapsed(), silent, limit) != Verdict::Healthy {
                    error!(
                        pid = s.pid.as_raw(),
                        "{} stopped answering; aborting it",
                        super::spawn::role_name(s.role)
                    );
                    s.abort();
                }
            }
        }
    }

    /// The core decided a worker should be replaced.
    pub(super) fn retire(&mut self, pid: Pid, reason: ExitReason) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
            w.retire(reason);
        }
    }

    /// Reads every worker's and helper's memory and CPU from /proc into
    /// its slot; returns the app workers' usage for the core.
    pub(super) fn measure(&mut self) -> Vec<Usage> {
        let now = Instant::now();
        let mut out = Vec::new();
        // Exec workers are measured with what they started (gunicorn's
        // own workers, say): one look at every process's parent.
        let parents = if self.workers.iter().any(|w| w.exec.is_some()) {
            crate::os::procfs::parents()
        } else {
            Vec::new()
        };
        for s in &self.helpers {
            let usage = crate::os::procfs::tree_usage(&[s.pid.as_raw()]);
            self.board.slot(s.slot).set_rss(usage.rss_bytes);
        }
        for w in &self.workers {
            let pids = match w.exec {
                Some(_) => crate::os::procfs::tree(w.pid.as_raw(), &parents),
                None => vec![w.pid.as_raw()],
            };
            let usage = crate::os::procfs::tree_usage(&pids);
            let rss = usage.rss_bytes;
            let slot = self.board.slot(w.slot);
            slot.set_rss(rss);
            slot.set_cpu_seconds(usage.cpu_seconds);
            out.push(Usage {
                pid: w.pid,
                serving: w.serving(),
                rss,
                limit: w.config.lifecycle.max_worker_memory,
                lifetime_over: w.lifetime_over(now),
                lived: now.saturating_duration_since(w.spawned_at),
            });
        }
        out
    }
}
