//! Any tower service as an app: an axum `Router`, a hyper service, a
//! `tower::ServiceBuilder` stack. The service is built in each worker
//! (after fork, inside its runtime) by an async factory, so that database
//! pools and other per-process state are created where they are used.

use std::future::Future;

use bytes::Bytes;
use tower::ServiceExt;
use tower_service::Service;

use super::{App, Body, BoxError, ClientInfo, Handler, Request, Response, WorkerContext};

/// An app served by the tower service `factory` builds in each worker:
///
/// ```no_run
/// # use rsvisor::{BoxError, WorkerContext};
/// # fn router() -> axum::Router { axum::Router::new() }
/// fn main() -> std::process::ExitCode {
///     rsvisor::main(rsvisor::tower(|_worker: WorkerContext| async {
///         Ok::<_, BoxError>(router())
///     }))
/// }
/// ```
///
/// The service gets `http::Request<RequestBody>` (streaming, with the body
/// limits and stall timeout of any rsvisor app), with [`ClientInfo`] in
/// its extensions (and, with the `axum` feature, axum's
/// `ConnectInfo<SocketAddr>`). Its response body may be any
/// `http_body::Body<Data = Bytes>`. A service error becomes a 500 (and is
/// logged); axum's `Router` has none.
pub fn tower<F>(factory: F) -> TowerApp<F> {
    TowerApp(factory)
}

/// An app made of a tower service factory (see [`tower`](crate::tower)).
pub struct TowerApp<F>(F);

impl<F, Fut, S, B> App for TowerApp<F>
where
    F: Fn(WorkerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, BoxError>> + Send,
    S: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Handler = TowerHandler<S>;

    async fn startup(&self, worker: &WorkerContext) -> Result<TowerHandler<S>, BoxError> {
        Ok(TowerHandler((self.0)(worker.clone()).await?))
    }
}

/// Serves requests with a clone of the service per request (what axum and
/// hyper do).
pub struct TowerHandler<S>(S);

impl<S, B> Handler for TowerHandler<S>
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // The service's future is made before the request's future, which then
    // holds only its box: an `async fn` would hold the request twice as
    // well, moved whole on every request.
    #[allow(clippy::manual_async_fn)]
    fn call(&self, mut req: Request) -> impl Future<Output = Response> + Send {
        // Where the ecosystem's extractors look for the client.
        let client = ClientInfo::of(&req).clone();
        #[cfg(feature = "axum")]
        {
            let addr = client
                .addr
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(addr));
        }
        req.extensions_mut().insert(client);
        // Boxed: a service's future can be big (axum's are), and moving it
        // around inline costs more than one allocation.
        let answer = Box::pin(self.0.clone().oneshot(req));
        async move {
            match answer.await {
                Ok(resp) => resp.map(Body::stream),
                Err(e) => {
                    let e: BoxError = e.into();
                    tracing::error!(error = %e, "the app's service failed; answering 500");
                    let mut r = Response::new(Body::from("internal server error\n"));
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            }
        }
    }
}
