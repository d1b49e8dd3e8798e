//! Observability: fleet-wide /metrics that never go backwards, the control
//! socket (`rsvisor status`, `rsvisor reload`), memory-based recycling.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// The value of an unlabelled sample, or of one labelled sample.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{text}"))
}

fn promtool_check(text: &str) {
    if !have("promtool", "checks the exposition format") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msgs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && msgs.trim().is_empty(),
        "promtool: {msgs}"
    );
}

#[test]
fn request_counter_is_exact_across_recycling() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[lifecycle]
max_requests = 20
max_requests_jitter = 5
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let before = get(&tcp, "/metrics").unwrap().text();
    let base = sample(&before, "rsvisor_http_requests_total");
    const N: usize = 400;
    let mut ka = KeepAlive::open(&tcp).unwrap();
    for i in 0..N {
        // Alternate new connections and a kept-alive one.
        let r = if i % 2 == 0 {
            get(&tcp, "/").unwrap()
        } else {
            let r = ka.get("/").unwrap();
            if r.header("connection") == Some("close") {
                ka = KeepAlive::open(&tcp).unwrap();
            }
            r
        };
        assert_eq!(r.status, 200, "request {i}");
    }
    // Let some recycled workers exit and be folded into the totals.
    s.wait_status("recycled workers reaped", Duration::from_secs(10), |st| {
        st.totals.exits_by_reason[&ExitReason::MaxRequests] >= 1
    });
    let text = get(&tcp, "/metrics").unwrap().text();
    let total = sample(&text, "rsvisor_http_requests_total");
    // N requests plus the first scrape.
    assert_eq!(total, base + N as f64 + 1.0, "{text}");
    assert_eq!(
        sample(&text, "rsvisor_http_request_duration_seconds_count"),
        total
    );
    let by_class: f64 = (1..=5)
        .map(|c| {
            sample(
                &text,
                &format!("rsvisor_http_responses_total{{code=\"{c}xx\"}}"),
            )
        })
        .sum();
    assert_eq!(by_class, total);
    assert!(sample(&text, "rsvisor_worker_exits_total{reason=\"max_requests\"}") >= 10.0);
    assert!(text.contains("worker=\""), "{text}");
    assert!(!text.contains("pid="), "no pid labels: {text}");
    promtool_check(&text);
}

#[test]
fn metrics_on_their_own_address() {
    let b = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[metrics]
bind = "unix:{dir}/metrics.sock"
"#,
    );
    let sock = b.dir().join("metrics.sock");
    let mut s = b.start();
    let tcp = s.ready_tcp();
    // Not on the public port: the app answers (404 from demo).
    assert_eq!(get(&tcp, "/metrics").unwrap().status, 404);
    let m = Target::Unix(sock);
    let r = get(&m, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("rsvisor_http_requests_total"));
    // Nothing else is served there.
    assert_eq!(get(&m, "/").unwrap().status, 404);
    assert_eq!(get(&m, "/health").unwrap().status, 404);
}

fn control_config() -> &'static str {
    r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
control_socket = "{dir}/ctl.sock"
"#
}

#[test]
fn status_lists_live_workers_and_reload_reports_the_result() {
    let mut s = demo(control_config()).start();
    let tcp = s.ready_tcp();
    let cfg = s.config.display().to_string();
    let (code, out, err) = run(
        &rsvisor_bin(),
        &["status", &cfg, "--json"],
        s.dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let workers = v["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{out}");
    for w in workers {
        let pid = w["pid"].as_i64().unwrap() as i32;
        assert!(alive(pid), "{pid} does not exist");
        assert_eq!(w["state"], "ready");
        assert!(w["seconds_since_heartbeat"].as_f64().unwrap() < 5.0);
    }
    assert_eq!(v["master_pid"].as_i64().unwrap() as i32, s.pid());

    let (code, table, _) = run(&rsvisor_bin(), &["status", &cfg], s.dir.path(), &[]);
    assert_eq!(code, 0);
    assert!(table.contains("workers 2/2 ready"), "{table}");
    assert!(table.contains("HEARTBEAT"), "{table}");

    // A good reload: exit 0 once the new generation serves.
    let before = s.workers();
    let (code, out, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("generation 2 serving"), "{out}");
    let now = s.workers();
    assert!(
        now.iter().all(|p| !before.contains(p)) || now.len() > 2,
        "{before:?} {now:?}"
    );

    // A reload whose workers cannot start: non-zero, old ones keep serving.
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{good}\n[app]\nenv = {{ DEMO_FAIL_STARTUP = \"1\" }}\n"),
    )
    .unwrap();
    let serving = s.wait_settled(Duration::from_secs(10));
    let (code, _, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("abandoned"), "{err}");
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    let pids = |st: &Status| st.workers.iter().map(|w| w.pid).collect::<Vec<_>>();
    assert_eq!(
        pids(&s.wait_settled(Duration::from_secs(10))),
        pids(&serving)
    );

    // An invalid config: refused at once, also non-zero.
    std::fs::write(&s.config, format!("{good}\nbogus = 1\n")).unwrap();
    let (code, _, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
    assert_eq!(code, 5, "{err}");
    let line = good.lines().count() + 2;
    assert!(
        err.contains(&format!("app.toml:{line}:1: server.bogus: unknown key")),
        "{err}"
    );
    assert!(err.contains("nothing was reloaded"), "{err}");
    s.signal(Signal::SIGHUP);
    let st = s.wait_reloads(3, Duration::from_secs(10));
    assert_eq!(
        st.last_reload.map(|r| r.result),
        Some(ReloadResult::InvalidConfig)
    );

    std::fs::write(&s.config, &good).unwrap();
    let metrics = get(&tcp, "/metrics").unwrap().text();
    assert_eq!(
        sample(&metrics, "rsvisor_reloads_total{result=\"success\"}"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "rsvisor_reloads_total{result=\"abandoned\"}"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "rsvisor_reloads_total{result=\"invalid_config\"}"),
        1.0
    );

    // scale and stop through the socket: the same effects as TTIN/TTOU/TERM.
    let ctl = s.dir.path().join("ctl.sock");
    let ask = |line: &str| -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&ctl).unwrap();
        c.write_all(line.as_bytes()).unwrap();
        let mut resp = String::new();
        std::io::BufReader::new(c).read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap()
    };
    assert_eq!(ask("scale 3\n")["ok"], true);
    s.wait_status("three workers", Duration::from_secs(10), |st| {
        st.desired_workers == 3 && settled(st)
    });
    assert_eq!(ask("scale 0\n")["ok"], false);
    assert_eq!(ask("frobnicate\n")["ok"], false);
    assert_eq!(ask("stop\n")["ok"], true);
    let st = s.expect_exit(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0));
}

