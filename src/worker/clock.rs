//! The worker clock: milliseconds since the worker started, advanced every
//! [`CLOCK_TICK`] by one task. Connection deadlines read it (an atomic
//! load) instead of asking the system for the time on every request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Resolution of the worker clock used for connection timeouts.
pub const CLOCK_TICK: Duration = Duration::from_millis(100);

/// Advances the worker clock; runs for the worker's life.
pub async fn run_clock(clock: Arc<AtomicU64>) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(CLOCK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        clock.store(start.elapsed().as_millis() as u64, Relaxed);
    }
}
