//! bench/run's WebSocket load generator (loopback only, bounded):
//!
//!     wsload echo URL CONNECTIONS SECONDS
//!         each connection sends a text frame and waits for its echo, again
//!         and again; prints round trips, round trips/s, p50/p99 in µs.
//!     wsload hold URL CONNECTIONS SECONDS
//!         opens CONNECTIONS sockets, prints `open` when all are up, then
//!         waits (at most SECONDS) until every one is closed; prints how
//!         each ended (close code 1001, another code, cut without a close
//!         frame) and the Unix time in ms of the last end.
//!
//! Prints one JSON object.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

fn raise_fd_limit() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn connect(url: &str) -> Option<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let host = url.strip_prefix("ws://")?.split('/').next()?;
    let tcp = tokio::net::TcpStream::connect(host).await.ok()?;
    let _ = tcp.set_nodelay(true);
    tokio_tungstenite::client_async(url, tcp)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

async fn echo(url: String, conns: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut rtts: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            let Some(mut ws) = connect(&url).await else {
                return (rtts, 1);
            };
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if ws.send(Message::text("ping-pong payload")).await.is_err() {
                    errors += 1;
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => rtts.push(t0.elapsed().as_micros() as u32),
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            (rtts, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((r, e)) = t.await {
            all.extend(r);
            errors += e;
        }
    }
    let took = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"round_trips\": {}, \"rps\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"errors\": {}}}",
        all.len(),
        all.len() as f64 / took,
        pct(0.5),
        pct(0.99),
        errors
    );
}

async fn hold(url: String, conns: usize, secs: u64) {
    let mut socks = Vec::new();
    for _ in 0..conns {
        match connect(&url).await {
            Some(ws) => socks.push(ws),
            None => break,
        }
    }
    println!("open {}", socks.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut ws in socks {
        tasks.push(tokio::spawn(async move {
            let end = loop {
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Message::Close(Some(f))))) if f.code == CloseCode::Away => break 0,
                    Ok(Some(Ok(Message::Close(_)))) => break 1,
                    Ok(Some(Ok(_))) => continue,
                    Ok(Some(Err(_)) | None) => break 2,
                    Err(_) => break 3,
                }
            };
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (end, at.as_millis() as u64)
        }));
    }
    let mut counts = [0u64; 4];
    let mut last = 0;
    for t in tasks {
        if let Ok((end, at)) = t.await {
            counts[end] += 1;
            last = last.max(at);
        }
    }
    println!(
        "{{\"close_1001\": {}, \"close_other\": {}, \"cut\": {}, \"still_open\": {}, \"last_end_unix_ms\": {}}}",
        counts[0], counts[1], counts[2], counts[3], last
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: wsload echo|hold URL CONNECTIONS SECONDS");
        std::process::exit(2);
    }
    raise_fd_limit();
    let (url, conns, secs) = (
        args[2].clone(),
        args[3].parse().expect("CONNECTIONS"),
        args[4].parse().expect("SECONDS"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args[1].as_str() {
        "echo" => rt.block_on(echo(url, conns, secs)),
        "hold" => rt.block_on(hold(url, conns, secs)),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}
