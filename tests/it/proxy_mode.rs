//! Proxy mode (`app.mode = "proxy"`): rsvisor's front workers serve the
//! clients and forward to real uvicorn and gunicorn processes (from PyPI,
//! in tests/.venv) over their Unix sockets. Reloads under load fail no
//! request, a broken release is abandoned with the old code serving, a
//! release that answers 500 is rolled back by the canary, every request is
//! counted, and `max_concurrency = 1` keeps a slow upload, and a slow
//! reader of a large answer, away from a sync worker.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::util::*;

fn have_venv() -> bool {
    have_in_venv(&["uvicorn", "gunicorn"])
}

/// An ASGI app that answers `/` with `version` (and `status`), `/pid` with
/// its pid, `/xff` with the forwarding headers it received, `/client` with
/// the client uvicorn saw, `/slow` after 3 s, `/upload` with the length
/// and SHA-256 of the body it read, `/ready` (rsvisor's probe)
/// with 503 while a file `hold` exists beside it, else 200.
fn asgi_app(version: &str, status: u16) -> String {
    format!(
        r#"import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    path = scope["path"]
    code = 200
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/xff":
        body = b"|".join(headers.get(h, b"-") for h in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"connection"))
    elif path == "/client":
        body = ("%s|%s" % ((scope.get("client") or ("none",))[0], scope["scheme"])).encode()
    elif path == "/slow":
        await asyncio.sleep(3)
        body = b"slow"
    elif path == "/upload":
        got = b""
        while True:
            m = await receive()
            got += m.get("body", b"")
            if not m.get("more_body"):
                break
        import hashlib
        body = ("%d|%s" % (len(got), hashlib.sha256(got).hexdigest())).encode()
    elif path == "/ready":
        body = b"ready"
        code = 503 if os.path.exists("hold") else 200
    else:
        body = b"{version}"
        code = {status}
    await send({{"type": "http.response.start", "status": code, "headers": [(b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
"#
    )
}

/// rsvisor in proxy mode in front of `workers` uvicorn processes;
/// `extra` goes at the end (more keys of `[app]`, or other sections).
pub(crate) fn uvicorn_proxy(workers: usize, lifecycle: &str, extra: &str) -> ServerBuilder {
    let uvicorn = venv_bin("uvicorn").display().to_string();
    let b = ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = {workers}
[lifecycle]
graceful_timeout = 10
{lifecycle}
[app]
mode = "proxy"
front_workers = 2
command = [{uvicorn:?}, "--uds", "{{socket}}", "--no-access-log", "app:app"]
cwd = "{{dir}}"
{extra}
"#
    ));
    std::fs::write(b.dir().join("app.py"), asgi_app("v1", 200)).unwrap();
    b
}

/// rsvisor in proxy mode with one front worker and one app process
/// running `command` (a TOML array) in the test's directory; `sections`
/// go before `[app]`, `app_keys` into it.
fn one_process(command: &str, sections: &str, app_keys: &str) -> ServerBuilder {
    ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
{sections}
[app]
mode = "proxy"
front_workers = 1
command = {command}
cwd = "{{dir}}"
{app_keys}
"#
    ))
}

