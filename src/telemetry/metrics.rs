//! Prometheus text exposition of the whole fleet, rendered from the
//! scoreboard by whichever worker answers the scrape.
//!
//! Counters include every worker that ever ran (a retired worker's counts
//! are folded into the fleet totals), so they never go backwards across
//! recycling and reloads. Per-worker gauges are labelled by scoreboard
//! slot (`worker="3"`), never by pid, to keep cardinality bounded.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::proto::outcome::{AcceptError, ConnError, ExitReason, ReloadResult, TlsFailure};
use crate::shm::scoreboard::{Board, Slot, SlotState, LATENCY_BOUNDS_US, METHOD_CLASSES};

/// A per-worker gauge: name, help, how to read it from a slot at `now_ms`.
type PerWorker = (&'static str, &'static str, fn(&Slot, u64) -> f64);

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
}

pub fn render(board: &Board) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    let t = board.fleet_totals();
    let h = &board.header;

    o.family("rsvisor_build_info", "gauge", "Version of rsvisor.");
    o.sample(
        "rsvisor_build_info",
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );

    o.family(
        "rsvisor_http_requests_total",
        "counter",
        "HTTP requests answered by all workers, past and present.",
    );
    o.sample("rsvisor_http_requests_total", "", t.requests);

    o.family(
        "rsvisor_http_responses_total",
        "counter",
        "HTTP responses by status class.",
    );
    for (i, n) in t.status.iter().enumerate() {
        o.sample(
            "rsvisor_http_responses_total",
            &format!("code=\"{}xx\"", i + 1),
            n,
        );
    }

    o.family(
        "rsvisor_http_requests_by_method_total",
        "counter",
        "HTTP requests by method.",
    );
    for (name, n) in METHOD_CLASSES.iter().zip(&t.methods) {
        o.sample(
            "rsvisor_http_requests_by_method_total",
            &format!("method=\"{name}\""),
            n,
        );
    }

    o.family(
        "rsvisor_http_response_body_bytes_total",
        "counter",
        "Response body bytes sent.",
    );
    o.sample("rsvisor_http_response_body_bytes_total", "", t.bytes_sent);

    o.family(
        "rsvisor_http_request_duration_seconds",
        "histogram",
        "Time from a request's head to its response's head.",
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
        cumulative += t.latency[i];
        o.sample(
            "rsvisor_http_request_duration_seconds_bucket",
            &format!("le=\"{}\"", *bound as f64 / 1e6),
            cumulative,
        );
    }
    cumulative += t.latency[LATENCY_BOUNDS_US.len()];
    o.sample(
        "rsvisor_http_request_duration_seconds_bucket",
        "le=\"+Inf\"",
        cumulative,
    );
    o.sample(
        "rsvisor_http_request_duration_seconds_sum",
        "",
        t.latency_sum_us as f64 / 1e6,
    );
    o.sample(
        "rsvisor_http_request_duration_seconds_count",
        "",
        cumulative,
    );

    let e = &t.errors;
    o.family(
        "rsvisor_http_send_timeouts_total",
        "counter",
        "Responses ended because the client took nothing for http.send_timeout.",
    );
    o.sample("rsvisor_http_send_timeouts_total", "", e.send_timeouts);
    o.family(
        "rsvisor_http_upgrade_idle_timeouts_total",
        "counter",
        "Upgraded connections (WebSockets) closed because no byte moved for http.upgrade_idle_timeout.",
    );
    o.sample(
        "rsvisor_http_upgrade_idle_timeouts_total",
        "",
        e.upgrade_idle_timeouts,
    );
    o.family(
        "rsvisor_connection_errors_total",
        "counter",
        "Connections that ended with a protocol or I/O error.",
    );
    for k in ConnError::ALL {
        o.sample(
            "rsvisor_connection_errors_total",
            &format!("kind=\"{k}\""),
            e.conn[k.index()],
        );
    }
    o.family(
        "rsvisor_accept_errors_total",
        "counter",
        "Failed accept() calls, by reason.",
    );
    for r in AcceptError::ALL {
        o.sample(
            "rsvisor_accept_errors_total",
            &format!("reason=\"{r}\""),
            e.accept[r.index()],
        );
    }
    o.family(
        "rsvisor_tls_handshake_failures_total",
        "counter",
        "Failed TLS handshakes, by reason.",
    );
    for r in TlsFailure::ALL {
        o.sample(
            "rsvisor_tls_handshake_failures_total",
            &format!("reason=\"{r}\""),
            e.tls[r.index()],
        );
    }
    o.family(
        "rsvisor_log_lines_suppressed_total",
        "counter",
        "Log lines of the HTTP and TLS libraries (rustls, h2, hyper) a client can cause, \
         left out because the same line was written less than 10 s before.",
    );
    o.sample(
        "rsvisor_log_lines_suppressed_total",
        "",
        e.log_lines_suppressed,
    );
    o.family(
        "rsvisor_access_log_write_errors_total",
        "counter",
        "Failed writes of access-log lines.",
    );
    o.sample(
        "rsvisor_access_log_write_errors_total",
        "",
        e.access_log_write_errors,
    );
    o.family(
        "rsvisor_access_log_dropped_lines_total",
        "counter",
        "Access-log lines dropped because the writer could not keep up.",
    );
    o.sample(
        "rsvisor_access_log_dropped_lines_total",
        "",
        e.access_log_dropped,
    );

    o.family(
        "rsvisor_worker_exits_total",
        "counter",
        "Workers that exited, by reason.",
    );
    for r in ExitReason::ALL {
        o.sample(
            "rsvisor_worker_exits_total",
            &format!("reason=\"{r}\""),
            board.exits(*r),
        );
    }

    o.family("rsvisor_reloads_total", "counter", "Reloads, by result.");
    for r in ReloadResult::ALL {
        o.sample(
            "rsvisor_reloads_total",
            &format!("result=\"{r}\""),
            board.reloads(*r),
        );
    }

    o.family(
        "rsvisor_upgrades_total",
        "counter",
        "Binary upgrades (USR2) completed.",
    );
    o.sample("rsvisor_upgrades_total", "", h.upgrades.load(Relaxed));
    o.family(
        "rsvisor_app_output_lines_dropped_total",
        "counter",
        "Exec mode: lines of the workers' output left out of the log (over 1000 lines/s per worker).",
    );
    o.sample(
        "rsvisor_app_output_lines_dropped_total",
        "",
        h.app_output_dropped.load(Relaxed),
    );

    o.family(
        "rsvisor_generation",
        "gauge",
        "Current generation (incremented by each reload).",
    );
    o.sample("rsvisor_generation", "", board.generation());

    let live: Vec<(usize, &Slot)> = board
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_app_worker())
        .collect();
    o.family("rsvisor_workers", "gauge", "Worker processes, by state.");
    for state in [
        SlotState::Booting,
        SlotState::Ready,
        SlotState::Retiring,
        SlotState::Draining,
    ] {
        let n = live.iter().filter(|(_, s)| s.state() == state).count();
        o.sample("rsvisor_workers", &format!("state=\"{}\"", state.name()), n);
    }

    o.family(
        "rsvisor_upgraded_connections",
        "gauge",
        "Open connections that switched protocols (WebSockets), all workers.",
    );
    let upgraded: u64 = live.iter().map(|(_, s)| s.upgraded_connections()).sum();
    o.sample("rsvisor_upgraded_connections", "", upgraded);

    let now_ms = crate::os::monotonic_ms();
    let per_worker: [PerWorker; 5] = [
        (
            "rsvisor_worker_active_connections",
            "Open client connections of the worker in this slot.",
            |s, _| s.active_connections() as f64,
        ),
        (
            "rsvisor_worker_upgraded_connections",
            "Of those, connections that switched protocols (WebSockets).",
            |s, _| s.upgraded_connections() as f64,
        ),
        (
            "rsvisor_worker_resident_memory_bytes",
            "Resident memory of the worker in this slot (read by the master each second).",
            |s, _| s.rss() as f64,
        ),
        (
            "rsvisor_worker_cpu_seconds",
            "CPU time of the worker in this slot (and, with app.command, what it started).",
            |s, _| s.cpu_seconds(),
        ),
        (
            "rsvisor_worker_event_loop_lag_seconds",
            "How late the worker's last heartbeat tick ran.",
            |s, _| s.loop_lag_us() as f64 / 1e6,
        ),
    ];
    for (name, help, value) in per_worker {
        o.family(name, "gauge", help);
        for (i, s) in &live {
            o.sample(name, &format!("worker=\"{i}\""), value(s, now_ms));
        }
    }
    // Only where something beats: an exec worker that never sent
    // WATCHDOG=1 has no heartbeat to be late with.
    let name = "rsvisor_worker_heartbeat_age_seconds";
    o.family(
        name,
        "gauge",
        "Time since the worker's last heartbeat (absent for an exec worker without WATCHDOG=1).",
    );
    for (i, s) in live.iter().filter(|(_, s)| s.watched()) {
        let age = now_ms.saturating_sub(s.heartbeat_ms()) as f64 / 1e3;
        o.sample(name, &format!("worker=\"{i}\""), age);
    }
    // Only for workers that have a limit: a ratio to 0 would be +Inf.
    o.family(
        "rsvisor_worker_memory_limit_bytes",
        "gauge",
        "lifecycle.max_worker_memory of the worker in this slot (absent when unset).",
    );
    for (i, s) in &live {
        if let Some(limit) = s.memory_limit() {
            o.sample(
                "rsvisor_worker_memory_limit_bytes",
                &format!("worker=\"{i}\""),
                limit,
            );
        }
    }

    if let Some(p) = crate::os::procfs::stats(nix::unistd::getppid().as_raw()) {
        o.family(
            "rsvisor_master_resident_memory_bytes",
            "gauge",
            "Resident memory of the master process.",
        );
        o.sample("rsvisor_master_resident_memory_bytes", "", p.rss_bytes);
        o.family(
            "rsvisor_master_cpu_seconds_total",
            "counter",
            "CPU time (user + system) of the master process.",
        );
        o.sample("rsvisor_master_cpu_seconds_total", "", p.cpu_seconds);
        o.family(
            "rsvisor_master_start_time_seconds",
            "gauge",
            "Start time of the master process, seconds since the Unix epoch.",
        );
        o.sample("rsvisor_master_start_time_seconds", "", p.start_time_unix);
        o.family(
            "rsvisor_master_open_fds",
            "gauge",
            "Open file descriptors of the master process.",
        );
        o.sample("rsvisor_master_open_fds", "", p.open_fds);
    }
    o.0
}
