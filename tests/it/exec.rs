//! Exec mode: `app.command` supervises a real uvicorn (from PyPI, in
//! tests/.venv, installed by scripts/deps) and a small notify-protocol
//! program, with the same health-gated reloads, recycling and crash
//! handling as forked workers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn uvicorn() -> PathBuf {
    venv_bin("uvicorn")
}

/// uvicorn, gunicorn and the Python the test apps run on, which
/// `scripts/deps` installs into tests/.venv.
fn have_venv() -> bool {
    have_in_venv(&["uvicorn", "gunicorn", "python"])
}

fn python() -> PathBuf {
    venv_bin("python")
}

/// An rsvisor running uvicorn on the ASGI app copied into its directory;
/// `lifecycle` goes into `[lifecycle]`, `extra` after `[app]`.
fn uvicorn_server(workers: usize, lifecycle: &str, extra: &str) -> ServerBuilder {
    let b = ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = {workers}
[lifecycle]
timeout = 20
graceful_timeout = 10
{lifecycle}
[app]
command = ["{uvicorn}", "--fd", "3", "--no-access-log", "asgi_app:app"]
cwd = "{{dir}}"
ready = "log:Application startup complete"
{extra}
"#,
        uvicorn = uvicorn().display()
    ));
    // The same pure-ASGI app the benchmarks run under uvicorn: `/` answers
    // hello world, `/pid` the worker's pid.
    std::fs::copy(
        repo().join("bench/apps/asgi_hello.py"),
        b.dir().join("asgi_app.py"),
    )
    .unwrap();
    b
}

/// Polls the status until stopped; remembers the fewest ready workers seen.
struct ReadyWatch {
    stop: Arc<AtomicBool>,
    fewest: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ReadyWatch {
    fn start(control: &Path) -> ReadyWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let fewest = Arc::new(AtomicUsize::new(usize::MAX));
        let control = control.to_path_buf();
        let handle = {
            let (stop, fewest) = (stop.clone(), fewest.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(st) = status_at(&control) {
                        let ready = st
                            .workers
                            .iter()
                            .filter(|w| {
                                matches!(w.state, WorkerState::Ready | WorkerState::Retiring)
                            })
                            .count();
                        fewest.fetch_min(ready, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        ReadyWatch {
            stop,
            fewest,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.fewest.load(Ordering::SeqCst)
    }
}

fn status_at(control: &Path) -> Option<Status> {
    use std::io::{BufRead, Write};
    let s = std::os::unix::net::UnixStream::connect(control).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    (&s).write_all(b"status\n").ok()?;
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).ok()?;
    let resp: rsvisor::control::Response = serde_json::from_str(&line).ok()?;
    resp.status
}

#[test]
fn uvicorn_serves_and_five_reloads_replace_every_worker() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_server(2, "", "").start();
    let tcp = s.ready_tcp();
    assert_eq!(get(&tcp, "/").unwrap().text(), "hello world");
    let first = s.worker_pids();
    let load = Load::start(&tcp, 4, Duration::from_secs(120));
    let watch = ReadyWatch::start(&s.control);
    let mut seen: Vec<i32> = first.clone();
    for round in 1..=5u32 {
        std::thread::sleep(Duration::from_millis(700));
        s.signal(Signal::SIGHUP);
        let st = s.wait_status(&format!("reload {round}"), Duration::from_secs(60), |st| {
            st.generation == round + 1 && settled(st)
        });
        for w in &st.workers {
            assert!(!seen.contains(&(w.pid as i32)), "pid {} reused", w.pid);
        }
        seen.extend(st.workers.iter().map(|w| w.pid as i32));
    }
    let fewest = watch.finish();
    let stats = load.finish();
    eprintln!(
        "uvicorn, 5 reloads under load: {} ok, {} failed {:?}",
        stats.ok,
        stats.failed,
        &stats.errors[..stats.errors.len().min(5)]
    );
    assert!(fewest >= 2, "the fleet fell to {fewest} ready workers");
    assert!(stats.ok > 200, "{} requests", stats.ok);
    // A client that does not retry can meet a keep-alive connection that
    // uvicorn closes as it drains; that is all that may fail.
    assert!(
        stats.failed * 100 <= stats.ok,
        "{} of {} requests failed: {:?}",
        stats.failed,
        stats.ok,
        &stats.errors[..stats.errors.len().min(10)]
    );
    let st = s.status().unwrap();
    assert_eq!(st.totals.reloads_by_result[&ReloadResult::Success], 5);
    assert_eq!(st.totals.exits_by_reason[&ExitReason::Crash], 0);
}

#[test]
fn a_reload_to_code_that_cannot_import_keeps_the_old_generation() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_server(2, "", "").start();
    let tcp = s.ready_tcp();
    let before = s.worker_pids();
    let err = broken_reload_under_load(&s, &tcp);
    assert!(err.contains("abandoned"), "{err}");
    assert_eq!(s.worker_pids(), before, "the old workers serve on");
    assert!(s.log_text().contains("broken on purpose"));
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
}

/// The same HUP sent as soon as the first workers answer, before they have
/// been up `READY_SETTLE` (when a deploy follows a start, or a reload):
/// workers that answer are never drained for a generation that cannot
/// start.
#[test]
fn a_broken_reload_right_after_the_workers_answer_keeps_them_serving() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_server(2, "", "").start();
    let tcp = s.tcp_addr();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&tcp, "/").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    broken_reload_under_load(&s, &tcp);
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
}

