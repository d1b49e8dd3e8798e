//! One client connection: optional TLS handshake, HTTP/1.1 or HTTP/2
//! through hyper, and the timeouts and drain behaviour rsvisor promises:
//!
//! - idle keep-alive connections close after `http.keepalive_timeout`;
//! - a request head still incomplete after `http.header_read_timeout`
//!   (slowloris) gets `408` and the connection closes;
//! - on drain, HTTP/2 gets GOAWAY, HTTP/1.1 gets `Connection: close` on its
//!   next response, and an idle HTTP/1.1 connection is left to its
//!   keep-alive timeout (closing it early races with the client's next
//!   request, which is how other servers lose requests on reload).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::access_log::AccessLog;
use super::conn_info::{ConnState, EndedBy, How, Peer};
use super::h2_frames::{H2Frames, Sniff, PREFACE};
use super::lot::{Parked, Socket};
use super::park::{self, Handoff, Parkable, Resume, Tail};
use super::proxy_protocol;
use super::registry::ConnGuard;
use super::service;
use super::{ListenRole, Shared};
use crate::app::Handler;
use crate::proto::outcome::{ConnError, TlsFailure};
use crate::telemetry::throttle::Throttle;

/// How long a connection may take to read a 408 we queued before it is
/// dropped anyway.
const TIMEOUT_RESPONSE_GRACE: Duration = Duration::from_secs(1);

const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Which HTTP the connection speaks, when known before the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Plain connection: HTTP/1.1, or HTTP/2 with prior knowledge.
    Detect,
    H1,
    H2,
}

pub async fn serve<IO, H>(
    io: IO,
    peer: Peer,
    how: How,
    shared: Arc<Shared<H>>,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin + Send + 'static,
    H: Handler,
{
    // Counted until dropped: by this task, or by the app that took over an
    // upgraded connection (the guard travels inside the IO).
    let guard = shared.conns.open();
    if how.proxy_protocol {
        // The header counts against the header timeout; a connection
        // without a valid one is closed.
        let limit = shared.config.http.header_read_timeout;
        // Boxed, as every path but the plain one: the task's future is as
        // large as its largest path, and plain connections are the most
        // numerous.
        Box::pin(async move {
            if let Ok(Ok((source, io))) =
                tokio::time::timeout(limit, proxy_protocol::accept(io)).await
            {
                let peer = match source {
                    proxy_protocol::Source::Client(addr) => Peer::Tcp(addr),
                    proxy_protocol::Source::Local => peer,
                };
                serve_http(io, peer, how.role, &shared, stop, guard).await;
            }
        })
        .await;
    } else {
        serve_http(io, peer, how.role, &shared, stop, guard).await;
    }
}

async fn serve_http<IO, H>(
    io: IO,
    peer: Peer,
    role: ListenRole,
    shared: &Arc<Shared<H>>,
    mut stop: watch::Receiver<bool>,
    guard: ConnGuard,
) where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin + Send + 'static,
    H: Handler,
{
    let tls = match role {
        ListenRole::Tls => shared.tls.clone(),
        _ => None,
    };
    let state = Arc::new(ConnState::new(
        peer,
        role,
        tls.is_some(),
        shared.now_ms(),
        shared.slot.shed_epoch(),
    ));
    match tls {
        None => {
            let proto = if shared.config.http.http2 {
                Proto::Detect
            } else {
                Proto::H1
            };
            drive(io, proto, shared, &state, &mut stop, guard).await;
        }
        Some(acceptor) => {
            // Boxed: see `serve`.
            Box::pin(async move {
                // The handshake counts against the header timeout.
                let limit = shared.config.http.header_read_timeout;
                match tokio::time::timeout(limit, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let proto = match stream.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Proto::H2,
                            _ => Proto::H1,
                        };
                        drive(stream, proto, shared, &state, &mut stop, guard).await;
                    }
                    Ok(Err(e)) => tls_failed(shared, peer, tls_failure(&e), Some(&e)),
                    Err(_) => tls_failed(shared, peer, TlsFailure::Timeout, None),
                }
            })
            .await;
        }
    }
}

