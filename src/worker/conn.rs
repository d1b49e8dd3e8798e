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

use super::conn_state::{ConnState, How, Peer};
use super::proxy_protocol;
use super::service::ConnService;
use super::{ListenRole, Shared};
use crate::app::Handler;

/// How long a connection may take to read a 408 we queued before it is
/// dropped anyway.
const TIMEOUT_RESPONSE_GRACE: Duration = Duration::from_secs(1);

const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

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
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    shared.connection_opened();
    // Counted closed even if the app panics inside this task.
    let _open = OpenConnection(&shared);
    if how.proxy_protocol {
        // The header counts against the header timeout; a connection
        // without a valid one is closed.
        let limit = shared.config.http.header_read_timeout;
        if let Ok(Ok((source, io))) = tokio::time::timeout(limit, proxy_protocol::accept(io)).await
        {
            let peer = match source {
                proxy_protocol::Source::Client(addr) => Peer::Tcp(addr),
                proxy_protocol::Source::Local => peer,
            };
            serve_http(io, peer, how.role, &shared, stop).await;
        }
    } else {
        serve_http(io, peer, how.role, &shared, stop).await;
    }
}

/// Marks the connection closed when dropped (also while unwinding).
struct OpenConnection<'a, H>(&'a Shared<H>);

impl<H> Drop for OpenConnection<'_, H> {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

async fn serve_http<IO, H>(
    io: IO,
    peer: Peer,
    role: ListenRole,
    shared: &Arc<Shared<H>>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let tls = match role {
        ListenRole::Tls => shared.tls.clone(),
        _ => None,
    };
    let state = Arc::new(ConnState::new(peer, role, tls.is_some(), shared.now_ms()));
    match tls {
        None => {
            let proto = if shared.config.http.http2 {
                Proto::Detect
            } else {
                Proto::H1
            };
            drive(io, proto, shared, &state, &mut stop).await;
        }
        Some(acceptor) => {
            // The handshake counts against the header timeout.
            let limit = shared.config.http.header_read_timeout;
            if let Ok(Ok(stream)) = tokio::time::timeout(limit, acceptor.accept(io)).await {
                let proto = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Proto::H2,
                    _ => Proto::H1,
                };
                drive(stream, proto, shared, &state, &mut stop).await;
            }
        }
    }
}

/// Serves the connection until it ends, times out, or drain ends it; the
/// socket is closed when this returns.
async fn drive<IO, H>(
    io: IO,
    proto: Proto,
    shared: &Arc<Shared<H>>,
    state: &Arc<ConnState>,
    stop: &mut watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    if proto == Proto::H2 {
        state.h2.store(true, Relaxed);
    }
    let service = ConnService::new(shared.clone(), state.clone());
    let io = TokioIo::new(Tracked {
        inner: io,
        state: state.clone(),
        clock: shared.clock.clone(),
        first_read: true,
    });
    let builder = match proto {
        Proto::Detect => &shared.auto,
        Proto::H1 => &shared.h1,
        Proto::H2 => &shared.h2,
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);

    let http = &shared.config.http;
    let idle_limit = if http.keepalive_timeout.is_zero() {
        // No keep-alive: this only bounds a client that never sends.
        http.header_read_timeout
    } else {
        http.keepalive_timeout
    };
    let mut drain_seen = *stop.borrow();
    if drain_seen && state.h2.load(Relaxed) {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            expiry = watchdog(shared, state, idle_limit, http.header_read_timeout) => {
                if expiry == Expiry::ClientTimeout {
                    // Let hyper read once more: the IO answers 408 and ends.
                    state.send_408.store(true, Relaxed);
                    let _ = tokio::time::timeout(TIMEOUT_RESPONSE_GRACE, conn.as_mut()).await;
                }
                return;
            }
            _ = stop.changed(), if !drain_seen => {
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

#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    Idle,
    /// A request head, or a request body the app waits for, has taken
    /// longer than `header_read_timeout`.
    ClientTimeout,
}

/// Resolves when the connection has been idle for `idle`, or the client
/// has been sending a request head, or stalled in the middle of a body,
/// for longer than `header`.
async fn watchdog<H>(
    shared: &Shared<H>,
    state: &ConnState,
    idle: Duration,
    header: Duration,
) -> Expiry {
    let idle_ms = idle.as_millis() as u64;
    let header_ms = header.as_millis() as u64;
    loop {
        if state.in_flight.load(Acquire) > 0 {
            let stall = state.body_stall.load(Relaxed);
            if stall == 0 {
                // The app is working: look again later.
                tokio::time::sleep(header.min(idle).max(super::shared::CLOCK_TICK)).await;
                continue;
            }
            let deadline = stall - 1 + header_ms;
            let now = shared.now_ms();
            if now >= deadline {
                if state.body_stall.load(Relaxed) == stall {
                    return Expiry::ClientTimeout;
                }
                continue;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
            continue;
        }
        let head = state.head_since_ms.load(Relaxed);
        let (deadline_ms, expiry) = if head != 0 {
            (head - 1 + header_ms, Expiry::ClientTimeout)
        } else {
            (state.idle_since_ms.load(Relaxed) + idle_ms, Expiry::Idle)
        };
        let now = shared.now_ms();
        if now >= deadline_ms {
            // Still the same situation?
            let same = state.in_flight.load(Acquire) == 0
                && match expiry {
                    Expiry::ClientTimeout => state.head_since_ms.load(Relaxed) == head,
                    Expiry::Idle => state.head_since_ms.load(Relaxed) == 0,
                };
            if same {
                return expiry;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(deadline_ms - now)).await;
    }
}

/// The connection's IO as hyper sees it: notes when a request head starts
/// arriving, and answers 408 when told to.
struct Tracked<IO> {
    inner: IO,
    state: Arc<ConnState>,
    clock: Arc<AtomicU64>,
    first_read: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.state.send_408.load(Relaxed) {
            // Best effort: one write attempt, then end of stream.
            let _ = Pin::new(&mut this.inner).poll_write(cx, RESPONSE_408);
            let _ = Pin::new(&mut this.inner).poll_flush(cx);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                if this.first_read {
                    this.first_read = false;
                    if new.starts_with(&H2_PREFACE_START[..new.len().min(H2_PREFACE_START.len())]) {
                        this.state.h2.store(true, Relaxed);
                    }
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

super::forward_async_write!(Tracked);
