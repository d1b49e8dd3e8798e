//! One client connection: HTTP/1.1 or HTTP/2 through hyper, with the
//! keep-alive idle timeout and drain behaviour rsvisor promises.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::service::ConnService;
use super::{ListenRole, Shared};
use crate::app::Handler;

#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

/// Per-connection bookkeeping, shared with its requests.
pub struct ConnState {
    pub peer: Peer,
    pub role: ListenRole,
    in_flight: AtomicU32,
    /// Worker-epoch milliseconds when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// The client speaks HTTP/2 (seen on its first request).
    h2: AtomicBool,
}

impl ConnState {
    pub fn request_started(&self, is_h2: bool) {
        self.in_flight.fetch_add(1, Relaxed);
        if is_h2 {
            self.h2.store(true, Relaxed);
        }
    }

    pub fn request_finished(&self, now_ms: u64) {
        self.idle_since_ms.store(now_ms, Relaxed);
        self.in_flight.fetch_sub(1, Release);
    }
}

pub async fn serve<IO, H>(
    io: IO,
    peer: Peer,
    role: ListenRole,
    shared: Arc<Shared<H>>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    shared.connection_opened();
    let state = Arc::new(ConnState {
        peer,
        role,
        in_flight: AtomicU32::new(0),
        idle_since_ms: AtomicU64::new(shared.now_ms()),
        h2: AtomicBool::new(false),
    });
    drive(io, &shared, &state, &mut stop).await;
    shared.connection_closed();
}

/// Serves the connection until it ends, its idle time is up, or drain ends
/// it; the socket is closed when this returns.
async fn drive<IO, H>(
    io: IO,
    shared: &Arc<Shared<H>>,
    state: &Arc<ConnState>,
    stop: &mut watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let service = ConnService::new(shared.clone(), state.clone());
    let conn = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);

    let keepalive = idle_limit(shared);
    let mut drain_seen = *stop.borrow();
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = idle_expired(shared, state, keepalive) => break,
            _ = stop.changed(), if !drain_seen => {
                drain_seen = true;
                // HTTP/2 has a way to say "no new streams": GOAWAY. HTTP/1.1
                // connections are left alone here: their next response says
                // `Connection: close` (see the service), and an idle one is
                // closed only when its keep-alive time is up, because closing
                // it now races with a request the client may be sending.
                if state.h2.load(Relaxed) {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// How long a connection may sit without a request in flight.
fn idle_limit<H>(shared: &Shared<H>) -> Duration {
    let http = &shared.config.http;
    if http.keepalive_timeout.is_zero() {
        // No keep-alive: this only bounds a client that never sends.
        http.header_read_timeout
    } else {
        http.keepalive_timeout
    }
}

/// Resolves when the connection has had no request in flight for `limit`.
async fn idle_expired<H>(shared: &Shared<H>, state: &ConnState, limit: Duration) {
    let limit_ms = limit.as_millis() as u64;
    loop {
        let since = state.idle_since_ms.load(Relaxed);
        let deadline = shared.epoch + Duration::from_millis(since + limit_ms);
        tokio::time::sleep_until(deadline).await;
        if state.in_flight.load(Acquire) == 0 {
            if state.idle_since_ms.load(Relaxed) == since {
                return;
            }
            // A request came and went: measure again from its end.
            continue;
        }
        // Busy: look again later; the request's end resets the clock.
        tokio::time::sleep(limit).await;
    }
}
