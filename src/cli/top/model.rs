//! What `rsvisor top` shows, computed from two successive status answers:
//! rates and latency percentiles over the last interval come from counter
//! differences (the master keeps counters only). Pure: tested alone.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::proto::control::{ExitReport, Status, WorkerStatus};
use crate::proto::state::{Phase, WorkerState};

/// RSS samples kept per worker for its trend.
pub const RSS_TREND: usize = 3;
/// Recent events shown at most.
pub const EVENTS: usize = 8;

/// One status answer and when it came.
#[derive(Debug, Clone)]
pub struct Sample {
    pub status: Status,
    /// Since `top` started.
    pub at: Duration,
}

#[derive(Debug, Default)]
pub struct Model {
    prev: Option<Sample>,
    last: Option<Sample>,
    rss: BTreeMap<u32, VecDeque<u64>>,
    /// Set while the master cannot be reached: why.
    disconnected: Option<String>,
}

/// The frame, ready to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The first header line (or why the master is unreachable).
    pub title: String,
    /// What the master is doing (reload progress, canary).
    pub phase: String,
    /// Fleet rates over the last interval.
    pub traffic: String,
    pub workers: Vec<Row>,
    pub events: Vec<String>,
    pub connected: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub slot: usize,
    pub pid: u32,
    pub generation: u32,
    pub state: WorkerState,
    pub age: String,
    /// `None` before two samples of this worker exist.
    pub rps: Option<f64>,
    pub connections: u64,
    pub upgraded: u64,
    pub rss: String,
    pub trend: String,
    pub heartbeat: String,
    pub lag: String,
}

impl Model {
    pub fn update(&mut self, status: Status, at: Duration) {
        let live: Vec<u32> = status.workers.iter().map(|w| w.pid).collect();
        self.rss.retain(|pid, _| live.contains(pid));
        for w in &status.workers {
            let h = self.rss.entry(w.pid).or_default();
            h.push_back(w.rss_bytes);
            if h.len() > RSS_TREND {
                h.pop_front();
            }
        }
        self.prev = self.last.take();
        self.last = Some(Sample { status, at });
        self.disconnected = None;
    }

    pub fn disconnected(&mut self, why: String) {
        self.disconnected = Some(why);
        // Rates across a gap would mix two masters (or a restart).
        self.prev = None;
        self.last = None;
        self.rss.clear();
    }

    pub fn view(&self) -> View {
        let Some(last) = &self.last else {
            let why = self.disconnected.as_deref().unwrap_or("connecting");
            return View {
                title: format!("rsvisor top: disconnected ({why}); retrying"),
                phase: String::new(),
                traffic: String::new(),
                workers: Vec::new(),
                events: Vec::new(),
                connected: false,
            };
        };
        let s = &last.status;
        let interval = self
            .prev
            .as_ref()
            .map(|p| last.at.saturating_sub(p.at).as_secs_f64())
            .filter(|d| *d > 0.0);
        let prev = self.prev.as_ref().map(|p| &p.status);
        View {
            title: format!(
                "master {}  rsvisor {}  generation {}  up {}  {}/{} workers ready",
                s.master_pid,
                s.version,
                s.generation,
                human_secs(s.uptime_seconds),
                s.workers
                    .iter()
                    .filter(|w| w.state == WorkerState::Ready)
                    .count(),
                s.desired_workers
            ),
            phase: phase_line(s),
            traffic: traffic_line(s, prev, interval),
            workers: s
                .workers
                .iter()
                .map(|w| self.row(w, prev, interval))
                .collect(),
            events: events(s),
            connected: true,
        }
    }

    fn row(&self, w: &WorkerStatus, prev: Option<&Status>, interval: Option<f64>) -> Row {
        let before = prev.and_then(|p| p.workers.iter().find(|o| o.pid == w.pid));
        let rps = match (before, interval) {
            (Some(b), Some(d)) => Some(w.requests.saturating_sub(b.requests) as f64 / d),
            _ => None,
        };
        let rss = match w.memory_limit_bytes {
            // Short enough for the column at 80 terminal columns.
            Some(limit) => format!("{}/{}", mib(w.rss_bytes), mib(limit)),
            None => mib(w.rss_bytes),
        };
        Row {
            slot: w.slot,
            pid: w.pid,
            generation: w.generation,
            state: w.state,
            age: human_secs(w.age_seconds),
            rps,
            connections: w.active_connections,
            upgraded: w.upgraded_connections,
            rss,
            trend: sparkline(self.rss.get(&w.pid).map(|h| h.iter().copied())),
            heartbeat: w
                .seconds_since_heartbeat
                .map_or("-".to_string(), |s| format!("{s:.1}s")),
            lag: format!("{:.1}ms", w.loop_lag_ms),
        }
    }
}

