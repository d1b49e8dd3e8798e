//! A QUIC connection's handshake: bounded by the header timeout, counted
//! by reason when it fails, and with `tls.early_data` run alongside the
//! connection's first requests (0-RTT), which learn when it completes.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::watch;

use super::super::conn::tls_failed;
use super::super::conn_info::Peer;
use super::super::Shared;
use super::H3_NO_ERROR;
use crate::app::Handler;
use crate::proto::outcome::TlsFailure;

/// Counts a handshake in progress until dropped.
pub(super) struct Handshaking(pub(super) Arc<AtomicUsize>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Whether a connection's handshake has completed: until it has, its
/// requests may have come in 0-RTT early data, which an attacker may have
/// recorded and replayed (`tls.early_data`).
#[derive(Clone)]
pub struct Handshake(watch::Receiver<bool>);

impl Handshake {
    fn completed() -> Handshake {
        Handshake(watch::channel(true).1)
    }

    pub fn is_complete(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for the handshake to complete (a replayed first flight never
    /// completes it); false if it failed.
    pub async fn complete(&mut self) -> bool {
        self.0.wait_for(|done| *done).await.is_ok()
    }
}

/// The connection once it may carry requests: after the handshake, or with
/// `tls.early_data` at once (0.5-RTT: a resuming client's early data is
/// read before its handshake completes, which then completes in a task).
/// A failed handshake is counted and gives none.
pub(super) async fn handshake_done<H: Handler>(
    incoming: quinn::Incoming,
    handshaking: Handshaking,
    shared: &Arc<Shared<H>>,
    peer: Peer,
) -> Option<(quinn::Connection, Handshake)> {
    let limit = shared.config.http.header_read_timeout;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tls_failed(shared, peer, handshake_failure(&e), Some(&e));
            return None;
        }
    };
    let connecting = if shared.config.tls.early_data {
        match connecting.into_0rtt() {
            Ok((conn, completed)) => {
                let (done, handshake) = watch::channel(false);
                let (shared, c) = (shared.clone(), conn.clone());
                let deadline = tokio::time::Instant::now() + limit;
                tokio::spawn(async move {
                    let completed = tokio::time::timeout_at(deadline, completed).await;
                    drop(handshaking);
                    // It resolves (to whether 0-RTT was taken) when the
                    // handshake completes or the connection is lost.
                    match (completed, c.close_reason()) {
                        // We close a connection before its handshake
                        // completes at the same deadline (its HTTP/3 set-up
                        // timed out), or after counting why.
                        (_, Some(quinn::ConnectionError::LocallyClosed)) => {
                            if tokio::time::Instant::now() >= deadline {
                                tls_failed(&shared, peer, TlsFailure::Timeout, None);
                            }
                        }
                        (_, Some(e)) => tls_failed(&shared, peer, handshake_failure(&e), Some(&e)),
                        (Ok(_), None) => {
                            let _ = done.send(true);
                        }
                        (Err(_), None) => {
                            tls_failed(&shared, peer, TlsFailure::Timeout, None);
                            c.close(H3_NO_ERROR.into(), b"");
                        }
                    }
                });
                return Some((conn, Handshake(handshake)));
            }
            Err(connecting) => connecting,
        }
    } else {
        connecting
    };
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(conn)) => {
            drop(handshaking);
            Some((conn, Handshake::completed()))
        }
        Ok(Err(e)) => {
            tls_failed(shared, peer, handshake_failure(&e), Some(&e));
            None
        }
        Err(_) => {
            tls_failed(shared, peer, TlsFailure::Timeout, None);
            None
        }
    }
}

/// Which `rsvisor_tls_handshake_failures_total` reason a failed QUIC
/// handshake counts as (the handshake of QUIC is TLS 1.3's).
fn handshake_failure(e: &quinn::ConnectionError) -> TlsFailure {
    use quinn::ConnectionError as E;
    let code = match e {
        E::TimedOut => return TlsFailure::Timeout,
        E::TransportError(t) => u64::from(t.code),
        E::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return TlsFailure::Io,
    };
    // RFC 9001 §4.8: a TLS alert is carried as 0x100 + its number.
    match code.checked_sub(0x100) {
        Some(ALERT_CERTIFICATE_REQUIRED) => TlsFailure::NoCertificate,
        Some(a) if (ALERT_BAD_CERTIFICATE..=ALERT_UNKNOWN_CA).contains(&a) => {
            TlsFailure::BadCertificate
        }
        Some(a) if a < 0x100 => TlsFailure::Protocol,
        _ => TlsFailure::Io,
    }
}

/// TLS alerts (RFC 8446 §6): bad_certificate … unknown_ca are about the
/// certificate; certificate_required says none came.
const ALERT_BAD_CERTIFICATE: u64 = 42;
const ALERT_UNKNOWN_CA: u64 = 48;
const ALERT_CERTIFICATE_REQUIRED: u64 = 116;
