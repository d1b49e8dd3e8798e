//! What a connection is, shared by the accept loop, the connection and
//! its requests: who the peer is, how the listener serves, and the
//! per-connection bookkeeping the timeouts read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex};

use crate::app::ClientInfo;

use super::access_log::Entry;
use super::ListenRole;

#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl Peer {
    /// The peer as the client, before any forwarding header is looked at.
    pub fn as_client(self, tls: bool) -> ClientInfo {
        ClientInfo {
            addr: match self {
                Peer::Tcp(a) => Some(a),
                Peer::Unix => None,
            },
            scheme: if tls { "https" } else { "http" },
            host: None,
        }
    }
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
    /// What the connection has handed to the socket and the client has not
    /// taken yet (see `OutWatch`).
    pub out: OutWatch,
    /// The slot's shed epoch this connection has answered to (see
    /// `Slot::shed_connections`).
    shed_seen: AtomicU32,
    /// HTTP/1.1: the access-log line of the last response, written once its
    /// last byte has left hyper's buffers (or the connection ended).
    unsent_log: Mutex<Option<Box<Entry>>>,
    /// Which deadline ended the connection, if one did.
    ended_by: AtomicU8,
    /// The peer as the client: every request's unless the peer is a
    /// trusted proxy (`Trust::client_of`).
    pub client: Arc<ClientInfo>,
}

/// Why a connection was ended by rsvisor rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndedBy {
    /// It was not (it ended, or the client went away).
    Nothing = 0,
    /// `http.send_timeout`: the client took nothing for that long.
    SendTimeout = 1,
    /// `http.header_read_timeout`.
    HeadTimeout = 2,
    /// `http.upgrade_idle_timeout`: an upgraded connection moved nothing.
    UpgradeIdle = 3,
}

impl EndedBy {
    /// As the access log says it of a response that did not go out whole.
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Nothing => "connection_closed",
            EndedBy::SendTimeout => "send_timeout",
            EndedBy::HeadTimeout => "header_read_timeout",
            EndedBy::UpgradeIdle => "upgrade_idle_timeout",
        }
    }
}

/// The connection's output as the socket sees it, apart from any request:
/// a response whose body the app has finished is still going out while
/// hyper (HTTP/1.1), h2's stream buffers or TLS hold bytes of it. While
/// they do, the connection is not idle: only `http.send_timeout` (no
/// progress for that long) may end it, never `http.keepalive_timeout`.
#[derive(Debug, Default)]
pub struct OutWatch {
    /// Worker-clock milliseconds + 1 since a write or flush has waited for
    /// the socket; 0 = the last one went through.
    blocked_since_ms: AtomicU64,
    /// When output last made progress (HTTP/1.1: any byte; HTTP/2: DATA).
    progress_ms: AtomicU64,
    /// HTTP/2: responses whose HEADERS went out and whose END_STREAM (or
    /// RST_STREAM) has not: h2 still holds the end of their bodies.
    h2_open: AtomicU32,
}

impl OutWatch {
    pub fn blocked(&self, now_ms: u64) {
        if self.blocked_since_ms.load(Relaxed) == 0 {
            self.blocked_since_ms.store(now_ms + 1, Relaxed);
        }
    }

    pub fn progressed(&self, now_ms: u64) {
        self.blocked_since_ms.store(0, Relaxed);
        self.progress_ms.store(now_ms, Relaxed);
    }

    /// A flush went through: nothing waits for the socket.
    pub fn unblocked(&self) {
        self.blocked_since_ms.store(0, Relaxed);
    }

    pub fn set_h2_open(&self, n: usize) {
        self.h2_open.store(n as u32, Relaxed);
    }

    /// When output started waiting on the client, if it does: a write the
    /// socket refused, or (HTTP/2, once no request is in flight) bodies h2
    /// holds that have not moved since `idle_since_ms`. Streams whose
    /// bodies are still being produced time their own sends
    /// (`stream_exec`), and are reset one by one.
    pub fn stalled_since(&self, idle_since_ms: u64, requests_done: bool) -> Option<u64> {
        match self.blocked_since_ms.load(Relaxed) {
            0 if requests_done && self.h2_open.load(Relaxed) > 0 => {
                Some(self.progress_ms.load(Relaxed).max(idle_since_ms))
            }
            0 => None,
            n => Some(n - 1),
        }
    }

    /// When bytes last went out.
    pub fn progress_ms(&self) -> u64 {
        self.progress_ms.load(Relaxed)
    }
}

/// Since when a response has been waiting for the client: set when its
/// head is ready and each time its body hands hyper a chunk; cleared when
/// hyper comes back for more (or the body is done). A response that
/// waits for `http.send_timeout` is ended.
#[derive(Debug, Default)]
pub struct SendWatch {
    /// Worker-clock milliseconds + 1; 0 = not waiting.
    since_ms: AtomicU64,
    /// The stream was reset because of it.
    timed_out: AtomicBool,
}

impl SendWatch {
    pub fn waiting(&self, now_ms: u64) {
        self.since_ms.store(now_ms + 1, Relaxed);
    }

    pub fn moving(&self) {
        self.since_ms.store(0, Relaxed);
    }

    pub fn time_out(&self) {
        self.timed_out.store(true, Relaxed);
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Relaxed)
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
            out: OutWatch::default(),
            shed_seen: AtomicU32::new(shed),
            unsent_log: Mutex::new(None),
            ended_by: AtomicU8::new(EndedBy::Nothing as u8),
            client: Arc::new(peer.as_client(tls)),
        }
    }

    /// HTTP/1.1: keeps the response's access-log line until its last byte
    /// has left hyper (`take_unsent_log`); returns a previous one that is
    /// still kept (pipelined requests), to be written now.
    pub fn defer_log(&self, e: Box<Entry>) -> Option<Box<Entry>> {
        self.unsent_log.lock().ok()?.replace(e)
    }

    pub fn take_unsent_log(&self) -> Option<Box<Entry>> {
        self.unsent_log.lock().ok()?.take()
    }

    pub fn end_by(&self, why: EndedBy) {
        self.ended_by.store(why as u8, Relaxed);
    }

    pub fn ended_by(&self) -> EndedBy {
        match self.ended_by.load(Relaxed) {
            1 => EndedBy::SendTimeout,
            2 => EndedBy::HeadTimeout,
            3 => EndedBy::UpgradeIdle,
            _ => EndedBy::Nothing,
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
