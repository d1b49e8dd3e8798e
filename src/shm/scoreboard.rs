//! The shared-memory scoreboard: one region created by the master before
//! the first fork, one cache-line-aligned slot per worker. A worker writes
//! only its own slot, with atomics; the master and `/metrics` read them all.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use crate::os::shared_plain;
use crate::proto::outcome::{AcceptError, ConnError, ExitReason, ReloadResult, TlsFailure};
use crate::shm::inflight::{DumpArea, InFlightTable};

/// Slots available: enough for `MAX_WORKERS` serving workers plus as many
/// replacements and draining workers again during a rolling reload.
pub const SLOT_CAPACITY: usize = 2 * crate::config::MAX_WORKERS + 16;

/// Request-duration histogram upper bounds, in microseconds.
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

pub const METHOD_CLASSES: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// The protocols a request can arrive over, as `/metrics` labels them
/// (`h1` counts HTTP/1.0 and HTTP/1.1).
pub const PROTOCOLS: [&str; 3] = ["h1", "h2", "h3"];

/// A worker's lifecycle as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SlotState {
    Free = 0,
    /// Forked; running app startup; not accepting yet.
    Booting = 1,
    /// Accepting and serving.
    Ready = 2,
    /// Reached max_requests (or asked to be replaced): still serving until
    /// the master has started its replacement and tells it to drain.
    Retiring = 3,
    /// Stopped accepting; finishing in-flight requests.
    Draining = 4,
}

impl SlotState {
    fn from_u32(v: u32) -> SlotState {
        match v {
            1 => SlotState::Booting,
            2 => SlotState::Ready,
            3 => SlotState::Retiring,
            4 => SlotState::Draining,
            _ => SlotState::Free,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Booting => "booting",
            SlotState::Ready => "ready",
            SlotState::Retiring => "retiring",
            SlotState::Draining => "draining",
        }
    }
}

/// What runs in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SlotKind {
    /// A worker serving the app (forked, or exec'd `app.command`).
    App = 0,
    /// The exec-mode helper that serves `metrics.bind`: not an app worker.
    Sidecar = 1,
    /// Proxy mode: an rsvisor worker that serves the clients and forwards
    /// to the app processes (whose slots are `App`).
    Front = 2,
}

shared_plain! {
    /// Monotonic counters that `/metrics` sums over the fleet.
    #[repr(C)]
    pub struct Counters {
        pub requests: AtomicU64,
        pub bytes_sent: AtomicU64,
        pub status: [AtomicU64; 5],
        pub methods: [AtomicU64; METHOD_CLASSES.len()],
        pub protocols: [AtomicU64; PROTOCOLS.len()],
        /// Of those, served from TLS early data (0-RTT) before the
        /// handshake completed.
        pub early_data: AtomicU64,
        pub latency: [AtomicU64; LATENCY_BUCKETS],
        pub latency_sum_us: AtomicU64,
        pub errors: Errors,
    }
}

const ACCEPT_ERRORS: usize = AcceptError::ALL.len();
const TLS_FAILURES: usize = TlsFailure::ALL.len();
const CONN_ERRORS: usize = ConnError::ALL.len();

shared_plain! {
    /// Things that went wrong, counted where they happen (they are also
    /// logged, but only once per interval: see `crate::telemetry::throttle`).
    #[repr(C)]
    pub struct Errors {
        pub send_timeouts: AtomicU64,
        pub upgrade_idle_timeouts: AtomicU64,
        pub access_log_write_errors: AtomicU64,
        pub access_log_dropped: AtomicU64,
        /// Lines of the HTTP and TLS libraries left out by
        /// `logging::LibraryThrottle`.
        pub log_lines_suppressed: AtomicU64,
        /// Indexed by [`AcceptError::index`].
        pub accept: [AtomicU64; ACCEPT_ERRORS],
        /// Indexed by [`TlsFailure::index`].
        pub tls: [AtomicU64; TLS_FAILURES],
        /// Indexed by [`ConnError::index`].
        pub conn: [AtomicU64; CONN_ERRORS],
    }
}

