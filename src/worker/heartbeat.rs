//! The worker's heartbeat: a task on the serving runtime that stamps the
//! slot every [`HEARTBEAT_INTERVAL`]. A blocked runtime stops stamping,
//! and the master notices after `lifecycle.timeout`.

use std::time::Duration;

use nix::unistd::Pid;
use tokio::time::{Instant, MissedTickBehavior};

use crate::shm::scoreboard::Slot;

/// How often a worker stamps its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How often a worker gives free memory back to the system (see
/// `os::release_free_memory`): a fraction of a millisecond each time.
pub const RELEASE_MEMORY_EVERY: u32 = 10;

pub async fn run(slot: &'static Slot, master: Pid) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beats = 0u32;
    loop {
        let scheduled = tick.tick().await;
        beats = beats.wrapping_add(1);
        if beats % RELEASE_MEMORY_EVERY == 0 {
            crate::os::release_free_memory();
        }
        // Event-loop lag: how much later than scheduled this tick ran.
        let lag = Instant::now().saturating_duration_since(scheduled);
        slot.beat(crate::os::monotonic_ms(), lag.as_micros() as u64);
        // With several runtime threads the heartbeat moves between them;
        // the one that ran it last is the first suspect of a hang.
        slot.set_heartbeat_tid(nix::unistd::gettid().as_raw() as u32);
        // PR_SET_PDEATHSIG already kills us with the master; this catches
        // the window before it was set and any re-parenting surprise.
        if nix::unistd::getppid() != master {
            tracing::error!("master is gone; worker exiting");
            std::process::exit(crate::proto::exit::WorkerExit::Orphaned.code());
        }
    }
}
