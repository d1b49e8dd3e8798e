//! The master: one thread, no tokio. It owns the listening sockets and the
//! scoreboard, forks workers and keeps the fleet at the desired size.
//!
//! Its loop runs the same steps in the same order every time, one module
//! each: dispatch queued signals and control requests (`dispatch`), and
//! what a new master of a binary upgrade said (`upgrade`) → check
//! heartbeats, boot deadlines and memory (`health`) → reap children
//! (`reap`) → cull/retire (`retire`) → spawn (`spawn`) → track progress
//! (`progress`) → tell systemd (`notify`) → wait for a signal, a worker's
//! nudge, a control client or the next tick.

mod control;
mod dispatch;
mod fleet;
mod health;
mod notify;
mod progress;
mod reap;
mod reload;
mod retire;
mod signals;
mod spawn;
mod status;
mod upgrade;
mod worker_handle;

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use crate::config::{Config, Overrides};
use crate::listen::{ListenError, ListenerSet};
use crate::logging::LogHandle;
use crate::pidfile::Pidfile;
use crate::scoreboard::Board;
use crate::systemd::Notifier;
use crate::worker::WorkerMain;

use control::{ControlServer, Waiter};
use reload::{LastReload, Reload};
use signals::SignalQueue;
use upgrade::Upgrade;
use worker_handle::WorkerHandle;

pub use upgrade::{FD_NAME_CONTROL, FD_NAME_UPGRADE, UPGRADE_FROM_ENV};

/// Longest the loop sleeps without a signal or nudge: heartbeats and
/// deadlines are checked at least this often.
const MASTER_TICK: Duration = Duration::from_millis(250);

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

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::QuickStopping => "stopping now",
        }
    }
}

pub struct Master {
    entry: Arc<dyn WorkerMain>,
    config: Arc<Config>,
    config_path: PathBuf,
    overrides: Overrides,
    board: &'static Board,
    listeners: ListenerSet,
    signals: SignalQueue,
    control: Option<ControlServer>,
    log: LogHandle,
    _pidfile: Option<Pidfile>,
    workers: Vec<WorkerHandle>,
    generation: u32,
    desired: usize,
    phase: Phase,
    reload: Option<Reload>,
    /// A reload was asked for while one ran; these clients wait for it.
    queued_reload: Option<Vec<Waiter>>,
    last_reload: Option<LastReload>,
    /// Workers of the current generation that died before becoming ready,
    /// in a row; drives the respawn backoff.
    boot_failures: u32,
    /// Of those, how many failed in the app's own startup.
    startup_failures: u32,
    spawn_not_before: Instant,
    /// Workers the last plan asked for, started by the spawn step.
    pending_spawns: usize,
    next_memory_check: Instant,
    initial_ready_logged: bool,
    started: Instant,
    notifier: Notifier,
    last_status: String,
    next_watchdog: Instant,
    /// The executable and arguments this master started with (USR2 runs
    /// the file at that path again).
    exe: PathBuf,
    args: Vec<OsString>,
    /// A binary upgrade this master started.
    upgrade: Option<Upgrade>,
    /// In a master started by an upgrade: where to say "ready".
    upgrade_pipe: Option<OwnedFd>,
    /// Sockets, socket files and pidfile belong to a new master now.
    handed_over: bool,
    /// Inherited sockets that no `server.bind` entry names; served anyway,
    /// and kept across reloads.
    extra_binds: Vec<crate::config::BindAddr>,
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
    /// A control socket inherited from the master we upgrade from.
    pub inherited_control: Option<OwnedFd>,
    pub upgrade_pipe: Option<OwnedFd>,
    pub extra_binds: Vec<crate::config::BindAddr>,
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot create the shared-memory scoreboard: {0}")]
    Scoreboard(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("server.control_socket: {0}")]
    Control(#[source] ListenError),
}

impl Master {
    pub fn new(setup: MasterSetup) -> Result<Master, MasterError> {
        let board = Board::create().map_err(MasterError::Scoreboard)?;
        let signals = SignalQueue::install().map_err(MasterError::Signals)?;
        let control = match (setup.inherited_control, &setup.config.server.control_socket) {
            (Some(fd), _) => Some(
                ControlServer::inherited(fd)
                    .map_err(|e| MasterError::Control(ListenError::Inherited(e)))?,
            ),
            (None, Some(path)) => Some(ControlServer::bind(path).map_err(MasterError::Control)?),
            (None, None) => None,
        };
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
            control,
            log: setup.log,
            _pidfile: setup.pidfile,
            workers: Vec::new(),
            generation: 1,
            desired,
            phase: Phase::Running,
            reload: None,
            queued_reload: None,
            last_reload: None,
            boot_failures: 0,
            startup_failures: 0,
            spawn_not_before: Instant::now(),
            pending_spawns: 0,
            next_memory_check: Instant::now(),
            initial_ready_logged: false,
            started: Instant::now(),
            notifier: Notifier::from_env(),
            last_status: String::new(),
            next_watchdog: Instant::now(),
            exe: setup.exe,
            args: setup.args,
            upgrade: None,
            upgrade_pipe: setup.upgrade_pipe,
            handed_over: false,
            extra_binds: setup.extra_binds,
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
        let mut ready = vec![false, false];
        loop {
            self.dispatch(ready[0]);
            self.check_upgrade(ready[1]);
            self.check_health();
            self.reap_children();
            self.cull_and_retire();
            self.spawn_workers();
            if let Some(code) = self.track_progress() {
                return code;
            }
            self.notify_systemd();
            let timeout = self.next_wakeup();
            let extra = [
                self.control.as_ref().map(|c| c.as_fd()),
                self.upgrade.as_ref().map(|u| u.pipe_fd()),
            ];
            ready = self.signals.wait(timeout, &extra);
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
        if self.notifier.watchdog_interval().is_some() {
            deadline = deadline.min(self.next_watchdog);
        }
        deadline.saturating_duration_since(now)
    }
}