/// One throttle per reason: a flood of one kind does not hide another.
static TLS_FAILURES: [Throttle; TlsFailure::ALL.len()] =
    [const { Throttle::new() }; TlsFailure::ALL.len()];
/// The same for connection errors, by kind.
static CONN_ERRORS: [Throttle; ConnError::ALL.len()] =
    [const { Throttle::new() }; ConnError::ALL.len()];

fn tls_failure(e: &io::Error) -> TlsFailure {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => TlsFailure::NoCertificate,
        Some(rustls::Error::InvalidCertificate(_)) => TlsFailure::BadCertificate,
        Some(_) => TlsFailure::Protocol,
        None => TlsFailure::Io,
    }
}

/// Counts a failed handshake; says why (once per interval and reason).
/// Clients that just go away (scanners, health checks) are only counted.
pub(super) fn tls_failed<H>(
    shared: &Shared<H>,
    peer: Peer,
    reason: TlsFailure,
    e: Option<&dyn std::error::Error>,
) {
    shared.slot.count_tls_failure(reason);
    if matches!(reason, TlsFailure::Io | TlsFailure::Timeout) {
        tracing::debug!(?peer, %reason, "TLS handshake failed");
        return;
    }
    if let Some(suppressed) = TLS_FAILURES[reason.index()].admit() {
        let error = e.map(|e| e.to_string()).unwrap_or_default();
        tracing::warn!(
            ?peer,
            %reason,
            %error,
            suppressed,
            "TLS handshake failed (counted in rsvisor_tls_handshake_failures_total)"
        );
    }
}

/// Counts a connection that ended in a protocol error; an HTTP/2 one (our
/// GOAWAY to a reset flood, say) is also said, once per interval.
fn connection_failed<H>(shared: &Shared<H>, peer: Peer, e: &(dyn std::error::Error + 'static)) {
    let mut kind = ConnError::Io;
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_too_large() {
                kind = ConnError::Http1;
                break;
            }
        }
        if err.downcast_ref::<h2::Error>().is_some() {
            kind = ConnError::Http2;
            break;
        }
        source = err.source();
    }
    count_conn_error(shared, peer, kind, e);
}

/// Counts a connection that ended in an error of `kind`; an HTTP/2 or
/// HTTP/3 protocol error is also said, once per interval.
pub(super) fn count_conn_error<H>(
    shared: &Shared<H>,
    peer: Peer,
    kind: ConnError,
    e: &dyn std::fmt::Display,
) {
    shared.slot.count_conn_error(kind);
    let protocol = match kind {
        ConnError::Http2 => "HTTP/2",
        ConnError::Http3 => "HTTP/3",
        _ => return,
    };
    if let Some(suppressed) = CONN_ERRORS[kind.index()].admit() {
        tracing::warn!(
            ?peer,
            error = %e,
            suppressed,
            "{protocol} connection ended with a protocol error \
             (counted in rsvisor_connection_errors_total)"
        );
    }
}

