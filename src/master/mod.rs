//! The master: one thread, no tokio. It owns the listening sockets and the
//! scoreboard, forks workers and keeps the fleet at the desired size.
//!
//! Its loop runs the same steps in the same order every time, one module
//! each: dispatch queued signals and control requests (`dispatch`) →
//! check heartbeats, boot deadlines and memory (`health`) → reap children
//! (`reap`) → cull/retire (`retire`) → spawn (`spawn`) → track progress
//! (`progress`) → wait for a signal, a worker's nudge or the next tick.

mod control;
mod dispatch;
mod fleet;
mod health;
mod progress;
mod reap;
mod reload;
mod retire;
mod signals;
mod spawn;
mod status;
mod worker_handle;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use crate::config::{Config, Overrides};
use crate::listen::{ListenError, ListenerSet};
use crate::logging::LogHandle;
use crate::pidfile::Pidfile;
use crate::scoreboard::Board;
use crate::worker::WorkerMain;

use control::{ControlServer, Waiter};
use reload::{LastReload, Reload};
use signals::SignalQueue;
use worker_handle::WorkerHandle;

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
    #[error("server.control_socket: {0}")]
    Control(#[source] ListenError),
}

impl Master {
    pub fn new(setup: MasterSetup) -> Result<Master, MasterError> {
        let board = Board::create().map_err(MasterError::Scoreboard)?;
        let signals = SignalQueue::install().map_err(MasterError::Signals)?;
        let control = match &setup.config.server.control_socket {
            Some(path) => Some(ControlServer::bind(path).map_err(MasterError::Control)?),
            None => None,
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
        let mut control_ready = false;
        loop {
            self.dispatch(control_ready);
            self.check_health();
            self.reap_children();
            self.cull_and_retire();
            self.spawn_workers();
            if let Some(code) = self.track_progress() {
                return code;
            }
            let timeout = self.next_wakeup();
            control_ready = self
                .signals
                .wait(timeout, self.control.as_ref().map(|c| c.as_fd()));
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
}
