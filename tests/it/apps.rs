//! Apps as people write them: WebSockets (and their drain), server-sent
//! events, lifespan shutdown, readiness checks, compression, an axum
//! Router with ConnectInfo.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::http_edge::make_pki;
use crate::util::*;

pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Opens a WebSocket to `path` over TCP or a Unix socket.
pub(crate) async fn ws_connect(t: &Target, path: &str) -> Ws {
    let io: Box<dyn Io> = match t {
        Target::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await.expect("connect")),
        Target::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.expect("connect")),
    };
    let url = format!("ws://localhost{path}");
    let (ws, resp) = tokio_tungstenite::client_async(url, io)
        .await
        .expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `text`, returns the answer.
pub(crate) async fn ws_ask(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    loop {
        match tokio::time::timeout(IO_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("no answer to {text:?}: {other:?}"),
        }
    }
}

/// What a socket saw at its end: the close code, or how it was cut.
pub(crate) async fn ws_end(ws: &mut Ws, within: Duration) -> Result<CloseCode, String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return Ok(f.code),
            Ok(Some(Ok(Message::Close(None)))) => return Err("close without a code".into()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(format!("cut without a close frame: {e}")),
            Ok(None) => return Err("cut without a close frame (EOF)".into()),
            Err(_) => return Err(format!("still open after {within:?}")),
        }
    }
}

/// The axum example is built only with the `axum` feature (`scripts/test`
/// builds it; plain `cargo test` does not).
fn have_axum_example() -> bool {
    have(
        &example("axum").display().to_string(),
        "build it: cargo build --examples --features axum",
    )
}

fn axum_app(config: &str) -> ServerBuilder {
    ServerBuilder::new(example("axum")).config(config)
}

#[test]
fn websocket_echo_over_tcp_unix_and_tls() {
    let b = demo(
        r#"
[server]
bind = [
    { address = "127.0.0.1:0", tls = false },
    { address = "unix:{dir}/app.sock", tls = false },
    "127.0.0.2:0",
]
workers = 2
[tls]
cert = "{dir}/server.pem"
key = "{dir}/server.key"
"#,
    );
    let dir = b.dir().to_path_buf();
    make_pki(&dir);
    let mut s = b.start();
    let st = s.wait_settled(START_TIMEOUT);
    let plain = Target::Tcp(listener(&st, "127.0.0.1:"));
    let unix = Target::Unix(dir.join("app.sock"));
    let tls_addr = listener(&st, "127.0.0.2:");
    rt().block_on(async {
        for t in [&plain, &unix] {
            let mut ws = ws_connect(t, "/ws").await;
            assert_eq!(ws_ask(&mut ws, "hello").await, "hello");
            let pid: i32 = ws_ask(&mut ws, "pid").await.parse().unwrap();
            assert!(s.worker_pids().contains(&pid));
            ws.close(None).await.unwrap();
        }
        // TLS: rustls client trusting the test CA.
        let tls = tls_connect(&tls_addr, &dir.join("ca.pem"), &[]).await;
        let io: Box<dyn Io> = Box::new(tls);
        let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", io)
            .await
            .expect("WebSocket over TLS");
        assert_eq!(ws_ask(&mut ws, "over tls").await, "over tls");
        ws.close(None).await.unwrap();
    });
    // The status counts upgraded connections while they are open.
    rt().block_on(async {
        let mut ws = ws_connect(&plain, "/ws").await;
        ws_ask(&mut ws, "x").await;
        // The sockets closed above are counted down when their worker has
        // seen the close, which can be a moment after the client's close
        // returned.
        s.wait_status("exactly one upgraded connection", START_TIMEOUT, |st| {
            st.totals.upgraded_connections == 1
        });
        let metrics = get(&plain, "/metrics").unwrap().text();
        assert!(
            metrics.contains("rsvisor_upgraded_connections 1"),
            "{metrics}"
        );
        ws.close(None).await.unwrap();
    });
    s.wait_status("the socket closed", Duration::from_secs(5), |st| {
        st.totals.upgraded_connections == 0
    });
}

/// 20 open WebSockets, then `trigger` (HUP, TERM, recycling): every one
/// gets close 1001 before its worker exits.
fn sockets_get_1001(
    config: &str,
    trigger: impl FnOnce(&mut Server, &Target),
) -> (Server, Vec<i32>) {
    let mut s = demo(config).start();
    let tcp = s.ready_tcp();
    let rt = rt();
    let mut socks = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..20 {
            let mut ws = ws_connect(&tcp, "/ws").await;
            ws_ask(&mut ws, "hi").await;
            v.push(ws);
        }
        v
    });
    let old = s.worker_pids();
    trigger(&mut s, &tcp);
    let ends = rt.block_on(async {
        let mut ends = Vec::new();
        for ws in &mut socks {
            ends.push(ws_end(ws, Duration::from_secs(15)).await);
        }
        ends
    });
    for (i, e) in ends.iter().enumerate() {
        assert_eq!(
            e.as_ref(),
            Ok(&CloseCode::Away),
            "socket {i}: {e:?}\n{:#?}\n{}",
            s.status(),
            s.log_text()
        );
    }
    (s, old)
}

