//! Step 5: start the workers the plan asked for (and, in exec mode, the
//! sidecar that serves `metrics.bind`). Forking one worker: what the child
//! keeps (an allowlist: everything else is closed), and the setup it does
//! before the app runs. Exec workers are started by `exec`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, error};

use crate::config::material::Loaded;
use crate::config::BindAddr;
use crate::net::app_socket::{self, RunDir};
use crate::net::listen::ListenerSet;
use crate::os::{self, Fork};
use crate::proto::exit::WorkerExit;
use crate::shm::scoreboard::{Board, SlotKind};
use crate::worker::{BootListener, ListenRole, SetupError, WorkerBoot, WorkerMain, WorkerRole};

use super::core::Current;
use super::exec;
use super::signal_queue::SignalQueue;
use super::worker_handle::WorkerHandle;
use super::Fleet;
use crate::net::quic_group::{QuicGroupError, QuicGroups};

struct SpawnRequest<'a> {
    entry: &'a dyn WorkerMain,
    loaded: &'a Loaded,
    slot: usize,
    generation: u32,
    board: &'static Board,
    listeners: Vec<BootListener>,
    nudge: OwnedFd,
    role: WorkerRole,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no free scoreboard slot (too many workers still draining)")]
    NoSlot,
    #[error("cannot create the worker's wake-up descriptor: {0}")]
    Nudge(#[source] std::io::Error),
    #[error("cannot duplicate the listening socket for {addr}: {source}")]
    Dup {
        addr: BindAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listening socket for {0} is not bound")]
    NotBound(BindAddr),
    #[error("fork failed: {0}")]
    Fork(#[source] std::io::Error),
    #[error("cannot create the directory of the app sockets (app.socket_dir): {0}")]
    RunDir(#[source] std::io::Error),
    #[error("{0}")]
    Quic(#[from] QuicGroupError),
    #[error("cannot make the HTTP/3 secret: {0}")]
    Secret(#[source] std::io::Error),
}

/// What starting a worker needs besides the fleet: the master's other
/// parts, borrowed.
pub(super) struct Spawner<'a> {
    pub entry: &'a dyn WorkerMain,
    /// Proxy mode: the app sockets' directory, made on first use.
    pub run_dir: &'a mut Option<RunDir>,
    pub current: &'a Current,
    pub listeners: &'a ListenerSet,
    /// `http.http3`: the UDP groups, one socket per slot.
    pub quic: &'a mut QuicGroups,
    pub signals: &'a SignalQueue,
}

impl Fleet {
    /// Starts `n` workers of the current generation; stops at the first
    /// failure (the caller pauses spawning).
    pub(super) fn spawn_workers(&mut self, n: usize, sp: &mut Spawner) -> Result<(), SpawnError> {
        for _ in 0..n {
            self.spawn_one(sp)?;
        }
        Ok(())
    }

    fn spawn_one(&mut self, sp: &mut Spawner) -> Result<(), SpawnError> {
        let slot = self.board.free_slot().ok_or(SpawnError::NoSlot)?;
        let loaded = &sp.current.loaded;
        let generation = sp.current.generation;
        let memory_limit = loaded.config.lifecycle.max_worker_memory.unwrap_or(0);
        // A proxy-mode app process listens on its own socket instead of
        // the inherited listeners.
        let (listeners, socket) = if loaded.config.proxy_mode() {
            let dir = run_dir(sp.run_dir, loaded)?;
            let path = app_socket::socket_path(dir, slot, generation);
            // One left by a process of this slot and generation that died.
            let _ = std::fs::remove_file(&path);
            (Vec::new(), Some(path))
        } else {
            let l = worker_listeners(loaded, sp, Listeners::App, slot)?;
            (l, None)
        };
        let handle = if loaded.config.exec_mode() {
            self.board.claim(slot, generation);
            self.board.slot(slot).set_memory_limit(memory_limit);
            self.board.slot(slot).set_unwatched();
            let req = exec::ExecRequest {
                loaded,
                slot,
                generation,
                listeners: listeners.into_iter().map(|l| l.fd).collect(),
                master_pid: nix::unistd::getpid(),
                socket,
            };
            let (pid, io) = exec::spawn(req).map_err(|e| {
                self.board.release(slot);
                SpawnError::Fork(e)
            })?;
            self.board.slot(slot).set_pid(pid.as_raw() as u32);
            WorkerHandle::new(pid, slot, generation, loaded.config.clone()).with_exec(io)
        } else {
            let nudge = sp.signals.nudge_fd().map_err(SpawnError::Nudge)?;
            let pid = spawn(SpawnRequest {
                entry: sp.entry,
                loaded,
                slot,
                generation,
                board: self.board,
                listeners,
                nudge,
                role: WorkerRole::App,
            })?;
            WorkerHandle::new(pid, slot, generation, loaded.config.clone())
        };
        debug!(
            pid = handle.pid.as_raw(),
            slot, generation, "worker started"
        );
        self.workers.push(handle);
        Ok(())
    }

    /// Keeps the helper workers running: proxy mode's front workers, or
    /// exec mode's sidecar that serves `metrics.bind` (the app's own
    /// program owns the main port).
    pub(super) fn spawn_helpers(&mut self, sp: &mut Spawner) {
        let (role, want) = helpers_of(&sp.current.loaded.config);
        let staying = self.helpers.iter().filter(|h| !h.leaving()).count();
        if Instant::now() < self.helpers_not_before {
            return;
        }
        for _ in staying..want {
            match self.start_helper(role, sp) {
                Ok(h) => self.helpers.push(h),
                Err(e) => {
                    error!("cannot start a {}: {e}", role_name(role));
                    self.helpers_not_before = Instant::now() + HELPER_RESTART_DELAY;
                    return;
                }
            }
        }
    }

    fn start_helper(&self, role: WorkerRole, sp: &mut Spawner) -> Result<WorkerHandle, SpawnError> {
        let slot = self.board.free_slot().ok_or(SpawnError::NoSlot)?;
        let current = sp.current;
        let loaded = &current.loaded;
        let which = match role {
            WorkerRole::Front => Listeners::Front,
            _ => Listeners::Sidecar,
        };
        let listeners = worker_listeners(loaded, sp, which, slot)?;
        let nudge = sp.signals.nudge_fd().map_err(SpawnError::Nudge)?;
        let pid = spawn(SpawnRequest {
            entry: sp.entry,
            loaded,
            slot,
            generation: current.generation,
            board: self.board,
            listeners,
            nudge,
            role,
        })?;
        let kind = match role {
            WorkerRole::Front => SlotKind::Front,
            _ => SlotKind::Sidecar,
        };
        self.board.slot(slot).set_kind(kind);
        debug!(pid = pid.as_raw(), slot, "{} started", role_name(role));
        Ok(WorkerHandle::new(pid, slot, current.generation, loaded.config.clone()).with_role(role))
    }
}

/// Proxy mode: the directory of the app sockets, made when the first app
/// process starts.
fn run_dir<'a>(
    dir: &'a mut Option<RunDir>,
    loaded: &Loaded,
) -> Result<&'a std::path::Path, SpawnError> {
    let dir = match dir {
        Some(d) => d,
        none => {
            let base = app_socket::base_dir(loaded.config.app.socket_dir.as_deref());
            let owner = loaded.material.run_as.as_ref().map(|r| (r.uid, r.gid));
            none.insert(RunDir::create(&base, owner).map_err(SpawnError::RunDir)?)
        }
    };
    Ok(dir.path())
}

/// Which helpers a configuration has, and how many.
pub(super) fn helpers_of(config: &crate::config::Config) -> (WorkerRole, usize) {
    if config.proxy_mode() {
        (WorkerRole::Front, config.front_count())
    } else if config.exec_mode() && config.metrics.bind.is_some() {
        (WorkerRole::Sidecar, 1)
    } else {
        (WorkerRole::Sidecar, 0)
    }
}

/// How the log names a helper.
pub(super) fn role_name(role: WorkerRole) -> &'static str {
    match role {
        WorkerRole::Front => "front worker",
        WorkerRole::Sidecar => "metrics sidecar",
        WorkerRole::App => "worker",
    }
}

/// How long a helper (front worker, sidecar) that could not start, or
/// died, waits to be started again.
pub const HELPER_RESTART_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listeners {
    /// `server.bind` (and `metrics.bind` for forked workers).
    App,
    /// Exec mode's sidecar: `metrics.bind` only.
    Sidecar,
    /// Proxy mode's front workers: `server.bind` and `metrics.bind`, as
    /// forked app workers have them.
    Front,
}

/// The worker's own descriptors for the listening sockets of its config,
/// made before fork so that the child needs no fallible step to get them.
fn worker_listeners(
    loaded: &Loaded,
    sp: &mut Spawner,
    which: Listeners,
    slot: usize,
) -> Result<Vec<BootListener>, SpawnError> {
    let listeners = sp.listeners;
    let config = &loaded.config;
    // Front workers serve like forked app workers.
    let exec = config.exec_mode() && which != Listeners::Front;
    let metrics_role = if exec {
        ListenRole::Sidecar
    } else {
        ListenRole::Metrics
    };
    let metrics = config
        .metrics
        .bind
        .iter()
        .filter(|_| which == Listeners::Sidecar || !exec)
        .map(|a| (a, metrics_role));
    let app = config
        .server
        .bind
        .iter()
        .filter(|_| which != Listeners::Sidecar)
        .map(|a| {
            let role = if config.bind_uses_tls(a) {
                ListenRole::Tls
            } else {
                ListenRole::App
            };
            (a, role)
        });
    let mut out = Vec::new();
    for (addr, role) in app.chain(metrics) {
        let l = listeners
            .get(addr)
            .ok_or_else(|| SpawnError::NotBound(addr.clone()))?;
        let fd = l.dup().map_err(|source| SpawnError::Dup {
            addr: addr.clone(),
            source,
        })?;
        out.push(BootListener {
            addr: addr.clone(),
            fd,
            role,
            proxy_protocol: config.bind_uses_proxy_protocol(addr),
        });
    }
    // The process that serves the clients serves HTTP/3 too: an app
    // worker, or a front worker in proxy mode.
    if config.http.http3 && which != Listeners::Sidecar && !exec {
        crate::tls::quic::make_secret().map_err(SpawnError::Secret)?;
        for tcp in config.tls_tcp_binds() {
            let addr = BindAddr::Tcp(tcp);
            let bound = listeners
                .get(&addr)
                .and_then(|l| l.tcp_local_addr())
                .ok_or_else(|| SpawnError::NotBound(addr.clone()))?;
            let (fd, seat) = sp.quic.socket_of(tcp, bound, slot)?;
            out.push(BootListener {
                addr,
                fd,
                role: ListenRole::Quic { seat },
                proxy_protocol: false,
            });
        }
    }
    Ok(out)
}

/// Forks a worker; returns its pid in the master. Never returns in the child.
fn spawn(req: SpawnRequest<'_>) -> Result<Pid, SpawnError> {
    let listeners = req.listeners;
    let master_pid = nix::unistd::getpid();
    req.board.claim(req.slot, req.generation);
    let memory_limit = req.loaded.config.lifecycle.max_worker_memory.unwrap_or(0);
    req.board.slot(req.slot).set_memory_limit(memory_limit);
    // Blocked until the worker has its own handlers (see
    // `os::block_all_signals`); the master's signals wait meanwhile.
    let mask = os::block_all_signals().map_err(SpawnError::Fork)?;
    let forked = os::fork();
    if !matches!(forked, Ok(Fork::Child)) {
        if let Err(e) = os::set_signal_mask(&mask) {
            error!(error = %e, "cannot restore the master's signal mask");
        }
    }
    match forked {
        Err(e) => {
            req.board.release(req.slot);
            Err(SpawnError::Fork(e))
        }
        Ok(Fork::Parent(pid)) => {
            req.board.slot(req.slot).set_pid(pid.as_raw() as u32);
            Ok(pid)
        }
        Ok(Fork::Child) => {
            let boot = WorkerBoot {
                config: req.loaded.config.clone(),
                material: req.loaded.material.clone(),
                slot: req.slot,
                generation: req.generation,
                board: req.board,
                listeners,
                wake: req.nudge,
                master_pid,
                role: req.role,
            };
            child_main(req.entry, boot)
        }
    }
}

/// Descriptors a worker keeps: its listeners and its wake-up pipe.
fn kept_fds(boot: &WorkerBoot) -> Vec<RawFd> {
    let mut keep: Vec<RawFd> = boot.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    keep.push(boot.wake.as_raw_fd());
    keep
}

fn child_main(entry: &dyn WorkerMain, boot: WorkerBoot) -> ! {
    let span = tracing::info_span!("worker", pid = std::process::id(), slot = boot.slot);
    let _entered = span.enter();
    // Panics in app code (caught per connection by tokio) are logged like
    // every other event, so they reach JSON logs and journald intact.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        error!(%location, "panic in worker: {message}");
    }));
    // A panic must never unwind into the master's code copied in this
    // process: catch it and exit.
    let code = std::panic::catch_unwind(AssertUnwindSafe(|| match prepare(&boot) {
        Ok(()) => entry.run(boot),
        Err(e) => e.report(),
    }))
    .unwrap_or(WorkerExit::Panicked);
    std::process::exit(code.code())
}

