//! `rsvisor status` and `rsvisor reload`: clients of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, Overrides};
use crate::proto::control::{Forensics, Request, Response, Status, ThreadDump};
use crate::proto::exit::Exit;

/// A reload waits for the new generation (and its canary window and the old
/// programs' graceful_timeout, added to this); bounded so a wedged master
/// does not hang a deploy script forever.
const RELOAD_WAIT_TIMEOUT: Duration = Duration::from_secs(600);
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{}: server.control_socket is not set; status and reload need it", .0.display())]
    NoSocket(std::path::PathBuf),
    #[error("cannot reach the master at {}: {source} (is rsvisor running with this config?)", path.display())]
    Connect {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the master answered something unexpected: {0}")]
    Protocol(String),
}

/// The control socket a config names.
pub fn socket_of(config: &Path) -> Result<(std::path::PathBuf, Config), CtlError> {
    let cfg = Config::load(config, &Overrides::default())?;
    let path = cfg
        .server
        .control_socket
        .clone()
        .ok_or_else(|| CtlError::NoSocket(config.to_path_buf()))?;
    Ok((path, cfg))
}

/// A connection to the master's control socket that may carry many
/// requests (`rsvisor top` keeps one open).
pub struct ControlClient {
    path: std::path::PathBuf,
    stream: BufReader<UnixStream>,
}

impl ControlClient {
    pub fn connect(path: &Path) -> Result<ControlClient, CtlError> {
        let stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ControlClient {
            path: path.to_path_buf(),
            stream: BufReader::new(stream),
        })
    }

    /// Sends one request and waits up to `timeout` for its answer.
    pub fn ask(&mut self, req: &Request, timeout: Duration) -> Result<Response, CtlError> {
        let io = |source| CtlError::Io {
            path: self.path.clone(),
            source,
        };
        let stream = self.stream.get_mut();
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        // The master may answer (and close) before reading, e.g. to refuse
        // a client: a failed write is reported only if no answer came.
        let written = stream.write_all(req.line().as_bytes());
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            Ok(_) => {
                return Err(io(written.err().unwrap_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed without an answer",
                    )
                })))
            }
            Err(e) => return Err(io(written.err().unwrap_or(e))),
        }
        serde_json::from_str(&line).map_err(|e| CtlError::Protocol(format!("{e}: {line:?}")))
    }
}

/// How long the CLI keeps trying to reach a master whose control socket
/// is momentarily full (or whose backlog is), before it gives up.
const CONNECT_RETRY: Duration = Duration::from_secs(5);
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(100);

fn ask(config: &Path, req: Request, timeout: Duration) -> Result<Response, CtlError> {
    let (path, cfg) = socket_of(config)?;
    let timeout = match req {
        // Exec workers of the old generation may drain for up to
        // graceful_timeout before the reload counts as done.
        Request::Reload => timeout + cfg.lifecycle.canary + cfg.lifecycle.graceful_timeout,
        _ => timeout,
    };
    let give_up = std::time::Instant::now() + CONNECT_RETRY;
    loop {
        let answer = ControlClient::connect(&path).and_then(|mut c| c.ask(&req, timeout));
        let busy = match &answer {
            Ok(r) => r.error.as_deref() == Some(crate::proto::control::CONTROL_FULL),
            Err(CtlError::Connect { source, .. }) => matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::WouldBlock
            ),
            Err(_) => false,
        };
        if !busy || std::time::Instant::now() >= give_up {
            return answer;
        }
        std::thread::sleep(CONNECT_RETRY_PAUSE);
    }
}

pub fn status(config: &Path, json: bool) -> Exit {
    match ask(config, Request::Status, STATUS_TIMEOUT) {
        Ok(Response {
            status: Some(s), ..
        }) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).unwrap_or_else(|e| e.to_string())
                );
            } else {
                print!("{}", table(&s));
            }
            Exit::Ok
        }
        Ok(other) => {
            eprintln!("rsvisor status: {}", other.error.unwrap_or_default());
            Exit::Failure
        }
        Err(e @ CtlError::Config(_)) => {
            eprintln!("rsvisor status: {e}");
            Exit::ConfigError
        }
        Err(e) => {
            eprintln!("rsvisor status: {e}");
            Exit::Failure
        }
    }
}

