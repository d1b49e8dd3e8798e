//! Proxy mode's front worker: an rsvisor worker whose app forwards each
//! request to an app process (`app.command`) over that process's Unix
//! socket. Everything before the forward is the native worker's (HTTP/1.1,
//! HTTP/2, TLS, every `[http]` limit and timeout, the access log, metrics,
//! `/health` and `/ready`); this module only chooses the process
//! ([`route`]), reads the request body whole (bounded by
//! `http.max_body_bytes`, so that a slow upload never holds an app
//! process; above `app.body_buffer` into a temporary file, [`spool`]),
//! sends the request with the client's address, scheme and host in
//! `X-Forwarded-*`, and streams the answer back, reading a large one
//! ahead of a slow client ([`readahead`]). An upgrade
//! (WebSocket) is tunnelled both ways and holds its process's count until
//! it closes.

mod headers;
mod readahead;
mod route;
mod spool;
mod upstream;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request as HttpRequest, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tracing::warn;

use crate::app::{App, Body, BoxError, Handler, Request, Response, WorkerContext};
use crate::config::Config;
use crate::shm::inflight::PeerAddr;
use crate::shm::scoreboard::{Board, RequestClass};
use crate::telemetry::throttle::Throttle;

use route::{Permit, Router};
use spool::SpoolError;
use upstream::{Upstream, UpstreamError};

/// App processes a request may be offered to when the chosen one turns
/// out not to listen any more.
const CONNECT_ATTEMPTS: u32 = 3;

/// Failed forwards (the app process refused the connection, broke it, or
/// answered garbage): said once per interval.
static UPSTREAM_ERRORS: Throttle = Throttle::new();
/// Failures to spool a request body to its temporary file.
static SPOOL_ERRORS: Throttle = Throttle::new();

/// The app of a front worker.
pub struct ProxyApp {
    board: &'static Board,
    run_dir: PathBuf,
}

impl ProxyApp {
    pub fn new(board: &'static Board, run_dir: PathBuf) -> ProxyApp {
        ProxyApp { board, run_dir }
    }
}

impl App for ProxyApp {
    type Handler = Front;

    async fn startup(&self, worker: &WorkerContext) -> Result<Front, BoxError> {
        let config: &Config = &worker.config;
        let board = self.board;
        // `/ready` of a front says whether a request would be served.
        worker.readiness_check("app_processes", move || async move {
            match board.app_serving() {
                true => Ok(()),
                false => Err("no app process is ready".into()),
            }
        });
        Ok(Front {
            board: self.board,
            router: Router::new(self.board, config.app.max_concurrency),
            upstream: Upstream::new(self.run_dir.clone()),
            queue_timeout: config.app.queue_timeout,
            recycle: (config.lifecycle.max_requests > 0).then_some((
                config.lifecycle.max_requests,
                config.lifecycle.max_requests_jitter,
            )),
            answer_timeout: config.lifecycle.timeout,
            body_buffer: usize::try_from(config.app.body_buffer).unwrap_or(usize::MAX),
            response_buffer: usize::try_from(config.app.response_buffer).unwrap_or(usize::MAX),
            run_dir: self.run_dir.clone(),
        })
    }
}

/// Forwards one front worker's requests.
pub struct Front {
    board: &'static Board,
    router: Router,
    upstream: Upstream,
    queue_timeout: Duration,
    /// `lifecycle.max_requests` and its jitter, counted per app process.
    recycle: Option<(u64, u64)>,
    /// How long an app process may take to start answering.
    answer_timeout: Duration,
    /// `app.body_buffer`: larger request bodies wait in a file.
    body_buffer: usize,
    /// `app.response_buffer`: how much of a response is read ahead of a
    /// slower client.
    response_buffer: usize,
    /// Where those files are made (unnamed).
    run_dir: PathBuf,
}

