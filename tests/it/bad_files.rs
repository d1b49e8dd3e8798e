//! Files a configuration names that are no regular files, or are huge:
//! `check` and a reload refuse them at once with the key's name, the
//! master neither blocks nor balloons, and the old workers serve on.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::http_edge::{ca_and_url, curl, make_pki};
use crate::util::*;

const TLS_CONFIG: &str = "[server]\nbind = [{ address = \"127.0.0.1:0\", tls = true }]\n\
     workers = 1\n[tls]\ncert = \"{dir}/server.pem\"\nkey = \"KEY\"\n";

#[test]
fn a_reload_to_a_key_that_is_dev_zero_or_a_fifo_is_refused_and_the_old_workers_serve() {
    if !have("curl", "the HTTP client of this test") {
        return;
    }
    let b = demo(&TLS_CONFIG.replace("KEY", "{dir}/server.key"));
    make_pki(b.dir());
    let dir = b.dir().to_path_buf();
    let mut s = b.start();
    let (ca, url) = ca_and_url(&mut s, &dir);
    s.wait_settled(START_TIMEOUT);
    let before = s.workers();
    let fifo = dir.join("key.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let good_key = dir.join("server.key").display().to_string();
    for (n, (key, says)) in [
        ("/dev/zero".to_string(), "character device"),
        (fifo.display().to_string(), "FIFO"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&s.config, text.replace(&good_key, &key)).unwrap();
        let t0 = Instant::now();
        s.signal(Signal::SIGHUP);
        // The master answers (it neither blocks in open() nor reads 2 GiB).
        let st = s.wait_reloads(n as u64 + 1, Duration::from_secs(10));
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        let last = st.last_reload.expect("a reload result");
        assert_eq!(last.result, ReloadResult::InvalidConfig);
        assert!(last.message.contains("tls.key"), "{}", last.message);
        assert!(last.message.contains(says), "{}", last.message);
        let (ok, out) = curl(&["--cacert", &ca, &url]);
        assert!(ok, "{key}: {out}");
        assert_eq!(s.workers(), before);
    }
    // A kill -9'd worker is still replaced: supervision never stopped.
    kill(before[0], Signal::SIGKILL);
    let old = before[0];
    s.wait_workers("a replacement worker", Duration::from_secs(5), |w| {
        w.len() == 1 && w[0] != old
    });
    s.wait_settled(Duration::from_secs(5));
    // Its peak resident memory never held a file's worth of zeros.
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let peak_kib: u64 = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak_kib < 64 * 1024, "master peak RSS {peak_kib} KiB");
}

#[test]
fn check_refuses_special_and_huge_files_at_once() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let huge = dir.path().join("huge.pem");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 * 1024 * 1024)
        .unwrap();
    for (key, says) in [
        ("/dev/urandom", "character device"),
        (dir.path().to_str().unwrap(), "directory"),
        (huge.to_str().unwrap(), "larger than 1024 KiB"),
    ] {
        let config = dir.path().join("app.toml");
        let text = TLS_CONFIG
            .replace("{dir}", &dir.path().display().to_string())
            .replace("KEY", key);
        std::fs::write(&config, text).unwrap();
        let t0 = Instant::now();
        let (code, out, err) = run(
            &rsvisor_bin(),
            &["check", config.to_str().unwrap()],
            dir.path(),
            &[],
        );
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(code, 2, "{key}: {out}{err}");
        assert!(
            err.contains("tls.key") && err.contains(says),
            "{key}: {err}"
        );
    }
    // The configuration file itself.
    let (code, _, err) = run(&rsvisor_bin(), &["check", "/dev/zero"], dir.path(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("character device"), "{err}");
}
