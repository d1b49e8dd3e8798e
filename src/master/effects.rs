//! The shell around the core: events go in through [`Master::step`], and
//! the effects the core returns are carried out here, in order.

use std::time::Instant;

use tracing::{error, info};

use nix::unistd::Pid;

use super::control_socket::{ClientId, Revents};
use super::core::{Ask, Effect, Event, World};
use super::reap::Reaped;
use super::spawn::Spawner;
use super::Master;
use crate::proto::control::{Request, Response};
use crate::proto::exit::Exit;

impl Master {
    /// Queued signals and control-socket requests become events for the
    /// core (stop, scale, reload, upgrade); `status` and `dump` are
    /// answered here.
    pub(super) fn dispatch(&mut self, control: &Revents) -> Option<Exit> {
        for (sig, times) in self.signals.take() {
            if let Some(code) = self.step(Event::Signal { sig, times }) {
                return Some(code);
            }
        }
        self.serve_control(control)
    }

    fn serve_control(&mut self, revents: &Revents) -> Option<Exit> {
        let requests = match &mut self.sockets.control {
            Some(control) => control.handle(revents, Instant::now()),
            None => return None,
        };
        for (client, request) in requests {
            let ask = match request {
                Err(e) => {
                    self.reply(client, &Response::error(e.to_string()));
                    continue;
                }
                Ok(Request::Status) => {
                    let mut resp = Response::message("status");
                    resp.status = Some(self.view().status());
                    self.reply(client, &resp);
                    continue;
                }
                Ok(Request::Dump(slot)) => {
                    if let Err(e) = self.fleet.dump(client, slot) {
                        self.reply(client, &Response::error(e.to_string()));
                    }
                    continue;
                }
                Ok(Request::Reload) => Ask::Reload,
                Ok(Request::Scale(n)) => Ask::Scale(n),
                Ok(Request::Stop) => Ask::Stop,
            };
            if let Some(code) = self.step(Event::Control { client, ask }) {
                return Some(code);
            }
        }
        None
    }

