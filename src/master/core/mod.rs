//! The master's decisions, without I/O. The loop reads the world into
//! [`Event`]s (a signal, a control request, a configuration loaded, a
//! worker that exited or settled, a tick with what each worker is doing);
//! [`Core::step`] changes the core's state and returns the [`Effect`]s the
//! loop carries out (load the configuration, start N workers, drain a pid,
//! answer a client, tell systemd, exit). Time comes in with each step, so
//! reloads, rollbacks, backoff, scaling and stops are tested with a fake
//! clock and no process (`tests.rs`).
//!
//! What the core owns: the generation new workers start with
//! ([`Current`]), what the master is doing ([`Lifecycle`]: running,
//! reloading, upgrading, stopping), the reload queued behind it, the last
//! reload's and upgrade's results, the boot backoff, memory strikes, and
//! whether systemd heard READY. It decides what starts, drains, retires,
//! is dumped as hung, rolls back, and when it wants its next tick. The
//! workers themselves (pids, stages, exec pipes, kill deadlines) and the
//! helpers' restarts are the shell's; each tick describes the workers as
//! [`Member`]s.

mod backoff;
mod events;
pub mod fleet;
pub mod health;
pub mod lifecycle;
mod reload;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::canary::Canary;
use super::control_socket::ClientId;
use crate::config::material::Loaded;
use crate::proto::control::{Response, UpgradeReport};
use crate::proto::exit::Exit;
use crate::proto::outcome::ExitReason;

pub use backoff::BootBackoff;
pub use events::{Ask, Effect, Ended, Event, Exited, Member, World};
pub use health::{Hung, Usage};
use lifecycle::{Lifecycle, StopKind, Upgrade, UpgradeVerdict};
pub use reload::{LastReload, ReloadError};

/// The generation new workers start with.
#[derive(Clone)]
pub struct Current {
    pub loaded: Loaded,
    pub generation: u32,
    /// Workers it should have (`server.workers`, then TTIN / TTOU).
    pub desired: usize,
}

/// The master's decisions and the state they need (see the module).
pub struct Core {
    current: Current,
    lifecycle: Lifecycle,
    /// A reload was asked for while a reload or upgrade ran; these
    /// clients wait for it.
    queued_reload: Option<Vec<ClientId>>,
    last_reload: Option<LastReload>,
    /// When the last binary upgrade ended, and how.
    last_upgrade: Option<(Instant, UpgradeReport)>,
    /// The highest generation number given out.
    last_generation: u32,
    backoff: BootBackoff,
    /// READY=1 went out: every initial worker was ready once.
    initial_ready: bool,
    /// Memory checks in a row above `max_worker_memory`, per worker.
    memory_strikes: BTreeMap<Pid, u32>,
    /// Started by a binary upgrade and not ready yet: the old master still
    /// owns the service.
    taking_over: bool,
}

impl Core {
    pub fn new(loaded: Loaded, now: Instant) -> Core {
        let desired = loaded.config.worker_count();
        Core {
            current: Current {
                loaded,
                generation: 1,
                desired,
            },
            lifecycle: Lifecycle::Running,
            queued_reload: None,
            last_reload: None,
            last_upgrade: None,
            last_generation: 1,
            backoff: BootBackoff::new(now),
            initial_ready: false,
            memory_strikes: BTreeMap::new(),
            taking_over: false,
        }
    }

    /// A master started by a binary upgrade: until its first fleet is
    /// ready, it takes over from the old one and starts no upgrade itself.
    pub fn taking_over(mut self) -> Core {
        self.taking_over = true;
        self
    }

    /// Whether this master attaches HTTP/3's steering program: not while
    /// it takes over from the master of a binary upgrade (that one steers
    /// until this one's fleet is ready), nor once it has handed over to a
    /// new one.
    pub fn steers_quic(&self) -> bool {
        !self.taking_over && !self.lifecycle.handed_over()
    }

