//! Reloads: validate the new configuration, bind new addresses, start a
//! new generation; finish when it is fully ready, or give up and restore
//! the previous generation when its workers cannot boot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::control::Waiter;
use super::Master;
use crate::config::Config;
use crate::control::{ReloadReport, Response};

/// New workers that may fail to boot during one reload before it is
/// abandoned and the previous generation is restored.
pub const RELOAD_MAX_BOOT_FAILURES: u32 = 3;

pub struct Reload {
    pub old_config: Arc<Config>,
    pub old_generation: u32,
    pub old_desired: usize,
    started: Instant,
    failures: u32,
    /// Control-socket clients waiting for the result.
    pub waiters: Vec<Waiter>,
}

pub enum ReloadOutcome {
    InProgress,
    Done { elapsed: Duration },
    Abandon { failures: u32 },
}

/// The result of the last reload, for `rsvisor status`.
pub struct LastReload {
    pub result: &'static str,
    pub generation: u32,
    pub at: Instant,
    pub duration: Duration,
    pub message: String,
}

impl LastReload {
    pub fn report(&self) -> ReloadReport {
        ReloadReport {
            result: self.result.to_string(),
            generation: self.generation,
            seconds_ago: self.at.elapsed().as_secs_f64(),
            duration_ms: self.duration.as_millis() as u64,
            message: self.message.clone(),
        }
    }
}

impl Reload {
    pub fn boot_failed(&mut self) {
        self.failures += 1;
    }

    /// `complete`: the new generation is fully ready and no old worker
    /// still serves.
    pub fn outcome(&self, complete: bool) -> ReloadOutcome {
        if self.failures >= RELOAD_MAX_BOOT_FAILURES {
            ReloadOutcome::Abandon {
                failures: self.failures,
            }
        } else if complete {
            ReloadOutcome::Done {
                elapsed: self.started.elapsed(),
            }
        } else {
            ReloadOutcome::InProgress
        }
    }
}

impl Master {
    /// Starts a reload, or refuses it (invalid config, address that cannot
    /// be bound) leaving everything as it was.
    pub(super) fn start_reload(&mut self, waiters: Vec<Waiter>) {
        info!(config = %self.config_path.display(), "reloading configuration");
        self.notifier.reloading();
        let started = Instant::now();
        let mut new = match Config::load(&self.config_path, &self.overrides) {
            Ok(c) => c,
            Err(e) => return self.refuse_reload(waiters, e.to_string(), started),
        };
        for extra in &self.extra_binds {
            if !new.server.bind.contains(extra) {
                new.server.bind.push(extra.clone());
            }
        }
        let addrs = new.listen_addrs();
        let c = &new.server;
        let owner = c.run_as.as_ref().map(|r| (r.uid, r.gid));
        if let Err(e) = self
            .listeners
            .ensure(&addrs, c.backlog, c.socket_mode, owner)
        {
            return self.refuse_reload(waiters, e.to_string(), started);
        }
        self.log.apply(&new.log);
        let old_config = std::mem::replace(&mut self.config, Arc::new(new));
        let old_generation = self.generation;
        let old_desired = self.desired;
        self.generation += 1;
        self.desired = self.config.worker_count();
        self.board.set_generation(self.generation);
        self.reload = Some(Reload {
            old_config,
            old_generation,
            old_desired,
            started,
            failures: 0,
            waiters,
        });
        self.boot_failures = 0;
        self.startup_failures = 0;
        self.spawn_not_before = Instant::now();
        info!(
            generation = self.generation,
            workers = self.desired,
            "new generation starting; old workers retire as replacements become ready"
        );
    }

    fn refuse_reload(&mut self, waiters: Vec<Waiter>, why: String, started: Instant) {
        error!("reload refused, still serving with the current configuration: {why}");
        self.board.count_reload("invalid_config");
        self.record_reload("invalid_config", started.elapsed(), why, waiters);
    }

    /// Ends a reload that is done or must be abandoned.
    pub(super) fn progress_reload(&mut self) {
        let Some(r) = &self.reload else {
            return;
        };
        let current = self.generation;
        let old_serving = self
            .workers
            .iter()
            .any(|w| w.generation != current && !w.leaving());
        let complete = self.ready_count() >= self.desired && !old_serving;
        match r.outcome(complete) {
            ReloadOutcome::InProgress => return,
            ReloadOutcome::Done { elapsed } => {
                let r = self.reload.take().expect("checked above");
                info!(
                    generation = current,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "reload complete: every worker is of the new generation"
                );
                self.board.count_reload("success");
                let msg = format!("generation {current} serving");
                self.record_reload("success", elapsed, msg, r.waiters);
            }
            ReloadOutcome::Abandon { failures } => {
                let r = self.reload.take().expect("checked above");
                error!(
                    failures,
                    "RELOAD ABANDONED: new workers could not start; \
                     the previous generation keeps serving"
                );
                self.board.count_reload("abandoned");
                self.log.apply(&r.old_config.log);
                self.config = r.old_config;
                self.generation = r.old_generation;
                self.desired = r.old_desired;
                self.board.set_generation(self.generation);
                // The new generation's addresses stay while its workers do.
                self.close_unused_listeners();
                self.boot_failures = 0;
                self.startup_failures = 0;
                self.spawn_not_before = Instant::now();
                let msg = format!(
                    "{failures} new workers failed to boot; generation {} keeps serving",
                    self.generation
                );
                self.record_reload("abandoned", r.started.elapsed(), msg, r.waiters);
            }
        }
        if let Some(waiters) = self.queued_reload.take() {
            self.start_reload(waiters);
        }
    }

    fn record_reload(
        &mut self,
        result: &'static str,
        duration: Duration,
        message: String,
        waiters: Vec<Waiter>,
    ) {
        let last = LastReload {
            result,
            generation: self.generation,
            at: Instant::now(),
            duration,
            message,
        };
        let resp = Response {
            ok: result == "success",
            error: (result != "success").then(|| format!("reload {result}: {}", last.message)),
            status: None,
            reload: Some(last.report()),
            message: None,
        };
        for w in waiters {
            w.reply(&resp);
        }
        self.last_reload = Some(last);
        let status = self.status_line();
        self.notifier.ready(&status);
        self.last_status = status;
    }
}
