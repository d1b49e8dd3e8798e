//! HTTP/3 (`http.http3`): a quinn endpoint on this worker's UDP socket in
//! the group of each TLS address (`net::quic_group`), HTTP/3 by h3, and
//! every request through the same path as HTTP/1.1 and HTTP/2
//! (`service::respond`): limits, built-in endpoints, the app, counters,
//! the access log.
//!
//! Drain: each connection gets a `GOAWAY` (requests the client sent before
//! it are answered; later ones are the client's to retry on a new
//! connection, which the master's steering sends to the new generation),
//! then is closed with `H3_NO_ERROR` once it holds no request.

mod handshake;
mod request;

use handshake::{handshake_done, Handshaking};

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::watch;

use super::conn::count_conn_error;
use super::conn_info::{ConnState, Peer};
use super::{BootListener, ListenRole, Shared};
use crate::app::Handler;
use crate::proto::outcome::ConnError;
use crate::tls::quic::{self, QuicSetupError};

/// RFC 9114 §8.1: the connection closed without error.
const H3_NO_ERROR: u32 = 0x100;

/// How often a connection with requests in flight is looked at again for
/// idleness once its idle deadline passed (a draining one, or one with a
/// zero `keepalive_timeout`, closes this soon after its last request).
const IDLE_POLL: Duration = Duration::from_millis(50);

/// How long a connection stays open after our `GOAWAY` for the requests
/// the client sent before it read the frame: three round trips, at least
/// `GOAWAY_LINGER_MIN` (a busy client sends late), at most
/// `GOAWAY_LINGER_MAX`.
fn linger(conn: &quinn::Connection) -> Duration {
    (conn.rtt() * 3).clamp(GOAWAY_LINGER_MIN, GOAWAY_LINGER_MAX)
}

const GOAWAY_LINGER_MIN: Duration = Duration::from_millis(100);
const GOAWAY_LINGER_MAX: Duration = Duration::from_secs(1);

/// Requests that may still arrive after our `GOAWAY` and be answered:
/// those the client sent while the frame was on its way.
const GOAWAY_GRACE_REQUESTS: usize = 1;

/// Handshakes in progress in one worker above which a client whose address
/// is not validated yet gets a Retry first (RFC 9000 §8.1): a flood of
/// Initial packets from forged addresses then costs one stateless packet
/// each instead of a handshake's keys and state, and a real client pays
/// one round trip more.
pub const RETRY_ABOVE_HANDSHAKES: usize = 32;

/// How long a client may remember that HTTP/3 is offered (`ma`): a day,
/// as the common servers say.
const ALT_SVC_MAX_AGE_SECS: u32 = 86_400;

/// The `Alt-Svc` field that offers HTTP/3 on the UDP ports of `sockets`
/// (every one serves the same app), for responses over TLS on TCP.
pub fn alt_svc(sockets: &[BootListener]) -> Option<http::HeaderValue> {
    let mut ports: Vec<u16> = sockets
        .iter()
        .filter_map(|l| socket2::SockRef::from(&l.fd).local_addr().ok())
        .filter_map(|a| a.as_socket())
        .map(|a| a.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let offers: Vec<String> = ports
        .iter()
        .map(|port| format!("h3=\":{port}\"; ma={ALT_SVC_MAX_AGE_SECS}"))
        .collect();
    if offers.is_empty() {
        return None;
    }
    http::HeaderValue::from_str(&offers.join(", ")).ok()
}

/// Starts serving HTTP/3 on `sockets` (this worker's socket in each group,
/// whose index its connection IDs name).
pub fn start<H: Handler>(
    sockets: Vec<BootListener>,
    shared: &Arc<Shared<H>>,
    stop: &watch::Receiver<bool>,
) -> Result<(), QuicSetupError> {
    if sockets.is_empty() {
        return Ok(());
    }
    let tls = shared
        .tls
        .as_ref()
        .map(|acceptor| acceptor.config().clone())
        .ok_or_else(|| QuicSetupError::Tls("no [tls] certificate".into()))?;
    let tls_keys = &shared.config.tls;
    let early_data = tls_keys
        .early_data
        .then_some(tls_keys.session_ticket_lifetime);
    let server = quic::server_config(&tls, shared.config.http.keepalive_timeout, early_data)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    for l in sockets {
        let ListenRole::Quic { seat } = l.role else {
            continue;
        };
        let endpoint_config = quic::endpoint_config(seat)?;
        let socket = UdpSocket::from(l.fd);
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server.clone()),
            socket,
            runtime.clone(),
        )
        .map_err(QuicSetupError::Endpoint)?;
        tokio::spawn(accept(endpoint, shared.clone(), stop.clone()));
    }
    Ok(())
}

