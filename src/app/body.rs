//! Request and response bodies of the public API.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

/// Boxed error type used by bodies and app startup.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: empty, one buffer (no allocation for static bytes), or
/// any streaming [`http_body::Body`].
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Body {
        Body { kind: Kind::Empty }
    }

    /// Wraps a streaming body (files, proxies, server-sent events…).
    pub fn stream<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body {
            kind: Kind::Stream(body.map_err(Into::into).boxed_unsync()),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body {
            kind: Kind::Full(Some(b)),
        }
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Body {
        Body::from(Bytes::from_static(s))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::from(Bytes::from(s))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::from(Bytes::from(v))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(s) => s.size_hint(),
        }
    }
}

/// A request body as the app receives it. It streams, and it enforces
/// what the server promises about bodies while it does:
///
/// - reading past `http.max_body_bytes` yields [`BodyError::TooLarge`];
/// - a client that stops sending while the app waits for more, for
///   `http.header_read_timeout`, yields [`BodyError::TimedOut`];
/// - a body that breaks the protocol (a bad chunk size, a connection closed
///   early) yields [`BodyError::Malformed`].
///
/// Whatever the app answers after such an error, the client gets 413, 408
/// or 400 (and the connection is closed).
pub struct RequestBody {
    /// Shared with the connection when the peer is the client, so a
    /// request carries a pointer rather than the client's facts.
    client: Arc<super::ClientInfo>,
    /// The bytes, their limits and what was read: only a request with a
    /// body has them. A bodiless request allocates nothing for them and
    /// stays small: the app's request is moved whole several times on its
    /// way to the app, and at 240 bytes each move is one of `memcpy`'s
    /// cheaper sizes (up to 256).
    body: Option<Box<Bodied>>,
}

struct Bodied {
    /// `None` once the body failed: nothing more is read.
    inner: Option<Inbound>,
    guard: Guard,
}

/// Where a request's bytes come from: hyper's connection (HTTP/1.1 and
/// HTTP/2), or any other transport's stream (an HTTP/3 request stream).
pub(crate) enum Inbound {
    Hyper(hyper::body::Incoming),
    Stream(Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync>>),
}

impl From<hyper::body::Incoming> for Inbound {
    fn from(b: hyper::body::Incoming) -> Inbound {
        Inbound::Hyper(b)
    }
}

impl Inbound {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        use http_body::Body as _;
        match self {
            Inbound::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Malformed),
            Inbound::Stream(b) => b.as_mut().poll_frame(cx).map_err(BodyError::Aborted),
        }
    }

    fn is_end_stream(&self) -> bool {
        use http_body::Body as _;
        match self {
            Inbound::Hyper(b) => b.is_end_stream(),
            Inbound::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        use http_body::Body as _;
        match self {
            Inbound::Hyper(b) => b.size_hint(),
            Inbound::Stream(b) => b.size_hint(),
        }
    }
}