    fn view(&self) -> super::status::View<'_> {
        super::status::View {
            board: self.board,
            core: &self.core,
            fleet: &self.fleet,
            listeners: &self.sockets.listeners,
            quic: &self.sockets.quic,
            started: self.fixed.started,
        }
    }

    /// Sends what the fleet has for control clients (a dump's report).
    pub(super) fn send_replies(&mut self) {
        for (to, resp) in self.fleet.take_replies() {
            self.reply(to, &resp);
        }
    }

    /// Answers a control client (if it is still there).
    pub(super) fn reply(&mut self, to: ClientId, resp: &Response) {
        if let Some(c) = &mut self.sockets.control {
            c.reply(to, resp);
        }
    }

    /// Hands one event to the core and carries out what it decided;
    /// returns the exit status when the master must exit.
    pub(super) fn step(&mut self, event: Event<'_>) -> Option<Exit> {
        let effects = self.core.step(event, Instant::now());
        self.apply(effects)
    }

    /// The tick: the core sees every worker and decides what drains, what
    /// starts, whether a reload is over and whether the master is done.
    pub(super) fn tick(&mut self) -> Option<Exit> {
        let current = self.core.current().generation;
        let canary_failed = match self.core.canary_mut() {
            Some(canary) => self.fleet.watch_canary(canary, current),
            None => None,
        };
        let reloading = self.core.lifecycle().reload().is_some();
        let leaving = reloading.then(|| self.fleet.leaving_programs(current));
        let old_program_accepts = self.sockets.old_program_still_accepts(leaving);
        self.step(Event::Tick(World {
            members: self.fleet.members(),
            helpers: self.fleet.helper_count(),
            strays: self.fleet.has_strays(),
            old_program_accepts,
            canary_failed,
        }))
    }

    fn apply(&mut self, effects: Vec<Effect>) -> Option<Exit> {
        for effect in effects {
            match effect {
                Effect::LoadConfig { waiters, started } => {
                    info!(config = %self.fixed.source.describe(), "reloading configuration");
                    let result = self
                        .sockets
                        .load_new_config(&self.fixed.source, &self.fixed.extra_binds);
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
                Effect::NotifyReloading => self.systemd.reloading(),
                Effect::NotifyStopping => self.systemd.stopping(),
                Effect::NotifyReady => {
                    let line = self.status_line();
                    self.systemd.ready(line);
                }
                Effect::InitialReady => {
                    let line = self.status_line();
                    self.systemd.initial_ready(line, self.board);
                }
                Effect::Spawn(n) => {
                    let (fleet, mut sp) = self.spawner();
                    if let Err(e) = fleet.spawn_workers(n, &mut sp) {
                        error!("cannot start a worker: {e}");
                        if let Some(code) = self.step(Event::SpawnFailed) {
                            return Some(code);
                        }
                    }
                }
                Effect::Drain { pid, reason } => self.fleet.drain(pid, reason),
                Effect::Inspect { pid, hung } => self.fleet.hung(pid, hung),
                Effect::Retire { pid, reason } => self.fleet.retire(pid, reason),
                Effect::DrainAll(reason) => self.fleet.drain_all(reason),
                Effect::QuickStopAll => self.fleet.quick_stop(true),
                Effect::QuickStopWorkers => self.fleet.quick_stop(false),
                Effect::Forward(sig) => self.fleet.forward(sig),
                Effect::CloseListeners => self.sockets.listeners.close_all(),
                Effect::CloseUnusedListeners => self.close_unused_listeners(),
                Effect::ReplaceHelpers => {
                    if self
                        .fleet
                        .replace_helpers(&self.core.current().loaded.config)
                    {
                        self.spawn_helpers();
                    }
                }
                Effect::StartUpgrade => {
                    if let Some(code) = self.start_upgrade() {
                        return Some(code);
                    }
                }
                Effect::UpgradeOver { pid, ready } => self.upgrade_over(pid, ready),
                Effect::KillUpgrade(pid) => {
                    kill_new_master(pid);
                    self.sockets.forget_upgrade();
                }
                Effect::ReturnMemory => super::notify::drop_startup_code(),
                Effect::Exit(code) => return Some(code),
            }
        }
        None
    }

    /// The core admitted a USR2 (the master runs, settled).
    fn start_upgrade(&mut self) -> Option<Exit> {
        let timeout = self.core.current().loaded.config.lifecycle.timeout;
        let exe = &self.fixed.exe;
        match self.sockets.spawn_new_master(exe, &self.fixed.args) {
            Ok(pid) => {
                info!(
                    new_master = pid.as_raw(),
                    exe = %exe.display(),
                    "USR2: started the new binary; old workers serve until it is ready"
                );
                self.step(Event::UpgradeStarted {
                    pid,
                    deadline: Instant::now() + timeout,
                })
            }
            Err(e) => {
                error!("USR2: cannot start the new binary: {e}");
                None
            }
        }
    }

    /// What the new master of a USR2 wrote on its pipe, for the core.
    pub(super) fn check_upgrade(&mut self, pipe_readable: bool) -> Option<Exit> {
        if !pipe_readable {
            return None;
        }
        let (bytes, closed) = self.sockets.read_upgrade_pipe();
        self.step(Event::UpgradeSaid { bytes, closed })
    }

    /// The core ended an upgrade: a ready new master owns the socket files
    /// and the pidfile now; a failed one is killed and this master takes
    /// its place again.
    fn upgrade_over(&mut self, pid: Pid, ready: bool) {
        self.sockets.forget_upgrade();
        if ready {
            self.sockets.hand_over();
            return;
        }
        kill_new_master(pid);
        self.sockets.take_back();
        self.systemd.main_pid_is_mine();
    }

    /// Keeps the helpers running (front workers, the metrics sidecar)
    /// while the master serves.
    pub(super) fn spawn_helpers(&mut self) {
        if !self.core.lifecycle().serving() {
            return;
        }
        let (fleet, mut sp) = self.spawner();
        fleet.spawn_helpers(&mut sp);
    }

    /// The fleet, and what starting a worker needs of the other parts.
    fn spawner(&mut self) -> (&mut super::Fleet, Spawner<'_>) {
        let sp = Spawner {
            entry: self.fixed.entry.as_ref(),
            run_dir: &mut self.fixed.run_dir,
            current: self.core.current(),
            listeners: &self.sockets.listeners,
            quic: &mut self.sockets.quic,
            signals: &self.signals,
        };
        (&mut self.fleet, sp)
    }

    /// Collects exited children: each worker's exit is an event for the
    /// core, as is the exit of an upgrade's new master; then what exited
    /// workers' apps left behind is stopped.
    pub(super) fn reap_children(&mut self) {
        let serving = self.core.lifecycle().serving();
        let upgrading = self.core.lifecycle().upgrade().map(|u| u.pid);
        for reaped in self.fleet.reap(serving) {
            // Reaping never leads to an exit by itself: the tick decides.
            let _ = match reaped {
                Reaped::Worker(exited) => self.step(Event::Exited(exited)),
                Reaped::Other { pid, how } if Some(pid) == upgrading => {
                    self.step(Event::UpgradeExited { ended: how })
                }
                Reaped::Other { .. } => None,
            };
        }
        // The new master of a binary upgrade stays our child after it took
        // over (or while a failed one is killed).
        let last = self
            .core
            .last_upgrade()
            .map(|r| Pid::from_raw(r.new_master_pid as i32));
        let upgrade = self.core.lifecycle().upgrade().map(|u| u.pid);
        let known: Vec<Pid> = last.into_iter().chain(upgrade).collect();
        self.fleet.stop_strays(&known);
    }

    /// Reads the workers' reports (a settled worker is an event for the
    /// core), aborts a silent helper, and every `MEMORY_CHECK_INTERVAL`
    /// measures memory for the core (the app workers' heartbeats and boot
    /// deadlines are judged by the core at the tick).
    pub(super) fn check_health(&mut self) {
        let now = Instant::now();
        for generation in self.fleet.observe(now) {
            // Settling never leads to an exit by itself.
            let _ = self.step(Event::Settled { generation });
        }
        self.fleet.check_helpers();
        if self.schedule.memory_check_due(now) {
            let usage = self.fleet.measure();
            // Retiring never leads to an exit by itself.
            let _ = self.step(Event::Measured(&usage));
        }
    }

    /// `http.http3`: new QUIC connections go to the ready serving workers
    /// of the current generation (app workers, or front workers in proxy
    /// mode); a worker that leaves keeps the connections it has.
    pub(super) fn steer_quic(&mut self) {
        if self.sockets.quic.is_empty() || !self.core.steers_quic() {
            return;
        }
        // The master this one upgraded from (its parent until it exits)
        // may attach its program once more before it reads that this one
        // is ready: attached again at every turn while it lives. Its
        // workers may also read groups no worker of this one serves.
        let old_master_lives = self
            .fixed
            .upgraded_from
            .is_some_and(|old| nix::unistd::getppid() == old);
        // A reload that turned HTTP/3 off or removed a TLS address: the
        // group closes once no live process reads it.
        let config = &self.core.current().loaded.config;
        let mut keep = self.fleet.http3_addresses();
        if config.http.http3 {
            keep.extend(config.tls_tcp_binds());
        }
        for udp in self.sockets.quic.retain(&keep, old_master_lives) {
            info!(%udp, "no worker serves HTTP/3 on it any more: UDP sockets closed");
        }
        if self.sockets.quic.is_empty() {
            return;
        }
        let seats = self.fleet.quic_seats(self.core.current().generation);
        if let Err(e) = self.sockets.quic.steer(&seats, old_master_lives) {
            error!("{e}; new HTTP/3 connections go where the kernel's hash sends them");
        }
    }

    /// Closes listening sockets that neither the current configuration nor
    /// any live worker uses any more (addresses removed by a reload).
    fn close_unused_listeners(&mut self) {
        let mut keep = self.core.current().loaded.config.listen_addrs();
        keep.extend(self.fleet.addresses_in_use());
        let keep: Vec<&crate::config::BindAddr> = keep.iter().collect();
        self.sockets.listeners.retain(&keep);
    }

    fn status_line(&self) -> String {
        let ready = self.fleet.ready_count(self.core.current().generation);
        super::notify::status_line(&self.core, ready)
    }

    /// systemd's STATUS and WATCHDOG (a new master speaks once it took over).
    pub(super) fn notify_systemd(&mut self) {
        if !self.systemd.enabled() || self.core.lifecycle().handed_over() {
            return;
        }
        let line = self.status_line();
        let healthy = self.fleet.healthy_workers() > 0;
        self.systemd.notify(line, healthy, Instant::now());
    }
}

/// Kills a new master that failed or must not outlive this one (its
/// workers die with it: `PR_SET_PDEATHSIG`).
fn kill_new_master(pid: Pid) {
    // ESRCH: it is gone already, and is reaped.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}
