//! Which app process takes a request: the ready one with the fewest
//! requests in flight (counted in the scoreboard, across every front
//! worker), below `app.max_concurrency`; ties are broken in turn. When none
//! can take it (none ready: starting, or all crashed; or all at their
//! limit) the request waits in rsvisor, never in an app process's queue,
//! until one can or `app.queue_timeout` passes.
//!
//! Waiting requests are served in order of arrival, and waiting costs
//! nearly nothing however many wait: a request finished by this front
//! wakes the first waiter at once; requests finished by other fronts are
//! seen by the first waiter alone, which looks again every 1–10 ms.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::shm::inflight::PeerAddr;
use crate::shm::scoreboard::{Board, SlotKind, SlotState, SLOT_CAPACITY};

/// How often the first waiting request looks again, at first…
const QUEUE_POLL_MIN: Duration = Duration::from_millis(1);
/// …and at most.
const QUEUE_POLL_MAX: Duration = Duration::from_millis(10);

/// The app process a request was given to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub slot: usize,
    pub generation: u32,
}

/// One request counted against an app process; uncounted when dropped
/// (the response's body ended, or the request failed).
pub struct Permit {
    board: &'static Board,
    target: Target,
    pid: u32,
    /// Its entry in the app process's in-flight table (what a dump of a
    /// hung process shows), once tracked.
    entry: Option<Option<usize>>,
    queue: Arc<Queue>,
}

/// The requests of one front worker that wait for an app process, in
/// order of arrival. Only the first looks at the scoreboard (on a timer,
/// and when woken); the others sleep until they are first.
#[derive(Default)]
struct Queue {
    waiters: Mutex<VecDeque<Arc<Notify>>>,
    /// `waiters.len()`, read without the lock on every request.
    len: AtomicUsize,
    /// Looks taken by waiters (for tests: waiting must not spin).
    #[cfg(test)]
    looks: std::sync::atomic::AtomicU64,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Notify>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the first waiter, if any wait.
    fn wake_first(&self) {
        if self.len.load(Ordering::Acquire) > 0 {
            if let Some(first) = self.lock().front() {
                first.notify_one();
            }
        }
    }

    /// Queues a waiter at the end.
    fn join(&self) -> Waiter<'_> {
        let me = Arc::new(Notify::new());
        let mut q = self.lock();
        q.push_back(me.clone());
        self.len.store(q.len(), Ordering::Release);
        Waiter {
            queue: self,
            woken: me,
        }
    }
}

/// One waiting request's place; given up when it leaves (served, timed
/// out, or its client gone), waking the next if it was first.
struct Waiter<'a> {
    queue: &'a Queue,
    woken: Arc<Notify>,
}

impl Waiter<'_> {
    fn first(&self) -> bool {
        self.queue
            .lock()
            .front()
            .is_some_and(|f| Arc::ptr_eq(f, &self.woken))
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut q = self.queue.lock();
        let Some(at) = q.iter().position(|w| Arc::ptr_eq(w, &self.woken)) else {
            return;
        };
        q.remove(at);
        self.queue.len.store(q.len(), Ordering::Release);
        if at == 0 {
            if let Some(next) = q.front() {
                next.notify_one();
            }
        }
    }
}

impl Permit {
    pub fn target(&self) -> Target {
        self.target
    }

    /// Lists the request among the app process's requests in flight.
    pub fn track(&mut self, method: &str, path: &str, peer: PeerAddr) {
        let table = &self.board.in_flight[self.target.slot];
        self.entry = Some(table.begin(method, path, peer, crate::os::monotonic_ms()));
    }

    /// The app process did not answer in time: the master is told, and
    /// the request stays counted and listed in flight (what the dump of
    /// the process shows) until the process is gone and its slot reset.
    pub fn stalled(mut self) {
        let slot = self.board.slot(self.target.slot);
        if slot.pid() == self.pid {
            slot.mark_stalled();
        }
        self.pid = 0;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let slot = self.board.slot(self.target.slot);
        // The process is gone and its slot reused: its count and table
        // were reset (and a stalled request's are left for that).
        if self.pid != 0 && slot.pid() == self.pid {
            slot.request_done();
            if let Some(entry) = self.entry {
                self.board.in_flight[self.target.slot].end(entry);
            }
            self.queue.wake_first();
        }
    }
}