fn phase_line(s: &Status) -> String {
    match s.phase {
        Phase::Running => "running".into(),
        Phase::Reloading => {
            let ready = s
                .workers
                .iter()
                .filter(|w| w.generation == s.generation && w.state == WorkerState::Ready)
                .count();
            let mut line = format!(
                "reloading: generation {} {ready}/{} ready",
                s.generation, s.desired_workers
            );
            if let Some(c) = &s.canary {
                line += &format!(
                    "; canary pid {} {} ({} requests, 5xx {:.1}%)",
                    c.pid,
                    if c.passed {
                        "passed".to_string()
                    } else {
                        format!("{:.0}s left", c.seconds_left)
                    },
                    c.requests,
                    c.ratio_5xx * 100.0
                );
            }
            line
        }
        Phase::Upgrading => "upgrading: a new master binary is starting".into(),
        Phase::Stopping => "stopping: draining workers".into(),
    }
}

fn traffic_line(s: &Status, prev: Option<&Status>, interval: Option<f64>) -> String {
    let (Some(p), Some(d)) = (prev, interval) else {
        return format!(
            "requests {}  (rates after the next refresh)",
            s.totals.requests
        );
    };
    let rps = s.totals.requests.saturating_sub(p.totals.requests) as f64 / d;
    let errors = s.totals.responses_by_class[4].saturating_sub(p.totals.responses_by_class[4]);
    let delta: Vec<u64> = s
        .totals
        .latency_histogram
        .iter()
        .zip(
            p.totals
                .latency_histogram
                .iter()
                .chain(std::iter::repeat(&0)),
        )
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let q = |q| {
        crate::shm::scoreboard::quantile_us(&delta, q)
            .map_or("-".to_string(), |us| format!("{:.1}ms", us / 1000.0))
    };
    format!(
        "{rps:.0} req/s  {:.1} 5xx/s  p50 {}  p99 {}  connections {} ({} upgraded)  requests {}",
        errors as f64 / d,
        q(0.50),
        q(0.99),
        s.totals.active_connections,
        s.totals.upgraded_connections,
        s.totals.requests
    )
}

/// Worker exits, reloads and upgrades, newest first.
fn events(s: &Status) -> Vec<String> {
    let mut all: Vec<(f64, String)> = s.recent_exits.iter().map(exit_event).collect();
    if let Some(r) = &s.last_reload {
        all.push((
            r.seconds_ago,
            format!(
                "{} ago  reload {} (generation {}, {} ms): {}",
                human_secs(r.seconds_ago),
                r.result,
                r.generation,
                r.duration_ms,
                r.message
            ),
        ));
    }
    if let Some(u) = &s.last_upgrade {
        all.push((
            u.seconds_ago,
            format!(
                "{} ago  upgrade {}: {}",
                human_secs(u.seconds_ago),
                if u.ok { "done" } else { "failed" },
                u.message
            ),
        ));
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().take(EVENTS).map(|(_, e)| e).collect()
}

fn exit_event(e: &ExitReport) -> (f64, String) {
    let mut line = format!(
        "{} ago  worker {} (slot {}, gen {}) exited: {} ({})",
        human_secs(e.seconds_ago),
        e.pid,
        e.slot,
        e.generation,
        e.reason,
        e.status
    );
    if let Some(r) = e.forensics.as_ref().and_then(|f| f.in_flight.first()) {
        line += &format!(" during {} {} ({} ms)", r.method, r.path, r.running_ms);
    }
    (e.seconds_ago, line)
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A one-cell-per-sample trend, scaled between the samples' min and max.
fn sparkline(samples: Option<impl Iterator<Item = u64>>) -> String {
    let v: Vec<u64> = samples.map(|s| s.collect()).unwrap_or_default();
    let (Some(&lo), Some(&hi)) = (v.iter().min(), v.iter().max()) else {
        return String::new();
    };
    v.iter()
        .map(|&x| {
            if hi == lo {
                BARS[0]
            } else {
                BARS[((x - lo) * 7 / (hi - lo)) as usize]
            }
        })
        .collect()
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1024.0 * 1024.0))
}

