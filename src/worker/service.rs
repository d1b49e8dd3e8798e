//! Per-request path: limits, built-in endpoints, the app's handler,
//! counters, the access log, and the response body that reports when the
//! request is really over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderValue, ALT_SVC, CONNECTION, RETRY_AFTER};
use http::{StatusCode, Version};
use http_body::{Frame, SizeHint};

use super::access_log::Entry;
use super::conn_info::{ConnState, EndedBy, Peer, SendWatch};
use super::endpoints;
use super::shared::{self, Shared};
use super::stream_exec;
use crate::app::{Body, BodyOutcome, BoxError, ClientInfo, Handler, Inbound, RequestBody};
use crate::shm::inflight::PeerAddr;
use crate::shm::scoreboard::RequestClass;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Answers one request on the connection `conn`: its limits, built-in
/// endpoints and context are settled at once, and so is the app's future;
/// the returned future waits for the answer (the app's or a built-in's) and
/// runs `finish`. It is unboxed: hyper keeps it in the connection's slot
/// for the request in flight (HTTP/1.1) or in the stream's task (HTTP/2),
/// so a request without a body allocates nothing of its own on its way to
/// the app. `finish` runs in the future, not here: for HTTP/2 the future
/// runs in the stream's task, whose send watch it picks up.
pub fn respond<H: Handler, B: http_body::Body + Into<Inbound>>(
    shared: &Arc<Shared<H>>,
    conn: &Arc<ConnState>,
    req: http::Request<B>,
) -> impl Future<Output = Result<http::Response<TrackedBody<H>>, std::convert::Infallible>>
       + Send
       + 'static {
    let (route, mut ctx) = prepare(shared, conn, &req);
    // The app's future is made here, from the app's request: the request's
    // future (moved into hyper's slot on every request) then holds the
    // request once, inside the app's future. An `async` block taking the
    // request would hold it twice, as its capture and in the app's future.
    let (next, from_app) = match route {
        Route::Answered(resp) => (Next::Answered { resp: Some(resp) }, false),
        // Rare: boxed, so that they do not make every request's future
        // bigger.
        Route::Ready => {
            let shared = shared.clone();
            let fut = Box::pin(async move { endpoints::ready(&shared).await });
            (Next::Boxed { fut }, false)
        }
        Route::App(client) => {
            let http = &shared.config.http;
            let (limit, stall) = (http.max_body_bytes, http.header_read_timeout);
            let (parts, body) = req.into_parts();
            let body = RequestBody::new(body, limit, stall, client);
            ctx.body = body.outcome();
            if !http.compression {
                // Made where it stays: the common case's future is built
                // in the returned one, and the app's request in its
                // argument, not moved into them.
                return Respond {
                    ctx: Some(ctx),
                    from_app: true,
                    next: Next::App {
                        fut: shared.handler.call(http::Request::from_parts(parts, body)),
                    },
                };
            }
            let req = http::Request::from_parts(parts, body);
            let fut = Box::pin(compressed(shared.clone(), req));
            (Next::Boxed { fut }, true)
        }
    };
    Respond {
        ctx: Some(ctx),
        from_app,
        next,
    }
}

pin_project_lite::pin_project! {
    /// The future `respond` returns; `finish` takes its `ctx`.
    struct Respond<H: 'static, F> {
        ctx: Option<Ctx<H>>,
        from_app: bool,
        #[pin]
        next: Next<F>,
    }
}

pin_project_lite::pin_project! {
    /// What the request's future waits for: `F` is the app's future.
    #[project = NextProj]
    enum Next<F> {
        Answered { resp: Option<Box<crate::Response>> },
        Boxed { fut: BoxFuture<crate::Response> },
        App { #[pin] fut: F },
    }
}

impl<H: Handler, F: Future<Output = crate::Response>> Future for Respond<H, F> {
    type Output = Result<http::Response<TrackedBody<H>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Polled again after it answered (hyper and the HTTP/3 path never
        // do): the context is gone, and so is a built-in answer.
        let resp = match this.next.project() {
            NextProj::Answered { resp } => match resp.take() {
                Some(r) => *r,
                None => return Poll::Pending,
            },
            NextProj::Boxed { fut } => std::task::ready!(fut.as_mut().poll(cx)),
            NextProj::App { fut } => std::task::ready!(fut.poll(cx)),
        };
        match this.ctx.take() {
            Some(ctx) => Poll::Ready(Ok(finish(ctx, resp, *this.from_app))),
            None => Poll::Pending,
        }
    }
}

/// The app's handler as a tower service, for tower-http's compression.
struct AppService<H: 'static>(Arc<Shared<H>>);

impl<H: 'static> Clone for AppService<H> {
    fn clone(&self) -> Self {
        AppService(self.0.clone())
    }
}

