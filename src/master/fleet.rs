//! The master's child processes: app workers and helpers, the stack dumps
//! in progress and the strays, with what the shell does to all of them at
//! once (drain, stop, forward a signal, escalate) and when something of
//! theirs is next due. The core sees them as `Member`s.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::warn;

use super::control_socket::ClientId;
use super::core::Member;
use super::worker_handle::WorkerHandle;
use super::{exec, forensics, strays, MASTER_TICK};
use crate::config::BindAddr;
use crate::proto::control::Response;
use crate::proto::outcome::ExitReason;
use crate::shm::scoreboard::{Board, SlotState};
use crate::worker::WorkerRole;

/// The master's child processes and what it follows of them.
pub(super) struct Fleet {
    pub(super) board: &'static Board,
    /// App workers, oldest first.
    pub(super) workers: Vec<WorkerHandle>,
    /// Proxy mode's front workers, or exec mode's sidecar that serves
    /// `metrics.bind`.
    pub(super) helpers: Vec<WorkerHandle>,
    pub(super) helpers_not_before: Instant,
    /// Stack dumps in progress, and the last workers that exited.
    pub(super) inspections: forensics::Inspections,
    /// Processes the app started that outlived their worker.
    pub(super) strays: strays::Strays,
    /// Answers to control clients (a dump's waiters), sent by the loop.
    pub(super) replies: Vec<(ClientId, Response)>,
}

impl Fleet {
    /// Every app worker as the core sees it at a tick. Reading an exec
    /// worker's "request left unanswered" flag clears it.
    pub(super) fn members(&self) -> Vec<Member> {
        let now = Instant::now();
        let now_ms = crate::os::monotonic_ms();
        self.workers
            .iter()
            .map(|w| Member {
                pid: w.pid,
                generation: w.generation,
                booting: w.booting(),
                awaiting_ready: w.awaiting_ready(),
                serving: w.serving(),
                retiring: w.retiring(),
                leaving: w.leaving(),
                connections: self.board.slot(w.slot).active_connections(),
                exec: w.exec.is_some(),
                since_spawn: now.saturating_duration_since(w.spawned_at),
                silent: w.has_heartbeat().then(|| {
                    Duration::from_millis(self.board.slot(w.slot).heartbeat_age_ms(now_ms))
                }),
                timeout: w.config.lifecycle.timeout,
                stalled: w.exec.is_some() && self.board.slot(w.slot).take_stalled(),
            })
            .collect()
    }

    pub(super) fn helper_count(&self) -> usize {
        self.helpers.len()
    }

    pub(super) fn has_strays(&self) -> bool {
        !self.strays.is_empty()
    }

    /// The slots that take new HTTP/3 connections: the processes that serve
    /// the clients (front workers in proxy mode, else app workers), ready,
    /// staying, of the current generation (fronts: any, they are replaced
    /// when their configuration changes).
    pub(super) fn quic_seats(&self, current: u32) -> Vec<usize> {
        // Only processes whose configuration serves HTTP/3 read a socket.
        let serves = |w: &&WorkerHandle| w.serving() && w.config.http.http3;
        let mut seats: Vec<usize> = if self.helpers.iter().any(|h| h.role == WorkerRole::Front) {
            self.helpers
                .iter()
                .filter(|h| h.role == WorkerRole::Front)
                .filter(serves)
                .map(|h| h.slot)
                .collect()
        } else {
            self.workers
                .iter()
                .filter(|w| w.generation == current)
                .filter(serves)
                .map(|w| w.slot)
                .collect()
        };
        // A worker that reached max_requests is drained once its
        // replacement is ready: a connection made to it now would get a
        // GOAWAY right away. It takes new ones only if no other can.
        let staying: Vec<usize> = seats
            .iter()
            .copied()
            .filter(|s| self.board.slot(*s).state() != SlotState::Retiring)
            .collect();
        if !staying.is_empty() {
            seats = staying;
        }
        seats.sort_unstable();
        seats
    }

    /// The TLS TCP addresses whose UDP groups a live worker or helper
    /// still reads.
    pub(super) fn http3_addresses(&self) -> Vec<std::net::SocketAddr> {
        self.workers
            .iter()
            .chain(&self.helpers)
            .filter(|w| w.config.http.http3)
            .flat_map(|w| w.config.tls_tcp_binds())
            .collect()
    }

