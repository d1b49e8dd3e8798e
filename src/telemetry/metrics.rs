//! Prometheus text exposition of the whole fleet, rendered from the
//! scoreboard by whichever worker answers the scrape.
//!
//! Every metric is one row of [`METRICS`]: its name, type, help, labels
//! and where its value comes from. [`render`] walks the table, the metrics
//! table of docs/monitoring.md is generated from it, and a test checks the
//! Grafana dashboard and the alert rules against it.
//!
//! Counters include every worker that ever ran (a retired worker's counts
//! are folded into the fleet totals), so they never go backwards across
//! recycling and reloads. Per-worker gauges are labelled by scoreboard
//! slot (`worker="3"`), never by pid, to keep cardinality bounded.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::os::procfs::ProcStats;
use crate::proto::outcome::{AcceptError, ConnError, ExitReason, ReloadResult, TlsFailure};
use crate::shm::scoreboard::{
    Board, CountersSnapshot, Slot, SlotState, LATENCY_BOUNDS_US, METHOD_CLASSES, PROTOCOLS,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: counts stay integers in the text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(n) => write!(f, "{n}"),
            Num::Float(x) => write!(f, "{x}"),
        }
    }
}

/// What one scrape reads, once.
pub struct Scrape<'a> {
    board: &'a Board,
    totals: CountersSnapshot,
    /// App workers in use, with their slot numbers.
    live: Vec<(usize, &'a Slot)>,
    now_ms: u64,
    master: Option<ProcStats>,
}

/// Where a metric's samples come from.
pub enum Source {
    /// One sample without labels (none when the value is unknown).
    One(fn(&Scrape) -> Option<Num>),
    /// One sample per value of the label.
    ByLabel(fn(&Scrape) -> Vec<(String, Num)>),
    /// One sample per live worker, labelled `worker` (none for a worker
    /// the value does not apply to).
    PerWorker(fn(&Slot, u64) -> Option<Num>),
    /// The request latency histogram.
    Latency,
}

/// One metric.
pub struct Metric {
    pub name: &'static str,
    /// Counts what rsvisor's own workers see of requests and connections:
    /// left out where they see none (exec mode, whose programs serve the
    /// clients), so that absent means "not known" rather than 0.
    pub traffic: bool,
    pub kind: Kind,
    pub help: &'static str,
    /// The label and its values, as docs/monitoring.md says them (read by
    /// the test that generates that table).
    #[cfg_attr(not(test), allow(dead_code))]
    pub labels: &'static str,
    pub source: Source,
}

fn int(n: u64) -> Option<Num> {
    Some(Num::Int(n))
}

fn labelled<T: std::fmt::Display>(
    label: &str,
    pairs: impl IntoIterator<Item = (T, u64)>,
) -> Vec<(String, Num)> {
    pairs
        .into_iter()
        .map(|(v, n)| (format!("{label}=\"{v}\""), Num::Int(n)))
        .collect()
}

