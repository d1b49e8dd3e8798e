//! The control-socket protocol, shared by the master and `rsvisor status` /
//! `rsvisor reload`: one request line (`status`, `reload`, `scale N`,
//! `dump SLOT`, `stop`), one JSON response line. Public, so that scripts and tools
//! written in Rust can read the master's answers with these types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto::outcome::{ExitReason, ReloadResult};
use crate::proto::state::{Phase, WorkerState};

/// The error a client gets when every control connection is taken by a
/// client waiting for an answer; the CLI retries on it.
pub const CONTROL_FULL: &str = "too many control connections; try again later";

/// Why a control line is not a request (sent back to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A word that is not a command.
    #[error("unknown command {0:?}; commands are status, reload, scale N, dump SLOT, stop")]
    Unknown(String),
    /// `dump` without a slot number.
    #[error("dump needs a slot number (see rsvisor status)")]
    Slot,
    /// `scale` without a count in range.
    #[error("scale needs a worker count between 1 and {max}", max = crate::config::MAX_WORKERS)]
    WorkerCount,
    /// More words than the command takes.
    #[error("unexpected words after {0:?}")]
    Trailing(String),
    /// Bytes that are not UTF-8.
    #[error("request is not UTF-8")]
    NotUtf8,
}

/// A line a client sends to the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `status`: the fleet as the master sees it.
    Status,
    /// `reload`: a health-gated reload; answered when it ends.
    Reload,
    /// `scale N`: run N workers until the next reload.
    Scale(usize),
    /// Stack dump of the worker in a slot (it is not stopped).
    Dump(usize),
    /// `stop`: a graceful stop, as on `TERM`.
    Stop,
}

impl Request {
    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Request, RequestError> {
        let mut words = line.split_whitespace();
        let req = match (words.next(), words.next()) {
            (Some("status"), None) => Request::Status,
            (Some("reload"), None) => Request::Reload,
            (Some("stop"), None) => Request::Stop,
            (Some("dump"), Some(n)) => Request::Dump(n.parse().map_err(|_| RequestError::Slot)?),
            (Some("scale"), Some(n)) => match n.parse::<usize>() {
                Ok(n) if (1..=crate::config::MAX_WORKERS).contains(&n) => Request::Scale(n),
                _ => return Err(RequestError::WorkerCount),
            },
            _ => return Err(RequestError::Unknown(line.trim().to_string())),
        };
        if words.next().is_some() {
            return Err(RequestError::Trailing(line.trim().to_string()));
        }
        Ok(req)
    }

    /// The line a client sends, newline included.
    pub fn line(&self) -> String {
        match self {
            Request::Status => "status\n".into(),
            Request::Reload => "reload\n".into(),
            Request::Scale(n) => format!("scale {n}\n"),
            Request::Dump(n) => format!("dump {n}\n"),
            Request::Stop => "stop\n".into(),
        }
    }
}

/// The master's answer: one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer to `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The result of a `reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    /// What was done, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The answer to `dump`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forensics: Option<Forensics>,
}

impl Response {
    /// A refusal saying why.
    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            status: None,
            reload: None,
            message: None,
            forensics: None,
        }
    }

    /// A success saying what was done.
    pub fn message(msg: impl Into<String>) -> Response {
        Response {
            ok: true,
            error: None,
            status: None,
            reload: None,
            message: Some(msg.into()),
            forensics: None,
        }
    }
}