    pub fn current(&self) -> &Current {
        &self.current
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    pub fn last_reload(&self) -> Option<&LastReload> {
        self.last_reload.as_ref()
    }

    /// The last binary upgrade's result, as `rsvisor status` shows it.
    pub fn last_upgrade(&self) -> Option<UpgradeReport> {
        self.last_upgrade.as_ref().map(|(at, r)| UpgradeReport {
            seconds_ago: at.elapsed().as_secs_f64(),
            ..r.clone()
        })
    }

    /// The canary of the reload in progress, for the shell to sample.
    pub fn canary_mut(&mut self) -> Option<&mut Canary> {
        self.lifecycle.reload_mut()?.canary.as_deref_mut()
    }

    /// The earliest moment the core wants a tick, if any.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut add = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if !self.backoff.may_spawn(now) {
            add(self.backoff.not_before());
        }
        if let Some(c) = self.lifecycle.reload().and_then(|r| r.canary.as_ref()) {
            if c.watching() {
                add(now + super::canary::CANARY_TICK);
            }
        }
        if let Some(t) = self.lifecycle.close_deadline() {
            add(t);
        }
        if let Some(u) = self.lifecycle.upgrade() {
            add(u.deadline);
        }
        at
    }

    /// Takes in one event; returns what the shell must do, in order.
    pub fn step(&mut self, event: Event<'_>, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::Signal { sig, times } => self.signal(sig, times, now, &mut fx),
            Event::Control { client, ask } => self.control(client, ask, now, &mut fx),
            Event::ConfigLoaded {
                waiters,
                started,
                result,
            } => match result {
                Ok(loaded) => self.start_reload(loaded, waiters, started, now, &mut fx),
                Err(why) => self.refuse_reload(waiters, why.to_string(), started, now, &mut fx),
            },
            Event::Settled { generation } => {
                if generation == self.current.generation {
                    self.backoff.succeeded();
                }
            }
            Event::Exited(e) => self.exited(e, now, &mut fx),
            Event::SpawnFailed => self.backoff.pause(now),
            Event::UpgradeStarted { pid, deadline } => {
                if matches!(self.lifecycle, Lifecycle::Running) {
                    self.lifecycle = Lifecycle::Upgrading(Upgrade::new(pid, now, deadline));
                } else {
                    fx.push(Effect::KillUpgrade(pid));
                }
            }
            Event::UpgradeSaid { bytes, closed } => {
                if let Some(up) = self.lifecycle.upgrade_mut() {
                    up.heard(&bytes, closed);
                }
                self.judge_upgrade(now, &mut fx);
            }
            Event::UpgradeExited { ended } => {
                let why = format!("the new master exited ({ended})");
                self.upgrade_ended(false, why, now, &mut fx);
            }
            Event::Measured(usage) => self.measured(usage, &mut fx),
            Event::Tick(world) => self.tick(world, now, &mut fx),
        }
        fx
    }

    fn signal(&mut self, sig: Signal, times: u32, now: Instant, fx: &mut Vec<Effect>) {
        match sig {
            Signal::SIGINT | Signal::SIGQUIT => self.quick_stop(sig, fx),
            Signal::SIGTERM => self.graceful_stop("TERM", false, now, fx),
            // HUPs delivered together ask for the same thing: one reload.
            Signal::SIGHUP => self.request_reload(None, now, fx),
            Signal::SIGTTIN => self.scale_to(self.current.desired + times as usize),
            Signal::SIGTTOU => self.scale_to(self.current.desired.saturating_sub(times as usize)),
            Signal::SIGUSR1 => {
                info!("USR1: workers reopen their access logs");
                fx.push(Effect::Forward(Signal::SIGUSR1));
            }
            Signal::SIGUSR2 => {
                if self.taking_over {
                    warn!("USR2 ignored: this master is still taking over from the previous one");
                } else if self.lifecycle.may_upgrade() {
                    fx.push(Effect::StartUpgrade);
                } else {
                    warn!("USR2 ignored: the master is stopping, reloading or upgrading already");
                }
                if times > 1 {
                    warn!(
                        times,
                        "USR2 received again before the master acted on the first: ignored"
                    );
                }
            }
            // CHLD only wakes the loop; reaping is the shell's.
            _ => {}
        }
    }

    fn control(&mut self, client: ClientId, ask: Ask, now: Instant, fx: &mut Vec<Effect>) {
        match ask {
            Ask::Reload => self.request_reload(Some(client), now, fx),
            Ask::Scale(n) => {
                let response = if self.lifecycle.serving() {
                    self.scale_to(n);
                    Response::message(format!("scaling to {n} workers"))
                } else {
                    Response::error("stopping; not scaling")
                };
                fx.push(Effect::Reply {
                    to: client,
                    response: Box::new(response),
                });
            }
            Ask::Stop => {
                self.graceful_stop("stop request", false, now, fx);
                fx.push(Effect::Reply {
                    to: client,
                    response: Box::new(Response::message("stopping gracefully")),
                });
            }
        }
    }

    fn scale_to(&mut self, n: usize) {
        if !self.lifecycle.serving() {
            return;
        }
        let before = self.current.desired;
        self.current.desired = n.clamp(1, crate::config::MAX_WORKERS);
        if self.current.desired != before {
            info!(from = before, to = self.current.desired, "scaling workers");
        }
    }

    /// `/ready` fails at once; after `shutdown_delay` the sockets close and
    /// the workers drain. `handed_over`: a new master serves now.
    fn graceful_stop(&mut self, why: &str, handed_over: bool, now: Instant, fx: &mut Vec<Effect>) {
        if self.lifecycle.stopping() {
            return;
        }
        let lc = &self.current.loaded.config.lifecycle;
        info!(
            shutdown_delay = ?lc.shutdown_delay,
            graceful_timeout = ?lc.graceful_timeout,
            "{why}: stopping gracefully; /ready now answers 503"
        );
        let kind = StopKind::Graceful {
            close_at: now + lc.shutdown_delay,
            closed: false,
        };
        if !handed_over {
            fx.push(Effect::NotifyStopping);
        }
        let was = self.lifecycle.stop(kind, handed_over);
        self.left(was, fx);
    }

    fn quick_stop(&mut self, sig: Signal, fx: &mut Vec<Effect>) {
        if self.lifecycle.quick_stopping() {
            return;
        }
        info!(signal = %sig, "stopping now (quick stop)");
        if !self.lifecycle.handed_over() {
            fx.push(Effect::NotifyStopping);
        }
        let was = self.lifecycle.stop(StopKind::Quick, false);
        self.left(was, fx);
        fx.push(Effect::CloseListeners);
        fx.push(Effect::QuickStopAll);
    }

    /// Cleans up after what the master was doing when it started to stop.
    fn left(&mut self, was: Lifecycle, fx: &mut Vec<Effect>) {
        fx.push(Effect::SetStopping);
        let mut waiting = self.queued_reload.take().unwrap_or_default();
        match was {
            Lifecycle::Reloading(r) => waiting.extend(r.waiters),
            Lifecycle::Upgrading(up) => fx.push(Effect::KillUpgrade(up.pid)),
            Lifecycle::Running | Lifecycle::Stopping(_) => {}
        }
        for to in waiting {
            fx.push(Effect::Reply {
                to,
                response: Box::new(Response::error("reload interrupted: stopping")),
            });
        }
    }

    fn exited(&mut self, e: Exited, now: Instant, fx: &mut Vec<Effect>) {
        self.memory_strikes.remove(&e.pid);
        if let Some(canary) = self.canary_mut().filter(|c| c.is_canary(e.pid)) {
            let why = match e.reason {
                ExitReason::Timeout => Some("missed its heartbeat and was killed"),
                ExitReason::Crash => Some("exited unexpectedly"),
                _ => None,
            };
            if let Some(why) = why {
                canary.lost(format!("the canary (pid {}) {why}: {}", e.pid, e.ended));
            }
        }
        let current = e.generation == self.current.generation;
        if boot_failure(e.settled, current, e.reason) && self.lifecycle.serving() {
            let delay = self.backoff.failed(now, e.in_app_startup);
            let what = if e.said_ready {
                "worker exited right after it said it was ready: a failed start"
            } else {
                "worker failed during boot"
            };
            warn!(
                pid = e.pid.as_raw(),
                failures_in_a_row = self.backoff.failures(),
                retry_in = ?delay,
                "{what}"
            );
            if let Some(r) = self.lifecycle.reload_mut() {
                r.boot_failed();
            }
        }
        fx.push(Effect::CloseUnusedListeners);
    }

    fn upgrade_ended(&mut self, ready: bool, why: String, now: Instant, fx: &mut Vec<Effect>) {
        let Some(upgrade) = self.lifecycle.end_upgrade() else {
            return;
        };
        let message = if ready {
            "the new master serves".to_string()
        } else {
            format!("{why}; this master keeps serving")
        };
        let report = UpgradeReport {
            ok: ready,
            new_master_pid: upgrade.pid.as_raw() as u32,
            seconds_ago: 0.0,
            message,
        };
        self.last_upgrade = Some((now, report));
        if ready {
            info!(
                new_master = upgrade.pid.as_raw(),
                elapsed_ms = now.saturating_duration_since(upgrade.started).as_millis() as u64,
                "upgrade complete: the new master serves; this one drains and exits"
            );
            fx.push(Effect::UpgradeOver {
                pid: upgrade.pid,
                ready,
            });
            self.graceful_stop("handing over to the new master", true, now, fx);
        } else {
            error!(
                new_master = upgrade.pid.as_raw(),
                "UPGRADE FAILED: {why}; this master keeps serving"
            );
            fx.push(Effect::UpgradeOver {
                pid: upgrade.pid,
                ready,
            });
            self.start_queued_reload(now, fx);
        }
    }

    /// Applies the upgrade rule to what the new master said and the clock.
    fn judge_upgrade(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Some(up) = self.lifecycle.upgrade() else {
            return;
        };
        match up.verdict(now) {
            UpgradeVerdict::Waiting => {}
            UpgradeVerdict::Ready => self.upgrade_ended(true, String::new(), now, fx),
            UpgradeVerdict::Failed(why) => self.upgrade_ended(false, why.into(), now, fx),
        }
    }

    fn tick(&mut self, world: World, now: Instant, fx: &mut Vec<Effect>) {
        self.judge_upgrade(now, fx);
        if self.lifecycle.close_listeners_due(now) {
            info!("closing listeners; draining workers");
            fx.push(Effect::CloseListeners);
            fx.push(Effect::DrainAll(ExitReason::Shutdown));
        }
        let mut members = world.members;
        health::judge_health(&mut members, fx);
        // A program told to stop just now still holds its listening socket
        // (the shell looked before it was told).
        let mut old_program_accepts = world.old_program_accepts;
        if self.lifecycle.serving() {
            old_program_accepts |= self.apply_plan(&mut members, now, fx);
        }
        if self.lifecycle.draining_to_exit()
            && members.is_empty()
            && world.helpers == 0
            && !world.strays
        {
            info!("all workers gone; master exiting");
            fx.push(Effect::Exit(Exit::Ok));
            return;
        }
        if !self.lifecycle.serving() {
            return;
        }
        let ready = self.ready_count(&members);
        if !self.initial_ready && ready >= self.current.desired {
            self.initial_ready = true;
            self.taking_over = false;
            info!(workers = ready, "all workers ready");
            fx.push(Effect::InitialReady);
        }
        // An app that cannot start anywhere: stop instead of looping.
        if ready == 0
            && self.lifecycle.reload().is_none()
            && self.backoff.app_cannot_start(self.current.desired)
        {
            error!(
                failures = self.backoff.startup_failures(),
                "the app's startup failed in every worker; giving up"
            );
            fx.push(Effect::CloseListeners);
            fx.push(Effect::QuickStopWorkers);
            fx.push(Effect::Exit(Exit::AppStartupFailed));
            return;
        }
        match world.canary_failed {
            Some(why) => {
                self.roll_back(why, &members, now, fx);
                self.start_queued_reload(now, fx);
            }
            None => self.progress_reload(&members, old_program_accepts, now, fx),
        }
        self.return_memory(&members, fx);
    }

    /// The fleet plan: which workers drain now, how many start. Drained
    /// members are marked leaving for the rest of the tick. Returns whether
    /// an `app.command` program of another generation was told to stop.
    fn apply_plan(&mut self, members: &mut [Member], now: Instant, fx: &mut Vec<Effect>) -> bool {
        let current = self.current.generation;
        let seen: Vec<fleet::Seen> = members
            .iter()
            .map(|m| fleet::Seen {
                current_generation: m.generation == current,
                // A worker of an earlier generation that said it was ready
                // serves (an exec worker settles for READY_SETTLE first):
                // it is kept until a new one covers for it.
                booting: if m.generation == current {
                    m.booting
                } else {
                    m.awaiting_ready
                },
                retiring: m.retiring.is_some(),
                leaving: m.leaving,
                connections: m.connections,
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
        let mut old_program_stopped = false;
        for i in plan.drain {
            let m = &mut members[i];
            let reason = match m.retiring {
                Some(reason) => reason,
                None if m.generation != current => ExitReason::Reload,
                None => ExitReason::ScaleDown,
            };
            info!(pid = m.pid.as_raw(), %reason, "draining worker");
            m.leaving = true;
            m.serving = false;
            old_program_stopped |= m.exec && m.generation != current;
            fx.push(Effect::Drain { pid: m.pid, reason });
        }
        if plan.spawn > 0 && self.backoff.may_spawn(now) {
            fx.push(Effect::Spawn(plan.spawn));
        }
        old_program_stopped
    }

    /// Workers of the current generation serving and staying.
    pub(super) fn ready_count(&self, members: &[Member]) -> usize {
        members
            .iter()
            .filter(|m| m.serving && m.generation == self.current.generation)
            .count()
    }
}

/// Whether a worker that ended this way failed to boot: it never became
/// ready, belonged to the generation being started, and was not asked to
/// leave for another reason than its boot deadline.
pub fn boot_failure(was_ready: bool, current_generation: bool, reason: ExitReason) -> bool {
    !was_ready && current_generation && matches!(reason, ExitReason::Crash | ExitReason::Timeout)
}
