//! The HTTP edge: timeouts, size limits, malformed input, overload, proxy
//! headers, TLS with client certificates, HTTP/2, access logs.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const EDGE: &str = r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[http]
header_read_timeout = 1
keepalive_timeout = 2
max_body_bytes = 1000
"#;

/// Reads until EOF or `limit`; returns the bytes and whether EOF came.
pub(crate) fn read_all(s: &mut Stream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if Instant::now() >= deadline {
            return (out, false);
        }
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            // A reset is a close too.
            Err(_) => return (out, true),
        }
    }
}

pub(crate) fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

fn set_short_timeout(s: &Stream) {
    if let Stream::Tcp(t) = s {
        t.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
}

#[test]
fn slowloris_gets_408_and_is_closed_while_others_are_served() {
    let mut s = demo(EDGE).start();
    let tcp = s.ready_tcp();
    let mut slow = tcp.connect().unwrap();
    set_short_timeout(&slow);
    let t0 = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    // Trickle more header bytes; the head never completes.
    let trickle = std::thread::spawn({
        let tcp = tcp.clone();
        move || {
            for i in 0..20 {
                std::thread::sleep(Duration::from_millis(100));
                assert_eq!(get(&tcp, "/").unwrap().status, 200, "other client {i}");
            }
        }
    });
    let mut got = Vec::new();
    let mut closed = false;
    while t0.elapsed() < Duration::from_secs(4) && !closed {
        let _ = slow.write_all(b"X-Slow: 1\r\n");
        let (bytes, eof) = read_all(&mut slow, Duration::from_millis(250));
        got.extend(bytes);
        closed = eof;
    }
    let took = t0.elapsed();
    assert!(closed, "slowloris connection still open after {took:?}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(500),
        "{took:?}"
    );
    assert_eq!(
        status_of(&got),
        Some(408),
        "{}",
        String::from_utf8_lossy(&got)
    );
    trickle.join().unwrap();
}

#[test]
fn idle_and_silent_connections_are_closed() {
    let mut s = demo(EDGE).start();
    let tcp = s.ready_tcp();
    // Never sends a byte.
    let mut silent = tcp.connect().unwrap();
    set_short_timeout(&silent);
    // Kept alive after one request, then idle.
    let mut idle = tcp.connect().unwrap();
    set_short_timeout(&idle);
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let (bytes, eof) = read_all(&mut idle, Duration::from_secs(5));
    assert!(eof, "idle keep-alive connection not closed");
    assert_eq!(status_of(&bytes), Some(200));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "closed after {took:?}, keepalive_timeout is 2 s"
    );
    let (bytes, eof) = read_all(&mut silent, Duration::from_secs(3));
    assert!(eof && bytes.is_empty(), "silent connection not closed");
}

#[test]
fn oversized_heads_and_bodies_are_refused() {
    let mut s = demo(EDGE).start();
    let tcp = s.ready_tcp();
    // 431: head above max_header_bytes (16 KiB by default).
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let out = raw(&tcp, big.as_bytes()).unwrap();
    assert_eq!(
        status_of(&out),
        Some(431),
        "{}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );

    // 413 from Content-Length, before reading the body.
    let mut c = tcp.connect().unwrap();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        .unwrap();
    let r = read_response(&mut std::io::BufReader::new(c), false).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));

    // 413 while streaming a chunked body past the limit.
    let mut req = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "b".repeat(600)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let out = raw(&tcp, &req).unwrap();
    assert_eq!(
        status_of(&out),
        Some(413),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // Under the limit: echoed.
    let r = request(&tcp, "POST", "/echo", &[b'z'; 900]).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 900));
}