/// A plain copy of [`Errors`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorsSnapshot {
    pub send_timeouts: u64,
    pub upgrade_idle_timeouts: u64,
    pub access_log_write_errors: u64,
    pub access_log_dropped: u64,
    pub log_lines_suppressed: u64,
    pub accept: [u64; ACCEPT_ERRORS],
    pub tls: [u64; TLS_FAILURES],
    pub conn: [u64; CONN_ERRORS],
}

fn load_all<const N: usize>(a: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| a[i].load(Relaxed))
}

fn add_all<const N: usize>(a: &[AtomicU64; N], v: &[u64; N]) {
    for (a, v) in a.iter().zip(v) {
        a.fetch_add(*v, Relaxed);
    }
}

fn sum_all<const N: usize>(a: &mut [u64; N], v: &[u64; N]) {
    for (a, v) in a.iter_mut().zip(v) {
        *a += v;
    }
}

impl Errors {
    fn snapshot(&self) -> ErrorsSnapshot {
        ErrorsSnapshot {
            send_timeouts: self.send_timeouts.load(Relaxed),
            upgrade_idle_timeouts: self.upgrade_idle_timeouts.load(Relaxed),
            access_log_write_errors: self.access_log_write_errors.load(Relaxed),
            access_log_dropped: self.access_log_dropped.load(Relaxed),
            log_lines_suppressed: self.log_lines_suppressed.load(Relaxed),
            accept: load_all(&self.accept),
            tls: load_all(&self.tls),
            conn: load_all(&self.conn),
        }
    }

    fn add(&self, s: &ErrorsSnapshot) {
        self.send_timeouts.fetch_add(s.send_timeouts, Relaxed);
        self.upgrade_idle_timeouts
            .fetch_add(s.upgrade_idle_timeouts, Relaxed);
        self.access_log_write_errors
            .fetch_add(s.access_log_write_errors, Relaxed);
        self.access_log_dropped
            .fetch_add(s.access_log_dropped, Relaxed);
        self.log_lines_suppressed
            .fetch_add(s.log_lines_suppressed, Relaxed);
        add_all(&self.accept, &s.accept);
        add_all(&self.tls, &s.tls);
        add_all(&self.conn, &s.conn);
    }

    fn clear(&self) {
        self.send_timeouts.store(0, Relaxed);
        self.upgrade_idle_timeouts.store(0, Relaxed);
        self.access_log_write_errors.store(0, Relaxed);
        self.access_log_dropped.store(0, Relaxed);
        self.log_lines_suppressed.store(0, Relaxed);
        for a in self.accept.iter().chain(&self.tls).chain(&self.conn) {
            a.store(0, Relaxed);
        }
    }
}

impl ErrorsSnapshot {
    fn add(&mut self, o: &ErrorsSnapshot) {
        self.send_timeouts += o.send_timeouts;
        self.upgrade_idle_timeouts += o.upgrade_idle_timeouts;
        self.access_log_write_errors += o.access_log_write_errors;
        self.access_log_dropped += o.access_log_dropped;
        self.log_lines_suppressed += o.log_lines_suppressed;
        sum_all(&mut self.accept, &o.accept);
        sum_all(&mut self.tls, &o.tls);
        sum_all(&mut self.conn, &o.conn);
    }
}

