//! The master: one thread, no tokio. It owns the listening sockets and the
//! scoreboard, forks workers and keeps the fleet at the desired size.
//!
//! Its loop runs the same steps in the same order every time:
//! dispatch queued signals → check heartbeats → reap children →
//! cull/retire → spawn → track progress → wait (signal, nudge or tick).

mod fleet;
mod reload;
mod signals;
mod spawn;
mod worker_handle;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::config::{Config, Overrides};
use crate::exit;
use crate::listen::ListenerSet;
use crate::logging::LogHandle;
use crate::pidfile::Pidfile;
use crate::scoreboard::{Board, SlotState};
use crate::worker::WorkerMain;

use reload::{Reload, ReloadOutcome};
use signals::SignalQueue;
use worker_handle::{Retirement, WorkerHandle};

/// Longest the loop sleeps without a signal or nudge: heartbeats and
/// deadlines are checked at least this often.
const MASTER_TICK: Duration = Duration::from_millis(250);
/// First delay before respawning after a worker died during boot; doubles
/// with every further boot failure in a row.
const BOOT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Cap of that delay.
const BOOT_BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// TERM: `/ready` fails; listeners close at `close_at` (after
    /// `shutdown_delay`), then workers drain.
    Stopping {
        close_at: Instant,
        closed: bool,
    },
    /// INT / QUIT: listeners closed, workers told to exit now.
    QuickStopping,
}

pub struct Master {
    entry: Arc<dyn WorkerMain>,
    config: Arc<Config>,
    config_path: PathBuf,
    overrides: Overrides,
    board: &'static Board,
    listeners: ListenerSet,
    signals: SignalQueue,
    log: LogHandle,
    _pidfile: Option<Pidfile>,
    workers: Vec<WorkerHandle>,
    generation: u32,
    desired: usize,
    phase: Phase,
    reload: Option<Reload>,
    reload_queued: bool,
    /// Workers of the current generation that died before becoming ready,
    /// in a row; drives the respawn backoff.
    boot_failures: u32,
    /// Of those, how many failed in the app's own startup.
    startup_failures: u32,
    spawn_not_before: Instant,
    /// Workers the last plan asked for, started by the spawn step.
    pending_spawns: usize,
    initial_ready_logged: bool,
    started: Instant,
}