    /// Every address a live worker's configuration listens on.
    pub(super) fn addresses_in_use(&self) -> Vec<BindAddr> {
        self.workers
            .iter()
            .flat_map(|w| w.config.listen_addrs())
            .collect()
    }

    /// Drains one app worker (stop accepting, finish, exit).
    pub(super) fn drain(&mut self, pid: Pid, reason: ExitReason) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
            let graceful = w.config.lifecycle.graceful_timeout;
            w.drain(reason, graceful);
            mark_draining(self.board, w);
        }
    }

    /// Drains every worker and helper.
    pub(super) fn drain_all(&mut self, reason: ExitReason) {
        for w in self.workers.iter_mut().chain(&mut self.helpers) {
            let graceful = w.config.lifecycle.graceful_timeout;
            w.drain(reason, graceful);
            mark_draining(self.board, w);
        }
    }

    /// Tells every app worker (and the helpers, with `helpers`) to exit now.
    pub(super) fn quick_stop(&mut self, helpers: bool) {
        let helpers: &mut [WorkerHandle] = if helpers { &mut self.helpers } else { &mut [] };
        for w in self.workers.iter_mut().chain(helpers) {
            w.quick_stop();
        }
    }

    /// Sends `sig` to every worker and helper.
    pub(super) fn forward(&self, sig: Signal) {
        for w in self.workers.iter().chain(&self.helpers) {
            w.signal(sig);
        }
    }

    /// Workers told to leave that are still there at their deadline get
    /// the SIGABRT a stack dump held back, then SIGKILL.
    pub(super) fn escalate(&mut self, now: Instant) {
        for w in self.workers.iter_mut().chain(&mut self.helpers) {
            if w.escalate(now) {
                warn!(pid = w.pid.as_raw(), "worker did not exit in time; SIGKILL");
            }
        }
    }

    /// The earliest moment something of the fleet is due: a kill, an exec
    /// worker's `app.ready` delay or settling, a socket to poll, a stray, a
    /// dump, a helper to restart.
    pub(super) fn next_deadline(&self, now: Instant) -> Instant {
        let mut deadline = now + MASTER_TICK;
        for w in self.workers.iter().chain(&self.helpers) {
            if let Some(at) = w.kill_deadline() {
                deadline = deadline.min(at);
            }
            if let Some(at) = w.exec.as_ref().and_then(|e| e.delay_deadline(w.spawned_at)) {
                deadline = deadline.min(at);
            }
            if let Some(at) = w.settle_deadline() {
                deadline = deadline.min(at);
            }
            if w.booting() && w.exec.as_ref().is_some_and(|e| e.awaiting_socket()) {
                deadline = deadline.min(now + exec::SOCKET_POLL);
            }
        }
        if let Some(at) = self.strays.next_deadline() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.inspections.next_deadline(now) {
            deadline = deadline.min(at);
        }
        if self.helpers_not_before > now {
            deadline = deadline.min(self.helpers_not_before);
        }
        deadline
    }

    /// Answers for control clients (a dump's waiters) the loop sends.
    pub(super) fn take_replies(&mut self) -> Vec<(ClientId, Response)> {
        std::mem::take(&mut self.replies)
    }

    /// Adds each exec worker's descriptors to `fds`; returns how many each
    /// added, in order.
    pub(super) fn exec_interest<'a>(
        &'a self,
        fds: &mut Vec<(std::os::fd::BorrowedFd<'a>, nix::poll::PollFlags)>,
    ) -> Vec<(nix::unistd::Pid, usize)> {
        let mut counts = Vec::new();
        for w in &self.workers {
            if let Some(io) = &w.exec {
                let mine = io.interest();
                counts.push((w.pid, mine.len()));
                fds.extend(mine);
            }
        }
        counts
    }
}

/// An exec worker does not write its slot: the master says it drains.
fn mark_draining(board: &Board, w: &WorkerHandle) {
    if w.exec.is_some() {
        board.slot(w.slot).set_state(SlotState::Draining);
    }
}