/// Every metric rsvisor exports, in the order of the exposition.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "rsvisor_build_info",
        traffic: false,
        kind: Kind::Gauge,
        help: "Version of rsvisor.",
        labels: "`version`",
        source: Source::ByLabel(|_| labelled("version", [(env!("CARGO_PKG_VERSION"), 1)])),
    },
    Metric {
        name: "rsvisor_http_requests_total",
        traffic: true,
        kind: Kind::Counter,
        help: "HTTP requests answered by all workers, past and present.",
        labels: "",
        source: Source::One(|s| int(s.totals.requests)),
    },
    Metric {
        name: "rsvisor_http_responses_total",
        traffic: true,
        kind: Kind::Counter,
        help: "HTTP responses by status class.",
        labels: "`code` = `1xx`…`5xx`",
        source: Source::ByLabel(|s| {
            labelled(
                "code",
                s.totals
                    .status
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("{}xx", i + 1), *n)),
            )
        }),
    },
    Metric {
        name: "rsvisor_http_requests_by_method_total",
        traffic: true,
        kind: Kind::Counter,
        help: "HTTP requests by method.",
        labels: "`method` (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, other)",
        source: Source::ByLabel(|s| {
            labelled(
                "method",
                METHOD_CLASSES.iter().zip(s.totals.methods.iter().copied()),
            )
        }),
    },
    Metric {
        name: "rsvisor_http_requests_by_protocol_total",
        traffic: true,
        kind: Kind::Counter,
        help: "HTTP requests by the protocol the client used.",
        labels: "`protocol` = h1 (HTTP/1.0 and 1.1), h2, h3",
        source: Source::ByLabel(|s| {
            labelled(
                "protocol",
                PROTOCOLS.iter().zip(s.totals.protocols.iter().copied()),
            )
        }),
    },
    Metric {
        name: "rsvisor_http_early_data_requests_total",
        traffic: true,
        kind: Kind::Counter,
        help: "HTTP/3 requests served from TLS early data (0-RTT, tls.early_data) before the \
               handshake completed.",
        labels: "",
        source: Source::One(|s| int(s.totals.early_data)),
    },
    Metric {
        name: "rsvisor_http_response_body_bytes_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Response body bytes sent.",
        labels: "",
        source: Source::One(|s| int(s.totals.bytes_sent)),
    },
    Metric {
        name: "rsvisor_http_request_duration_seconds",
        traffic: true,
        kind: Kind::Histogram,
        help: "Time from a request's head to its response's head.",
        labels: "`le` (0.5 ms … 10 s)",
        source: Source::Latency,
    },
    Metric {
        name: "rsvisor_http_send_timeouts_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Responses ended because the client took nothing for http.send_timeout.",
        labels: "",
        source: Source::One(|s| int(s.totals.errors.send_timeouts)),
    },
    Metric {
        name: "rsvisor_http_upgrade_idle_timeouts_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Upgraded connections (WebSockets) closed because no byte moved for \
               http.upgrade_idle_timeout.",
        labels: "",
        source: Source::One(|s| int(s.totals.errors.upgrade_idle_timeouts)),
    },
    Metric {
        name: "rsvisor_connection_errors_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Connections that ended with a protocol or I/O error.",
        labels: "`kind` = http1 (malformed request), http2 (protocol error, our GOAWAY to a \
                 reset flood), http3 (protocol error, ours or the client's), io",
        source: Source::ByLabel(|s| {
            labelled(
                "kind",
                ConnError::ALL
                    .iter()
                    .map(|k| (k, s.totals.errors.conn[k.index()])),
            )
        }),
    },
    Metric {
        name: "rsvisor_accept_errors_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Failed accept() calls, by reason.",
        labels: "`reason` = descriptors (EMFILE/ENFILE), memory, other",
        source: Source::ByLabel(|s| {
            labelled(
                "reason",
                AcceptError::ALL
                    .iter()
                    .map(|r| (r, s.totals.errors.accept[r.index()])),
            )
        }),
    },
    Metric {
        name: "rsvisor_tls_handshake_failures_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Failed TLS handshakes, by reason.",
        labels: "`reason` = timeout, no_certificate, bad_certificate, protocol, io",
        source: Source::ByLabel(|s| {
            labelled(
                "reason",
                TlsFailure::ALL
                    .iter()
                    .map(|r| (r, s.totals.errors.tls[r.index()])),
            )
        }),
    },
    Metric {
        name: "rsvisor_log_lines_suppressed_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Log lines of the HTTP and TLS libraries (rustls, h2, hyper) a client can cause, \
               left out because the same line was written less than 10 s before.",
        labels: "",
        source: Source::One(|s| int(s.totals.errors.log_lines_suppressed)),
    },
    Metric {
        name: "rsvisor_access_log_write_errors_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Failed writes of access-log lines.",
        labels: "",
        source: Source::One(|s| int(s.totals.errors.access_log_write_errors)),
    },
    Metric {
        name: "rsvisor_access_log_dropped_lines_total",
        traffic: true,
        kind: Kind::Counter,
        help: "Access-log lines dropped because the writer could not keep up.",
        labels: "",
        source: Source::One(|s| int(s.totals.errors.access_log_dropped)),
    },
    Metric {
        name: "rsvisor_worker_exits_total",
        traffic: false,
        kind: Kind::Counter,
        help: "Workers that exited, by reason.",
        labels: "`reason` = crash, timeout, max_requests, memory, lifetime, reload, rollback \
                 (the canary of a rolled-back reload), scale_down, shutdown",
        source: Source::ByLabel(|s| {
            labelled(
                "reason",
                ExitReason::ALL.iter().map(|r| (r, s.board.exits(*r))),
            )
        }),
    },
    Metric {
        name: "rsvisor_reloads_total",
        traffic: false,
        kind: Kind::Counter,
        help: "Reloads, by result.",
        labels: "`result` = success, invalid_config, abandoned, rolled_back",
        source: Source::ByLabel(|s| {
            labelled(
                "result",
                ReloadResult::ALL.iter().map(|r| (r, s.board.reloads(*r))),
            )
        }),
    },
    Metric {
        name: "rsvisor_upgrades_total",
        traffic: false,
        kind: Kind::Counter,
        help: "Binary upgrades (USR2) completed.",
        labels: "",
        source: Source::One(|s| int(s.board.header.upgrades.load(Relaxed))),
    },
    Metric {
        name: "rsvisor_app_output_lines_dropped_total",
        traffic: false,
        kind: Kind::Counter,
        help: "Exec mode: lines of the workers' output left out of the log (over 1000 lines/s \
               per worker).",
        labels: "",
        source: Source::One(|s| int(s.board.header.app_output_dropped.load(Relaxed))),
    },
    Metric {
        name: "rsvisor_generation",
        traffic: false,
        kind: Kind::Gauge,
        help: "Current generation (incremented by each reload).",
        labels: "",
        source: Source::One(|s| int(s.board.generation().into())),
    },
    Metric {
        name: "rsvisor_workers",
        traffic: false,
        kind: Kind::Gauge,
        help: "Worker processes, by state.",
        labels: "`state` = booting, ready, retiring, draining",
        source: Source::ByLabel(|s| {
            let states = [
                SlotState::Booting,
                SlotState::Ready,
                SlotState::Retiring,
                SlotState::Draining,
            ];
            labelled(
                "state",
                states.map(|state| {
                    let n = s.live.iter().filter(|(_, w)| w.state() == state).count();
                    (state.name(), n as u64)
                }),
            )
        }),
    },
    Metric {
        name: "rsvisor_upgraded_connections",
        traffic: true,
        kind: Kind::Gauge,
        help: "Open connections that switched protocols (WebSockets), all workers.",
        labels: "",
        source: Source::One(|s| int(s.live.iter().map(|(_, w)| w.upgraded_connections()).sum())),
    },
    Metric {
        name: "rsvisor_worker_active_connections",
        traffic: true,
        kind: Kind::Gauge,
        help: "Open client connections of the worker in this slot.",
        labels: "`worker`",
        source: Source::PerWorker(|w, _| int(w.active_connections())),
    },
    Metric {
        name: "rsvisor_worker_upgraded_connections",
        traffic: true,
        kind: Kind::Gauge,
        help: "Of those, connections that switched protocols (WebSockets).",
        labels: "`worker`",
        source: Source::PerWorker(|w, _| int(w.upgraded_connections())),
    },
    Metric {
        name: "rsvisor_worker_resident_memory_bytes",
        traffic: false,
        kind: Kind::Gauge,
        help: "Resident memory of the worker in this slot (read by the master each second).",
        labels: "`worker`",
        source: Source::PerWorker(|w, _| int(w.rss())),
    },
    Metric {
        name: "rsvisor_worker_cpu_seconds",
        traffic: false,
        kind: Kind::Gauge,
        help: "CPU time of the worker in this slot (and, with app.command, what it started).",
        labels: "`worker`",
        source: Source::PerWorker(|w, _| Some(Num::Float(w.cpu_seconds()))),
    },
    Metric {
        name: "rsvisor_worker_event_loop_lag_seconds",
        traffic: false,
        kind: Kind::Gauge,
        help: "How late the worker's last heartbeat tick ran.",
        labels: "`worker`",
        source: Source::PerWorker(|w, _| Some(Num::Float(w.loop_lag_us() as f64 / 1e6))),
    },
    Metric {
        name: "rsvisor_worker_heartbeat_age_seconds",
        traffic: false,
        kind: Kind::Gauge,
        help: "Time since the worker's last heartbeat (absent for an exec worker without \
               WATCHDOG=1).",
        labels: "`worker` (absent for an exec worker that sends no `WATCHDOG=1`: nothing \
                 beats; `status` and `top` show `-`)",
        // Only where something beats.
        source: Source::PerWorker(|w, now_ms| {
            w.watched()
                .then(|| Num::Float(w.heartbeat_age_ms(now_ms) as f64 / 1e3))
        }),
    },
    Metric {
        name: "rsvisor_worker_memory_limit_bytes",
        traffic: false,
        kind: Kind::Gauge,
        help: "lifecycle.max_worker_memory of the worker in this slot (absent when unset).",
        labels: "`worker` (absent when unset: a ratio to 0 would be +Inf)",
        source: Source::PerWorker(|w, _| w.memory_limit().map(Num::Int)),
    },
    Metric {
        name: "rsvisor_master_resident_memory_bytes",
        traffic: false,
        kind: Kind::Gauge,
        help: "Resident memory of the master process.",
        labels: "",
        source: Source::One(|s| s.master.as_ref().map(|p| Num::Int(p.rss_bytes))),
    },
    Metric {
        name: "rsvisor_master_cpu_seconds_total",
        traffic: false,
        kind: Kind::Counter,
        help: "CPU time (user + system) of the master process.",
        labels: "",
        source: Source::One(|s| s.master.as_ref().map(|p| Num::Float(p.cpu_seconds))),
    },
    Metric {
        name: "rsvisor_master_start_time_seconds",
        traffic: false,
        kind: Kind::Gauge,
        help: "Start time of the master process, seconds since the Unix epoch.",
        labels: "",
        source: Source::One(|s| s.master.as_ref().map(|p| Num::Float(p.start_time_unix))),
    },
    Metric {
        name: "rsvisor_master_open_fds",
        traffic: false,
        kind: Kind::Gauge,
        help: "Open file descriptors of the master process.",
        labels: "",
        source: Source::One(|s| s.master.as_ref().map(|p| Num::Int(p.open_fds))),
    },
];

