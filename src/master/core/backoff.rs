//! Respawn backoff for workers that die while booting: the first retry
//! after [`BOOT_BACKOFF_BASE`], doubling with every failure in a row up to
//! [`BOOT_BACKOFF_MAX`]; one ready worker of the current generation ends
//! the run. It also counts failures of the app's own startup, which tell
//! the master that the app cannot start anywhere.

use std::time::{Duration, Instant};

/// First delay before respawning after a worker died during boot.
pub const BOOT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Cap of that delay.
pub const BOOT_BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct BootBackoff {
    /// Workers of the current generation that died before becoming ready,
    /// in a row.
    failures: u32,
    /// Of those, how many failed in the app's own startup.
    startup_failures: u32,
    not_before: Instant,
}

impl BootBackoff {
    pub fn new(now: Instant) -> BootBackoff {
        BootBackoff {
            failures: 0,
            startup_failures: 0,
            not_before: now,
        }
    }

    /// A worker of the current generation died before it was ready.
    /// Returns how long spawning now waits.
    pub fn failed(&mut self, now: Instant, in_app_startup: bool) -> Duration {
        self.failures += 1;
        if in_app_startup {
            self.startup_failures += 1;
        }
        let delay = BOOT_BACKOFF_BASE
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(BOOT_BACKOFF_MAX);
        self.not_before = now + delay;
        delay
    }

    /// A worker of the current generation became ready.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.startup_failures = 0;
    }

    /// A generation starts (reload, or a reload given up): no history.
    pub fn reset(&mut self, now: Instant) {
        self.succeeded();
        self.not_before = now;
    }

    /// Something else went wrong starting a worker (fork failed): retry
    /// after the base delay.
    pub fn pause(&mut self, now: Instant) {
        self.not_before = self.not_before.max(now + BOOT_BACKOFF_BASE);
    }

    pub fn may_spawn(&self, now: Instant) -> bool {
        now >= self.not_before
    }

    pub fn not_before(&self) -> Instant {
        self.not_before
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn startup_failures(&self) -> u32 {
        self.startup_failures
    }

    /// Every one of `desired` workers failed in the app's startup and none
    /// became ready: restarting would only loop.
    pub fn app_cannot_start(&self, desired: usize) -> bool {
        self.startup_failures as usize >= desired.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_on_success() {
        let t = Instant::now();
        let mut b = BootBackoff::new(t);
        assert!(b.may_spawn(t));
        assert_eq!(b.failed(t, false), Duration::from_millis(100));
        assert!(!b.may_spawn(t));
        assert!(b.may_spawn(t + Duration::from_millis(100)));
        assert_eq!(b.failed(t, false), Duration::from_millis(200));
        assert_eq!(b.failed(t, false), Duration::from_millis(400));
        for _ in 0..20 {
            b.failed(t, false);
        }
        assert_eq!(b.failed(t, false), BOOT_BACKOFF_MAX);
        b.succeeded();
        assert_eq!(b.failed(t, false), BOOT_BACKOFF_BASE);
    }

    #[test]
    fn app_startup_failures_everywhere_mean_give_up() {
        let t = Instant::now();
        let mut b = BootBackoff::new(t);
        b.failed(t, true);
        assert!(!b.app_cannot_start(2));
        b.failed(t, false);
        assert!(!b.app_cannot_start(2));
        b.failed(t, true);
        assert!(b.app_cannot_start(2));
        b.reset(t);
        assert!(!b.app_cannot_start(2));
        assert!(b.may_spawn(t));
    }
}
