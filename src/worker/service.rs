//! Per-request path: built-in endpoints, the app's handler, counters, and
//! the response body that reports when the request is really over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http::Version;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::conn::{ConnState, Peer};
use super::endpoints;
use super::Shared;
use crate::app::{Body, BoxError, ClientInfo, Handler, RequestBody};
use crate::scoreboard::method_class;

pub struct ConnService<H> {
    shared: Arc<Shared<H>>,
    conn: Arc<ConnState>,
}

impl<H> ConnService<H> {
    pub fn new(shared: Arc<Shared<H>>, conn: Arc<ConnState>) -> Self {
        ConnService { shared, conn }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<H: Handler> hyper::service::Service<http::Request<Incoming>> for ConnService<H> {
    type Response = http::Response<TrackedBody<H>>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        let conn = self.conn.clone();
        Box::pin(async move { Ok(handle(shared, conn, req).await) })
    }
}

async fn handle<H: Handler>(
    shared: Arc<Shared<H>>,
    conn: Arc<ConnState>,
    req: http::Request<Incoming>,
) -> http::Response<TrackedBody<H>> {
    let start = Instant::now();
    let version = req.version();
    conn.request_started(version == Version::HTTP_2);
    let method = method_class(req.method());

    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(client_info(conn.peer));
    let req = http::Request::from_parts(
        parts,
        RequestBody::new(body, shared.config.http.max_body_bytes),
    );

    let mut resp = match endpoints::builtin(&shared, conn.role, &req) {
        Some(resp) => resp,
        None => shared.handler.call(req).await,
    };

    if shared.draining() && version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }

    let slot = shared.slot;
    let served = if shared.config.metrics.enabled {
        slot.record(
            resp.status().as_u16(),
            method,
            start.elapsed().as_micros() as u64,
        )
    } else {
        slot.count_request()
    };
    if shared.max_requests != 0 && served == shared.max_requests && slot.mark_retiring() {
        tracing::info!(
            served,
            "worker reached max_requests; asking the master for a replacement"
        );
        shared.nudge_master();
    }

    resp.map(|body| TrackedBody {
        inner: body,
        sent: 0,
        done: Some(Done { shared, conn }),
    })
}

fn client_info(peer: Peer) -> ClientInfo {
    ClientInfo {
        addr: match peer {
            Peer::Tcp(a) => Some(a),
            Peer::Unix => None,
        },
        scheme: "http",
        host: None,
    }
}

/// Marks the request finished when the response body is done or dropped.
struct Done<H> {
    shared: Arc<Shared<H>>,
    conn: Arc<ConnState>,
}

/// The response body handed to hyper: counts bytes and reports the end of
/// the request to the connection's idle clock.
pub struct TrackedBody<H> {
    inner: Body,
    sent: u64,
    done: Option<Done<H>>,
}

impl<H> TrackedBody<H> {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done.shared.slot.add_bytes_sent(self.sent);
            done.conn.request_finished(done.shared.now_ms());
        }
    }
}

impl<H> Drop for TrackedBody<H> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<H> http_body::Body for TrackedBody<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
