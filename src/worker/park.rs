//! Idle HTTP/1.1 keep-alive connections without hyper's buffers.
//!
//! hyper keeps a connection's read and write buffers (8 KiB each) and its
//! state for as long as the connection lives, so 10,000 idle keep-alive
//! clients cost about 150 MiB. nginx frees a request's buffers when the
//! connection goes idle and keeps a few hundred bytes. We do the same: when
//! a plain HTTP/1.1 connection has answered everything it was sent and the
//! socket has nothing more to read, the connection's IO tells hyper "end of
//! stream" at a point where hyper's buffer is known to be empty, hyper ends
//! that connection cleanly without touching the socket, the connection's
//! task ends, and the socket goes to the worker's lot (`lot`): a row of a
//! table (the socket and a [`Resume`]) that waits for its next bytes or the
//! keep-alive timeout; then a fresh task and hyper connection serve it.
//!
//! A connection parks after `PARK_AFTER` of idleness, not at once: a client
//! that sends its next request as soon as it has the answer (most do) keeps
//! its hyper connection, and pays nothing for parking. Once hyper holds more
//! than `PARK_AT_ONCE_ABOVE` connections in the worker, an idle one parks
//! at once: then memory matters more than the ~15,000 instructions a
//! parked connection's next request costs for its new hyper connection.
//!
//! hyper's read buffer is empty when it asks for more bytes if: no request
//! is in flight, the last request had no body, and the last bytes it was
//! given end with the blank line that ends a head (so that head was complete
//! and has been answered, and nothing of a next request arrived). Its write
//! buffer is empty once it has flushed the IO since its last write (it
//! flushes only after writing out its whole buffer): a slow reader's
//! response is never cut. In any other case the connection stays with
//! hyper, as before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use super::conn_info::{ConnState, Peer};
use super::lot::Socket;
use super::registry::ConnGuard;
use super::ListenRole;

/// How long a connection must have been idle before it is parked. The
/// connection's watchdog wakes it then, so that hyper asks for bytes again.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Connections held by hyper in one worker above which an idle one is
/// parked at once (see the module comment).
pub const PARK_AT_ONCE_ABOVE: usize = 1024;

/// What ends a request head.
const HEAD_END: [u8; 4] = *b"\r\n\r\n";

/// An IO whose idle connection can wait outside hyper.
pub trait Parkable {
    /// Whether this kind of IO can be parked (a TLS session or a PROXY
    /// header prefix cannot be handed back and forth).
    fn can_park(&self) -> bool {
        false
    }

    /// Makes closing the socket drop what the kernel still holds for the
    /// client and send a reset (`SO_LINGER` 0), as nginx's
    /// `reset_timedout_connection` does: a client that stopped reading
    /// would otherwise keep that memory in FIN-WAIT-1 for minutes.
    fn reset_on_close(&self) {}

    /// The socket, out of tokio's reactor, for the lot; `None` for an IO
    /// that cannot park.
    fn into_socket(self) -> Option<Socket>
    where
        Self: Sized,
    {
        None
    }
}

/// What a parked connection keeps besides its socket: enough to serve it
/// again. The worker's `Arc`s (its state, its drain signal) are the lot
/// task's, not each connection's.
pub struct Resume {
    pub guard: ConnGuard,
    pub peer: Peer,
    pub role: ListenRole,
    /// The shed epoch the connection had seen (`ConnState::shed_seen`).
    pub shed: u32,
}

impl Parkable for TcpStream {
    fn can_park(&self) -> bool {
        true
    }

    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }

    fn into_socket(self) -> Option<Socket> {
        self.into_std().ok().map(Socket::Tcp)
    }
}

impl Parkable for UnixStream {
    fn can_park(&self) -> bool {
        true
    }

    fn into_socket(self) -> Option<Socket> {
        self.into_std().ok().map(Socket::Unix)
    }
}

impl<IO: Parkable> Parkable for super::proxy_protocol::Prefixed<IO> {
    fn reset_on_close(&self) {
        self.get_ref().reset_on_close();
    }
}

impl<IO: Parkable> Parkable for tokio_rustls::server::TlsStream<IO> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

/// Where the IO goes when hyper is told the stream ended.
pub struct Handoff<IO>(Mutex<Option<(IO, ConnGuard)>>);

impl<IO> Handoff<IO> {
    pub fn new() -> Arc<Handoff<IO>> {
        Arc::new(Handoff(Mutex::new(None)))
    }

    pub fn put(&self, io: IO, guard: ConnGuard) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some((io, guard));
        }
    }

    pub fn take(&self) -> Option<(IO, ConnGuard)> {
        self.0.lock().ok()?.take()
    }
}

/// The last four bytes handed to hyper.
#[derive(Debug, Default)]
pub struct Tail([u8; 4]);

impl Tail {
    pub fn push(&mut self, new: &[u8]) {
        if new.len() >= 4 {
            self.0.copy_from_slice(&new[new.len() - 4..]);
        } else {
            self.0.rotate_left(new.len());
            let at = 4 - new.len();
            self.0[at..].copy_from_slice(new);
        }
    }

    fn ends_head(&self) -> bool {
        self.0 == HEAD_END
    }
}

/// Whether a connection whose hyper asks for bytes the socket does not have
/// should be parked: it has been idle for `PARK_AFTER` (or hyper holds
/// `held` connections, too many) and hyper holds nothing of a request (see
/// the module comment).
pub fn should_park(state: &ConnState, tail: &Tail, now_ms: u64, held: usize) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let idle_ms = now_ms.saturating_sub(state.idle_since_ms.load(Relaxed));
    (idle_ms >= PARK_AFTER.as_millis() as u64 || held > PARK_AT_ONCE_ABOVE)
        && state.in_flight.load(Relaxed) == 0
        && state.head_since_ms.load(Relaxed) == 0
        && state.last_bodiless.load(Relaxed)
        && !state.h2.load(Relaxed)
        && !state.upgraded.load(Relaxed)
        && !state.send_408.load(Relaxed)
        && tail.ends_head()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_follows_reads_of_any_size() {
        let mut t = Tail::default();
        t.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(t.ends_head());
        t.push(b"G");
        assert!(!t.ends_head());
        let mut t = Tail::default();
        for b in b"GET / HTTP/1.1\r\n\r\n" {
            t.push(&[*b]);
        }
        assert!(t.ends_head());
        t.push(b"\r\n\r");
        assert!(!t.ends_head());
        t.push(b"");
        assert!(!t.ends_head());
    }
}
