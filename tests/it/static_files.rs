//! The built-in app of the `rsvisor` binary: static files, confined to
//! `app.static_dir`, with conditional requests.

use crate::util::*;

fn start() -> (Server, Target) {
    let b = ServerBuilder::new(rsvisor_bin()).config(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[app]
static_dir = "{dir}/public"
"#,
    );
    let dir = b.dir().to_path_buf();
    std::fs::create_dir_all(dir.join("public/sub")).unwrap();
    std::fs::write(dir.join("public/index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(dir.join("public/style.css"), "body{}").unwrap();
    std::fs::write(dir.join("public/sub/data.json"), "{\"a\":1}").unwrap();
    std::fs::write(dir.join("secret.txt"), "TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("public/leak.txt")).unwrap();
    std::os::unix::fs::symlink(dir.join("public/style.css"), dir.join("public/alias.css")).unwrap();
    let mut s = b.start();
    let t = s.ready_tcp();
    (s, t)
}

#[test]
fn serves_files_with_types_and_validators() {
    let (_s, t) = start();
    // Two reads: the first fills the cache, the second is served from it.
    assert_eq!(get(&t, "/style.css").unwrap().text(), "body{}");
    let r = get(&t, "/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>home</h1>");
    assert!(r.header("content-type").unwrap().starts_with("text/html"));

    let r = get(&t, "/sub/data.json").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = get(&t, "/style.css").unwrap();
    assert_eq!(r.header("content-type"), Some("text/css"));
    let etag = r.header("etag").expect("ETag").to_string();
    let modified = r
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();

    // Conditional requests.
    let mut s = t.connect().unwrap();
    use std::io::Write;
    write!(
        s,
        "GET /style.css HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut std::io::BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 304);
    let mut s = t.connect().unwrap();
    write!(
        s,
        "GET /style.css HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: {modified}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut std::io::BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 304);

    // The cached fast path and ServeDir (a Range request goes there) agree
    // on the validators.
    let mut s = t.connect().unwrap();
    write!(
        s,
        "GET /style.css HTTP/1.1\r\nHost: t\r\nRange: bytes=0-3\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut std::io::BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "body");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("last-modified"), Some(modified.as_str()));
    assert_eq!(r.header("content-type"), Some("text/css"));

    // A change on disk is seen within a second (the cache revalidates).
    std::fs::write(_s.dir.path().join("public/style.css"), "body{color:red}").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while get(&t, "/style.css").unwrap().text() != "body{color:red}" {
        assert!(std::time::Instant::now() < deadline, "stale file served");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(_s.dir.path().join("public/style.css"), "body{}").unwrap();
    while get(&t, "/style.css").unwrap().text() != "body{}" {
        assert!(std::time::Instant::now() < deadline, "stale file served");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // HEAD: headers, no body.
    let r = request(&t, "HEAD", "/style.css", b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("6"));
    assert!(r.body.is_empty());

    // A symlink that stays inside the directory is fine.
    assert_eq!(get(&t, "/alias.css").unwrap().text(), "body{}");
    assert_eq!(get(&t, "/missing.txt").unwrap().status, 404);
}

#[test]
fn nothing_outside_the_directory_is_served() {
    let (_s, t) = start();
    for path in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/leak.txt",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
    ] {
        let raw_resp = raw(
            &t,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let text = String::from_utf8_lossy(&raw_resp);
        assert!(
            text.starts_with("HTTP/1.1 404")
                || text.starts_with("HTTP/1.1 403")
                || text.starts_with("HTTP/1.1 400"),
            "{path}: {text}"
        );
        assert!(!text.contains("TOP-SECRET"), "{path} leaked: {text}");
        assert!(!text.contains("root:"), "{path} leaked: {text}");
    }
}

#[test]
fn a_reload_with_a_static_dir_that_cannot_serve_changes_nothing() {
    let config = |static_dir: &str, user: &str| {
        format!(
            "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\nuser = \"{user}\"\n\
             [app]\nstatic_dir = \"{static_dir}\"\n"
        )
    };
    let b = ServerBuilder::new(rsvisor_bin()).config(&config("www", ""));
    let d = b.dir().to_path_buf();
    std::fs::create_dir(d.join("www")).unwrap();
    std::fs::write(d.join("www/index.html"), "hello\n").unwrap();
    std::fs::write(d.join("plain.txt"), "a file").unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let before = s.worker_pids();
    let good = std::fs::read_to_string(&s.config).unwrap();
    let mut cases = vec![
        (config("missing", ""), "does not exist"),
        (config("plain.txt", ""), "is not a directory"),
    ];
    if nix::unistd::geteuid().is_root() {
        let private = d.join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        cases.push((config("private", "nobody"), "cannot be read by user"));
    }
    let control = good
        .lines()
        .find(|l| l.starts_with("control_socket"))
        .unwrap_or("");
    for (n, (text, why)) in cases.iter().enumerate() {
        let text = text.replace("[server]\n", &format!("[server]\n{control}\n"));
        std::fs::write(&s.config, text).unwrap();
        s.signal(Signal::SIGHUP);
        let st = s.wait_reloads(n as u64 + 1, std::time::Duration::from_secs(10));
        let last = st.last_reload.expect("a reload result");
        assert_eq!(last.result, ReloadResult::InvalidConfig, "{why}");
        assert!(last.message.contains("app.static_dir:"), "{}", last.message);
        assert!(last.message.contains(why), "{}", last.message);
        assert_eq!(s.worker_pids(), before);
        let r = get(&tcp, "/index.html").unwrap();
        assert_eq!(r.status, 200);
    }
}

/// RFC 9110 §14.1.2: a last position beyond the end means the end, however
/// many digits it has; a suffix longer than the file is the whole file; a
/// first position past the end is 416.
#[test]
fn range_ends_beyond_the_file_are_clamped() {
    use std::io::Write;
    let (_s, t) = start();
    let ask = |range: &str| {
        let mut s = t.connect().unwrap();
        write!(
            s,
            "GET /style.css HTTP/1.1\r\nHost: t\r\nRange: {range}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        read_response(&mut std::io::BufReader::new(s), false).unwrap()
    };
    for range in [
        "bytes=0-99999999999999999999999",
        "bytes=0-18446744073709551615",
        "bytes=0-99",
        "bytes=-99999999999999999999999",
        "bytes=-99",
    ] {
        let r = ask(range);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.text(), "body{}", "{range}");
        assert_eq!(r.header("content-range"), Some("bytes 0-5/6"), "{range}");
    }
    let r = ask("bytes=-2");
    assert_eq!((r.status, r.text().as_str()), (206, "{}"));
    let r = ask("bytes=2-99999999999999999999999");
    assert_eq!((r.status, r.text().as_str()), (206, "dy{}"));
    assert_eq!(ask("bytes=99999999999999999999999-").status, 416);
    assert_eq!(ask("bytes=6-").status, 416);
}