/// A plain copy of [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub requests: u64,
    pub bytes_sent: u64,
    pub status: [u64; 5],
    pub methods: [u64; METHOD_CLASSES.len()],
    pub protocols: [u64; PROTOCOLS.len()],
    pub early_data: u64,
    pub latency: [u64; LATENCY_BUCKETS],
    pub latency_sum_us: u64,
    pub errors: ErrorsSnapshot,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            requests: self.requests.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            status: load_all(&self.status),
            methods: load_all(&self.methods),
            protocols: load_all(&self.protocols),
            early_data: self.early_data.load(Relaxed),
            latency: load_all(&self.latency),
            latency_sum_us: self.latency_sum_us.load(Relaxed),
            errors: self.errors.snapshot(),
        }
    }

    fn add(&self, s: &CountersSnapshot) {
        self.requests.fetch_add(s.requests, Relaxed);
        self.bytes_sent.fetch_add(s.bytes_sent, Relaxed);
        self.early_data.fetch_add(s.early_data, Relaxed);
        self.latency_sum_us.fetch_add(s.latency_sum_us, Relaxed);
        add_all(&self.status, &s.status);
        add_all(&self.methods, &s.methods);
        add_all(&self.protocols, &s.protocols);
        add_all(&self.latency, &s.latency);
        self.errors.add(&s.errors);
    }

    fn clear(&self) {
        self.requests.store(0, Relaxed);
        self.bytes_sent.store(0, Relaxed);
        self.early_data.store(0, Relaxed);
        self.latency_sum_us.store(0, Relaxed);
        self.status.iter().for_each(|a| a.store(0, Relaxed));
        self.methods.iter().for_each(|a| a.store(0, Relaxed));
        self.protocols.iter().for_each(|a| a.store(0, Relaxed));
        self.latency.iter().for_each(|a| a.store(0, Relaxed));
        self.errors.clear();
    }
}

impl CountersSnapshot {
    pub fn add(&mut self, o: &CountersSnapshot) {
        self.requests += o.requests;
        self.bytes_sent += o.bytes_sent;
        self.early_data += o.early_data;
        self.latency_sum_us += o.latency_sum_us;
        sum_all(&mut self.status, &o.status);
        sum_all(&mut self.methods, &o.methods);
        sum_all(&mut self.protocols, &o.protocols);
        sum_all(&mut self.latency, &o.latency);
        self.errors.add(&o.errors);
    }
}

shared_plain! {
    /// One worker's slot.
    #[repr(C, align(64))]
    pub struct Slot {
        pid: AtomicU32,
        generation: AtomicU32,
        state: AtomicU32,
        started_ms: AtomicU64,
        heartbeat_ms: AtomicU64,
        /// How late the last heartbeat tick fired (event-loop lag), µs.
        loop_lag_us: AtomicU64,
        active_connections: AtomicU64,
        /// Of those, connections that switched protocols (WebSockets).
        upgraded_connections: AtomicU64,
        /// Resident memory, written by the master (it reads /proc).
        rss_bytes: AtomicU64,
        /// `lifecycle.max_worker_memory` of the worker's generation (0: none).
        memory_limit: AtomicU64,
        /// CPU time in milliseconds, written by the master.
        cpu_ms: AtomicU64,
        /// What runs in the slot ([`SlotKind`]).
        kind: AtomicU32,
        /// The thread that stamped the last heartbeat (a dump names it).
        heartbeat_tid: AtomicU32,
        /// 1 while nothing beats in this slot (an exec worker that has not
        /// sent `WATCHDOG=1`): its heartbeat age means nothing.
        unwatched: AtomicU32,
        /// Wake the master when this many requests are answered (0: never):
        /// set for a reload's canary, so it is judged without delay.
        nudge_at: AtomicU64,
        /// Bumped by the master to have the worker close each kept-alive
        /// HTTP/1.1 connection after its next response (clients reconnect,
        /// and may reach another worker).
        shed_epoch: AtomicU32,
        /// Proxy mode, an app process's slot: requests the front workers
        /// have forwarded to it and not finished.
        outstanding: AtomicU64,
        /// Proxy mode, an app process's slot: 1 once a front worker gave
        /// up waiting for its answer (`lifecycle.timeout`); the master
        /// then dumps and replaces it.
        stalled: AtomicU32,
        pub counters: Counters,
    }
}

const EXIT_REASONS: usize = ExitReason::ALL.len();
const RELOAD_RESULTS: usize = ReloadResult::ALL.len();