impl<H: Handler> tower_service::Service<crate::Request> for AppService<H> {
    type Response = crate::Response;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<crate::Response, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: crate::Request) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move { Ok(shared.handler.call(req).await) })
    }
}

/// `http.compression`: the app's answer, compressed as the request's
/// `Accept-Encoding` asks and tower-http's default predicate allows.
async fn compressed<H: Handler>(shared: Arc<Shared<H>>, req: crate::Request) -> crate::Response {
    use tower::ServiceExt;
    let svc = tower_http::compression::Compression::new(AppService(shared));
    match svc.oneshot(req).await {
        Ok(resp) => resp.map(Body::stream),
        Err(never) => match never {},
    }
}

/// What the request path carries from before the app to after it.
struct Ctx<H: 'static> {
    open: Open<H>,
    /// `os::monotonic_us` when the request arrived.
    start_us: u64,
    version: Version,
    class: RequestClass,
    /// Boxed: carried only when the access log is on.
    log: Option<Box<PendingLog>>,
    /// Which error the request body yielded, if it has one.
    body: BodyOutcome,
}

/// Where a request goes.
enum Route {
    /// Answered without the app (built-in endpoint, limit, overload).
    /// Boxed: the route is part of every request's future.
    Answered(Box<crate::Response>),
    /// `/ready`: the app's readiness checks run first.
    Ready,
    /// To the app's handler, with who sent it.
    App(Arc<ClientInfo>),
}

fn prepare<H: Handler, B: http_body::Body>(
    shared: &Arc<Shared<H>>,
    conn: &Arc<ConnState>,
    req: &http::Request<B>,
) -> (Route, Ctx<H>) {
    let start_us = crate::os::monotonic_us();
    let version = req.version();
    let bodiless = http_body::Body::is_end_stream(req.body());
    let open = Open::start(shared, conn, bodiless, version);
    let class = RequestClass::of(req.method(), version);
    let client = shared.trust.client_of(conn, req.headers());
    let log = shared.access_log.as_ref().map(|_| {
        Box::new(PendingLog {
            time: SystemTime::now(),
            client: client.addr.map(|a| a.ip()),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version,
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            referer: req.headers().get(http::header::REFERER).cloned(),
            request_id: req.headers().get("x-request-id").cloned(),
        })
    });
    let mut ctx = Ctx {
        open,
        start_us,
        version,
        class,
        log,
        body: BodyOutcome::default(),
    };
    if version < Version::HTTP_2 {
        if let Err(why) = rfc9112_refusal(req) {
            // Not a request to keep talking with.
            ctx.body = BodyOutcome::never_read();
            let resp = status_response(StatusCode::BAD_REQUEST, why);
            return (Route::Answered(Box::new(resp)), ctx);
        }
    }
    let http = &shared.config.http;
    let limit = http.max_body_bytes;
    // hyper's size hint is the parsed Content-Length (exact) or, chunked,
    // nothing declared.
    if http_body::Body::size_hint(req.body())
        .exact()
        .is_some_and(|n| n > limit)
    {
        // Refused before reading a byte of it.
        ctx.body = BodyOutcome::never_read();
        let resp = status_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        return (Route::Answered(Box::new(resp)), ctx);
    }
    let route = match endpoints::builtin(shared, conn.role, req) {
        Some(endpoints::Builtin::Answer(resp)) => Some(Route::Answered(Box::new(resp))),
        Some(endpoints::Builtin::Ready) => Some(Route::Ready),
        None if shared.at_capacity() => Some(Route::Answered(Box::new(overloaded()))),
        None => None,
    };
    if let Some(route) = route {
        if !bodiless {
            // Answered without reading the body.
            ctx.body = BodyOutcome::never_read();
        }
        return (route, ctx);
    }
    let peer = match conn.peer {
        Peer::Tcp(a) => PeerAddr::Ip(a),
        Peer::Unix => PeerAddr::Unix,
    };
    ctx.open.app_starts(req, peer);
    (Route::App(client), ctx)
}

