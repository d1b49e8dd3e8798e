//! The operator's kit: `rsvisor top` (plain and in a real terminal under
//! tmux), the Grafana dashboard and the Prometheus alert rules, checked
//! against what `/metrics` really exports and with promtool.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn top_once(s: &Server) -> (i32, String, String) {
    let cfg = s.config.display().to_string();
    run(
        &rsvisor_bin(),
        &["top", &cfg, "--once", "--interval", "0.2"],
        s.dir.path(),
        &[("COLUMNS", "160")],
    )
}

#[test]
fn top_once_lists_every_worker_and_follows_a_reload() {
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n").start();
    s.ready_tcp();
    let st = s.wait_settled(Duration::from_secs(10));
    let (code, out, err) = top_once(&s);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("generation 1"), "{out}");
    assert!(out.contains("req/s"), "{out}");
    for w in &st.workers {
        assert!(
            out.contains(&format!(" {} ", w.pid)),
            "pid {} missing:\n{out}",
            w.pid
        );
    }
    s.signal(Signal::SIGHUP);
    let st = s.wait_status("the new generation", Duration::from_secs(15), |st| {
        st.generation == 2 && settled(st)
    });
    let (code, out, _) = top_once(&s);
    assert_eq!(code, 0);
    assert!(out.contains("generation 2"), "{out}");
    for w in &st.workers {
        assert!(
            out.contains(&format!(" {} ", w.pid)),
            "pid {} missing:\n{out}",
            w.pid
        );
    }
    assert!(
        out.contains("reload success"),
        "the reload is an event:\n{out}"
    );
    // A master that is gone: one frame saying so, exit 1.
    s.signal(Signal::SIGTERM);
    s.expect_exit(Duration::from_secs(15));
    let (code, out, _) = top_once(&s);
    assert_eq!(code, 1);
    assert!(out.contains("disconnected"), "{out}");
}

/// A tmux server of this test's own, killed (with what runs in it) on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str, dir: &Path) -> Tmux {
        let socket = format!("rsvisor-test-{}", std::process::id());
        let t = Tmux { socket };
        let out = t
            .cmd()
            .args(["new-session", "-d", "-s", "top", "-x", "150", "-y", "40"])
            .arg(command)
            .current_dir(dir)
            .output()
            .expect("tmux is installed (scripts/deps)");
        assert!(out.status.success(), "{out:?}");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn query(&self, format: &str) -> String {
        let out = self
            .cmd()
            .args(["display-message", "-p", "-t", "top", format])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn keys(&self, keys: &str) {
        self.cmd()
            .args(["send-keys", "-t", "top", keys])
            .status()
            .unwrap();
    }

    fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The fleet rate on the screen's traffic line (`1234 req/s`).
fn fleet_rate(screen: &str) -> Option<u64> {
    screen
        .lines()
        .find_map(|l| l.split_once(" req/s").map(|(n, _)| n.trim().parse().ok()))
        .flatten()
}

#[test]
fn top_in_a_terminal_updates_under_load_and_quits_on_q() {
    if !have("tmux", "runs `top` in a terminal") {
        return;
    }
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n").start();
    let tcp = s.ready_tcp();
    let st = s.wait_settled(Duration::from_secs(10));
    let command = format!(
        "'{}' top '{}' --interval 0.3; echo TOP-EXITED $?; sleep 60",
        rsvisor_bin().display(),
        s.config.display()
    );
    let tmux = Tmux::start(&command, s.dir.path());
    let screen = tmux.wait_screen("the header and a row per worker", |sc| {
        sc.contains("SLOT") && st.workers.iter().all(|w| sc.contains(&w.pid.to_string()))
    });
    assert!(
        screen.contains(&format!("master {}", st.master_pid)),
        "{screen}"
    );
    assert_eq!(
        tmux.query("#{alternate_on}"),
        "1",
        "top draws on the alternate screen"
    );
    let load = Load::start(&tcp, 2, Duration::from_secs(30));
    tmux.wait_screen("requests/s under load", |sc| {
        fleet_rate(sc).is_some_and(|r| r > 0)
    });
    drop(load.finish());
    tmux.keys("q");
    let screen = tmux.wait_screen("top to exit", |sc| sc.contains("TOP-EXITED"));
    assert!(screen.contains("TOP-EXITED 0"), "{screen}");
    assert_eq!(
        tmux.query("#{alternate_on}"),
        "0",
        "the terminal is restored"
    );
}

/// Every `rsvisor_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("rsvisor_") {
        let start = i + at;
        let mut end = start + "rsvisor_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let before = start.checked_sub(1).map(|b| bytes[b]);
        // Not the tail of a longer word (`my_rsvisor_x`).
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            names.insert(text[start..end].trim_end_matches('_').to_string());
        }
        i = end;
    }
    names
}

#[test]
fn the_dashboard_and_the_rules_use_only_exported_metrics() {
    let mut s = demo(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n[lifecycle]\nmax_worker_memory = \"1GiB\"\n",
    )
    .start();
    let tcp = s.ready_tcp();
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    let scrape = get(&tcp, "/metrics").unwrap().text();
    let exported = metric_names(&scrape);
    assert!(
        exported.contains("rsvisor_worker_memory_limit_bytes"),
        "{scrape}"
    );
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/rsvisor.json")).unwrap();
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/rsvisor-alerts.yml")).unwrap();
    let rule_tests =
        std::fs::read_to_string(repo().join("deploy/prometheus/rsvisor-alerts.test.yml")).unwrap();
    for (file, text) in [
        ("rsvisor.json", &dashboard),
        ("rsvisor-alerts.yml", &rules),
        ("rsvisor-alerts.test.yml", &rule_tests),
    ] {
        let used = metric_names(text);
        assert!(used.len() >= 5, "{file}: {used:?}");
        let missing: Vec<&String> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses {missing:?}, not in /metrics"
        );
    }
    // The dashboard imports anywhere: a data source variable, job and
    // instance variables, and every panel queries through them.
    let d: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    for p in d["panels"].as_array().unwrap() {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("job=~\"$job\", instance=~\"$instance\""),
                "{expr}"
            );
        }
    }
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !have("promtool", "Debian package prometheus checks the rules") {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "rsvisor-alerts.yml"],
        vec!["test", "rules", "rsvisor-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus) is installed");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
