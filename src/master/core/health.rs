//! The core's health rules: a worker whose heartbeat stopped, that never
//! finished booting, or (proxy mode) that left a request unanswered is
//! hung; a worker that stays above `max_worker_memory`, or lived past
//! `max_worker_lifetime`, is replaced.

use std::time::Duration;

use nix::unistd::Pid;
use tracing::{info, warn};

use super::{Core, Effect, Member};
use crate::proto::outcome::ExitReason;

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

/// Why a worker is judged hung (its stacks are dumped, then it is
/// aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hung {
    /// Not ready within `lifecycle.timeout` of its fork.
    Boot,
    /// Serving, but its heartbeat stopped for `lifecycle.timeout`.
    Heartbeat,
    /// Proxy mode: a request to the app process got no answer within
    /// `lifecycle.timeout` (answered 504).
    Stalled,
}

/// What the shell measured of one app worker (every memory check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub pid: Pid,
    /// Serving and staying (only such a worker is retired).
    pub serving: bool,
    /// Resident memory of its process tree.
    pub rss: u64,
    /// Its generation's `max_worker_memory`.
    pub limit: Option<u64>,
    /// Lived past its `max_worker_lifetime` (with its jitter).
    pub lifetime_over: bool,
    pub lived: Duration,
}

/// Each worker that is hung (heartbeat, boot deadline, an unanswered
/// request) is dumped and aborted; it counts as leaving from now on. Each
/// is judged by its own generation's timeout.
pub(super) fn judge_health(members: &mut [Member], fx: &mut Vec<Effect>) {
    for m in members.iter_mut().filter(|m| !m.leaving) {
        let hung = if m.stalled {
            Some(Hung::Stalled)
        } else if m.silent.is_none() && !m.awaiting_ready {
            None
        } else {
            let silent = m.silent.unwrap_or_default();
            match verdict(m.awaiting_ready, m.since_spawn, silent, m.timeout) {
                Verdict::Healthy => None,
                Verdict::BootTimedOut => Some(Hung::Boot),
                Verdict::Silent => Some(Hung::Heartbeat),
            }
        };
        if let Some(hung) = hung {
            m.leaving = true;
            m.serving = false;
            fx.push(Effect::Inspect { pid: m.pid, hung });
        }
    }
}

impl Core {
    /// Replaces a worker that lived past `max_worker_lifetime`, or that
    /// stays above `max_worker_memory` [`MEMORY_STRIKES`] checks in a row.
    pub(super) fn measured(&mut self, usage: &[Usage], fx: &mut Vec<Effect>) {
        for u in usage {
            if !u.serving {
                continue;
            }
            if u.lifetime_over {
                info!(
                    pid = u.pid.as_raw(),
                    lived_s = u.lived.as_secs(),
                    "worker reached max_worker_lifetime; replacing it"
                );
                fx.push(Effect::Retire {
                    pid: u.pid,
                    reason: ExitReason::Lifetime,
                });
                continue;
            }
            let Some(limit) = u.limit else {
                continue;
            };
            if u.rss <= limit {
                self.memory_strikes.remove(&u.pid);
                continue;
            }
            let strikes = self.memory_strikes.entry(u.pid).or_insert(0);
            *strikes += 1;
            if *strikes >= MEMORY_STRIKES {
                warn!(
                    pid = u.pid.as_raw(),
                    rss_bytes = u.rss,
                    limit_bytes = limit,
                    "worker stays above max_worker_memory; replacing it"
                );
                fx.push(Effect::Retire {
                    pid: u.pid,
                    reason: ExitReason::Memory,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn booting_workers_are_judged_by_age_serving_ones_by_heartbeat() {
        let s = Duration::from_secs;
        assert_eq!(verdict(true, s(5), s(100), s(10)), Verdict::Healthy);
        assert_eq!(verdict(true, s(11), s(0), s(10)), Verdict::BootTimedOut);
        assert_eq!(verdict(false, s(100), s(9), s(10)), Verdict::Healthy);
        assert_eq!(verdict(false, s(1), s(11), s(10)), Verdict::Silent);
    }
}