struct Out(String);

impl Out {
    fn family(&mut self, m: &Metric) {
        let (name, help, kind) = (m.name, m.help, m.kind.as_str());
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn latency(&mut self, name: &str, t: &CountersSnapshot) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += t.latency[i];
            let le = format!("le=\"{}\"", *bound as f64 / 1e6);
            self.sample(&bucket, &le, cumulative);
        }
        cumulative += t.latency[LATENCY_BOUNDS_US.len()];
        self.sample(&bucket, "le=\"+Inf\"", cumulative);
        let sum = t.latency_sum_us as f64 / 1e6;
        self.sample(&format!("{name}_sum"), "", sum);
        self.sample(&format!("{name}_count"), "", cumulative);
    }
}

/// The exposition; `traffic`: whether rsvisor's workers serve the clients
/// (false in exec mode, where the metrics helper renders it).
pub fn render(board: &Board, traffic: bool) -> String {
    let scrape = Scrape {
        board,
        totals: board.fleet_totals(),
        live: board
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_app_worker())
            .collect(),
        now_ms: crate::os::monotonic_ms(),
        master: crate::os::procfs::stats(nix::unistd::getppid().as_raw()),
    };
    let mut o = Out(String::with_capacity(8 * 1024));
    for m in METRICS.iter().filter(|m| traffic || !m.traffic) {
        o.family(m);
        match &m.source {
            Source::One(value) => {
                if let Some(v) = value(&scrape) {
                    o.sample(m.name, "", v);
                }
            }
            Source::ByLabel(values) => {
                for (labels, v) in values(&scrape) {
                    o.sample(m.name, &labels, v);
                }
            }
            Source::PerWorker(value) => {
                for (i, w) in &scrape.live {
                    if let Some(v) = value(w, scrape.now_ms) {
                        o.sample(m.name, &format!("worker=\"{i}\""), v);
                    }
                }
            }
            Source::Latency => o.latency(m.name, &scrape.totals),
        }
    }
    o.0
}

