//! Connections from a front worker to the app processes: HTTP/1.1 over
//! each process's Unix socket (hyper's client connections), pooled per
//! process. A request is retried only when a pooled connection was found
//! closed before any byte of it was written (an app process closes idle
//! keep-alive connections; uvicorn after 5 s): nothing else is retried.
//!
//! The pool is a short list per app process, searched in order, rather
//! than hyper-util's general client: the front knows which process it
//! wants, so there is no authority to format, parse and hash, and a
//! connection that cannot be made leaves the request untouched, for the
//! router to offer to another process. On every proxied request this saved
//! about a sixth of the front's instructions.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::route::Target;
use super::spool::Outgoing;
use crate::net::app_socket;

/// How long an idle pooled connection is kept: below uvicorn's default
/// keep-alive timeout (5 s), so that the front closes it first.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections kept per app process; more are closed when returned.
pub const POOL_MAX_IDLE: usize = 64;

/// The client of one front worker.
pub struct Upstream {
    run_dir: PathBuf,
    /// Per app process, its connections not known to be busy.
    pool: Mutex<Vec<(Target, Vec<Pooled>)>>,
}

/// A connection in the pool, and when it was last handed out.
struct Pooled {
    sender: SendRequest<Outgoing>,
    used: Instant,
}

/// Why a request did not get its answer from an app process.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection to the process could be made; the request was not
    /// sent and comes back, so another process may take it.
    #[error("cannot connect to the app process: {error}")]
    Connect {
        error: io::Error,
        request: Box<Request<Outgoing>>,
    },
    /// The process's connection failed during its HTTP/1.1 handshake.
    #[error("the app process's connection failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request was sent (or partly) and the exchange failed.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
}

impl Upstream {
    pub fn new(run_dir: PathBuf) -> Upstream {
        Upstream {
            run_dir,
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (origin-form URI) to the app process `target`. A pooled
    /// connection takes the request before the future is made, and a new
    /// connection is made in a future of its own: the common case's future
    /// (part of every request's, moved whole) holds neither.
    pub fn send(
        &self,
        target: Target,
        req: Request<Outgoing>,
    ) -> impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + '_ {
        let pooled = match self.checkout(target) {
            Some(mut sender) => {
                let answer = sender.try_send_request(req);
                Ok((sender, answer))
            }
            None => Err(Box::new(req)),
        };
        async move {
            let req = match pooled {
                Ok((sender, answer)) => match answer.await {
                    Ok(resp) => {
                        // Back in the pool at once: it is handed out again
                        // only once it is ready (the response's body has
                        // ended).
                        self.checkin(target, sender);
                        return Ok(resp);
                    }
                    // Closed before a byte of it was written: a new
                    // connection gets it.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => Box::new(unsent),
                        None => return Err(UpstreamError::Exchange(e.into_error())),
                    },
                },
                Err(req) => req,
            };
            Box::pin(self.send_on_new(target, req)).await
        }
    }

    /// Sends `req` on a new connection to `target` (nothing is retried).
    async fn send_on_new(
        &self,
        target: Target,
        req: Box<Request<Outgoing>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = match self.connect(target).await {
            Ok(s) => s,
            Err(ConnectError::Io(error)) => {
                return Err(UpstreamError::Connect {
                    error,
                    request: req,
                })
            }
            Err(ConnectError::Hyper(e)) => return Err(UpstreamError::Handshake(e)),
        };
        match sender.try_send_request(*req).await {
            Ok(resp) => {
                self.checkin(target, sender);
                Ok(resp)
            }
            Err(e) => Err(UpstreamError::Exchange(e.into_error())),
        }
    }

    /// A ready pooled connection to `target`; closed and stale ones go.
    fn checkout(&self, target: Target) -> Option<SendRequest<Outgoing>> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let i = pool.iter().position(|(t, _)| *t == target)?;
        let list = &mut pool[i].1;
        let now = Instant::now();
        // A busy one (its response still streams) stays until it is done.
        list.retain(|c| {
            !c.sender.is_closed() && (!c.sender.is_ready() || now - c.used < POOL_IDLE_TIMEOUT)
        });
        let found = list.iter().position(|c| c.sender.is_ready());
        let sender = found.map(|k| list.swap_remove(k).sender);
        if list.is_empty() {
            pool.swap_remove(i);
        }
        sender
    }

    fn checkin(&self, target: Target, sender: SendRequest<Outgoing>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Pooled {
            sender,
            used: Instant::now(),
        };
        match pool.iter_mut().find(|(t, _)| *t == target) {
            Some((_, list)) if list.len() >= POOL_MAX_IDLE => {}
            Some((_, list)) => list.push(entry),
            None => {
                // A new process (a reload, a respawn): lists of processes
                // whose every connection closed since go now.
                pool.retain(|(_, list)| list.iter().any(|c| !c.sender.is_closed()));
                pool.push((target, vec![entry]));
            }
        }
    }

    async fn connect(&self, target: Target) -> Result<SendRequest<Outgoing>, ConnectError> {
        let path = app_socket::socket_path(&self.run_dir, target.slot, target.generation);
        let stream = UnixStream::connect(path).await.map_err(ConnectError::Io)?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Hyper)?;
        // With upgrades: a 101 hands the connection over to the tunnel.
        // Its end (the process closed it, or the sender was dropped) is
        // not an error of any request: those see theirs.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender.ready().await.map_err(ConnectError::Hyper)?;
        Ok(sender)
    }
}

enum ConnectError {
    Io(io::Error),
    Hyper(hyper::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    /// An app process on its socket in `run_dir` that answers `ok`,
    /// counting the connections it accepted; with `close`, it closes each
    /// connection after one answer.
    async fn app(run_dir: &std::path::Path, target: Target, close: bool) -> Arc<AtomicUsize> {
        let path = app_socket::socket_path(run_dir, target.slot, target.generation);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(!close)
                        .serve_connection(TokioIo::new(io), svc),
                );
            }
        });
        accepted
    }

    async fn get(up: &Upstream, target: Target) -> Result<http::StatusCode, UpstreamError> {
        let mut req = Request::new(Outgoing::Memory(None));
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("x"));
        let resp = up.send(target, req).await?;
        let status = resp.status();
        // The body read to its end: the connection is free again.
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        Ok(status)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Five requests in turn to an app process that keeps connections
    /// (`close` false) or closes each after one answer: every one is
    /// answered; gives how many connections the process accepted.
    fn five_requests_in_turn(close: bool) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let target = Target {
            slot: 1,
            generation: 2,
        };
        runtime().block_on(async {
            let accepted = app(dir.path(), target, close).await;
            let up = Upstream::new(dir.path().to_path_buf());
            for _ in 0..5 {
                assert_eq!(get(&up, target).await.unwrap(), 200);
            }
            accepted.load(SeqCst)
        })
    }

    #[test]
    fn requests_in_turn_share_one_connection() {
        assert_eq!(five_requests_in_turn(false), 1);
    }

    #[test]
    fn a_connection_the_app_closed_is_replaced_and_the_request_served() {
        assert_eq!(five_requests_in_turn(true), 5);
    }

    #[test]
    fn a_process_that_does_not_listen_gives_the_request_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target {
            slot: 2,
            generation: 1,
        };
        runtime().block_on(async {
            let up = Upstream::new(dir.path().to_path_buf());
            match get(&up, target).await {
                Err(UpstreamError::Connect { request, .. }) => {
                    assert_eq!(request.headers()["host"], "x");
                }
                other => panic!("expected a connect error, got {other:?}"),
            }
        });
    }
}