/// Takes new connections for as long as the worker lives: the master
/// stops sending new ones before it asks the worker to drain, and one that
/// arrives in between gets its `GOAWAY` at once.
async fn accept<H: Handler>(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<H>>,
    stop: watch::Receiver<bool>,
) {
    let handshaking = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        if handshaking.load(Relaxed) >= RETRY_ABOVE_HANDSHAKES && incoming.may_retry() {
            // `may_retry` is false once the address is validated, so a
            // client is asked at most once.
            let _ = incoming.retry();
            continue;
        }
        handshaking.fetch_add(1, Relaxed);
        let handshake = Handshaking(handshaking.clone());
        tokio::spawn(connection(
            incoming,
            handshake,
            shared.clone(),
            stop.clone(),
        ));
    }
}

async fn connection<H: Handler>(
    incoming: quinn::Incoming,
    handshake: Handshaking,
    shared: Arc<Shared<H>>,
    mut stop: watch::Receiver<bool>,
) {
    let guard = shared.conns.open();
    let peer = Peer::Tcp(incoming.remote_address());
    // The handshake and the first request count against the header
    // timeout, as on TCP.
    let limit = shared.config.http.header_read_timeout;
    let Some((conn, handshake)) = handshake_done(incoming, handshake, &shared, peer).await else {
        return;
    };
    let state = Arc::new(ConnState::new(
        peer,
        ListenRole::Tls,
        true,
        shared.now_ms(),
        shared.slot.shed_epoch(),
    ));
    let mut builder = h3::server::builder();
    builder.max_field_section_size(shared.config.http.max_header_bytes as u64);
    // Setting up opens our control stream, which a client that grants no
    // stream can hold: bounded like the handshake.
    let setup = builder.build(h3_quinn::Connection::new(conn.clone()));
    let mut h3 = match tokio::time::timeout(limit, setup).await {
        Ok(Ok(h3)) => h3,
        Ok(Err(e)) => {
            connection_failed(&shared, peer, &e);
            return;
        }
        Err(_) => {
            conn.close(H3_NO_ERROR.into(), b"");
            return;
        }
    };
    // One clone per request task: the connection holds no request when
    // it is the only one left.
    let requests = Arc::new(());
    let http = &shared.config.http;
    let send_timeout = http.send_timeout;
    let mut draining = *stop.borrow();
    if draining {
        // A client that grants no flow control cannot hold the drain.
        let _ = tokio::time::timeout(send_timeout, h3.shutdown(GOAWAY_GRACE_REQUESTS)).await;
    }
    // When the connection is next looked at for idleness: the first
    // request must come within the header timeout; after a request,
    // `keepalive_timeout` without one in flight closes it (QUIC's own idle
    // timer does not, since a client's PINGs reset it); a draining one
    // closes as soon as it holds none, once the requests the client sent
    // before it read our GOAWAY have had time to arrive.
    let idle_for = |draining: bool| {
        if draining {
            Duration::ZERO
        } else {
            http.keepalive_timeout
        }
    };
    let mut idle_at = tokio::time::Instant::now() + if draining { linger(&conn) } else { limit };
    loop {
        let accepted = tokio::select! {
            r = h3.accept() => r,
            _ = stop.changed(), if !draining => {
                draining = true;
                let _ = tokio::time::timeout(send_timeout, h3.shutdown(GOAWAY_GRACE_REQUESTS)).await;
                idle_at = tokio::time::Instant::now() + linger(&conn);
                continue;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                if Arc::strong_count(&requests) == 1 {
                    break;
                }
                // Requests in flight: looked at again later, never in a
                // tight loop (a zero keep-alive, a drain).
                idle_at = tokio::time::Instant::now() + idle_for(draining).max(IDLE_POLL);
                continue;
            }
        };
        match accepted {
            Err(e) => {
                connection_failed(&shared, peer, &e);
                break;
            }
            Ok(Some(resolver)) => {
                idle_at = tokio::time::Instant::now() + idle_for(draining);
                let (s, st, held) = (shared.clone(), state.clone(), requests.clone());
                let handshake = handshake.clone();
                tokio::spawn(async move {
                    request::serve(resolver, s, st, handshake).await;
                    drop(held);
                });
            }
            Ok(None) => break,
        }
    }
    conn.close(H3_NO_ERROR.into(), b"");
    drop(guard);
}

/// Counts an HTTP/3 connection that did not end cleanly: a protocol error
/// (ours or the client's) as `http3`, said once per interval; a lost or
/// reset connection as `io`. An idle timeout or `H3_NO_ERROR` is no error.
fn connection_failed<H>(shared: &Shared<H>, peer: Peer, e: &h3::error::ConnectionError) {
    use h3::error::ConnectionError as E;
    use h3::quic::ConnectionErrorIncoming as Incoming;
    if e.is_h3_no_error() {
        return;
    }
    let kind = match e {
        E::Timeout { .. }
        | E::Remote {
            0: Incoming::Timeout,
            ..
        } => return,
        E::Local { .. }
        | E::Remote {
            0: Incoming::ApplicationClose { .. },
            ..
        } => ConnError::Http3,
        _ => ConnError::Io,
    };
    count_conn_error(shared, peer, kind, e);
}
