//! The master's end of `server.control_socket`: a Unix socket, mode 0600,
//! that only the master's own user (or root) may use.
//!
//! The master loop never waits on a control client: client sockets are
//! non-blocking and polled with everything else; a client gets
//! [`CONTROL_IDLE_TIMEOUT`] to send each request line and
//! [`CONTROL_WRITE_TIMEOUT`] to take each answer, and at most
//! [`CONTROL_MAX_CLIENTS`] are open at once. A connection may carry many
//! requests, one line each, answered in order (`rsvisor top` keeps one
//! open).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::warn;

use crate::config::BindAddr;
use crate::net::listen::{self, ListenError, Listener};
use crate::proto::control::{Request, RequestError, Response, CONTROL_FULL};

/// How long a client may take to send a request line (after connecting or
/// after its previous answer) before it is disconnected.
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may wait for the client to read it.
pub const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open control connections at most; past it the longest-silent idle one
/// is closed for a newcomer, or (none idle) the newcomer is refused with
/// [`CONTROL_FULL`] and its CLI retries.
pub const CONTROL_MAX_CLIENTS: usize = 32;
/// Longest request line; anything longer is not a request of ours.
const CONTROL_LINE_MAX: usize = 256;
/// Listen backlog of the control socket.
const CONTROL_BACKLOG: u32 = 16;
/// Permissions of the socket file: the master's user only.
const CONTROL_SOCKET_MODE: u32 = 0o600;

/// A control client, for answering it later (a reload in progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId(u64);

#[cfg(test)]
impl ClientId {
    /// A client that never connected, for the core's tests.
    pub fn for_test(n: u64) -> ClientId {
        ClientId(n)
    }
}

pub struct ControlServer {
    listener: Listener,
    clients: Vec<Client>,
    next_id: u64,
    /// Clients refused for being over [`CONTROL_MAX_CLIENTS`], since the
    /// last warning about it.
    refused_unlogged: u64,
    last_refusal_log: Option<Instant>,
}

struct Client {
    id: ClientId,
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// A request was handed to the master and not answered yet.
    awaiting_reply: bool,
    /// The client closed its side: answer what it asked, then close.
    eof: bool,
    /// Disconnect then (none while the master works on its request).
    deadline: Option<Instant>,
}

/// What a client's socket reported in the last poll, in the order of
/// [`ControlServer::interest`].
pub type Revents = Vec<Option<PollFlags>>;

impl ControlServer {
    pub fn bind(path: &Path) -> Result<ControlServer, ListenError> {
        let addr = BindAddr::Unix(path.to_path_buf());
        let listener = listen::bind(&addr, CONTROL_BACKLOG, Some(CONTROL_SOCKET_MODE), None)?;
        Ok(ControlServer::new(listener))
    }

    /// Serves on a control socket inherited from the master we upgrade from.
    pub fn inherited(fd: std::os::fd::OwnedFd) -> io::Result<ControlServer> {
        Ok(ControlServer::new(Listener::from_inherited(fd, true)?))
    }

    fn new(listener: Listener) -> ControlServer {
        ControlServer {
            listener,
            clients: Vec::new(),
            next_id: 0,
            refused_unlogged: 0,
            last_refusal_log: None,
        }
    }

    /// The new master (binary upgrade) owns the socket file now.
    pub fn hand_over_file(&mut self) {
        self.listener.forget_file();
    }

    pub fn raw_fd(&self) -> RawFd {
        self.listener.raw_fd()
    }