/// Everything `Master::new` needs.
pub struct MasterSetup {
    pub entry: Arc<dyn WorkerMain>,
    pub config: Config,
    pub config_path: PathBuf,
    pub overrides: Overrides,
    pub listeners: ListenerSet,
    pub log: LogHandle,
    pub pidfile: Option<Pidfile>,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot create the shared-memory scoreboard: {0}")]
    Scoreboard(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl Master {
    pub fn new(setup: MasterSetup) -> Result<Master, MasterError> {
        let board = Board::create().map_err(MasterError::Scoreboard)?;
        let signals = SignalQueue::install().map_err(MasterError::Signals)?;
        let desired = setup.config.worker_count();
        board.set_generation(1);
        board.header.master_started_ms.store(
            crate::sys::monotonic_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(Master {
            entry: setup.entry,
            config: Arc::new(setup.config),
            config_path: setup.config_path,
            overrides: setup.overrides,
            board,
            listeners: setup.listeners,
            signals,
            log: setup.log,
            _pidfile: setup.pidfile,
            workers: Vec::new(),
            generation: 1,
            desired,
            phase: Phase::Running,
            reload: None,
            reload_queued: false,
            boot_failures: 0,
            startup_failures: 0,
            spawn_not_before: Instant::now(),
            pending_spawns: 0,
            initial_ready_logged: false,
            started: Instant::now(),
        })
    }

    /// Runs until the fleet is stopped; returns the process exit code.
    pub fn run(mut self) -> i32 {
        let addrs: Vec<String> = self.listeners.iter().map(|l| l.local_addr()).collect();
        info!(
            pid = std::process::id(),
            workers = self.desired,
            listen = %addrs.join(", "),
            "rsvisor master starting"
        );
        loop {
            self.dispatch_signals();
            self.check_heartbeats();
            self.reap_children();
            self.cull_and_retire();
            self.spawn_workers();
            if let Some(code) = self.track_progress() {
                return code;
            }
            self.signals.wait(self.next_wakeup());
        }
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut deadline = now + MASTER_TICK;
        for w in &self.workers {
            if let Some(at) = w.kill_deadline() {
                deadline = deadline.min(at);
            }
        }
        if self.spawn_not_before > now {
            deadline = deadline.min(self.spawn_not_before);
        }
        if let Phase::Stopping {
            close_at,
            closed: false,
        } = self.phase
        {
            deadline = deadline.min(close_at);
        }
        deadline.saturating_duration_since(now)
    }

    // ---- step 1: signals -------------------------------------------------

    fn dispatch_signals(&mut self) {
        for sig in self.signals.take() {
            match sig {
                Signal::SIGINT | Signal::SIGQUIT => self.quick_stop(sig),
                Signal::SIGTERM => self.graceful_stop(),
                Signal::SIGHUP => self.request_reload(),
                Signal::SIGTTIN => self.scale(1),
                Signal::SIGTTOU => self.scale(-1),
                Signal::SIGUSR1 => {
                    info!("USR1: no log files to reopen (error logs go to stderr)");
                }
                Signal::SIGUSR2 => {
                    warn!("USR2 (binary upgrade) is not supported by this build; ignored");
                }
                // CHLD only wakes the loop; reaping is its own step.
                _ => {}
            }
        }
    }

    fn graceful_stop(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        let delay = self.config.lifecycle.shutdown_delay;
        info!(
            shutdown_delay = ?delay,
            graceful_timeout = ?self.config.lifecycle.graceful_timeout,
            "TERM: stopping gracefully; /ready now answers 503"
        );
        self.board.set_stopping();
        self.phase = Phase::Stopping {
            close_at: Instant::now() + delay,
            closed: false,
        };
    }

    fn quick_stop(&mut self, sig: Signal) {
        if self.phase == Phase::QuickStopping {
            return;
        }
        info!(signal = %sig, "stopping now (quick stop)");
        self.board.set_stopping();
        self.listeners.close_all();
        for w in &mut self.workers {
            w.quick_stop();
        }
        self.phase = Phase::QuickStopping;
    }

    fn scale(&mut self, delta: i32) {
        if self.phase != Phase::Running {
            return;
        }
        let before = self.desired;
        self.desired = if delta > 0 {
            (self.desired + 1).min(crate::config::MAX_WORKERS)
        } else {
            self.desired.saturating_sub(1).max(1)
        };
        info!(from = before, to = self.desired, "scaling workers");
    }

    fn request_reload(&mut self) {
        if self.phase != Phase::Running {
            info!("HUP ignored: stopping");
            return;
        }
        if self.reload.is_some() {
            info!("HUP during a reload: queued until the current one finishes");
            self.reload_queued = true;
            return;
        }
        self.start_reload();
    }

    fn start_reload(&mut self) {
        info!(config = %self.config_path.display(), "HUP: reloading configuration");
        let new = match Config::load(&self.config_path, &self.overrides) {
            Ok(c) => c,
            Err(e) => {
                error!("reload refused, still serving with the current configuration: {e}");
                self.board.count_reload("invalid_config");
                return;
            }
        };
        let c = &new.server;
        if let Err(e) = self.listeners.ensure(&c.bind, c.backlog, c.socket_mode) {
            error!("reload refused, still serving with the current configuration: {e}");
            self.board.count_reload("invalid_config");
            return;
        }
        self.log.apply(&new.log);
        let old_config = std::mem::replace(&mut self.config, Arc::new(new));
        let old_generation = self.generation;
        let old_desired = self.desired;
        self.generation += 1;
        self.desired = self.config.worker_count();
        self.board.set_generation(self.generation);
        self.reload = Some(Reload::new(old_config, old_generation, old_desired));
        self.boot_failures = 0;
        self.startup_failures = 0;
        info!(
            generation = self.generation,
            workers = self.desired,
            "new generation starting; old workers retire as replacements become ready"
        );
    }

    // ---- step 2: heartbeats ----------------------------------------------

    fn check_heartbeats(&mut self) {
        let now_ms = crate::sys::monotonic_ms();
        for w in &mut self.workers {
            if w.leaving() {
                continue;
            }
            // Each worker is judged by its own generation's timeout.
            let limit = w.config.lifecycle.timeout;
            let slot = self.board.slot(w.slot);
            if slot.state() == SlotState::Booting {
                // The heartbeat already runs during an async startup, so
                // boot is bounded by time since fork instead.
                if w.spawned_at.elapsed() > limit {
                    error!(
                        pid = w.pid.as_raw(),
                        waited_ms = w.spawned_at.elapsed().as_millis() as u64,
                        "worker did not become ready within lifecycle.timeout; aborting it"
                    );
                    w.abort(Retirement::BootTimeout);
                }
                continue;
            }
            let silent_ms = now_ms.saturating_sub(slot.heartbeat_ms());
            if silent_ms > limit.as_millis() as u64 {
                error!(
                    pid = w.pid.as_raw(),
                    silent_ms,
                    active_connections = slot.active_connections(),
                    served = slot.served(),
                    "worker missed its heartbeat for longer than lifecycle.timeout \
                     (its event loop is blocked); SIGABRT now, SIGKILL in 1 s"
                );
                w.abort(Retirement::Timeout);
            }
        }
    }

    // ---- step 3: reap ------------------------------------------------------

    fn reap_children(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, Exit::Signal(sig)),
                _ => continue,
            };
            let Some(idx) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let w = self.workers.remove(idx);
            self.worker_exited(w, how);
        }
    }

