//! Step 4: escalate overdue stops, carry out a graceful stop, and apply
//! the fleet plan (which workers drain now, how many to start).

use std::time::Instant;

use tracing::{info, warn};

use super::fleet;
use super::worker_handle::WorkerHandle;
use super::Master;
use crate::proto::outcome::ExitReason;
use crate::shm::scoreboard::{Board, SlotState};

impl Master {
    pub(super) fn cull_and_retire(&mut self) {
        let now = Instant::now();
        for w in self.workers.iter_mut().chain(&mut self.helpers) {
            if w.escalate(now) {
                warn!(pid = w.pid.as_raw(), "worker did not exit in time; SIGKILL");
            }
        }
        if self.lifecycle.close_listeners_due(now) {
            info!("closing listeners; draining workers");
            self.sockets.listeners.close_all();
            for w in self.workers.iter_mut().chain(&mut self.helpers) {
                let graceful = w.config.lifecycle.graceful_timeout;
                w.drain(ExitReason::Shutdown, graceful);
                mark_draining(self.board, w);
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
                // A worker of an earlier generation that said it was
                // ready serves (an exec worker settles for READY_SETTLE
                // first): it is kept until a new one covers for it.
                booting: if w.generation == current {
                    w.booting()
                } else {
                    w.awaiting_ready()
                },
                retiring: w.retiring().is_some(),
                leaving: w.leaving(),
                connections: self.board.slot(w.slot).active_connections(),
            })
            .collect();
        let limit = self
            .lifecycle
            .reload()
            .and_then(|r| r.canary.as_ref())
            .filter(|c| c.holds_back())
            .map(|_| 1);
        // An app.command canary runs beside the old processes instead of
        // taking one's place: a process started again would load the code
        // on disk, which is the release under test, so a rollback must find
        // every old process still running.
        let extra = usize::from(limit.is_some() && self.current.loaded.config.exec_mode());
        let plan = fleet::plan(self.current.desired + extra, &seen, limit);
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
            mark_draining(self.board, w);
        }
        self.pending_spawns = plan.spawn;
    }
}

/// An exec worker does not write its slot: the master says it drains.
pub(super) fn mark_draining(board: &Board, w: &WorkerHandle) {
    if w.exec.is_some() {
        board.slot(w.slot).set_state(SlotState::Draining);
    }
}
