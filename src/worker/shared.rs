//! State shared by every connection of one worker.

use std::hash::{BuildHasher, Hasher};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use super::access_log::AccessLog;
use super::lot::Lot;
use super::park::Resume;
use super::proxy::Trust;
use super::readiness::Readiness;
use super::registry::Conns;
use super::stream_exec::StreamExec;
use crate::config::material::Material;
use crate::config::{Config, HttpConfig};
use crate::shm::inflight::InFlightTable;
use crate::shm::scoreboard::{Board, Slot};

/// HTTP/2 connections are pinged this often, so dead peers are noticed.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Concurrent streams an HTTP/2 client may open on one connection.
pub const H2_MAX_STREAMS: u32 = 100;
/// What one HTTP/2 stream may have queued for sending. With
/// [`H2_MAX_STREAMS`], this bounds what a connection that does not read
/// can make rsvisor hold (plus the app's own bodies), until
/// `http.send_timeout` frees it.
pub const H2_SEND_BUFFER: usize = 128 * 1024;

/// A worker yields the CPU once every this many requests. Workers usually
/// outnumber CPUs (2 × CPUs + 1); under saturation none of them blocks, and
/// the kernel lets each run a whole scheduler tick (4 ms at HZ=250) while
/// the requests of the workers sharing its CPU wait: with two workers on
/// one CPU that made the p99 about 5 ms instead of 1. Yielding every 64
/// requests lets them take turns at request granularity; it costs one
/// syscall per 64 requests and returns at once when no other process
/// wants the CPU.
pub const YIELD_EVERY_REQUESTS: u64 = 64;

/// What a worker has made ready by the time its app has started.
pub struct SharedParts<'a> {
    pub config: Arc<Config>,
    pub material: &'a Material,
    pub slot: &'static Slot,
    pub requests: &'static InFlightTable,
    pub board: &'static Board,
    /// Write end of the master's wake-up pipe.
    pub wake: OwnedFd,
    pub access_log: Option<AccessLog>,
    pub readiness: Readiness,
    pub sidecar: bool,
    /// Proxy mode's front: what its app (the forward) answers is counted
    /// for the app process behind it.
    pub front: bool,
    /// Where idle connections park (see `park`); its task is the worker's.
    pub lot: Arc<Lot<Resume>>,
    pub alt_svc: Option<http::HeaderValue>,
}

pub(crate) struct Shared<H: 'static> {
    /// Leaked: the worker's process ends with it (its cleanup is
    /// `Handler::shutdown`). A `'static` handler lets a request's future be
    /// made before hyper stores it, holding the handler's future alone and
    /// not the request besides it (see `service::respond`).
    pub handler: &'static H,
    pub config: Arc<Config>,
    pub slot: &'static Slot,
    /// The slot's requests in flight.
    pub requests: &'static InFlightTable,
    pub board: &'static Board,
    /// HTTP/1.1, or HTTP/2 with prior knowledge (plain connections).
    pub auto: auto::Builder<StreamExec>,
    pub h1: auto::Builder<StreamExec>,
    pub h2: auto::Builder<StreamExec>,
    pub tls: Option<TlsAcceptor>,
    /// `http.http3`: the `Alt-Svc` field of responses over TLS.
    pub alt_svc: Option<http::HeaderValue>,
    pub trust: Trust,
    pub access_log: Option<AccessLog>,
    /// This worker's own request limit (max_requests + its jitter); 0 = none.
    pub max_requests: u64,
    /// Milliseconds since the worker started, advanced every CLOCK_TICK:
    /// connection timeouts read it instead of the system clock.
    pub clock: Arc<AtomicU64>,
    draining: AtomicBool,
    /// Exec mode's sidecar: its own requests (scrapes, probes) are not
    /// the app's and are not counted.
    pub sidecar: bool,
    /// Proxy mode's front: an answer from an app process is counted for
    /// that process (by the front's handler), not for this worker.
    pub front: bool,
    /// Open connections, upgraded ones included.
    pub conns: Arc<Conns>,
    /// Idle connections parked outside hyper (see `park`).
    pub lot: Arc<Lot<Resume>>,
    pub readiness: Readiness,
    /// App requests in flight (for http.limit_concurrency).
    in_flight: AtomicUsize,
    wake: OwnedFd,
}

