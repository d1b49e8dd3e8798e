//! HTTP/3's keys and QUIC settings: the secret every worker shares (so
//! that one worker's stateless resets and Retry tokens are valid for any
//! other), the connection IDs that name the worker's socket, and the TLS
//! configuration of TCP made fit for QUIC.

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

// aws-lc-rs and ring have the same HMAC, HKDF and random API; use the one
// rustls is built with (quinn implements its key traits for both).
#[cfg(not(feature = "tls-ring"))]
use aws_lc_rs as crypto;
use crypto::rand::{SecureRandom, SystemRandom};
use crypto::{hkdf, hmac};
#[cfg(feature = "tls-ring")]
use ring as crypto;

use super::sessions;
use crate::os::steering::SEAT_BYTES;

const SECRET_LEN: usize = 32;

/// Bytes of the connection IDs a worker issues: its socket's index, then
/// random bytes (RFC 9000 §5.1: an observer must not link two IDs of one
/// connection, so the rest is random, not a counter).
pub const CID_LEN: usize = 8;

/// Requests a client may have open at once on one connection (HTTP/2's
/// is hyper's 200; RFC 9114 §6.1 asks for at least 100).
const MAX_STREAMS: u32 = 100;
/// Flow-control windows: what a client may send ahead on one request
/// stream and on the whole connection, and what the worker keeps unacked
/// for one connection. They bound what a connection that stalls its
/// streams or never acknowledges costs (as HTTP/2's windows do).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

static SECRET: OnceLock<[u8; SECRET_LEN]> = OnceLock::new();

/// Why HTTP/3 could not be set up in a worker.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    #[error("the QUIC secret was not made by the master before the fork")]
    NoSecret,
    #[error("the TLS configuration cannot serve QUIC: {0}")]
    Tls(String),
    #[error("cannot start the QUIC endpoint on its UDP socket: {0}")]
    Endpoint(#[source] io::Error),
    #[error("tls.early_data is on but the master made no shared session table before the fork")]
    NoSessions,
}

/// Makes the secret, in the master before it forks a worker that serves
/// HTTP/3: every worker of every generation then inherits the same one.
pub fn make_secret() -> io::Result<()> {
    if SECRET.get().is_some() {
        return Ok(());
    }
    let mut secret = [0u8; SECRET_LEN];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| io::Error::other("the system random source failed"))?;
    let _ = SECRET.set(secret);
    Ok(())
}

fn secret() -> Result<&'static [u8; SECRET_LEN], QuicSetupError> {
    SECRET.get().ok_or(QuicSetupError::NoSecret)
}

/// The endpoint of the worker whose socket is at index `seat` of its
/// group: its stateless-reset key, and connection IDs that name `seat`.
pub fn endpoint_config(seat: u16) -> Result<quinn::EndpointConfig, QuicSetupError> {
    let secret = secret()?;
    let derive = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let reset = hmac::sign(&derive, b"rsvisor quic stateless reset");
    let reset = hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || Box::new(SeatIds { seat }));
    Ok(config)
}

/// The server side: the TCP TLS configuration with ALPN `h3`, the
/// Retry-token key, and the limits of one connection. With `early_data`
/// (`tls.early_data`: the shared table's sessions, honoured for their
/// lifetime), sessions resume from that table, once each, and may carry
/// 0-RTT data; otherwise from the shared stateless tickets, without.
pub fn server_config(
    tls: &rustls::ServerConfig,
    idle_timeout: Duration,
    early_data: Option<Duration>,
) -> Result<quinn::ServerConfig, QuicSetupError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    if let Some(lifetime) = early_data {
        let table = sessions::inherited_table().ok_or(QuicSetupError::NoSessions)?;
        // rustls takes early data only on a session it takes from a store
        // (a stateless ticket could be replayed), and QUIC allows no limit
        // on it but none or all (RFC 9001 §4.6.1).
        tls.ticketer = Arc::new(sessions::NoTickets);
        tls.session_storage = Arc::new(sessions::SharedSessions::new(table, lifetime));
        tls.max_early_data_size = u32::MAX;
        // Each connection takes one and gets one: more would only evict
        // other clients' sessions from the table sooner.
        tls.send_tls13_tickets = 1;
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| QuicSetupError::Tls(e.to_string()))?;
    let token_key =
        hkdf::Salt::new(hkdf::HKDF_SHA256, b"rsvisor quic retry token").extract(secret()?);
    let mut config = quinn::ServerConfig::new(Arc::new(crypto), Arc::new(token_key));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(CONNECTION_WINDOW.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Connection IDs that start with the socket's index in its group.
struct SeatIds {
    seat: u16,
}

impl quinn::ConnectionIdGenerator for SeatIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; CID_LEN];
        id[..SEAT_BYTES].copy_from_slice(&self.seat.to_be_bytes());
        // A failed random source leaves zeros: the ID still routes, and
        // the connection's keys do not depend on it.
        let _ = SystemRandom::new().fill(&mut id[SEAT_BYTES..]);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::ConnectionIdGenerator;

    #[test]
    fn ids_name_the_seat_and_differ() {
        let mut g = SeatIds { seat: 0x0102 };
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(&a[..2], &[1, 2]);
        assert_eq!(&b[..2], &[1, 2]);
        assert_ne!(a, b);
    }
}
