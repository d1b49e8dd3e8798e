//! Python stacks in the forensics of `app.command` workers: a worker stuck
//! in Python code is dumped by py-spy (installed beside the app, as
//! `pip install py-spy` puts it) before it is aborted, or, without py-spy,
//! by Python's faulthandler, which the SIGABRT triggers (rsvisor sets
//! `PYTHONFAULTHANDLER=1`); `rsvisor dump` shows a live worker's Python
//! stack, through gunicorn's arbiter too, and leaves it serving.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// uvicorn, gunicorn, py-spy and Python, which `scripts/deps` installs
/// into tests/.venv.
fn have_venv() -> bool {
    have_in_venv(&["uvicorn", "gunicorn", "py-spy", "python"])
}

/// A module that blocks at import, in a function the report must name.
const STUCK_AT_IMPORT: &str = "import time\n\n\
def wait_for_the_database():\n    time.sleep(600)\n\n\
wait_for_the_database()\n\n\
async def app(scope, receive, send):\n    pass\n";

/// Python's own lines about the abort went into the event, not the log.
fn assert_no_stray_faulthandler_lines(s: &Server) {
    let log = s.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("Fatal Python error") || l.contains("most recent call first")),
        "{log}"
    );
}

fn stuck_server(command: &str, env: &str) -> ServerBuilder {
    ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[lifecycle]
timeout = 3
[log]
format = "json"
[app]
command = {command}
cwd = "{{dir}}"
ready = "log:Application startup complete"
{env}
"#
    ))
}

#[test]
fn a_python_app_stuck_at_startup_is_dumped_by_py_spy_before_it_is_killed() {
    if !have_venv() {
        return;
    }
    let uvicorn = venv_bin("uvicorn").display().to_string();
    let b = stuck_server(
        &format!("[{uvicorn:?}, \"--fd\", \"3\", \"stuck:app\"]"),
        "",
    );
    std::fs::write(b.dir().join("stuck.py"), STUCK_AT_IMPORT).unwrap();
    let mut s = b.start();
    let event = wait_json_event(&s, "worker forensics", Duration::from_secs(30));
    let f = &event["fields"];
    assert_eq!(event["level"], "ERROR", "{event}");
    assert_eq!(f["trigger"], "boot", "{event}");
    assert_eq!(f["stacks"], "py-spy dump", "{event}");
    assert_eq!(f["dump"], "obtained", "{event}");
    let stacks = f["backtrace"].as_str().unwrap();
    assert!(
        stacks.contains("wait_for_the_database (stuck.py:4)"),
        "{stacks}"
    );
    // It never started anywhere: the master gives up (exit 3) instead of
    // looping, and says why.
    let st = s.expect_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(3), "{}", s.log_text());
    assert_no_stray_faulthandler_lines(&s);
}

#[test]
fn without_py_spy_the_stacks_python_prints_at_sigabrt_are_the_report() {
    if !have_venv() {
        return;
    }
    // The interpreter alone, in a directory with no py-spy beside it, and
    // a PATH without one.
    let b = stuck_server(
        "[\"{dir}/python\", \"stuck.py\"]",
        "env = { PATH = \"/nonexistent\" }",
    );
    let real = std::fs::canonicalize(venv_bin("python")).unwrap();
    std::os::unix::fs::symlink(&real, b.dir().join("python")).unwrap();
    std::fs::write(b.dir().join("stuck.py"), STUCK_AT_IMPORT).unwrap();
    let mut s = b.start();
    let event = wait_json_event(&s, "worker forensics", Duration::from_secs(30));
    let f = &event["fields"];
    assert_eq!(f["stacks"], "Python faulthandler (SIGABRT)", "{event}");
    assert_eq!(f["dump"], "obtained", "{event}");
    let stacks = f["backtrace"].as_str().unwrap();
    assert!(
        stacks.contains("wait_for_the_database (") && stacks.contains("stuck.py:4)"),
        "{stacks}"
    );
    assert!(stacks.contains("py-spy is not installed"), "{stacks}");
    let st = s.expect_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(3), "{}", s.log_text());
    assert_no_stray_faulthandler_lines(&s);
}

/// A handler that says it started (a file appears), then blocks in a
/// function the dump must name.
fn write_blocking_app(dir: &Path, file: &str, body: &str) {
    std::fs::write(dir.join(file), body).unwrap();
}