#[test]
fn websockets_get_1001_on_reload_and_new_ones_reach_the_new_generation() {
    let (mut s, old) = sockets_get_1001(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n",
        |s, _| s.signal(Signal::SIGHUP),
    );
    let st = s.wait_status("the reload", Duration::from_secs(15), |st| {
        st.generation == 2 && settled(st)
    });
    let tcp = Target::Tcp(st.listeners[0].clone());
    let pid: i32 = rt().block_on(async {
        let mut ws = ws_connect(&tcp, "/ws").await;
        ws_ask(&mut ws, "pid").await.parse().unwrap()
    });
    assert!(!old.contains(&pid), "served by {pid}, an old worker");
    assert!(st.workers.iter().any(|w| w.pid as i32 == pid));
}

#[test]
fn websockets_get_1001_on_term() {
    let (mut s, _) = sockets_get_1001(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n",
        |s, _| s.signal(Signal::SIGTERM),
    );
    let st = s.expect_exit(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0));
}

#[test]
fn websockets_get_1001_when_their_worker_is_recycled() {
    let (mut s, old) = sockets_get_1001(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n[lifecycle]\nmax_requests = 30\n",
        |s, tcp| {
            // Requests until both workers that hold sockets reached
            // max_requests (the kernel spreads them unevenly).
            let old = s.worker_pids();
            for _ in 0..3000 {
                assert_eq!(get(tcp, "/").unwrap().status, 200);
                let st = s.status().expect("status");
                let retiring = st
                    .workers
                    .iter()
                    .filter(|w| old.contains(&(w.pid as i32)) && w.state != WorkerState::Ready)
                    .count();
                let gone = old.len()
                    - st.workers
                        .iter()
                        .filter(|w| old.contains(&(w.pid as i32)))
                        .count();
                if retiring + gone == old.len() {
                    return;
                }
            }
            panic!("the workers were not recycled");
        },
    );
    let st = s.wait_status("recycled workers", Duration::from_secs(15), |st| {
        settled(st) && st.workers.iter().all(|w| !old.contains(&(w.pid as i32)))
    });
    assert!(st.totals.exits_by_reason[&ExitReason::MaxRequests] >= 2);
}

/// An app that ignores the drain signal keeps its socket until
/// graceful_timeout; then the worker goes, and the reload completes.
#[test]
fn a_websocket_that_ignores_the_drain_lives_until_graceful_timeout() {
    let mut s = demo(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n[lifecycle]\ngraceful_timeout = 3\n",
    )
    .start();
    let tcp = s.ready_tcp();
    let rt = rt();
    let mut ws = rt.block_on(async {
        let mut ws = ws_connect(&tcp, "/ws?ignore_drain=1").await;
        ws_ask(&mut ws, "hi").await;
        ws
    });
    let t0 = Instant::now();
    s.signal(Signal::SIGHUP);
    // Still echoing after the drain began.
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(ws_ask(&mut ws, "still here").await, "still here");
    });
    let end = rt.block_on(ws_end(&mut ws, Duration::from_secs(10)));
    let took = t0.elapsed();
    assert!(
        end.is_err(),
        "the app ignores the drain: no close frame, got {end:?}"
    );
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_secs(4),
        "cut after {took:?}; graceful_timeout is 3 s"
    );
    let st = s.wait_status("the reload", Duration::from_secs(10), |st| {
        st.generation == 2 && settled(st)
    });
    assert_eq!(
        st.last_reload.map(|r| r.result),
        Some(ReloadResult::Success)
    );
}

fn shutdown_lines(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("shutdown ")?.parse().ok())
        .collect()
}

