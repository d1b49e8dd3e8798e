//! Exec mode's sidecar: a worker process that runs no app code and serves
//! `metrics.bind` (metrics, the fleet's health and readiness), because the
//! app's own program owns the main port and the master loop must never
//! wait on a client.

use crate::app::{App, Body, BoxError, Handler, Request, Response, WorkerContext};

/// The app of the sidecar: nothing; every request is answered by the
/// built-in endpoints of `ListenRole::Sidecar`.
pub struct SidecarApp;

pub struct NotFound;

impl App for SidecarApp {
    type Handler = NotFound;

    async fn startup(&self, _worker: &WorkerContext) -> Result<NotFound, BoxError> {
        Ok(NotFound)
    }
}

impl Handler for NotFound {
    async fn call(&self, _req: Request) -> Response {
        let mut r = Response::new(Body::from("not found\n"));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        r
    }
}