    fn worker_exited(&mut self, w: WorkerHandle, how: Exit) {
        let was_ready = w.ready_at.is_some();
        let reason = match w.retirement {
            Some(r) => r.reason(),
            None => "crash",
        };
        self.board.release(w.slot);
        self.board.count_exit(reason);
        let pid = w.pid.as_raw();
        match (w.retirement, how) {
            (Some(Retirement::Timeout | Retirement::BootTimeout), _) => {
                warn!(pid, status = %how, "worker stopped after timeout");
            }
            (Some(_), Exit::Code(0)) => {
                info!(pid, reason, "worker exited after draining");
            }
            (Some(r), _) => {
                warn!(pid, reason = r.reason(), status = %how, "worker ended");
            }
            (None, _) if self.phase != Phase::Running => {
                info!(pid, status = %how, "worker exited during shutdown");
            }
            (None, _) => {
                error!(
                    pid,
                    slot = w.slot,
                    status = %how,
                    was_ready,
                    "worker died unexpectedly; replacing it"
                );
            }
        }
        let boot_failure = !was_ready
            && w.generation == self.generation
            && matches!(w.retirement, None | Some(Retirement::BootTimeout));
        if boot_failure && self.phase == Phase::Running {
            self.boot_failures += 1;
            if how == Exit::Code(exit::WORKER_APP_STARTUP_FAILED) {
                self.startup_failures += 1;
            }
            let backoff = BOOT_BACKOFF_BASE
                .saturating_mul(1 << (self.boot_failures - 1).min(16))
                .min(BOOT_BACKOFF_MAX);
            self.spawn_not_before = Instant::now() + backoff;
            warn!(
                failures_in_a_row = self.boot_failures,
                retry_in = ?backoff,
                "worker failed during boot"
            );
            if let Some(r) = &mut self.reload {
                r.boot_failed();
            }
        }
    }

    // ---- step 4: cull / retire -------------------------------------------