shared_plain! {
    /// Fleet-wide data: flags and the counts the master keeps.
    #[repr(C, align(64))]
    pub struct Header {
        /// Non-zero once the master is stopping: every `/ready` answers 503.
        stopping: AtomicU32,
        current_generation: AtomicU32,
        /// Seqlock around folding a retired worker's counters into `retired`.
        fold_seq: AtomicU64,
        pub retired: Counters,
        /// Indexed by [`ExitReason::index`].
        pub exits: [AtomicU64; EXIT_REASONS],
        /// Indexed by [`ReloadResult::index`].
        pub reloads: [AtomicU64; RELOAD_RESULTS],
        pub upgrades: AtomicU64,
        /// Exec workers' output lines left out of the log.
        pub app_output_dropped: AtomicU64,
        pub master_started_ms: AtomicU64,
    }
}

shared_plain! {
    /// The whole shared region.
    #[repr(C)]
    pub struct Board {
        pub header: Header,
        pub slots: [Slot; SLOT_CAPACITY],
        /// Each slot's requests in flight (read when a worker hangs).
        pub in_flight: [InFlightTable; SLOT_CAPACITY],
        /// Each slot's stack dumps.
        pub dumps: [DumpArea; SLOT_CAPACITY],
    }
}

impl Board {
    /// Maps the board; call in the master before the first fork.
    pub fn create() -> std::io::Result<&'static Board> {
        crate::os::shared_zeroed::<Board>()
    }

    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.state() == SlotState::Free)
    }

    pub fn set_stopping(&self) {
        self.header.stopping.store(1, Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.header.stopping.load(Relaxed) != 0
    }

    pub fn set_generation(&self, generation: u32) {
        self.header.current_generation.store(generation, Relaxed);
    }

    pub fn generation(&self) -> u32 {
        self.header.current_generation.load(Relaxed)
    }

    /// Master: prepares a free slot for a worker about to be forked.
    pub fn claim(&self, index: usize, generation: u32) {
        let s = &self.slots[index];
        s.pid.store(0, Relaxed);
        s.generation.store(generation, Relaxed);
        let now = crate::os::monotonic_ms();
        s.started_ms.store(now, Relaxed);
        s.heartbeat_ms.store(now, Relaxed);
        s.loop_lag_us.store(0, Relaxed);
        s.active_connections.store(0, Relaxed);
        s.upgraded_connections.store(0, Relaxed);
        s.rss_bytes.store(0, Relaxed);
        s.memory_limit.store(0, Relaxed);
        s.cpu_ms.store(0, Relaxed);
        s.kind.store(SlotKind::App as u32, Relaxed);
        s.heartbeat_tid.store(0, Relaxed);
        s.unwatched.store(0, Relaxed);
        s.nudge_at.store(0, Relaxed);
        s.shed_epoch.store(0, Relaxed);
        s.outstanding.store(0, Relaxed);
        s.stalled.store(0, Relaxed);
        // A killed worker leaves its last requests behind.
        self.in_flight[index].clear();
        s.state.store(SlotState::Booting as u32, Release);
    }

    /// Master: a worker has been reaped; fold its counters into the
    /// retired totals and free its slot, as one step for readers.
    pub fn release(&self, index: usize) {
        let s = &self.slots[index];
        self.header.fold_seq.fetch_add(1, AcqRel);
        let snap = s.counters.snapshot();
        self.header.retired.add(&snap);
        s.counters.clear();
        s.pid.store(0, Relaxed);
        s.state.store(SlotState::Free as u32, Release);
        self.header.fold_seq.fetch_add(1, AcqRel);
    }

    /// Sum of every counter ever recorded: retired workers plus live slots.
    /// Consistent with respect to folding (a seqlock read).
    /// Whether some app worker takes requests (the fleet's `/ready`, and
    /// a proxy-mode front's).
    pub fn app_serving(&self) -> bool {
        self.slots.iter().any(Slot::serves_app)
    }

    pub fn fleet_totals(&self) -> CountersSnapshot {
        loop {
            let before = self.header.fold_seq.load(Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut total = self.header.retired.snapshot();
            for s in &self.slots {
                if s.state() != SlotState::Free {
                    total.add(&s.counters.snapshot());
                }
            }
            if self.header.fold_seq.load(Acquire) == before {
                return total;
            }
        }
    }

    pub fn count_exit(&self, reason: ExitReason) {
        self.header.exits[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn exits(&self, reason: ExitReason) -> u64 {
        self.header.exits[reason.index()].load(Relaxed)
    }

    pub fn count_reload(&self, result: ReloadResult) {
        self.header.reloads[result.index()].fetch_add(1, Relaxed);
    }

    pub fn reloads(&self, result: ReloadResult) -> u64 {
        self.header.reloads[result.index()].load(Relaxed)
    }
}

impl Slot {
    pub fn state(&self) -> SlotState {
        SlotState::from_u32(self.state.load(Acquire))
    }

    pub fn set_state(&self, state: SlotState) {
        self.state.store(state as u32, Release);
    }

    /// Worker: moves Ready → Retiring; never overrides Draining.
    pub fn mark_retiring(&self) -> bool {
        self.state
            .compare_exchange(
                SlotState::Ready as u32,
                SlotState::Retiring as u32,
                AcqRel,
                Relaxed,
            )
            .is_ok()
    }

    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Relaxed);
    }

    pub fn beat(&self, now_ms: u64, lag_us: u64) {
        self.heartbeat_ms.store(now_ms, Release);
        self.loop_lag_us.store(lag_us, Relaxed);
        self.unwatched.store(0, Relaxed);
    }

    /// Master: nothing will beat in this slot until its first
    /// [`Self::beat`] (an exec worker without `WATCHDOG=1`).
    pub fn set_unwatched(&self) {
        self.unwatched.store(1, Relaxed);
    }

    /// Whether the heartbeat age of this slot means anything.
    pub fn watched(&self) -> bool {
        self.unwatched.load(Relaxed) == 0
    }

    pub fn set_heartbeat_tid(&self, tid: u32) {
        self.heartbeat_tid.store(tid, Relaxed);
    }

    /// Master: ask to be woken when the worker has answered `requests`.
    pub fn nudge_at(&self, requests: u64) {
        self.nudge_at.store(requests, Relaxed);
    }

    /// Worker: whether `served` is the count the master asked to hear of.
    pub fn wants_nudge(&self, served: u64) -> bool {
        served == self.nudge_at.load(Relaxed)
    }

    /// Master: every open keep-alive connection closes after its next
    /// response.
    pub fn shed_connections(&self) {
        self.shed_epoch.fetch_add(1, Relaxed);
    }

    pub fn shed_epoch(&self) -> u32 {
        self.shed_epoch.load(Relaxed)
    }

    pub fn heartbeat_tid(&self) -> u32 {
        self.heartbeat_tid.load(Relaxed)
    }

    pub fn heartbeat_ms(&self) -> u64 {
        self.heartbeat_ms.load(Acquire)
    }

    /// How long ago (ms) the worker last beat, at `now_ms` (monotonic).
    pub fn heartbeat_age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.heartbeat_ms())
    }

    pub fn loop_lag_us(&self) -> u64 {
        self.loop_lag_us.load(Relaxed)
    }

    pub fn connection_opened(&self) {
        self.active_connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.active_connections.fetch_sub(1, Relaxed);
    }

    pub fn active_connections(&self) -> u64 {
        self.active_connections.load(Relaxed)
    }

    pub fn upgraded_opened(&self) {
        self.upgraded_connections.fetch_add(1, Relaxed);
    }

    pub fn upgraded_closed(&self) {
        self.upgraded_connections.fetch_sub(1, Relaxed);
    }

    pub fn upgraded_connections(&self) -> u64 {
        self.upgraded_connections.load(Relaxed)
    }

    /// Requests this worker answered (its slot is folded only after it
    /// exited, so this is the worker's own lifetime count).
    pub fn served(&self) -> u64 {
        self.counters.requests.load(Relaxed)
    }

    pub fn kind(&self) -> SlotKind {
        match self.kind.load(Relaxed) {
            1 => SlotKind::Sidecar,
            2 => SlotKind::Front,
            _ => SlotKind::App,
        }
    }

    /// The pid of the process in this slot (0 while it is being started).
    pub fn pid(&self) -> u32 {
        self.pid.load(Relaxed)
    }

    /// The generation the process in this slot belongs to.
    pub fn generation(&self) -> u32 {
        self.generation.load(Relaxed)
    }

    /// Proxy mode: requests in flight to this app process.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Acquire)
    }

    /// Proxy mode: takes one more request for this app process unless it
    /// has `max` in flight already (`max` 0: no limit).
    pub fn try_take_request(&self, max: u64) -> bool {
        self.outstanding
            .fetch_update(AcqRel, Acquire, |n| (max == 0 || n < max).then_some(n + 1))
            .is_ok()
    }

    /// Proxy mode: a request to this app process got no answer within
    /// `lifecycle.timeout`.
    pub fn mark_stalled(&self) {
        self.stalled.store(1, Release);
    }

    /// Master: whether a request to this app process went unanswered since
    /// it last asked.
    pub fn take_stalled(&self) -> bool {
        self.stalled.swap(0, AcqRel) == 1
    }

    /// Proxy mode: a request taken by [`Slot::try_take_request`] ended.
    pub fn request_done(&self) {
        let _ = self
            .outstanding
            .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
    }

    pub fn set_kind(&self, kind: SlotKind) {
        self.kind.store(kind as u32, Relaxed);
    }

    /// Serving the app (not the sidecar) and not free.
    pub fn is_app_worker(&self) -> bool {
        self.state() != SlotState::Free && self.kind() == SlotKind::App
    }

    /// An app worker that takes requests: ready, or retiring (it serves
    /// until its replacement is ready).
    pub fn serves_app(&self) -> bool {
        self.kind() == SlotKind::App
            && matches!(self.state(), SlotState::Ready | SlotState::Retiring)
    }

    pub fn set_cpu_seconds(&self, secs: f64) {
        self.cpu_ms.store((secs * 1000.0) as u64, Relaxed);
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_ms.load(Relaxed) as f64 / 1000.0
    }

    pub fn set_rss(&self, bytes: u64) {
        self.rss_bytes.store(bytes, Relaxed);
    }

    pub fn rss(&self) -> u64 {
        self.rss_bytes.load(Relaxed)
    }

    pub fn set_memory_limit(&self, bytes: u64) {
        self.memory_limit.store(bytes, Relaxed);
    }

    /// `lifecycle.max_worker_memory` of this worker, if it has one.
    pub fn memory_limit(&self) -> Option<u64> {
        Some(self.memory_limit.load(Relaxed)).filter(|b| *b != 0)
    }

    /// Counts a request without the metrics detail (metrics disabled);
    /// returns how many this worker has answered.
    pub fn count_request(&self) -> u64 {
        self.counters.requests.fetch_add(1, Relaxed) + 1
    }

    /// Records one answered request in this worker's counters; returns how
    /// many this worker has answered (for max_requests).
    pub fn record(&self, status: u16, class: RequestClass, latency_us: u64) -> u64 {
        let c = &self.counters;
        let served = c.requests.fetch_add(1, Relaxed) + 1;
        let status_class = (status / 100).clamp(1, 5) as usize - 1;
        c.status[status_class].fetch_add(1, Relaxed);
        c.methods[usize::from(class.method)].fetch_add(1, Relaxed);
        c.protocols[usize::from(class.protocol)].fetch_add(1, Relaxed);
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|b| latency_us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        c.latency[bucket].fetch_add(1, Relaxed);
        c.latency_sum_us.fetch_add(latency_us, Relaxed);
        served
    }

    /// Counts a request served from TLS early data.
    pub fn count_early_data(&self) {
        self.counters.early_data.fetch_add(1, Relaxed);
    }

    pub fn add_bytes_sent(&self, n: u64) {
        self.counters.bytes_sent.fetch_add(n, Relaxed);
    }

    pub fn count_send_timeout(&self) {
        self.counters.errors.send_timeouts.fetch_add(1, Relaxed);
    }

    pub fn count_upgrade_idle_timeout(&self) {
        self.counters
            .errors
            .upgrade_idle_timeouts
            .fetch_add(1, Relaxed);
    }

    pub fn count_log_line_suppressed(&self) {
        self.counters
            .errors
            .log_lines_suppressed
            .fetch_add(1, Relaxed);
    }

    pub fn count_access_log_write_error(&self) {
        self.counters
            .errors
            .access_log_write_errors
            .fetch_add(1, Relaxed);
    }

    pub fn count_access_log_dropped(&self, lines: u64) {
        self.counters
            .errors
            .access_log_dropped
            .fetch_add(lines, Relaxed);
    }

    pub fn count_accept_error(&self, e: AcceptError) {
        self.counters.errors.accept[e.index()].fetch_add(1, Relaxed);
    }

    pub fn count_tls_failure(&self, f: TlsFailure) {
        self.counters.errors.tls[f.index()].fetch_add(1, Relaxed);
    }

    pub fn count_conn_error(&self, e: ConnError) {
        self.counters.errors.conn[e.index()].fetch_add(1, Relaxed);
    }
}

