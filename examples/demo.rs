//! The demo app that tests and benchmarks run (its routes are a contract,
//! listed in the README):
//!
//! | route              | answer                                            |
//! |--------------------|---------------------------------------------------|
//! | `GET /`            | 200 `hello world`                                 |
//! | `GET /sleep?ms=N`  | waits N ms without blocking the worker, then 200  |
//! | `GET /block?ms=N`  | blocks the worker's thread for N ms, then 200     |
//! | `GET /pid`         | 200, the worker's pid                             |
//! | `GET /client`      | 200 JSON `{"addr": …, "scheme": …}`               |
//! | `POST /echo`       | 200, the request body                             |
//! | `GET /grow?mb=N`   | allocates N MiB and keeps it (memory recycling)   |
//! | `GET /panic`       | panics in the handler (the worker must survive)   |
//!
//! Startup switches, set with `[app] env = { … }` in the config:
//! `DEMO_FAIL_STARTUP=1` makes every worker's startup fail;
//! `DEMO_STARTUP_DELAY_MS=N` makes startup take N ms.

use std::sync::Mutex;
use std::time::Duration;

use http::{Method, StatusCode};
use rsvisor::{App, Body, BoxError, ClientInfo, Handler, Request, Response, WorkerContext};

struct Demo;

struct DemoHandler {
    /// Memory kept alive by /grow.
    hoard: Mutex<Vec<Vec<u8>>>,
}

impl App for Demo {
    type Handler = DemoHandler;

    async fn startup(&self, _worker: &WorkerContext) -> Result<DemoHandler, BoxError> {
        if let Some(ms) = env_u64("DEMO_STARTUP_DELAY_MS") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if std::env::var_os("DEMO_FAIL_STARTUP").is_some_and(|v| v != "0" && !v.is_empty()) {
            return Err("DEMO_FAIL_STARTUP is set: refusing to start".into());
        }
        Ok(DemoHandler {
            hoard: Mutex::new(Vec::new()),
        })
    }
}

impl Handler for DemoHandler {
    async fn call(&self, req: Request) -> Response {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/") => Response::new(Body::from("hello world")),
            (&Method::GET, "/pid") => Response::new(Body::from(std::process::id().to_string())),
            // The other routes await bigger futures (timers, body reads):
            // boxed, so that every request's future stays small.
            _ => Box::pin(self.other_routes(req)).await,
        }
    }
}

impl DemoHandler {
    async fn other_routes(&self, req: Request) -> Response {
        let ms = query_u64(&req, "ms").unwrap_or(0);
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/sleep") => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Response::new(Body::from(format!("slept {ms} ms\n")))
            }
            (&Method::GET, "/block") => {
                // Deliberately blocks the runtime thread: a stuck worker.
                std::thread::sleep(Duration::from_millis(ms));
                Response::new(Body::from(format!("blocked {ms} ms\n")))
            }
            (&Method::GET, "/client") => {
                let info = ClientInfo::of(&req);
                let addr = info
                    .addr
                    .map(|a| serde_json::Value::String(a.ip().to_string()))
                    .unwrap_or(serde_json::Value::Null);
                let scheme = info.scheme;
                let body = serde_json::json!({ "addr": addr, "scheme": scheme });
                json(body.to_string())
            }
            (&Method::POST, "/echo") => match req.into_body().bytes().await {
                Ok(bytes) => Response::new(Body::from(bytes)),
                Err(e) => status(e.status(), e.to_string()),
            },
            (&Method::GET, "/grow") => {
                let mb = query_u64(&req, "mb").unwrap_or(0).min(4096) as usize;
                // Touch every page so the memory is really resident.
                let block = vec![1u8; mb * 1024 * 1024];
                let mut hoard = self.hoard.lock().unwrap_or_else(|e| e.into_inner());
                hoard.push(block);
                let total: usize = hoard.iter().map(Vec::len).sum();
                Response::new(Body::from(format!("holding {} MiB\n", total >> 20)))
            }
            (&Method::GET, "/panic") => panic!("demo: /panic was requested"),
            _ => status(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

fn query_u64(req: &Request, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn json(body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: StatusCode, msg: String) -> Response {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = code;
    r
}

fn main() -> std::process::ExitCode {
    rsvisor::main(Demo)
}
