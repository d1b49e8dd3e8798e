//! Prometheus text exposition of the whole fleet, rendered from the
//! scoreboard by whichever worker answers the scrape.

use std::fmt::Write;

use crate::scoreboard::{
    Board, SlotState, EXIT_REASONS, LATENCY_BOUNDS_US, METHOD_CLASSES, RELOAD_RESULTS,
};

pub fn render(board: &Board) -> String {
    let mut o = String::with_capacity(8 * 1024);
    let t = board.fleet_totals();

    let _ = writeln!(
        o,
        "# HELP rsvisor_build_info Build information.\n# TYPE rsvisor_build_info gauge\n\
         rsvisor_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    let _ = writeln!(
        o,
        "# HELP rsvisor_http_requests_total HTTP requests answered by all workers, past and present.\n\
         # TYPE rsvisor_http_requests_total counter\nrsvisor_http_requests_total {}",
        t.requests
    );
    let _ = writeln!(
        o,
        "# HELP rsvisor_http_responses_total HTTP responses by status class.\n\
         # TYPE rsvisor_http_responses_total counter"
    );
    for (i, n) in t.status.iter().enumerate() {
        let _ = writeln!(
            o,
            "rsvisor_http_responses_total{{code=\"{}xx\"}} {n}",
            i + 1
        );
    }
    let _ = writeln!(
        o,
        "# HELP rsvisor_http_requests_by_method_total HTTP requests by method.\n\
         # TYPE rsvisor_http_requests_by_method_total counter"
    );
    for (name, n) in METHOD_CLASSES.iter().zip(&t.methods) {
        let _ = writeln!(
            o,
            "rsvisor_http_requests_by_method_total{{method=\"{name}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP rsvisor_http_response_sent_bytes_total Response body bytes sent.\n\
         # TYPE rsvisor_http_response_sent_bytes_total counter\n\
         rsvisor_http_response_sent_bytes_total {}",
        t.bytes_sent
    );
    let _ = writeln!(
        o,
        "# HELP rsvisor_http_request_duration_seconds Time from request head to response head.\n\
         # TYPE rsvisor_http_request_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
        cumulative += t.latency[i];
        let _ = writeln!(
            o,
            "rsvisor_http_request_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += t.latency[LATENCY_BOUNDS_US.len()];
    let _ = writeln!(
        o,
        "rsvisor_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
         rsvisor_http_request_duration_seconds_sum {}\n\
         rsvisor_http_request_duration_seconds_count {cumulative}",
        t.latency_sum_us as f64 / 1e6
    );

    let h = &board.header;
    let _ = writeln!(
        o,
        "# HELP rsvisor_worker_exits_total Workers that exited, by reason.\n\
         # TYPE rsvisor_worker_exits_total counter"
    );
    for (name, n) in EXIT_REASONS.iter().zip(&h.exits) {
        let _ = writeln!(
            o,
            "rsvisor_worker_exits_total{{reason=\"{name}\"}} {}",
            n.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP rsvisor_reloads_total Reloads, by result.\n# TYPE rsvisor_reloads_total counter"
    );
    for (name, n) in RELOAD_RESULTS.iter().zip(&h.reloads) {
        let _ = writeln!(
            o,
            "rsvisor_reloads_total{{result=\"{name}\"}} {}",
            n.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    let live: Vec<(usize, &crate::scoreboard::Slot)> = board
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state() != SlotState::Free)
        .collect();
    let _ = writeln!(
        o,
        "# HELP rsvisor_workers Worker processes, by state.\n# TYPE rsvisor_workers gauge"
    );
    for state in [
        SlotState::Booting,
        SlotState::Ready,
        SlotState::Retiring,
        SlotState::Draining,
    ] {
        let n = live.iter().filter(|(_, s)| s.state() == state).count();
        let _ = writeln!(o, "rsvisor_workers{{state=\"{}\"}} {n}", state.name());
    }
    let _ = writeln!(
        o,
        "# HELP rsvisor_worker_active_connections Open client connections per worker slot.\n\
         # TYPE rsvisor_worker_active_connections gauge"
    );
    for (i, s) in &live {
        let _ = writeln!(
            o,
            "rsvisor_worker_active_connections{{worker=\"{i}\"}} {}",
            s.active_connections()
        );
    }
    let _ = writeln!(
        o,
        "# HELP rsvisor_worker_event_loop_lag_seconds How late the worker's last heartbeat tick ran.\n\
         # TYPE rsvisor_worker_event_loop_lag_seconds gauge"
    );
    for (i, s) in &live {
        let _ = writeln!(
            o,
            "rsvisor_worker_event_loop_lag_seconds{{worker=\"{i}\"}} {}",
            s.loop_lag_us() as f64 / 1e6
        );
    }
    o
}