/// Quantile `q` (0–1) of a latency histogram with [`LATENCY_BOUNDS_US`]
/// buckets, in microseconds, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; `None` without samples.
pub fn quantile_us(hist: &[u64], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS_US.get(i) else {
                // The open-ended bucket: its lower bound is all we know.
                return LATENCY_BOUNDS_US.last().map(|b| *b as f64);
            };
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
            let within = (rank - below as f64).max(0.0) / n as f64;
            return Some(lower as f64 + (upper - lower) as f64 * within);
        }
        below += n;
    }
    LATENCY_BOUNDS_US.last().map(|b| *b as f64)
}

/// What a request is counted under: indexes into [`METHOD_CLASSES`] and
/// [`PROTOCOLS`], made only by [`RequestClass::of`] so they are in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestClass {
    method: u8,
    protocol: u8,
}

impl RequestClass {
    pub fn of(method: &http::Method, version: http::Version) -> RequestClass {
        let method = match *method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            http::Method::POST => 2,
            http::Method::PUT => 3,
            http::Method::DELETE => 4,
            http::Method::PATCH => 5,
            http::Method::OPTIONS => 6,
            _ => 7,
        };
        let protocol = match version {
            http::Version::HTTP_2 => 1,
            http::Version::HTTP_3 => 2,
            _ => 0,
        };
        RequestClass { method, protocol }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_totals() {
        let board = Board::create().unwrap();
        board.claim(0, 1);
        board.claim(1, 1);
        let get = RequestClass::of(&http::Method::GET, http::Version::HTTP_11);
        let post = RequestClass::of(&http::Method::POST, http::Version::HTTP_3);
        for _ in 0..3 {
            board.slot(0).record(200, get, 700);
        }
        board.slot(1).record(503, post, 10);
        assert_eq!(board.fleet_totals().requests, 4);
        board.release(0);
        let t = board.fleet_totals();
        assert_eq!(t.requests, 4);
        assert_eq!(t.status[1], 3);
        assert_eq!(t.status[4], 1);
        assert_eq!(t.latency[1], 3);
        assert_eq!(t.latency[0], 1);
        assert_eq!(t.methods[..3], [3, 0, 1]);
        assert_eq!(t.protocols, [3, 0, 1]);
        assert_eq!(board.slot(0).state(), SlotState::Free);
    }

    #[test]
    fn slot_is_cache_line_aligned() {
        assert_eq!(std::mem::align_of::<Slot>(), 64);
        assert_eq!(std::mem::size_of::<Slot>() % 64, 0);
    }
}
