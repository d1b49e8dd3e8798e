//! The library's own endpoints, answered before the app sees a request:
//! health (liveness), readiness, metrics.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, StatusCode};

use super::{ListenRole, Shared};
use crate::app::{Body, Handler, Request, Response};

pub fn builtin<H: Handler>(
    shared: &Shared<H>,
    role: ListenRole,
    req: &Request,
) -> Option<Response> {
    let path = req.uri().path();
    let metrics = &shared.config.metrics;
    if role == ListenRole::Metrics {
        // The metrics listener serves nothing else.
        return Some(if path == metrics.path && metrics.enabled {
            metrics_response(shared)
        } else {
            text(StatusCode::NOT_FOUND, "not found\n")
        });
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let app = &shared.config.app;
    if path == app.health_path {
        return Some(json(StatusCode::OK, r#"{"status":"ok"}"#));
    }
    if path == app.ready_path {
        return Some(if shared.draining() || shared.board.is_stopping() {
            json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
        } else if !shared.handler.ready() {
            json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#)
        } else {
            json(StatusCode::OK, r#"{"status":"ready"}"#)
        });
    }
    if metrics.enabled && metrics.bind.is_none() && path == metrics.path {
        return Some(metrics_response(shared));
    }
    None
}

fn metrics_response<H>(shared: &Shared<H>) -> Response {
    let mut resp = Response::new(Body::from(crate::metrics::render(shared.board)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp
}

fn json(status: StatusCode, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
