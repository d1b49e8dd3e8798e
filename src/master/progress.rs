//! Step 6: milestones. First readiness, reloads done or abandoned, an app
//! that cannot start anywhere, sockets no longer used, the end of a stop.

use tracing::{error, info};

use super::Master;
use crate::proto::exit::Exit;

impl Master {
    /// Returns the exit code when the master should exit.
    pub(super) fn track_progress(&mut self) -> Option<Exit> {
        if self.lifecycle.draining_to_exit()
            && self.workers.is_empty()
            && self.helpers.is_empty()
            && self.strays.is_empty()
        {
            info!("all workers gone; master exiting");
            return Some(Exit::Ok);
        }
        if !self.lifecycle.serving() {
            return None;
        }

        let ready = self.ready_count();
        if !self.systemd.initial_ready && ready >= self.current.desired {
            info!(
                workers = ready,
                elapsed_ms = self.fixed.started.elapsed().as_millis() as u64,
                "all workers ready"
            );
            self.initial_ready();
        }

        // An app that cannot start anywhere: stop instead of looping.
        if ready == 0
            && self.lifecycle.reload().is_none()
            && self.backoff.app_cannot_start(self.current.desired)
        {
            error!(
                failures = self.backoff.startup_failures(),
                "the app's startup failed in every worker; giving up"
            );
            self.sockets.listeners.close_all();
            for w in &mut self.workers {
                w.quick_stop();
            }
            return Some(Exit::AppStartupFailed);
        }

        self.progress_reload();
        None
    }

    /// Closes listening sockets that neither the current configuration nor
    /// any live worker uses any more (addresses removed by a reload). Called
    /// when that can change: a worker exited, or a reload was abandoned.
    pub(super) fn close_unused_listeners(&mut self) {
        let mut keep = self.current.loaded.config.listen_addrs();
        for w in &self.workers {
            keep.extend(w.config.listen_addrs());
        }
        let keep: Vec<&crate::config::BindAddr> = keep.iter().collect();
        self.sockets.listeners.retain(&keep);
    }

    /// Workers of the current generation serving and staying.
    pub(super) fn ready_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.serving() && w.generation == self.current.generation)
            .count()
    }
}
