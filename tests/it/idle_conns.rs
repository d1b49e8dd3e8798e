//! Idle keep-alive connections are parked without hyper's buffers
//! (src/worker/park.rs): they cost little memory, and a request that
//! arrives after any idle moment, whole, split or pipelined, with or
//! without a body before it, is answered as if nothing happened.

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use crate::util::*;

const IDLE: usize = 2000;
/// The documented bound (docs/configuration.md, "Idle keep-alive
/// connections"): parked,
/// a connection is a row of the worker's lot, about 0.2 KiB (0.15–0.21
/// measured at 10,000 in a release build); held by hyper, 16–20 KiB. Well above the
/// first, far below the second.
const MAX_KIB_PER_IDLE_CONN: f64 = 1.0;
/// The worker gives free memory back every 5 s (heartbeat.rs): the lowest
/// RSS over this window is its resident memory with nothing held.
const BASELINE_WINDOW: Duration = Duration::from_secs(6);
/// Parking (1 s) plus two of the worker's memory releases (every 5 s),
/// with room for a loaded machine.
const SETTLE: Duration = Duration::from_secs(20);
/// Long enough for the worker to have parked the connection: it does
/// after 1 s of idleness (park::PARK_AFTER), checked on a 100 ms clock.
const IDLE_MOMENT: Duration = Duration::from_millis(1600);

fn one_worker(extra: &str) -> (Server, Target) {
    let mut s = demo(&format!(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n[http]\nkeepalive_timeout = 60\n{extra}"
    ))
    .start();
    let t = s.ready_tcp();
    (s, t)
}

fn open_answered(t: &Target, n: usize) -> Vec<KeepAlive> {
    (0..n)
        .map(|_| {
            let mut c = KeepAlive::open(t).expect("connect");
            assert_eq!(c.get("/pid").expect("answer").status, 200);
            c
        })
        .collect()
}

#[test]
fn idle_keep_alive_connections_cost_little_memory_and_still_serve() {
    let (s, t) = one_worker("");
    let worker = s.workers()[0];
    // The first connections grow what grows once (allocator arenas,
    // tokio's tables); the baseline is read once what they freed is back.
    drop(open_answered(&t, 100));
    let window_ends = Instant::now() + BASELINE_WINDOW;
    let mut before = rss_kib(worker);
    while Instant::now() < window_ends {
        std::thread::sleep(Duration::from_millis(200));
        before = before.min(rss_kib(worker));
    }
    let mut conns = open_answered(&t, IDLE);
    // They park at once (more than park::PARK_AT_ONCE_ABOVE are open) or
    // after a second of idleness; the worker gives the memory hyper held
    // back to the system every few seconds (heartbeat.rs).
    let deadline = Instant::now() + SETTLE;
    let per_conn = loop {
        let after = rss_kib(worker);
        let per_conn = after.saturating_sub(before) as f64 / IDLE as f64;
        if per_conn < MAX_KIB_PER_IDLE_CONN {
            break per_conn;
        }
        assert!(
            Instant::now() < deadline,
            "{per_conn:.2} KiB per idle connection ({before} KiB → {after} KiB)"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{per_conn:.2} KiB per idle connection");
    for c in &mut conns {
        let r = c.get("/pid").expect("answer after idling");
        assert_eq!((r.status, r.text()), (200, worker.to_string()));
    }
}

fn read_responses(r: &mut BufReader<Stream>, n: usize) -> Vec<Resp> {
    (0..n)
        .map(|_| read_response(r, false).expect("a response"))
        .collect()
}

/// On a new connection: `first` is answered with `body`; after an idle
/// moment, `GET /` is answered with hello world.
fn answered_then_idle_then_hello(t: &Target, first: &[u8], body: &str) {
    let mut r = BufReader::new(t.connect().unwrap());
    r.get_mut().write_all(first).unwrap();
    assert_eq!(read_responses(&mut r, 1)[0].text(), body);
    std::thread::sleep(IDLE_MOMENT);
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_responses(&mut r, 1)[0].text(), "hello world");
}

#[test]
fn requests_after_idle_moments_are_answered_whole_split_pipelined_and_after_bodies() {
    let (_s, t) = one_worker("");
    // A pipelined second request cut in the middle of its head.
    let mut r = BufReader::new(t.connect().unwrap());
    r.get_mut()
        .write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\nGET / HT")
        .unwrap();
    assert_eq!(read_responses(&mut r, 1)[0].status, 200);
    std::thread::sleep(IDLE_MOMENT);
    r.get_mut().write_all(b"TP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let second = &read_responses(&mut r, 1)[0];
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, "hello world")
    );

    // A body with a length, then an idle moment.
    answered_then_idle_then_hello(
        &t,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "hello",
    );
    // A chunked body (it ends with a blank line too), then an idle moment.
    answered_then_idle_then_hello(
        &t,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n",
        "abc",
    );

    // A head sent a byte at a time after the connection idled.
    let mut r = BufReader::new(t.connect().unwrap());
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    read_responses(&mut r, 1);
    std::thread::sleep(IDLE_MOMENT);
    for b in b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n" {
        r.get_mut().write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read_responses(&mut r, 1)[0].status, 200);

    // Two whole requests in one write after an idle moment.
    std::thread::sleep(IDLE_MOMENT);
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let both = read_responses(&mut r, 2);
    assert!(both.iter().all(|r| r.text() == "hello world"));
}

