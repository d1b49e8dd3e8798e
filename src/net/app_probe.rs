//! Proxy mode: the HTTP probe that decides when a booting app process may
//! take requests. Its socket accepting proves only that the server
//! listens (uvicorn and gunicorn listen before they import the app); an
//! answer to `GET app.ready_path` proves the app loaded and serves.
//!
//! Every step is non-blocking: the master polls a probe on its ticks and
//! never waits on an app process.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest a probe waits for the answer's head before a new one is sent
/// (an app may be slow at its first request; the boot deadline,
/// `lifecycle.timeout`, bounds the whole wait).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time between two probes after one was refused or answered 5xx.
pub const PROBE_RETRY: Duration = Duration::from_millis(200);

/// Largest answer head read; an app's reply to the probe is small.
const MAX_HEAD: usize = 16 * 1024;

/// Headers parsed in the answer head.
const MAX_HEADERS: usize = 64;

/// What one look at a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    /// No complete answer yet.
    Pending,
    /// The app answered with this status.
    Answered(u16),
    /// No answer will come (closed, not HTTP, timed out).
    Failed(String),
}

/// One `GET` in flight over an app process's socket.
#[derive(Debug)]
pub struct Probe {
    stream: UnixStream,
    head: Vec<u8>,
    sent_at: Instant,
}

/// Why a probe could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing listens yet (or its backlog is full): try again later.
    #[error("the socket does not accept connections yet")]
    NotListening,
    #[error("cannot send the probe: {0}")]
    Io(#[from] io::Error),
}

impl Probe {
    /// Connects without waiting and writes `GET path`.
    pub fn start(socket: &Path, path: &str) -> Result<Probe, ProbeError> {
        let fd = crate::os::unix_connect_nonblocking(socket).ok_or(ProbeError::NotListening)?;
        let mut stream = UnixStream::from(fd);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: rsvisor-probe\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        // A fresh socket's buffer takes far more than one short request,
        // so a partial write means the peer is not a working server.
        let n = stream.write(request.as_bytes())?;
        if n != request.len() {
            return Err(ProbeError::Io(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the socket took only part of the request",
            )));
        }
        Ok(Probe {
            stream,
            head: Vec::new(),
            sent_at: Instant::now(),
        })
    }

    /// Reads what has arrived, without waiting.
    pub fn poll(&mut self, now: Instant) -> ProbeState {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return match self.parse() {
                        ProbeState::Pending => ProbeState::Failed(
                            "the app closed the connection without an answer".into(),
                        ),
                        other => other,
                    }
                }
                Ok(n) => {
                    self.head.extend_from_slice(&buf[..n]);
                    match self.parse() {
                        ProbeState::Pending if self.head.len() >= MAX_HEAD => {
                            return ProbeState::Failed(format!(
                                "the answer's head is over {MAX_HEAD} bytes"
                            ))
                        }
                        ProbeState::Pending => continue,
                        other => return other,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ProbeState::Failed(format!("reading the answer: {e}")),
            }
        }
        if now.duration_since(self.sent_at) >= PROBE_TIMEOUT {
            return ProbeState::Failed(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()));
        }
        ProbeState::Pending
    }

    fn parse(&self) -> ProbeState {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&self.head) {
            Ok(httparse::Status::Complete(_)) => match response.code {
                Some(code) => ProbeState::Answered(code),
                None => ProbeState::Failed("an answer without a status".into()),
            },
            Ok(httparse::Status::Partial) => ProbeState::Pending,
            Err(e) => ProbeState::Failed(format!("not an HTTP answer ({e})")),
        }
    }
}

/// Whether an answer to the probe means the app may take requests: any
/// status below 500. A 404 from an app without that route proves it
/// loaded and serves; an app that has the route holds itself back with
/// 503.
pub fn answer_is_ready(status: u16) -> bool {
    status < 500
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(listener: &UnixListener, answer: &[u8]) -> String {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = [0u8; 1024];
        let n = conn.read(&mut got).unwrap();
        conn.write_all(answer).unwrap();
        String::from_utf8_lossy(&got[..n]).into_owned()
    }

    fn poll_until_done(p: &mut Probe) -> ProbeState {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = p.poll(Instant::now());
            if s != ProbeState::Pending || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_probe_sends_get_and_reads_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut p = Probe::start(&path, "/ready").unwrap();
        let req = serve_once(
            &listener,
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(req.starts_with("GET /ready HTTP/1.1\r\n"), "{req}");
        assert_eq!(poll_until_done(&mut p), ProbeState::Answered(503));
        assert!(!answer_is_ready(503));
        assert!(answer_is_ready(404));
    }

    #[test]
    fn nothing_listening_garbage_and_silence_are_not_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        assert!(matches!(
            Probe::start(&path, "/ready"),
            Err(ProbeError::NotListening)
        ));
        let listener = UnixListener::bind(&path).unwrap();
        let mut p = Probe::start(&path, "/ready").unwrap();
        serve_once(&listener, b"SSH-2.0-OpenSSH\r\n\r\n");
        assert!(matches!(poll_until_done(&mut p), ProbeState::Failed(_)));

        let mut p = Probe::start(&path, "/ready").unwrap();
        let (conn, _) = listener.accept().unwrap();
        assert_eq!(p.poll(Instant::now()), ProbeState::Pending);
        let later = Instant::now() + PROBE_TIMEOUT;
        assert!(matches!(p.poll(later), ProbeState::Failed(m) if m.contains("no answer")));
        drop(conn);
    }
}