    /// The descriptors to poll and for what: the listener, then each client.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut out = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        for c in &self.clients {
            let flags = if !c.outbuf.is_empty() {
                PollFlags::POLLOUT
            } else if c.awaiting_reply || c.eof {
                // Only hang-ups matter (always reported).
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            out.push((c.stream.as_fd(), flags));
        }
        out
    }

    /// The earliest client deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().filter_map(|c| c.deadline).min()
    }

    /// Accepts, reads and writes what the poll reported, drops clients that
    /// are gone or too slow, and returns the complete requests.
    pub fn handle(
        &mut self,
        revents: &Revents,
        now: Instant,
    ) -> Vec<(ClientId, Result<Request, RequestError>)> {
        // Client events first: their indexes match the clients polled, and
        // accepting adds clients.
        for (i, ev) in revents.iter().enumerate().skip(1) {
            let (Some(ev), Some(c)) = (ev, self.clients.get_mut(i - 1)) else {
                continue;
            };
            if ev.contains(PollFlags::POLLOUT) {
                c.flush(now);
            }
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                c.read();
            }
        }
        if revents
            .first()
            .and_then(|e| *e)
            .is_some_and(|e| e.contains(PollFlags::POLLIN))
        {
            self.accept(now);
        }
        self.clients
            .retain(|c| !c.finished() && c.deadline.is_none_or(|d| now < d));
        let mut requests = Vec::new();
        for c in &mut self.clients {
            if c.awaiting_reply || !c.outbuf.is_empty() {
                continue;
            }
            match c.next_line() {
                Some(line) => {
                    c.awaiting_reply = true;
                    c.deadline = None;
                    requests.push((c.id, line));
                }
                None if c.inbuf.len() > CONTROL_LINE_MAX => {
                    c.queue(&Response::error("request line too long"), now);
                    c.eof = true;
                }
                None => {}
            }
        }
        requests
    }

    /// Queues `resp` for the client and writes what it can now.
    pub fn reply(&mut self, to: ClientId, resp: &Response) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == to) {
            c.awaiting_reply = false;
            c.queue(resp, Instant::now());
        }
    }

    fn accept(&mut self, now: Instant) {
        // The socket is non-blocking: accept until nobody is waiting.
        while let Ok((socket, _)) = socket2::SockRef::from(&self.listener.as_fd()).accept() {
            let stream = UnixStream::from(socket);
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if let Err(why) = allowed(&stream) {
                refuse(&stream, why);
                continue;
            }
            if self.clients.len() >= CONTROL_MAX_CLIENTS && !self.evict_longest_silent() {
                // Every open client waits for an answer (a reload's
                // waiters): the newcomer's CLI retries.
                refuse(&stream, CONTROL_FULL);
                self.note_refusal(now);
                continue;
            }
            self.next_id += 1;
            self.clients.push(Client {
                id: ClientId(self.next_id),
                stream,
                inbuf: Vec::new(),
                outbuf: Vec::new(),
                awaiting_reply: false,
                eof: false,
                deadline: Some(now + CONTROL_IDLE_TIMEOUT),
            });
        }
    }

    /// Makes room for an operator: closes the client that has been silent
    /// longest among those the master owes nothing (no request pending, no
    /// answer unsent). Clients that connect and send nothing can then never
    /// lock `rsvisor status` out.
    fn evict_longest_silent(&mut self) -> bool {
        let idle = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.awaiting_reply && c.outbuf.is_empty())
            .min_by_key(|(_, c)| c.deadline)
            .map(|(i, _)| i);
        match idle {
            Some(i) => {
                self.clients.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Logs the first refusal, then at most one summary per idle timeout.
    fn note_refusal(&mut self, now: Instant) {
        self.refused_unlogged += 1;
        let due = self
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= CONTROL_IDLE_TIMEOUT);
        if due {
            warn!(
                open = self.clients.len(),
                refused = self.refused_unlogged,
                "control socket: too many connections; refusing new ones"
            );
            self.refused_unlogged = 0;
            self.last_refusal_log = Some(now);
        }
    }
}

impl Client {
    fn read(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if self.inbuf.len() > 4 * CONTROL_LINE_MAX {
                        // Garbage: stop reading; `handle` answers and closes.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.eof = true;
                    self.outbuf.clear();
                    return;
                }
            }
        }
    }

    fn next_line(&mut self) -> Option<Result<Request, RequestError>> {
        let end = self.inbuf.iter().position(|b| *b == b'\n')?;
        let line: Vec<u8> = self.inbuf.drain(..=end).collect();
        Some(match std::str::from_utf8(&line) {
            Ok(text) => Request::parse(text),
            Err(_) => Err(RequestError::NotUtf8),
        })
    }

    fn queue(&mut self, resp: &Response, now: Instant) {
        let mut line = serde_json::to_string(resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        line.push('\n');
        self.outbuf.extend_from_slice(line.as_bytes());
        self.deadline = Some(now + CONTROL_WRITE_TIMEOUT);
        self.flush(now);
    }

    fn flush(&mut self, now: Instant) {
        while !self.outbuf.is_empty() {
            match self.stream.write(&self.outbuf) {
                Ok(0) => break,
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // Gone: nothing more to say to it.
                    self.outbuf.clear();
                    self.eof = true;
                    return;
                }
            }
        }
        if self.outbuf.is_empty() && !self.awaiting_reply {
            self.deadline = Some(now + CONTROL_IDLE_TIMEOUT);
        }
    }

    /// Nothing left to do for it.
    fn finished(&self) -> bool {
        self.eof && self.outbuf.is_empty() && !self.awaiting_reply && !self.inbuf.contains(&b'\n')
    }
}

/// Only the master's own user (or root) may use the socket.
fn allowed(stream: &UnixStream) -> Result<(), &'static str> {
    let cred = getsockopt(&stream.as_fd(), PeerCredentials).map_err(|_| "permission denied")?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != me && cred.uid() != 0 {
        warn!(
            peer_uid = cred.uid(),
            peer_pid = cred.pid(),
            "control socket: refused a client of another user"
        );
        return Err("permission denied");
    }
    Ok(())
}

/// Best effort: one non-blocking write of the error line, then close.
fn refuse(stream: &UnixStream, why: &str) {
    let mut line = serde_json::to_string(&Response::error(why)).unwrap_or_default();
    line.push('\n');
    let mut w = stream;
    let _ = w.write(line.as_bytes());
}
