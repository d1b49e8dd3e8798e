//! The worker's heartbeat: a task on the serving runtime that stamps the
//! slot every [`HEARTBEAT_INTERVAL`]. A blocked runtime stops stamping,
//! and the master notices after `lifecycle.timeout`.

use std::time::Duration;

use nix::unistd::Pid;
use tokio::time::{Instant, MissedTickBehavior};

use crate::scoreboard::Slot;

/// How often a worker stamps its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

pub async fn run(slot: &'static Slot, master: Pid) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let scheduled = tick.tick().await;
        // Event-loop lag: how much later than scheduled this tick ran.
        let lag = Instant::now().saturating_duration_since(scheduled);
        slot.beat(crate::sys::monotonic_ms(), lag.as_micros() as u64);
        // PR_SET_PDEATHSIG already kills us with the master; this catches
        // the window before it was set and any re-parenting surprise.
        if nix::unistd::getppid() != master {
            tracing::error!("master is gone; worker exiting");
            std::process::exit(crate::exit::WORKER_ORPHANED);
        }
    }
}