/// Raw requests no server should accept. Each must get a 4xx or a close,
/// never a 5xx, and never take a worker down. (Content-Length together with
/// Transfer-Encoding is answered per RFC 9112 §6.3: the body is read as
/// chunked and the connection is closed after the response.)
fn malformed_corpus() -> Vec<Vec<u8>> {
    let mut c: Vec<Vec<u8>> = [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-\x01: y\r\n\r\n",
        b"GET / HTTP/1.1\rHost: x\r\r\r",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\tX-Folded: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: \xc0\x00\r\n\r\n",
        b"\x00\x00\x00\x00\x00\x00\x00\x00",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n",
        b"GET / HTTP/1.\r\nHost: x\r\n\r\n",
        b"GET / HTTPS/1.1\r\nHost: x\r\n\r\n",
        b"GET / http/1.1\r\nHost: x\r\n\r\n",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    // Too many headers, a head that is too long, a huge chunk extension,
    // an incomplete body.
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    c.push(many);
    c.push(format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes());
    c.push(
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
            "e".repeat(100_000)
        )
        .into_bytes(),
    );
    c.push(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".to_vec());
    c
}

#[test]
fn malformed_requests_get_4xx_or_close_and_never_kill_a_worker() {
    let mut s = demo(EDGE).start();
    let tcp = s.ready_tcp();
    let before = s.wait_workers("two workers", START_TIMEOUT, |w| w.len() == 2);
    let corpus = malformed_corpus();
    assert!(corpus.len() >= 40, "corpus has {}", corpus.len());
    let handles: Vec<_> = corpus
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let tcp = tcp.clone();
            std::thread::spawn(move || {
                let mut c = tcp.connect().unwrap();
                set_short_timeout(&c);
                let _ = c.write_all(&bytes);
                let (out, eof) = read_all(&mut c, Duration::from_secs(6));
                (i, bytes, out, eof)
            })
        })
        .collect();
    for h in handles {
        let (i, sent, out, eof) = h.join().unwrap();
        let shown = String::from_utf8_lossy(&sent[..sent.len().min(80)]).into_owned();
        let status = status_of(&out);
        let closed_after = eof && String::from_utf8_lossy(&out).contains("connection: close");
        match status {
            Some(code) => assert!(
                (400..500).contains(&code) || closed_after,
                "#{i} {shown:?} got {code} and the connection stayed open: {}",
                String::from_utf8_lossy(&out[..out.len().min(300)])
            ),
            None => assert!(eof, "#{i} {shown:?}: no answer and still open"),
        }
        // Never a 5xx anywhere (pipelined answers included).
        assert!(
            !String::from_utf8_lossy(&out).contains("HTTP/1.1 5"),
            "#{i} {shown:?}"
        );
    }
    assert_eq!(s.workers(), before, "a worker died:\n{}", s.log_text());
    assert_eq!(get(&tcp, "/").unwrap().status, 200);
}

#[test]
fn limit_concurrency_answers_503_with_retry_after() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[http]
limit_concurrency = 2
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let tcp = tcp.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let r = get(&tcp, "/sleep?ms=1500").unwrap();
                (r, t0.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let busy: Vec<_> = results.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(
        ok,
        2,
        "{:?}",
        results.iter().map(|(r, _)| r.status).collect::<Vec<_>>()
    );
    assert_eq!(busy.len(), 8);
    for (r, took) in busy {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(
            *took < Duration::from_millis(1000),
            "503 was not immediate: {took:?}"
        );
    }
    // Health checks are not subject to the limit.
    assert_eq!(get(&tcp, "/health").unwrap().status, 200);
}

