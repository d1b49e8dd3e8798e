//! Canary reloads (`lifecycle.canary`): one worker of the new generation
//! is watched against the old ones before the rest are replaced, and a
//! canary that fails is rolled back with the old workers untouched.

use std::time::Duration;

use crate::util::*;

const BASE: &str = r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[lifecycle]
canary = 3
graceful_timeout = 5
"#;

#[test]
fn a_canary_that_answers_500_is_rolled_back_and_the_old_workers_serve_on() {
    let mut s = demo(BASE).start();
    let tcp = s.ready_tcp();
    let before = s.worker_pids();
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{good}\n[app]\nenv = {{ DEMO_FAIL_RATE = \"1\" }}\n"),
    )
    .unwrap();
    // Clients that do not retry: a 500 is a failed request.
    let load = Load::start_path(&tcp, 4, Duration::from_secs(60), "/");
    let cfg = s.config.display().to_string();
    let (code, _, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
    let during = load.finish();
    assert_eq!(code, 5, "{err}\n{}", s.log_text());
    assert!(err.contains("rolled_back"), "{err}");
    assert!(err.contains("5xx"), "the reason names the 5xx ratio: {err}");

    let st = s.wait_status("the canary gone", Duration::from_secs(20), |st| {
        settled(st) && st.generation == 1 && st.totals.exits_by_reason[&ExitReason::Rollback] == 1
    });
    assert_eq!(
        st.last_reload.as_ref().map(|r| r.result),
        Some(ReloadResult::RolledBack)
    );
    assert_eq!(st.totals.reloads_by_result[&ReloadResult::RolledBack], 1);
    // Only the worker the canary replaced is gone.
    let now = s.worker_pids();
    let kept: Vec<&i32> = before.iter().filter(|p| now.contains(p)).collect();
    assert_eq!(kept.len(), 1, "before {before:?}, now {now:?}");
    // Every failure was one of the canary's 500s (no connection was
    // dropped), and it was stopped long before it took half the traffic.
    let answered_5xx = st.totals.responses_by_class[4];
    eprintln!(
        "canary rollback: {} failed, {} ok during the reload",
        during.failed, during.ok
    );
    assert!(during.failed >= 1, "the canary served nothing: {during:?}");
    assert_eq!(
        during.failed,
        answered_5xx,
        "{:?}",
        &during.errors[..during.errors.len().min(5)]
    );
    assert!(
        during.failed < during.ok,
        "{} failed, {} ok: the canary took more than its share",
        during.failed,
        during.ok
    );
    let metrics = get(&tcp, "/metrics").unwrap().text();
    assert!(
        metrics.contains("rsvisor_reloads_total{result=\"rolled_back\"} 1"),
        "{metrics}"
    );
    // After the window every request is answered 200 again.
    let after = Load::start_path(&tcp, 4, Duration::from_secs(10), "/");
    std::thread::sleep(Duration::from_secs(1));
    after.finish().assert_all_ok(20);
    assert!(s.log_text().contains("RELOAD ROLLED BACK"));
}

#[test]
fn a_good_canary_costs_the_window_and_nothing_else() {
    // The same reload without a canary, then with one.
    let plain = BASE.replace("canary = 3", "canary = 0");
    let mut s = demo(&plain).start();
    let tcp = s.ready_tcp();
    let load = Load::start_path(&tcp, 2, Duration::from_secs(60), "/");
    s.signal(Signal::SIGHUP);
    let st = s.wait_reloads(1, Duration::from_secs(20));
    let without = st.last_reload.expect("reload report").duration_ms;

    std::fs::write(&s.config, BASE).unwrap();
    s.signal(Signal::SIGHUP);
    let watched = s.wait_status("the canary under watch", Duration::from_secs(20), |st| {
        st.canary.as_ref().is_some_and(|c| !c.passed)
    });
    let canary = watched.canary.unwrap();
    assert!(watched.workers.iter().any(|w| w.pid == canary.pid));
    let st = s.wait_status("the reload done", Duration::from_secs(30), |st| {
        st.totals.reloads_by_result.values().sum::<u64>() == 2 && settled(st)
    });
    let stats = load.finish();
    let report = st.last_reload.expect("reload report");
    assert_eq!(report.result, ReloadResult::Success, "{}", report.message);
    stats.assert_all_ok(50);
    assert!(
        report.duration_ms >= 3_000,
        "the window was cut short: {report:?}"
    );
    // Generous for slow machines; the window itself is 3 s.
    assert!(
        report.duration_ms <= without + 3_000 + 2_000,
        "{} ms with a canary, {without} ms without",
        report.duration_ms
    );
    assert!(st.canary.is_none());
    assert!(s.log_text().contains("canary passed"), "{}", s.log_text());
}

#[test]
fn a_canary_that_dies_is_rolled_back() {
    let b = demo(&BASE.replace("canary = 3", "canary = 30"));
    let notify = crate::systemd::NotifySocket::new(b.dir());
    let mut s = b
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .start();
    notify.until("READY=1", Duration::from_secs(20));
    let tcp = s.ready_tcp();
    s.signal(Signal::SIGHUP);
    let st = s.wait_status("the canary under watch", Duration::from_secs(20), |st| {
        st.canary.is_some()
    });
    let canary = st.canary.unwrap().pid as i32;
    kill(canary, Signal::SIGKILL);
    let st = s.wait_reloads(1, Duration::from_secs(20));
    let report = st.last_reload.expect("reload report");
    assert_eq!(report.result, ReloadResult::RolledBack);
    assert!(
        report.message.contains("exited unexpectedly"),
        "{}",
        report.message
    );
    // systemd hears that the service serves on (READY=1) and why the
    // reload did not take (STATUS=).
    let msgs = notify.until("READY=1", Duration::from_secs(10));
    let ready = msgs.last().unwrap();
    assert!(
        ready.contains("last reload: rolled_back (the canary"),
        "{msgs:?}"
    );
    let st = s.wait_settled(Duration::from_secs(20));
    assert_eq!(st.generation, 1);
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
}
