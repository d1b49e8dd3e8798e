//! The supervisor core: serving, respawn, graceful and quick stop, orphan
//! protection, startup failure, pidfile and socket files.

use std::time::{Duration, Instant};

use crate::util::*;

const TWO_WORKERS: &str = r#"
[server]
bind = ["127.0.0.1:0", "unix:{dir}/app.sock"]
workers = 2
[log]
level = "info"
"#;

#[test]
fn serves_on_tcp_and_unix_with_exactly_two_workers() {
    let mut s = demo(TWO_WORKERS).start();
    let tcp = s.ready_tcp();
    let unix = Target::Unix(s.dir.path().join("app.sock"));

    let r = get(&tcp, "/").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    let r = get(&unix, "/").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    let r = get(&tcp, "/health").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));

    let workers = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    assert_eq!(workers.len(), 2);
    // /pid is answered by one of those children.
    let pid: i32 = get(&tcp, "/pid").unwrap().text().parse().unwrap();
    assert!(workers.contains(&pid), "{pid} not in {workers:?}");

    // Keep-alive: many requests on one connection.
    let mut ka = KeepAlive::open(&tcp).unwrap();
    for _ in 0..50 {
        let r = ka.get("/").unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.header("connection"), Some("close"));
    }
}

#[test]
fn a_killed_worker_is_replaced_within_a_second() {
    let mut s = demo(TWO_WORKERS).start();
    let tcp = s.ready_tcp();
    let before = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    let victim = before[0];
    kill(victim, Signal::SIGKILL);
    let t0 = Instant::now();
    let after = s.wait_workers("a replacement", Duration::from_secs(5), |w| {
        w.len() == 2 && !w.contains(&victim)
    });
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "replacement took {took:?}");
    assert!(after.contains(&before[1]), "the other worker was untouched");
    s.wait_ready(&tcp);
    for i in 0..200 {
        let r = get(&tcp, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    let st = s.wait_settled(Duration::from_secs(5));
    assert_eq!(st.totals.exits_by_reason[&ExitReason::Crash], 1);
    assert_eq!(st.totals.worker_exits, 1);
}

#[test]
fn term_lets_in_flight_requests_finish_and_exits_zero() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[lifecycle]
graceful_timeout = 10
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    // A kept-alive connection that has served one request.
    let mut ka = KeepAlive::open(&tcp).unwrap();
    assert_eq!(ka.get("/").unwrap().status, 200);

    let slow = {
        let tcp = tcp.clone();
        std::thread::spawn(move || get(&tcp, "/sleep?ms=2000"))
    };
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);

    // New connections are refused once the listeners are closed, not left
    // waiting in a backlog nobody accepts from.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp.connect().is_ok() {
        assert!(Instant::now() < deadline, "still accepting after TERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The kept-alive connection still gets its next response, marked close.
    let r = ka.get("/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));

    let r = slow.join().unwrap().expect("in-flight request answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slept 2000 ms\n");
    let st = s.expect_exit(Duration::from_secs(12));
    assert_eq!(st.code(), Some(0), "{}", s.log_text());
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn ready_fails_during_shutdown_delay_while_still_serving() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[lifecycle]
shutdown_delay = 2
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    s.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = get(&tcp, "/ready").unwrap();
        if r.status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/ready still 200 after TERM");
    }
    // Still serving normal requests during the delay.
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    let st = s.expect_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));
}

#[test]
fn killing_the_master_leaves_no_worker_alive() {
    let mut s = demo(TWO_WORKERS).start();
    s.ready_tcp();
    let workers = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    kill(s.pid(), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while workers.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "workers {workers:?} outlived their master"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn quick_stop_on_int() {
    let mut s = demo(TWO_WORKERS).start();
    s.ready_tcp();
    let workers = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    s.signal(Signal::SIGINT);
    let st = s.expect_exit(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0));
    assert!(workers.iter().all(|p| !alive(*p)));
}

#[test]
fn app_that_cannot_start_makes_the_master_exit_3() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[app]
env = { DEMO_FAIL_STARTUP = "1" }
"#,
    )
    .start();
    let st = s.expect_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(3), "{}", s.log_text());
    let log = s.log_text();
    assert!(log.contains("DEMO_FAIL_STARTUP is set"), "{log}");
    assert!(log.contains("startup failed in every worker"), "{log}");
}