/// Replaces the app with one that cannot import and reloads while four
/// clients send requests: the reload exits 5 and every request (at least
/// 20) is answered. Returns what `rsvisor reload` wrote to stderr.
fn broken_reload_under_load(s: &Server, tcp: &Target) -> String {
    std::fs::write(
        s.dir.path().join("asgi_app.py"),
        "raise ImportError('broken on purpose')\n",
    )
    .unwrap();
    let load = Load::start(tcp, 4, Duration::from_secs(60));
    let cfg = s.config.display().to_string();
    let (code, _, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
    let stats = load.finish();
    assert_eq!(code, 5, "{err}");
    stats.assert_all_ok(20);
    err
}

#[test]
fn a_notify_worker_is_ready_at_ready_1_and_replaced_when_its_watchdog_stops() {
    if !have_venv() {
        return;
    }
    let b = ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[lifecycle]
timeout = 3
[app]
command = ["{python}", "{app}"]
ready = "notify"
env = {{ NOTIFY_APP_READY_DELAY_MS = "1500" }}
"#,
        python = python().display(),
        app = repo().join("tests/apps/notify_app.py").display()
    ));
    let mut s = b.start();
    let tcp = s.tcp_addr();
    // It serves at once, but is not ready before READY=1.
    let t0 = Instant::now();
    s.wait_status("the worker", START_TIMEOUT, |st| !st.workers.is_empty());
    std::thread::sleep(Duration::from_millis(700));
    let st = s.status().unwrap();
    assert_eq!(st.workers[0].state, WorkerState::Booting, "{st:#?}");
    let st = s.wait_settled(Duration::from_secs(10));
    assert!(t0.elapsed() >= Duration::from_millis(1400));
    let pid = st.workers[0].pid as i32;
    assert_eq!(get(&tcp, "/").unwrap().text(), pid.to_string());
    // Its heartbeat: WATCHDOG=1 every second. It stops on /hang.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.worker_pids(), vec![pid], "replaced while pinging");
    assert_eq!(get(&tcp, "/hang").unwrap().status, 200);
    let hung = Instant::now();
    let st = s.wait_status(
        "the hung worker's replacement",
        Duration::from_secs(15),
        |st| settled(st) && st.workers.iter().all(|w| w.pid as i32 != pid),
    );
    let took = hung.elapsed();
    // Timeout, READY=1 1.5 s after start, then 2 s (READY_SETTLE) before
    // a process that said it was ready counts as started.
    assert!(
        took < Duration::from_secs(3 + 1 + 2) + Duration::from_millis(1500 + 1000),
        "replaced {took:?} after the pings stopped (timeout 3 s; READY=1 comes 1.5 s after start)"
    );
    assert_eq!(st.totals.exits_by_reason[&ExitReason::Timeout], 1);
}

