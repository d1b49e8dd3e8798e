//! The master's end of `server.control_socket`: a Unix socket, mode 0600,
//! that only the master's own user (or root) may use.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::warn;

use crate::config::BindAddr;
use crate::control::{Request, Response};
use crate::listen::{self, ListenError, Listener};

/// A client has this long to send its one request line: the master's loop
/// must not wait on a slow client.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_millis(200);
/// Listen backlog of the control socket.
const CONTROL_BACKLOG: u32 = 16;
/// Permissions of the socket file: the master's user only.
const CONTROL_SOCKET_MODE: u32 = 0o600;

pub struct ControlServer {
    listener: Listener,
}

/// A client waiting for its answer (a reload in progress).
pub struct Waiter(UnixStream);

impl Waiter {
    pub fn reply(mut self, resp: &Response) {
        let mut line = serde_json::to_string(resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        line.push('\n');
        // A client that went away does not matter.
        let _ = self.0.write_all(line.as_bytes());
    }
}

impl ControlServer {
    pub fn bind(path: &Path) -> Result<ControlServer, ListenError> {
        let addr = BindAddr::Unix(path.to_path_buf());
        let listener = listen::bind(&addr, CONTROL_BACKLOG, Some(CONTROL_SOCKET_MODE), None)?;
        Ok(ControlServer { listener })
    }

    /// Serves on a control socket inherited from the master we upgrade from.
    pub fn inherited(fd: std::os::fd::OwnedFd) -> std::io::Result<ControlServer> {
        Ok(ControlServer {
            listener: Listener::from_inherited(fd, true)?,
        })
    }

    /// The new master (binary upgrade) owns the socket file now.
    pub fn hand_over_file(&mut self) {
        self.listener.forget_file();
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.listener.raw_fd()
    }

    /// Accepts every pending client and reads its request line.
    pub fn accept_requests(&self) -> Vec<(Waiter, Result<Request, String>)> {
        let mut out = Vec::new();
        let listener = self.listener.as_fd();
        let listener = socket2::SockRef::from(&listener);
        // The socket is non-blocking: accept until nobody is waiting.
        while let Ok((socket, _)) = listener.accept() {
            let stream = UnixStream::from(socket);
            match read_request(&stream) {
                Ok(Some(req)) => out.push((Waiter(stream), req)),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "control socket: bad client"),
            }
        }
        out
    }
}

fn read_request(stream: &UnixStream) -> io::Result<Option<Result<Request, String>>> {
    let cred = getsockopt(&stream.as_fd(), PeerCredentials).map_err(io::Error::from)?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != me && cred.uid() != 0 {
        warn!(
            peer_uid = cred.uid(),
            peer_pid = cred.pid(),
            "control socket: refused a client of another user"
        );
        let mut w = stream;
        let _ = w.write_all(b"{\"ok\":false,\"error\":\"permission denied\"}\n");
        return Ok(None);
    }
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_READ_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_READ_TIMEOUT))?;
    // One short line; anything longer is not a request of ours.
    let mut line = String::new();
    BufReader::new(stream.take(256)).read_line(&mut line)?;
    Ok(Some(Request::parse(&line)))
}