fn human_secs(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::control::Totals;

    fn worker(pid: u32, requests: u64, rss: u64) -> WorkerStatus {
        WorkerStatus {
            slot: 0,
            pid,
            generation: 1,
            state: WorkerState::Ready,
            age_seconds: 5.0,
            requests,
            active_connections: 2,
            upgraded_connections: 0,
            rss_bytes: rss,
            cpu_seconds: 0.0,
            seconds_since_heartbeat: Some(0.2),
            loop_lag_ms: 0.1,
            memory_limit_bytes: None,
        }
    }

    fn status(requests: u64, errors: u64, hist: Vec<u64>, workers: Vec<WorkerStatus>) -> Status {
        Status {
            master_pid: 1,
            version: "x".into(),
            phase: Phase::Running,
            generation: 1,
            desired_workers: workers.len(),
            fronts: Vec::new(),
            uptime_seconds: 10.0,
            listeners: vec![],
            http3: vec![],
            workers,
            totals: Totals {
                requests,
                responses_by_class: [0, requests - errors, 0, 0, errors],
                active_connections: 0,
                upgraded_connections: 0,
                worker_exits: 0,
                exits_by_reason: Default::default(),
                reloads_by_result: Default::default(),
                latency_histogram: hist,
                latency_bounds_us: crate::shm::scoreboard::LATENCY_BOUNDS_US.to_vec(),
            },
            last_reload: None,
            last_upgrade: None,
            recent_exits: vec![],
            canary: None,
        }
    }

    #[test]
    fn rates_and_percentiles_come_from_the_last_interval() {
        let mut m = Model::default();
        let mut h1 = vec![0; 15];
        h1[0] = 100;
        m.update(
            status(100, 0, h1.clone(), vec![worker(7, 100, 1 << 20)]),
            Duration::ZERO,
        );
        assert!(m.view().traffic.contains("rates after the next refresh"));
        assert_eq!(m.view().workers[0].rps, None);
        // In the next second: 1,000 requests, 10 of them 5xx, all ≤ 2.5 ms.
        let mut h2 = h1;
        h2[2] = 1000;
        m.update(
            status(1100, 10, h2, vec![worker(7, 1100, 2 << 20)]),
            Duration::from_secs(1),
        );
        let v = m.view();
        assert!(
            v.traffic.starts_with("1000 req/s  10.0 5xx/s"),
            "{}",
            v.traffic
        );
        assert!(v.traffic.contains("p99 2.5ms"), "{}", v.traffic);
        assert_eq!(v.workers[0].rps, Some(1000.0));
        assert_eq!(v.workers[0].trend, "▁█");
        assert!(v.connected);
    }

    #[test]
    fn a_lost_master_shows_disconnected_and_forgets_the_rates() {
        let mut m = Model::default();
        m.update(
            status(1, 0, vec![0; 15], vec![worker(7, 1, 1)]),
            Duration::ZERO,
        );
        m.disconnected("connection refused".into());
        let v = m.view();
        assert!(!v.connected);
        assert!(
            v.title.contains("disconnected (connection refused)"),
            "{}",
            v.title
        );
        m.update(
            status(5, 0, vec![0; 15], vec![worker(8, 5, 1)]),
            Duration::from_secs(1),
        );
        assert_eq!(m.view().workers[0].rps, None);
    }

    #[test]
    fn a_reload_shows_its_progress() {
        let mut s = status(0, 0, vec![0; 15], vec![worker(7, 0, 1), worker(8, 0, 1)]);
        s.phase = Phase::Reloading;
        s.generation = 2;
        s.workers[1].generation = 2;
        assert_eq!(phase_line(&s), "reloading: generation 2 1/2 ready");
    }
}