/// Serves the connection until it ends, times out, or drain ends it; the
/// socket is closed when this returns, unless the connection went idle and
/// was parked: then it waits for its next request in the worker's lot
/// (see `park`).
async fn drive<IO, H>(
    io: IO,
    proto: Proto,
    shared: &Arc<Shared<H>>,
    state: &Arc<ConnState>,
    stop: &mut watch::Receiver<bool>,
    guard: ConnGuard,
) where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin + Send + 'static,
    H: Handler,
{
    if proto == Proto::H2 {
        state.h2.store(true, Relaxed);
    }
    let http = &shared.config.http;
    let idle_limit = if http.keepalive_timeout.is_zero() {
        // No keep-alive: this only bounds a client that never sends.
        http.header_read_timeout
    } else {
        http.keepalive_timeout
    };
    let parking = proto != Proto::H2 && io.can_park() && !http.keepalive_timeout.is_zero();
    let limits = Limits {
        idle_ms: idle_limit.as_millis() as u64,
        header_ms: http.header_read_timeout.as_millis() as u64,
        send_ms: http.send_timeout.as_millis() as u64,
        park_ms: parking.then_some(park::PARK_AFTER.as_millis() as u64),
    };
    let handoff = parking.then(Handoff::new);
    serve_until_idle(
        io,
        proto,
        shared,
        state,
        stop,
        guard,
        handoff.clone(),
        limits,
    )
    .await;
    let Some((parked, guard)) = handoff.and_then(|h| h.take()) else {
        return;
    };
    let Some(socket) = parked.into_socket() else {
        return;
    };
    // This task, hyper's connection and the connection's state end here;
    // the socket waits in the worker's lot (see `park`).
    let resume = Resume {
        guard,
        peer: state.peer,
        role: state.role,
        shed: state.shed_seen(),
    };
    let deadline_ms = state.idle_since_ms.load(Relaxed) + limits.idle_ms;
    if let Err((e, _closed)) = shared.lot.park(
        Parked {
            socket,
            meta: resume,
        },
        deadline_ms,
    ) {
        if let Some(suppressed) = PARK_ERRORS.admit() {
            tracing::warn!(
                error = %e,
                suppressed,
                "cannot park an idle keep-alive connection; it is closed"
            );
        }
    }
}

static PARK_ERRORS: Throttle = Throttle::new();

/// Serves a parked connection whose next bytes arrived, on a new task.
pub(super) fn resume<H: Handler>(
    shared: &Arc<Shared<H>>,
    stop: &watch::Receiver<bool>,
    parked: Parked<Resume>,
) {
    let Parked { socket, meta } = parked;
    let made = match socket {
        Socket::Tcp(s) => {
            tokio::net::TcpStream::from_std(s).map(|io| spawn_resumed(io, shared, stop, meta))
        }
        Socket::Unix(s) => {
            tokio::net::UnixStream::from_std(s).map(|io| spawn_resumed(io, shared, stop, meta))
        }
    };
    // Only if tokio cannot watch one more descriptor: the socket (and the
    // connection's guard) were dropped, closing it.
    if let Err(e) = made {
        if let Some(suppressed) = PARK_ERRORS.admit() {
            tracing::warn!(
                error = %e,
                suppressed,
                "cannot resume a parked keep-alive connection; it is closed"
            );
        }
    }
}

fn spawn_resumed<IO, H>(io: IO, shared: &Arc<Shared<H>>, stop: &watch::Receiver<bool>, r: Resume)
where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin + Send + 'static,
    H: Handler,
{
    let (shared, mut stop) = (shared.clone(), stop.clone());
    tokio::spawn(async move {
        let Resume {
            guard,
            peer,
            role,
            shed,
        } = r;
        let state = Arc::new(ConnState::new(peer, role, false, shared.now_ms(), shed));
        drive(io, Proto::H1, &shared, &state, &mut stop, guard).await;
    });
}