#[test]
fn the_shutdown_hook_runs_once_per_leaving_worker_after_its_requests() {
    let b = demo(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n\
         [app]\nenv = { DEMO_SHUTDOWN_LOG = \"{dir}/shutdown.log\" }\n",
    );
    let log = b.dir().join("shutdown.log");
    let mut s = b.start();
    let tcp = s.ready_tcp();
    // A reload: one line per retired worker.
    let old = s.worker_pids();
    s.signal(Signal::SIGHUP);
    s.wait_status("the reload", Duration::from_secs(15), |st| {
        st.generation == 2 && settled(st) && st.totals.exits_by_reason[&ExitReason::Reload] == 2
    });
    let mut lines = shutdown_lines(&log);
    lines.sort();
    assert_eq!(lines, old);

    // TERM with a request in flight: its worker's line comes after the
    // response.
    std::fs::remove_file(&log).unwrap();
    let current = s.worker_pids();
    let slow = {
        let tcp = tcp.clone();
        std::thread::spawn(move || get(&tcp, "/sleep?ms=1500"))
    };
    std::thread::sleep(Duration::from_millis(300));
    s.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(700));
    let early = shutdown_lines(&log);
    let served = slow.join().unwrap().unwrap();
    assert_eq!(served.status, 200);
    assert!(
        early.len() < 2,
        "both hooks ran while a request was in flight: {early:?}"
    );
    assert_eq!(s.expect_exit(Duration::from_secs(15)).code(), Some(0));
    let mut lines = shutdown_lines(&log);
    lines.sort();
    assert_eq!(lines, current);
}

#[test]
fn readiness_checks_decide_ready_and_are_named() {
    let b = demo(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [app]\nenv = { DEMO_READY_FILE = \"{dir}/ready\" }\n",
    );
    let flag = b.dir().join("ready");
    std::fs::write(&flag, "").unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let r = get(&tcp, "/ready").unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["checks"]["ready_file"], "ok");

    std::fs::remove_file(&flag).unwrap();
    // Results are reused for a second at most.
    let deadline = Instant::now() + Duration::from_secs(3);
    let r = loop {
        let r = get(&tcp, "/ready").unwrap();
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r.status, 503, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], "not_ready");
    let why = v["checks"]["ready_file"].as_str().unwrap();
    assert!(
        why.starts_with("error: ") && why.contains("does not exist"),
        "{why}"
    );
    // The app itself still serves.
    assert_eq!(get(&tcp, "/").unwrap().status, 200);

    std::fs::write(&flag, "").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&tcp, "/ready").unwrap().status, 200);
}