/// After the response head exists: limits, drain, counters, and the body
/// wrapper that reports the end of the request.
/// `from_app`: the response is the app's (its handler's), not one the
/// server made.
fn finish<H: Handler>(
    ctx: Ctx<H>,
    mut resp: crate::Response,
    from_app: bool,
) -> http::Response<TrackedBody<H>> {
    let (shared, conn) = (&ctx.open.shared, &ctx.open.conn);
    if let Some(status) = ctx.body.status() {
        // The body was too large, stalled or malformed: whatever the app
        // answered, the client gets 413, 408 or 400.
        resp = status_response(status, body_error_text(status));
    }
    if matches!(
        resp.status(),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT | StatusCode::BAD_REQUEST
    ) && ctx.version < Version::HTTP_2
        && ctx.body.left_unread()
    {
        // The rest of the body is not read (or cannot be): the connection
        // cannot be reused. An app's 4xx to a request read whole keeps it.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && ctx.version < Version::HTTP_2 {
        // hyper hands the connection to the app after this response; it
        // counts as upgraded until the app drops it.
        conn.upgrading();
        shared.conns.upgrade_started();
    } else if ctx.version < Version::HTTP_2
        && (shared.draining() || conn.must_shed(shared.slot.shed_epoch()))
    {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }

    if let Some(offer) = &shared.alt_svc {
        if conn.tls && ctx.version < Version::HTTP_3 && !resp.headers().contains_key(ALT_SVC) {
            resp.headers_mut().insert(ALT_SVC, offer.clone());
        }
    }
    let slot = shared.slot;
    let status = resp.status().as_u16();
    let latency_us = crate::os::monotonic_us().saturating_sub(ctx.start_us);
    // A proxied answer is counted (by the front's handler) for the app
    // process behind it; the front's own answers are marked.
    let attributed = shared.front
        && from_app
        && ctx.body.status().is_none()
        && resp
            .extensions()
            .get::<super::front::FrontAnswer>()
            .is_none();
    let served = if shared.sidecar || attributed {
        0
    } else if shared.config.metrics.enabled {
        slot.record(status, ctx.class, latency_us)
    } else {
        slot.count_request()
    };
    if served != 0 && served % shared::YIELD_EVERY_REQUESTS == 0 {
        crate::os::yield_cpu();
    }
    if served != 0 && slot.wants_nudge(served) {
        shared.nudge_master();
    }
    if shared.max_requests != 0 && served == shared.max_requests && slot.mark_retiring() {
        tracing::info!(
            served,
            "worker reached max_requests; asking the master for a replacement"
        );
        shared.nudge_master();
    }

    // The head is ready: from now on the response waits for the client
    // until hyper takes its body.
    let stream = stream_exec::current_stream();
    let now = shared.now_ms();
    stream.as_deref().unwrap_or(&conn.send).waiting(now);
    resp.map(|body| TrackedBody {
        inner: body,
        sent: 0,
        stream,
        done: Some(Done {
            open: ctx.open,
            start_us: ctx.start_us,
            status,
            log: ctx.log,
        }),
    })
}

fn body_error_text(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large\n",
        StatusCode::REQUEST_TIMEOUT => "request body timed out\n",
        _ => "malformed request body\n",
    }
}

/// What RFC 9112 says a server must refuse (400) that hyper lets through:
/// two `Host` fields (§3.2), the asterisk form for anything but `OPTIONS`
/// and the authority form for anything but `CONNECT` (§3.2.3, §3.2.4).
/// Control characters in field values (§5.5) are refused by hyper's parser
/// (httparse) already; tests/it/hardening.rs checks both.
fn rfc9112_refusal<B>(req: &http::Request<B>) -> Result<(), &'static str> {
    let headers = req.headers();
    // A walk over the fields instead of hashing the name: clients send
    // Host first or nearly, and when no name is repeated the walk ends at
    // the first Host. Otherwise it looks for a second one.
    let unrepeated = headers.len() == headers.keys_len();
    let mut host = (None, None);
    for (name, value) in headers {
        if name == http::header::HOST {
            if host.0.is_some() {
                host.1 = Some(value);
                break;
            }
            host.0 = Some(value);
            if unrepeated {
                break;
            }
        }
    }
    match host {
        (Some(_), Some(_)) => return Err("more than one Host field\n"),
        // HTTP/1.0 had no Host field; HTTP/1.1 must send one (§3.2).
        (None, _) if req.version() == Version::HTTP_11 => return Err("no Host field\n"),
        (Some(h), None) if !valid_host(h.as_bytes()) => return Err("invalid Host field\n"),
        _ => {}
    }
    let uri = req.uri();
    let method = req.method();
    if uri.scheme().is_none() {
        if uri.authority().is_some() && method != http::Method::CONNECT {
            return Err("authority-form request target is only for CONNECT\n");
        }
        if uri.path() == "*" && method != http::Method::OPTIONS {
            return Err("asterisk-form request target is only for OPTIONS\n");
        }
    }
    Ok(())
}