/// One gunicorn sync worker running `wsgi` (its `app` answers `/` with
/// `ok`) behind one front worker, with `app_keys`; started, settled, and
/// answering `/`.
fn one_sync_worker(app_keys: &str, wsgi: &str) -> (Server, Target) {
    let gunicorn = venv_bin("gunicorn").display().to_string();
    let b = one_process(
        &format!(r#"[{gunicorn:?}, "--workers", "1", "--bind", "unix:{{socket}}", "wsgi:app"]"#),
        "",
        app_keys,
    );
    std::fs::write(b.dir().join("wsgi.py"), wsgi).unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    s.wait_settled(Duration::from_secs(30));
    assert_eq!(get(&tcp, "/").unwrap().text(), "ok");
    (s, tcp)
}

fn reload(s: &Server) -> (i32, String) {
    let cfg = s.config.display().to_string();
    let (code, out, err) = run(&rsvisor_bin(), &["reload", &cfg], s.dir.path(), &[]);
    (code, format!("{out}{err}"))
}

#[test]
fn uvicorn_behind_the_front_reloads_under_load_without_a_failed_request() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_proxy(2, "", "").start();
    let tcp = s.ready_tcp();
    let st = s.wait_settled(Duration::from_secs(30));
    // Two app processes behind two front workers, both shown.
    assert_eq!((st.workers.len(), st.fronts.len()), (2, 2), "{st:?}");
    assert_eq!(get(&tcp, "/").unwrap().text(), "v1");
    // The app is told who the client is, and no hop-by-hop header.
    assert_eq!(get(&tcp, "/xff").unwrap().text(), "127.0.0.1|http|test|-");
    // …which uvicorn believes on the private socket (FORWARDED_ALLOW_IPS).
    assert_eq!(get(&tcp, "/client").unwrap().text(), "127.0.0.1|http");

    let load = Load::start(&tcp, 4, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let mut old: BTreeSet<i32> = BTreeSet::new();
    for round in 2..=3 {
        let before = s.status().expect("status");
        old.extend(before.workers.iter().map(|w| w.pid as i32));
        std::fs::write(
            s.dir.path().join("app.py"),
            asgi_app(&format!("v{round}"), 200),
        )
        .unwrap();
        let (code, out) = reload(&s);
        assert_eq!(code, 0, "{out}\n{}", s.log_text());
        // rsvisor reload returned: only the new code answers.
        for _ in 0..30 {
            let r = get(&tcp, "/").unwrap();
            assert_eq!(r.text(), format!("v{round}"), "{}", s.log_text());
        }
    }
    let stats = load.finish();
    stats.assert_all_ok(200);
    let st = s.wait_status("the old processes gone", Duration::from_secs(30), |st| {
        st.workers.iter().all(|w| !old.contains(&(w.pid as i32)))
    });
    // Every proxied request is counted, for the app process that answered.
    let metrics = get(&tcp, "/metrics").unwrap().text();
    let total = metric(&metrics, "rsvisor_http_requests_total");
    assert!(total >= stats.ok as f64, "{total} < {}", stats.ok);
    assert!(st.workers.iter().any(|w| w.requests > 0), "{st:?}");
    eprintln!(
        "proxy mode: {} requests through two reloads, 0 failed, {} app pids",
        stats.ok,
        stats.pids.len()
    );
    s.signal(Signal::SIGTERM);
    assert_eq!(s.expect_exit(Duration::from_secs(30)).code(), Some(0));
}

/// Request bodies above `app.body_buffer` wait in an unnamed temporary
/// file and reach the app whole, with their length; smaller ones too;
/// nothing is left in the run directory.
#[test]
fn large_bodies_wait_in_an_unnamed_file_and_reach_the_app_whole() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_proxy(1, "", "body_buffer = 4096\nsocket_dir = \"{dir}\"\n").start();
    let tcp = s.ready_tcp();
    s.wait_settled(Duration::from_secs(30));
    for len in [0usize, 100, 4096, 4097, 3 << 20] {
        let body: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let r = request(&tcp, "POST", "/upload", &body).unwrap();
        assert_eq!(r.status, 200, "{len}: {}", r.text());
        let want = format!("{len}|{}", sha256_hex(&body));
        assert_eq!(r.text(), want, "{len} bytes");
    }
    let run_dirs: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rsvisor-"))
        .collect();
    assert_eq!(run_dirs.len(), 1);
    for e in std::fs::read_dir(run_dirs[0].path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name.ends_with(".sock"), "left behind: {name}");
    }
}