/// One hyper connection over `io`, until the connection ends, times out,
/// drain ends it, or (with a `handoff`) it goes idle and is parked.
#[allow(clippy::too_many_arguments)]
async fn serve_until_idle<IO, H>(
    io: IO,
    proto: Proto,
    shared: &Arc<Shared<H>>,
    state: &Arc<ConnState>,
    stop: &mut watch::Receiver<bool>,
    guard: ConnGuard,
    handoff: Option<Arc<Handoff<IO>>>,
    limits: Limits,
) where
    IO: AsyncRead + AsyncWrite + Parkable + Unpin + Send + 'static,
    H: Handler,
{
    let _held = shared.conns.hold();
    let service = {
        let (shared, state) = (shared.clone(), state.clone());
        hyper::service::service_fn(move |req| service::respond(&shared, &state, req))
    };
    let (sniff, frames) = match proto {
        Proto::Detect => (Sniff::Undecided(0), None),
        Proto::H1 => (Sniff::H1, None),
        Proto::H2 => (Sniff::H2, Some(Box::new(H2Frames::new(PREFACE.len())))),
    };
    let io = TokioIo::new(Tracked {
        inner: Some(io),
        state: state.clone(),
        clock: shared.clock.clone(),
        sniff,
        frames,
        access_log: shared.access_log.clone(),
        guard: Some(guard),
        handoff,
        tail: Tail::default(),
        unflushed: false,
        upgrade: None,
        upgrade_idle_ms: shared.config.http.upgrade_idle_timeout.as_millis() as u64,
    });
    let builder = match proto {
        Proto::Detect => &shared.auto,
        Proto::H1 => &shared.h1,
        Proto::H2 => &shared.h2,
    };
    // With upgrades: after a 101, hyper hands the IO to the app
    // (`hyper::upgrade::on`, axum's `WebSocketUpgrade`).
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    let mut drain_seen = *stop.borrow();
    if drain_seen && state.h2.load(Relaxed) {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            // In this order, without drawing a random one each poll: hyper
            // is what usually woke the task.
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    connection_failed(shared, state.peer, &*e);
                }
                return;
            }
            expiry = watchdog(shared, state, limits) => {
                match expiry {
                    Expiry::HeadTimeout => {
                        state.end_by(EndedBy::HeadTimeout);
                        // Let hyper read once more: the IO answers 408 and ends.
                        state.send_408.store(true, Relaxed);
                        let _ = tokio::time::timeout(TIMEOUT_RESPONSE_GRACE, conn.as_mut()).await;
                    }
                    Expiry::SendTimeout => {
                        // Set before hyper's connection (and the IO) drops.
                        state.end_by(EndedBy::SendTimeout);
                        shared.slot.count_send_timeout();
                    }
                    Expiry::Idle => {}
                }
                return;
            }
            _ = drain_signal(stop, state), if !drain_seen => {
                drain_seen = true;
                // HTTP/1.1 connections are left alone here: see the module
                // comment.
                if state.h2.load(Relaxed) {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    idle_ms: u64,
    /// When the connection can be parked: how long after it went idle.
    park_ms: Option<u64>,
    header_ms: u64,
    send_ms: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    /// No request in flight for the keep-alive timeout.
    Idle,
    /// A request head has taken longer than `header_read_timeout`.
    HeadTimeout,
    /// A response could not hand the client anything for `send_timeout`
    /// (HTTP/1.1 while its body is produced; any connection while rsvisor
    /// still holds bytes the client has not taken).
    SendTimeout,
}

/// The deadline the connection's situation sets now, and when to look
/// again even if nothing woke the watchdog (a head or a send wait may
/// start meanwhile; their deadlines count from their own start).
fn deadline(state: &ConnState, now: u64, l: Limits) -> (Option<(u64, Expiry)>, u64) {
    let recheck = now + l.header_ms.min(l.idle_ms).min(l.send_ms).max(CLOCK_MS);
    let idle_since = state.idle_since_ms.load(Relaxed);
    let in_flight = state.in_flight.load(Acquire);
    if let Some(since) = state.out.stalled_since(idle_since, in_flight == 0) {
        // Bytes wait for the client, whatever its requests' state: only
        // the send deadline ends it, never the keep-alive one.
        return (Some((since + l.send_ms, Expiry::SendTimeout)), recheck);
    }
    if in_flight > 0 {
        // HTTP/2 streams time their own sends (see `stream_exec`).
        return match state.send.since() {
            Some(since) if !state.h2() => (Some((since + l.send_ms, Expiry::SendTimeout)), recheck),
            _ => (None, recheck),
        };
    }
    match state.head_since_ms.load(Relaxed) {
        0 => {
            // Idle since the last request ended or, if later, its last
            // bytes went out (a slow reader's response ends after both).
            let idle_since = idle_since.max(state.out.progress_ms());
            // Wake when the connection may be parked, so that hyper asks
            // for bytes again and finds it may (see `park`).
            let recheck = match l.park_ms.map(|p| idle_since + p) {
                Some(park_at) if park_at > now => recheck.min(park_at),
                _ => recheck,
            };
            (Some((idle_since + l.idle_ms, Expiry::Idle)), recheck)
        }
        head => (Some((head - 1 + l.header_ms, Expiry::HeadTimeout)), recheck),
    }
}

const CLOCK_MS: u64 = super::clock::CLOCK_TICK.as_millis() as u64;

/// Resolves when the connection has been idle for the keep-alive timeout,
/// a request head has been arriving for longer than `header_read_timeout`,
/// or an HTTP/1.1 response has waited for the client for `send_timeout`.
///
/// It shares the connection's task with hyper and is polled each time the
/// task wakes, several times per request: while its timer has not fired,
/// a poll only asks the timer whether it has (the timer keeps the task's
/// waker from its first poll), which is cheaper than polling it.
struct Watchdog<'a, H: 'static> {
    shared: &'a Shared<H>,
    state: &'a ConnState,
    limits: Limits,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

fn watchdog<'a, H: 'static>(
    shared: &'a Shared<H>,
    state: &'a ConnState,
    limits: Limits,
) -> Watchdog<'a, H> {
    Watchdog {
        shared,
        state,
        limits,
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        armed: false,
    }
}

impl<H: 'static> std::future::Future for Watchdog<'_, H> {
    type Output = Expiry;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expiry> {
        loop {
            if self.armed {
                if !self.sleep.is_elapsed() {
                    return Poll::Pending;
                }
                self.armed = false;
            }
            let now = self.shared.now_ms();
            let (due, recheck) = deadline(self.state, now, self.limits);
            let wake = match due {
                Some((at, expiry)) if now >= at => return Poll::Ready(expiry),
                Some((at, _)) => at.min(recheck),
                None => recheck,
            };
            // The clock moves in ticks: sleeping less than one would spin.
            let nap = Duration::from_millis(wake.saturating_sub(now).max(CLOCK_MS));
            self.sleep.as_mut().reset(tokio::time::Instant::now() + nap);
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.armed = true;
                return Poll::Pending;
            }
        }
    }
}

