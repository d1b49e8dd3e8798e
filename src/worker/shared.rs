//! State shared by every connection of one worker.

use std::hash::{BuildHasher, Hasher};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::scoreboard::{Board, Slot};

pub(crate) struct Shared<H> {
    pub handler: H,
    pub config: Arc<Config>,
    pub slot: &'static Slot,
    pub board: &'static Board,
    pub builder: auto::Builder<TokioExecutor>,
    /// This worker's own request limit (max_requests + its jitter); 0 = none.
    pub max_requests: u64,
    /// Base of the connection idle clocks.
    pub epoch: Instant,
    draining: AtomicBool,
    active: AtomicUsize,
    idle: Notify,
    wake: OwnedFd,
}

impl<H> Shared<H> {
    pub fn new(
        handler: H,
        config: Arc<Config>,
        slot: &'static Slot,
        board: &'static Board,
        wake: OwnedFd,
    ) -> Shared<H> {
        let http = &config.http;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(http.header_read_timeout)
            .max_buf_size(http.max_header_bytes)
            .keep_alive(!http.keepalive_timeout.is_zero());
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .max_header_list_size(http.max_header_bytes as u32);
        if !http.http2 {
            builder = builder.http1_only();
        }
        let lc = &config.lifecycle;
        let max_requests = if lc.max_requests == 0 {
            0
        } else {
            lc.max_requests + jitter(lc.max_requests_jitter)
        };
        Shared {
            handler,
            slot,
            board,
            builder,
            max_requests,
            epoch: Instant::now(),
            draining: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            wake,
            config,
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn connection_opened(&self) {
        self.active.fetch_add(1, Relaxed);
        self.slot.connection_opened();
    }

    pub fn connection_closed(&self) {
        self.slot.connection_closed();
        if self.active.fetch_sub(1, AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub fn active_connections(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// Resolves once no connection is open.
    pub async fn wait_until_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active.load(Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Milliseconds since this worker's epoch (connection idle clocks).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Wakes the master's loop so it sees a change in our slot at once.
    pub fn nudge_master(&self) {
        // A full pipe means the master is already awake; nothing to do.
        let _ = nix::unistd::write(&self.wake, b"w");
    }
}

/// A uniform draw in `[0, max]`, different in every worker (so workers
/// started together do not all retire together).
fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() % (max + 1)
}
