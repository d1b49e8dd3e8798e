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
    #[error("unknown command {0:?}; commands are status, reload, scale N, dump SLOT, stop")]
    Unknown(String),
    #[error("dump needs a slot number (see rsvisor status)")]
    Slot,
    #[error("scale needs a worker count between 1 and {max}", max = crate::config::MAX_WORKERS)]
    WorkerCount,
    #[error("unexpected words after {0:?}")]
    Trailing(String),
    #[error("request is not UTF-8")]
    NotUtf8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Reload,
    Scale(usize),
    /// Stack dump of the worker in a slot (it is not stopped).
    Dump(usize),
    Stop,
}

impl Request {
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forensics: Option<Forensics>,
}

impl Response {
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub master_pid: u32,
    pub version: String,
    pub phase: Phase,
    pub generation: u32,
    pub desired_workers: usize,
    pub uptime_seconds: f64,
    /// The addresses the master listens on, as bound (a port 0 resolved).
    pub listeners: Vec<String>,
    pub workers: Vec<WorkerStatus>,
    pub totals: Totals,
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
    pub pid: u32,
    pub slot: usize,
    pub generation: u32,
    pub reason: ExitReason,
    /// How it ended (`exit code 0`, `killed by signal 6 (SIGABRT)`).
    pub status: String,
    pub seconds_ago: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forensics: Option<Forensics>,
}

/// What a worker was doing: taken before a worker that stopped answering
/// is aborted, or on request (`rsvisor dump`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Forensics {
    pub pid: u32,
    pub slot: usize,
    /// `heartbeat` (missed it), `boot` (not ready in time) or `request`.
    pub trigger: String,
    pub silent_ms: u64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub active_connections: u64,
    /// Oldest first.
    pub in_flight: Vec<InFlightRequest>,
    /// Requests in flight the worker's table had no room for.
    pub in_flight_not_shown: u64,
    /// The heartbeat's thread first.
    pub threads: Vec<ThreadDump>,
    /// Why the stacks are missing or incomplete, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_error: Option<String>,
    /// From the dump signal to the last stack captured.
    pub capture_ms: u64,
    /// From the dump signal to this report.
    pub total_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InFlightRequest {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub running_ms: u64,
    pub peer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadDump {
    pub tid: u32,
    pub name: String,
    /// It stamped the last heartbeat.
    pub heartbeat: bool,
    /// Innermost first: `function (file:line)`, or an address.
    pub frames: Vec<String>,
}

/// The canary of the reload in progress, against the previous generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CanaryReport {
    pub pid: u32,
    /// Until the window ends (0 once it has passed).
    pub seconds_left: f64,
    pub passed: bool,
    pub requests: u64,
    pub ratio_5xx: f64,
    pub p99_ms: Option<f64>,
    pub previous_requests: u64,
    pub previous_ratio_5xx: f64,
    pub previous_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: u32,
    pub generation: u32,
    pub state: WorkerState,
    pub age_seconds: f64,
    pub requests: u64,
    pub active_connections: u64,
    /// Of those, connections that switched protocols (WebSockets).
    pub upgraded_connections: u64,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub responses_by_class: [u64; 5],
    pub active_connections: u64,
    pub upgraded_connections: u64,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    pub result: ReloadResult,
    pub generation: u32,
    pub seconds_ago: f64,
    pub duration_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpgradeReport {
    /// The new master took over (this master is stopping), or it failed
    /// and this master serves on.
    pub ok: bool,
    pub new_master_pid: u32,
    pub seconds_ago: f64,
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
