//! One HTTP/3 request: its stream's data as the app's request body, the
//! answer written back frame by frame, each write bounded by
//! `http.send_timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::server::{RequestResolver, RequestStream};
use http_body::Frame;
use http_body_util::BodyExt;

use super::super::conn_info::ConnState;
use super::super::{service, Shared};
use super::handshake::Handshake;
use crate::app::{BoxError, Handler, Inbound};

type Resolver = RequestResolver<h3_quinn::Connection, Bytes>;
type Recv = RequestStream<h3_quinn::RecvStream, Bytes>;

/// Methods served from 0-RTT early data before the handshake completes:
/// the safe ones (RFC 9110 §9.2.1), whose replay changes nothing on a
/// well-behaved app.
const SAFE_IN_EARLY_DATA: [http::Method; 3] =
    [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS];

/// RFC 8470 §5.1: the request came in early data.
const EARLY_DATA: http::HeaderName = http::HeaderName::from_static("early-data");

/// Fields HTTP/3 does not carry (RFC 9114 §4.2): connection-specific.
const CONNECTION_FIELDS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

pub async fn serve<H: Handler>(
    resolver: Resolver,
    shared: Arc<Shared<H>>,
    conn: Arc<ConnState>,
    mut handshake: Handshake,
) {
    let http = &shared.config.http;
    let (mut req, stream) =
        match tokio::time::timeout(http.header_read_timeout, resolver.resolve_request()).await {
            Ok(Ok(r)) => r,
            // A malformed or incomplete request: h3 has answered it (431)
            // or reset the stream already.
            _ => return,
        };
    if !handshake.is_complete() {
        // It may be 0-RTT data, replayed by whoever recorded it. A safe
        // method is served now and told so (RFC 8470 §5.1: the app may
        // answer 425); any other waits for the handshake, which a replay
        // never completes.
        if SAFE_IN_EARLY_DATA.contains(req.method()) {
            req.headers_mut()
                .insert(EARLY_DATA, http::HeaderValue::from_static("1"));
            shared.slot.count_early_data();
        } else if !handshake.complete().await {
            return;
        }
    }
    let (mut send, recv) = stream.split();
    if req.headers().len() > http.max_headers {
        // As hyper answers HTTP/1.1 (h3 bounds only the section's size).
        let mut resp = http::Response::new(());
        *resp.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        if tokio::time::timeout(http.send_timeout, send.send_response(resp))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            let _ = tokio::time::timeout(http.send_timeout, send.finish()).await;
        }
        return;
    }
    let req = req.map(|()| StreamBody(recv));
    let resp = match service::respond(&shared, &conn, req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (mut parts, body) = resp.into_parts();
    for name in CONNECTION_FIELDS {
        parts.headers.remove(name);
    }
    let limit = http.send_timeout;
    let head = send.send_response(http::Response::from_parts(parts, ()));
    if !matches!(tokio::time::timeout(limit, head).await, Ok(Ok(()))) {
        send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        return;
    }
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let sent = match frame.map(Frame::into_data) {
            Ok(Ok(data)) => tokio::time::timeout(limit, send.send_data(data)).await,
            Ok(Err(frame)) => match frame.into_trailers() {
                Ok(trailers) => tokio::time::timeout(limit, send.send_trailers(trailers)).await,
                Err(_) => continue,
            },
            Err(_) => {
                // The app's body failed: the client must not take what it
                // got for the whole answer.
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        if !matches!(sent, Ok(Ok(()))) {
            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            return;
        }
    }
    let _ = tokio::time::timeout(limit, send.finish()).await;
}

/// The request stream's data frames as a request body.
struct StreamBody(Recv);

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut().0.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(mut buf))) => {
                let n = buf.remaining();
                Poll::Ready(Some(Ok(Frame::data(buf.copy_to_bytes(n)))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }
}

impl From<StreamBody> for Inbound {
    fn from(b: StreamBody) -> Inbound {
        Inbound::Stream(Box::pin(b))
    }
}
