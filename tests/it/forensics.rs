//! Hang forensics: a worker that stops beating is dumped (every thread's
//! stack, its requests in flight, RSS, descriptors) before it is aborted;
//! one that cannot answer (stopped) is killed anyway; `rsvisor dump`
//! shows a live worker without stopping it.

use std::time::{Duration, Instant};

use crate::util::*;

const HUNG: &str = r#"
[server]
bind = ["127.0.0.1:0"]
workers = 1
[lifecycle]
timeout = 2
[log]
format = "json"
"#;

/// Waits for the forensics event of a worker that was aborted.
fn wait_event(s: &mut Server, timeout: Duration) -> serde_json::Value {
    wait_json_event(s, "worker forensics", timeout)
}

#[test]
fn a_hung_worker_is_dumped_then_replaced() {
    let mut s = demo(HUNG).start();
    let tcp = s.ready_tcp();
    let before = s.worker_pids();
    let started = Instant::now();
    let client = {
        let tcp = tcp.clone();
        // The worker is killed under it: this request gets no answer.
        std::thread::spawn(move || get(&tcp, "/block?ms=20000").map(|r| r.status))
    };
    let event = wait_event(&mut s, Duration::from_secs(15));
    let took = started.elapsed();
    eprintln!(
        "forensics event {} ms after the request; capture {} ms; {} bytes of stacks",
        took.as_millis(),
        event["fields"]["capture_ms"],
        event["fields"]["bytes"]
    );
    let f = &event["fields"];
    assert_eq!(event["level"], "ERROR");
    let in_flight = f["in_flight"].as_str().unwrap();
    assert!(in_flight.starts_with("GET /block ("), "{in_flight}");
    assert_eq!(f["dump"], "obtained", "{event}");
    let stacks = f["backtrace"].as_str().unwrap();
    assert!(
        stacks.contains("demo::DemoHandler::other_routes") || stacks.contains("sleep"),
        "{stacks}"
    );
    // The heartbeat's thread comes first, starting where it was stopped
    // (the dump handler's own frames are left out).
    let first = stacks.lines().next().unwrap();
    assert!(first.contains("(ran the heartbeat last)"), "{stacks}");
    assert!(!stacks.contains("on_dump_signal"), "{stacks}");

    // Then the worker is replaced as before, and the exit is counted.
    let st = s.wait_status("the replacement", Duration::from_secs(15), |st| {
        settled(st) && st.totals.exits_by_reason[&ExitReason::Timeout] == 1
    });
    assert!(
        client.join().unwrap().is_err(),
        "the hung request got an answer"
    );
    assert_ne!(s.worker_pids(), before);
    let exit = st.recent_exits.first().expect("the exit is listed");
    assert_eq!(exit.reason, ExitReason::Timeout);
    let report = exit.forensics.as_ref().expect("forensics under the exit");
    assert_eq!(report.in_flight[0].method, "GET");
    assert_eq!(report.in_flight[0].path, "/block", "no query string");
    assert!(report.in_flight[0].running_ms >= 1_900, "{report:?}");
    assert!(report.in_flight[0].peer.starts_with("127.0.0.1:"));
    assert!(report.silent_ms >= 2_000, "{report:?}");
    assert!(report.rss_bytes > 0 && report.open_fds > 0, "{report:?}");
    assert_eq!(report.active_connections, 1);
    assert!(report.threads[0].heartbeat);
    assert!(report.dump_error.is_none());
    let metrics = get(&tcp, "/metrics").unwrap().text();
    assert!(
        metrics.contains("rsvisor_worker_exits_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
    // One event, not one per tick.
    assert_eq!(json_events(&s, "worker forensics").len(), 1);
}

#[test]
fn a_stopped_worker_is_killed_anyway_and_the_dump_says_why() {
    let mut s = demo(HUNG).start();
    s.ready_tcp();
    let pid = s.worker_pids()[0];
    let stopped = Instant::now();
    kill(pid, Signal::SIGSTOP);
    let st = s.wait_status("the stopped worker gone", Duration::from_secs(20), |st| {
        st.totals.exits_by_reason[&ExitReason::Timeout] == 1
    });
    let took = stopped.elapsed();
    // timeout (2 s) + a heartbeat interval + the documented bound (dump
    // 1 s + SIGKILL 1 s after SIGABRT + a master tick), with room for a
    // loaded machine.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    eprintln!(
        "stopped worker killed {} ms after SIGSTOP",
        took.as_millis()
    );
    let exit = &st.recent_exits[0];
    assert_eq!(exit.pid, pid as u32);
    assert!(exit.status.contains("signal 9"), "{}", exit.status);
    let event = wait_event(&mut s, Duration::from_secs(5));
    let dump = event["fields"]["dump"].as_str().unwrap();
    assert!(
        dump.contains("not obtained") && dump.contains("stopped"),
        "{dump}"
    );
    let st = s.wait_settled(Duration::from_secs(15));
    let report = st.recent_exits[0].forensics.as_ref().expect("forensics");
    assert!(report.threads.is_empty());
}

#[test]
fn rsvisor_dump_shows_a_live_worker_and_leaves_it_serving() {
    // The request stays in flight until the dumps are done: the app waits
    // for the rest of its body (a timed request could end while a dump
    // runs on a loaded machine).
    let mut s = demo(
        "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n[http]\nheader_read_timeout = 120\n",
    )
    .start();
    let tcp = s.ready_tcp();
    let st = s.wait_settled(Duration::from_secs(10));
    let (slot, pid) = (st.workers[0].slot, st.workers[0].pid);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let slow = {
        let tcp = tcp.clone();
        std::thread::spawn(move || -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut c = tcp.connect()?;
            c.write_all(b"POST /echo?x=secret HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n")?;
            c.write_all(b"Connection: close\r\n\r\npi")?;
            let _ = done_rx.recv_timeout(Duration::from_secs(120));
            c.write_all(b"ng")?;
            let mut out = Vec::new();
            c.read_to_end(&mut out)?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
    };
    s.wait_status("the request in flight", Duration::from_secs(10), |st| {
        st.workers[0].active_connections == 1
    });
    let cfg = s.config.display().to_string();
    let slot_arg = slot.to_string();
    let (code, out, err) = run(
        &rsvisor_bin(),
        &["dump", &cfg, &slot_arg, "--json"],
        s.dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let f: rsvisor::control::Forensics = serde_json::from_str(&out).expect("JSON");
    assert_eq!(f.pid, pid);
    assert_eq!(f.trigger, "request");
    assert!(f.dump_error.is_none(), "{f:?}");
    assert_eq!(f.in_flight.len(), 1, "{f:?}");
    assert_eq!(f.in_flight[0].path, "/echo");
    assert!(!f.threads.is_empty());
    // As text, for a person.
    let (code, out, _) = run(
        &rsvisor_bin(),
        &["dump", &cfg, &slot_arg],
        s.dir.path(),
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.contains("requests in flight: 1"), "{out}");
    assert!(out.contains("POST /echo"), "{out}");
    assert!(
        !out.contains("secret"),
        "the query stays out of a dump: {out}"
    );
    // Nothing was stopped: the request completes.
    done_tx.send(()).unwrap();
    let answer = slow.join().unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ping"), "{answer}");
    assert_eq!(s.worker_pids(), vec![pid as i32]);
    let (code, _, err) = run(&rsvisor_bin(), &["dump", &cfg, "99"], s.dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no worker in slot 99"), "{err}");
}
