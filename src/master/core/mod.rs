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
//! reload's result, the boot backoff, and whether systemd heard READY.
//! The workers themselves (pids, stages, exec pipes, kill deadlines) are
//! the shell's; each tick describes them as [`Member`]s.

mod backoff;
pub mod fleet;
pub mod health;
pub mod lifecycle;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::canary::{Canary, Limits};
use super::control_socket::ClientId;
use crate::config::material::Loaded;
use crate::config::{ConfigError, LogConfig};
use crate::net::listen::ListenError;
use crate::proto::control::{ReloadReport, Response, UpgradeReport};
use crate::proto::exit::{Exit, WorkerExit};
use crate::proto::outcome::{ExitReason, ReloadResult};

pub use backoff::BootBackoff;
use health::{verdict, Verdict, MEMORY_STRIKES};
pub use health::{Hung, Usage};
use lifecycle::{
    Lifecycle, Reload, ReloadAdmission, ReloadOutcome, StopKind, Upgrade, UpgradeVerdict,
};

/// The generation new workers start with.
#[derive(Clone)]
pub struct Current {
    pub loaded: Loaded,
    pub generation: u32,
    /// Workers it should have (`server.workers`, then TTIN / TTOU).
    pub desired: usize,
}

/// The result of the last reload, for `rsvisor status`.
pub struct LastReload {
    pub result: ReloadResult,
    pub generation: u32,
    pub at: Instant,
    pub duration: Duration,
    pub message: String,
    /// The code and heap the reload cycle used were given back, once the
    /// last worker of another generation was gone.
    pub memory_returned: bool,
}

impl LastReload {
    pub fn report(&self) -> ReloadReport {
        ReloadReport {
            result: self.result,
            generation: self.generation,
            seconds_ago: self.at.elapsed().as_secs_f64(),
            duration_ms: self.duration.as_millis() as u64,
            message: self.message.clone(),
        }
    }
}

/// What a control client asks that the core decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Reload,
    Scale(usize),
    Stop,
}

/// One app worker as the shell sees it at a tick (oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub pid: Pid,
    pub generation: u32,
    /// Not serving yet.
    pub booting: bool,
    /// Booting and not yet said to be ready (an exec worker that said so
    /// settles first).
    pub awaiting_ready: bool,
    /// Serving and staying: counts as capacity.
    pub serving: bool,
    /// Wants to be replaced (max_requests, memory, lifetime).
    pub retiring: Option<ExitReason>,
    /// Told to leave already.
    pub leaving: bool,
    /// Open connections (what a drain moves elsewhere).
    pub connections: u64,
    /// An `app.command` process.
    pub exec: bool,
    /// Since its fork.
    pub since_spawn: Duration,
    /// How old its last heartbeat is, if its heartbeat is watched (always
    /// for forked workers; an exec worker once it sent `WATCHDOG=1`).
    pub silent: Option<Duration>,
    /// Its own generation's `lifecycle.timeout`.
    pub timeout: Duration,
    /// Proxy mode: it left a request unanswered for `timeout`.
    pub stalled: bool,
}

/// How a worker that exited ended, as far as decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    pub pid: Pid,
    pub generation: u32,
    /// Why it left: what the master asked of it, or a crash.
    pub reason: ExitReason,
    /// It stayed up `READY_SETTLE` after it said it was ready.
    pub settled: bool,
    /// It said it was ready (settled or not).
    pub said_ready: bool,
    /// It failed in the app's own startup (an import error, a program
    /// that is missing): evidence the app cannot start anywhere.
    pub in_app_startup: bool,
    pub ended: Ended,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(Signal),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Code(c) => {
                let meaning =
                    WorkerExit::from_code(*c).map_or("unexpected exit code", WorkerExit::describe);
                write!(f, "exit code {c} ({meaning})")
            }
            Ended::Signal(s) => write!(f, "killed by signal {} ({s})", *s as i32),
        }
    }
}

/// What the shell saw at a tick.
#[derive(Debug, Default)]
pub struct World<'a> {
    pub members: &'a [Member],
    /// Helper workers (front workers, sidecar) still running.
    pub helpers: usize,
    /// Processes an app left behind that are still being stopped.
    pub strays: bool,
    /// A leaving program of another generation still holds a listening
    /// socket (uvicorn accepts for a while after its stop signal).
    pub old_program_accepts: bool,
    /// The canary failed, and why.
    pub canary_failed: Option<String>,
}