#[test]
fn workers_are_recycled_by_age_without_losing_capacity() {
    if !have_venv() {
        return;
    }
    // A lifetime well past boot + READY_SETTLE (an exec worker counts as
    // capacity 2 s after it said it was ready): with 3 s, a worker retired
    // about as soon as it settled and the fleet was never seen whole.
    let mut s = uvicorn_server(
        2,
        "max_worker_lifetime = 6\nmax_worker_lifetime_jitter = 1\n",
        "",
    )
    .start();
    let tcp = s.ready_tcp();
    let first = s.worker_pids();
    let load = Load::start(&tcp, 2, Duration::from_secs(60));
    let watch = ReadyWatch::start(&s.control);
    let st = s.wait_status("two rounds of recycling", Duration::from_secs(40), |st| {
        st.totals.exits_by_reason[&ExitReason::Lifetime] >= 4 && settled(st)
    });
    let fewest = watch.finish();
    let stats = load.finish();
    assert!(fewest >= 2, "the fleet fell to {fewest} ready workers");
    assert!(st.workers.iter().all(|w| !first.contains(&(w.pid as i32))));
    assert!(stats.ok > 50);
    assert!(
        stats.failed * 100 <= stats.ok,
        "{} failed: {:?}",
        stats.failed,
        &stats.errors[..stats.errors.len().min(10)]
    );
}

#[test]
fn a_killed_child_is_replaced_and_none_outlives_the_master() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_server(2, "", "").start();
    s.ready_tcp();
    let before = s.worker_pids();
    kill(before[0], Signal::SIGKILL);
    s.wait_status("a replacement", Duration::from_secs(20), |st| {
        settled(st) && st.workers.iter().all(|w| w.pid as i32 != before[0])
    });
    let children = s.workers();
    kill(s.pid(), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let alive: Vec<&i32> = children.iter().filter(|p| alive(**p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children {alive:?} outlived the master"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_fleets_metrics_health_and_readiness_are_on_metrics_bind() {
    if !have_venv() {
        return;
    }
    let b = uvicorn_server(2, "", "[metrics]\nbind = \"unix:{dir}/metrics.sock\"\n");
    let sock = b.dir().join("metrics.sock");
    let mut s = b.start();
    s.ready_tcp();
    let m = Target::Unix(sock);
    let mut r = get(&m, "/ready").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.status != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        r = get(&m, "/ready").unwrap();
    }
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&m, "/health").unwrap().status, 200);
    let metrics = get(&m, "/metrics").unwrap().text();
    assert!(
        metrics.contains("rsvisor_workers{state=\"ready\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rsvisor_worker_cpu_seconds{worker="),
        "{metrics}"
    );
    assert_eq!(get(&m, "/").unwrap().status, 404);
    // uvicorn sends no WATCHDOG=1: no heartbeat age for its two workers,
    // in the metrics or in the status.
    let ages = metrics
        .lines()
        .filter(|l| l.starts_with("rsvisor_worker_heartbeat_age_seconds{"))
        .count();
    let workers = metrics
        .lines()
        .filter(|l| l.starts_with("rsvisor_worker_cpu_seconds{"))
        .count();
    assert_eq!((workers, ages), (2, 0), "{metrics}");
    // rsvisor sees no request in exec mode: request and connection
    // metrics are absent (not 0), and the helper's own scrapes are not
    // counted as traffic.
    for _ in 0..5 {
        get(&m, "/metrics").unwrap();
    }
    let metrics = get(&m, "/metrics").unwrap().text();
    for name in [
        "rsvisor_http_requests_total",
        "rsvisor_http_response_body_bytes_total",
        "rsvisor_http_request_duration_seconds",
        "rsvisor_worker_active_connections",
    ] {
        assert!(!metrics.contains(name), "{name} in exec mode:\n{metrics}");
    }
    // The status lists the two uvicorn workers, not the sidecar.
    let st = s.status().unwrap();
    assert_eq!(st.workers.len(), 2);
    assert!(st
        .workers
        .iter()
        .all(|w| w.seconds_since_heartbeat.is_none()));
    assert!(st
        .workers
        .iter()
        .all(|w| w.rss_bytes > 0 || w.age_seconds < 1.5));
}

