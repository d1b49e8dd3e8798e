//! Step 2: read what the workers reported in their slots (ready, asking to
//! retire), then judge their health: workers that stopped beating, never
//! finished booting, or use too much memory.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::forensics::Trigger;
use super::worker_handle::{Report, WorkerHandle};
use super::{Fleet, Schedule};
use crate::proto::outcome::ExitReason;

/// How often the master reads every worker's RSS from /proc.
pub const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Checks in a row above `max_worker_memory` before a worker is retired:
/// one high reading may be a burst about to be freed.
pub const MEMORY_STRIKES: u32 = 2;

/// The heartbeat rule for one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Still booting after `timeout` since its fork.
    BootTimedOut,
    /// Serving, but its heartbeat is older than `timeout`: its event loop
    /// is blocked.
    Silent,
}

/// `booting`: not ready yet (its heartbeat already runs during an async
/// startup, so boot is bounded by the time since fork instead).
pub fn verdict(booting: bool, since_spawn: Duration, silent: Duration, limit: Duration) -> Verdict {
    if booting {
        if since_spawn > limit {
            Verdict::BootTimedOut
        } else {
            Verdict::Healthy
        }
    } else if silent > limit {
        Verdict::Silent
    } else {
        Verdict::Healthy
    }
}

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

    pub(super) fn check_heartbeats(&mut self) {
        let now_ms = crate::os::monotonic_ms();
        let mut hung = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            if let Some(verdict) = self.judge_heartbeat(w, now_ms) {
                hung.push((i, verdict));
            }
        }
        let stalled: Vec<usize> = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.exec.is_some() && self.board.slot(w.slot).take_stalled())
            .filter(|(_, w)| !w.leaving())
            .map(|(i, _)| i)
            .collect();
        for i in stalled {
            let w = &self.workers[i];
            error!(
                pid = w.pid.as_raw(),
                outstanding = self.board.slot(w.slot).outstanding(),
                "app process left a request unanswered for lifecycle.timeout (answered 504); \
                 dumping its stacks, then SIGABRT, SIGKILL 1 s later"
            );
            self.inspect(i, Trigger::Stalled, None);
        }
        for (i, verdict) in hung {
            let w = &self.workers[i];
            let slot = self.board.slot(w.slot);
            let silent = now_ms.saturating_sub(slot.heartbeat_ms());
            let trigger = match verdict {
                Verdict::BootTimedOut => {
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
                        pid = w.pid.as_raw(),
                        waited_ms = w.spawned_at.elapsed().as_millis() as u64,
                        socket,
                        "worker did not become ready within lifecycle.timeout{why}; dumping \
                         its stacks, then SIGABRT",
                    );
                    Trigger::Boot
                }
                _ => {
                    error!(
                        pid = w.pid.as_raw(),
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
        for s in &mut self.helpers {
            if !s.leaving() && (s.has_heartbeat() || s.booting()) {
                let slot = self.board.slot(s.slot);
                let silent = Duration::from_millis(now_ms.saturating_sub(slot.heartbeat_ms()));
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

    /// The heartbeat rule applied to one worker, unless it is leaving
    /// already (or being dumped).
    fn judge_heartbeat(&self, w: &WorkerHandle, now_ms: u64) -> Option<Verdict> {
        if w.leaving() || !w.has_heartbeat() && !w.awaiting_ready() {
            return None;
        }
        // Each worker is judged by its own generation's timeout.
        let limit = w.config.lifecycle.timeout;
        let slot = self.board.slot(w.slot);
        let silent = Duration::from_millis(now_ms.saturating_sub(slot.heartbeat_ms()));
        match verdict(w.awaiting_ready(), w.spawned_at.elapsed(), silent, limit) {
            Verdict::Healthy => None,
            v => Some(v),
        }
    }

    pub(super) fn check_memory(&mut self) {
        let now = Instant::now();
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
        for w in &mut self.workers {
            let pids = match w.exec {
                Some(_) => crate::os::procfs::tree(w.pid.as_raw(), &parents),
                None => vec![w.pid.as_raw()],
            };
            let usage = crate::os::procfs::tree_usage(&pids);
            let rss = usage.rss_bytes;
            let slot = self.board.slot(w.slot);
            slot.set_rss(rss);
            slot.set_cpu_seconds(usage.cpu_seconds);
            if w.serving() && w.lifetime_over(now) {
                info!(
                    pid = w.pid.as_raw(),
                    lived_s = now.duration_since(w.spawned_at).as_secs(),
                    "worker reached max_worker_lifetime; replacing it"
                );
                w.retire(ExitReason::Lifetime);
            }
            let Some(limit) = w.config.lifecycle.max_worker_memory else {
                continue;
            };
            if !w.serving() {
                continue;
            }
            if rss <= limit {
                w.memory_strikes = 0;
                continue;
            }
            w.memory_strikes += 1;
            if w.memory_strikes >= MEMORY_STRIKES {
                warn!(
                    pid = w.pid.as_raw(),
                    rss_bytes = rss,
                    limit_bytes = limit,
                    "worker stays above max_worker_memory; replacing it"
                );
                w.retire(ExitReason::Memory);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booting_workers_are_judged_by_age_serving_ones_by_heartbeat() {
        let s = Duration::from_secs;
        assert_eq!(verdict(true, s(5), s(100), s(10)), Verdict::Healthy);
        assert_eq!(verdict(true, s(11), s(0), s(10)), Verdict::BootTimedOut);
        assert_eq!(verdict(false, s(100), s(9), s(10)), Verdict::Healthy);
        assert_eq!(verdict(false, s(1), s(11), s(10)), Verdict::Silent);
    }
}