/// How long a front worker reuses its list of app-process slots before it
/// scans the scoreboard again (a process that became ready waits at most
/// this long for its first request; one that stops taking requests is
/// seen at once, from its own slot).
pub const CANDIDATES_REFRESH_MS: u64 = 20;

/// Picks app processes for one front worker.
pub struct Router {
    board: &'static Board,
    max_concurrency: u64,
    turn: AtomicUsize,
    /// The slots that held app processes at the last scan, and when it was
    /// (monotonic ms): scanning every slot of the scoreboard costs a cache
    /// miss per slot, on every request.
    candidates: Mutex<(u64, Vec<usize>)>,
    queue: Arc<Queue>,
}

impl Router {
    pub fn new(board: &'static Board, max_concurrency: u64) -> Router {
        Router {
            board,
            max_concurrency,
            turn: AtomicUsize::new(0),
            candidates: Mutex::new((0, Vec::new())),
            queue: Arc::default(),
        }
    }

    /// An app process for the request, waiting until `deadline` at most.
    /// Most requests find one at once: their future then holds no waiting
    /// state (it is part of every request's future, moved whole).
    pub fn acquire(
        &self,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Option<Permit>> + Send + '_ {
        // Requests already waiting come first.
        let now = match self.queue.len.load(Ordering::Acquire) {
            0 => self.try_acquire(),
            _ => None,
        };
        async move {
            match now {
                Some(p) => Some(p),
                None => Box::pin(self.wait(deadline)).await,
            }
        }
    }

    /// Waits in turn for an app process, until `deadline` at most.
    async fn wait(&self, deadline: Instant) -> Option<Permit> {
        let me = self.queue.join();
        let mut pause = QUEUE_POLL_MIN;
        loop {
            let first = me.first();
            if first {
                #[cfg(test)]
                self.queue.looks.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = self.try_acquire() {
                    return Some(p);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // A permit given back by this front wakes the first at once;
            // one given back by another front is seen on its timer.
            let until = if first {
                deadline.min(now + pause)
            } else {
                deadline
            };
            tokio::select! {
                _ = me.woken.notified() => {}
                _ = tokio::time::sleep_until(until) => {
                    pause = (pause * 2).min(QUEUE_POLL_MAX);
                }
            }
        }
    }

    /// The least busy ready app process that can take one more request
    /// (one that reached `max_requests` only when no other can).
    pub fn try_acquire(&self) -> Option<Permit> {
        let now = crate::os::monotonic_ms();
        let mut cached = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        if now >= cached.0 + CANDIDATES_REFRESH_MS || cached.1.is_empty() {
            *cached = (now, self.scan());
        }
        let n = cached.1.len();
        // Equal loads are taken in turn, not always the first slot.
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        // At most a few passes: a slot taken by another front between the
        // look and the take is looked at again.
        for _ in 0..3 {
            let mut best: Option<((bool, u64), usize)> = None;
            for k in 0..n {
                let i = cached.1[(start + k) % n];
                let s = self.board.slot(i);
                let open = s.serves_app() && s.pid() != 0;
                // One that reached max_requests is the last choice.
                let load = (s.state() == SlotState::Retiring, s.outstanding());
                let full = self.max_concurrency != 0 && load.1 >= self.max_concurrency;
                if open && !full && best.is_none_or(|(b, _)| load < b) {
                    best = Some((load, i));
                }
            }
            let (_, i) = best?;
            let s = self.board.slot(i);
            let pid = s.pid();
            if s.try_take_request(self.max_concurrency) {
                return Some(Permit {
                    board: self.board,
                    target: Target {
                        slot: i,
                        generation: s.generation(),
                    },
                    pid,
                    entry: None,
                    queue: self.queue.clone(),
                });
            }
        }
        None
    }

    /// Looks taken by waiting requests.
    #[cfg(test)]
    pub fn looks(&self) -> u64 {
        self.queue.looks.load(Ordering::Relaxed)
    }

    /// Every slot that holds an app process now.
    fn scan(&self) -> Vec<usize> {
        (0..SLOT_CAPACITY)
            .filter(|i| {
                let s = self.board.slot(*i);
                s.kind() == SlotKind::App && s.state() != SlotState::Free
            })
            .collect()
    }
}
