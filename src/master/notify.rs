//! Telling systemd how the fleet is doing: READY once the first fleet is
//! up, a STATUS line a person can read in `systemctl status`, and WATCHDOG
//! pings only while the loop runs and at least one worker is healthy.

use std::time::{Duration, Instant};

use super::core::Core;
use super::{Fleet, Systemd};
use crate::proto::outcome::ReloadResult;
use crate::shm::scoreboard::Board;

/// A worker whose heartbeat is older than this does not count as healthy
/// for the watchdog (its event loop is stuck).
pub const WATCHDOG_STALE_HEARTBEAT: Duration = Duration::from_secs(2);

impl Systemd {
    /// Whether systemd (`NOTIFY_SOCKET`) listens.
    pub(super) fn enabled(&self) -> bool {
        self.notifier.enabled()
    }

    pub(super) fn reloading(&self) {
        self.notifier.reloading();
    }

    pub(super) fn stopping(&self) {
        self.notifier.stopping();
    }

    /// A failed new master may have said MAINPID= before it died.
    pub(super) fn main_pid_is_mine(&self) {
        self.notifier
            .send(&format!("MAINPID={}", std::process::id()));
    }

    /// When the next WATCHDOG ping is due, if systemd asked for them.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.notifier
            .watchdog_interval()
            .map(|_| self.next_watchdog)
    }

    /// STATUS when it changed; WATCHDOG when due and a worker is healthy.
    pub(super) fn notify(&mut self, status: String, healthy: bool, now: Instant) {
        if status != self.last_status {
            self.notifier.status(&status);
            self.last_status = status;
        }
        if let Some(interval) = self.notifier.watchdog_interval() {
            if now >= self.next_watchdog {
                if healthy {
                    self.notifier.watchdog();
                }
                self.next_watchdog = now + interval;
            }
        }
    }

    /// Every initial worker is ready: this master serves. Started by a
    /// binary upgrade, it also takes over as the service's main process
    /// and tells the old master it is ready.
    pub(super) fn initial_ready(&mut self, status: String, board: &Board) {
        drop_startup_code();
        if let Some(pipe) = self.upgrade_pipe.take() {
            self.notifier
                .send(&format!("MAINPID={}", std::process::id()));
            let mut f = std::fs::File::from(pipe);
            let _ = std::io::Write::write_all(&mut f, b"ready\n");
            board
                .header
                .upgrades
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.ready(status);
    }

    /// READY=1 with the current status (after the first start and after
    /// every reload, as `Type=notify-reload` expects).
    pub(super) fn ready(&mut self, status: String) {
        self.notifier.ready(&status);
        self.last_status = status;
    }
}

/// What `systemctl status` shows: workers ready, generation, the last
/// reload (and why it failed).
pub(super) fn status_line(core: &Core, ready: usize) -> String {
    let reload = match core.last_reload() {
        Some(r) if r.result == ReloadResult::Success => format!("; last reload: {}", r.result),
        // Why it failed, where an operator looks first.
        Some(r) => format!("; last reload: {} ({})", r.result, r.message),
        None => String::new(),
    };
    let current = core.current();
    format!(
        "{ready}/{} workers ready, generation {}{reload}",
        current.desired, current.generation
    )
}

impl Fleet {
    /// Serving workers whose heartbeat is fresh.
    pub(super) fn healthy_workers(&self) -> usize {
        let now = crate::os::monotonic_ms();
        let stale = WATCHDOG_STALE_HEARTBEAT.as_millis() as u64;
        self.workers
            .iter()
            .filter(|w| {
                let slot = self.board.slot(w.slot);
                // An exec worker without WATCHDOG=1 has nothing to be
                // late with: serving is all that can be known of it.
                (w.serving() || w.retiring().is_some())
                    && (!slot.watched() || slot.heartbeat_age_ms(now) < stale)
            })
            .count()
    }

    /// Workers of `generation` serving and staying.
    pub(super) fn ready_count(&self, generation: u32) -> usize {
        self.workers
            .iter()
            .filter(|w| w.serving() && w.generation == generation)
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
