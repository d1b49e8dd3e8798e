//! What users install: the wheel `pip install .` builds and the Debian
//! package `scripts/package deb` builds, each installed and run the way
//! its users do. A test binary of its own because cargo runs test
//! binaries one after another: the cargo and pip builds these tests start
//! then never compete with the timing-sensitive tests of `it`.

#[allow(dead_code, unused_imports)]
#[path = "it/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use util::{have, Signal};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pip install .` into a fresh virtual environment puts a working
/// `rsvisor` on that environment's PATH (unoptimised build, to keep the
/// suite short; users get the release profile).
#[test]
fn pip_install_puts_rsvisor_on_the_venv_path() {
    if !have("python3", "pip builds the wheel") {
        return;
    }
    let venv = tempfile::tempdir().unwrap();
    run(Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv.path()));
    let started = Instant::now();
    run(Command::new(venv.path().join("bin/pip"))
        .args(["install", "--quiet", "--no-deps", "."])
        .current_dir(root())
        .env("MATURIN_PEP517_ARGS", "--profile dev"));
    eprintln!("pip install . took {:?}", started.elapsed());
    let bin = venv.path().join("bin/rsvisor");
    let version = text(&run(Command::new(&bin).arg("--version")));
    assert!(
        version.starts_with(&format!("rsvisor {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
}

/// Purges the package (and stops what the test started) even on panic.
struct Installed {
    server: Option<Child>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            for pid in util::descendants(c.id() as i32) {
                util::kill(pid, Signal::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("dpkg").args(["--purge", "rsvisor"]).output();
    }
}

/// The command a unit runs for instance `name` (its `KEY=` line, `%i`
/// replaced), as words.
fn unit_command(unit: &str, key: &str, name: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"));
    line.replace("%i", name)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// As the unit runs it: the unit's user, its environment.
fn as_unit_user(words: &[String]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=rsvisor", "--regid=rsvisor", "--init-groups", "--"])
        .args(words)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID");
    cmd
}

fn status_json(config: &str) -> Option<serde_json::Value> {
    let out = Command::new("/usr/bin/rsvisor")
        .args(["status", "--json", config])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `scripts/package deb` builds a package with the binary, the units, the
/// example configuration, the man page and completions; it installs (and
/// creates its user), the unit's command line serves the example as that
/// user, the unit's reload command reloads it, TERM stops it with exit 0,
/// and a purge leaves none of its files.
#[test]
fn the_deb_installs_serves_reloads_and_purges() {
    if !have("dpkg-deb", "builds the package") || !have("systemd-analyze", "checks the units") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("RSVISOR_TEST_ALL").is_none_or(|v| v != "1"),
            "installing a .deb needs root"
        );
        eprintln!("skipped: installing a .deb needs root");
        return;
    }
    run(Command::new(root().join("scripts/package"))
        .arg("deb")
        .current_dir(root())
        .env("PROFILE", "dev"));
    let deb = root().join(format!(
        "target/package/rsvisor_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        text(&run(Command::new("dpkg").arg("--print-architecture"))).trim()
    ));
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    let files = [
        "./usr/bin/rsvisor",
        "./usr/lib/systemd/system/rsvisor@.service",
        "./usr/lib/systemd/system/rsvisor@.socket",
        "./etc/rsvisor/example.toml",
        "./usr/share/man/man1/rsvisor.1.gz",
        "./usr/share/bash-completion/completions/rsvisor",
        "./usr/share/zsh/vendor-completions/_rsvisor",
        "./usr/share/fish/vendor_completions.d/rsvisor.fish",
    ];
    for f in files {
        assert!(
            listing.lines().any(|l| l.ends_with(f)),
            "{f} not in the package:\n{listing}"
        );
    }

    let _ = Command::new("dpkg").args(["--purge", "rsvisor"]).output();
    let mut installed = Installed { server: None };
    run(Command::new("dpkg").arg("-i").arg(&deb));
    run(Command::new("getent").args(["passwd", "rsvisor"]));
    for f in files {
        assert!(Path::new(&f[1..]).exists(), "{f} not installed");
    }
    let man = run(Command::new("gzip").args(["-dc", "/usr/share/man/man1/rsvisor.1.gz"]));
    assert!(text(&man).contains(".TH rsvisor"), "{}", text(&man));

    // The units as systemd reads them (instance "example").
    let dir = tempfile::tempdir().unwrap();
    for unit in ["rsvisor@.service", "rsvisor@.socket"] {
        std::fs::copy(
            Path::new("/usr/lib/systemd/system").join(unit),
            dir.path().join(unit.replace('@', "@example")),
        )
        .unwrap();
    }
    // With man installed, verify also checks that Documentation=man:rsvisor(1)
    // finds the packaged page.
    let man = util::on_path("man");
    let out = Command::new("systemd-analyze")
        .args([
            "verify",
            if man { "--man=yes" } else { "--man=no" },
            "rsvisor@example.service",
            "rsvisor@example.socket",
        ])
        .current_dir(dir.path())
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let msgs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<&str> = msgs.lines().filter(|l| l.contains("rsvisor")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{msgs}");

    // What systemd would do for `systemctl start rsvisor@example`: the
    // RuntimeDirectory, then ExecStart as User= (bound to a free port
    // instead of the example's 8000, which may be taken here).
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/rsvisor@.service").unwrap();
    let runtime = Path::new("/run/rsvisor/example");
    std::fs::create_dir_all(runtime).unwrap();
    run(Command::new("chown").args(["rsvisor:rsvisor", "/run/rsvisor/example"]));
    let start = unit_command(&unit, "ExecStart", "example");
    assert_eq!(
        start,
        ["/usr/bin/rsvisor", "serve", "/etc/rsvisor/example.toml"]
    );
    let log = dir.path().join("stderr.log");
    let server = as_unit_user(&start)
        .env("RSVISOR_SERVER_BIND", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let master = server.id() as i32;
    installed.server = Some(server);
    let config = "/etc/rsvisor/example.toml";
    let ready = |st: &serde_json::Value| {
        let workers = st["workers"].as_array()?;
        let desired = st["desired_workers"].as_u64()? as usize;
        (st["phase"] == "running"
            && workers.len() == desired
            && workers.iter().all(|w| w["state"] == "ready"))
        .then(|| st.clone())
    };
    let st = wait_for("the example to serve", util::START_TIMEOUT, || {
        status_json(config).and_then(|s| ready(&s))
    });
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(st["generation"], 1);
    let addr = st["listeners"][0].as_str().unwrap().to_string();
    let target = util::Target::Tcp(addr);
    let resp = util::get(&target, "/").unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.text().contains("rsvisor"), "{}", resp.text());
    let owner = std::fs::read_to_string(format!("/proc/{master}/status")).unwrap();
    let uid = text(&run(Command::new("id").args(["-u", "rsvisor"])));
    assert!(
        owner
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(uid.trim())),
        "{owner}"
    );

    // `systemctl reload` runs ExecReload: it returns when generation 2 serves.
    let reload = unit_command(&unit, "ExecReload", "example");
    let out = run(&mut as_unit_user(&reload));
    assert!(
        text(&out).contains("generation 2 serving"),
        "{}",
        text(&out)
    );
    assert_eq!(status_json(config).unwrap()["generation"], 2);
    assert_eq!(util::get(&target, "/").unwrap().status, 200);

    // `systemctl stop`: TERM to the master (KillMode=mixed), exit 0.
    util::kill(master, Signal::SIGTERM);
    let mut server = installed.server.take().unwrap();
    let code = wait_for("the master to exit", util::START_TIMEOUT, || {
        server.try_wait().unwrap()
    });
    assert!(code.success(), "{code}\n{}", log_text());

    run(Command::new("dpkg").args(["--purge", "rsvisor"]));
    for f in files {
        assert!(!Path::new(&f[1..]).exists(), "{f} left after purge");
    }
    drop(installed);
}

/// No container engine runs here, so the image is checked by what it is
/// made of: its build stage runs the command the .deb test runs, the
/// files it copies exist, its configuration and the Kubernetes
/// manifest's pass `rsvisor check`, and the manifest runs the tag the
/// Dockerfile documents for this version (not a placeholder registry).
/// PID 1 itself is tested in a PID namespace (`it::exec`).
#[test]
fn the_container_image_is_the_tested_package_with_a_checked_config() {
    let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let tag = format!("rsvisor:{}", env!("CARGO_PKG_VERSION"));
    assert!(
        docker.contains(&format!("docker build -t {tag} .")),
        "{docker}"
    );
    let runs: Vec<&str> = docker
        .lines()
        .filter_map(|l| l.strip_prefix("RUN "))
        .collect();
    assert_eq!(runs.first(), Some(&"scripts/package deb"), "{runs:?}");
    for line in docker.lines().filter_map(|l| l.strip_prefix("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0].starts_with("--from") || words[0] == "." {
            continue;
        }
        assert!(root().join(words[0]).is_file(), "COPY {line}");
    }
    assert!(docker.contains("USER 10001"), "runs as a non-root user");

    let manifest = std::fs::read_to_string(root().join("deploy/k8s/deployment.yaml")).unwrap();
    let image = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .expect("an image line");
    assert_eq!(image, tag);
    assert!(manifest.contains("runAsUser: 10001"));
    // The ConfigMap's app.toml: the indented block under `app.toml: |`.
    let block: String = manifest
        .lines()
        .skip_while(|l| !l.trim().starts_with("app.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let k8s = dir.path().join("k8s.toml");
    std::fs::write(&k8s, block).unwrap();
    // The image's config serves what the package installs from static/
    // (checked by the .deb test) at /usr/share/rsvisor/www.
    let image_config = dir.path().join("image.toml");
    let text = std::fs::read_to_string(root().join("deploy/container/app.toml")).unwrap();
    assert!(text.contains("\"/usr/share/rsvisor/www\""), "{text}");
    let here = root().join("static").display().to_string();
    std::fs::write(&image_config, text.replace("/usr/share/rsvisor/www", &here)).unwrap();
    for config in [k8s, image_config] {
        run(Command::new(env!("CARGO_BIN_EXE_rsvisor"))
            .arg("check")
            .arg(&config));
    }
}