#[test]
fn pidfile_and_socket_file_are_removed_on_exit() {
    let b = demo(
        r#"
[server]
bind = ["unix:{dir}/app.sock", "127.0.0.1:0"]
workers = 1
pidfile = "{dir}/app.pid"
"#,
    );
    let dir = b.dir().to_path_buf();
    // A stale socket file from a crashed run, with nobody listening.
    drop(std::os::unix::net::UnixListener::bind(dir.join("app.sock")).unwrap());
    assert!(dir.join("app.sock").exists());
    let mut s = b.start();
    let unix = Target::Unix(dir.join("app.sock"));
    s.wait_ready(&unix);
    let pid = std::fs::read_to_string(dir.join("app.pid")).unwrap();
    assert_eq!(pid.trim(), s.pid().to_string());
    s.signal(Signal::SIGTERM);
    assert_eq!(s.expect_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!dir.join("app.pid").exists());
    assert!(!dir.join("app.sock").exists());
}

#[test]
fn a_live_unix_socket_is_not_stolen() {
    let mut first = demo(TWO_WORKERS).start();
    first.ready_tcp();
    let sock = first.dir.path().join("app.sock");
    let cfg = format!(
        "[server]\nbind = [\"unix:{}\"]\nworkers = 1\n",
        sock.display()
    );
    let mut second = ServerBuilder::new(example("demo")).config(&cfg).start();
    let st = second.expect_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(4), "{}", second.log_text());
    assert!(second.log_text().contains("another process is listening"));
    // The first server still answers on it.
    assert_eq!(get(&Target::Unix(sock), "/").unwrap().status, 200);
}

#[test]
fn bind_conflict_exits_4() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut s = demo(&format!(
        "[server]\nbind = [\"127.0.0.1:{port}\"]\nworkers = 1\n"
    ))
    .start();
    let st = s.expect_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(4));
    assert!(s
        .log_text()
        .contains(&format!("cannot bind 127.0.0.1:{port}")));
}

#[test]
fn worker_threads_multi_thread_runtime_serves() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
worker_threads = 2
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let r = request(&tcp, "POST", "/echo", b"ping").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ping"));
}

#[test]
fn a_panicking_handler_costs_one_connection_not_the_worker() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[lifecycle]
graceful_timeout = 20
[http]
limit_concurrency = 2
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let before = s.workers();
    for _ in 0..5 {
        // The connection is dropped without an answer.
        assert!(get(&tcp, "/panic").is_err());
    }
    // Nor do they stay counted against limit_concurrency.
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    assert_eq!(
        s.workers(),
        before,
        "the worker must survive a panicking handler"
    );
    // The panicked connections are not counted as open: a stop is immediate,
    // not a wait for graceful_timeout.
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);
    assert_eq!(s.expect_exit(Duration::from_secs(15)).code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn over_http2_a_panicking_handler_resets_its_stream_not_the_connection() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
"#,
    )
    .start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        panic!("a TCP bind")
    };
    let before = s.workers();
    // nghttp sends both requests at once, as two streams of one connection.
    let out = std::process::Command::new("nghttp")
        .args(["-v", "--timeout=10"])
        .arg(format!("http://{addr}/panic"))
        .arg(format!("http://{addr}/"))
        .output()
        .expect("nghttp is installed (nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("recv RST_STREAM").count(), 1, "{text}");
    assert!(!text.contains("recv GOAWAY"), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("hello world"), "{text}");
    assert_eq!(s.workers(), before, "the worker must survive");
}

#[test]
fn serves_on_ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; nothing to test");
        return;
    }
    let mut s = demo("[server]\nbind = [\"[::1]:0\", \"127.0.0.1:0\"]\nworkers = 1\n").start();
    let st = s.wait_settled(START_TIMEOUT);
    let v6 = st.listeners[0].clone();
    assert!(v6.starts_with("[::1]:"), "{:?}", st.listeners);
    let t = Target::Tcp(v6);
    s.wait_ready(&t);
    assert_eq!(get(&t, "/").unwrap().text(), "hello world");
}