/// SHA-256 of `data`, in hex, from Python's hashlib (what the app uses).
fn sha256_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new(venv_bin("python"))
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A new process takes requests only once its app answers rsvisor's
/// `GET /ready` below 500: while its `/ready` says 503 the old
/// generation answers everything, and the reload completes once it
/// says 200.
#[test]
fn a_new_process_takes_requests_only_once_its_app_answers_the_ready_probe() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_proxy(1, "", "").start();
    let tcp = s.ready_tcp();
    s.wait_settled(Duration::from_secs(30));
    let hold = s.dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    std::fs::write(s.dir.path().join("app.py"), asgi_app("v2", 200)).unwrap();
    let cfg = s.config.display().to_string();
    let dir = s.dir.path().to_path_buf();
    let reloading = std::thread::spawn(move || run(&rsvisor_bin(), &["reload", &cfg], &dir, &[]));
    // Long past the new process's start (uvicorn listens within a second).
    let until = Instant::now() + Duration::from_secs(4);
    let mut answers = 0;
    while Instant::now() < until {
        assert_eq!(get(&tcp, "/").unwrap().text(), "v1", "{}", s.log_text());
        answers += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !reloading.is_finished(),
        "the reload ended while the new app said 503"
    );
    std::fs::remove_file(&hold).unwrap();
    let (code, out, err) = reloading.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(answers > 10);
    for _ in 0..10 {
        assert_eq!(get(&tcp, "/").unwrap().text(), "v2");
    }
}

#[test]
fn a_release_that_cannot_import_is_abandoned_and_no_request_fails() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_proxy(2, "", "").start();
    let tcp = s.ready_tcp();
    s.wait_settled(Duration::from_secs(30));
    let load = Load::start(&tcp, 4, Duration::from_secs(60));
    std::fs::write(s.dir.path().join("app.py"), "import no_such_module\n").unwrap();
    let (code, out) = reload(&s);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("abandoned"), "{out}");
    let stats = load.finish();
    stats.assert_all_ok(50);
    assert_eq!(get(&tcp, "/").unwrap().text(), "v1");
}

#[test]
fn a_release_that_answers_500_is_rolled_back_by_the_canary() {
    if !have_venv() {
        return;
    }
    let mut s = uvicorn_proxy(2, "canary = 30", "").start();
    let tcp = s.ready_tcp();
    s.wait_settled(Duration::from_secs(30));
    std::fs::write(s.dir.path().join("app.py"), asgi_app("broken", 500)).unwrap();
    let traffic = {
        let tcp = tcp.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                match get(&tcp, "/") {
                    Ok(r) => answers.push(r.status),
                    Err(_) => answers.push(0),
                }
                if answers.len() > 20
                    && answers[answers.len() - 20..].iter().all(|c| *c == 200)
                    && answers.contains(&500)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            answers
        })
    };
    let (code, out) = reload(&s);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("rolled_back"), "{out}");
    let answers = traffic.join().unwrap();
    let errors = answers.iter().filter(|c| **c == 500).count();
    assert!(!answers.contains(&0), "a request got no answer");
    assert!(
        errors > 0 && errors < 200,
        "{errors} answers 500 of {}",
        answers.len()
    );
    for _ in 0..20 {
        assert_eq!(get(&tcp, "/").unwrap().text(), "v1");
    }
}

#[test]
fn a_queue_that_waits_too_long_is_answered_503_and_a_slow_upload_holds_no_sync_worker() {
    if !have_venv() {
        return;
    }
    let (mut s, tcp) = one_sync_worker(
        "max_concurrency = 1\nqueue_timeout = 1",
        "import time\n\ndef app(environ, start_response):\n    \
         if environ['PATH_INFO'] == '/slow':\n        time.sleep(3)\n    \
         body = environ['wsgi.input'].read() or b'ok'\n    \
         start_response('200 OK', [('Content-Length', str(len(body)))])\n    \
         return [body]\n",
    );

    // A client uploads one byte every 100 ms: the body is read by rsvisor,
    // so the only gunicorn worker stays free.
    let upload = {
        let tcp = tcp.clone();
        std::thread::spawn(move || {
            let mut c = tcp.connect().unwrap();
            c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n")
                .unwrap();
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(100));
                c.write_all(b"u").unwrap();
            }
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    assert_eq!(get(&tcp, "/").unwrap().text(), "ok");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a GET waited {took:?} behind an upload"
    );
    let uploaded = upload.join().unwrap();
    assert!(uploaded.ends_with("uuuuuuuuuuuuuuuuuuuu"), "{uploaded}");

    // One slow request holds the only process (max_concurrency = 1): the
    // next waits in rsvisor, and gets 503 after queue_timeout.
    let slow = {
        let tcp = tcp.clone();
        std::thread::spawn(move || get(&tcp, "/slow").map(|r| r.status))
    };
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let r = get(&tcp, "/").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(slow.join().unwrap().unwrap(), 200);
    // The front answers its own readiness (ready_path), not an app process.
    assert_eq!(get(&tcp, "/ready").unwrap().status, 200);
    // The four answers of the app process are counted for it; the 503 (no
    // app process was asked) and the readiness answer for the front; none
    // twice.
    s.wait_status(
        "requests counted where they were answered",
        Duration::from_secs(10),
        |st| {
            let app: u64 = st.workers.iter().map(|w| w.requests).sum();
            let front: u64 = st.fronts.iter().map(|w| w.requests).sum();
            app == 4 && front == 2
        },
    );
}