/// `rsvisor dump CONFIG SLOT`: the worker's stacks and requests in flight.
pub fn dump(config: &Path, slot: usize, json: bool) -> Exit {
    match ask(config, Request::Dump(slot), STATUS_TIMEOUT) {
        Ok(Response {
            forensics: Some(f), ..
        }) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&f).unwrap_or_else(|e| e.to_string())
                );
            } else {
                print!("{}", forensics_text(&f));
            }
            Exit::Ok
        }
        Ok(other) => {
            eprintln!("rsvisor dump: {}", other.error.unwrap_or_default());
            Exit::Failure
        }
        Err(e @ CtlError::Config(_)) => {
            eprintln!("rsvisor dump: {e}");
            Exit::ConfigError
        }
        Err(e) => {
            eprintln!("rsvisor dump: {e}");
            Exit::Failure
        }
    }
}

/// The innermost frame of the thread that was running: the heartbeat's
/// thread, Python's "Current thread" or py-spy's "active" one, else the
/// first thread with a stack.
fn innermost_frame(f: &Forensics) -> Option<&str> {
    let running = |t: &&ThreadDump| {
        t.heartbeat || t.name.starts_with("Current thread") || t.name.contains("(active")
    };
    let with_stack = || f.threads.iter().filter(|t| !t.frames.is_empty());
    with_stack()
        .find(running)
        .or_else(|| with_stack().next())
        .and_then(|t| t.frames.first())
        .map(String::as_str)
}

/// A dump as a person reads it.
pub fn forensics_text(f: &Forensics) -> String {
    let mut o = format!(
        "worker {} (slot {}): last heartbeat {} ms ago, RSS {}, {} open descriptors, {} \
         connections\n",
        f.pid,
        f.slot,
        f.silent_ms,
        mib(f.rss_bytes),
        f.open_fds,
        f.active_connections
    );
    if let Some(e) = &f.dump_error {
        o += &format!("{e}\n");
    }
    if let Some(how) = &f.stacks {
        o += &format!("stacks from: {how}\n");
    }
    o += &format!(
        "requests in flight: {}\n",
        f.in_flight.len() as u64 + f.in_flight_not_shown
    );
    for r in &f.in_flight {
        o += &format!(
            "  {} {}  {} ms  from {}\n",
            r.method, r.path, r.running_ms, r.peer
        );
    }
    if f.in_flight_not_shown > 0 {
        o += &format!("  … and {} more\n", f.in_flight_not_shown);
    }
    for t in &f.threads {
        let mark = if t.heartbeat {
            " (ran the heartbeat last)"
        } else {
            ""
        };
        o += &format!("\nthread {} {:?}{mark}\n", t.tid, t.name);
        for (i, fr) in t.frames.iter().enumerate() {
            o += &format!("  {i:>2}: {fr}\n");
        }
    }
    o
}

pub fn reload(config: &Path) -> Exit {
    match ask(config, Request::Reload, RELOAD_WAIT_TIMEOUT) {
        // The master would refuse this config the same way.
        Err(CtlError::Config(e)) => {
            eprintln!("rsvisor reload: {e}\nnothing was reloaded (the config is invalid)");
            Exit::ReloadFailed
        }
        Ok(resp) => {
            let report = resp.reload.as_ref();
            if resp.ok {
                let ms = report.map_or(0, |r| r.duration_ms);
                let generation = report.map_or(0, |r| r.generation);
                println!("reload complete: generation {generation} serving ({ms} ms)");
                Exit::Ok
            } else {
                eprintln!(
                    "rsvisor reload: {}",
                    resp.error.unwrap_or_else(|| "failed".into())
                );
                Exit::ReloadFailed
            }
        }
        Err(e) => {
            eprintln!("rsvisor reload: {e}");
            Exit::Failure
        }
    }
}