/// What a request body enforces while it is read.
struct Guard {
    limit: u64,
    read: u64,
    /// Where the server learns which error the body yielded.
    outcome: Arc<AtomicU8>,
    stall: StallTimer,
}

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body was longer than `http.max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes (http.max_body_bytes)")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// No byte of the body arrived for this long (`http.header_read_timeout`).
    #[error("the client sent no request-body bytes for {0:?} (http.header_read_timeout)")]
    TimedOut(Duration),
    /// The client sent a body HTTP does not allow.
    #[error("malformed request body: {0}")]
    Malformed(#[source] hyper::Error),
    /// The request's stream broke before the body's end (an HTTP/3 client
    /// that reset its stream, a QUIC connection lost).
    #[error("request body stream broken: {0}")]
    Aborted(#[source] BoxError),
}

impl BodyError {
    /// The status the client gets for it: 413, 408 or 400.
    pub fn status(&self) -> http::StatusCode {
        match self {
            BodyError::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => http::StatusCode::REQUEST_TIMEOUT,
            BodyError::Malformed(_) | BodyError::Aborted(_) => http::StatusCode::BAD_REQUEST,
        }
    }

    fn code(&self) -> u8 {
        match self {
            BodyError::TooLarge { .. } => OUTCOME_TOO_LARGE,
            BodyError::TimedOut(_) => OUTCOME_TIMED_OUT,
            BodyError::Malformed(_) | BodyError::Aborted(_) => OUTCOME_MALFORMED,
        }
    }
}

const OUTCOME_TOO_LARGE: u8 = 1;
const OUTCOME_TIMED_OUT: u8 = 2;
const OUTCOME_MALFORMED: u8 = 3;
/// Read to its end.
const OUTCOME_COMPLETE: u8 = 4;

/// Which [`BodyError`] a body yielded, as the server reads it after the
/// app answered (0 = none).
#[derive(Clone, Default)]
pub(crate) struct BodyOutcome(Option<Arc<AtomicU8>>);

impl BodyOutcome {
    /// The status the client must get instead of the app's answer.
    pub fn status(&self) -> Option<http::StatusCode> {
        match self.0.as_ref()?.load(Ordering::Relaxed) {
            OUTCOME_TOO_LARGE => Some(http::StatusCode::PAYLOAD_TOO_LARGE),
            OUTCOME_TIMED_OUT => Some(http::StatusCode::REQUEST_TIMEOUT),
            OUTCOME_MALFORMED => Some(http::StatusCode::BAD_REQUEST),
            _ => None,
        }
    }

    /// For a request refused before its body (if any) was looked at.
    pub fn never_read() -> BodyOutcome {
        BodyOutcome(Some(Arc::new(AtomicU8::new(0))))
    }

    /// The request had a body that was not read to its end (so the
    /// connection cannot carry another request).
    pub fn left_unread(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|o| o.load(Ordering::Relaxed) != OUTCOME_COMPLETE)
    }
}

/// Times the waits for request-body bytes: armed when the app waits for
/// more and the client has sent nothing yet, so a body that arrives
/// steadily (or an app that reads late) never touches a timer.
struct StallTimer {
    limit: Duration,
    waiting_since: Option<tokio::time::Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallTimer {
    /// Ready once the current wait has lasted `limit`.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        let deadline = since + self.limit;
        let sleep = match &mut self.sleep {
            Some(s) => {
                if s.deadline() != deadline {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx)
    }

    fn progressed(&mut self) {
        self.waiting_since = None;
    }
}

impl RequestBody {
    pub(crate) fn new(
        inner: impl Into<Inbound>,
        limit: u64,
        stall_limit: Duration,
        client: Arc<super::ClientInfo>,
    ) -> RequestBody {
        let inner = inner.into();
        // A body that has already ended (no bytes declared, or the stream
        // closed with the head) yields nothing: it is not kept.
        let body = (!inner.is_end_stream()).then(|| {
            Box::new(Bodied {
                inner: Some(inner),
                guard: Guard {
                    limit,
                    read: 0,
                    outcome: Arc::new(AtomicU8::new(0)),
                    stall: StallTimer {
                        limit: stall_limit,
                        waiting_since: None,
                        sleep: None,
                    },
                },
            })
        });
        RequestBody { client, body }
    }

    /// Who sent the request (see [`super::ClientInfo::of`]).
    pub fn client(&self) -> &super::ClientInfo {
        &self.client
    }

    /// An empty body (for tests and synthetic requests).
    pub fn empty() -> RequestBody {
        RequestBody {
            client: Arc::new(super::ClientInfo::default()),
            body: None,
        }
    }

    /// Where the server reads which error this body yielded: nothing to
    /// read for a request without a body.
    pub(crate) fn outcome(&self) -> BodyOutcome {
        BodyOutcome(self.body.as_ref().map(|b| b.guard.outcome.clone()))
    }

    /// Reads the whole body into memory (bounded by `http.max_body_bytes`).
    pub async fn bytes(self) -> Result<Bytes, BodyError> {
        Ok(self.collect().await?.to_bytes())
    }
}

impl Bodied {
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.inner = None;
        self.guard.outcome.store(e.code(), Ordering::Relaxed);
        Poll::Ready(Some(Err(e)))
    }

    fn completed(&self) {
        self.guard
            .outcome
            .store(OUTCOME_COMPLETE, Ordering::Relaxed);
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let guard = &mut self.guard;
        match inner.poll_frame(cx) {
            Poll::Pending => {
                if guard.stall.poll_expired(cx).is_ready() {
                    let limit = guard.stall.limit;
                    return self.fail(BodyError::TimedOut(limit));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                guard.stall.progressed();
                if let Some(data) = frame.data_ref() {
                    guard.read += data.len() as u64;
                    if guard.read > guard.limit {
                        let limit = guard.limit;
                        return self.fail(BodyError::TooLarge { limit });
                    }
                }
                if inner.is_end_stream() {
                    self.completed();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => self.fail(e),
            Poll::Ready(None) => {
                self.completed();
                Poll::Ready(None)
            }
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut().body.as_mut() {
            Some(b) => b.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .and_then(|b| b.inner.as_ref())
            .is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .and_then(|b| b.inner.as_ref())
            .map_or(SizeHint::with_exact(0), |i| i.size_hint())
    }
}

#[cfg(test)]
mod tests {
    //! The request body as hyper hands it over: each case is one request
    //! written into an in-memory connection served by hyper.
    use super::*;
    use hyper::body::Incoming;
    use tokio::io::AsyncWriteExt;

    const LIMIT: u64 = 8;

    #[test]
    fn the_apps_request_stays_within_memcpys_cheaper_sizes() {
        // Moved whole several times per request: above 256 bytes, each
        // move takes `memcpy`'s loop (about twice the instructions).
        let size = std::mem::size_of::<crate::Request>();
        assert!(size <= 256, "the app's request is {size} bytes");
    }
    const STALL: Duration = Duration::from_millis(200);

    /// What reading the body of `raw` gave, and what the server then
    /// learns from its outcome.
    struct Read {
        result: Result<Bytes, BodyError>,
        outcome: BodyOutcome,
        allocated_guard: bool,
    }

    fn serve_one(raw: &'static [u8]) -> Read {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let tx = std::sync::Mutex::new(Some(tx));
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let body = RequestBody::new(
                    req.into_body(),
                    LIMIT,
                    STALL,
                    Arc::new(crate::ClientInfo::default()),
                );
                let tx = tx.lock().ok().and_then(|mut t| t.take());
                async move {
                    let outcome = body.outcome();
                    let allocated_guard = body.body.is_some();
                    let result = body.bytes().await;
                    if let Some(tx) = tx {
                        let _ = tx.send(Read {
                            result,
                            outcome,
                            allocated_guard,
                        });
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        Bytes,
                    >::new(
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(server), service),
            );
            // The client stays connected (a stalled body is one that
            // neither arrives nor ends).
            client.write_all(raw).await.expect("write");
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .expect("the body was read in time")
                .expect("the service answered")
        })
    }

    #[test]
    fn a_request_without_a_body_carries_no_guard_and_reads_empty() {
        let r = serve_one(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!r.allocated_guard);
        assert_eq!(r.result.expect("empty body"), Bytes::new());
        assert_eq!(r.outcome.status(), None);
        assert!(!r.outcome.left_unread());
    }

    #[test]
    fn a_body_within_the_limit_is_read_whole() {
        let r = serve_one(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert!(r.allocated_guard);
        assert_eq!(r.result.expect("body"), Bytes::from_static(b"hello"));
        assert_eq!(r.outcome.status(), None);
        assert!(!r.outcome.left_unread());
    }

    #[test]
    fn a_chunked_body_past_the_limit_is_too_large() {
        let r = serve_one(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
        );
        assert!(matches!(
            r.result,
            Err(BodyError::TooLarge { limit: LIMIT })
        ));
        assert_eq!(
            r.outcome.status(),
            Some(http::StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert!(r.outcome.left_unread());
    }

    #[test]
    fn a_body_that_stops_arriving_times_out() {
        let started = std::time::Instant::now();
        let r = serve_one(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhe");
        assert!(matches!(r.result, Err(BodyError::TimedOut(d)) if d == STALL));
        assert!(started.elapsed() >= STALL);
        assert_eq!(r.outcome.status(), Some(http::StatusCode::REQUEST_TIMEOUT));
        assert!(r.outcome.left_unread());
    }

    #[test]
    fn a_malformed_chunk_is_a_bad_request() {
        let r = serve_one(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        );
        assert!(matches!(r.result, Err(BodyError::Malformed(_))));
        assert_eq!(r.outcome.status(), Some(http::StatusCode::BAD_REQUEST));
        assert!(r.outcome.left_unread());
    }
}
