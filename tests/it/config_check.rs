//! `rsvisor check`: effective config on success, `file:line:col: key:` and
//! exit 2 on error; environment and flag precedence; `workers = "auto"`.

use std::process::Command;

use crate::util::*;

fn check_in(dir: &std::path::Path, text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let path = dir.join("app.toml");
    std::fs::write(&path, text).unwrap();
    run(&rsvisor_bin(), &["check", "app.toml"], dir, env)
}

#[test]
fn unknown_key_is_rejected_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check_in(
        dir.path(),
        "[server]\nworkers = 2\n\n[lifecycle]\ntimeout = 5\ngraceful_timout = 3\n",
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("app.toml:6:1: lifecycle.graceful_timout: unknown key"),
        "{err}"
    );
    assert!(err.contains("did you mean `graceful_timeout`"), "{err}");
}

#[test]
fn wrong_type_is_rejected_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check_in(
        dir.path(),
        "[server]\nbind = [\"127.0.0.1:8000\"]\nbacklog = \"lots\"\n",
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("app.toml:3:11: server.backlog:"), "{err}");
    assert!(err.contains("expected an integer"), "{err}");
}

#[test]
fn impossible_values_and_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check_in(dir.path(), "[server]\nworkers = 0\n", &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("app.toml:2:11: server.workers: 0 is out of range"),
        "{err}"
    );
    let (code, _, err) = check_in(dir.path(), "[server\nworkers = 1\n", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("app.toml:1:"), "{err}");
    let (code, _, err) = check_in(dir.path(), "[server]\nbind = [\"nowhere\"]\n", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("server.bind"), "{err}");
    let (code, _, err) = run(&rsvisor_bin(), &["check", "missing.toml"], dir.path(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("missing.toml: cannot read"), "{err}");
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[server]\nworkers = 2\n[log]\nlevel = \"info\"\n";
    let (code, out, err) = check_in(
        dir.path(),
        text,
        &[
            ("RSVISOR_SERVER_WORKERS", "5"),
            ("RSVISOR_LOG_LEVEL", "debug"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("workers = 5\n"), "{out}");
    assert!(out.contains("level = \"debug\""), "{out}");

    let (code, out, _) = run(
        &rsvisor_bin(),
        &[
            "check",
            "app.toml",
            "--workers",
            "7",
            "--bind",
            "unix:/tmp/x.sock",
        ],
        dir.path(),
        &[("RSVISOR_SERVER_WORKERS", "5")],
    );
    assert_eq!(code, 0);
    assert!(out.contains("workers = 7\n"), "{out}");
    assert!(out.contains("bind = [\"unix:/tmp/x.sock\"]"), "{out}");

    let (code, _, err) = check_in(dir.path(), text, &[("RSVISOR_SERVER_WORKRS", "5")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("environment variable RSVISOR_SERVER_WORKRS"),
        "{err}"
    );
}

#[test]
fn auto_workers_follow_cpu_affinity() {
    if !have("taskset", "util-linux: runs check on one CPU") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.toml"),
        "[server]\nworkers = \"auto\"\n",
    )
    .unwrap();
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(rsvisor_bin())
        .args(["check", "app.toml"])
        .current_dir(dir.path())
        .output()
        .expect("taskset (util-linux) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text.contains("workers = \"auto\"  # auto: 2 × 1 usable CPU + 1 = 3"),
        "{text}"
    );
}

#[test]
fn example_config_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = run(
        &rsvisor_bin(),
        &["check", "config.example.toml"],
        std::path::Path::new(root),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bind = [\"127.0.0.1:8000\"]"), "{out}");
    assert!(
        out.contains(&format!("static_dir = \"{root}/static\"")),
        "{out}"
    );
}