/// RFC 9110 §7.2: `Host = uri-host [ ":" port ]`, where `uri-host` is an
/// `IP-literal` in brackets or a `reg-name` (RFC 3986 §3.2.2; an IPv4
/// address is a `reg-name` as far as its characters go). Empty is allowed
/// (a request target without an authority).
pub(crate) fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&c| c == b']') {
            Some(end) => {
                let inside = &v[1..end];
                let literal = !inside.is_empty()
                    && inside
                        .iter()
                        .all(|&c| c == b':' || unreserved(c) || sub_delim(c));
                if !literal {
                    return false;
                }
                match &v[end + 1..] {
                    [] => return true,
                    [b':', port @ ..] => (&[][..], port),
                    _ => return false,
                }
            }
            None => return false,
        },
        _ => match v.iter().position(|&c| c == b':') {
            Some(colon) => (&v[..colon], &v[colon + 1..]),
            None => (v, &[][..]),
        },
    };
    port.iter().all(u8::is_ascii_digit) && reg_name(host)
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`
fn reg_name(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            c if unreserved(c) || sub_delim(c) => i += 1,
            _ => return false,
        }
    }
    true
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn sub_delim(c: u8) -> bool {
    matches!(
        c,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn status_response(status: StatusCode, body: &'static str) -> crate::Response {
    let mut r = crate::Response::new(Body::from(body));
    *r.status_mut() = status;
    r
}

/// `http.limit_concurrency` reached: tell the client to come back soon
/// instead of queueing without bound.
fn overloaded() -> crate::Response {
    let mut r = status_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "server is at its concurrency limit; retry shortly\n",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Request facts kept for the access-log line, written when the response
/// body is done (the byte count is known then).
struct PendingLog {
    time: SystemTime,
    client: Option<std::net::IpAddr>,
    method: http::Method,
    uri: http::Uri,
    version: Version,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

/// A request on its connection, from its head to the end of its
/// response: counted in the connection's requests in flight (an idle
/// connection has none) and, while the app works on it, against
/// `http.limit_concurrency` and in the slot's in-flight table (for hang
/// forensics). Released when the response is done, and also when the
/// request is dropped before that: a client that reset its HTTP/2 stream,
/// an app that panicked.
struct Open<H: 'static> {
    shared: Arc<Shared<H>>,
    conn: Arc<ConnState>,
    /// `Some` while the app works on it: its entry in the in-flight table.
    app: Option<Option<usize>>,
}

impl<H: 'static> Open<H> {
    fn start(
        shared: &Arc<Shared<H>>,
        conn: &Arc<ConnState>,
        bodiless: bool,
        version: Version,
    ) -> Open<H> {
        conn.request_started(bodiless, version);
        Open {
            shared: shared.clone(),
            conn: conn.clone(),
            app: None,
        }
    }

    /// The request goes to the app.
    fn app_starts<B>(&mut self, req: &http::Request<B>, peer: PeerAddr) {
        let shared = &self.shared;
        shared.begin_app_request();
        let entry = shared.requests.begin(
            req.method().as_str(),
            req.uri().path(),
            peer,
            shared.now_ms(),
        );
        self.app = Some(entry);
    }

    /// The app is done with the request (its response is sent).
    fn app_done(&mut self) {
        if let Some(entry) = self.app.take() {
            self.shared.requests.end(entry);
            self.shared.end_app_request();
        }
    }
}

impl<H: 'static> Drop for Open<H> {
    fn drop(&mut self) {
        self.app_done();
        self.conn.request_finished(self.shared.now_ms());
    }
}

/// Marks the request finished when the response body is done or dropped.
struct Done<H: 'static> {
    /// Released when the response is done.
    open: Open<H>,
    start_us: u64,
    status: u16,
    log: Option<Box<PendingLog>>,
}

/// The response body handed to hyper: counts bytes, keeps the send watch
/// (HTTP/1.1: the connection's; HTTP/2: the stream's) and reports the end
/// of the request.
pub struct TrackedBody<H: 'static> {
    inner: Body,
    sent: u64,
    /// The HTTP/2 stream's watch; `None` on HTTP/1.1.
    stream: Option<Arc<SendWatch>>,
    done: Option<Done<H>>,
}

impl<H: 'static> TrackedBody<H> {
    fn watch(&self) -> Option<&SendWatch> {
        match &self.stream {
            Some(w) => Some(w),
            None => self.done.as_ref().map(|d| &d.open.conn.send),
        }
    }

    /// The body ended (`complete`) or was dropped before its end.
    fn finish(&mut self, complete: bool) {
        if let Some(w) = self.watch() {
            w.moving();
        }
        let Some(mut done) = self.done.take() else {
            return;
        };
        done.open.app_done();
        let (shared, conn) = (&done.open.shared, &done.open.conn);
        // The metrics helper's own answers are not the app's traffic.
        if !shared.sidecar {
            shared.slot.add_bytes_sent(self.sent);
        }
        if let (Some(log), Some(access)) = (done.log, &shared.access_log) {
            let incomplete = match &self.stream {
                _ if complete => None,
                Some(w) if w.timed_out() => Some(EndedBy::SendTimeout.as_str()),
                Some(_) => Some("stream_reset"),
                None => Some(conn.ended_by().as_str()),
            };
            let entry = Box::new(Entry {
                time: log.time,
                client: log.client,
                method: log.method,
                uri: log.uri,
                version: log.version,
                status: done.status,
                bytes: self.sent,
                started_us: done.start_us,
                user_agent: log.user_agent,
                referer: log.referer,
                request_id: log.request_id,
                incomplete,
            });
            if complete && self.stream.is_none() && done.status != 101 {
                // HTTP/1.1: written once its last byte leaves hyper (see
                // `conn::Tracked`), or marked incomplete if it never does.
                if let Some(earlier) = conn.defer_log(entry) {
                    access.log(earlier);
                }
            } else {
                access.log(entry);
            }
        }
        // `done.open` goes here: the connection counts the request over.
    }
}

impl<H: 'static> Drop for TrackedBody<H> {
    fn drop(&mut self) {
        // hyper drops a body of known length once it has its last byte,
        // without asking for the end.
        let complete = http_body::Body::is_end_stream(&self.inner);
        self.finish(complete);
    }
}

impl<H: 'static> http_body::Body for TrackedBody<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // hyper asks for more: whatever was handed over has gone out.
        if let Some(w) = this.watch() {
            w.moving();
        }
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if let Some(done) = &this.done {
                    let now = done.open.shared.now_ms();
                    if let Some(w) = this.watch() {
                        w.waiting(now);
                    }
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
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

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn host_fields_as_rfc_9110_allows_them() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8000",
            "a-b_c~d.e",
            "%41bc",
            "",
            "x:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "a b", "u@evil", "a/b", "[::1", "[]", "[::1]x", "x:8a", "%4", "a:1:2", "a\tb",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    mod props {
        use super::valid_host;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            #[test]
            fn any_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = valid_host(&v);
            }

            #[test]
            fn names_and_addresses_with_ports_are_valid(
                name in "[a-zA-Z0-9._~!$&'()*+,;=-]{0,60}",
                v4 in any::<std::net::Ipv4Addr>(),
                v6 in any::<std::net::Ipv6Addr>(),
                port in proptest::option::of(any::<u16>()),
            ) {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let name_with_port = format!("{name}{port}");
                let v4_with_port = format!("{v4}{port}");
                let v6_with_port = format!("[{v6}]{port}");
                prop_assert!(valid_host(name_with_port.as_bytes()));
                prop_assert!(valid_host(v4_with_port.as_bytes()));
                prop_assert!(valid_host(v6_with_port.as_bytes()));
            }

            /// Whitespace, userinfo, a path or a second colon never pass.
            #[test]
            fn a_forbidden_byte_anywhere_is_invalid(
                before in "[a-z0-9.]{0,20}",
                bad in prop::sample::select(vec![' ', '@', '/', '\t', '\\', '?', '#', '"', '<']),
                after in "[a-z0-9.]{0,20}",
            ) {
                let host = format!("{before}{bad}{after}");
                prop_assert!(!valid_host(host.as_bytes()));
            }
        }
    }
}