#[test]
fn exec_configs_that_would_fail_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    // A program that exists wherever the test runs, so only the rule
    // under test can fail.
    let program = rsvisor_bin().display().to_string();
    let cases: [(String, &str); 5] = [
        (
            "[app]\ncommand = [\"no-such-program-anywhere\", \"--fd\", \"3\"]\n".into(),
            "app.toml:2:1: app.command: program \"no-such-program-anywhere\" is not found",
        ),
        (
            "[app]\ncommand = [\"\", \"--fd\", \"3\"]\n".into(),
            "app.toml:2:1: app.command: the program to run is empty",
        ),
        (
            format!("[lifecycle]\nmax_requests = 100\n[app]\ncommand = [\"{program}\"]\n"),
            "app.toml:2:1: lifecycle.max_requests: cannot work with app.command",
        ),
        (
            format!("[app]\ncommand = [\"{program}\"]\nready = \"log:(\"\n"),
            "app.toml:3:9: app.ready: \"(\" is not a regular expression",
        ),
        (
            format!("[app]\ncommand = [\"{program}\"]\nstop_signal = \"KILL\"\n"),
            "app.toml:3:15: app.stop_signal:",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(dir.path().join("app.toml"), &text).unwrap();
        let (code, _, err) = run(&rsvisor_bin(), &["check", "app.toml"], dir.path(), &[]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(want), "{text}:\n{err}\nwanted {want}");
    }
}

fn notify_app_server(workers: usize, env: &str) -> ServerBuilder {
    notify_app_server_with(workers, env, "")
}

/// [`notify_app_server`] with more tables after `[app]`.
fn notify_app_server_with(workers: usize, env: &str, tables: &str) -> ServerBuilder {
    ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = {workers}
[app]
command = ["{python}", "{app}"]
ready = "notify"
env = {{ {env} }}
{tables}
"#,
        python = python().display(),
        app = repo().join("tests/apps/notify_app.py").display()
    ))
}

/// A process that says READY=1 and exits 50 ms later failed to start:
/// it is restarted with the boot backoff, not in a tight loop.
#[test]
fn an_app_that_exits_right_after_ready_is_backed_off() {
    if !have_venv() {
        return;
    }
    let mut s = notify_app_server(1, "NOTIFY_APP_EXIT_AFTER_READY_MS = \"50\"").start();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(15));
    let st = s.status().expect("the master answers");
    let started = st.totals.worker_exits + st.workers.len() as u64;
    assert!(
        (3..=20).contains(&started),
        "{started} starts in {:?}:\n{}",
        t0.elapsed(),
        s.log_text()
    );
    assert!(s
        .log_text()
        .contains("worker exited right after it said it was ready"));
    // Still trying (with backoff), not given up: it was ready each time.
    assert!(s.try_wait().is_none(), "{}", s.log_text());
}

/// A reload to a release whose processes exit right after READY=1 is
/// abandoned (exit 5) while the old generation serves on.
#[test]
fn a_reload_to_processes_that_exit_right_after_ready_is_abandoned() {
    if !have_venv() {
        return;
    }
    let mut s = notify_app_server(2, "").start();
    let tcp = s.ready_tcp();
    let before = s.worker_pids();
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace(
            "env = {  }",
            "env = { NOTIFY_APP_EXIT_AFTER_READY_MS = \"50\" }",
        ),
    )
    .unwrap();
    // No load during the reload: in direct mode a process that dies takes
    // the connections it had accepted with it.
    let cfg = s.config.display().to_string();
    let (code, out, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
    assert_eq!(code, 5, "{out}{err}\n{}", s.log_text());
    assert!(err.contains("abandoned"), "{err}");
    assert_eq!(s.worker_pids(), before, "the old workers serve on");
    for _ in 0..30 {
        let r = get(&tcp, "/").expect("an answer");
        assert_eq!(r.status, 200);
        let pid: i32 = r.text().parse().unwrap();
        assert!(before.contains(&pid), "{pid} is not of the old generation");
    }
    let st = s.status().expect("status");
    assert_eq!(st.workers.len(), 2);
}

