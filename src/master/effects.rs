//! The shell around the core: events go in through [`Master::step`], and
//! the effects the core returns are carried out here, in order.

use std::time::Instant;

use tracing::{info, warn};

use super::core::{Effect, Event, Member, World};
use super::worker_handle::WorkerHandle;
use super::Master;
use crate::proto::exit::Exit;
use crate::shm::scoreboard::{Board, SlotState};

impl Master {
    /// Hands one event to the core and carries out what it decided;
    /// returns the exit status when the master must exit.
    pub(super) fn step(&mut self, event: Event<'_>) -> Option<Exit> {
        let effects = self.core.step(event, Instant::now());
        self.apply(effects)
    }

    /// The tick: the core sees every worker and decides what drains, what
    /// starts, whether a reload is over and whether the master is done.
    pub(super) fn tick(&mut self) -> Option<Exit> {
        let canary_failed = self.watch_canary();
        let old_program_accepts = self.old_program_still_accepts();
        let board = self.board;
        let members: Vec<Member> = self
            .fleet
            .workers
            .iter()
            .map(|w| Member {
                pid: w.pid,
                generation: w.generation,
                booting: w.booting(),
                awaiting_ready: w.awaiting_ready(),
                serving: w.serving(),
                retiring: w.retiring(),
                leaving: w.leaving(),
                connections: board.slot(w.slot).active_connections(),
                exec: w.exec.is_some(),
            })
            .collect();
        self.step(Event::Tick(World {
            members: &members,
            helpers: self.fleet.helpers.len(),
            strays: !self.fleet.strays.is_empty(),
            old_program_accepts,
            canary_failed,
        }))
    }

    fn apply(&mut self, effects: Vec<Effect>) -> Option<Exit> {
        for effect in effects {
            match effect {
                Effect::LoadConfig { waiters, started } => {
                    info!(config = %self.fixed.source.describe(), "reloading configuration");
                    let result = self.load_new_config().map_err(|e| e.to_string());
                    if let Some(code) = self.step(Event::ConfigLoaded {
                        waiters,
                        started,
                        result,
                    }) {
                        return Some(code);
                    }
                }
                Effect::Reply { to, response } => self.reply(to, &response),
                Effect::SetGeneration(g) => self.board.set_generation(g),
                Effect::SetStopping => self.board.set_stopping(),
                Effect::ApplyLog(log) => self.fixed.log.apply(&log),
                Effect::CountReload(result) => self.board.count_reload(result),
                Effect::NotifyReloading => self.systemd.notifier.reloading(),
                Effect::NotifyStopping => self.systemd.notifier.stopping(),
                Effect::NotifyReady => self.systemd_ready(),
                Effect::InitialReady => self.initial_ready(),
                Effect::Spawn(n) => self.spawn_workers(n),
                Effect::Drain { pid, reason } => {
                    if let Some(w) = self.fleet.workers.iter_mut().find(|w| w.pid == pid) {
                        let graceful = w.config.lifecycle.graceful_timeout;
                        w.drain(reason, graceful);
                        mark_draining(self.board, w);
                    }
                }
                Effect::DrainAll(reason) => {
                    for w in self.fleet.workers.iter_mut().chain(&mut self.fleet.helpers) {
                        let graceful = w.config.lifecycle.graceful_timeout;
                        w.drain(reason, graceful);
                        mark_draining(self.board, w);
                    }
                }
                Effect::QuickStopAll => {
                    for w in self.fleet.workers.iter_mut().chain(&mut self.fleet.helpers) {
                        w.quick_stop();
                    }
                }
                Effect::QuickStopWorkers => {
                    for w in &mut self.fleet.workers {
                        w.quick_stop();
                    }
                }
                Effect::Forward(sig) => {
                    for w in self.fleet.workers.iter().chain(&self.fleet.helpers) {
                        w.signal(sig);
                    }
                }
                Effect::CloseListeners => self.sockets.listeners.close_all(),
                Effect::CloseUnusedListeners => self.close_unused_listeners(),
                Effect::ReplaceHelpers => self.replace_helpers(),
                Effect::StartUpgrade => {
                    if let Some(code) = self.start_upgrade() {
                        return Some(code);
                    }
                }
                Effect::UpgradeOver { upgrade, ready } => self.upgrade_over(upgrade, ready),
                Effect::KillUpgrade(upgrade) => upgrade.kill(),
                Effect::ReturnMemory => super::notify::drop_startup_code(),
                Effect::Exit(code) => return Some(code),
            }
        }
        None
    }

    /// Workers told to leave that are still there at their deadline get
    /// the SIGABRT a stack dump held back, then SIGKILL.
    pub(super) fn escalate(&mut self) {
        let now = Instant::now();
        for w in self.fleet.workers.iter_mut().chain(&mut self.fleet.helpers) {
            if w.escalate(now) {
                warn!(pid = w.pid.as_raw(), "worker did not exit in time; SIGKILL");
            }
        }
    }

    /// Closes listening sockets that neither the current configuration nor
    /// any live worker uses any more (addresses removed by a reload).
    fn close_unused_listeners(&mut self) {
        let mut keep = self.core.current().loaded.config.listen_addrs();
        for w in &self.fleet.workers {
            keep.extend(w.config.listen_addrs());
        }
        let keep: Vec<&crate::config::BindAddr> = keep.iter().collect();
        self.sockets.listeners.retain(&keep);
    }

    /// Workers of the current generation serving and staying.
    pub(super) fn ready_count(&self) -> usize {
        self.fleet
            .workers
            .iter()
            .filter(|w| w.serving() && w.generation == self.core.current().generation)
            .count()
    }
}

/// An exec worker does not write its slot: the master says it drains.
pub(super) fn mark_draining(board: &Board, w: &WorkerHandle) {
    if w.exec.is_some() {
        board.slot(w.slot).set_state(SlotState::Draining);
    }
}