/// How HTTP/1.1 answers reach the socket. `Flatten` copies each body into
/// the head's buffer and writes once: cheaper for the small answers an app
/// makes (about 470 instructions per request, no 64-slice `writev` array to
/// fill), and one copy more is little beside making the bytes. `Queue`
/// writes bodies where they are: the built-in static files and proxy mode's
/// front pass on bytes they did not make, where that copy would be most of
/// the user-space cost (a 1 MiB file: +80 µs of CPU per request).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writes {
    Flatten,
    Queue,
}

impl Writes {
    fn of(config: &Config, front: bool) -> Writes {
        if front || config.app.static_dir.is_some() {
            Writes::Queue
        } else {
            Writes::Flatten
        }
    }
}

fn builder(http: &HttpConfig, exec: StreamExec, writes: Writes) -> auto::Builder<StreamExec> {
    let mut b = auto::Builder::new(exec);
    b.http1()
        // rsvisor times request heads itself (and answers 408).
        .header_read_timeout(None)
        .writev(writes == Writes::Queue)
        .timer(TokioTimer::new())
        .max_buf_size(http.max_header_bytes)
        .max_headers(http.max_headers)
        // A client that shuts down its sending side after a complete
        // request (`nc -N`, some health checkers) still gets its answer.
        .half_close(true)
        .keep_alive(!http.keepalive_timeout.is_zero());
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_send_buf_size(H2_SEND_BUFFER)
        .max_header_list_size(http.max_header_bytes as u32);
    b
}

impl<H> Shared<H> {
    pub fn new(handler: H, parts: SharedParts<'_>) -> Shared<H> {
        let SharedParts {
            config,
            material,
            slot,
            requests,
            board,
            wake,
            access_log,
            readiness,
            sidecar,
            front,
            lot,
            alt_svc,
        } = parts;
        let http = &config.http;
        let clock = Arc::new(AtomicU64::new(crate::os::monotonic_ms()));
        let exec = StreamExec {
            send_timeout: http.send_timeout,
            clock: clock.clone(),
            slot,
        };
        let writes = Writes::of(&config, front);
        let auto = if http.http2 {
            builder(http, exec.clone(), writes)
        } else {
            builder(http, exec.clone(), writes).http1_only()
        };
        let lc = &config.lifecycle;
        let max_requests = if lc.max_requests == 0 {
            0
        } else {
            lc.max_requests + jitter(lc.max_requests_jitter)
        };
        Shared {
            handler: Box::leak(Box::new(handler)),
            slot,
            requests,
            board,
            auto,
            h1: builder(http, exec.clone(), writes).http1_only(),
            h2: builder(http, exec, writes).http2_only(),
            tls: material
                .tls
                .as_ref()
                .map(|m| TlsAcceptor::from(m.0.clone())),
            alt_svc,
            trust: Trust::new(&config.proxy),
            access_log,
            max_requests,
            clock,
            draining: AtomicBool::new(false),
            sidecar,
            front,
            conns: Arc::new(Conns::new(slot)),
            lot,
            readiness,
            in_flight: AtomicUsize::new(0),
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

    /// True when `http.limit_concurrency` app requests are already running.
    pub fn at_capacity(&self) -> bool {
        let limit = self.config.http.limit_concurrency;
        limit != 0 && self.in_flight.load(Relaxed) >= limit
    }

    pub fn begin_app_request(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn end_app_request(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// The worker clock, in milliseconds (CLOCK_TICK resolution).
    pub fn now_ms(&self) -> u64 {
        self.clock.load(Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_flattened_unless_the_bytes_come_from_a_file_or_an_app_process() {
        let mut config = crate::config::keys::defaults();
        assert_eq!(Writes::of(&config, false), Writes::Flatten);
        assert_eq!(Writes::of(&config, true), Writes::Queue);
        config.app.static_dir = Some("/srv/www".into());
        assert_eq!(Writes::of(&config, false), Writes::Queue);
    }
}
