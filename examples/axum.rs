//! An axum app under rsvisor, as written for axum: a `Router` with
//! per-worker `State`, `ConnectInfo`, WebSockets, server-sent events and
//! tower-http's compression. Build with the `axum` feature:
//!
//!     cargo run --features axum --example axum -- serve config.example.toml
//!
//! | route      | answer                                                    |
//! |------------|-----------------------------------------------------------|
//! | `GET /`    | `hello world`                                             |
//! | `GET /whoami` | the client IP (`ConnectInfo<SocketAddr>`, after `[proxy]`) |
//! | `GET /ws`  | WebSocket echo of text frames; close 1001 on drain        |
//! | `GET /sse` | `data: tick N` once a second until the worker drains      |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures_util::stream::Stream;
use rsvisor::{BoxError, Draining, WorkerContext};
use tower_http::compression::CompressionLayer;

/// Per-worker state, made after fork (a database pool would go here).
#[derive(Clone)]
struct AppState {
    drain: Draining,
}

fn app(worker: WorkerContext) -> Router {
    let state = AppState {
        drain: worker.draining(),
    };
    Router::new()
        .route("/", get(|| async { "hello world" }))
        .route("/whoami", get(whoami))
        .route("/ws", get(ws))
        .route("/sse", get(sse))
        .layer(CompressionLayer::new())
        .with_state(state)
}

async fn whoami(ConnectInfo(addr): ConnectInfo<SocketAddr>) -> String {
    addr.ip().to_string()
}

/// Largest WebSocket frame and message an echo needs. tungstenite's
/// defaults (16 MiB frames, 64 MiB messages) let one client hold that much
/// of a worker's memory with one unfinished frame.
const WS_MAX_MESSAGE: usize = 64 * 1024;

async fn ws(upgrade: WebSocketUpgrade, State(state): State<AppState>) -> impl IntoResponse {
    upgrade
        .max_frame_size(WS_MAX_MESSAGE)
        .max_message_size(WS_MAX_MESSAGE)
        .on_upgrade(move |socket| echo(socket, state.drain))
}

/// Echoes text frames; when the worker drains, says goodbye with 1001.
async fn echo(mut socket: WebSocket, drain: Draining) {
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if socket.send(Message::Text(t)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = drain.wait() => {
                let frame = CloseFrame { code: 1001, reason: "worker draining".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
        }
    }
}

/// One event per second until the worker drains; then the stream ends.
async fn sse(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let tick = tokio::time::interval(Duration::from_secs(1));
    let stream = futures_util::stream::unfold(
        (0u64, tick, state.drain),
        |(n, mut tick, drain)| async move {
            tokio::select! {
                _ = tick.tick() => {
                    let event = Event::default().data(format!("tick {n}"));
                    Some((Ok(event), (n + 1, tick, drain)))
                }
                _ = drain.wait() => None,
            }
        },
    );
    Sse::new(stream)
}

fn main() -> std::process::ExitCode {
    let app = rsvisor::tower(|worker: WorkerContext| async move { Ok::<_, BoxError>(app(worker)) });
    rsvisor::Supervisor::new(app)
        .program(rsvisor::program!())
        .run()
}
