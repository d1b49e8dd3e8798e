//! Telling systemd how the fleet is doing: a STATUS line a person can read
//! in `systemctl status`, and WATCHDOG pings only while the loop runs and
//! at least one worker is healthy.

use std::time::{Duration, Instant};

use super::Master;
use crate::scoreboard::SlotState;

/// A worker whose heartbeat is older than this does not count as healthy
/// for the watchdog (its event loop is stuck).
pub const WATCHDOG_STALE_HEARTBEAT: Duration = Duration::from_secs(2);

impl Master {
    pub(super) fn notify_systemd(&mut self) {
        if !self.notifier.enabled() {
            return;
        }
        let status = self.status_line();
        if status != self.last_status {
            self.notifier.status(&status);
            self.last_status = status;
        }
        if let Some(interval) = self.notifier.watchdog_interval() {
            let now = Instant::now();
            if now >= self.next_watchdog {
                if self.healthy_workers() > 0 {
                    self.notifier.watchdog();
                }
                self.next_watchdog = now + interval;
            }
        }
    }

    pub(super) fn status_line(&self) -> String {
        let ready = self.ready_count();
        let reload = match &self.last_reload {
            Some(r) => format!("; last reload: {}", r.result),
            None => String::new(),
        };
        format!(
            "{ready}/{} workers ready, generation {}{reload}",
            self.desired, self.generation
        )
    }

    /// Serving workers whose heartbeat is fresh.
    fn healthy_workers(&self) -> usize {
        let now = crate::sys::monotonic_ms();
        let stale = WATCHDOG_STALE_HEARTBEAT.as_millis() as u64;
        self.workers
            .iter()
            .filter(|w| {
                let slot = self.board.slot(w.slot);
                !w.leaving()
                    && matches!(slot.state(), SlotState::Ready | SlotState::Retiring)
                    && now.saturating_sub(slot.heartbeat_ms()) < stale
            })
            .count()
    }
}
