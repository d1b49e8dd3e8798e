//! `rsvisor status`: the fleet as the master sees it.

use super::Master;
use crate::control::{Status, Totals, WorkerStatus};

impl Master {
    pub(super) fn status(&self) -> Status {
        let now_ms = crate::sys::monotonic_ms();
        let workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|w| {
                let slot = self.board.slot(w.slot);
                let mut state = w.state(self.board).name().to_string();
                if w.leaving() && state != "draining" {
                    state = "stopping".into();
                } else if w.memory_retire && !w.leaving() {
                    state = "retiring".into();
                }
                WorkerStatus {
                    slot: w.slot,
                    pid: w.pid.as_raw() as u32,
                    generation: w.generation,
                    state,
                    age_seconds: w.spawned_at.elapsed().as_secs_f64(),
                    requests: slot.served(),
                    active_connections: slot.active_connections(),
                    rss_bytes: slot.rss(),
                    seconds_since_heartbeat: now_ms.saturating_sub(slot.heartbeat_ms()) as f64
                        / 1000.0,
                }
            })
            .collect();
        let totals = self.board.fleet_totals();
        let exits = self
            .board
            .header
            .exits
            .iter()
            .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        Status {
            master_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            phase: self.phase.name().to_string(),
            generation: self.generation,
            desired_workers: self.desired,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            totals: Totals {
                requests: totals.requests,
                responses_by_class: totals.status,
                active_connections: workers.iter().map(|w| w.active_connections).sum(),
                worker_exits: exits,
            },
            workers,
            last_reload: self.last_reload.as_ref().map(|r| r.report()),
        }
    }
}