/// A sync worker writes a 32 MiB answer to a client that reads nothing
/// yet: the front reads it ahead (`app.response_buffer`), so the only
/// worker (`max_concurrency = 1`) is free for the next request at once,
/// and the slow client still gets every byte. With `response_buffer = 0`
/// the worker would be held until the client read, and the next request
/// would get 503 after `queue_timeout`.
#[test]
fn a_slow_reader_of_a_large_answer_holds_no_sync_worker() {
    if !have_venv() {
        return;
    }
    const BIG: usize = 32 << 20;
    let (_s, tcp) = one_sync_worker(
        "max_concurrency = 1\nqueue_timeout = 10\nresponse_buffer = \"64MiB\"",
        &format!(
            "def app(environ, start_response):\n    \
             body = b'0123456789abcdef' * ({BIG} // 16) if environ['PATH_INFO'] == '/big' else b'ok'\n    \
             start_response('200 OK', [('Content-Length', str(len(body)))])\n    \
             return [body]\n"
        ),
    );

    let mut slow = tcp.connect().unwrap();
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The answer has begun (the worker took the request); 12 bytes of it
    // are read, no more yet. The next request is answered by the same, only
    // worker (a 503 after queue_timeout if the first still held it).
    let mut out = vec![0; 12];
    slow.read_exact(&mut out).unwrap();
    assert_eq!(out, b"HTTP/1.1 200");
    let r = get(&tcp, "/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");

    slow.read_to_end(&mut out).unwrap();
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&out[..at]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {BIG}")), "{head}");
    let body = &out[at..];
    assert_eq!(body.len(), BIG);
    assert!(
        body.chunks(16).all(|c| c == b"0123456789abcdef"),
        "every byte in order"
    );
}

#[test]
fn proxy_configs_that_would_fail_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 6] = [
        (
            "mode = \"proxy\"\ncommand = [\"/bin/sh\", \"{socket}\"]\nsocket_dir = \"/nonexistent/run\"",
            "is not a directory rsvisor can create its socket directory in",
        ),
        (
            "mode = \"proxy\"\ncommand = [\"uvicorn\", \"app:app\"]",
            "proxy mode needs {socket}",
        ),
        (
            "mode = \"proxy\"\ncommand = [\"uvicorn\", \"--fd\", \"{fd}\", \"--uds\", \"{socket}\", \"app:app\"]",
            "gets no listening descriptor",
        ),
        (
            "command = [\"uvicorn\", \"--uds\", \"{socket}\", \"app:app\"]",
            "{socket} is an app process's own socket in proxy mode",
        ),
        ("mode = \"proxy\"", "which is not set"),
        (
            "mode = \"proxy\"\ncommand = [\"uvicorn\", \"--uds\", \"{socket}\", \"app:app\"]\nsocket_dir = \"/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
            "choose a shorter directory",
        ),
    ];
    for (app, want) in cases {
        let cfg = dir.path().join("app.toml");
        std::fs::write(&cfg, format!("[app]\n{app}\n")).unwrap();
        let (code, _, err) = run(
            &rsvisor_bin(),
            &["check", &cfg.display().to_string()],
            dir.path(),
            &[],
        );
        assert_eq!(code, 2, "{app}: {err}");
        assert!(err.contains(want), "{app}: {err}");
        assert!(err.contains("app.toml:"), "{err}");
    }
}