/// A HUP to a settled fleet: generation 2 settles with none of `before`'s
/// workers left.
fn hup_replaces_every_worker(s: &mut Server, before: &Status) {
    s.signal(Signal::SIGHUP);
    let after = s.wait_status("the new generation", Duration::from_secs(30), |st| {
        st.generation == 2 && settled(st)
    });
    assert!(after
        .workers
        .iter()
        .all(|w| before.workers.iter().all(|o| o.pid != w.pid)));
}

/// One notify-app worker whose app starts a stray child (`how`: "group" or
/// "setsid"), with a 2 s graceful_timeout; returns it serving, and the
/// stray's pid.
fn server_with_a_stray(how: &str) -> (Server, Target, i32) {
    let mut s = notify_app_server_with(
        1,
        &format!("NOTIFY_APP_STRAY = \"{how}\""),
        "[lifecycle]\ngraceful_timeout = 2\n",
    )
    .start();
    let tcp = s.ready_tcp();
    let stray = stray_pid(&s);
    (s, tcp, stray)
}

/// The pid the app printed as `stray <pid>` in the master's log.
fn stray_pid(s: &Server) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = s.log_text();
        if let Some(pid) = log
            .split("stray ")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no stray pid in:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A worker whose app forked a child that ignores SIGTERM (and stays in
/// the worker's process group): a TERM to the master ends it too, at the
/// end of graceful_timeout, logged, and the master exits 0 only then.
#[test]
fn term_leaves_no_process_of_an_app_whose_child_ignores_term() {
    if !have_venv() {
        return;
    }
    let (mut s, tcp, stray) = server_with_a_stray("group");
    assert!(alive(stray));
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    s.signal(Signal::SIGTERM);
    let st = s.expect_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", s.log_text());
    assert!(!alive(stray), "the app's child {stray} outlived the master");
    let log = s.log_text();
    assert!(
        log.contains("outlived its worker") && log.contains("killed"),
        "{log}"
    );
}

/// A child that left the worker's process group (setsid) and serves the
/// same socket with the old code: after a reload it is killed at the end
/// of graceful_timeout, and from then on only the new worker answers.
#[test]
fn a_child_that_left_the_group_does_not_serve_old_code_after_a_reload() {
    if !have_venv() {
        return;
    }
    let (s, tcp, stray) = server_with_a_stray("setsid");
    let old = s.worker_pids();
    // The next release starts no such child.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("NOTIFY_APP_STRAY = \"setsid\"", "")).unwrap();
    let cfg = s.config.display().to_string();
    let (code, out, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
    assert_eq!(code, 0, "{out}{err}\n{}", s.log_text());
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(stray) {
        assert!(
            Instant::now() < deadline,
            "the old generation's stray {stray} is still serving:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let new = s.worker_pids();
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    for _ in 0..40 {
        let r = get(&tcp, "/").expect("an answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.text().parse::<i32>().unwrap(), new[0]);
    }
    assert!(s.log_text().contains("outlived its worker"));
}

/// 200,000 lines in a burst: at most 1,000 per second reach the log, every
/// other one is counted, and a bare carriage return cannot hide the line's
/// slot/pid prefix.
#[test]
fn a_flood_of_output_is_rate_limited_counted_and_escaped() {
    if !have_venv() {
        return;
    }
    const LINES: u64 = 200_000;
    let b = notify_app_server_with(
        1,
        &format!("NOTIFY_APP_FLOOD_LINES = \"{LINES}\""),
        "[metrics]\nbind = \"unix:{dir}/metrics.sock\"\n",
    );
    let m = Target::Unix(b.dir().join("metrics.sock"));
    let mut s = b.start();
    let t0 = Instant::now();
    s.ready_tcp();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (logged, dropped) = loop {
        let log = s.log_text();
        // "flood done" is the flood's last line, logged or counted too.
        let logged =
            (log.matches("flood line ").count() + log.matches("flood done").count()) as u64;
        let dropped = get(&m, "/metrics")
            .map(|r| metric(&r.text(), "rsvisor_app_output_lines_dropped_total"))
            .unwrap_or(0.0) as u64;
        if logged + dropped == LINES + 1 {
            break (logged, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "{logged} logged + {dropped} dropped != {LINES} + 1"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let secs = t0.elapsed().as_secs() + 1;
    assert!(
        logged <= 1_000 * (secs + 1),
        "{logged} lines logged in {secs} s"
    );
    let log = s.log_text();
    assert!(log.contains("lines dropped"), "{log}");
    assert!(log.contains(r"evil\rFORGED slot=7"), "{log}");
    assert!(!log.contains('\r'), "a raw carriage return reached the log");
    eprintln!("output flood: {logged} logged, {dropped} dropped");
}

/// As a container's PID 1 (a PID namespace of its own): orphans an app
/// leaves behind are reaped (no zombie stays), and TERM drains and exits 0.
#[test]
fn as_pid_1_orphans_are_reaped_and_term_exits_0() {
    if !have_venv() {
        return;
    }
    if !have("unshare", "util-linux: a PID namespace of its own") {
        return;
    }
    let rsvisor = rsvisor_bin().display().to_string();
    let mut s = ServerBuilder::new("unshare")
        .config(&format!(
            r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[app]
command = ["{python}", "{app}"]
ready = "notify"
env = {{ NOTIFY_APP_ORPHANS = "5" }}
"#,
            python = python().display(),
            app = repo().join("tests/apps/notify_app.py").display()
        ))
        .raw_args(&["--pid", "--fork", "--mount-proc", &rsvisor, "serve"])
        .start();
    let tcp = s.ready_tcp();
    let st = s.status().expect("status");
    assert_eq!(st.master_pid, 1, "the master is PID 1 of its namespace");
    // unshare's child is the master.
    let master = *children_of(s.pid()).first().expect("the master");
    // Both workers printed their orphans; 0.2 s later those exited.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.log_text().matches("orphans ").count() < 2 {
        assert!(Instant::now() < deadline, "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let zombies = || {
        let mut z = Vec::new();
        for pid in std::iter::once(master).chain(descendants(master)) {
            for child in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(c) = child.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if stat_ppid(c) == Some((pid, 'Z')) {
                    z.push(c);
                }
            }
        }
        z
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let z = zombies();
        if z.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "zombies {z:?} never reaped");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    kill(master, Signal::SIGTERM);
    let st = s.expect_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", s.log_text());
}

/// `rsvisor serve --bind … --workers 2 -- uvicorn app:app`: no config
/// file; uvicorn gets `--fd 3` and its readiness rule; a HUP replaces both
/// workers; `--print-config` prints what would run.
#[test]
fn a_one_line_start_serves_uvicorn() {
    if !have_venv() {
        return;
    }
    let uv = uvicorn().display().to_string();
    let b = ServerBuilder::new(rsvisor_bin()).one_line(&[
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--",
        &uv,
        "--no-access-log",
        "asgi_app:app",
    ]);
    std::fs::copy(
        repo().join("bench/apps/asgi_hello.py"),
        b.dir().join("asgi_app.py"),
    )
    .unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let r = get(&tcp, "/").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    let before = s.wait_settled(Duration::from_secs(20));
    assert_eq!(before.workers.len(), 2);
    hup_replaces_every_worker(&mut s, &before);
    assert_eq!(get(&tcp, "/").unwrap().status, 200);

    let (code, out, err) = run(
        &rsvisor_bin(),
        &["serve", "--print-config", "--", "uvicorn", "app:app"],
        s.dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#"command = ["uvicorn", "app:app", "--fd", "3"]"#),
        "{out}"
    );
    assert!(
        out.contains(r#"ready = "log:Application startup complete""#),
        "{out}"
    );
    let (code, _, err) = run(&rsvisor_bin(), &["serve"], s.dir.path(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("after `--`"), "{err}");
}

/// gunicorn adopts the socket through LISTEN_FDS by itself: two rsvisor
/// workers, each a gunicorn with one worker of its own, serve; a HUP
/// replaces both; TERM stops them and rsvisor exits 0.
#[test]
fn gunicorn_serves_through_listen_fds_and_reloads() {
    gunicorn_serves_and_reloads(&[]);
}

/// The same with `--bind fd://3`: rsvisor then sets no LISTEN_FDS, so
/// gunicorn takes the socket once (it took it twice and failed with "Bad
/// file descriptor" in every worker).
#[test]
fn gunicorn_bound_to_fd_3_serves_and_reloads() {
    gunicorn_serves_and_reloads(&["--bind", "fd://3"]);
}

fn gunicorn_serves_and_reloads(bind: &[&str]) {
    if !have_venv() {
        return;
    }
    let gunicorn = venv_bin("gunicorn");
    let b = ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[lifecycle]
graceful_timeout = 10
[app]
command = ["{gunicorn}", "--workers", "1", {bind}"wsgi_app:app"]
cwd = "{{dir}}"
ready = "log:Booting worker"
"#,
        gunicorn = gunicorn.display(),
        bind = bind.iter().map(|a| format!("{a:?}, ")).collect::<String>()
    ));
    std::fs::write(
        b.dir().join("wsgi_app.py"),
        "import os\n\ndef app(environ, start_response):\n    body = str(os.getpid()).encode()\n    \
         start_response('200 OK', [('Content-Length', str(len(body)))])\n    return [body]\n",
    )
    .unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    for _ in 0..20 {
        let r = get(&tcp, "/").expect("an answer");
        assert_eq!(r.status, 200, "{}", s.log_text());
    }
    let before = s.wait_settled(Duration::from_secs(30));
    hup_replaces_every_worker(&mut s, &before);
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    assert!(
        !s.log_text().contains("Bad file descriptor"),
        "{}",
        s.log_text()
    );
    s.signal(Signal::SIGTERM);
    let st = s.expect_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{}", s.log_text());
}

/// Waits until `GET /` answers `want`; returns how long that took.
fn wait_body(tcp: &Target, want: &str, s: &Server) -> Duration {
    let t0 = Instant::now();
    loop {
        if get(tcp, "/").is_ok_and(|r| r.status == 200 && r.text() == want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never answered {want:?}:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn asgi_saying(word: &str) -> String {
    format!(
        "async def app(scope, receive, send):\n\
         \x20   if scope['type'] != 'http':\n\
         \x20       return\n\
         \x20   await send({{'type': 'http.response.start', 'status': 200, 'headers': []}})\n\
         \x20   await send({{'type': 'http.response.body', 'body': b'{word}'}})\n"
    )
}

/// `serve --reload -- uvicorn main:app`: an edited module is served; an
/// edit that cannot import leaves the previous code answering (the reload
/// is abandoned, the SyntaxError is in the log); the fix is served again.
#[test]
fn reload_serves_edits_and_keeps_serving_through_a_broken_one() {
    if !have_venv() {
        return;
    }
    let uv = uvicorn().display().to_string();
    let b = ServerBuilder::new(rsvisor_bin()).one_line(&[
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--reload",
        "--",
        &uv,
        "--no-access-log",
        "main:app",
    ]);
    let module = b.dir().join("main.py");
    std::fs::write(&module, asgi_saying("v1")).unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    wait_body(&tcp, "v1", &s);
    s.wait_settled(Duration::from_secs(20));

    std::fs::write(&module, asgi_saying("v2")).unwrap();
    let took = wait_body(&tcp, "v2", &s);
    eprintln!("--reload: an edit served after {took:?}");
    assert!(took <= Duration::from_secs(3), "an edit took {took:?}");
    let st = s.wait_settled(Duration::from_secs(20));
    assert!(st.generation >= 2, "{st:?}");

    std::fs::write(&module, format!("{}syntax error(\n", asgi_saying("v3"))).unwrap();
    let st = s.wait_status(
        "the broken edit's reload to be abandoned",
        Duration::from_secs(30),
        |st| {
            st.last_reload
                .as_ref()
                .is_some_and(|r| r.result == ReloadResult::Abandoned)
        },
    );
    // The traceback is one ERROR event: the exception as its message, the
    // frames in its `traceback` field; no frame is an event of its own.
    let log = s.log_text();
    let event = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("SyntaxError"))
        .unwrap_or_else(|| panic!("no ERROR event with the SyntaxError:\n{log}"));
    assert!(
        event.contains("traceback=Traceback (most recent call last):"),
        "{event}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("File \"")),
        "{log}"
    );
    for _ in 0..10 {
        assert_eq!(get(&tcp, "/").unwrap().text(), "v2", "{st:?}");
    }

    std::fs::write(&module, asgi_saying("v4")).unwrap();
    wait_body(&tcp, "v4", &s);
}

/// `serve CONFIG --reload` with the built-in app: an edited static file
/// and an edited config file each make a new generation, and the edit is
/// what is served; rsvisor's own files in the directory (control socket)
/// do not.
#[test]
fn reload_follows_the_static_directory_and_the_config_file() {
    if !have_venv() {
        return;
    }
    let b = ServerBuilder::new(rsvisor_bin())
        .config(
            "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n\
             [app]\nstatic_dir = \"{dir}/www\"\n",
        )
        .args(&["--reload"]);
    std::fs::create_dir(b.dir().join("www")).unwrap();
    let page = b.dir().join("www/index.html");
    std::fs::write(&page, "one").unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    wait_body(&tcp, "one", &s);
    let st = s.wait_settled(Duration::from_secs(20));
    assert_eq!(st.generation, 1);

    std::fs::write(&page, "two").unwrap();
    let st = s.wait_status(
        "a reload for the static file",
        Duration::from_secs(30),
        |st| st.generation == 2 && settled(st),
    );
    assert_eq!(get(&tcp, "/").unwrap().text(), "two", "{st:?}");

    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("workers = 1", "workers = 2")).unwrap();
    let st = s.wait_status(
        "a reload for the config file",
        Duration::from_secs(30),
        |st| st.generation == 3 && st.workers.len() == 2 && settled(st),
    );
    // Nothing else changed: no further generation.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.status().unwrap().generation, st.generation);
}

/// `rsvisor reload` returns only when no process of the previous
/// generation accepts any more: the next 30 requests all reach the new
/// one (uvicorn accepts on for a moment after its stop signal).
#[test]
fn after_rsvisor_reload_returns_no_request_reaches_the_old_generation() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_server(2, "", "").start();
    let tcp = s.ready_tcp();
    for round in 0..3 {
        let before = s.wait_settled(Duration::from_secs(30));
        let old: BTreeSet<i32> = before.workers.iter().map(|w| w.pid as i32).collect();
        let cfg = s.config.display().to_string();
        let (code, out, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
        assert_eq!(code, 0, "{out}{err}");
        for i in 0..30 {
            let pid: i32 = get(&tcp, "/pid").unwrap().text().parse().unwrap();
            assert!(
                !old.contains(&pid),
                "round {round}: request {i} after the reload reached old worker {pid}"
            );
        }
    }
    // The old processes stopped as asked: none is reported as killed.
    let st = s.wait_status("six old workers gone", Duration::from_secs(30), |st| {
        st.recent_exits.len() >= 6
    });
    for e in &st.recent_exits {
        assert!(
            e.status == "exit code 0 (normal exit)"
                || e.status.starts_with("stopped by its stop signal"),
            "{e:?}"
        );
    }
}
