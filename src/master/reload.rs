//! Reloads: validate the new configuration, bind new addresses, start a
//! new generation; finish when it is fully ready, or give up and restore
//! the previous generation when its workers cannot boot.

use std::time::{Duration, Instant};

use tracing::{error, info};

use super::control::ClientId;
use super::lifecycle::{Lifecycle, Reload, ReloadAdmission, ReloadOutcome};
use super::{Current, Master};
use crate::control::{ReloadReport, Response};
use crate::material::Loaded;
use crate::outcome::ReloadResult;

/// The result of the last reload, for `rsvisor status`.
pub struct LastReload {
    pub result: ReloadResult,
    pub generation: u32,
    pub at: Instant,
    pub duration: Duration,
    pub message: String,
}

impl LastReload {
    pub fn report(&self) -> ReloadReport {
        ReloadReport {
            result: self.result,
            generation: self.generation,
            seconds_ago: self.at.elapsed().as_secs_f64(),
            duration_ms: self.duration.as_millis() as u64,
            message: self.message.clone(),
        }
    }
}

impl Master {
    /// HUP or `rsvisor reload`: start a reload now, or queue it behind the
    /// reload or upgrade in progress (never interleave two).
    pub(super) fn request_reload(&mut self, waiter: Option<ClientId>) {
        match self.lifecycle.admit_reload() {
            ReloadAdmission::Start => self.start_reload(waiter.into_iter().collect()),
            ReloadAdmission::Queue => {
                info!("reload requested during a reload or upgrade: queued until it finishes");
                let queue = self.queued_reload.get_or_insert_with(Vec::new);
                queue.extend(waiter);
            }
            ReloadAdmission::Refuse => {
                info!("reload ignored: stopping");
                if let Some(w) = waiter {
                    self.reply(w, &Response::error("stopping; not reloading"));
                }
            }
        }
    }

    /// Runs a reload that waited for the previous one (or an upgrade).
    pub(super) fn start_queued_reload(&mut self) {
        if let Some(waiters) = self.queued_reload.take() {
            self.start_reload(waiters);
        }
    }

    /// Starts a reload, or refuses it (invalid config, address that cannot
    /// be bound) leaving everything as it was.
    fn start_reload(&mut self, waiters: Vec<ClientId>) {
        info!(config = %self.fixed.source.describe(), "reloading configuration");
        self.systemd.notifier.reloading();
        let started = Instant::now();
        let new = match self.load_new_config() {
            Ok(l) => l,
            Err(why) => return self.refuse_reload(waiters, why, started),
        };
        self.log.apply(&new.config.log);
        let previous = self.current.clone();
        self.current = Current {
            generation: previous.generation + 1,
            desired: new.config.worker_count(),
            loaded: new,
        };
        self.board.set_generation(self.current.generation);
        self.lifecycle = Lifecycle::Reloading(Reload::new(previous, started, waiters));
        self.backoff.reset(Instant::now());
        info!(
            generation = self.current.generation,
            workers = self.current.desired,
            "new generation starting; old workers retire as replacements become ready"
        );
    }

    /// The new configuration, with what it refers to loaded and its new
    /// addresses bound.
    fn load_new_config(&mut self) -> Result<Loaded, String> {
        let mut config = self.fixed.source.load().map_err(|e| e.to_string())?;
        for extra in &self.fixed.extra_binds {
            if !config.server.bind.contains(extra) {
                config.server.bind.push(extra.clone());
            }
        }
        let loaded = Loaded::from_config(config).map_err(|e| e.to_string())?;
        let c = &loaded.config.server;
        let owner = loaded.material.run_as.as_ref().map(|r| (r.uid, r.gid));
        self.sockets
            .listeners
            .ensure(
                &loaded.config.listen_addrs(),
                c.backlog,
                c.socket_mode,
                owner,
            )
            .map_err(|e| e.to_string())?;
        Ok(loaded)
    }

    fn refuse_reload(&mut self, waiters: Vec<ClientId>, why: String, started: Instant) {
        error!("reload refused, still serving with the current configuration: {why}");
        self.finish_reload(ReloadResult::InvalidConfig, started.elapsed(), why, waiters);
        self.start_queued_reload();
    }

    /// Ends a reload that is done or must be abandoned.
    pub(super) fn progress_reload(&mut self) {
        let Some(r) = self.lifecycle.reload() else {
            return;
        };
        let current = self.current.generation;
        let old_serving = self
            .workers
            .iter()
            .any(|w| w.generation != current && !w.leaving());
        let complete = self.ready_count() >= self.current.desired && !old_serving;
        match r.outcome(complete) {
            ReloadOutcome::InProgress => return,
            ReloadOutcome::Done { elapsed } => {
                let Some(r) = self.lifecycle.end_reload() else {
                    return;
                };
                info!(
                    generation = current,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "reload complete: every worker is of the new generation"
                );
                let msg = format!("generation {current} serving");
                self.finish_reload(ReloadResult::Success, elapsed, msg, r.waiters);
                // The sidecar serves the old config's metrics.bind: replace it.
                if let Some(s) = &mut self.sidecar {
                    let graceful = s.config.lifecycle.graceful_timeout;
                    s.drain(crate::outcome::ExitReason::Reload, graceful);
                }
            }
            ReloadOutcome::Abandon { failures } => {
                let Some(r) = self.lifecycle.end_reload() else {
                    return;
                };
                error!(
                    failures,
                    "RELOAD ABANDONED: new workers could not start; \
                     the previous generation keeps serving"
                );
                self.log.apply(&r.previous.loaded.config.log);
                self.current = r.previous;
                self.board.set_generation(self.current.generation);
                // The new generation's addresses stay while its workers do.
                self.close_unused_listeners();
                self.backoff.reset(Instant::now());
                let msg = format!(
                    "{failures} new workers failed to boot; generation {} keeps serving",
                    self.current.generation
                );
                self.finish_reload(ReloadResult::Abandoned, r.started.elapsed(), msg, r.waiters);
            }
        }
        self.start_queued_reload();
    }

    fn finish_reload(
        &mut self,
        result: ReloadResult,
        duration: Duration,
        message: String,
        waiters: Vec<ClientId>,
    ) {
        self.board.count_reload(result);
        let last = LastReload {
            result,
            generation: self.current.generation,
            at: Instant::now(),
            duration,
            message,
        };
        let ok = result == ReloadResult::Success;
        let resp = Response {
            ok,
            error: (!ok).then(|| format!("reload {result}: {}", last.message)),
            status: None,
            reload: Some(last.report()),
            message: None,
        };
        for w in waiters {
            self.reply(w, &resp);
        }
        self.last_reload = Some(last);
        self.systemd_ready();
    }
}