#[test]
fn forwarded_headers_only_from_allowed_peers() {
    let proxy_cfg = |allow: &str| {
        format!(
            "[server]\nbind = [\"127.0.0.1:0\", \"unix:{{dir}}/app.sock\"]\nworkers = 1\n\
             [proxy]\nproxy_headers = true\nforwarded_allow_ips = {allow}\n\
             [log]\naccess_log = \"{{dir}}/access.log\"\naccess_format = \"json\"\n"
        )
    };
    let fwd = b"GET /client HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.5\r\n\
                X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";

    // Allowed: 127.0.0.1 (and Unix peers).
    let mut s = demo(&proxy_cfg("[\"127.0.0.1\", \"unix\"]")).start();
    let tcp = s.ready_tcp();
    let body = |out: Vec<u8>| {
        let text = String::from_utf8_lossy(&out).into_owned();
        let json = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        serde_json::from_str::<serde_json::Value>(&json).unwrap_or_else(|_| panic!("{text}"))
    };
    let v = body(raw(&tcp, fwd).unwrap());
    assert_eq!(v["addr"], "203.0.113.5");
    assert_eq!(v["scheme"], "https");
    let unix = Target::Unix(s.dir.path().join("app.sock"));
    let v = body(raw(&unix, fwd).unwrap());
    assert_eq!(v["addr"], "203.0.113.5");
    // The access log records the forwarded client.
    let log = s.dir.path().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("/client").count() >= 2 {
            assert!(text.contains("\"client\":\"203.0.113.5\""), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "access log: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(s);

    // Not allowed: the peer is the client, the headers are ignored.
    let mut s = demo(&proxy_cfg("[\"10.0.0.0/8\"]")).start();
    let tcp = s.ready_tcp();
    let v = body(raw(&tcp, fwd).unwrap());
    assert_eq!(v["addr"], "127.0.0.1");
    assert_eq!(v["scheme"], "http");
    let unix = Target::Unix(s.dir.path().join("app.sock"));
    let v = body(raw(&unix, fwd).unwrap());
    assert_eq!(v["addr"], serde_json::Value::Null);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
/// The test CA's file (for `curl --cacert`) and the `https://` URL of a
/// server started with [`make_pki`]'s certificate on its TCP address.
pub(crate) fn ca_and_url(s: &mut Server, dir: &Path) -> (String, String) {
    let Target::Tcp(addr) = s.tcp_addr() else {
        unreachable!()
    };
    (
        dir.join("ca.pem").display().to_string(),
        format!("https://{addr}/"),
    )
}

/// A test CA (`ca.pem`, `ca.key`) and, signed by it, a server certificate
/// for 127.0.0.1 and localhost (`server.pem`, `server.key`) and a client
/// certificate (`client.pem`, `client.key`); ECDSA P-256, made in process.
pub(crate) fn make_pki(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "rsvisor-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    write("ca.key", ca_key.serialize_pem());
    let ca = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    write("ca.pem", ca.pem());
    for (name, sans, usage) in [
        (
            "server",
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}.key"), key.serialize_pem());
    }
}

pub(crate) fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn tls_with_required_client_certificates_http2_and_plain_side_by_side() {
    if !have("curl", "the HTTP client of this test") {
        return;
    }
    let b = demo(
        r#"
[server]
bind = [{ address = "127.0.0.1:0", tls = true }, { address = "unix:{dir}/plain.sock", tls = false }]
workers = 1
[tls]
cert = "{dir}/server.pem"
key = "{dir}/server.key"
client_ca = "{dir}/ca.pem"
client_auth = "required"
"#,
    );
    make_pki(b.dir());
    let dir = b.dir().to_path_buf();
    let mut s = b.start();
    let (ca, url) = ca_and_url(&mut s, &dir);
    // The plain Unix bind coexists.
    let plain = Target::Unix(dir.join("plain.sock"));
    s.wait_ready(&plain);
    assert_eq!(get(&plain, "/").unwrap().status, 200);

    let cert = dir.join("client.pem").display().to_string();
    let key = dir.join("client.key").display().to_string();
    // No client certificate: the handshake is refused.
    let (ok, out) = curl(&["--cacert", &ca, &url]);
    assert!(!ok, "served without a client certificate: {out}");
    // With one: 200, over HTTP/2 by ALPN, and over HTTP/1.1.
    let (ok, out) = curl(&[
        "--cacert", &ca, "--cert", &cert, "--key", &key, "--http2", &url,
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "200 2");
    let (ok, out) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--http1.1",
        &url,
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "200 1.1");
    // TLS 1.2 works too.
    let (ok, out) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        &url,
    ]);
    assert!(ok, "{out}");
    // The app sees https.
    let out = Command::new("curl")
        .args(["-sS", "--cacert", &ca, "--cert", &cert, "--key", &key])
        .arg(format!("{url}client"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scheme"], "https");
}

#[test]
fn h2c_with_prior_knowledge() {
    if !have("curl", "the HTTP client of this test") {
        return;
    }
    let mut s = demo("[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n").start();
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!()
    };
    let (ok, out) = curl(&["--http2-prior-knowledge", &format!("http://{addr}/")]);
    assert!(ok, "{out}");
    assert_eq!(out, "200 2");
}

#[test]
fn certificates_of_every_key_type_are_accepted_and_bad_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, alg) in [
        ("rsa", &rcgen::PKCS_RSA_SHA256),
        ("ec", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("ed", &rcgen::PKCS_ED25519),
    ] {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(d.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(d.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        let cfg = format!(
            "[server]\nbind = [\"127.0.0.1:0\"]\n[tls]\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\n"
        );
        std::fs::write(d.join("app.toml"), cfg).unwrap();
        let (code, _, err) = run(&rsvisor_bin(), &["check", "app.toml"], d, &[]);
        assert_eq!(code, 0, "{name}: {err}");
    }
    // A key that does not belong to the certificate.
    std::fs::write(
        d.join("app.toml"),
        "[server]\nbind = [\"127.0.0.1:0\"]\n[tls]\ncert = \"rsa.pem\"\nkey = \"ec.key\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&rsvisor_bin(), &["check", "app.toml"], d, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("app.toml:5:1: tls.key:"), "{err}");
    // A missing file.
    std::fs::write(
        d.join("app.toml"),
        "[server]\nbind = [\"127.0.0.1:0\"]\n[tls]\ncert = \"nope.pem\"\nkey = \"ec.key\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&rsvisor_bin(), &["check", "app.toml"], d, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("app.toml:4:1: tls.cert:"), "{err}");
}

#[test]
fn access_log_lines_are_json_and_usr1_reopens_after_rotation() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[log]
access_log = "{dir}/access.log"
access_format = "json"
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let log = s.dir.path().join("access.log");
    for _ in 0..10 {
        let mut c = tcp.connect().unwrap();
        c.write_all(
            b"GET /pid?x=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: edge-test\r\nReferer: http://r/\r\n\
              X-Request-Id: req-42\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    let wait_lines = |path: &Path, n: usize| -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter(|l| l.contains("/pid"))
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(Instant::now() < deadline, "{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let lines = wait_lines(&log, 10);
    let l = &lines[0];
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/pid?x=1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["user_agent"], "edge-test");
    assert_eq!(l["referer"], "http://r/");
    assert_eq!(l["request_id"], "req-42");
    assert!(l["bytes"].as_u64().unwrap() > 0);
    assert!(l["duration_us"].as_u64().is_some());
    assert!(l["time"].as_str().unwrap().ends_with('Z'));

    // logrotate: rename, then USR1; new lines go to a new file.
    std::fs::rename(&log, s.dir.path().join("access.log.1")).unwrap();
    s.signal(Signal::SIGUSR1);
    // Every worker must have reopened: keep requesting until the new file
    // has lines from both workers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let workers = s.workers();
    loop {
        let _ = get(&tcp, "/pid");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no new access.log after USR1");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.workers(), workers, "USR1 must not kill workers");
}

#[test]
fn a_bad_new_certificate_keeps_the_old_one() {
    if !have("curl", "the HTTP client of this test") {
        return;
    }
    let b = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[tls]
cert = "{dir}/server.pem"
key = "{dir}/server.key"
"#,
    );
    make_pki(b.dir());
    let dir = b.dir().to_path_buf();
    let mut s = b.start();
    let (ca, url) = ca_and_url(&mut s, &dir);
    let deadline = Instant::now() + START_TIMEOUT;
    while !matches!(
        curl(&["--cacert", &ca, &url]).1.as_str(),
        "200 1.1" | "200 2"
    ) {
        assert!(
            Instant::now() < deadline,
            "TLS server not ready: {}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = s.workers();
    std::fs::write(
        dir.join("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    s.signal(Signal::SIGHUP);
    let st = s.wait_reloads(1, Duration::from_secs(10));
    let last = st.last_reload.expect("a reload result");
    assert_eq!(last.result, ReloadResult::InvalidConfig);
    assert!(last.message.contains("tls.cert"), "{}", last.message);
    let (ok, out) = curl(&["--cacert", &ca, &url]);
    assert!(ok, "{out}");
    assert_eq!(s.workers(), before);
}

#[test]
fn combined_access_log_and_json_error_log() {
    let mut s = demo(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[log]
format = "json"
access_log = "{dir}/access.log"
access_format = "combined"
"#,
    )
    .start();
    let tcp = s.ready_tcp();
    let mut c = tcp.connect().unwrap();
    c.write_all(
        b"GET /pid HTTP/1.1\r\nHost: x\r\nUser-Agent: ua \"quoted\"\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);
    let log = s.dir.path().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("/pid")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // 127.0.0.1 - - [26/Nov/2026:21:35:24 +0000] "GET /pid HTTP/1.1" 200 5 "-" "ua \"quoted\"" 123 id
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("+0000] \"GET /pid HTTP/1.1\" 200 "), "{line}");
    assert!(line.contains(" \"-\" \"ua \\\"quoted\\\"\" "), "{line}");
    // The error/event log is one JSON object per line.
    let events = s.log_text();
    let mut n = 0;
    for l in events.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
        n += 1;
    }
    assert!(n >= 2, "{events}");
}

#[test]
fn proxy_protocol_v1_and_v2_per_bind() {
    let b = demo(
        r#"
[server]
bind = [{ address = "127.0.0.1:0", proxy_protocol = true }, "unix:{dir}/plain.sock"]
workers = 1
"#,
    );
    let plain = Target::Unix(b.dir().join("plain.sock"));
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let client = |bytes: &[u8]| -> serde_json::Value {
        let out = raw(&tcp, bytes).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{text}"))
    };
    let req = b"GET /client HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    v1.extend_from_slice(req);
    assert_eq!(client(&v1)["addr"], "203.0.113.7");

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0, 36]);
    let src: std::net::Ipv6Addr = "2001:db8::9".parse().unwrap();
    v2.extend_from_slice(&src.octets());
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&[0x1f, 0x90, 0, 80]);
    v2.extend_from_slice(req);
    assert_eq!(client(&v2)["addr"], "2001:db8::9");

    // No header on a PROXY bind: closed without an answer.
    let out = raw(&tcp, req).unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    // The other bind is plain HTTP.
    assert_eq!(get(&plain, "/").unwrap().status, 200);
}