impl Handler for Front {
    // Not an `async fn`: what needs no waiting is done before the future,
    // which then holds the outgoing request once (not the client's request
    // it is made from as well), and the rare waits (a body, a queue, a new
    // connection) are boxed. The future is moved whole several times per
    // request: its size is paid for on every one.
    #[allow(clippy::manual_async_fn)]
    fn call(&self, req: Request) -> impl std::future::Future<Output = Response> + Send {
        let queued = tokio::time::Instant::now();
        let started_us = crate::os::monotonic_us();
        let (mut parts, body) = req.into_parts();
        let class = RequestClass::of(&parts.method, parts.version);
        let client = body.client().clone();
        let upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .filter(|_| parts.headers.contains_key(header::UPGRADE));
        let headers = headers::to_app(
            std::mem::take(&mut parts.headers),
            &parts.uri,
            &client,
            upgrade.is_some(),
        );
        let mut out = HttpRequest::new(spool::Outgoing::Memory(None));
        *out.uri_mut() = app_uri(&parts.uri);
        *out.method_mut() = parts.method;
        *out.headers_mut() = headers;
        if !out.headers().contains_key(header::HOST) {
            // HTTP/1.1 requires one (an HTTP/1.0 client may have sent none,
            // and no URI named the server).
            out.headers_mut()
                .insert(header::HOST, HeaderValue::from_static("localhost"));
        }
        let peer = client.addr.map_or(PeerAddr::Unknown, PeerAddr::Ip);
        async move {
            if !http_body::Body::is_end_stream(&body) {
                let read = spool::read(body, self.body_buffer, &self.run_dir);
                match Box::pin(read).await.map(|b| b.to_body()) {
                    Ok(Ok(b)) => *out.body_mut() = b,
                    Ok(Err(e)) | Err(SpoolError::File(e)) => return spool_failed(&e),
                    // Answered 413, 408 or 400 by the server itself.
                    Err(SpoolError::Body(e)) => {
                        return own_answer(e.status(), "request body not read\n")
                    }
                }
            }
            let deadline = queued + self.queue_timeout;
            let mut attempts = 0;
            let (permit, sent) = loop {
                let Some(mut permit) = self.router.acquire(deadline).await else {
                    let mut r = own_answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no app process could take the request within app.queue_timeout\n",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return r;
                };
                permit.track(out.method().as_str(), out.uri().path(), peer);
                let send = self.upstream.send(permit.target(), out);
                let sent = tokio::time::timeout(self.answer_timeout, send).await;
                attempts += 1;
                match sent {
                    // No connection was made (the process stopped listening as
                    // it was chosen: it drains): nothing was sent, so another
                    // process may take the request.
                    Ok(Err(UpstreamError::Connect { request, .. }))
                        if attempts < CONNECT_ATTEMPTS =>
                    {
                        out = *request;
                        continue;
                    }
                    sent => break (permit, sent),
                }
            };
            let target = permit.target();
            // Counted for the app process that answered (its requests, status
            // classes and latency in `status`, `/metrics` and its canary
            // judgement), not for this front.
            let attribute = |resp: Response| {
                let latency_us = crate::os::monotonic_us().saturating_sub(started_us);
                let slot = self.board.slot(target.slot);
                let served = slot.record(resp.status().as_u16(), class, latency_us);
                if self
                    .recycle
                    .is_some_and(|(base, jitter)| served >= request_limit(base, jitter, slot.pid()))
                {
                    // Replaced once a new process is ready; it serves on
                    // (last choice of the router) until then.
                    slot.mark_retiring();
                }
                resp
            };
            let mut resp = match sent {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    if let Some(unsaid) = UPSTREAM_ERRORS.admit() {
                        warn!(
                            slot = target.slot,
                            generation = target.generation,
                            error = %e,
                            repeated = unsaid,
                            "proxy: the app process failed the request; answered 502"
                        );
                    }
                    return attribute(answer(
                        StatusCode::BAD_GATEWAY,
                        "the app process failed the request\n",
                    ));
                }
                Err(_) => {
                    // Hung (an event loop blocked, a deadlock): the master
                    // dumps its stacks and replaces it.
                    permit.stalled();
                    return attribute(answer(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the app process did not answer within lifecycle.timeout\n",
                    ));
                }
            };
            if let (Some(client_side), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, resp.status()) {
                let app_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(tunnel(client_side, app_side, permit));
                let (parts, _) = resp.into_parts();
                return attribute(Response::from_parts(parts, Body::empty()));
            }
            headers::to_client(resp.headers_mut());
            let (parts, incoming) = resp.into_parts();
            let body = if readahead::wanted(&incoming, self.response_buffer) {
                Body::stream(readahead::spawn(incoming, permit, self.response_buffer))
            } else {
                Body::stream(Held {
                    incoming,
                    _permit: permit,
                })
            };
            attribute(Response::from_parts(parts, body))
        }
    }
}