#[test]
fn a_readiness_check_that_hangs_fails_within_its_bound() {
    let mut s = demo(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n[app]\nenv = { DEMO_READY_HANG = \"1\" }\n",
    )
    .start();
    // Not ready: wait for the master instead of /ready.
    s.wait_status("a serving worker", START_TIMEOUT, |st| {
        st.workers.iter().any(|w| w.state == WorkerState::Ready)
    });
    let tcp = s.tcp_addr();
    let t0 = Instant::now();
    let r = get(&tcp, "/ready").unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status, 503);
    assert!(took < Duration::from_secs(3), "{took:?}");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let why = v["checks"]["hang"].as_str().unwrap();
    assert!(why.contains("no answer within"), "{why}");
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn responses_are_compressed_as_the_client_accepts() {
    let b = ServerBuilder::new(rsvisor_bin()).config(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [http]\ncompression = true\n[app]\nstatic_dir = \"{dir}/www\"\n",
    );
    let www = b.dir().join("www");
    std::fs::create_dir(&www).unwrap();
    let text: String = (0..4096).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    std::fs::write(www.join("page.txt"), &text).unwrap();
    // A precompressed sibling, served as it is.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, b"precompressed\n").unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(www.join("pre.txt"), "precompressed\n").unwrap();
    std::fs::write(www.join("pre.txt.gz"), &gz).unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let ask = |path: &str, enc: Option<&str>| -> Resp {
        let mut c = tcp.connect().unwrap();
        let accept = enc
            .map(|e| format!("Accept-Encoding: {e}\r\n"))
            .unwrap_or_default();
        std::io::Write::write_all(
            &mut c,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        read_response(&mut std::io::BufReader::new(c), false).unwrap()
    };
    let r = ask("/page.txt", Some("gzip"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), text.as_bytes());
    let r = ask("/page.txt", Some("br"));
    assert_eq!(r.header("content-encoding"), Some("br"));
    let mut out = Vec::new();
    brotli::Decompressor::new(&r.body[..], 4096)
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, text.as_bytes());
    let r = ask("/page.txt", Some("zstd"));
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(zstd::decode_all(&r.body[..]).unwrap(), text.as_bytes());
    let r = ask("/page.txt", None);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, text.as_bytes());
    let r = ask("/pre.txt", Some("gzip"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, gz, "the .gz sibling is sent as it is");
    let r = ask("/pre.txt", None);
    assert_eq!(r.text(), "precompressed\n");
}

#[test]
fn axum_router_whoami_sees_the_client_after_the_proxy_rules() {
    if !have_axum_example() {
        return;
    }
    let mut s = axum_app(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n\
         [proxy]\nproxy_headers = true\nforwarded_allow_ips = [\"127.0.0.1\"]\n",
    )
    .start();
    let tcp = s.ready_tcp();
    assert_eq!(get(&tcp, "/").unwrap().text(), "hello world");
    assert_eq!(get(&tcp, "/whoami").unwrap().text(), "127.0.0.1");
    let out = raw(
        &tcp,
        b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.ends_with("203.0.113.7"), "{text}");
    rt().block_on(async {
        let mut ws = ws_connect(&tcp, "/ws").await;
        assert_eq!(ws_ask(&mut ws, "axum").await, "axum");
        ws.close(None).await.unwrap();
    });
}

#[test]
fn axum_websockets_get_1001_and_sse_streams_end_on_reload() {
    if !have_axum_example() {
        return;
    }
    if !have("curl", "the HTTP client of this test") {
        return;
    }
    let mut s = axum_app("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n").start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!()
    };
    let tcp = Target::Tcp(addr.clone());
    let rt = rt();
    let mut ws = rt.block_on(async {
        let mut ws = ws_connect(&tcp, "/ws").await;
        ws_ask(&mut ws, "x").await;
        ws
    });
    // SSE through curl: ticks arrive, and the stream ends cleanly (curl
    // exits 0) when the worker drains.
    let sse = std::process::Command::new("curl")
        .args(["-sS", "-N", "--max-time", "15"])
        .arg(format!("http://{addr}/sse"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(2500));
    s.signal(Signal::SIGHUP);
    let end = rt.block_on(ws_end(&mut ws, Duration::from_secs(10)));
    assert_eq!(end, Ok(CloseCode::Away));
    let out = sse.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("data: tick 0") && text.contains("data: tick 1"),
        "{text}"
    );
    s.wait_status("the reload", Duration::from_secs(10), |st| {
        st.generation == 2 && settled(st)
    });
}

#[test]
fn upgrades_that_go_wrong_cost_only_their_connection() {
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n").start();
    let tcp = s.ready_tcp();
    let pids = s.worker_pids();
    // Not a WebSocket handshake: the app's own answer.
    let r = get(&tcp, "/ws").unwrap();
    assert_eq!(r.status, 400);
    // Garbage after the 101.
    let mut c = tcp.connect().unwrap();
    std::io::Write::write_all(
        &mut c,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    std::io::Write::write_all(&mut c, &[0xff; 4096]).unwrap();
    drop(c);
    // A socket that never reads while it is written to.
    let rt = rt();
    rt.block_on(async {
        let mut ws = ws_connect(&tcp, "/ws").await;
        for _ in 0..200 {
            if ws.send(Message::text("x".repeat(16 * 1024))).await.is_err() {
                break;
            }
        }
        drop(ws);
    });
    for _ in 0..20 {
        assert_eq!(get(&tcp, "/").unwrap().status, 200);
    }
    assert_eq!(s.worker_pids(), pids, "the worker survived");
    s.wait_status(
        "no upgraded connection left",
        Duration::from_secs(10),
        |st| st.totals.upgraded_connections == 0,
    );
}

/// A WebSocket on which nothing moves is closed at
/// `http.upgrade_idle_timeout` (and counted); one that keeps talking for
/// longer than that stays open.
#[test]
fn a_websocket_that_moves_nothing_is_closed_at_upgrade_idle_timeout() {
    let mut s =
        demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n[http]\nupgrade_idle_timeout = 2\n")
            .start();
    silent_websocket_is_closed_and_talker_kept(&s.ready_tcp(), "");
}

/// With `http.upgrade_idle_timeout = 2`: of two WebSockets at `/ws` (an
/// echo that prefixes its answers with `echo`), the one that moves
/// nothing is closed and counted, the one asking every 0.5 s for three
/// times the limit stays open.
pub fn silent_websocket_is_closed_and_talker_kept(tcp: &Target, echo: &str) {
    rt().block_on(async {
        let mut silent = ws_connect(tcp, "/ws").await;
        let mut talker = ws_connect(tcp, "/ws").await;
        let t0 = tokio::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(6) {
            assert_eq!(ws_ask(&mut talker, "hi").await, format!("{echo}hi"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let end = ws_end(&mut silent, Duration::from_secs(10)).await;
        assert!(end.is_err(), "the silent socket ended with {end:?}");
        assert!(!format!("{end:?}").contains("still open"), "{end:?}");
        assert_eq!(
            ws_ask(&mut talker, "still here").await,
            format!("{echo}still here")
        );
    });
    let metrics = get(tcp, "/metrics").unwrap().text();
    assert_eq!(
        metric(&metrics, "rsvisor_http_upgrade_idle_timeouts_total"),
        1.0,
        "{metrics}"
    );
}