/// docs/monitoring.md's metrics table.
#[cfg(test)]
fn markdown_table() -> String {
    let mut out =
        String::from("| metric | type | labels | meaning | exec mode |\n|---|---|---|---|---|\n");
    for m in METRICS {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            m.name,
            m.kind.as_str(),
            m.labels,
            m.help,
            if m.traffic { "absent" } else { "yes" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn root() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// `rsvisor_…` names in a file, with histogram suffixes taken off.
    fn names_in(path: &str) -> BTreeSet<String> {
        let text = std::fs::read_to_string(root().join(path)).expect(path);
        let re = regex::Regex::new(r"rsvisor_[a-z0-9_]+").expect("regex");
        re.find_iter(&text)
            .map(|m| {
                let n = m.as_str();
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .unwrap_or(n)
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        let mut seen = BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} twice", m.name);
            if m.kind == Kind::Counter {
                assert!(m.name.ends_with("_total"), "{}", m.name);
            }
        }
    }

    #[test]
    fn the_dashboard_and_the_alert_rules_name_only_metrics_of_the_table() {
        let known: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
        for file in [
            "deploy/grafana/rsvisor.json",
            "deploy/prometheus/rsvisor-alerts.yml",
        ] {
            for name in names_in(file) {
                // Rule and dashboard names of our own, not metrics.
                if name.starts_with("rsvisor_alert") || known.contains(name.as_str()) {
                    continue;
                }
                panic!("{file} names {name}, which is not in METRICS");
            }
        }
    }

    #[test]
    fn the_docs_table_matches_the_metrics_table() {
        let path = root().join("docs/monitoring.md");
        let doc = std::fs::read_to_string(&path).expect("docs/monitoring.md");
        let (start, end) = ("<!-- metrics:start -->\n", "<!-- metrics:end -->");
        let (Some(a), Some(b)) = (doc.find(start), doc.find(end)) else {
            panic!("docs/monitoring.md lacks the metrics table markers");
        };
        let mut fresh = doc.clone();
        fresh.replace_range(a + start.len()..b, &markdown_table());
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, &fresh).expect("write docs/monitoring.md");
            return;
        }
        assert!(
            fresh == doc,
            "docs/monitoring.md's metrics table is out of date: run \
             `UPDATE_DOCS=1 cargo test --lib metrics` and commit the result"
        );
    }
}
