//! Linux and systemd integration: sd_notify, watchdog, socket activation,
//! USR2 binary upgrade, privilege drop, and the deploy/ files.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// A test-owned NOTIFY_SOCKET.
pub(crate) struct NotifySocket {
    sock: UnixDatagram,
    pub(crate) path: PathBuf,
}

impl NotifySocket {
    pub(crate) fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket { sock, path }
    }

    /// Next message that contains `needle`; messages before it are
    /// returned too (for order checks).
    pub(crate) fn until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.contains(needle);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from the master; got {seen:?}"
            );
        }
    }

    /// All messages for `d`.
    fn collect(&self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        seen
    }
}

fn states(msgs: &[String]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for m in msgs {
        for (key, name) in [
            ("READY=1", "READY"),
            ("RELOADING=1", "RELOADING"),
            ("STOPPING=1", "STOPPING"),
        ] {
            if m.lines().any(|l| l == key) {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn notify_sequence_ready_reloading_ready_stopping() {
    let b = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n");
    let notify = NotifySocket::new(b.dir());
    let mut s = b
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .start();
    let msgs = notify.until("READY=1", START_TIMEOUT);
    // READY only once workers answer: a request right now succeeds.
    let tcp = s.tcp_addr();
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    assert_eq!(states(&msgs), ["READY"]);
    let ready = msgs.last().unwrap();
    assert!(
        ready.contains("STATUS=2/2 workers ready, generation 1"),
        "{ready}"
    );

    s.signal(Signal::SIGHUP);
    let msgs = notify.until("READY=1", Duration::from_secs(15));
    assert_eq!(states(&msgs), ["RELOADING", "READY"], "{msgs:?}");
    let reloading = msgs.iter().find(|m| m.contains("RELOADING=1")).unwrap();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert!(msgs.last().unwrap().contains("generation 2"), "{msgs:?}");

    s.signal(Signal::SIGTERM);
    let msgs = notify.until("STOPPING=1", Duration::from_secs(10));
    assert_eq!(states(&msgs), ["STOPPING"]);
    assert_eq!(s.expect_exit(Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn notify_to_an_abstract_socket() {
    let name = format!("rsvisor-test-{}", std::process::id());
    let sock = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        UnixDatagram::bind_addr(&addr).unwrap()
    };
    sock.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    let _s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n")
        .env("NOTIFY_SOCKET", &format!("@{name}"))
        .start();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let n = sock.recv(&mut buf).expect("a notification");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[test]
fn watchdog_pings_only_while_a_worker_is_healthy() {
    let b = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n");
    let notify = NotifySocket::new(b.dir());
    let mut s = b
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start();
    notify.until("READY=1", START_TIMEOUT);
    let pings = |msgs: &[String]| msgs.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    let n = pings(&notify.collect(Duration::from_secs(1)));
    assert!(
        (3..=7).contains(&n),
        "{n} pings in 1 s at a 200 ms interval"
    );

    // A stopped worker stops beating: no healthy worker, no pings.
    let worker = s.wait_workers("one worker", START_TIMEOUT, |w| w.len() == 1)[0];
    kill(worker, Signal::SIGSTOP);
    // Heartbeats go stale after 2 s; read (and drop) what came until then.
    notify.collect(Duration::from_millis(2500));
    let quiet = pings(&notify.collect(Duration::from_secs(1)));
    kill(worker, Signal::SIGCONT);
    assert_eq!(quiet, 0, "watchdog pinged while no worker was healthy");
    let again = pings(&notify.collect(Duration::from_secs(1)));
    assert!(again >= 2, "pings did not resume: {again}");
    drop(s);
}

fn socket_inode(pid: i32, fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|p| p.display().to_string())
        .filter(|l| l.starts_with("socket:"))
}

fn fds_of(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn socket_activation_tcp_and_unix() {
    if !have(
        "systemd-socket-activate",
        "Debian package systemd: socket activation",
    ) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = ServerBuilder::new("systemd-socket-activate").config(&format!(
        "[server]\nbind = [\"127.0.0.1:{port}\", \"unix:{{dir}}/act.sock\"]\nworkers = 2\n"
    ));
    let sock = b.dir().join("act.sock");
    let demo = example("demo");
    let mut s = b
        .raw_args(&[
            "-l",
            &format!("127.0.0.1:{port}"),
            "-l",
            sock.to_str().unwrap(),
            "--",
            demo.to_str().unwrap(),
            "serve",
        ])
        .start();
    let tcp = Target::Tcp(format!("127.0.0.1:{port}"));
    s.wait_ready(&tcp);
    let unix = Target::Unix(sock.clone());
    assert_eq!(get(&unix, "/").unwrap().status, 200);
    let log = s.log_text();
    assert_eq!(
        log.matches("using an inherited listening socket").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("not in server.bind"), "{log}");
    // The master (systemd-socket-activate exec'd into it) listens on the
    // inherited descriptors 3 and 4; the workers hold the same sockets.
    let master = s.pid();
    let inherited = [
        socket_inode(master, 3).unwrap(),
        socket_inode(master, 4).unwrap(),
    ];
    for w in s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2) {
        let fds = fds_of(w);
        for i in &inherited {
            assert!(fds.contains(i), "worker {w} does not hold {i}: {fds:?}");
        }
    }
    // `check` under activation reports what it would inherit
    // (systemd-socket-activate execs on the first connection).
    let port2 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let check = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port2}"), "--"])
        .arg(rsvisor_bin())
        .args(["check", s.config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port2)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = check.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("socket activation: 1 inherited socket"),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port2}")), "{text}");
}

/// Runs a copy of the demo binary from the test's directory, so that the
/// test can replace it before USR2.
fn copied_demo(dir: &Path) -> PathBuf {
    let path = dir.join("demo-bin");
    std::fs::copy(example("demo"), &path).unwrap();
    path
}

fn pidfile_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("app.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn usr2_upgrade_under_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let bin = copied_demo(dir.path());
    let b = ServerBuilder::new(&bin).config(
        r#"
[server]
bind = ["127.0.0.1:0", "unix:{dir}/app.sock"]
workers = 2
pidfile = "{dir}/app.pid"
control_socket = "{dir}/ctl.sock"
"#,
    );
    let d = b.dir().to_path_buf();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let old = s.pid();
    let old_workers = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    // A newly installed binary at the same path.
    std::fs::remove_file(&bin).unwrap();
    copied_demo(dir.path());
    let load = Load::start(&tcp, 8, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    s.signal(Signal::SIGUSR2);
    // The old master hands over and exits 0.
    let st = s.expect_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", s.log_text());
    std::thread::sleep(Duration::from_secs(2));
    let stats = load.finish();
    stats.assert_all_ok(1);
    assert!(stats.ok > 500);
    let new = pidfile_pid(&d).expect("the new master wrote the pidfile");
    assert_ne!(new, old);
    assert!(alive(new));
    let new_workers = children_of(new);
    assert_eq!(new_workers.len(), 2);
    assert!(new_workers.iter().all(|w| !old_workers.contains(w)));
    // The new master serves on the same sockets, control socket included.
    let pid: i32 = get(&tcp, "/pid").unwrap().text().parse().unwrap();
    assert!(new_workers.contains(&pid));
    assert_eq!(
        get(&Target::Unix(d.join("app.sock")), "/").unwrap().status,
        200
    );
    let cfg = s.config.display().to_string();
    let (code, out, err) = run(&rsvisor_bin(), &["status", &cfg, "--json"], &d, &[]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["master_pid"].as_i64().unwrap() as i32, new);
    // Stop the new master (not our child): TERM, and it removes its files.
    kill(new, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(new) {
        assert!(Instant::now() < deadline, "new master did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!d.join("app.sock").exists());
    assert!(!d.join("app.pid").exists());
}

/// `serve --reload` in a program that is its own app: rebuilding the
/// executable re-executes it (a USR2 binary upgrade): the old master hands
/// over and exits 0, the new one serves on the same sockets.
#[test]
fn reload_re_executes_a_rebuilt_program() {
    let dir = tempfile::tempdir().unwrap();
    let bin = copied_demo(dir.path());
    let mut s = ServerBuilder::new(&bin)
        .config("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n")
        .args(&["--reload"])
        .start();
    let tcp = s.ready_tcp();
    s.wait_settled(Duration::from_secs(20));
    let old = s.pid();
    // What a rebuild does: a new file at the same path.
    std::fs::remove_file(&bin).unwrap();
    copied_demo(dir.path());
    let st = s.expect_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{}", s.log_text());
    assert!(s.log_text().contains("sending SIGUSR2"), "{}", s.log_text());
    let new = s.status().expect("the new master answers").master_pid as i32;
    assert_ne!(new, old);
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
    kill(new, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(new) {
        assert!(Instant::now() < deadline, "the new master did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_new_binary_that_fails_leaves_the_old_master_serving() {
    let dir = tempfile::tempdir().unwrap();
    let bin = copied_demo(dir.path());
    let b = ServerBuilder::new(&bin).config(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
pidfile = "{dir}/app.pid"
[lifecycle]
timeout = 3
"#,
    );
    let d = b.dir().to_path_buf();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let workers = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    let master = s.pid();
    let load = Load::start(&tcp, 4, Duration::from_secs(30));

    // 1. A binary that exits at once.
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.signal(Signal::SIGUSR2);
    let st = s.wait_status("the first upgrade to fail", Duration::from_secs(10), |st| {
        st.last_upgrade.as_ref().is_some_and(|u| !u.ok)
    });
    let first = st.last_upgrade.expect("an upgrade result");
    // It exited (or closed its pipe, whichever the master saw first).
    assert!(
        !first.message.contains("not ready within"),
        "{}",
        first.message
    );

    // 2. A binary that never becomes ready: killed after lifecycle.timeout.
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\nexec /bin/sleep 60\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.signal(Signal::SIGUSR2);
    // A second USR2 while it is under way is refused, and said so.
    s.wait_status("the upgrade under way", Duration::from_secs(5), |st| {
        st.phase == Phase::Upgrading
    });
    s.signal(Signal::SIGUSR2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.log_text().contains("USR2 ignored") {
        assert!(
            Instant::now() < deadline,
            "no word of the second USR2:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = s.wait_status(
        "the second upgrade to fail",
        Duration::from_secs(15),
        |st| {
            st.last_upgrade
                .as_ref()
                .is_some_and(|u| u.new_master_pid != first.new_master_pid && !u.ok)
        },
    );
    let second = st.last_upgrade.expect("an upgrade result");
    assert!(
        second
            .message
            .contains("not ready within lifecycle.timeout"),
        "{}",
        second.message
    );
    assert_eq!(st.phase, Phase::Running);

    let stats = load.finish();
    stats.assert_all_ok(1);
    assert!(s.try_wait().is_none(), "the old master must keep running");
    assert_eq!(s.workers(), workers);
    assert_eq!(pidfile_pid(&d), Some(master));
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
}

#[test]
fn workers_run_as_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: privilege drop cannot be tested; run the suite as root (CI does)");
        return;
    }
    let b = demo(
        r#"
[server]
bind = ["unix:{dir}/app.sock", "127.0.0.1:0"]
workers = 2
user = "nobody"
socket_mode = "0660"
"#,
    );
    let sock = b.dir().join("app.sock");
    let mut s = b.start();
    s.ready_tcp();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    for w in s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2) {
        let status = std::fs::read_to_string(format!("/proc/{w}/status")).unwrap();
        let ids = |key: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect()
        };
        let uid = nobody.uid.as_raw();
        let gid = nobody.gid.as_raw();
        assert_eq!(ids("Uid:"), [uid, uid, uid, uid], "{status}");
        assert_eq!(ids("Gid:"), [gid, gid, gid, gid], "{status}");
    }
    // The master stays root to manage workers and rebind on reload.
    let master = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    assert!(master.lines().any(|l| l.starts_with("Uid:\t0")), "{master}");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), nobody.uid.as_raw());
    assert_eq!(get(&Target::Unix(sock), "/").unwrap().status, 200);
}

#[test]
fn deploy_units_and_nginx_site_verify() {
    if !have("systemd-analyze", "verifies the units") || !have("nginx", "checks the site") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dir = tempfile::tempdir().unwrap();
    let bin = rsvisor_bin().display().to_string();
    for unit in [
        "rsvisor.service",
        "rsvisor-notify-reload.service",
        "rsvisor.socket",
        "rsvisor-uvicorn.service",
    ] {
        let text = std::fs::read_to_string(root.join("systemd").join(unit))
            .unwrap()
            .replace("/usr/local/bin/rsvisor", &bin);
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    // --man=no: installed by hand, the manual page may be absent (the
    // package test checks the packaged unit's `man:` link).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args([
            "rsvisor.service",
            "rsvisor-notify-reload.service",
            "rsvisor.socket",
            "rsvisor-uvicorn.service",
        ])
        .current_dir(dir.path())
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("systemd-analyze (Debian package systemd) is installed");
    let msgs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only complaints about our units count (the host's own units may be
    // odd inside a container).
    // Type=notify-reload and ReloadSignal= need systemd 253; older
    // versions (Debian 12 has 252) do not know them, nothing else may fail.
    let version: u32 = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let ours: Vec<&str> = msgs
        .lines()
        .filter(|l| l.contains("rsvisor"))
        .filter(|l| version >= 253 || !(l.contains("notify-reload") || l.contains("ReloadSignal")))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{msgs}");

    // nginx -t on the site inside a minimal main config.
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  \
             access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d};\n  \
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
             include {site};\n}}\n",
            d = dir.path().display(),
            site = root.join("nginx/rsvisor.conf").display()
        ),
    )
    .unwrap();
    let out = Command::new("nginx")
        .args(["-t", "-q", "-c"])
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .output()
        .expect("nginx is installed");
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The example production config is valid (user www-data exists on
    // Debian); its static_dir is a temporary one the worker user can read.
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    for d in [dir.path(), www.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (code, _, err) = run(
        &rsvisor_bin(),
        &["check", root.join("app.toml").to_str().unwrap()],
        dir.path(),
        &[("RSVISOR_APP_STATIC_DIR", www.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{err}");
}

/// The shipped files name the same sockets: the socket unit listens where
/// app.toml binds, nginx proxies there, and the deployment guide's install steps
/// create the static directory app.toml serves.
#[test]
fn deploy_files_agree_with_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app = std::fs::read_to_string(root.join("deploy/app.toml")).unwrap();
    let cfg = rsvisor::Config::from_toml(&app).unwrap();
    let mut binds: Vec<String> = cfg
        .server
        .bind
        .iter()
        .map(|b| b.to_string().trim_start_matches("unix:").to_string())
        .collect();
    binds.sort();
    let socket = std::fs::read_to_string(root.join("deploy/systemd/rsvisor.socket")).unwrap();
    let mut listens: Vec<String> = socket
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .map(str::to_string)
        .collect();
    listens.sort();
    assert_eq!(
        listens, binds,
        "rsvisor.socket vs deploy/app.toml server.bind"
    );
    let nginx = std::fs::read_to_string(root.join("deploy/nginx/rsvisor.conf")).unwrap();
    let mut upstreams: Vec<String> = nginx
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|a| *a != "{")
        .map(|a| {
            a.trim_end_matches(';')
                .trim_start_matches("unix:")
                .to_string()
        })
        .collect();
    upstreams.sort();
    assert_eq!(
        upstreams, binds,
        "nginx upstreams vs deploy/app.toml server.bind"
    );
    let guide = std::fs::read_to_string(root.join("docs/deployment.md")).unwrap();
    let www = cfg
        .app
        .static_dir
        .expect("deploy/app.toml serves a directory");
    let creates = guide
        .lines()
        .any(|l| l.starts_with("install -d") && l.contains(&www.display().to_string()));
    assert!(
        creates,
        "docs/deployment.md's install steps do not create {}",
        www.display()
    );
}