/// `stop.changed()` for a connection that may speak HTTP/2, the only one
/// drain has something to do for here (GOAWAY): once a connection is known
/// to speak HTTP/1.1, it is not polled (one wake on drain at most).
async fn drain_signal(stop: &mut watch::Receiver<bool>, state: &ConnState) {
    let mut changed = std::pin::pin!(stop.changed());
    std::future::poll_fn(|cx| {
        if state.speaks_h1() {
            return Poll::Pending;
        }
        std::future::Future::poll(changed.as_mut(), cx).map(|_| ())
    })
    .await
}

/// The connection's IO as hyper sees it: notes when a request head starts
/// arriving, answers 408 when told to, and hands the socket over to be
/// parked when the connection goes idle (then hyper sees an end of stream).
struct Tracked<IO: Parkable> {
    /// `None` once handed over for parking.
    inner: Option<IO>,
    state: Arc<ConnState>,
    clock: Arc<AtomicU64>,
    /// Whether the connection speaks HTTP/2, as far as its first bytes say.
    sniff: Sniff,
    /// HTTP/2: which responses h2 still holds the end of.
    frames: Option<Box<H2Frames>>,
    /// To write an HTTP/1.1 response's line once its last byte is out.
    access_log: Option<AccessLog>,
    /// The connection counts as open while this IO lives (in the app, for
    /// an upgraded connection), or while it is parked.
    guard: Option<ConnGuard>,
    handoff: Option<Arc<Handoff<IO>>>,
    tail: Tail,
    /// hyper has written since it last flushed: bytes of a response may
    /// still be in its buffer (it flushes the IO only once its buffer is
    /// empty), so the connection must not be parked. (hyper itself does not
    /// read the next head before that flush; this does not rely on it.)
    unflushed: bool,
    /// Once upgraded: `http.upgrade_idle_timeout`'s watch.
    upgrade: Option<Box<UpgradeIdle>>,
    upgrade_idle_ms: u64,
}

