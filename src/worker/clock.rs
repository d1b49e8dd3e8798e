//! The worker clock: the monotonic clock in milliseconds (the master's
//! `os::monotonic_ms`, so the master can compare times the worker wrote in
//! shared memory), advanced every [`CLOCK_TICK`] by one task. Connection
//! deadlines and the in-flight table read it (an atomic load) instead of
//! asking the system for the time on every request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Resolution of the worker clock used for connection timeouts.
pub const CLOCK_TICK: Duration = Duration::from_millis(100);

/// Advances the worker clock; runs for the worker's life.
pub async fn run_clock(clock: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(CLOCK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        clock.store(crate::os::monotonic_ms(), Relaxed);
    }
}
