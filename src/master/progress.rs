//! Step 6: milestones. First readiness, reloads done or abandoned, an app
//! that cannot start anywhere, sockets no longer used, the end of a stop.

use tracing::{error, info};

use super::{Master, Phase};
use crate::exit;
use crate::scoreboard::SlotState;

impl Master {
    /// Returns the exit code when the master should exit.
    pub(super) fn track_progress(&mut self) -> Option<i32> {
        match self.phase {
            Phase::Stopping { closed: true, .. } | Phase::QuickStopping
                if self.workers.is_empty() =>
            {
                info!("all workers gone; master exiting");
                return Some(exit::OK);
            }
            Phase::Running => {}
            _ => return None,
        }

        let ready = self.ready_count();
        if !self.initial_ready_logged && ready >= self.desired {
            self.initial_ready_logged = true;
            info!(
                workers = ready,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "all workers ready"
            );
            let status = self.status_line();
            if self.upgrade_pipe.is_some() {
                // Started by USR2: this process is the service now.
                self.notifier
                    .send(&format!("MAINPID={}", std::process::id()));
                self.report_ready_to_old_master();
            }
            self.notifier.ready(&status);
            self.last_status = status;
        }

        // An app that cannot start anywhere: stop instead of looping.
        if ready == 0
            && self.reload.is_none()
            && self.startup_failures as usize >= self.desired.max(1)
        {
            error!(
                failures = self.startup_failures,
                "the app's startup failed in every worker; giving up"
            );
            self.listeners.close_all();
            for w in &mut self.workers {
                w.quick_stop();
            }
            return Some(exit::APP_STARTUP_FAILED);
        }

        self.progress_reload();
        None
    }

    /// Closes listening sockets that neither the current configuration nor
    /// any live worker uses any more (addresses removed by a reload). Called
    /// when that can change: a worker exited, or a reload was abandoned.
    pub(super) fn close_unused_listeners(&mut self) {
        let mut keep = self.config.listen_addrs();
        for w in &self.workers {
            keep.extend(w.config.listen_addrs());
        }
        let keep: Vec<&crate::config::BindAddr> = keep.iter().collect();
        self.listeners.retain(&keep);
    }

    /// Workers of the current generation serving and staying.
    pub(super) fn ready_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| {
                !w.leaving()
                    && !w.memory_retire
                    && w.generation == self.generation
                    && w.state(self.board) == SlotState::Ready
            })
            .count()
    }
}
