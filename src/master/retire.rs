//! Step 4: escalate overdue stops, carry out a graceful stop, and apply
//! the fleet plan (which workers drain now, how many to start).

use std::time::Instant;

use tracing::{info, warn};

use super::fleet;
use super::Master;
use crate::outcome::ExitReason;

impl Master {
    pub(super) fn cull_and_retire(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            if w.escalate(now) {
                warn!(pid = w.pid.as_raw(), "worker did not exit in time; SIGKILL");
            }
        }
        if self.lifecycle.close_listeners_due(now) {
            info!("closing listeners; draining workers");
            self.sockets.listeners.close_all();
            for w in &mut self.workers {
                let graceful = w.config.lifecycle.graceful_timeout;
                w.drain(ExitReason::Shutdown, graceful);
            }
        }
        if !self.lifecycle.serving() {
            return;
        }

        let current = self.current.generation;
        let seen: Vec<fleet::Seen> = self
            .workers
            .iter()
            .map(|w| fleet::Seen {
                current_generation: w.generation == current,
                booting: w.booting(),
                retiring: w.retiring().is_some(),
                leaving: w.leaving(),
            })
            .collect();
        let plan = fleet::plan(self.current.desired, &seen);
        for i in plan.drain {
            let w = &mut self.workers[i];
            let why = match w.retiring() {
                Some(reason) => reason,
                None if w.generation != current => ExitReason::Reload,
                None => ExitReason::ScaleDown,
            };
            info!(pid = w.pid.as_raw(), reason = %why, "draining worker");
            let graceful = w.config.lifecycle.graceful_timeout;
            w.drain(why, graceful);
        }
        self.pending_spawns = plan.spawn;
    }
}