/// An async handler that blocks uvicorn's event loop: its request gets 504
/// after `lifecycle.timeout`, the forensics event names the Python
/// function and the request, and a fresh process serves.
#[test]
fn a_process_whose_event_loop_is_blocked_gets_504_forensics_and_a_replacement() {
    if !have_venv() {
        return;
    }
    let b = uvicorn_proxy(1, "timeout = 2", "[log]\nformat = \"json\"");
    std::fs::write(
        b.dir().join("app.py"),
        "import os, time\n\n\
         def blocks_the_event_loop():\n    time.sleep(60)\n\n\
         async def app(scope, receive, send):\n\
         \x20   if scope['type'] != 'http':\n        return\n\
         \x20   if scope['path'] == '/block':\n        blocks_the_event_loop()\n\
         \x20   body = str(os.getpid()).encode()\n\
         \x20   await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n\
         \x20   await send({'type': 'http.response.body', 'body': body})\n",
    )
    .unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    s.wait_settled(Duration::from_secs(30));
    let first = get(&tcp, "/").unwrap().text();
    let t0 = Instant::now();
    let r = get(&tcp, "/block?secret=1").unwrap();
    assert_eq!(r.status, 504);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let event = wait_json_event(&s, "worker forensics", Duration::from_secs(20));
    let f = &event["fields"];
    assert_eq!(f["trigger"], "stalled", "{event}");
    let stacks = f["backtrace"].as_str().unwrap();
    assert!(stacks.contains("blocks_the_event_loop ("), "{stacks}");
    let in_flight = f["in_flight"].as_str().unwrap();
    assert!(in_flight.starts_with("GET /block ("), "{in_flight}");
    // A fresh process answers.
    let st = s.wait_status("the replacement", Duration::from_secs(30), |st| {
        settled(st) && st.workers.iter().all(|w| w.pid.to_string() != first)
    });
    let now = get(&tcp, "/").unwrap();
    assert_eq!(now.status, 200);
    assert_ne!(now.text(), first, "{st:?}");
}

/// An ASGI app whose WebSocket echoes each message (`echo:TEXT`), and
/// whose HTTP answer is a stream of two server-sent events 2 s apart.
const ECHO_AND_EVENTS_APP: &str = "import asyncio\n\n\
     async def app(scope, receive, send):\n\
     \x20   if scope['type'] == 'websocket':\n\
     \x20       await receive()\n\
     \x20       await send({'type': 'websocket.accept'})\n\
     \x20       while True:\n\
     \x20           m = await receive()\n\
     \x20           if m['type'] != 'websocket.receive':\n\
     \x20               return\n\
     \x20           await send({'type': 'websocket.send', 'text': 'echo:' + m.get('text', '')})\n\
     \x20   if scope['type'] != 'http':\n        return\n\
     \x20   await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'text/event-stream')]})\n\
     \x20   await send({'type': 'http.response.body', 'body': b'data: 1\\n\\n', 'more_body': True})\n\
     \x20   await asyncio.sleep(2)\n\
     \x20   await send({'type': 'http.response.body', 'body': b'data: 2\\n\\n'})\n";

