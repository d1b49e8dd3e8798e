//! Step 1b (exec mode): what the workers' programs said: their output
//! lines go to the log; `READY=1`, a matching line or the delay of
//! `app.ready` makes a worker ready (in proxy mode, once its socket accepts
//! too); `WATCHDOG=1` is a heartbeat. The
//! master writes these into the worker's slot, as a forked worker would.

use std::time::Instant;

use nix::unistd::Pid;

use super::exec::{ExecEvent, Label};
use super::Fleet;
use crate::shm::scoreboard::SlotState;

/// What each exec worker's descriptors reported in the last poll.
pub type ExecRevents = Vec<(Pid, Vec<Option<nix::poll::PollFlags>>)>;

impl Fleet {
    pub(super) fn read_workers(&mut self, revents: &ExecRevents) {
        let now = Instant::now();
        let board = self.board;
        for w in &mut self.workers {
            let leaving = w.leaving();
            let Some(io) = &mut w.exec else {
                continue;
            };
            let label = Label {
                slot: w.slot,
                pid: w.pid.as_raw(),
                generation: w.generation,
            };
            let mut events = match revents.iter().find(|(pid, _)| *pid == w.pid) {
                Some((_, r)) => io.handle(r, label),
                None => Vec::new(),
            };
            if io.delay_elapsed(w.spawned_at) {
                events.push(ExecEvent::Ready);
            }
            let slot = board.slot(w.slot);
            // Its rule met (and in proxy mode its socket accepting).
            if slot.state() == SlotState::Booting && !leaving && io.ready_to_serve(now) {
                slot.set_state(SlotState::Ready);
                tracing::debug!(
                    pid = label.pid,
                    waited_ms = now.duration_since(w.spawned_at).as_millis() as u64,
                    "exec worker ready"
                );
            }
            for e in events {
                match e {
                    ExecEvent::Ready => {}
                    ExecEvent::Beat => slot.beat(crate::os::monotonic_ms(), 0),
                    ExecEvent::OutputDropped(n) => {
                        board
                            .header
                            .app_output_dropped
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
