//! Zero-downtime operations: health-gated HUP reloads, abandoned reloads,
//! max-requests recycling, heartbeat timeouts, TTIN/TTOU.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn demo(config: &str) -> ServerBuilder {
    ServerBuilder::new(example("demo")).config(config)
}

fn same_set(a: &[i32], b: &[i32]) -> bool {
    a.iter().any(|p| b.contains(p))
}

#[test]
fn five_reloads_under_load_lose_no_request() {
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
    let mut pids = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    let load = Load::start(&tcp, 8, Duration::from_secs(30));
    for round in 1..=5 {
        std::thread::sleep(Duration::from_secs(2));
        s.signal(Signal::SIGHUP);
        let old = pids.clone();
        pids = s.wait_workers(&format!("reload {round}"), Duration::from_secs(15), |w| {
            w.len() == 2 && !same_set(w, &old)
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.finish();
    stats.assert_all_ok(1);
    assert!(
        stats.ok > 500,
        "too little load to prove anything: {}",
        stats.ok
    );
    // Six generations of two workers answered.
    assert!(stats.pids.len() >= 10, "pids that served: {:?}", stats.pids);
    let log = s.log_text();
    assert_eq!(log.matches("reload complete").count(), 5, "{log}");
}

#[test]
fn invalid_config_on_reload_changes_nothing() {
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n").start();
    let tcp = s.ready_tcp();
    let before = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{good}\n[lifecycle]\ntimeot = 3\n")).unwrap();
    s.signal(Signal::SIGHUP);
    let log = s.wait_log("reload refused", Duration::from_secs(10));
    assert!(
        log.contains("app.toml:6:1: lifecycle.timeot: unknown key"),
        "{log}"
    );
    for _ in 0..20 {
        assert_eq!(get(&tcp, "/").unwrap().status, 200);
    }
    assert_eq!(
        s.workers(),
        before,
        "workers changed after a refused reload"
    );

    std::fs::write(&s.config, &good).unwrap();
    s.signal(Signal::SIGHUP);
    s.wait_workers("reload after the fix", Duration::from_secs(15), |w| {
        w.len() == 2 && !same_set(w, &before)
    });
    s.wait_log("reload complete", Duration::from_secs(10));
}

#[test]
fn a_generation_that_cannot_start_never_replaces_a_working_one() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[log]
level = "info"
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let before = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{good}\n[app]\nenv = {{ DEMO_FAIL_STARTUP = \"1\" }}\n"),
    )
    .unwrap();
    let load = Load::start(&tcp, 4, Duration::from_secs(30));
    s.signal(Signal::SIGHUP);
    let log = s.wait_log("RELOAD ABANDONED", Duration::from_secs(20));
    assert!(log.contains("DEMO_FAIL_STARTUP is set"), "{log}");
    let stats = load.finish();
    stats.assert_all_ok(1);
    assert_eq!(
        s.workers(),
        before,
        "the old workers must keep serving:\n{}",
        s.log_text()
    );
    // The master is still healthy: a good reload afterwards works.
    std::fs::write(&s.config, &good).unwrap();
    s.signal(Signal::SIGHUP);
    s.wait_workers("good reload", Duration::from_secs(15), |w| {
        w.len() == 2 && !same_set(w, &before)
    });
}

#[test]
fn max_requests_recycling_under_load_loses_nothing() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[lifecycle]
max_requests = 50
max_requests_jitter = 10
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let load = Load::start(&tcp, 8, Duration::from_secs(60));
    s.wait_log_count("reached max_requests", 30, Duration::from_secs(60));
    let stats = load.finish();
    stats.assert_all_ok(1);
    assert!(stats.ok >= 2000, "only {} requests", stats.ok);
    assert!(stats.pids.len() >= 20, "{} distinct pids", stats.pids.len());
    // Capacity never dropped: the fleet is back to two ready workers.
    s.wait_workers("two workers", Duration::from_secs(10), |w| w.len() == 2);
}

#[test]
fn a_blocked_worker_is_killed_and_replaced_but_a_slow_one_is_not() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[lifecycle]
timeout = 2
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let before = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);

    // Slow but not blocked: keeps beating, never killed.
    let slow = {
        let tcp = tcp.clone();
        std::thread::spawn(move || get(&tcp, "/sleep?ms=5000"))
    };
    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        s.workers(),
        before,
        "a slow async request must not kill its worker"
    );

    // Blocked: killed after ~2 s, replaced.
    let blocker = {
        let tcp = tcp.clone();
        std::thread::spawn(move || get(&tcp, "/block?ms=20000"))
    };
    let t0 = Instant::now();
    // Meanwhile the other worker keeps serving (new connections).
    let load = Load::start(&tcp, 2, Duration::from_secs(10));
    let after = s.wait_workers(
        "the blocked worker's replacement",
        Duration::from_secs(8),
        |w| w.len() == 2 && w.iter().filter(|p| before.contains(p)).count() == 1,
    );
    assert!(
        t0.elapsed() < Duration::from_secs(4) + Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let stats = load.finish();
    assert!(stats.ok > 0);
    let _ = blocker.join();
    let log = s.log_text();
    assert!(log.contains("missed its heartbeat"), "{log}");
    assert!(log.contains("SIGABRT"), "{log}");
    let killed: Vec<_> = before.iter().filter(|p| !after.contains(p)).collect();
    assert!(log.contains(&format!("pid={}", killed[0])), "{log}");
}