#[test]
fn a_parked_connection_is_closed_at_its_keep_alive_timeout() {
    let mut s =
        demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n[http]\nkeepalive_timeout = 1\n")
            .start();
    let t = s.ready_tcp();
    let mut r = BufReader::new(t.connect().unwrap());
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    read_responses(&mut r, 1);
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    // The client's read timeout (util::IO_TIMEOUT) bounds this.
    r.read_to_end(&mut rest).expect("an orderly close");
    let waited = idle_from.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

/// A slow reader across the time a connection parks: the app's response is
/// over (its last chunk is with hyper) but hyper cannot write it all yet
/// (a 4 KiB receive buffer: a 300 KiB file fills the socket and the rest
/// waits in hyper's buffer). Every byte arrives and the connection serves
/// on: parked then, the rest would never be sent.
#[test]
fn a_slow_reader_gets_its_whole_response_across_the_park_time() {
    const SIZE: usize = 300 << 10;
    let b = ServerBuilder::new(rsvisor_bin()).config(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n[http]\nkeepalive_timeout = 60\n\
         send_timeout = 60\n[app]\nstatic_dir = \"{dir}/public\"\n",
    );
    std::fs::create_dir_all(b.dir().join("public")).unwrap();
    std::fs::write(b.dir().join("public/file.bin"), vec![7u8; SIZE]).unwrap();
    let mut s = b.start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!("a TCP listener")
    };
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut r = BufReader::new(Stream::Tcp(stream));
    r.get_mut()
        .write_all(b"GET /file.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Longer than park::PARK_AFTER.
    std::thread::sleep(Duration::from_millis(2500));
    let resp = read_response(&mut r, false).expect("the whole response");
    assert_eq!((resp.status, resp.body.len()), (200, SIZE));
    r.get_mut()
        .write_all(b"GET /file.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let again = read_response(&mut r, false).expect("a second answer");
    assert_eq!((again.status, again.body.len()), (200, SIZE));
}

/// A Unix-socket connection parks like a TCP one (the lot holds either
/// kind) and is served again, by the same worker, when its next request
/// comes.
#[test]
fn a_unix_socket_connection_parks_and_serves_again() {
    let mut s = demo(
        "[server]\nbind = [\"127.0.0.1:0\", \"unix:{dir}/app.sock\"]\nworkers = 1\n\
         [http]\nkeepalive_timeout = 60\n",
    )
    .start();
    s.ready_tcp();
    let worker = s.workers()[0];
    let unix = Target::Unix(s.dir.path().join("app.sock"));
    let mut c = KeepAlive::open(&unix).expect("connect");
    for _ in 0..3 {
        let r = c.get("/pid").expect("an answer");
        assert_eq!((r.status, r.text()), (200, worker.to_string()));
        std::thread::sleep(IDLE_MOMENT);
    }
}
