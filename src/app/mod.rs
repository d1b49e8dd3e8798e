//! What a user hands to rsvisor: an [`App`] that builds a [`Handler`] in
//! every worker after fork.

mod body;
mod static_files;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) use body::BodyOutcome;
pub use body::{Body, BodyError, BoxError, RequestBody};
pub use static_files::StaticFiles;

use crate::config::Config;

/// A request as handlers receive it.
pub type Request = http::Request<RequestBody>;
/// A response as handlers return it.
pub type Response = http::Response<Body>;

/// The application: its `startup` runs once in every worker process, after
/// fork and inside the worker's tokio runtime, before the worker accepts
/// connections. What it returns serves that worker's requests.
///
/// A startup error makes the worker exit with
/// [`crate::exit::WORKER_APP_STARTUP_FAILED`]; when every worker fails that
/// way the master stops with [`crate::exit::APP_STARTUP_FAILED`].
pub trait App: Send + Sync + 'static {
    type Handler: Handler;

    fn startup(
        &self,
        worker: &WorkerContext,
    ) -> impl Future<Output = Result<Self::Handler, BoxError>> + Send;
}

/// Serves requests in one worker. `call` runs concurrently on many
/// connections; `ready` is consulted by the readiness endpoint.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, req: Request) -> impl Future<Output = Response> + Send;

    /// Whether this worker can serve (database reachable, caches warm…).
    /// `/ready` answers 503 while this is false.
    fn ready(&self) -> bool {
        true
    }
}

/// What a worker knows about itself, given to [`App::startup`].
#[derive(Clone)]
pub struct WorkerContext {
    pub(crate) config: Arc<Config>,
    pub(crate) slot: usize,
    pub(crate) generation: u32,
}

impl WorkerContext {
    /// The configuration this worker's generation was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This worker's scoreboard slot (stable label for per-worker data).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The generation (incremented by every reload) this worker belongs to.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// Who sent a request, after the `[proxy]` rules: `ClientInfo::of(&req)`.
/// (It travels with the request body rather than in the extensions: that
/// saves two allocations on every request.)
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
        req.body().client()
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