#[test]
fn the_control_socket_refuses_other_users() {
    if !have("setpriv", "util-linux: runs status as another user") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: cannot switch to nobody; run the suite as root (CI does)");
        return;
    }
    let b = demo(control_config());
    // Let nobody traverse the directory and read the config.
    std::fs::set_permissions(b.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = b.start();
    s.ready_tcp();
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sock = s.dir.path().join("ctl.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let as_nobody = |s: &Server| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(rsvisor_bin())
            .args(["status", &s.config.display().to_string()])
            .current_dir("/")
            .output()
            .expect("setpriv (util-linux)")
    };
    // Layer 1: the file mode.
    let out = as_nobody(&s);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Permission denied") || err.contains("permission denied"),
        "{err}"
    );
    // Layer 2: the master checks the peer's uid even if the mode is opened.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&s);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert!(s.log_text().contains("refused a client of another user"));
}

#[test]
fn a_worker_over_max_worker_memory_is_replaced_without_failures() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[lifecycle]
max_worker_memory = "48MiB"
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let before = s.worker_pids();
    let load = Load::start(&tcp, 4, Duration::from_secs(30));
    let r = get(&tcp, "/grow?mb=80").unwrap();
    assert_eq!(r.status, 200);
    let t0 = Instant::now();
    s.wait_status(
        "the big worker's replacement",
        Duration::from_secs(15),
        |st| {
            settled(st)
                && st.totals.exits_by_reason[&ExitReason::Memory] == 1
                && st
                    .workers
                    .iter()
                    .filter(|w| before.contains(&(w.pid as i32)))
                    .count()
                    == 1
        },
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();
    stats.assert_all_ok(1);
    let text = get(&tcp, "/metrics").unwrap().text();
    assert_eq!(
        sample(&text, "rsvisor_worker_exits_total{reason=\"memory\"}"),
        1.0,
        "{text}"
    );
}

#[test]
fn silent_control_clients_never_delay_supervision() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n").start();
    s.ready_tcp();
    let opened = Instant::now();
    // Twenty clients that connect and say nothing, and one that sends half
    // a line.
    let mut silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&s.control).unwrap())
        .collect();
    let mut half = UnixStream::connect(&s.control).unwrap();
    std::io::Write::write_all(&mut half, b"sta").unwrap();

    let victim = s.worker_pids()[0];
    kill(victim, Signal::SIGKILL);
    let t0 = Instant::now();
    s.wait_status("the replacement", Duration::from_secs(5), |st| {
        settled(st) && st.workers.iter().all(|w| w.pid as i32 != victim)
    });
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "replacement took {took:?}"
    );
    let cfg = s.config.display().to_string();
    let (code, out, err) = run(&rsvisor_bin(), &["status", &cfg], s.dir.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");

    // Past the cap (32), the longest-silent clients make room: forty
    // silent clients in all, and an operator still gets the status.
    let extra: Vec<UnixStream> = (0..19)
        .map(|_| UnixStream::connect(&s.control).unwrap())
        .collect();
    let (code, out, err) = run(&rsvisor_bin(), &["status", &cfg], s.dir.path(), &[]);
    assert_eq!(code, 0, "with 40 silent clients: {out}{err}");
    assert!(out.contains("workers 2/2 ready"), "{out}");
    // The first ones connected were closed for them, at once.
    let mut closed = 0;
    for c in silent.iter_mut().take(8) {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if matches!(c.read(&mut [0u8; 64]), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 8, "the longest-silent clients were not closed");
    // The newest are still open (and are closed at their idle timeout).
    drop(extra);

    // A client that never completes its request is disconnected after the
    // idle timeout (10 s), not kept forever.
    for c in silent.iter_mut().chain(std::iter::once(&mut half)) {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "silent clients closed after {waited:?}"
    );
    assert!(s.status().is_some());
}