/// A WebSocket and a stream of server-sent events through the front: the
/// events arrive as uvicorn writes them, the socket echoes, and on a
/// reload the old process closes it with a close frame (not a cut).
#[test]
fn websockets_and_streams_pass_through_and_are_closed_cleanly_on_a_reload() {
    use crate::apps::{ws_ask, ws_connect, ws_end};
    if !have_venv() {
        return;
    }
    let mut s = echo_app_behind_the_front("");
    let tcp = s.ready_tcp();

    // The first event arrives before the handler sleeps through its second.
    let mut c = tcp.connect().unwrap();
    c.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: 1") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );

    let rt = rt();
    rt.block_on(async {
        let mut ws = ws_connect(&tcp, "/ws").await;
        assert_eq!(ws_ask(&mut ws, "hi").await, "echo:hi");
        let cfg = s.config.display().to_string();
        let dir = s.dir.path().to_path_buf();
        let reload =
            tokio::task::spawn_blocking(move || run(&rsvisor_bin(), &["reload", &cfg], &dir, &[]));
        let end = ws_end(&mut ws, Duration::from_secs(30)).await;
        assert!(end.is_ok(), "{end:?}");
        let (code, out, err) = reload.await.unwrap();
        assert_eq!(code, 0, "{out}{err}");
        // A new socket reaches the new process.
        let mut ws = ws_connect(&tcp, "/ws").await;
        assert_eq!(ws_ask(&mut ws, "again").await, "echo:again");
    });
}

/// An app process that never listens on its socket: a boot timeout that
/// says so, and the master gives up (exit 3) instead of looping.
/// A proxied WebSocket on which nothing moves is closed at
/// `http.upgrade_idle_timeout` and counted, like a native one; one that
/// keeps talking stays open.
#[test]
fn a_proxied_websocket_that_moves_nothing_is_closed_at_upgrade_idle_timeout() {
    if !have_venv() {
        return;
    }
    let mut s = echo_app_behind_the_front("[http]\nupgrade_idle_timeout = 2\n");
    crate::apps::silent_websocket_is_closed_and_talker_kept(&s.ready_tcp(), "echo:");
}

/// One uvicorn process serving [`ECHO_AND_EVENTS_APP`] behind the front.
fn echo_app_behind_the_front(extra: &str) -> Server {
    let b = uvicorn_proxy(1, "", extra);
    std::fs::write(b.dir().join("app.py"), ECHO_AND_EVENTS_APP).unwrap();
    let mut s = b.start();
    s.ready_tcp();
    s.wait_settled(Duration::from_secs(30));
    s
}

#[test]
fn an_app_that_never_creates_its_socket_times_out_with_a_clear_message() {
    if !have_venv() {
        return;
    }
    let python = venv_bin("python").display().to_string();
    let mut s = one_process(
        &format!(r#"[{python:?}, "-c", "import sys, time; time.sleep(600)", "{{socket}}"]"#),
        "[lifecycle]\ntimeout = 2",
        "",
    )
    .start();
    let st = s.expect_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(3), "{}", s.log_text());
    let log = s.log_text();
    assert!(
        log.contains("its socket never accepted a connection") && log.contains("app-"),
        "{log}"
    );
}