/// When a byte last moved on an upgraded connection, and the timer that
/// wakes its reader or writer at the deadline (boxed and made only on
/// upgrade: other connections do not pay for it).
struct UpgradeIdle {
    moved_ms: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl<IO: Parkable> Drop for Tracked<IO> {
    fn drop(&mut self) {
        if self.state.upgraded.load(Relaxed) {
            if let Some(g) = &self.guard {
                g.upgrade_ended();
            }
        }
        let ended_by = self.state.ended_by();
        if let Some(mut e) = self.state.take_unsent_log() {
            // Its last bytes never left hyper.
            e.incomplete = Some(ended_by.as_str());
            if let Some(log) = &self.access_log {
                log.log(e);
            }
        }
        if matches!(ended_by, EndedBy::SendTimeout | EndedBy::UpgradeIdle) {
            if let Some(io) = &self.inner {
                io.reset_on_close();
            }
        }
    }
}

impl<IO: Parkable> Tracked<IO> {
    /// An upgraded connection moved a byte.
    fn upgrade_moved(&mut self) {
        let now = self.clock.load(Relaxed);
        if let Some(u) = &mut self.upgrade {
            u.moved_ms = now;
        }
    }

    /// An upgraded connection's read or write must wait: whether it has
    /// moved nothing for `upgrade_idle_timeout` (then it is ended, once);
    /// if not, the timer will wake this task at the deadline.
    fn upgrade_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let now = self.clock.load(Relaxed);
        let idle_ms = self.upgrade_idle_ms;
        let u = self.upgrade.get_or_insert_with(|| {
            Box::new(UpgradeIdle {
                moved_ms: now,
                timer: Box::pin(tokio::time::sleep(Duration::from_millis(idle_ms))),
                expired: false,
            })
        });
        if u.expired {
            return true;
        }
        loop {
            let due = u.moved_ms + idle_ms;
            if now >= due {
                u.expired = true;
                self.state.end_by(EndedBy::UpgradeIdle);
                if let Some(g) = &self.guard {
                    g.upgrade_timed_out();
                }
                return true;
            }
            if std::future::Future::poll(u.timer.as_mut(), cx).is_pending() {
                return false;
            }
            // It fired for an older deadline (bytes moved since), or the
            // coarse clock has not caught up yet: wait again.
            let wait = Duration::from_millis((due - now).max(CLOCK_MS));
            u.timer.as_mut().reset(tokio::time::Instant::now() + wait);
        }
    }

    /// A write's result on an upgraded connection, under its idle deadline.
    fn upgraded_write(
        &mut self,
        res: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match res {
            Poll::Ready(Ok(n)) if n > 0 => self.upgrade_moved(),
            Poll::Pending if self.upgrade_idle(cx) => {
                return Poll::Ready(Err(Self::upgrade_timeout_error()));
            }
            _ => {}
        }
        res
    }

    fn upgrade_timeout_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no byte moved for http.upgrade_idle_timeout",
        )
    }

    /// Notes what a write did for the output's deadlines; `wrote(frames, n)`
    /// passes the `n` written bytes to the HTTP/2 frame scan.
    fn note_write(
        &mut self,
        res: &Poll<io::Result<usize>>,
        wrote: impl FnOnce(&mut H2Frames, usize) -> u64,
    ) {
        let now = self.clock.load(Relaxed);
        let out = &self.state.out;
        match res {
            Poll::Pending => out.blocked(now),
            Poll::Ready(Ok(n)) if *n > 0 => match &mut self.frames {
                None => out.progressed(now),
                Some(f) => {
                    out.unblocked();
                    if wrote(f, *n) > 0 {
                        out.progressed(now);
                    }
                    out.set_h2_open(f.open());
                }
            },
            _ => {}
        }
    }
}

