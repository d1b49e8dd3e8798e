//! The library's own endpoints, answered before the app sees a request:
//! health (liveness), readiness, metrics.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, StatusCode};

use super::readiness;
use super::{ListenRole, Shared};
use crate::app::{Body, Handler, Response};

/// What the library answers itself.
pub enum Builtin {
    Answer(Response),
    /// Readiness: the app's checks run first (see [`ready`]).
    Ready,
}

pub fn builtin<H: Handler, B>(
    shared: &Shared<H>,
    role: ListenRole,
    req: &http::Request<B>,
) -> Option<Builtin> {
    let path = req.uri().path();
    let metrics = &shared.config.metrics;
    if role == ListenRole::Sidecar {
        let app = &shared.config.app;
        return Some(Builtin::Answer(
            if path == metrics.path && metrics.enabled {
                metrics_response(shared)
            } else if path == app.health_path {
                json(StatusCode::OK, r#"{"status":"ok"}"#.into())
            } else if path == app.ready_path {
                fleet_ready(shared)
            } else {
                text(StatusCode::NOT_FOUND, "not found\n")
            },
        ));
    }
    if role == ListenRole::Metrics {
        // The metrics listener serves nothing else.
        return Some(Builtin::Answer(
            if path == metrics.path && metrics.enabled {
                metrics_response(shared)
            } else {
                text(StatusCode::NOT_FOUND, "not found\n")
            },
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let app = &shared.config.app;
    if path == app.health_path {
        return Some(Builtin::Answer(json(
            StatusCode::OK,
            r#"{"status":"ok"}"#.into(),
        )));
    }
    if path == app.ready_path {
        return Some(Builtin::Ready);
    }
    if metrics.enabled && metrics.bind.is_none() && path == metrics.path {
        return Some(Builtin::Answer(metrics_response(shared)));
    }
    None
}

/// The sidecar's `/ready`: the fleet serves (at least one app worker is
/// ready) and is not stopping.
fn fleet_ready<H>(shared: &Shared<H>) -> Response {
    if shared.board.is_stopping() {
        let body = readiness::json("draining", &Vec::new());
        return json(StatusCode::SERVICE_UNAVAILABLE, body);
    }
    if shared.board.app_serving() {
        json(StatusCode::OK, readiness::json("ready", &Vec::new()))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            readiness::json("not_ready", &Vec::new()),
        )
    }
}

/// `/ready`: 503 `draining` while the worker or the server stops;
/// otherwise the app's checks decide (200 `ready` or 503 `not_ready`).
pub async fn ready<H>(shared: &Shared<H>) -> Response {
    if shared.draining() || shared.board.is_stopping() {
        let body = readiness::json("draining", &Vec::new());
        return json(StatusCode::SERVICE_UNAVAILABLE, body);
    }
    let round = if shared.readiness.is_empty() {
        Vec::new()
    } else {
        shared.readiness.round().await
    };
    if round.iter().all(|(_, failed)| failed.is_none()) {
        json(StatusCode::OK, readiness::json("ready", &round))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            readiness::json("not_ready", &round),
        )
    }
}

fn metrics_response<H>(shared: &Shared<H>) -> Response {
    let mut resp = Response::new(Body::from(crate::telemetry::metrics::render(
        shared.board,
        !shared.sidecar,
    )));
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

fn json(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