/// The fleet as the master sees it (`rsvisor status --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The master's pid.
    pub master_pid: u32,
    /// rsvisor's version.
    pub version: String,
    /// What the master is doing.
    pub phase: Phase,
    /// The generation new workers start with.
    pub generation: u32,
    /// Workers the master keeps (`server.workers`, then TTIN/TTOU and `scale`).
    pub desired_workers: usize,
    /// Seconds since the master started.
    pub uptime_seconds: f64,
    /// The addresses the master listens on, as bound (a port 0 resolved).
    pub listeners: Vec<String>,
    /// `http.http3`: the UDP groups and where new connections go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http3: Vec<Http3Status>,
    /// Every worker, booting, serving or leaving (in proxy mode: the app
    /// processes).
    pub workers: Vec<WorkerStatus>,
    /// Proxy mode: the front workers that serve the clients (their
    /// requests are counted for the app process that answered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fronts: Vec<WorkerStatus>,
    /// Counts over the fleet's life.
    pub totals: Totals,
    /// The last reload this master ran, if any.
    pub last_reload: Option<ReloadReport>,
    /// The last binary upgrade this master started (USR2), if any.
    pub last_upgrade: Option<UpgradeReport>,
    /// The last workers that exited, newest first, with what was learnt
    /// about the ones stopped for missing their heartbeat.
    #[serde(default)]
    pub recent_exits: Vec<ExitReport>,
    /// A reload's canary under watch (`lifecycle.canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryReport>,
}

/// A worker that exited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitReport {
    /// Its pid.
    pub pid: u32,
    /// Its scoreboard slot.
    pub slot: usize,
    /// Its generation.
    pub generation: u32,
    /// Why it left.
    pub reason: ExitReason,
    /// How it ended (`exit code 0`, `killed by signal 6 (SIGABRT)`).
    pub status: String,
    /// Seconds since it exited.
    pub seconds_ago: f64,
    /// What it was doing, for a worker stopped for missing its heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forensics: Option<Forensics>,
}

/// What a worker was doing: taken before a worker that stopped answering
/// is aborted, or on request (`rsvisor dump`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Forensics {
    /// The worker's pid.
    pub pid: u32,
    /// Its scoreboard slot.
    pub slot: usize,
    /// `heartbeat` (missed it), `boot` (not ready in time) or `request`.
    pub trigger: String,
    /// Milliseconds since its last heartbeat.
    pub silent_ms: u64,
    /// Its resident memory.
    pub rss_bytes: u64,
    /// Its open descriptors.
    pub open_fds: u64,
    /// Its open client connections.
    pub active_connections: u64,
    /// Oldest first.
    pub in_flight: Vec<InFlightRequest>,
    /// Requests in flight the worker's table had no room for.
    pub in_flight_not_shown: u64,
    /// The heartbeat's thread first.
    pub threads: Vec<ThreadDump>,
    /// How the stacks were obtained: `rsvisor dump signal` (a forked
    /// worker), `py-spy dump` or `Python faulthandler (SIGABRT)` (an
    /// `app.command` worker); absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<String>,
    /// Why the stacks are missing or incomplete, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_error: Option<String>,
    /// From the dump signal to the last stack captured.
    pub capture_ms: u64,
    /// From the dump signal to this report.
    pub total_ms: u64,
}

/// A request a worker was serving.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InFlightRequest {
    /// The request method.
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// Milliseconds since its head arrived.
    pub running_ms: u64,
    /// The client's address.
    pub peer: String,
}

/// One thread's stack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadDump {
    /// Its thread id (0 when the source does not say: Python's
    /// faulthandler names threads by their pthread handle instead).
    pub tid: u32,
    /// Its name.
    pub name: String,
    /// It stamped the last heartbeat.
    pub heartbeat: bool,
    /// Innermost first: `function (file:line)`, or an address.
    pub frames: Vec<String>,
}

/// The canary of the reload in progress, against the previous generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CanaryReport {
    /// The canary worker's pid.
    pub pid: u32,
    /// Until the window ends (0 once it has passed).
    pub seconds_left: f64,
    /// Whether it passed (set when the window ends).
    pub passed: bool,
    /// Requests it answered in the window.
    pub requests: u64,
    /// Its share of 5xx answers.
    pub ratio_5xx: f64,
    /// Its p99 latency, once it has answered enough requests.
    pub p99_ms: Option<f64>,
    /// Requests the previous generation answered in the window.
    pub previous_requests: u64,
    /// Their share of 5xx answers.
    pub previous_ratio_5xx: f64,
    /// Their p99 latency.
    pub previous_p99_ms: Option<f64>,
}

