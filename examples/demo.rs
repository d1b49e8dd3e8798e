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
//! | `POST /reject`     | reads the body, then 400 (the app's own refusal)  |
//! | `GET /grow?mb=N`   | allocates N MiB and keeps it (memory recycling)   |
//! | `GET /panic`       | panics in the handler (the worker must survive)   |
//! | `GET /ws`          | WebSocket echo of text frames; `pid` is answered  |
//! |                    | with the worker's pid; on drain every open socket |
//! |                    | gets close code 1001 (`?ignore_drain=1`: not)     |
//!
//! Switches, set with `[app] env = { … }` in the config:
//! `DEMO_FAIL_STARTUP=1` makes every worker's startup fail;
//! `DEMO_STARTUP_DELAY_MS=N` makes startup take N ms;
//! `DEMO_SHUTDOWN_LOG=PATH`: each worker's shutdown hook appends
//! `shutdown PID` to PATH;
//! `DEMO_READY_FILE=PATH`: a readiness check `ready_file`, ok while PATH
//! exists; `DEMO_READY_HANG=1`: a readiness check `hang` that never answers;
//! `DEMO_FAIL_RATE=R` (0–1): that share of `GET /` answers 500 (evenly
//! spread: with 0.25, every fourth request).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Method, StatusCode};
use hyper_util::rt::TokioIo;
use rsvisor::{
    App, Body, BoxError, ClientInfo, Draining, Handler, Request, Response, WorkerContext,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

struct Demo;

struct DemoHandler {
    /// Memory kept alive by /grow.
    hoard: Mutex<Vec<Vec<u8>>>,
    drain: Draining,
    shutdown_log: Option<std::path::PathBuf>,
    /// `DEMO_FAIL_RATE`: share of `GET /` that fails.
    fail_rate: f64,
    /// `GET /` requests so far (to spread the failures evenly).
    roots: AtomicU64,
}

impl App for Demo {
    type Handler = DemoHandler;

    async fn startup(&self, worker: &WorkerContext) -> Result<DemoHandler, BoxError> {
        if let Some(ms) = env_u64("DEMO_STARTUP_DELAY_MS") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if std::env::var_os("DEMO_FAIL_STARTUP").is_some_and(|v| v != "0" && !v.is_empty()) {
            return Err("DEMO_FAIL_STARTUP is set: refusing to start".into());
        }
        if let Some(path) = std::env::var_os("DEMO_READY_FILE") {
            let path = std::path::PathBuf::from(path);
            worker.readiness_check("ready_file", move || {
                let exists = path.exists();
                let shown = path.display().to_string();
                async move {
                    if exists {
                        Ok(())
                    } else {
                        Err(format!("{shown} does not exist").into())
                    }
                }
            });
        }
        if std::env::var_os("DEMO_READY_HANG").is_some() {
            // A dependency that never answers.
            worker.readiness_check("hang", std::future::pending);
        }
        Ok(DemoHandler {
            hoard: Mutex::new(Vec::new()),
            drain: worker.draining(),
            shutdown_log: std::env::var_os("DEMO_SHUTDOWN_LOG").map(Into::into),
            fail_rate: std::env::var("DEMO_FAIL_RATE")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0.0, |r| r.clamp(0.0, 1.0)),
            roots: AtomicU64::new(0),
        })
    }
}

impl Handler for DemoHandler {
    // Not an `async fn`: one binds its by-value arguments again inside its
    // future, which then holds the request twice (240 bytes more, moved on
    // every request); an `async move` block holds it once.
    #[allow(clippy::manual_async_fn)]
    fn call(&self, req: Request) -> impl std::future::Future<Output = Response> + Send {
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/") if self.fail_rate > 0.0 && self.root_fails() => status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "DEMO_FAIL_RATE: failing on purpose\n".into(),
                ),
                (&Method::GET, "/") => Response::new(Body::from("hello world")),
                (&Method::GET, "/pid") => Response::new(Body::from(std::process::id().to_string())),
                // The other routes await bigger futures (timers, body reads):
                // boxed, so that every request's future stays small.
                _ => Box::pin(self.other_routes(req)).await,
            }
        }
    }

    async fn shutdown(&self) {
        if let Some(path) = &self.shutdown_log {
            let line = format!("shutdown {}\n", std::process::id());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            if let Ok(mut f) = file {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }
}

impl DemoHandler {
    /// Whether this `GET /` is one of the `fail_rate` share that fails:
    /// the n-th fails when ⌊n·rate⌋ steps up.
    fn root_fails(&self) -> bool {
        let n = self.roots.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.fail_rate).floor() > (n * self.fail_rate).floor()
    }

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
            (&Method::POST, "/reject") => match req.into_body().bytes().await {
                // Read whole, then refused: the connection stays usable.
                Ok(_) => status(StatusCode::BAD_REQUEST, "rejected\n".into()),
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
            (&Method::GET, "/ws") => {
                let ignore_drain = query_u64(&req, "ignore_drain") == Some(1);
                websocket(req, (!ignore_drain).then(|| self.drain.clone()))
            }
            _ => status(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// Largest WebSocket frame and message an echo needs. tungstenite's
/// defaults (16 MiB frames, 64 MiB messages) let one client hold that much
/// of a worker's memory with one unfinished frame.
const WS_MAX_MESSAGE: usize = 64 * 1024;

/// Answers a WebSocket handshake (101) and echoes text frames on the
/// upgraded connection until the client closes it, or the worker drains
/// (close 1001) when `drain` is given.
fn websocket(mut req: Request, drain: Option<Draining>) -> Response {
    let wants = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).filter(|_| wants) else {
        return status(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake is expected\n".into(),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let limits = WebSocketConfig::default()
            .max_frame_size(Some(WS_MAX_MESSAGE))
            .max_message_size(Some(WS_MAX_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(limits))
                .await;
        echo(ws, drain).await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

async fn echo<S>(mut ws: WebSocketStream<S>, drain: Option<Draining>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let draining = async {
        match &drain {
            Some(d) => d.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(draining);
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let answer = if t.as_str() == "pid" {
                        std::process::id().to_string()
                    } else {
                        t.to_string()
                    };
                    if ws.send(Message::text(answer)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = &mut draining => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "worker draining".into() };
                let _ = ws.close(Some(frame)).await;
                // Wait for the client's close (bounded by the drain deadline).
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() {
                        break;
                    }
                }
                return;
            }
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
    rsvisor::Supervisor::new(Demo)
        .program(rsvisor::program!())
        .run()
}
