//! Slow but steady readers get whole responses: a response is in flight
//! until its last byte has left rsvisor (hyper's buffer, h2's stream
//! buffers, TLS), so only `send_timeout` (no progress for that long) ends
//! it, never `keepalive_timeout`. A reader that stops is cut at
//! `send_timeout`, with a reset, counted and logged as cut.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http_edge::make_pki;
use crate::util::*;

/// Sleeps so that `got` bytes since `t0` stay at or below `rate` bytes/s.
async fn pace(t0: Instant, got: usize, rate: usize) {
    let due = Duration::from_secs_f64(got as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(t0.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

/// Connects with a 16 KiB receive buffer (a slow mobile client's window)
/// and sends `POST /echo` with `len` bytes; with `lone_p`, the first
/// segment is the `P` alone, the rest 300 ms later.
async fn post_echo_small_window(addr: &str, len: usize, lone_p: bool) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut c = sock.connect(addr.parse().unwrap()).await.unwrap();
    let head = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
    let mut head = head.as_bytes();
    if lone_p {
        c.write_all(&head[..1]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        head = &head[1..];
    }
    c.write_all(head).await.unwrap();
    c.write_all(&vec![b'a'; len]).await.unwrap();
    c
}

/// Reads whatever is left until the connection ends: how it ended
/// (`end of stream`, an error kind such as `ConnectionReset`, or
/// `still open` after `limit` without a byte).
async fn how_it_ends(c: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(limit, c.read(&mut buf)).await {
            Ok(Ok(0)) => return "end of stream".to_string(),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return format!("{:?}", e.kind()),
            Err(_) => return "still open".to_string(),
        }
    }
}

/// A keep-alive shorter than the transfer: before the fix, the
/// connection was closed as idle once the app had handed over its body.
const CONFIG: &str = "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n\
     [http]\nkeepalive_timeout = 2\n";

#[test]
fn a_1_mb_per_s_reader_of_9_mb_over_http1_gets_every_byte() {
    let mut s = demo(CONFIG).start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!()
    };
    const LEN: usize = 9 * 1024 * 1024;
    let (head, body) = rt().block_on(async {
        let mut c = post_echo_small_window(&addr, LEN, false).await;
        let mut got = Vec::with_capacity(LEN + 1024);
        let mut buf = vec![0u8; 16 * 1024];
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(40);
        loop {
            let n = tokio::time::timeout_at(deadline.into(), c.read(&mut buf))
                .await
                .expect("the transfer ends in time")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let body_at = got.windows(4).position(|w| w == b"\r\n\r\n");
            if body_at.is_some_and(|at| got.len() - at - 4 >= LEN) {
                break;
            }
            pace(t0, got.len(), 1024 * 1024).await;
        }
        let at = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        let body = got.split_off(at);
        (String::from_utf8_lossy(&got).into_owned(), body)
    });
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), LEN, "every byte of the echo");
    assert!(body.iter().all(|b| *b == b'a'));
}

/// POSTs `len` bytes to `/echo` over HTTP/2 on `io` and reads the echo at
/// `rate` bytes/s through a 64 KiB window; returns the bytes received.
async fn h2_slow_echo<IO>(io: IO, len: usize, rate: usize) -> usize
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(64 * 1024)
        .handshake::<_, Bytes>(io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://localhost/echo")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let mut rest = Bytes::from(vec![b'b'; len]);
    send.reserve_capacity(rest.len());
    while !rest.is_empty() {
        let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            other => panic!("request body: {other:?}"),
        };
        let chunk = rest.split_to(cap.min(rest.len()));
        send.send_data(chunk, rest.is_empty()).unwrap();
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("a response head")
        .expect("a response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let t0 = Instant::now();
    let mut got = 0;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(40), body.data())
        .await
        .expect("the transfer ends in time")
    {
        let Ok(chunk) = chunk else { break };
        got += chunk.len();
        pace(t0, got, rate).await;
        // The window opens only as fast as the client reads.
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    got
}

#[test]
fn a_50_kb_per_s_reader_of_300_kb_over_h2c_gets_every_byte() {
    let mut s = demo(CONFIG).start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!()
    };
    let got = rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        h2_slow_echo(tcp, 300_000, 50_000).await
    });
    assert_eq!(got, 300_000, "every byte of the echo");
}