/// One UDP address served over HTTP/3, as `rsvisor status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[non_exhaustive]
pub struct Http3Status {
    /// The UDP address (the TLS TCP listener's port).
    pub udp: String,
    /// Sockets in its `SO_REUSEPORT` group (one per scoreboard slot up to
    /// the highest that served).
    pub sockets: usize,
    /// The slots new connections go to.
    pub new_connection_slots: Vec<usize>,
    /// How datagrams are steered: `"classic BPF by connection ID"`, or why
    /// the kernel's hash decides instead.
    pub steering: String,
}

/// One worker as `rsvisor status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// Its scoreboard slot.
    pub slot: usize,
    /// Its pid.
    pub pid: u32,
    /// Its generation.
    pub generation: u32,
    /// What it is doing.
    pub state: WorkerState,
    /// Seconds since it was started.
    pub age_seconds: f64,
    /// Requests it answered.
    pub requests: u64,
    /// Its open client connections.
    pub active_connections: u64,
    /// Of those, connections that switched protocols (WebSockets).
    pub upgraded_connections: u64,
    /// Its resident memory (read each second).
    pub rss_bytes: u64,
    /// CPU time (user + system); in exec mode with what it started.
    pub cpu_seconds: f64,
    /// `None` for an exec worker that has not sent `WATCHDOG=1`: nothing
    /// beats, so there is no age to show.
    #[serde(default)]
    pub seconds_since_heartbeat: Option<f64>,
    /// How late its last heartbeat tick ran (event-loop lag).
    #[serde(default)]
    pub loop_lag_ms: f64,
    /// `lifecycle.max_worker_memory` of its generation, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
}

/// Counts over the fleet's life, retired workers included.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Requests answered.
    pub requests: u64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses_by_class: [u64; 5],
    /// Open client connections now.
    pub active_connections: u64,
    /// Of those, connections that switched protocols (WebSockets).
    pub upgraded_connections: u64,
    /// Workers that exited.
    pub worker_exits: u64,
    /// Worker exits by reason, since the master started.
    pub exits_by_reason: BTreeMap<ExitReason, u64>,
    /// Reloads by result, since the master started.
    pub reloads_by_result: BTreeMap<ReloadResult, u64>,
    /// Request durations since the master started: how many fell in each
    /// bucket (not cumulative), the last one open-ended.
    #[serde(default)]
    pub latency_histogram: Vec<u64>,
    /// The buckets' upper bounds in microseconds.
    #[serde(default)]
    pub latency_bounds_us: Vec<u64>,
}

/// How a reload ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    /// Its result.
    pub result: ReloadResult,
    /// The generation it started.
    pub generation: u32,
    /// Seconds since it ended.
    pub seconds_ago: f64,
    /// How long it took.
    pub duration_ms: u64,
    /// What happened, in words (why it failed, when it did).
    pub message: String,
}

/// How a binary upgrade (USR2) ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpgradeReport {
    /// The new master took over (this master is stopping), or it failed
    /// and this master serves on.
    pub ok: bool,
    /// The new master's pid.
    pub new_master_pid: u32,
    /// Seconds since it ended.
    pub seconds_ago: f64,
    /// What happened, in words.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Status),
            Just(Request::Reload),
            Just(Request::Stop),
            (1..=crate::config::MAX_WORKERS).prop_map(Request::Scale),
            any::<usize>().prop_map(Request::Dump),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn any_line_never_panics(line in any::<String>()) {
            let _ = Request::parse(&line);
        }

        #[test]
        fn lines_round_trip(r in request(), pad in "[ \t]{0,3}") {
            let line = format!("{pad}{}", r.line());
            prop_assert_eq!(Request::parse(&line), Ok(r));
        }

        #[test]
        fn scale_outside_the_limits_is_refused(n in (crate::config::MAX_WORKERS + 1)..usize::MAX) {
            let line = format!("scale {n}");
            prop_assert!(Request::parse(&line).is_err());
            prop_assert!(Request::parse("scale 0").is_err());
        }
    }
}
