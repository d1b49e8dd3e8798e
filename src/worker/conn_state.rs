//! What a connection is, shared by the accept loop, the connection and
//! its requests: who the peer is, how the listener serves, and the
//! per-connection bookkeeping the timeouts read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use super::ListenRole;

#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

/// How connections of a listener are served.
#[derive(Debug, Clone, Copy)]
pub struct How {
    pub role: ListenRole,
    pub proxy_protocol: bool,
}

/// Per-connection bookkeeping, shared with its requests.
pub struct ConnState {
    pub peer: Peer,
    pub role: ListenRole,
    pub tls: bool,
    pub(super) in_flight: AtomicU32,
    /// Worker-clock milliseconds when the connection last became idle.
    pub(super) idle_since_ms: AtomicU64,
    /// When the first bytes of a pending request head arrived (+1; 0 = no
    /// head pending).
    pub(super) head_since_ms: AtomicU64,
    /// HTTP/2: no request heads to time, GOAWAY on drain.
    pub(super) h2: AtomicBool,
    /// Set by the first HTTP/1.x request.
    h1: AtomicBool,
    /// Set when the head timed out: the IO answers 408 and ends.
    pub(super) send_408: AtomicBool,
    /// The connection switched protocols (101): the app owns it.
    pub(super) upgraded: AtomicBool,
    /// The last request came without a body (so hyper has nothing of it
    /// left to read once it is answered): see `park`.
    pub(super) last_bodiless: AtomicBool,
    /// HTTP/1.1: since when the response waits for the client to take
    /// what it was given (HTTP/2 streams have their own, see `stream_exec`).
    pub send: SendWatch,
    /// The slot's shed epoch this connection has answered to (see
    /// `Slot::shed_connections`).
    shed_seen: AtomicU32,
}

/// Since when a response has been waiting for the client: set when its
/// head is ready and each time its body hands hyper a chunk; cleared when
/// hyper comes back for more (or the body is done). A response that
/// waits for `http.send_timeout` is ended.
#[derive(Debug, Default)]
pub struct SendWatch {
    /// Worker-clock milliseconds + 1; 0 = not waiting.
    since_ms: AtomicU64,
}

impl SendWatch {
    pub fn waiting(&self, now_ms: u64) {
        self.since_ms.store(now_ms + 1, Relaxed);
    }

    pub fn moving(&self) {
        self.since_ms.store(0, Relaxed);
    }

    /// When it started waiting, if it is.
    pub fn since(&self) -> Option<u64> {
        match self.since_ms.load(Relaxed) {
            0 => None,
            n => Some(n - 1),
        }
    }
}

impl ConnState {
    pub fn new(peer: Peer, role: ListenRole, tls: bool, now_ms: u64, shed: u32) -> ConnState {
        ConnState {
            peer,
            role,
            tls,
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            head_since_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            h1: AtomicBool::new(false),
            send_408: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            last_bodiless: AtomicBool::new(false),
            send: SendWatch::default(),
            shed_seen: AtomicU32::new(shed),
        }
    }

    /// The shed epoch this connection has answered to, for the connection
    /// that continues it after parking.
    pub fn shed_seen(&self) -> u32 {
        self.shed_seen.load(Relaxed)
    }

    /// Whether the master asked (since this connection last answered it)
    /// for kept-alive connections to be closed.
    pub fn must_shed(&self, epoch: u32) -> bool {
        self.shed_seen.swap(epoch, Relaxed) != epoch
    }

    pub fn request_started(&self, bodiless: bool, version: http::Version) {
        if version < http::Version::HTTP_2 {
            self.h1.store(true, Relaxed);
        }
        self.in_flight.fetch_add(1, Relaxed);
        self.last_bodiless.store(bodiless, Relaxed);
        self.head_since_ms.store(0, Relaxed);
    }

    pub fn request_finished(&self, now_ms: u64) {
        self.idle_since_ms.store(now_ms, Relaxed);
        self.in_flight.fetch_sub(1, Release);
    }

    /// The response about to go out switches protocols (101).
    pub fn upgrading(&self) {
        self.upgraded.store(true, Relaxed);
    }

    pub fn h2(&self) -> bool {
        self.h2.load(Relaxed)
    }

    /// The connection has carried an HTTP/1.x request (so it is not, and
    /// will not become, an HTTP/2 one).
    pub fn speaks_h1(&self) -> bool {
        self.h1.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_shed_once_per_request_of_the_master() {
        let c = ConnState::new(Peer::Unix, ListenRole::App, false, 0, 3);
        // Opened after the master's third request: not shed for it.
        assert!(!c.must_shed(3));
        assert!(c.must_shed(4));
        assert!(!c.must_shed(4));
    }
}
