//! The worker's open connections, upgraded ones (WebSockets) included:
//! counted in the worker's slot, and awaited by a draining worker. Not
//! generic over the app, so that a connection's IO can hold its guard:
//! an upgraded connection lives on inside the app after hyper is done
//! with it, and counts until the app drops it.

use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::shm::scoreboard::Slot;

pub struct Conns {
    slot: &'static Slot,
    active: AtomicUsize,
    upgraded: AtomicUsize,
    idle: Notify,
    /// Reads on upgraded connections, to take turns with the workers
    /// sharing this CPU (see [`YIELD_EVERY_UPGRADED_READS`]).
    upgraded_reads: AtomicUsize,
    /// Connections held by a hyper connection (not parked).
    held: AtomicUsize,
}

/// Upgraded connections carry messages, not requests, so the per-request
/// yield (`shared::YIELD_EVERY_REQUESTS`) never happens on them: a worker
/// busy with WebSockets yields the CPU once per this many reads instead,
/// which keeps the latency of the workers sharing its CPU down.
pub const YIELD_EVERY_UPGRADED_READS: usize = 64;

impl Conns {
    pub fn new(slot: &'static Slot) -> Conns {
        Conns {
            slot,
            active: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            idle: Notify::new(),
            upgraded_reads: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
        }
    }

    /// Counts a connection as held by hyper until the guard drops.
    pub fn hold(self: &Arc<Conns>) -> HeldGuard {
        self.held.fetch_add(1, Relaxed);
        HeldGuard(self.clone())
    }

    /// How many connections hyper holds (see `park::PARK_AT_ONCE_ABOVE`).
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// A new connection; it counts until the guard is dropped.
    pub fn open(self: &Arc<Conns>) -> ConnGuard {
        self.active.fetch_add(1, Relaxed);
        self.slot.connection_opened();
        ConnGuard {
            conns: self.clone(),
        }
    }

    /// A connection switched protocols (HTTP/1.1 101): the app owns it now;
    /// it counts as upgraded until its IO (and guard) is dropped.
    pub fn upgrade_started(&self) {
        self.upgraded.fetch_add(1, Relaxed);
        self.slot.upgraded_opened();
    }

    pub fn active(&self) -> usize {
        self.active.load(Relaxed)
    }

    pub fn upgraded(&self) -> usize {
        self.upgraded.load(Relaxed)
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
}

/// One open connection (also while unwinding from a panic in the app).
/// See `Conns::hold`.
pub struct HeldGuard(Arc<Conns>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Relaxed);
    }
}

pub struct ConnGuard {
    conns: Arc<Conns>,
}

impl ConnGuard {
    /// The worker's connections, for whoever holds one of them.
    pub fn conns(&self) -> &Conns {
        &self.conns
    }

    /// A read on the upgraded connection this guard counts returned data.
    pub fn upgraded_read(&self) {
        let n = self.conns.upgraded_reads.fetch_add(1, Relaxed) + 1;
        if n % YIELD_EVERY_UPGRADED_READS == 0 {
            crate::os::yield_cpu();
        }
    }

    /// The upgraded connection this guard counts moved nothing for
    /// `http.upgrade_idle_timeout` and is being closed.
    pub fn upgrade_timed_out(&self) {
        self.conns.slot.count_upgrade_idle_timeout();
    }

    /// The upgraded connection this guard counts has ended.
    pub fn upgrade_ended(&self) {
        self.conns.upgraded.fetch_sub(1, Relaxed);
        self.conns.slot.upgraded_closed();
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let c = &self.conns;
        c.slot.connection_closed();
        if c.active.fetch_sub(1, AcqRel) == 1 {
            c.idle.notify_waiters();
        }
    }
}
