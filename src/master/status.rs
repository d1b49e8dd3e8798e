//! `rsvisor status`: the fleet as the master sees it.

use std::time::Instant;

use super::core::Core;
use super::worker_handle::WorkerHandle;
use super::Fleet;
use crate::net::listen::ListenerSet;
use crate::proto::control::{CanaryReport, Status, Totals, WorkerStatus};
use crate::proto::outcome::{ExitReason, ReloadResult};
use crate::shm::scoreboard::Board;
use crate::worker::WorkerRole;

/// What `status` reads: the master's parts, by shared reference.
pub(super) struct View<'a> {
    pub board: &'a Board,
    pub core: &'a Core,
    pub fleet: &'a Fleet,
    pub listeners: &'a ListenerSet,
    pub quic: &'a crate::net::quic_group::QuicGroups,
    pub started: Instant,
}

impl View<'_> {
    pub(super) fn status(&self) -> Status {
        let now_ms = crate::os::monotonic_ms();
        let row = |w: &WorkerHandle| {
            let slot = self.board.slot(w.slot);
            WorkerStatus {
                slot: w.slot,
                pid: w.pid.as_raw() as u32,
                generation: w.generation,
                state: w.state(),
                age_seconds: w.spawned_at.elapsed().as_secs_f64(),
                requests: slot.served(),
                active_connections: slot.active_connections(),
                upgraded_connections: slot.upgraded_connections(),
                rss_bytes: slot.rss(),
                cpu_seconds: slot.cpu_seconds(),
                seconds_since_heartbeat: slot
                    .watched()
                    .then(|| slot.heartbeat_age_ms(now_ms) as f64 / 1000.0),
                loop_lag_ms: slot.loop_lag_us() as f64 / 1000.0,
                memory_limit_bytes: slot.memory_limit(),
            }
        };
        let workers: Vec<WorkerStatus> = self.fleet.workers.iter().map(row).collect();
        let fronts: Vec<WorkerStatus> = self
            .fleet
            .helpers
            .iter()
            .filter(|h| h.role == WorkerRole::Front)
            .map(row)
            .collect();
        let totals = self.board.fleet_totals();
        let exits_by_reason = ExitReason::ALL
            .iter()
            .map(|r| (*r, self.board.exits(*r)))
            .collect();
        let reloads_by_result = ReloadResult::ALL
            .iter()
            .map(|r| (*r, self.board.reloads(*r)))
            .collect();
        Status {
            master_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            phase: self.core.lifecycle().phase(),
            generation: self.core.current().generation,
            desired_workers: self.core.current().desired,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            listeners: self.listeners.iter().map(|l| l.local_addr()).collect(),
            http3: self.quic.status(),
            totals: Totals {
                requests: totals.requests,
                responses_by_class: totals.status,
                active_connections: workers
                    .iter()
                    .chain(&fronts)
                    .map(|w| w.active_connections)
                    .sum(),
                upgraded_connections: workers
                    .iter()
                    .chain(&fronts)
                    .map(|w| w.upgraded_connections)
                    .sum(),
                worker_exits: ExitReason::ALL.iter().map(|r| self.board.exits(*r)).sum(),
                exits_by_reason,
                reloads_by_result,
                latency_histogram: totals.latency.to_vec(),
                latency_bounds_us: crate::shm::scoreboard::LATENCY_BOUNDS_US.to_vec(),
            },
            workers,
            fronts,
            last_reload: self.core.last_reload().map(|r| r.report()),
            last_upgrade: self.core.last_upgrade(),
            recent_exits: self.fleet.inspections.recent_exits(),
            canary: self.canary_report(),
        }
    }

    fn canary_report(&self) -> Option<CanaryReport> {
        let c = self.core.lifecycle().reload()?.canary.as_ref()?;
        let p = c.progress(std::time::Instant::now())?;
        let ms = |us: f64| us / 1000.0;
        Some(CanaryReport {
            pid: p.pid.as_raw() as u32,
            seconds_left: if c.holds_back() {
                p.remaining.as_secs_f64()
            } else {
                0.0
            },
            passed: !c.holds_back(),
            requests: p.canary.requests,
            ratio_5xx: p.canary.ratio_5xx(),
            p99_ms: p.canary.p99_us().map(ms),
            previous_requests: p.previous.requests,
            previous_ratio_5xx: p.previous.ratio_5xx(),
            previous_p99_ms: p.previous.p99_us().map(ms),
        })
    }
}