/// What hyper gets from a parked connection's IO if it writes anyway.
fn parked_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection parked")
}

impl<IO: AsyncRead + AsyncWrite + Parkable + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if this.state.upgraded.load(Relaxed) {
            // The app's now: no heads to time, only whether bytes move.
            if this.upgrade.as_ref().is_some_and(|u| u.expired) {
                return Poll::Ready(Err(Self::upgrade_timeout_error()));
            }
            let before = buf.filled().len();
            let res = Pin::new(inner).poll_read(cx, buf);
            match res {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    this.upgrade_moved();
                    if let Some(g) = &this.guard {
                        g.upgraded_read();
                    }
                }
                Poll::Pending if this.upgrade_idle(cx) => {
                    return Poll::Ready(Err(Self::upgrade_timeout_error()));
                }
                _ => {}
            }
            return res;
        }
        if this.state.send_408.load(Relaxed) {
            // Best effort: one write attempt, then end of stream.
            let _ = Pin::new(&mut *inner).poll_write(cx, RESPONSE_408);
            let _ = Pin::new(inner).poll_flush(cx);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut *inner).poll_read(cx, buf);
        if res.is_pending() {
            if let (Some(handoff), false) = (&this.handoff, this.unflushed) {
                let held = this.guard.as_ref().map_or(0, |g| g.conns().held());
                if park::should_park(&this.state, &this.tail, this.clock.load(Relaxed), held) {
                    match (this.inner.take(), this.guard.take()) {
                        (Some(io), Some(guard)) => {
                            handoff.put(io, guard);
                            // End of stream: hyper ends without touching the socket.
                            return Poll::Ready(Ok(()));
                        }
                        (io, guard) => {
                            this.inner = io;
                            this.guard = guard;
                        }
                    }
                }
            }
        }
        if let Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            this.tail.push(new);
            if !new.is_empty() {
                if let Sniff::Undecided(seen) = this.sniff {
                    this.sniff = this.sniff.feed(new);
                    if this.sniff == Sniff::H2 {
                        // Its preface is no request head.
                        this.state.h2.store(true, Relaxed);
                        this.state.head_since_ms.store(0, Relaxed);
                        this.frames = Some(Box::new(H2Frames::new(PREFACE.len() - seen)));
                    }
                }
                if let Some(f) = &mut this.frames {
                    f.read(new);
                    this.state.out.set_h2_open(f.open());
                }
                let s = &this.state;
                if s.in_flight.load(Relaxed) == 0
                    && s.head_since_ms.load(Relaxed) == 0
                    && !s.h2.load(Relaxed)
                {
                    s.head_since_ms.store(this.clock.load(Relaxed) + 1, Relaxed);
                }
            }
        }
        res
    }
}

impl<IO: AsyncWrite + Parkable + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.unflushed = true;
        let res = match self.inner.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => return Poll::Ready(Err(parked_error())),
        };
        if self.state.upgraded.load(Relaxed) {
            return self.upgraded_write(res, cx);
        }
        self.note_write(&res, |f, n| f.wrote(&buf[..n]));
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.unflushed = true;
        let res = match self.inner.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => return Poll::Ready(Err(parked_error())),
        };
        if self.state.upgraded.load(Relaxed) {
            return self.upgraded_write(res, cx);
        }
        self.note_write(&res, |f, mut n| {
            let mut data = 0;
            for b in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(b.len());
                data += f.wrote(&b[..take]);
                n -= take;
            }
            data
        });
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = match self.inner.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        };
        match res {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                self.state.out.unblocked();
                if let Some(log) = &self.access_log {
                    // Everything hyper had is out: the response is complete.
                    if let Some(e) = self.state.take_unsent_log() {
                        log.log(e);
                    }
                }
            }
            Poll::Pending => self.state.out.blocked(self.clock.load(Relaxed)),
            Poll::Ready(Err(_)) => {}
        }
        res
    }

    /// A parked connection's socket is not shut down: it lives on.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