/// Something that happened.
pub enum Event<'a> {
    Signal {
        sig: Signal,
        times: u32,
    },
    Control {
        client: ClientId,
        ask: Ask,
    },
    /// The answer to [`Effect::LoadConfig`]: a new configuration with its
    /// addresses bound, or why not.
    ConfigLoaded {
        waiters: Vec<ClientId>,
        started: Instant,
        result: Result<Loaded, ReloadError>,
    },
    /// A worker stayed up `READY_SETTLE` after it said it was ready.
    Settled {
        generation: u32,
    },
    Exited(Exited),
    /// Starting a worker failed (no slot, fork): retry after a pause.
    SpawnFailed,
    /// The answer to [`Effect::StartUpgrade`]: the new master runs, and
    /// has until `deadline` to say it is ready.
    UpgradeStarted {
        pid: Pid,
        deadline: Instant,
    },
    /// The new master wrote on its pipe (`closed`: it closed it).
    UpgradeSaid {
        bytes: Vec<u8>,
        closed: bool,
    },
    /// The new master exited.
    UpgradeExited {
        ended: Ended,
    },
    /// Every app worker's memory and age, measured.
    Measured(&'a [Usage]),
    Tick(World<'a>),
}

/// Something the shell must do.
pub enum Effect {
    /// Load the configuration again and bind its new addresses; answer
    /// with [`Event::ConfigLoaded`].
    LoadConfig {
        waiters: Vec<ClientId>,
        started: Instant,
    },
    Reply {
        to: ClientId,
        response: Box<Response>,
    },
    /// The generation new workers start with changed (shared memory).
    SetGeneration(u32),
    /// Stopping: `/ready` answers 503.
    SetStopping,
    /// Apply a generation's logging settings.
    ApplyLog(LogConfig),
    CountReload(ReloadResult),
    /// systemd: `RELOADING=1`.
    NotifyReloading,
    /// systemd: `STOPPING=1`.
    NotifyStopping,
    /// systemd: `READY=1` with the status line (after every reload).
    NotifyReady,
    /// Every initial worker is ready: READY=1, and a master started by a
    /// binary upgrade takes over.
    InitialReady,
    /// Start this many workers of the current generation.
    Spawn(usize),
    /// Drain one worker.
    Drain {
        pid: Pid,
        reason: ExitReason,
    },
    /// A worker is hung: dump its stacks, then abort it.
    Inspect {
        pid: Pid,
        hung: Hung,
    },
    /// A worker should be replaced: it serves on until a replacement is
    /// ready.
    Retire {
        pid: Pid,
        reason: ExitReason,
    },
    /// Drain every worker and helper.
    DrainAll(ExitReason),
    /// Tell every worker and helper to exit now.
    QuickStopAll,
    /// Tell every app worker to exit now.
    QuickStopWorkers,
    /// Send a signal to every worker and helper.
    Forward(Signal),
    CloseListeners,
    /// Close the listeners no configuration in use names any more.
    CloseUnusedListeners,
    /// After a reload: replace the helpers whose configuration changed.
    ReplaceHelpers,
    /// USR2: start the new binary; answer with [`Event::UpgradeStarted`].
    StartUpgrade,
    /// An upgrade ended: the new master takes over the socket files if
    /// `ready`, and is killed if not.
    UpgradeOver {
        pid: Pid,
        ready: bool,
    },
    /// A half-started new master must not outlive this one.
    KillUpgrade(Pid),
    /// A reload cycle is over: give back the memory it used.
    ReturnMemory,
    Exit(Exit),
}

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

    /// HUP or `rsvisor reload`: start a reload now, or queue it behind the
    /// reload or upgrade in progress (never interleave two).
    fn request_reload(&mut self, waiter: Option<ClientId>, now: Instant, fx: &mut Vec<Effect>) {
        match self.lifecycle.admit_reload() {
            ReloadAdmission::Start => {
                fx.push(Effect::NotifyReloading);
                fx.push(Effect::LoadConfig {
                    waiters: waiter.into_iter().collect(),
                    started: now,
                });
            }
            ReloadAdmission::Queue => {
                info!("reload requested during a reload or upgrade: queued until it finishes");
                self.queued_reload
                    .get_or_insert_with(Vec::new)
                    .extend(waiter);
            }
            ReloadAdmission::Refuse => {
                info!("reload ignored: stopping");
                if let Some(to) = waiter {
                    fx.push(Effect::Reply {
                        to,
                        response: Box::new(Response::error("stopping; not reloading")),
                    });
                }
            }
        }
    }

    /// Runs a reload that waited for the previous one (or an upgrade).
    fn start_queued_reload(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if let Some(waiters) = self.queued_reload.take() {
            fx.push(Effect::NotifyReloading);
            fx.push(Effect::LoadConfig {
                waiters,
                started: now,
            });
        }
    }

    fn start_reload(
        &mut self,
        new: Loaded,
        waiters: Vec<ClientId>,
        started: Instant,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        if !matches!(self.lifecycle, Lifecycle::Running) {
            // Stopping began while the configuration loaded.
            return self.refuse_reload(waiters, "stopping; not reloading".into(), started, now, fx);
        }
        fx.push(Effect::ApplyLog(new.config.log.clone()));
        let previous = self.current.clone();
        // Numbers are never reused: a rolled-back generation's workers may
        // still be draining when the next one starts.
        self.last_generation += 1;
        let canary = Limits::of(&new.config.lifecycle);
        self.current = Current {
            generation: self.last_generation,
            desired: new.config.worker_count(),
            loaded: new,
        };
        fx.push(Effect::SetGeneration(self.current.generation));
        self.lifecycle = Lifecycle::Reloading(Reload::new(previous, started, waiters, canary));
        self.backoff.reset(now);
        match canary {
            Some(c) => info!(
                generation = self.current.generation,
                workers = self.current.desired,
                canary_s = c.window.as_secs_f64(),
                "new generation starting with one canary worker, watched before the others \
                 are replaced"
            ),
            None => info!(
                generation = self.current.generation,
                workers = self.current.desired,
                "new generation starting; old workers retire as replacements become ready"
            ),
        }
    }

    fn refuse_reload(
        &mut self,
        waiters: Vec<ClientId>,
        why: String,
        started: Instant,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        error!("reload refused, still serving with the current configuration: {why}");
        let elapsed = now.saturating_duration_since(started);
        self.finish_reload(ReloadResult::InvalidConfig, elapsed, why, waiters, now, fx);
        self.start_queued_reload(now, fx);
    }

    fn finish_reload(
        &mut self,
        result: ReloadResult,
        duration: Duration,
        message: String,
        waiters: Vec<ClientId>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        fx.push(Effect::CountReload(result));
        let last = LastReload {
            result,
            generation: self.current.generation,
            at: now,
            duration,
            message,
            memory_returned: false,
        };
        let ok = result == ReloadResult::Success;
        for to in waiters {
            fx.push(Effect::Reply {
                to,
                response: Box::new(Response {
                    ok,
                    error: (!ok).then(|| format!("reload {result}: {}", last.message)),
                    status: None,
                    reload: Some(last.report()),
                    message: None,
                    forensics: None,
                }),
            });
        }
        self.last_reload = Some(last);
        fx.push(Effect::NotifyReady);
    }

    /// Makes a reload's previous generation current again.
    fn restore(&mut self, previous: Current, now: Instant, fx: &mut Vec<Effect>) {
        fx.push(Effect::ApplyLog(previous.loaded.config.log.clone()));
        self.current = previous;
        fx.push(Effect::SetGeneration(self.current.generation));
        // The new generation's addresses stay while its workers do.
        fx.push(Effect::CloseUnusedListeners);
        self.backoff.reset(now);
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

    fn tick(&mut self, world: World<'_>, now: Instant, fx: &mut Vec<Effect>) {
        self.judge_upgrade(now, fx);
        if self.lifecycle.close_listeners_due(now) {
            info!("closing listeners; draining workers");
            fx.push(Effect::CloseListeners);
            fx.push(Effect::DrainAll(ExitReason::Shutdown));
        }
        let mut members = world.members.to_vec();
        judge_health(&mut members, fx);
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

    /// Replaces a worker that lived past `max_worker_lifetime`, or that
    /// stays above `max_worker_memory` [`MEMORY_STRIKES`] checks in a row.
    fn measured(&mut self, usage: &[Usage], fx: &mut Vec<Effect>) {
        for u in usage {
            if !u.serving {
                continue;
            }
            if u.lifetime_over {
                info!(
                    pid = u.pid.as_raw(),
                    lived_s = u.lived.as_secs(),
                    "worker reached max_worker_lifetime; replacing it"
                );
                fx.push(Effect::Retire {
                    pid: u.pid,
                    reason: ExitReason::Lifetime,
                });
                continue;
            }
            let Some(limit) = u.limit else {
                continue;
            };
            if u.rss <= limit {
                self.memory_strikes.remove(&u.pid);
                continue;
            }
            let strikes = self.memory_strikes.entry(u.pid).or_insert(0);
            *strikes += 1;
            if *strikes >= MEMORY_STRIKES {
                warn!(
                    pid = u.pid.as_raw(),
                    rss_bytes = u.rss,
                    limit_bytes = limit,
                    "worker stays above max_worker_memory; replacing it"
                );
                fx.push(Effect::Retire {
                    pid: u.pid,
                    reason: ExitReason::Memory,
                });
            }
        }
    }

    /// Workers of the current generation serving and staying.
    fn ready_count(&self, members: &[Member]) -> usize {
        members
            .iter()
            .filter(|m| m.serving && m.generation == self.current.generation)
            .count()
    }

    /// Ends a reload that is done or must be abandoned.
    fn progress_reload(
        &mut self,
        members: &[Member],
        old_program_accepts: bool,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let current = self.current.generation;
        let old_serving = members
            .iter()
            .any(|m| m.generation != current && !m.leaving);
        let complete = self.ready_count(members) >= self.current.desired
            && !old_serving
            && !old_program_accepts;
        let Some(r) = self.lifecycle.reload() else {
            return;
        };
        match r.outcome(complete, now) {
            ReloadOutcome::InProgress => return,
            ReloadOutcome::Done { elapsed } => {
                let Some(r) = self.lifecycle.end_reload() else {
                    return;
                };
                info!(
                    generation = current,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "reload complete: every worker is of the new generation"
                );
                let note = r.canary.as_ref().and_then(|c| c.note.as_deref());
                let msg = match note {
                    Some(n) => format!("generation {current} serving; {n}"),
                    None => format!("generation {current} serving"),
                };
                self.finish_reload(ReloadResult::Success, elapsed, msg, r.waiters, now, fx);
                fx.push(Effect::ReplaceHelpers);
            }
            ReloadOutcome::Abandon { failures } => {
                let Some(r) = self.lifecycle.end_reload() else {
                    return;
                };
                error!(
                    failures,
                    "RELOAD ABANDONED: new workers could not start; \
                     the previous generation keeps serving"
                );
                self.restore(r.previous, now, fx);
                let msg = format!(
                    "{failures} new workers failed to boot; generation {} keeps serving",
                    self.current.generation
                );
                let elapsed = now.saturating_duration_since(r.started);
                self.finish_reload(ReloadResult::Abandoned, elapsed, msg, r.waiters, now, fx);
            }
        }
        self.start_queued_reload(now, fx);
    }

    /// The canary failed: the previous generation is current again, and
    /// the new generation's workers drain (the next plan starts their
    /// replacements of the previous generation).
    fn roll_back(&mut self, why: String, members: &[Member], now: Instant, fx: &mut Vec<Effect>) {
        let Some(r) = self.lifecycle.end_reload() else {
            return;
        };
        let rejected = self.current.generation;
        error!(
            generation = rejected,
            "RELOAD ROLLED BACK: {why}; generation {} keeps serving", r.previous.generation
        );
        self.restore(r.previous, now, fx);
        for m in members {
            if m.generation == rejected && !m.leaving {
                info!(pid = m.pid.as_raw(), "draining the canary");
                fx.push(Effect::Drain {
                    pid: m.pid,
                    reason: ExitReason::Rollback,
                });
            }
        }
        let msg = format!(
            "{why}; generation {} keeps serving",
            self.current.generation
        );
        let elapsed = now.saturating_duration_since(r.started);
        self.finish_reload(ReloadResult::RolledBack, elapsed, msg, r.waiters, now, fx);
    }

    /// Once a reload cycle is over (the last worker of another generation
    /// is gone), the code it ran once and the heap it freed are given back.
    fn return_memory(&mut self, members: &[Member], fx: &mut Vec<Effect>) {
        let current = self.current.generation;
        let Some(last) = &mut self.last_reload else {
            return;
        };
        if last.memory_returned
            || !matches!(self.lifecycle, Lifecycle::Running)
            || members.iter().any(|m| m.generation != current)
        {
            return;
        }
        last.memory_returned = true;
        fx.push(Effect::ReturnMemory);
    }
}

/// Each worker that is hung (heartbeat, boot deadline, an unanswered
/// request) is dumped and aborted; it counts as leaving from now on. Each
/// is judged by its own generation's timeout.
fn judge_health(members: &mut [Member], fx: &mut Vec<Effect>) {
    for m in members.iter_mut().filter(|m| !m.leaving) {
        let hung = if m.stalled {
            Some(Hung::Stalled)
        } else if m.silent.is_none() && !m.awaiting_ready {
            None
        } else {
            let silent = m.silent.unwrap_or_default();
            match verdict(m.awaiting_ready, m.since_spawn, silent, m.timeout) {
                Verdict::Healthy => None,
                Verdict::BootTimedOut => Some(Hung::Boot),
                Verdict::Silent => Some(Hung::Heartbeat),
            }
        };
        if let Some(hung) = hung {
            m.leaving = true;
            m.serving = false;
            fx.push(Effect::Inspect { pid: m.pid, hung });
        }
    }
}

/// Why a reload was refused before any worker changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration (or a file it names) is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A new address cannot be bound.
    #[error("{0}")]
    Bind(#[from] ListenError),
}

/// Whether a worker that ended this way failed to boot: it never became
/// ready, belonged to the generation being started, and was not asked to
/// leave for another reason than its boot deadline.
pub fn boot_failure(was_ready: bool, current_generation: bool, reason: ExitReason) -> bool {
    !was_ready && current_generation && matches!(reason, ExitReason::Crash | ExitReason::Timeout)
}
