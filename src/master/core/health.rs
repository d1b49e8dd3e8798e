//! The core's health rules: a worker whose heartbeat stopped, that never
//! finished booting, or (proxy mode) that left a request unanswered is
//! hung; a worker that stays above `max_worker_memory`, or lived past
//! `max_worker_lifetime`, is replaced.

use std::time::Duration;

use nix::unistd::Pid;

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
