//! Forking one worker: what the child inherits, what it closes, and the
//! setup it does before the app runs.

use std::os::fd::{OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::error;

use crate::config::{BindAddr, Config};
use crate::exit;
use crate::listen::ListenerSet;
use crate::scoreboard::Board;
use crate::sys::{self, Fork};
use crate::worker::{WorkerBoot, WorkerMain};

pub struct SpawnRequest<'a> {
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

/// Forks a worker; returns its pid in the master. Never returns in the child.
pub fn spawn(req: SpawnRequest<'_>) -> Result<Pid, SpawnError> {
    // The worker's own descriptors, made before fork so that the child
    // needs no fallible step to get them; the parent drops its copies.
    let mut listeners = Vec::new();
    for addr in &req.config.server.bind {
        let l = req
            .listeners
            .get(addr)
            .ok_or_else(|| SpawnError::NotBound(addr.clone()))?;
        let fd = l.dup().map_err(|source| SpawnError::Dup {
            addr: addr.clone(),
            source,
        })?;
        listeners.push((addr.clone(), fd));
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
    // A panic must never unwind into the master's code copied in this
    // process: catch it and exit.
    let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if let Err(e) = sys::reset_signal_dispositions() {
            error!(error = %e, "worker cannot reset signal handlers");
            return exit::WORKER_SETUP_FAILED;
        }
        // A worker never outlives its master: the kernel kills it when the
        // master dies; the check covers a master that died before this line.
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
        for (k, v) in &boot.config.app.env {
            sys::set_env(k, v);
        }
        entry.run(boot)
    }))
    .unwrap_or(exit::WORKER_PANICKED);
    std::process::exit(code)
}