#[test]
fn a_50_kb_per_s_reader_of_300_kb_over_tls_h2_gets_every_byte() {
    let b = demo(
        "[server]\nbind = [{ address = \"127.0.0.1:0\", tls = true }]\nworkers = 1\n\
         [http]\nkeepalive_timeout = 2\n\
         [tls]\ncert = \"{dir}/server.pem\"\nkey = \"{dir}/server.key\"\n",
    );
    make_pki(b.dir());
    let ca = b.dir().join("ca.pem");
    let mut s = b.start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!()
    };
    let got = rt().block_on(async {
        let tls = tls_connect(&addr, &ca, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        h2_slow_echo(tls, 300_000, 50_000).await
    });
    assert_eq!(got, 300_000, "every byte of the echo");
}

/// A client that stops reading once the app has handed over its whole
/// answer is ended by send_timeout: counted, logged as cut, and reset
/// (SO_LINGER 0) so the kernel does not keep the unsent bytes.
#[test]
fn a_reader_that_stops_after_the_app_finished_is_cut_at_send_timeout() {
    let b = demo(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [http]\nkeepalive_timeout = 1\nsend_timeout = 3\n\
         [log]\naccess_log = \"{dir}/access.log\"\n",
    );
    let log_path = b.dir().join("access.log");
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let Target::Tcp(addr) = tcp.clone() else {
        unreachable!()
    };
    const LEN: usize = 8 * 1024 * 1024;
    let (took, ended) = rt().block_on(async {
        let mut c = post_echo_small_window(&addr, LEN, false).await;
        let mut first = [0u8; 1024];
        let _ = c.read(&mut first).await.unwrap();
        // Stop reading; the app's body is already with hyper.
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ended = how_it_ends(&mut c, Duration::from_secs(10)).await;
        (t0.elapsed(), ended)
    });
    assert_eq!(ended, "ConnectionReset", "after {took:?}");
    let metrics = get(&tcp, "/metrics").unwrap().text();
    assert_eq!(metric(&metrics, "rsvisor_http_send_timeouts_total"), 1.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("POST /echo")) {
            assert!(line.ends_with(" incomplete=send_timeout"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no access-log line: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A first segment of one byte decides nothing: a `P` may start `POST` as
/// well as the HTTP/2 preface. The connection gets every HTTP/1.1
/// deadline: 408 for a head that never ends, send_timeout for a response
/// it never reads.
#[test]
fn a_lone_p_first_does_not_turn_off_the_http1_deadlines() {
    let mut s = demo(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [http]\nheader_read_timeout = 2\nkeepalive_timeout = 20\nsend_timeout = 3\n",
    )
    .start();
    let tcp = s.ready_tcp();
    let Target::Tcp(addr) = tcp.clone() else {
        unreachable!()
    };
    let (head_408, head_took, send_end, send_took) = rt().block_on(async {
        // A head that never ends.
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"P").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        c.write_all(b"OST /echo HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), c.read_to_end(&mut out)).await;
        let head_took = t0.elapsed();
        let head_408 = String::from_utf8_lossy(&out).into_owned();

        // A 9 MB answer never read.
        let mut c = post_echo_small_window(&addr, 9 * 1024 * 1024, true).await;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let end = how_it_ends(&mut c, Duration::from_secs(15)).await;
        (head_408, head_took, end, t0.elapsed())
    });
    assert!(head_408.starts_with("HTTP/1.1 408"), "{head_408:?}");
    assert!(
        head_took < Duration::from_millis(2600),
        "408 after {head_took:?}"
    );
    assert_eq!(send_end, "ConnectionReset", "after {send_took:?}");
    let metrics = get(&tcp, "/metrics").unwrap().text();
    assert_eq!(metric(&metrics, "rsvisor_http_send_timeouts_total"), 1.0);
}

/// An app's own 400 to a request whose body it read keeps the connection;
/// a body rsvisor refused unread (413 from Content-Length) closes it.
#[test]
fn an_apps_4xx_closes_the_connection_only_when_the_body_was_left_unread() {
    use std::io::{BufReader, Write};
    let mut s =
        demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n[http]\nmax_body_bytes = 1000\n")
            .start();
    let tcp = s.ready_tcp();
    let mut c = BufReader::new(tcp.connect().unwrap());
    c.get_mut()
        .write_all(b"POST /reject HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let r = read_response(&mut c, false).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), None, "kept alive after a read body");
    c.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c, false).unwrap().status, 200);
    c.get_mut()
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c, false).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
}
