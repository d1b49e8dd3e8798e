//! Request and response bodies of the public API.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

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

/// A request body as the app receives it. It enforces `http.max_body_bytes`
/// while streaming: reading past the limit yields [`BodyTooLarge`].
pub struct RequestBody {
    inner: Option<hyper::body::Incoming>,
    limit: u64,
    read: u64,
    /// Set when the limit was exceeded, for the server to answer 413.
    exceeded: Option<Arc<AtomicBool>>,
    /// The connection's "waiting for the client's body since" clock slot.
    stall: Option<BodyStall>,
    client: super::ClientInfo,
}

/// Where a request body records that it waits for the client: the
/// connection times out a body that stalls (slow uploads hold a worker's
/// connection otherwise).
#[derive(Clone)]
pub(crate) struct BodyStall {
    /// Worker-clock milliseconds + 1 when the wait began; 0 = not waiting.
    pub since: Arc<std::sync::atomic::AtomicU64>,
    pub clock: Arc<std::sync::atomic::AtomicU64>,
}

impl BodyStall {
    fn waiting(&self) {
        if self.since.load(Ordering::Relaxed) == 0 {
            let now = self.clock.load(Ordering::Relaxed);
            self.since.store(now + 1, Ordering::Relaxed);
        }
    }

    fn progressed(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
}

/// The error a [`RequestBody`] yields once more than `http.max_body_bytes`
/// arrived; the connection layer answers 413 when the app lets it through.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the limit of {limit} bytes (http.max_body_bytes)")]
pub struct BodyTooLarge {
    pub limit: u64,
}

impl RequestBody {
    pub(crate) fn new(
        inner: hyper::body::Incoming,
        limit: u64,
        stall: Option<BodyStall>,
        client: super::ClientInfo,
    ) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            limit,
            read: 0,
            exceeded: None,
            stall,
            client,
        }
    }

    /// Who sent the request (see [`super::ClientInfo::of`]).
    pub fn client(&self) -> &super::ClientInfo {
        &self.client
    }

    /// An empty body (for tests and synthetic requests).
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            limit: 0,
            read: 0,
            exceeded: None,
            stall: None,
            client: super::ClientInfo::default(),
        }
    }

    /// A flag that turns true if reading goes past the limit.
    pub(crate) fn limit_flag(&mut self) -> Arc<AtomicBool> {
        self.exceeded
            .get_or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .clone()
    }

    /// Reads the whole body into memory (bounded by `http.max_body_bytes`).
    pub async fn bytes(self) -> Result<Bytes, BoxError> {
        Ok(self.collect().await?.to_bytes())
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Some(stall) = &this.stall {
            if polled.is_pending() {
                stall.waiting();
            } else {
                stall.progressed();
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.limit {
                        this.inner = None;
                        if let Some(flag) = &this.exceeded {
                            flag.store(true, Ordering::Relaxed);
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), |b| b.size_hint())
    }
}
