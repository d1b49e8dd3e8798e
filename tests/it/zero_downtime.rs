//! Zero-downtime operations: health-gated HUP reloads, abandoned reloads,
//! max-requests recycling, heartbeat timeouts, TTIN/TTOU. The master's
//! decisions are read from its status (control socket).

use std::time::{Duration, Instant};

use crate::util::*;

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
    let mut pids = s.worker_pids();
    let load = Load::start(&tcp, 8, Duration::from_secs(30));
    for round in 1..=5u64 {
        std::thread::sleep(Duration::from_secs(2));
        s.signal(Signal::SIGHUP);
        let st = s.wait_status(&format!("reload {round}"), Duration::from_secs(15), |st| {
            st.generation == round as u32 + 1 && settled(st)
        });
        let now: Vec<i32> = st.workers.iter().map(|w| w.pid as i32).collect();
        assert!(!same_set(&now, &pids), "round {round}: {now:?} vs {pids:?}");
        pids = now;
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
    let st = s.status().expect("status");
    assert_eq!(st.totals.reloads_by_result[&ReloadResult::Success], 5);
    assert_eq!(st.totals.reloads_by_result.values().sum::<u64>(), 5);
}

#[test]
fn invalid_config_on_reload_changes_nothing() {
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n").start();
    let tcp = s.ready_tcp();
    let before = s.worker_pids();
    let good = std::fs::read_to_string(&s.config).unwrap();
    let lines = good.lines().count();
    std::fs::write(&s.config, format!("{good}\n[lifecycle]\ntimeot = 3\n")).unwrap();
    s.signal(Signal::SIGHUP);
    let st = s.wait_reloads(1, Duration::from_secs(10));
    let last = st.last_reload.expect("a reload result");
    assert_eq!(last.result, ReloadResult::InvalidConfig);
    let place = format!("app.toml:{}:1: lifecycle.timeot: unknown key", lines + 3);
    assert!(last.message.contains(&place), "{}", last.message);
    assert_eq!(st.generation, 1);
    for _ in 0..20 {
        assert_eq!(get(&tcp, "/").unwrap().status, 200);
    }
    assert_eq!(
        s.worker_pids(),
        before,
        "workers changed after a refused reload"
    );

    std::fs::write(&s.config, &good).unwrap();
    s.signal(Signal::SIGHUP);
    let st = s.wait_status("reload after the fix", Duration::from_secs(15), |st| {
        st.generation == 2 && settled(st)
    });
    let now: Vec<i32> = st.workers.iter().map(|w| w.pid as i32).collect();
    assert!(!same_set(&now, &before));
    let st = s.wait_reloads(2, Duration::from_secs(10));
    assert_eq!(
        st.last_reload.map(|r| r.result),
        Some(ReloadResult::Success)
    );
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
    let before = s.worker_pids();
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{good}\n[app]\nenv = {{ DEMO_FAIL_STARTUP = \"1\" }}\n"),
    )
    .unwrap();
    let load = Load::start(&tcp, 4, Duration::from_secs(30));
    s.signal(Signal::SIGHUP);
    let st = s.wait_reloads(1, Duration::from_secs(20));
    assert_eq!(
        st.last_reload.map(|r| r.result),
        Some(ReloadResult::Abandoned)
    );
    assert_eq!(st.generation, 1, "the previous generation is current again");
    // Why the new workers failed is the app's own error, in the log.
    assert!(s.log_text().contains("DEMO_FAIL_STARTUP is set"));
    let stats = load.finish();
    stats.assert_all_ok(1);
    assert_eq!(
        s.worker_pids(),
        before,
        "the old workers must keep serving:\n{}",
        s.log_text()
    );
    // The master is still healthy: a good reload afterwards works.
    std::fs::write(&s.config, &good).unwrap();
    s.signal(Signal::SIGHUP);
    let st = s.wait_status("good reload", Duration::from_secs(15), |st| {
        st.last_reload.as_ref().map(|r| r.result) == Some(ReloadResult::Success) && settled(st)
    });
    let now: Vec<i32> = st.workers.iter().map(|w| w.pid as i32).collect();
    assert!(!same_set(&now, &before));
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
    s.wait_status("30 recycled workers", Duration::from_secs(60), |st| {
        st.totals.exits_by_reason[&ExitReason::MaxRequests] >= 30
    });
    let stats = load.finish();
    stats.assert_all_ok(1);
    assert!(stats.ok >= 2000, "only {} requests", stats.ok);
    assert!(stats.pids.len() >= 20, "{} distinct pids", stats.pids.len());
    // Capacity never dropped: the fleet is back to two ready workers.
    let st = s.wait_settled(Duration::from_secs(10));
    assert_eq!(st.totals.exits_by_reason[&ExitReason::Crash], 0);
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
    let before = s.worker_pids();

    // Slow but not blocked: keeps beating, never killed.
    let slow = {
        let tcp = tcp.clone();
        std::thread::spawn(move || get(&tcp, "/sleep?ms=5000"))
    };
    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        s.worker_pids(),
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
    let st = s.wait_status(
        "the blocked worker's replacement",
        Duration::from_secs(8),
        |st| {
            settled(st)
                && st
                    .workers
                    .iter()
                    .filter(|w| before.contains(&(w.pid as i32)))
                    .count()
                    == 1
        },
    );
    assert!(
        t0.elapsed() < Duration::from_secs(4) + Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let stats = load.finish();
    assert!(stats.ok > 0);
    let _ = blocker.join();
    assert_eq!(st.totals.exits_by_reason[&ExitReason::Timeout], 1);
    assert_eq!(st.totals.worker_exits, 1);
}

/// The real signals reach the master and change the fleet; the rules
/// (never below one worker, scale-down drains the oldest, counted as
/// `scale_down`) are the core's tests.
#[test]
fn ttin_and_ttou_change_the_worker_count() {
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n").start();
    s.ready_tcp();
    let workers = |n: usize| move |st: &Status| st.desired_workers == n && settled(st);
    s.signal(Signal::SIGTTIN);
    s.wait_status("three workers", Duration::from_secs(10), workers(3));
    s.signal(Signal::SIGTTOU);
    let st = s.wait_status("two workers again", Duration::from_secs(10), workers(2));
    assert_eq!(st.totals.exits_by_reason[&ExitReason::ScaleDown], 1);
    assert_eq!(s.workers().len(), 2);
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
    let st = s.wait_reloads(1, Duration::from_secs(10));
    assert_eq!(
        st.last_reload.map(|r| r.result),
        Some(ReloadResult::Success)
    );
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
    s.wait_status("the first reload", Duration::from_secs(10), |st| {
        st.phase == Phase::Reloading && st.generation == 2
    });
    s.signal(Signal::SIGHUP);
    // One after the other: generation 3 appears only once generation 2's
    // reload has finished.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = s.status().expect("status");
        let done = st.totals.reloads_by_result[&ReloadResult::Success];
        assert!(
            st.generation < 3 || done >= 1,
            "second reload started early: {st:#?}"
        );
        if done == 2 {
            assert_eq!(st.generation, 3);
            break;
        }
        assert!(Instant::now() < deadline, "{st:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = load.finish();
    stats.assert_all_ok(1);
}

#[test]
fn http2_connections_are_drained_with_goaway_on_reload() {
    if !have("curl", "the HTTP client of this test") {
        return;
    }
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n").start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!()
    };
    let before = s.worker_pids();
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
    let st = s.wait_status("the new generation", Duration::from_secs(10), |st| {
        st.generation == 2 && settled(st)
    });
    let after: Vec<i32> = st.workers.iter().map(|w| w.pid as i32).collect();
    assert!(!same_set(&after, &before));
    // The old worker said GOAWAY: the second request went to the new one.
    let pid: i32 = std::fs::read_to_string(s.dir.path().join("second.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(vec![pid], after, "served by {pid}; old {before:?}");
}

/// A TERM the master sends to a worker it has just forked (kill -9 of a
/// worker, then HUP at once: the replacement is of the old generation and
/// is drained right away) must reach the worker's own handler, however
/// early it comes: otherwise the worker serves the old code until
/// graceful_timeout and is then killed.
#[test]
fn a_term_right_after_a_fork_is_never_lost() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[lifecycle]
graceful_timeout = 30
[log]
access_log = ""
"#,
    )
    .start();
    s.ready_tcp();
    const TRIES: u32 = 200;
    for i in 0..TRIES {
        let st = s.wait_settled(Duration::from_secs(10));
        let old: Vec<i32> = st.workers.iter().map(|w| w.pid as i32).collect();
        kill(old[i as usize % 2], Signal::SIGKILL);
        // From at once to 2 ms later: some HUPs land just after the
        // master forked the replacement.
        std::thread::sleep(Duration::from_micros(100 * (i % 20) as u64));
        s.signal(Signal::SIGHUP);
        let generation = st.generation + 1;
        // Well under graceful_timeout: every old worker, including a
        // replacement forked just before the HUP, left promptly.
        let t0 = Instant::now();
        s.wait_status(
            &format!("try {i}: generation {generation} alone"),
            Duration::from_secs(10),
            |st| st.generation == generation && settled(st),
        );
        let mut left = s.workers();
        left.retain(|p| old.contains(p));
        assert!(left.is_empty(), "try {i}: old workers {left:?} still alive");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    let st = s.status().expect("status");
    assert_eq!(
        st.totals.reloads_by_result[&ReloadResult::Success],
        TRIES as u64
    );
    assert_eq!(st.totals.exits_by_reason[&ExitReason::Timeout], 0);
}