/// A forked worker's own set-up before the app's code runs.
fn prepare(boot: &WorkerBoot) -> Result<(), SetupError> {
    os::reset_signal_dispositions().map_err(SetupError::Dispositions)?;
    // Before any thread exists, so that every thread can answer.
    crate::shm::inflight::install(&boot.board.dumps[boot.slot]).map_err(SetupError::DumpHandler)?;
    if let Some(r) = &boot.material.run_as {
        // Refuse to serve at all rather than serve as root by mistake.
        os::drop_privileges(&r.user, r.uid, r.gid).map_err(|source| SetupError::Privileges {
            user: r.user.clone(),
            source,
        })?;
    }
    // A worker never outlives its master: the kernel kills it when the
    // master dies; the check covers a master that died before this line.
    // (Set after the privilege drop, which clears it.)
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(SetupError::DeathSignal)?;
    if nix::unistd::getppid() != boot.master_pid {
        return Err(SetupError::Orphaned);
    }
    os::close_fds_except(&kept_fds(boot)).map_err(SetupError::Descriptors)?;
    // The master talks to systemd and hands sockets over; the app must
    // not think it may.
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        os::unset_env(var);
    }
    for (k, v) in &boot.config.app.env {
        os::set_env(k, v);
    }
    os::tune_allocator();
    Ok(())
}
