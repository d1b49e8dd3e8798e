//! What goes into the core ([`Event`], with what the shell saw of the
//! workers at a tick) and what comes out ([`Effect`]).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::health::{Hung, Usage};
use super::ReloadError;
use crate::config::material::Loaded;
use crate::config::LogConfig;
use crate::master::control_socket::ClientId;
use crate::proto::control::Response;
use crate::proto::exit::{Exit, WorkerExit};
use crate::proto::outcome::{ExitReason, ReloadResult};

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
pub struct World {
    pub members: Vec<Member>,
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
    Tick(World),
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