/// A raw app on its socket that answers garbage to `/garbage` and dies in
/// the middle of `/die`'s body: a 502 for the first request only, a cut
/// stream for the second (never a complete-looking answer), both counted,
/// and the next requests served.
#[test]
fn garbage_and_a_death_mid_response_cost_only_their_own_request() {
    if !have_venv() {
        return;
    }
    let python = venv_bin("python").display().to_string();
    let b = one_process(&format!(r#"[{python:?}, "raw.py", "{{socket}}"]"#), "", "");
    std::fs::write(
        b.dir().join("raw.py"),
        r#"import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(16)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    if not data:
        c.close()
        continue
    path = data.split(b" ")[1]
    if path == b"/garbage":
        c.sendall(b"this is not HTTP\r\n\r\n")
    elif path == b"/die":
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        os._exit(1)
    else:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
"#,
    )
    .unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    s.wait_settled(Duration::from_secs(30));
    assert_eq!(get(&tcp, "/").unwrap().text(), "ok");
    assert_eq!(get(&tcp, "/garbage").unwrap().status, 502);
    assert_eq!(get(&tcp, "/").unwrap().text(), "ok");
    // An app that answers without reading a body bigger than the socket's
    // buffers: that request is answered (its answer, or 502 when the
    // closed socket cut the body's write first), the next ones served.
    let big = vec![b'x'; 2 << 20];
    let status = request(&tcp, "POST", "/noread", &big).unwrap().status;
    assert!(status == 200 || status == 502, "{status}");
    assert_eq!(get(&tcp, "/").unwrap().text(), "ok");
    // The body stops at 10 of 100 bytes: the connection is cut.
    let mut c = tcp.connect().unwrap();
    c.write_all(b"GET /die HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("0123456789"), "{text}");
    // The process that died is replaced, and serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&tcp, "/").map(|r| r.text()).ok().as_deref() != Some("ok") {
        assert!(Instant::now() < deadline, "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = get(&tcp, "/metrics").unwrap().text();
    assert!(
        metric(&metrics, "rsvisor_http_responses_total{code=\"5xx\"}") >= 1.0,
        "{metrics}"
    );
    // Over HTTP/2 the death resets that stream only: the connection
    // carries the next request once a new process serves.
    let Target::Tcp(addr) = tcp.clone() else {
        unreachable!()
    };
    let (head, body, after) = rt().block_on(async {
        let conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (client, conn) = h2::client::handshake(conn).await.unwrap();
        tokio::spawn(conn);
        let get = |path: &str| {
            let client = client.clone();
            let uri = format!("http://{addr}{path}");
            async move {
                let mut client = client.ready().await.map_err(|e| e.to_string())?;
                let req = http::Request::get(uri).body(()).unwrap();
                let (resp, _) = client.send_request(req, true).map_err(|e| e.to_string())?;
                let resp = resp.await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    match chunk {
                        Ok(c) => got.extend_from_slice(&c),
                        Err(e) => return Ok((status, Err((e.is_reset(), got)))),
                    }
                }
                Ok::<_, String>((status, Ok(got)))
            }
        };
        let died = tokio::time::timeout(Duration::from_secs(20), get("/die"))
            .await
            .expect("an answer to /die over HTTP/2")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let after = loop {
            let r = get("/").await.unwrap();
            if r.0 == 200 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (died.0, died.1, after)
    });
    assert_eq!(head, 200);
    match body {
        Err((reset, got)) => {
            assert!(reset, "the stream ended by a reset");
            assert!(got.len() < 100, "{} bytes", got.len());
        }
        Ok(got) => panic!("a cut body looked complete: {got:?}"),
    }
    assert_eq!(after, (200, Ok(b"ok".to_vec())), "{}", s.log_text());
}

/// The same hang in a gunicorn sync worker (under its arbiter, which
/// handles SIGABRT itself): py-spy reads the worker's stack.
#[test]
fn a_hung_gunicorn_sync_view_is_dumped_through_its_arbiter() {
    if !have_in_venv(&["gunicorn", "py-spy"]) {
        return;
    }
    let gunicorn = venv_bin("gunicorn").display().to_string();
    let b = one_process(
        &format!(r#"[{gunicorn:?}, "--workers", "1", "--bind", "unix:{{socket}}", "wsgi:app"]"#),
        "[lifecycle]\ntimeout = 2\n[log]\nformat = \"json\"",
        "",
    );
    std::fs::write(
        b.dir().join("wsgi.py"),
        "import time\n\ndef stuck_in_the_view():\n    time.sleep(60)\n\n\
         def app(environ, start_response):\n\
         \x20   if environ['PATH_INFO'] == '/block':\n        stuck_in_the_view()\n\
         \x20   start_response('200 OK', [('Content-Length', '2')])\n\
         \x20   return [b'ok']\n",
    )
    .unwrap();
    let mut s = b.start();
    let tcp = s.ready_tcp();
    assert_eq!(get(&tcp, "/block").unwrap().status, 504);
    let event = wait_json_event(&s, "worker forensics", Duration::from_secs(20));
    let f = &event["fields"];
    assert_eq!(f["stacks"], "py-spy dump", "{event}");
    let stacks = f["backtrace"].as_str().unwrap();
    assert!(stacks.contains("stuck_in_the_view (wsgi.py:4)"), "{stacks}");
    // Replaced: the next request is answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&tcp, "/").map(|r| r.text()).ok().as_deref() != Some("ok") {
        assert!(Instant::now() < deadline, "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}
