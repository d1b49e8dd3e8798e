//! The peer of the axum example in bench/run: the same kind of axum app
//! (`GET /` hello world, `GET /ws` WebSocket echo) under plain
//! `axum::serve` in one process (tokio's multi-threaded runtime).
//!
//!     cargo run --release --example axum_plain -- 127.0.0.1:8000

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

async fn ws(upgrade: WebSocketUpgrade) -> impl IntoResponse {
    upgrade.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let sent = match msg {
            Message::Text(t) => socket.send(Message::Text(t)).await,
            Message::Close(_) => return,
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".to_string());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let app = Router::new()
                .route("/", get(|| async { "hello world" }))
                .route("/ws", get(ws));
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            axum::serve(listener, app).await
        })
}
