//! Step 4: escalate overdue stops, carry out a graceful stop, and apply
//! the fleet plan (which workers drain now, how many to start).

use std::time::Instant;

use tracing::{info, warn};

use super::fleet;
use super::worker_handle::Retirement;
use super::{Master, Phase};
use crate::scoreboard::SlotState;

impl Master {
    pub(super) fn cull_and_retire(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            if w.escalate(now) {
                warn!(pid = w.pid.as_raw(), "worker did not exit in time; SIGKILL");
            }
        }
        match self.phase {
            Phase::QuickStopping => return,
            Phase::Stopping { close_at, closed } => {
                if !closed && now >= close_at {
                    info!("closing listeners; draining workers");
                    self.listeners.close_all();
                    for w in &mut self.workers {
                        let graceful = w.config.lifecycle.graceful_timeout;
                        w.drain(Retirement::Shutdown, graceful);
                    }
                    self.phase = Phase::Stopping {
                        close_at,
                        closed: true,
                    };
                }
                return;
            }
            Phase::Running => {}
        }

        self.note_ready_workers(now);
        let seen: Vec<fleet::Seen> = self
            .workers
            .iter()
            .map(|w| {
                let state = w.state(self.board);
                fleet::Seen {
                    current_generation: w.generation == self.generation,
                    booting: state == SlotState::Booting,
                    retiring: state == SlotState::Retiring || w.memory_retire,
                    leaving: w.leaving(),
                }
            })
            .collect();
        let plan = fleet::plan(self.desired, &seen);
        for i in plan.drain {
            let w = &mut self.workers[i];
            let why = if w.memory_retire {
                Retirement::Memory
            } else if seen[i].retiring {
                Retirement::MaxRequests
            } else if !seen[i].current_generation {
                Retirement::Reload
            } else {
                Retirement::ScaleDown
            };
            info!(
                pid = w.pid.as_raw(),
                reason = why.reason(),
                "draining worker"
            );
            let graceful = w.config.lifecycle.graceful_timeout;
            w.drain(why, graceful);
        }
        self.pending_spawns = plan.spawn;
    }

    /// Records when workers first reported ready; a ready worker of the
    /// current generation ends a run of boot failures.
    fn note_ready_workers(&mut self, now: Instant) {
        for w in &mut self.workers {
            if w.ready_at.is_none()
                && matches!(w.state(self.board), SlotState::Ready | SlotState::Retiring)
            {
                w.ready_at = Some(now);
                if w.generation == self.generation {
                    self.boot_failures = 0;
                    self.startup_failures = 0;
                }
            }
        }
    }
}
