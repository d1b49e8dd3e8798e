//! Step 5: start the workers the plan asked for. Forking one worker: what
//! the child inherits, what it closes, and the setup it does before the
//! app runs.

use std::os::fd::{OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, error};

use crate::config::{BindAddr, Config};
use crate::exit;
use crate::listen::ListenerSet;
use crate::scoreboard::Board;
use crate::sys::{self, Fork};
use crate::worker::{BootListener, ListenRole, WorkerBoot, WorkerMain};

use super::worker_handle::WorkerHandle;
use super::{Master, Phase};

struct SpawnRequest<'a> {
    pub entry: &'a dyn WorkerMain,
    pub config: Arc<Config>,
    pub slot: usize,
    pub generation: u32,
    pub board: &'static Board,
    pub listeners: &'a ListenerSet,
    pub nudge: OwnedFd,
    /// Every descriptor of the master that the worker must not keep.
    pub master_fds: Vec<RawFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
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
}

impl Master {
    pub(super) fn spawn_workers(&mut self) {
        if self.phase != Phase::Running || std::time::Instant::now() < self.spawn_not_before {
            return;
        }
        for _ in 0..std::mem::take(&mut self.pending_spawns) {
            if let Err(e) = self.spawn_one() {
                error!("cannot start a worker: {e}");
                self.spawn_not_before = std::time::Instant::now() + super::reap::BOOT_BACKOFF_BASE;
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
        master_fds.extend(self.control.as_ref().map(|c| c.raw_fd()));
        if let Some(r) = &self.reload {
            master_fds.extend(r.waiters.iter().map(|w| w.raw_fd()));
        }
        if let Some(q) = &self.queued_reload {
            master_fds.extend(q.iter().map(|w| w.raw_fd()));
        }
        let pid = spawn(SpawnRequest {
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
        debug!(
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
}

/// Forks a worker; returns its pid in the master. Never returns in the child.
fn spawn(req: SpawnRequest<'_>) -> Result<Pid, SpawnError> {
    // The worker's own descriptors, made before fork so that the child
    // needs no fallible step to get them; the parent drops its copies.
    let mut listeners = Vec::new();
    let metrics = req
        .config
        .metrics
        .bind
        .iter()
        .map(|a| (a, ListenRole::Metrics));
    let app = req.config.server.bind.iter().map(|a| {
        let role = if req.config.bind_uses_tls(a) {
            ListenRole::Tls
        } else {
            ListenRole::App
        };
        (a, role)
    });
    for (addr, role) in app.chain(metrics) {
        let l = req
            .listeners
            .get(addr)
            .ok_or_else(|| SpawnError::NotBound(addr.clone()))?;
        let fd = l.dup().map_err(|source| SpawnError::Dup {
            addr: addr.clone(),
            source,
        })?;
        listeners.push(BootListener {
            addr: addr.clone(),
            fd,
            role,
            proxy_protocol: req.config.bind_uses_proxy_protocol(addr),
        });
    }
    let master_pid = nix::unistd::getpid();
    req.board.claim(req.slot, req.generation);
    match sys::fork() {
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
                config: req.config.clone(),
                slot: req.slot,
                generation: req.generation,
                board: req.board,
                listeners,
                wake: req.nudge,
                master_pid,
            };
            child_main(req.entry, boot, &req.master_fds)
        }
    }
}

fn child_main(entry: &dyn WorkerMain, boot: WorkerBoot, master_fds: &[RawFd]) -> ! {
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
    let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if let Err(e) = sys::reset_signal_dispositions() {
            error!(error = %e, "worker cannot reset signal handlers");
            return exit::WORKER_SETUP_FAILED;
        }
        if let Some(run_as) = &boot.config.server.run_as {
            // Refuse to serve at all rather than serve as root by mistake.
            if let Err(e) = sys::drop_privileges(run_as) {
                error!(error = %e, user = %run_as.user, "worker cannot drop privileges");
                return exit::WORKER_SETUP_FAILED;
            }
        }
        // A worker never outlives its master: the kernel kills it when the
        // master dies; the check covers a master that died before this line.
        // (Set after the privilege drop, which clears it.)
        if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            error!(error = %e, "worker cannot set PR_SET_PDEATHSIG");
            return exit::WORKER_SETUP_FAILED;
        }
        if nix::unistd::getppid() != boot.master_pid {
            return exit::WORKER_ORPHANED;
        }
        for fd in master_fds {
            sys::close_inherited(*fd);
        }
        // The master talks to systemd and hands sockets over; the app must
        // not think it may.
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            sys::unset_env(var);
        }
        for (k, v) in &boot.config.app.env {
            sys::set_env(k, v);
        }
        entry.run(boot)
    }))
    .unwrap_or(exit::WORKER_PANICKED);
    std::process::exit(code)
}