#[test]
fn ttin_and_ttou_change_the_worker_count() {
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n").start();
    s.ready_tcp();
    s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    s.signal(Signal::SIGTTIN);
    s.wait_workers("three workers", Duration::from_secs(10), |w| w.len() == 3);
    s.signal(Signal::SIGTTOU);
    s.wait_workers("two workers again", Duration::from_secs(10), |w| {
        w.len() == 2
    });
    s.signal(Signal::SIGTTOU);
    s.wait_workers("one worker", Duration::from_secs(10), |w| w.len() == 1);
    s.signal(Signal::SIGTTOU);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.workers().len(), 1, "never below one worker");
}

#[test]
fn reload_binds_new_addresses_and_closes_removed_ones() {
    let b = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n");
    let sock = b.dir().join("new.sock");
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let text = format!(
        "[server]\nbind = [\"unix:{}\"]\nworkers = 1\n",
        sock.display()
    );
    std::fs::write(&s.config, text).unwrap();
    s.signal(Signal::SIGHUP);
    s.wait_log("reload complete", Duration::from_secs(10));
    let unix = Target::Unix(sock.clone());
    assert_eq!(get(&unix, "/").unwrap().status, 200);
    // The old TCP address is closed once its workers are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp.connect().is_ok() {
        assert!(Instant::now() < deadline, "old address still open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hup_during_a_reload_is_queued_not_interleaved() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[app]
env = { DEMO_STARTUP_DELAY_MS = "400" }
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let load = Load::start(&tcp, 4, Duration::from_secs(30));
    s.signal(Signal::SIGHUP);
    s.wait_log("new generation starting", Duration::from_secs(10));
    s.signal(Signal::SIGHUP);
    let log = s.wait_log("queued until it finishes", Duration::from_secs(10));
    assert!(
        !log.contains("generation=3"),
        "second reload started early:\n{log}"
    );
    let log = s.wait_log_count("reload complete", 2, Duration::from_secs(20));
    // One after the other: generation 2 completes before generation 3 starts.
    let done2 = log.find("reload complete: every worker is of the new generation generation=2");
    let start3 = log.find("generation=3 workers=2");
    assert!(
        matches!((done2, start3), (Some(a), Some(b)) if a < b),
        "{log}"
    );
    let stats = load.finish();
    stats.assert_all_ok(1);
}

#[test]
fn http2_connections_are_drained_with_goaway_on_reload() {
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n").start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!()
    };
    let before = s.workers();
    // Two requests on one HTTP/2 connection; the reload happens during the
    // first. It must finish, and the second must be answered (on a new
    // connection, by the new generation).
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "20"])
        .args(["-w", "%{http_code} %{http_version}\\n"])
        .args(["-o", "/dev/null"])
        .arg(format!("http://{addr}/sleep?ms=1500"))
        .arg("-o")
        .arg(s.dir.path().join("second.txt"))
        .arg(format!("http://{addr}/pid"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(500));
    s.signal(Signal::SIGHUP);
    let out = curl.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(' ')).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines.iter().all(|l| *l == "200 2"), "{text}");
    s.wait_log("reload complete", Duration::from_secs(10));
    let after = s.wait_workers("new generation", Duration::from_secs(10), |w| {
        w.len() == 1 && !same_set(w, &before)
    });
    // The old worker said GOAWAY: the second request went to the new one.
    let pid: i32 = std::fs::read_to_string(s.dir.path().join("second.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(vec![pid], after, "served by {pid}; old {before:?}");
}
