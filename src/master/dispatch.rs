//! Step 1: act on queued signals and control-socket requests. Both only
//! change the master's intent (stop, scale, reload); later steps act on it.

use std::time::Instant;

use nix::sys::signal::Signal;
use tracing::info;

use super::control::Waiter;
use super::{Master, Phase};
use crate::control::{Request, Response};

impl Master {
    pub(super) fn dispatch(&mut self, control_ready: bool) {
        for sig in self.signals.take() {
            match sig {
                Signal::SIGINT | Signal::SIGQUIT => self.quick_stop(sig),
                Signal::SIGTERM => self.graceful_stop(),
                Signal::SIGHUP => self.request_reload(None),
                Signal::SIGTTIN => self.scale_to(self.desired + 1),
                Signal::SIGTTOU => self.scale_to(self.desired.saturating_sub(1)),
                Signal::SIGUSR1 => {
                    info!("USR1: workers reopen their access logs");
                    for w in &self.workers {
                        w.signal(Signal::SIGUSR1);
                    }
                }
                Signal::SIGUSR2 => self.start_upgrade(),
                // CHLD only wakes the loop; reaping is its own step.
                _ => {}
            }
        }
        if control_ready {
            self.serve_control();
        }
    }

    fn serve_control(&mut self) {
        let Some(control) = &self.control else {
            return;
        };
        for (client, request) in control.accept_requests() {
            match request {
                Err(e) => client.reply(&Response::error(e)),
                Ok(Request::Status) => {
                    let mut resp = Response::message("status");
                    resp.status = Some(self.status());
                    client.reply(&resp);
                }
                Ok(Request::Reload) => self.request_reload(Some(client)),
                Ok(Request::Scale(n)) => {
                    if self.phase != Phase::Running {
                        client.reply(&Response::error("stopping; not scaling"));
                        continue;
                    }
                    self.scale_to(n);
                    client.reply(&Response::message(format!("scaling to {n} workers")));
                }
                Ok(Request::Stop) => {
                    self.graceful_stop();
                    client.reply(&Response::message("stopping gracefully"));
                }
            }
        }
    }

    fn graceful_stop(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        self.notifier.stopping();
        if let Some(up) = self.upgrade.take() {
            // A half-started new master must not outlive this one.
            let _ = nix::sys::signal::kill(up.pid(), Signal::SIGKILL);
        }
        self.begin_graceful_stop("TERM");
    }

    /// `/ready` fails at once; after `shutdown_delay` the sockets close and
    /// the workers drain.
    pub(super) fn begin_graceful_stop(&mut self, why: &str) {
        if self.phase != Phase::Running {
            return;
        }
        let delay = self.config.lifecycle.shutdown_delay;
        info!(
            shutdown_delay = ?delay,
            graceful_timeout = ?self.config.lifecycle.graceful_timeout,
            "{why}: stopping gracefully; /ready now answers 503"
        );
        self.board.set_stopping();
        self.answer_reload_waiters("stopping");
        self.phase = Phase::Stopping {
            close_at: Instant::now() + delay,
            closed: false,
        };
    }

    fn quick_stop(&mut self, sig: Signal) {
        if self.phase == Phase::QuickStopping {
            return;
        }
        info!(signal = %sig, "stopping now (quick stop)");
        if !self.handed_over {
            self.notifier.stopping();
        }
        if let Some(up) = self.upgrade.take() {
            let _ = nix::sys::signal::kill(up.pid(), Signal::SIGKILL);
        }
        self.board.set_stopping();
        self.answer_reload_waiters("stopping");
        self.listeners.close_all();
        for w in &mut self.workers {
            w.quick_stop();
        }
        self.phase = Phase::QuickStopping;
    }

    fn scale_to(&mut self, n: usize) {
        if self.phase != Phase::Running {
            return;
        }
        let before = self.desired;
        self.desired = n.clamp(1, crate::config::MAX_WORKERS);
        if self.desired != before {
            info!(from = before, to = self.desired, "scaling workers");
        }
    }

    /// HUP or `rsvisor reload`: start a reload now, or queue it behind the
    /// one in progress (never interleave two).
    fn request_reload(&mut self, waiter: Option<Waiter>) {
        if self.phase != Phase::Running {
            info!("reload ignored: stopping");
            if let Some(w) = waiter {
                w.reply(&Response::error("stopping; not reloading"));
            }
            return;
        }
        if self.reload.is_some() {
            info!("reload requested during a reload: queued until the current one finishes");
            let queue = self.queued_reload.get_or_insert_with(Vec::new);
            queue.extend(waiter);
            return;
        }
        self.start_reload(waiter.into_iter().collect());
    }

    fn answer_reload_waiters(&mut self, why: &str) {
        let mut waiting: Vec<Waiter> = self.queued_reload.take().unwrap_or_default();
        if let Some(r) = &mut self.reload {
            waiting.append(&mut r.waiters);
        }
        for w in waiting {
            w.reply(&Response::error(format!("reload interrupted: {why}")));
        }
    }
}
