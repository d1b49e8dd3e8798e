//! Telling systemd how the fleet is doing: READY once the first fleet is
//! up, a STATUS line a person can read in `systemctl status`, and WATCHDOG
//! pings only while the loop runs and at least one worker is healthy.

use std::time::{Duration, Instant};

use super::Master;
use crate::proto::outcome::ReloadResult;

/// A worker whose heartbeat is older than this does not count as healthy
/// for the watchdog (its event loop is stuck).
pub const WATCHDOG_STALE_HEARTBEAT: Duration = Duration::from_secs(2);

impl Master {
    pub(super) fn notify_systemd(&mut self) {
        if !self.systemd.notifier.enabled() || self.core.lifecycle().handed_over() {
            return;
        }
        let status = self.status_line();
        if status != self.systemd.last_status {
            self.systemd.notifier.status(&status);
            self.systemd.last_status = status;
        }
        if let Some(interval) = self.systemd.notifier.watchdog_interval() {
            let now = Instant::now();
            if now >= self.systemd.next_watchdog {
                if self.healthy_workers() > 0 {
                    self.systemd.notifier.watchdog();
                }
                self.systemd.next_watchdog = now + interval;
            }
        }
    }

    /// Every initial worker is ready: this master serves. Started by a
    /// binary upgrade, it also takes over as the service's main process.
    pub(super) fn initial_ready(&mut self) {
        drop_startup_code();
        if self.systemd.upgrade_pipe.is_some() {
            self.systemd
                .notifier
                .send(&format!("MAINPID={}", std::process::id()));
            self.report_ready_to_old_master();
        }
        self.systemd_ready();
    }

    /// READY=1 with the current status (after the first start and after
    /// every reload, as `Type=notify-reload` expects).
    pub(super) fn systemd_ready(&mut self) {
        let status = self.status_line();
        self.systemd.notifier.ready(&status);
        self.systemd.last_status = status;
    }

    pub(super) fn status_line(&self) -> String {
        let ready = self.ready_count();
        let reload = match self.core.last_reload() {
            Some(r) if r.result == ReloadResult::Success => format!("; last reload: {}", r.result),
            // Why it failed, where an operator looks first.
            Some(r) => format!("; last reload: {} ({})", r.result, r.message),
            None => String::new(),
        };
        format!(
            "{ready}/{} workers ready, generation {}{reload}",
            self.core.current().desired,
            self.core.current().generation
        )
    }

    /// Serving workers whose heartbeat is fresh.
    fn healthy_workers(&self) -> usize {
        let now = crate::os::monotonic_ms();
        let stale = WATCHDOG_STALE_HEARTBEAT.as_millis() as u64;
        self.fleet
            .workers
            .iter()
            .filter(|w| {
                let slot = self.board.slot(w.slot);
                // An exec worker without WATCHDOG=1 has nothing to be
                // late with: serving is all that can be known of it.
                (w.serving() || w.retiring().is_some())
                    && (!slot.watched() || now.saturating_sub(slot.heartbeat_ms()) < stale)
            })
            .count()
    }
}

/// See `os::drop_code_mappings`: the master's RSS then counts the code of
/// its loop, not of its start-up or of a reload's config loading.
pub(super) fn drop_startup_code() {
    if let Err(e) = crate::os::drop_code_mappings() {
        tracing::debug!(error = %e, "cannot drop start-up code mappings");
    }
    // What loading the config freed (the parsed PEM files, the previous
    // generation's material) goes back to the kernel.
    crate::os::release_free_memory();
}