    fn cull_and_retire(&mut self) {
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
                    let graceful = self.config.lifecycle.graceful_timeout;
                    for w in &mut self.workers {
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

        // Record readiness first: the plan counts it.
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

        let seen: Vec<fleet::Seen> = self
            .workers
            .iter()
            .map(|w| {
                let state = w.state(self.board);
                fleet::Seen {
                    current_generation: w.generation == self.generation,
                    booting: state == SlotState::Booting,
                    retiring: state == SlotState::Retiring,
                    leaving: w.leaving(),
                }
            })
            .collect();
        let plan = fleet::plan(self.desired, &seen);
        for i in plan.drain {
            let w = &mut self.workers[i];
            let why = if seen[i].retiring {
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

    // ---- step 5: spawn -----------------------------------------------------

    fn spawn_workers(&mut self) {
        if self.phase != Phase::Running || Instant::now() < self.spawn_not_before {
            return;
        }
        for _ in 0..std::mem::take(&mut self.pending_spawns) {
            if let Err(e) = self.spawn_one() {
                error!("cannot start a worker: {e}");
                self.spawn_not_before = Instant::now() + BOOT_BACKOFF_BASE;
                return;
            }
        }
    }

    fn spawn_one(&mut self) -> Result<(), String> {
        let slot = self
            .board
            .free_slot()
            .ok_or("no free scoreboard slot (too many workers still draining)")?;
        let nudge = self.signals.nudge_fd().map_err(|e| e.to_string())?;
        let mut master_fds = self.listeners.raw_fds();
        master_fds.extend(self.signals.raw_fds());
        let pid = spawn::spawn(spawn::SpawnRequest {
            entry: self.entry.as_ref(),
            config: self.config.clone(),
            slot,
            generation: self.generation,
            board: self.board,
            listeners: &self.listeners,
            nudge,
            master_fds,
        })
        .map_err(|e| e.to_string())?;
        tracing::debug!(
            pid = pid.as_raw(),
            slot,
            generation = self.generation,
            "worker started"
        );
        self.workers.push(WorkerHandle::new(
            pid,
            slot,
            self.generation,
            self.config.clone(),
        ));
        Ok(())
    }

    // ---- step 6: progress ------------------------------------------------

    /// Notices milestones (first readiness, reload done or abandoned,
    /// fleet stopped); returns the exit code when the master should exit.
    fn track_progress(&mut self) -> Option<i32> {
        match self.phase {
            Phase::Stopping { closed: true, .. } | Phase::QuickStopping
                if self.workers.is_empty() =>
            {
                info!("all workers gone; master exiting");
                return Some(exit::OK);
            }
            Phase::Running => {}
            _ => return None,
        }

        let ready = self.ready_count();
        if !self.initial_ready_logged && ready >= self.desired {
            self.initial_ready_logged = true;
            info!(
                workers = ready,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "all workers ready"
            );
        }

        // An app that cannot start anywhere: stop instead of looping.
        if ready == 0
            && self.reload.is_none()
            && self.startup_failures as usize >= self.desired.max(1)
        {
            error!(
                failures = self.startup_failures,
                "the app's startup failed in every worker; giving up"
            );
            self.listeners.close_all();
            for w in &mut self.workers {
                w.quick_stop();
            }
            return Some(exit::APP_STARTUP_FAILED);
        }

        self.progress_reload();
        self.close_unused_listeners();
        None
    }

    fn progress_reload(&mut self) {
        let Some(r) = &self.reload else {
            return;
        };
        let current = self.generation;
        let old_serving = self
            .workers
            .iter()
            .any(|w| w.generation != current && !w.leaving());
        let outcome = r.outcome(self.ready_count() >= self.desired && !old_serving);
        match outcome {
            ReloadOutcome::InProgress => return,
            ReloadOutcome::Done { elapsed } => {
                info!(
                    generation = current,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "reload complete: every worker is of the new generation"
                );
                self.board.count_reload("success");
            }
            ReloadOutcome::Abandon { failures } => {
                let r = self.reload.take().expect("checked above");
                error!(
                    failures,
                    "RELOAD ABANDONED: new workers could not start; \
                     the previous generation keeps serving"
                );
                self.board.count_reload("abandoned");
                self.log.apply(&r.old_config.log);
                self.config = r.old_config;
                self.generation = r.old_generation;
                self.desired = r.old_desired;
                self.board.set_generation(self.generation);
                self.boot_failures = 0;
                self.startup_failures = 0;
                self.spawn_not_before = Instant::now();
            }
        }
        self.reload = None;
        if std::mem::take(&mut self.reload_queued) {
            self.start_reload();
        }
    }

    /// Closes listening sockets that neither the current configuration nor
    /// any live worker uses any more (addresses removed by a reload).
    fn close_unused_listeners(&mut self) {
        let mut keep: Vec<&crate::config::BindAddr> = self.config.server.bind.iter().collect();
        for w in &self.workers {
            keep.extend(w.config.server.bind.iter());
        }
        self.listeners.retain(&keep);
    }

    /// Workers serving now (ready or retiring, not leaving).
    fn ready_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| {
                !w.leaving()
                    && w.generation == self.generation
                    && w.state(self.board) == SlotState::Ready
            })
            .count()
    }
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(Signal),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => {
                let meaning = match *c {
                    exit::WORKER_OK => "normal exit",
                    exit::WORKER_APP_STARTUP_FAILED => "app startup failed",
                    exit::WORKER_SETUP_FAILED => "worker setup failed",
                    exit::WORKER_ORPHANED => "master was gone",
                    exit::WORKER_PANICKED => "panicked",
                    _ => "unexpected exit code",
                };
                write!(f, "exit code {c} ({meaning})")
            }
            Exit::Signal(s) => write!(f, "killed by signal {} ({s})", *s as i32),
        }
    }
}
