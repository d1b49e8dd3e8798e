//! The master: one thread, no tokio. It owns the listening sockets and the
//! scoreboard, forks workers and keeps the fleet at the desired size.
//!
//! It is a shell around a core (`core`): the core decides (what to start,
//! drain, answer, when to exit) from events and a clock passed in, and does
//! no I/O. The shell's state is eight parts, each with its own methods:
//! what is fixed for its life (`Fixed`), the scoreboard, the signal queue,
//! the sockets and files it owns (`Sockets`), the core, the processes
//! (`Fleet`: workers, helpers, dumps, strays), what it tells systemd
//! (`Systemd`) and its periodic work (`Schedule`). Only this file (the
//! loop and the wait) and `effects` (events in, effects out) hold
//! `impl Master` and put parts together.
//!
//! Its loop runs the same steps in the same order every time: signals and
//! control requests → exec workers' output → what a new master of a binary
//! upgrade said → the workers' reports, heartbeats, boot deadlines and
//! memory (`health`) → TLS ticket keys → reap children and stop strays
//! (`reap`) → stack dumps of hung workers (`forensics`) → escalate overdue
//! stops → helpers (`spawn`) → the core's tick: drains, spawns, reload
//! progress, the exit → systemd (`notify`) → wait for a signal, a worker's
//! nudge, a control client or the next deadline.

mod app_output;
mod canary;
mod control_socket;
mod core;
mod effects;
mod exec;
mod fleet;
mod forensics;
mod health;
mod notify;
mod output;
mod python_stacks;
mod reap;
mod reload;
mod signal_queue;
mod spawn;
mod status;
mod strays;
mod ticket_rotation;
mod traceback;
mod upgrade;
mod watch;
mod worker_handle;

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use crate::config::material::Loaded;
use crate::config::{BindAddr, ConfigSource};
use crate::net::app_socket::RunDir;
use crate::net::listen::{ListenError, ListenerSet};
use crate::net::quic_group::QuicGroups;
use crate::os::pidfile::Pidfile;
use crate::os::systemd::Notifier;
use crate::shm::scoreboard::Board;
use crate::telemetry::logging::LogHandle;
use crate::worker::WorkerMain;

use control_socket::{ControlServer, Revents};
use core::Core;
use fleet::Fleet;
use signal_queue::SignalQueue;

pub use upgrade::{FD_NAME_CONTROL, FD_NAME_QUIC, FD_NAME_UPGRADE, UPGRADE_FROM_ENV};
pub use watch::WatchPlan;

/// Longest the loop sleeps without a signal or nudge: heartbeats and
/// deadlines are checked at least this often.
const MASTER_TICK: Duration = Duration::from_millis(250);

/// What woke the loop besides signals and nudges (which only mean "run
/// the steps").
#[derive(Debug, Default)]
struct Wakeup {
    /// What each control-socket descriptor reported.
    control: Revents,
    /// What each exec worker's descriptors reported.
    exec: output::ExecRevents,
    /// The new master of a binary upgrade wrote (or closed) its pipe.
    upgrade: bool,
}

/// What is fixed for the master's life.
struct Fixed {
    entry: Arc<dyn WorkerMain>,
    source: ConfigSource,
    /// The executable and arguments this master started with (USR2 runs
    /// the file at that path again).
    exe: PathBuf,
    args: Vec<OsString>,
    /// Inherited sockets that no `server.bind` entry names; served anyway,
    /// and kept across reloads.
    extra_binds: Vec<BindAddr>,
    started: Instant,
    log: LogHandle,
    /// Proxy mode: the directory of the app processes' sockets (made
    /// when the first one starts, removed when the master exits).
    run_dir: Option<RunDir>,
    /// Started by a binary upgrade: the old master, this one's parent.
    upgraded_from: Option<nix::unistd::Pid>,
}

/// The sockets and files the master owns (until a binary upgrade hands
/// them over).
struct Sockets {
    listeners: ListenerSet,
    /// `http.http3`: the UDP groups, one socket per slot.
    quic: QuicGroups,
    control: Option<ControlServer>,
    pidfile: Option<Pidfile>,
    /// When /proc last said whether a leaving program of another
    /// generation still holds a listening socket, and what it said.
    old_holders_seen: Option<(Instant, bool)>,
    /// The read end of the pipe the new master of a USR2 says "ready" on.
    upgrade_pipe: Option<OwnedFd>,
}

/// What the master tells systemd, and when.
struct Systemd {
    notifier: Notifier,
    last_status: String,
    next_watchdog: Instant,
    /// In a master started by a binary upgrade: where to say "ready".
    upgrade_pipe: Option<OwnedFd>,
}

pub struct Master {
    fixed: Fixed,
    /// The scoreboard every worker writes to.
    board: &'static Board,
    signals: SignalQueue,
    sockets: Sockets,
    /// The decisions: generation, lifecycle, backoff, reload results.
    core: Core,
    /// The processes: workers, helpers, dumps in progress, strays.
    fleet: Fleet,
    systemd: Systemd,
    schedule: Schedule,
}

/// The shell's own periodic work.
struct Schedule {
    /// When every worker's RSS and CPU are next read from /proc.
    next_memory_check: Instant,
    /// When the master makes the next TLS session-ticket key.
    next_ticket_rotation: Instant,
}