fn human_secs(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

pub fn table(s: &Status) -> String {
    let ready = s
        .workers
        .iter()
        .filter(|w| w.state == crate::proto::state::WorkerState::Ready)
        .count();
    let mut o = format!(
        "master {}  rsvisor {}  {}  generation {}  workers {}/{} ready  up {}\n",
        s.master_pid,
        s.version,
        s.phase,
        s.generation,
        ready,
        s.desired_workers,
        human_secs(s.uptime_seconds)
    );
    for h in &s.http3 {
        o += &format!(
            "http/3 udp {}: {} sockets, new connections to slots {:?}; steering: {}\n",
            h.udp, h.sockets, h.new_connection_slots, h.steering
        );
    }
    if let Some(r) = &s.last_reload {
        o += &format!(
            "last reload: {} ({} ms, {} ago): {}\n",
            r.result,
            r.duration_ms,
            human_secs(r.seconds_ago),
            r.message
        );
    }
    if let Some(c) = &s.canary {
        let p99 = |v: Option<f64>| v.map_or("-".into(), |ms| format!("{ms:.1} ms"));
        o += &format!(
            "canary: pid {} {}, {} requests, 5xx {:.1}%, p99 {} (previous generation: {} \
             requests, 5xx {:.1}%, p99 {})\n",
            c.pid,
            if c.passed {
                "passed".to_string()
            } else {
                format!("{} left", human_secs(c.seconds_left))
            },
            c.requests,
            c.ratio_5xx * 100.0,
            p99(c.p99_ms),
            c.previous_requests,
            c.previous_ratio_5xx * 100.0,
            p99(c.previous_p99_ms)
        );
    }
    o += &format!(
        "requests {}  (2xx {}, 4xx {}, 5xx {})  connections {} ({} upgraded)  worker exits {}\n\n",
        s.totals.requests,
        s.totals.responses_by_class[1],
        s.totals.responses_by_class[3],
        s.totals.responses_by_class[4],
        s.totals.active_connections,
        s.totals.upgraded_connections,
        s.totals.worker_exits
    );
    o += &format!(
        "{:<4} {:<7} {:<3} {:<8} {:<6} {:>9} {:>5} {:>10} {:>7} {:>9}\n",
        "SLOT", "PID", "GEN", "STATE", "AGE", "REQUESTS", "CONNS", "RSS", "CPU", "HEARTBEAT"
    );
    let fronts_title = (!s.fronts.is_empty()).then_some(
        "front workers (proxy mode; their requests are counted for the app process that \
         answered):\n",
    );
    for (i, w) in s.workers.iter().chain(&s.fronts).enumerate() {
        if i == s.workers.len() {
            o += "\n";
            o += fronts_title.unwrap_or_default();
        }
        o += &format!(
            "{:<4} {:<7} {:<3} {:<8} {:<6} {:>9} {:>5} {:>10} {:>6.1}s {:>9}\n",
            w.slot,
            w.pid,
            w.generation,
            // As a string: the enum's Display does not pad.
            w.state.to_string(),
            human_secs(w.age_seconds),
            w.requests,
            w.active_connections,
            mib(w.rss_bytes),
            w.cpu_seconds,
            w.seconds_since_heartbeat
                .map_or("-".to_string(), |s| format!("{s:.1}s"))
        );
    }
    if !s.recent_exits.is_empty() {
        o += "\nrecent exits:\n";
    }
    for e in &s.recent_exits {
        o += &format!(
            "  pid {} slot {} gen {}: {} ({}), {} ago\n",
            e.pid,
            e.slot,
            e.generation,
            e.reason,
            e.status,
            human_secs(e.seconds_ago)
        );
        if let Some(f) = &e.forensics {
            let oldest = f
                .in_flight
                .first()
                .map_or("no request in flight".into(), |r| {
                    format!("{} {} running {} ms", r.method, r.path, r.running_ms)
                });
            let stacks = match (&f.dump_error, innermost_frame(f)) {
                (Some(e), _) => e.clone(),
                (None, Some(frame)) => format!("stuck in {frame}"),
                (None, None) => "stacks obtained".into(),
            };
            o += &format!(
                "    silent {} ms; {oldest}; {stacks} (rsvisor status --json shows the stacks)\n",
                f.silent_ms
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(name: &str, frames: &[&str]) -> ThreadDump {
        ThreadDump {
            tid: 0,
            name: name.into(),
            heartbeat: false,
            frames: frames.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn the_running_threads_innermost_frame_names_where_a_worker_was_stuck() {
        let mut f: Forensics = serde_json::from_value(serde_json::json!({
            "pid": 1, "slot": 0, "trigger": "heartbeat", "silent_ms": 0, "rss_bytes": 0,
            "open_fds": 0, "active_connections": 0, "in_flight": [], "in_flight_not_shown": 0,
            "threads": [], "capture_ms": 0, "total_ms": 0
        }))
        .unwrap();
        assert_eq!(innermost_frame(&f), None);
        // Python's faulthandler lists the other threads before the one
        // that was running.
        f.threads = vec![
            thread("Thread 0x01", &["wait (threading.py:320)"]),
            thread(
                "Current thread 0x02",
                &["handler (app.py:3)", "app (app.py:7)"],
            ),
        ];
        assert_eq!(innermost_frame(&f), Some("handler (app.py:3)"));
        f.threads = vec![
            thread("MainThread (idle, process 5)", &[]),
            thread("worker (idle, process 5)", &["select (selectors.py:1)"]),
        ];
        assert_eq!(innermost_frame(&f), Some("select (selectors.py:1)"));
    }
}