#[test]
fn a_relative_static_dir_is_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/hello.txt"), "hi from www\n").unwrap();
    let cfg = dir.path().join("app.toml");
    std::fs::write(&cfg, "[app]\nstatic_dir = \"www\"\n").unwrap();
    // Checked from another working directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        &rsvisor_bin(),
        &["check", cfg.to_str().unwrap()],
        elsewhere.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let expected = format!("static_dir = \"{}/www\"", dir.path().display());
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn static_dirs_that_cannot_serve_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file.txt"), "not a directory").unwrap();
    let cases = [
        ("missing", "does not exist"),
        ("file.txt", "is not a directory"),
    ];
    for (value, why) in cases {
        let text = format!("[server]\nworkers = 1\n[app]\nstatic_dir = \"{value}\"\n");
        let (code, _, err) = check_in(dir.path(), &text, &[]);
        assert_eq!(code, 2, "{value}: {err}");
        assert!(err.contains("app.toml:4:1: app.static_dir:"), "{err}");
        assert!(err.contains(why), "{err}");
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the worker-user case cannot be tested; CI runs as root");
        return;
    }
    // Readable by root (who runs check) but not by the worker user.
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let text = "[server]\nworkers = 1\nuser = \"nobody\"\n[app]\nstatic_dir = \"private\"\n";
    let (code, _, err) = check_in(dir.path(), text, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("app.static_dir:"), "{err}");
    assert!(err.contains("cannot be read by user \"nobody\""), "{err}");
}

/// The built-in binary with nothing to serve says so (and still passes);
/// an embedding program, which is its own app, does not.
#[test]
fn check_warns_when_the_built_in_app_has_nothing_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let bare = "[server]\nbind = [\"127.0.0.1:0\"]\n";
    let (code, _, err) = check_in(dir.path(), bare, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("app.toml: warning: no app is configured"),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("www")).unwrap();
    let (code, _, err) = check_in(
        dir.path(),
        &format!("{bare}[app]\nstatic_dir = \"www\"\n"),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    std::fs::write(dir.path().join("app.toml"), bare).unwrap();
    let (code, _, err) = run(&example("demo"), &["check", "app.toml"], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// `-V` and `--version` agree on the program's name and version; an
/// embedding program names rsvisor's version and TLS provider on a second
/// line of `--version`.
#[test]
fn short_and_long_version_agree_and_name_the_program() {
    let version = |bin: &std::path::Path, flag: &str| {
        let out = Command::new(bin).arg(flag).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let pkg = env!("CARGO_PKG_VERSION");
    let rsvisor = rsvisor_bin();
    assert_eq!(version(&rsvisor, "-V"), format!("rsvisor {pkg}\n"));
    let long = version(&rsvisor, "--version");
    assert!(
        long.starts_with(&format!("rsvisor {pkg} (TLS: rustls with ")),
        "{long}"
    );
    assert_eq!(long.lines().count(), 1, "{long}");
    let demo = example("demo");
    assert_eq!(version(&demo, "-V"), format!("demo {pkg}\n"));
    let long = version(&demo, "--version");
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines[0], format!("demo {pkg}"), "{long}");
    assert!(
        lines[1].starts_with(&format!("rsvisor {pkg} (TLS: rustls with ")),
        "{long}"
    );
}

/// The quick start's own server answers every operator command: the
/// example sets a control socket (the port is the only change here).
#[test]
fn operator_commands_work_on_the_example_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config.example.toml"))
        .unwrap()
        .replace("127.0.0.1:8000", "127.0.0.1:0");
    let b = ServerBuilder::new(rsvisor_bin()).config(&text);
    std::fs::create_dir(b.dir().join("static")).unwrap();
    std::fs::write(b.dir().join("static/index.html"), "hi").unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    assert_eq!(get(&tcp, "/").unwrap().text(), "hi");
    let cfg = s.config.display().to_string();
    for cmd in [
        &["status", cfg.as_str()][..],
        &["reload", cfg.as_str()],
        &["top", cfg.as_str(), "--once"],
    ] {
        let (code, out, err) = run(&rsvisor_bin(), cmd, s.dir.path(), &[]);
        assert_eq!(code, 0, "{cmd:?}: {out}{err}");
    }
}

/// Completion scripts and the manual page come from the binary itself,
/// under the name it is run as.
#[test]
fn completions_and_the_man_page_come_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef rsvisor"),
        ("fish", "complete -c rsvisor"),
    ] {
        let (code, out, err) = run(&rsvisor_bin(), &["completions", shell], dir.path(), &[]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("reload"), "{shell}: {out}");
    }
    let (code, out, err) = run(&rsvisor_bin(), &["man"], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".TH rsvisor 1"), "{out}");
    assert!(out.contains("completions"), "{out}");
    // An embedding program's own name.
    let (code, out, _) = run(&example("demo"), &["man"], dir.path(), &[]);
    assert_eq!(code, 0);
    assert!(out.contains(".TH demo 1"), "{out}");
    let (_, out, err) = run(&rsvisor_bin(), &["completions", "tcsh"], dir.path(), &[]);
    assert!(out.is_empty() && err.contains("tcsh"), "{err}");
}