/// Everything `Master::new` needs.
pub struct MasterSetup {
    pub entry: Arc<dyn WorkerMain>,
    pub loaded: Loaded,
    pub source: ConfigSource,
    pub listeners: ListenerSet,
    pub log: LogHandle,
    pub pidfile: Option<Pidfile>,
    /// A control socket inherited from the master we upgrade from.
    pub inherited_control: Option<OwnedFd>,
    /// Its HTTP/3 UDP sockets, each group in order.
    pub inherited_quic: Vec<OwnedFd>,
    pub upgrade_pipe: Option<OwnedFd>,
    pub extra_binds: Vec<BindAddr>,
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    /// `serve --reload`: what the file watcher watches.
    pub watch: Option<WatchPlan>,
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
        let config = &setup.loaded.config;
        let first_rotation = Instant::now() + config.tls.session_ticket_lifetime;
        let control = match (setup.inherited_control, &config.server.control_socket) {
            (Some(fd), _) => Some(
                ControlServer::inherited(fd)
                    .map_err(|e| MasterError::Control(ListenError::Inherited(e)))?,
            ),
            (None, Some(path)) => Some(ControlServer::bind(path).map_err(MasterError::Control)?),
            (None, None) => None,
        };
        board.set_generation(1);
        board.header.master_started_ms.store(
            crate::os::monotonic_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        // Orphans of the app's processes (a child that left its group, a
        // daemonised helper) come to the master, which can then stop them.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; processes an app leaves behind go to init");
        }
        // After the handlers (a HUP must be queued, not kill) and before
        // the strays are counted (the watcher is not one).
        if let Some(plan) = setup.watch {
            if let Err(e) = watch::start(plan) {
                tracing::error!(error = %e, "--reload: cannot start the file watcher");
            }
        }
        let now = Instant::now();
        Ok(Master {
            fixed: Fixed {
                entry: setup.entry,
                source: setup.source,
                exe: setup.exe,
                args: setup.args,
                extra_binds: setup.extra_binds,
                started: now,
                upgraded_from: setup.upgrade_pipe.as_ref().map(|_| nix::unistd::getppid()),
                log: setup.log,
                run_dir: None,
            },
            board,
            signals,
            sockets: Sockets {
                listeners: setup.listeners,
                quic: QuicGroups::inherited(setup.inherited_quic),
                control,
                pidfile: setup.pidfile,
                old_holders_seen: None,
                upgrade_pipe: None,
            },
            core: match setup.upgrade_pipe {
                Some(_) => Core::new(setup.loaded, now).taking_over(),
                None => Core::new(setup.loaded, now),
            },
            fleet: Fleet {
                board,
                workers: Vec::new(),
                helpers: Vec::new(),
                helpers_not_before: now,
                inspections: forensics::Inspections::default(),
                strays: strays::Strays::new(crate::os::procfs::children(std::process::id() as i32)),
                replies: Vec::new(),
            },
            systemd: Systemd {
                notifier: Notifier::from_env(),
                last_status: String::new(),
                next_watchdog: now,
                upgrade_pipe: setup.upgrade_pipe,
            },
            schedule: Schedule {
                next_memory_check: now,
                next_ticket_rotation: first_rotation,
            },
        })
    }

    /// Runs until the fleet is stopped; returns the process exit code.
    pub fn run(mut self) -> crate::proto::exit::Exit {
        let addrs: Vec<String> = self
            .sockets
            .listeners
            .iter()
            .map(|l| l.local_addr())
            .collect();
        info!(
            pid = std::process::id(),
            workers = self.core.current().desired,
            listen = %addrs.join(", "),
            "rsvisor master starting"
        );
        let mut woke = Wakeup::default();
        loop {
            if let Some(code) = self.dispatch(&woke.control) {
                return code;
            }
            self.fleet.read_workers(&woke.exec);
            if let Some(code) = self.check_upgrade(woke.upgrade) {
                return code;
            }
            self.check_health();
            let lifetime = self
                .core
                .current()
                .loaded
                .config
                .tls
                .session_ticket_lifetime;
            self.schedule.rotate_ticket_keys(lifetime, Instant::now());
            self.reap_children();
            self.fleet.progress_inspections();
            self.send_replies();
            self.fleet.escalate(Instant::now());
            self.spawn_helpers();
            if let Some(code) = self.tick() {
                return code;
            }
            self.steer_quic();
            self.notify_systemd();
            self.send_replies();
            woke = self.wait();
        }
    }

    /// Sleeps until a signal, a worker's nudge, a control client, the
    /// upgrade pipe, or the next deadline.
    fn wait(&self) -> Wakeup {
        let timeout = self.next_wakeup();
        let mut fds = self
            .sockets
            .control
            .as_ref()
            .map(|c| c.interest())
            .unwrap_or_default();
        let control = fds.len();
        let exec_counts = self.fleet.exec_interest(&mut fds);
        let upgrade_at = fds.len();
        if let Some(pipe) = &self.sockets.upgrade_pipe {
            fds.push((pipe.as_fd(), nix::poll::PollFlags::POLLIN));
        }
        let revents = self.signals.wait(timeout, &fds);
        let upgrade = revents.get(upgrade_at).copied().flatten().is_some_and(|r| {
            r.intersects(nix::poll::PollFlags::POLLIN | nix::poll::PollFlags::POLLHUP)
        });
        let mut at = control;
        let exec = exec_counts
            .into_iter()
            .map(|(pid, n)| {
                let mine = revents[at..at + n].to_vec();
                at += n;
                (pid, mine)
            })
            .collect();
        Wakeup {
            control: revents[..control].to_vec(),
            exec,
            upgrade,
        }
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut deadline = self.fleet.next_deadline(now).min(now + MASTER_TICK);
        if let Some(at) = self.core.next_deadline(now) {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.systemd.next_deadline() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self
            .sockets
            .control
            .as_ref()
            .and_then(|c| c.next_deadline())
        {
            deadline = deadline.min(at);
        }
        deadline.saturating_duration_since(now)
    }
}
