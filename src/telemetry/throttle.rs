//! Errors that repeat are said once, then at most once per
//! [`REPEAT_LOG_INTERVAL`] with the number that were not said (they are all
//! counted in the scoreboard, so `/metrics` has the exact figure).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The shortest time between two log lines about the same error.
pub const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One kind of error's log throttle (a `static` per call site, so each
/// process has its own).
#[derive(Debug)]
pub struct Throttle {
    /// Monotonic milliseconds + 1 of the last line; 0 = never.
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line should be written now; `n` occurrences were
    /// left unsaid since the last one.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(crate::os::monotonic_ms())
    }

    /// [`Self::admit`] at a given monotonic time in milliseconds.
    pub fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Relaxed);
        let due = last == 0 || now_ms + 1 >= last + REPEAT_LOG_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms + 1, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_then_once_per_interval_with_a_count() {
        let t = Throttle::new();
        let i = REPEAT_LOG_INTERVAL.as_millis() as u64;
        assert_eq!(t.admit_at(1000), Some(0));
        assert_eq!(t.admit_at(1001), None);
        assert_eq!(t.admit_at(1000 + i - 1), None);
        assert_eq!(t.admit_at(1000 + i), Some(2));
        assert_eq!(t.admit_at(1000 + i + 1), None);
    }
}
