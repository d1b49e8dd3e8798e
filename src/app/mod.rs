//! What a user hands to rsvisor: an [`App`] that builds a [`Handler`] in
//! every worker after fork.

mod body;
mod context;
mod range;
mod static_files;
mod tower;

use std::future::Future;
use std::net::SocketAddr;

pub use body::{Body, BodyError, BoxError, RequestBody};
pub(crate) use body::{BodyOutcome, Inbound};
pub(crate) use context::ReadinessCheck;
pub use context::{Draining, WorkerContext};
pub use static_files::StaticFiles;
pub use tower::{tower, TowerApp, TowerHandler};

/// A request as handlers receive it.
pub type Request = http::Request<RequestBody>;
/// A response as handlers return it.
pub type Response = http::Response<Body>;

/// The application: its `startup` runs once in every worker process, after
/// fork and inside the worker's tokio runtime, before the worker accepts
/// connections. What it returns serves that worker's requests.
///
/// A startup error makes the worker exit with
/// [`crate::proto::exit::WorkerExit::AppStartupFailed`]; when every worker fails that
/// way the master stops with [`crate::proto::exit::Exit::AppStartupFailed`].
///
/// Most apps need not implement this: [`service_fn`] makes one from an
/// async function, [`tower()`] from any tower service (an axum `Router`).
pub trait App: Send + Sync + 'static {
    /// What `startup` builds: it serves every request of the worker.
    type Handler: Handler;

    /// Runs once in each worker, after fork, inside its runtime: open pools and clients here. An error stops the worker (exit 3).
    fn startup(
        &self,
        worker: &WorkerContext,
    ) -> impl Future<Output = Result<Self::Handler, BoxError>> + Send;

    /// What `check` and the start of `serve` should warn about in this
    /// configuration for this app (a setting it needs and does not have).
    /// Nothing by default.
    fn config_warnings(&self, config: &crate::Config) -> Vec<String> {
        let _ = config;
        Vec::new()
    }
}

/// Serves requests in one worker. `call` runs concurrently on many
/// connections.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    ///
    /// `async fn call` works; on a hot path, prefer
    /// `fn call(&self, req: Request) -> impl Future<Output = Response> + Send`
    /// returning an `async move` block, or settle what you can before it:
    /// an `async fn`'s future keeps its by-value argument and the binding
    /// of it apart, so it holds the request (240 bytes) twice, and the
    /// future is moved whole on every request.
    ///
    /// `call` runs when the request arrives, on the connection's task; the
    /// future it returns runs there too over HTTP/1.1, and on the stream's
    /// own task over HTTP/2. So a panic in the future ends the request's
    /// connection (HTTP/1.1) or only its stream (HTTP/2), and the worker
    /// goes on; a panic in `call` before it returns the future ends the
    /// connection either way: keep the work before the `async move` block
    /// to what cannot fail.
    fn call(&self, req: Request) -> impl Future<Output = Response> + Send;

    /// The worker's lifespan shutdown: runs once when the worker stops
    /// (drain after a reload, recycling, scale-down or TERM), after it
    /// stopped accepting and its requests (upgraded connections included)
    /// finished, or when the share of `lifecycle.graceful_timeout` left
    /// for it began. Close pools, flush buffers. A hook that hangs is cut
    /// off at `graceful_timeout`; one that panics is logged, and the worker
    /// still exits normally. Not run on a quick stop (INT, QUIT).
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Who sent a request, after the `[proxy]` rules: `ClientInfo::of(&req)`.
/// Apps served through [`tower()`] also find it in the request extensions
/// (axum: `Extension<ClientInfo>`); for the others it travels with the
/// request body, which saves two allocations on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client address: the TCP peer, or the forwarded client when the
    /// peer is a trusted proxy; `None` for a Unix-socket peer.
    pub addr: Option<SocketAddr>,
    /// `"http"` or `"https"` (as seen by the client).
    pub scheme: &'static str,
    /// The forwarded host, when a trusted proxy sent one.
    pub host: Option<String>,
}

impl Default for ClientInfo {
    /// An unknown client over plain HTTP (synthetic requests).
    fn default() -> Self {
        ClientInfo {
            addr: None,
            scheme: "http",
            host: None,
        }
    }
}

impl ClientInfo {
    /// The client of `req`.
    pub fn of(req: &Request) -> &ClientInfo {
        req.extensions()
            .get::<ClientInfo>()
            .unwrap_or_else(|| req.body().client())
    }
}

/// An app and handler made from one async function: the smallest way to
/// embed rsvisor.
///
/// ```no_run
/// use rsvisor::{Body, Response};
/// fn main() -> std::process::ExitCode {
///     rsvisor::main(rsvisor::service_fn(|_req| async { Response::new(Body::from("hello")) }))
/// }
/// ```
pub fn service_fn<F, Fut>(f: F) -> ServiceFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response> + Send,
{
    ServiceFn(f)
}

/// An app made of an async function (see [`service_fn`]).
#[derive(Clone)]
pub struct ServiceFn<F>(F);

impl<F, Fut> Handler for ServiceFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response> + Send,
{
    fn call(&self, req: Request) -> impl Future<Output = Response> + Send {
        (self.0)(req)
    }
}

impl<F, Fut> App for ServiceFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response> + Send,
{
    type Handler = ServiceFn<F>;

    async fn startup(&self, _worker: &WorkerContext) -> Result<Self::Handler, BoxError> {
        Ok(self.clone())
    }
}