/// Waits until the app's handler is running (it creates `marker`).
fn wait_for(marker: &Path, s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the handler never ran:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `rsvisor dump CONFIG SLOT --json` on the only worker.
fn dump(s: &Server) -> rsvisor::control::Forensics {
    let st = s.status().expect("status");
    let slot = st.workers[0].slot.to_string();
    let cfg = s.config.display().to_string();
    let (code, out, err) = run(
        &rsvisor_bin(),
        &["dump", &cfg, &slot, "--json"],
        s.dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("JSON")
}

fn frames(f: &rsvisor::control::Forensics) -> String {
    f.threads
        .iter()
        .flat_map(|t| t.frames.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn rsvisor_dump_shows_the_python_function_a_uvicorn_worker_is_in() {
    if !have_venv() {
        return;
    }
    let uvicorn = venv_bin("uvicorn").display().to_string();
    let b = ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[lifecycle]
graceful_timeout = 10
[app]
command = [{uvicorn:?}, "--fd", "3", "--no-access-log", "blocking:app"]
cwd = "{{dir}}"
ready = "log:Application startup complete"
"#
    ));
    write_blocking_app(
        b.dir(),
        "blocking.py",
        "import time\n\n\
         def stuck_in_handler():\n    open('in_handler', 'w').close()\n    time.sleep(3)\n\n\
         async def app(scope, receive, send):\n\
         \x20   if scope['type'] != 'http':\n        return\n\
         \x20   stuck_in_handler()\n\
         \x20   await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n\
         \x20   await send({'type': 'http.response.body', 'body': b'done'})\n",
    );
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let pids = s.worker_pids();
    let client = {
        let tcp = tcp.clone();
        std::thread::spawn(move || get(&tcp, "/").map(|r| r.text()))
    };
    wait_for(&s.dir.path().join("in_handler"), &s);
    let f = dump(&s);
    assert_eq!(f.trigger, "request");
    assert_eq!(f.stacks.as_deref(), Some("py-spy dump"), "{f:?}");
    assert!(f.dump_error.is_none(), "{f:?}");
    let stack = frames(&f);
    assert!(
        stack.contains("stuck_in_handler (blocking.py:5)"),
        "{stack}"
    );
    // A dump stops nothing: the request is answered by the same worker.
    assert_eq!(client.join().unwrap().expect("an answer"), "done");
    assert_eq!(s.worker_pids(), pids);
}

#[test]
fn rsvisor_dump_reaches_a_gunicorn_worker_under_its_arbiter() {
    if !have_venv() {
        return;
    }
    let gunicorn = venv_bin("gunicorn").display().to_string();
    let b = ServerBuilder::new(rsvisor_bin()).config(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[lifecycle]
graceful_timeout = 10
[app]
command = [{gunicorn:?}, "--workers", "1", "--bind", "fd://3", "wsgi:app"]
cwd = "{{dir}}"
ready = "log:Booting worker"
"#
    ));
    write_blocking_app(
        b.dir(),
        "wsgi.py",
        "import time\n\n\
         def stuck_in_view():\n    open('in_handler', 'w').close()\n    time.sleep(3)\n\n\
         def app(environ, start_response):\n\
         \x20   stuck_in_view()\n\
         \x20   start_response('200 OK', [('Content-Length', '4')])\n\
         \x20   return [b'done']\n",
    );
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let client = {
        let tcp = tcp.clone();
        std::thread::spawn(move || get(&tcp, "/").map(|r| r.text()))
    };
    wait_for(&s.dir.path().join("in_handler"), &s);
    let f = dump(&s);
    assert_eq!(f.stacks.as_deref(), Some("py-spy dump"), "{f:?}");
    let stack = frames(&f);
    assert!(stack.contains("stuck_in_view (wsgi.py:5)"), "{stack}");
    // The arbiter and its worker are both there, as processes of the dump.
    let processes: std::collections::BTreeSet<&str> = f
        .threads
        .iter()
        .filter_map(|t| t.name.rsplit("process ").next())
        .collect();
    assert!(processes.len() >= 2, "{f:?}");
    assert_eq!(client.join().unwrap().expect("an answer"), "done");
}
