//! Step 2: workers that stopped beating, never finished booting, or use
//! too much memory.

use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::worker_handle::Retirement;
use super::Master;
use crate::scoreboard::SlotState;

/// How often the master reads every worker's RSS from /proc.
pub const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Checks in a row above `max_worker_memory` before a worker is retired:
/// one high reading may be a burst about to be freed.
pub const MEMORY_STRIKES: u32 = 2;

impl Master {
    pub(super) fn check_health(&mut self) {
        self.check_heartbeats();
        if Instant::now() >= self.next_memory_check {
            self.next_memory_check = Instant::now() + MEMORY_CHECK_INTERVAL;
            self.check_memory();
        }
    }

    fn check_heartbeats(&mut self) {
        let now_ms = crate::sys::monotonic_ms();
        for w in &mut self.workers {
            if w.leaving() {
                continue;
            }
            // Each worker is judged by its own generation's timeout.
            let limit = w.config.lifecycle.timeout;
            let slot = self.board.slot(w.slot);
            if slot.state() == SlotState::Booting {
                // The heartbeat already runs during an async startup, so
                // boot is bounded by time since fork instead.
                if w.spawned_at.elapsed() > limit {
                    error!(
                        pid = w.pid.as_raw(),
                        waited_ms = w.spawned_at.elapsed().as_millis() as u64,
                        "worker did not become ready within lifecycle.timeout; aborting it"
                    );
                    w.abort(Retirement::BootTimeout);
                }
                continue;
            }
            let silent_ms = now_ms.saturating_sub(slot.heartbeat_ms());
            if silent_ms > limit.as_millis() as u64 {
                error!(
                    pid = w.pid.as_raw(),
                    silent_ms,
                    active_connections = slot.active_connections(),
                    served = slot.served(),
                    "worker missed its heartbeat for longer than lifecycle.timeout \
                     (its event loop is blocked); SIGABRT now, SIGKILL in 1 s"
                );
                w.abort(Retirement::Timeout);
            }
        }
    }

    fn check_memory(&mut self) {
        for w in &mut self.workers {
            let rss = crate::procfs::rss_bytes(w.pid.as_raw()).unwrap_or(0);
            let slot = self.board.slot(w.slot);
            slot.set_rss(rss);
            let Some(limit) = w.config.lifecycle.max_worker_memory else {
                continue;
            };
            if w.leaving() || w.memory_retire {
                continue;
            }
            if rss > limit {
                w.memory_strikes += 1;
                if w.memory_strikes >= MEMORY_STRIKES {
                    warn!(
                        pid = w.pid.as_raw(),
                        rss_bytes = rss,
                        limit_bytes = limit,
                        "worker stays above max_worker_memory; replacing it"
                    );
                    w.memory_retire = true;
                }
            } else {
                w.memory_strikes = 0;
            }
        }
    }
}