/// A request body that could not be kept in a temporary file (the disk
/// is full, the run directory gone): said once per interval.
fn spool_failed(e: &std::io::Error) -> Response {
    if let Some(unsaid) = SPOOL_ERRORS.admit() {
        warn!(
            error = %e,
            repeated = unsaid,
            "proxy: cannot keep a request body in a temporary file (app.body_buffer); answered 500"
        );
    }
    own_answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the request body could not be kept\n",
    )
}

/// An app process's `max_requests` plus its share of the jitter: derived
/// from its pid, so that every front worker computes the same limit.
fn request_limit(base: u64, jitter: u64, pid: u32) -> u64 {
    let spread = (u64::from(pid).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % (jitter + 1);
    base + spread
}

/// Marks an answer of the front itself (no app process was asked): it is
/// counted for the front worker. Every other answer of the front's handler
/// is counted for the app process behind it, by the handler. The mark is
/// on the rare answers, so that a proxied one carries no extension (an
/// allocation and a map).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrontAnswer;

fn answer(status: StatusCode, text: &'static str) -> Response {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}

/// An answer of the front itself.
fn own_answer(status: StatusCode, text: &'static str) -> Response {
    let mut r = answer(status, text);
    r.extensions_mut().insert(FrontAnswer);
    r
}

/// The request target as the app process sees it: origin form, the
/// path and query (an HTTP/2 request's URI also names scheme and host).
fn app_uri(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// Copies an upgraded connection both ways until either side closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    app: hyper::upgrade::OnUpgrade,
    _permit: Permit,
) {
    if let (Ok(c), Ok(a)) = (client.await, app.await) {
        let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
        let _ = tokio::io::copy_bidirectional(&mut c, &mut a).await;
    }
}

/// The app's response body, holding its process's count until it ends.
struct Held {
    incoming: hyper::body::Incoming,
    _permit: Permit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.incoming).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_process_gets_the_target_in_origin_form() {
        let uri: Uri = "/a?b=1".parse().unwrap();
        assert_eq!(app_uri(&uri).to_string(), "/a?b=1");
        let absolute: Uri = "https://example.com/x?y".parse().unwrap();
        assert_eq!(app_uri(&absolute).to_string(), "/x?y");
    }

    #[test]
    fn the_least_busy_ready_process_takes_the_request_within_its_limit() {
        use crate::shm::scoreboard::SlotState;
        let board = Board::create().unwrap();
        let router = Router::new(board, 1);
        assert!(router.try_acquire().is_none(), "nothing ready");
        for (slot, pid) in [(0, 100), (1, 101)] {
            board.claim(slot, 1);
            board.slot(slot).set_pid(pid);
            board.slot(slot).set_state(SlotState::Ready);
        }
        let a = router.try_acquire().expect("one");
        let b = router.try_acquire().expect("the other");
        assert_ne!(a.target().slot, b.target().slot);
        // Both at max_concurrency = 1.
        assert!(router.try_acquire().is_none());
        drop(a);
        let c = router.try_acquire().expect("freed");
        assert_ne!(c.target().slot, b.target().slot);
        // A draining process takes nothing new.
        drop((b, c));
        board.slot(0).set_state(SlotState::Draining);
        for _ in 0..3 {
            assert_eq!(router.try_acquire().expect("slot 1").target().slot, 1);
        }
    }

    /// Fifty requests wait for one process that takes one at a time: each
    /// is served as the one before gives its permit back, in order of
    /// arrival, and the waiting costs a few looks, not fifty waiters
    /// polling.
    #[test]
    fn waiting_requests_are_woken_in_turn_without_polling_each() {
        use crate::shm::scoreboard::SlotState;
        let board = Board::create().unwrap();
        board.claim(0, 1);
        board.slot(0).set_pid(100);
        board.slot(0).set_state(SlotState::Ready);
        let router = std::sync::Arc::new(Router::new(board, 1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let order = rt.block_on(async {
            let held = router.try_acquire().expect("free");
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..50 {
                let (router, served) = (router.clone(), served.clone());
                tasks.push(tokio::spawn(async move {
                    let p = router.acquire(deadline).await.expect("served in time");
                    served.lock().unwrap().push(i);
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    drop(p);
                }));
                // Each is waiting before the next arrives.
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            drop(held);
            for t in tasks {
                t.await.unwrap();
            }
            let order = served.lock().unwrap().clone();
            order
        });
        assert_eq!(order, (0..50).collect::<Vec<_>>());
        let looks = router.looks();
        // Each waiter looks when it arrives and when woken (about 100);
        // fifty pollers would have looked thousands of times.
        assert!(looks < 400, "{looks} looks");
    }
}
