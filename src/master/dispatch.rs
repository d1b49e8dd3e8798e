//! Step 1: act on queued signals and control-socket requests. Both only
//! change the master's intent (stop, scale, reload); later steps act on it.

use std::time::Instant;

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::control_socket::{ClientId, Revents};
use super::forensics::Trigger;
use super::lifecycle::{Lifecycle, StopKind};
use super::Master;
use crate::proto::control::{Request, Response};

impl Master {
    pub(super) fn dispatch(&mut self, control: &Revents) {
        for (sig, times) in self.signals.take() {
            let times = times as usize;
            match sig {
                Signal::SIGINT | Signal::SIGQUIT => self.quick_stop(sig),
                Signal::SIGTERM => self.graceful_stop("TERM", false),
                // HUPs delivered together ask for the same thing: one reload.
                Signal::SIGHUP => self.request_reload(None),
                Signal::SIGTTIN => self.scale_to(self.current.desired + times),
                Signal::SIGTTOU => self.scale_to(self.current.desired.saturating_sub(times)),
                Signal::SIGUSR1 => {
                    info!("USR1: workers reopen their access logs");
                    for w in self.workers.iter().chain(&self.helpers) {
                        w.signal(Signal::SIGUSR1);
                    }
                }
                Signal::SIGUSR2 => {
                    self.start_upgrade();
                    if times > 1 {
                        warn!(
                            times,
                            "USR2 received again before the master acted on the first: ignored"
                        );
                    }
                }
                // CHLD only wakes the loop; reaping is its own step.
                _ => {}
            }
        }
        self.serve_control(control);
    }

    fn serve_control(&mut self, revents: &Revents) {
        let Some(control) = &mut self.sockets.control else {
            return;
        };
        for (client, request) in control.handle(revents, Instant::now()) {
            match request {
                Err(e) => self.reply(client, &Response::error(e.to_string())),
                Ok(Request::Status) => {
                    let mut resp = Response::message("status");
                    resp.status = Some(self.status());
                    self.reply(client, &resp);
                }
                Ok(Request::Reload) => self.request_reload(Some(client)),
                Ok(Request::Scale(n)) => {
                    if !self.lifecycle.serving() {
                        self.reply(client, &Response::error("stopping; not scaling"));
                        continue;
                    }
                    self.scale_to(n);
                    self.reply(
                        client,
                        &Response::message(format!("scaling to {n} workers")),
                    );
                }
                Ok(Request::Dump(slot)) => {
                    let worker = self
                        .workers
                        .iter()
                        .position(|w| w.slot == slot && !w.leaving());
                    match worker {
                        Some(i) => self.inspect(i, Trigger::Request, Some(client)),
                        None => self.reply(
                            client,
                            &Response::error(format!(
                                "no worker in slot {slot} (rsvisor status lists them)"
                            )),
                        ),
                    }
                }
                Ok(Request::Stop) => {
                    self.graceful_stop("stop request", false);
                    self.reply(client, &Response::message("stopping gracefully"));
                }
            }
        }
    }

    /// Answers a control client (if it is still there).
    pub(super) fn reply(&mut self, to: ClientId, resp: &Response) {
        if let Some(c) = &mut self.sockets.control {
            c.reply(to, resp);
        }
    }

    /// `/ready` fails at once; after `shutdown_delay` the sockets close and
    /// the workers drain. `handed_over`: a new master serves now.
    pub(super) fn graceful_stop(&mut self, why: &str, handed_over: bool) {
        if self.lifecycle.stopping() {
            return;
        }
        let lc = &self.current.loaded.config.lifecycle;
        info!(
            shutdown_delay = ?lc.shutdown_delay,
            graceful_timeout = ?lc.graceful_timeout,
            "{why}: stopping gracefully; /ready now answers 503"
        );
        let kind = StopKind::Graceful {
            close_at: Instant::now() + lc.shutdown_delay,
            closed: false,
        };
        if !handed_over {
            self.systemd.notifier.stopping();
        }
        let was = self.lifecycle.stop(kind, handed_over);
        self.left(was);
    }

    fn quick_stop(&mut self, sig: Signal) {
        if self.lifecycle.quick_stopping() {
            return;
        }
        info!(signal = %sig, "stopping now (quick stop)");
        if !self.lifecycle.handed_over() {
            self.systemd.notifier.stopping();
        }
        let was = self.lifecycle.stop(StopKind::Quick, false);
        self.left(was);
        self.sockets.listeners.close_all();
        for w in self.workers.iter_mut().chain(&mut self.helpers) {
            w.quick_stop();
        }
    }

    /// Cleans up after what the master was doing when it started to stop.
    fn left(&mut self, was: Lifecycle) {
        self.board.set_stopping();
        let mut waiting = self.queued_reload.take().unwrap_or_default();
        match was {
            Lifecycle::Reloading(r) => waiting.extend(r.waiters),
            // A half-started new master must not outlive this one.
            Lifecycle::Upgrading(up) => up.kill(),
            Lifecycle::Running | Lifecycle::Stopping(_) => {}
        }
        for w in waiting {
            self.reply(w, &Response::error("reload interrupted: stopping"));
        }
    }

    fn scale_to(&mut self, n: usize) {
        if !self.lifecycle.serving() {
            return;
        }
        let before = self.current.desired;
        self.current.desired = n.clamp(1, crate::config::MAX_WORKERS);
        if self.current.desired != before {
            info!(from = before, to = self.current.desired, "scaling workers");
        }
    }
}
