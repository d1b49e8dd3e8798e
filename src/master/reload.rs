//! Reloads: validate the new configuration, bind new addresses, start a
//! new generation; finish when it is fully ready, or give up and restore
//! the previous generation when its workers cannot boot.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use nix::unistd::Pid;

use super::canary::{Limits, Verdict};
use super::control_socket::ClientId;
use super::lifecycle::{Lifecycle, Reload, ReloadAdmission, ReloadOutcome};
use super::{Current, Master};
use crate::config::material::Loaded;
use crate::config::{Config, ConfigError, ReadyRule, WorkerCount};
use crate::net::listen::ListenError;
use crate::os::procfs;
use crate::proto::control::{ReloadReport, Response};
use crate::proto::outcome::{ExitReason, ReloadResult};
use crate::worker::WorkerRole;

/// The result of the last reload, for `rsvisor status`.
pub struct LastReload {
    pub result: ReloadResult,
    pub generation: u32,
    pub at: Instant,
    pub duration: Duration,
    pub message: String,
    /// The code and heap the reload cycle used were given back, once the
    /// last worker of another generation was gone (see `health`).
    pub memory_returned: bool,
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
            Err(why) => return self.refuse_reload(waiters, why.to_string(), started),
        };
        self.log.apply(&new.config.log);
        let previous = self.current.clone();
        // Numbers are never reused: a rolled-back generation's workers may
        // still be draining when the next one starts.
        self.last_generation += 1;
        let canary = Limits::of(&new.config.lifecycle);
        self.current = Current {
            generation: self.last_generation,
            desired: new.config.worker_count(),
            loaded: new,
        };
        self.board.set_generation(self.current.generation);
        self.lifecycle = Lifecycle::Reloading(Reload::new(previous, started, waiters, canary));
        self.backoff.reset(Instant::now());
        match canary {
            Some(c) => info!(
                generation = self.current.generation,
                workers = self.current.desired,
                canary_s = c.window.as_secs_f64(),
                "new generation starting with one canary worker, watched before the others \
                 are replaced"
            ),
            None => info!(
                generation = self.current.generation,
                workers = self.current.desired,
                "new generation starting; old workers retire as replacements become ready"
            ),
        }
    }

    /// The new configuration, with what it refers to loaded and its new
    /// addresses bound.
    fn load_new_config(&mut self) -> Result<Loaded, ReloadError> {
        let mut config = self.fixed.source.load()?;
        for extra in &self.fixed.extra_binds {
            if !config.server.bind.contains(extra) {
                config.server.bind.push(extra.clone());
            }
        }
        let loaded = Loaded::from_config(config)?;
        let c = &loaded.config.server;
        let owner = loaded.material.run_as.as_ref().map(|r| (r.uid, r.gid));
        self.sockets.listeners.ensure(
            &loaded.config.listen_addrs(),
            c.backlog,
            c.socket_mode,
            owner,
        )?;
        Ok(loaded)
    }

    /// Whether a leaving exec worker of another generation (or a process it
    /// started) still holds a listening socket: such a program may accept
    /// for a while after its stop signal (uvicorn does), so a reload is not
    /// done, and `rsvisor reload` does not return, until it let go of it or
    /// exited. Forked workers drop their listeners when told to drain.
    /// /proc is read at most every [`OLD_SOCKETS_CHECK`] (the loop can wake
    /// for every line a worker writes); a process that exits ends the
    /// wait at once, being reaped.
    fn old_program_still_accepts(&mut self) -> bool {
        let current = self.current.generation;
        let leaving: Vec<i32> = self
            .workers
            .iter()
            .filter(|w| w.generation != current && w.exec.is_some() && w.leaving())
            .map(|w| w.pid.as_raw())
            .collect();
        if leaving.is_empty() {
            return false;
        }
        let now = Instant::now();
        let Some(r) = self.lifecycle.reload_mut() else {
            return false;
        };
        if let Some((at, holds)) = r.old_sockets_seen {
            if now < at + OLD_SOCKETS_CHECK {
                return holds;
            }
        }
        let inodes = self.sockets.listeners.inodes();
        let parents = procfs::parents();
        let holds = leaving.into_iter().any(|pid| {
            procfs::tree(pid, &parents)
                .into_iter()
                .any(|p| procfs::holds_socket(p, &inodes))
        });
        r.old_sockets_seen = Some((now, holds));
        holds
    }

    fn refuse_reload(&mut self, waiters: Vec<ClientId>, why: String, started: Instant) {
        error!("reload refused, still serving with the current configuration: {why}");
        self.finish_reload(ReloadResult::InvalidConfig, started.elapsed(), why, waiters);
        self.start_queued_reload();
    }

    /// Ends a reload that is done, must be abandoned, or whose canary
    /// failed.
    pub(super) fn progress_reload(&mut self) {
        if let Some(why) = self.watch_canary() {
            self.roll_back(why);
            self.start_queued_reload();
            return;
        }
        if self.lifecycle.reload().is_none() {
            return;
        }
        let current = self.current.generation;
        let old_serving = self
            .workers
            .iter()
            .any(|w| w.generation != current && !w.leaving());
        // /proc is read only once everything else says the reload is done.
        let complete = self.ready_count() >= self.current.desired
            && !old_serving
            && !self.old_program_still_accepts();
        let Some(r) = self.lifecycle.reload() else {
            return;
        };
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
                let note = r.canary.as_ref().and_then(|c| c.note.as_deref());
                let msg = match note {
                    Some(n) => format!("generation {current} serving; {n}"),
                    None => format!("generation {current} serving"),
                };
                self.finish_reload(ReloadResult::Success, elapsed, msg, r.waiters);
                self.replace_helpers();
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
                self.restore(r.previous);
                let msg = format!(
                    "{failures} new workers failed to boot; generation {} keeps serving",
                    self.current.generation
                );
                self.finish_reload(ReloadResult::Abandoned, r.started.elapsed(), msg, r.waiters);
            }
        }
        self.start_queued_reload();
    }

    /// After a successful reload: the sidecar serves the old config's
    /// `metrics.bind` and is replaced; proxy mode's front workers are
    /// replaced only when what they serve changed (anything but the app
    /// processes' own keys, or certificates that may have been renewed),
    /// so that a reload of the app leaves every client connection open.
    fn replace_helpers(&mut self) {
        let new = &self.current.loaded.config;
        let mut replaced = false;
        for h in &mut self.helpers {
            let stale = match h.role {
                WorkerRole::Front => {
                    new.tls.cert.is_some() || front_view(&h.config) != front_view(new)
                }
                _ => true,
            };
            if stale && !h.leaving() {
                let graceful = h.config.lifecycle.graceful_timeout;
                h.drain(ExitReason::Reload, graceful);
                replaced = true;
            }
        }
        if replaced {
            // At once: a front that drains stops accepting now.
            self.helpers_not_before = Instant::now();
            self.spawn_helpers();
        }
    }

    /// Starts the canary's window once it is ready, samples it, and says
    /// why it failed, if it did.
    fn watch_canary(&mut self) -> Option<String> {
        let current = self.current.generation;
        let now = Instant::now();
        let board = self.board;
        let live: Vec<(Pid, usize)> = self.workers.iter().map(|w| (w.pid, w.slot)).collect();
        let ready = self
            .workers
            .iter()
            .find(|w| w.generation == current && w.serving())
            .map(|w| (w.pid, w.slot));
        let previous: Vec<(Pid, usize)> = self
            .workers
            .iter()
            .filter(|w| w.generation != current && !w.leaving() && !w.booting())
            .map(|w| (w.pid, w.slot))
            .collect();
        let canary = self.lifecycle.reload_mut()?.canary.as_mut()?;
        if !canary.holds_back() {
            return None;
        }
        if !canary.started() {
            let (pid, slot) = ready?;
            canary.start(board, (pid, slot), &previous, now);
            info!(
                pid = pid.as_raw(),
                window_s = canary.limits.window.as_secs_f64(),
                "canary ready: watching it against the previous generation"
            );
        }
        match canary.check(board, &live, now) {
            Verdict::Watching => None,
            Verdict::Fail(why) => Some(why),
            Verdict::Unjudged(why) => {
                warn!("{why}; replacing the other workers");
                canary.note = Some(why);
                None
            }
            Verdict::Pass => {
                if let Some(p) = canary.progress(now) {
                    info!(
                        pid = p.pid.as_raw(),
                        requests = p.canary.requests,
                        ratio_5xx = p.canary.ratio_5xx(),
                        p99_ms = p.canary.p99_us().map(|us| us / 1000.0),
                        previous_p99_ms = p.previous.p99_us().map(|us| us / 1000.0),
                        "canary passed: replacing the other workers"
                    );
                }
                None
            }
        }
    }

    /// The canary failed: the previous generation is current again, and
    /// the new generation's workers are drained (the fleet plan starts
    /// their replacements of the previous generation).
    fn roll_back(&mut self, why: String) {
        let Some(r) = self.lifecycle.end_reload() else {
            return;
        };
        let rejected = self.current.generation;
        error!(
            generation = rejected,
            "RELOAD ROLLED BACK: {why}; generation {} keeps serving", r.previous.generation
        );
        self.restore(r.previous);
        for w in &mut self.workers {
            if w.generation == rejected && !w.leaving() {
                info!(pid = w.pid.as_raw(), "draining the canary");
                let graceful = w.config.lifecycle.graceful_timeout;
                w.drain(ExitReason::Rollback, graceful);
                super::retire::mark_draining(self.board, w);
            }
        }
        let msg = format!(
            "{why}; generation {} keeps serving",
            self.current.generation
        );
        self.finish_reload(
            ReloadResult::RolledBack,
            r.started.elapsed(),
            msg,
            r.waiters,
        );
    }

    /// Makes a reload's previous generation current again.
    fn restore(&mut self, previous: Current) {
        self.log.apply(&previous.loaded.config.log);
        self.current = previous;
        self.board.set_generation(self.current.generation);
        // The new generation's addresses stay while its workers do.
        self.close_unused_listeners();
        self.backoff.reset(Instant::now());
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
            memory_returned: false,
        };
        let ok = result == ReloadResult::Success;
        let resp = Response {
            ok,
            error: (!ok).then(|| format!("reload {result}: {}", last.message)),
            status: None,
            reload: Some(last.report()),
            message: None,
            forensics: None,
        };
        for w in waiters {
            self.reply(w, &resp);
        }
        self.last_reload = Some(last);
        self.systemd_ready();
    }
}

/// A configuration without what only the app processes use: two configs
/// with the same view need no new front workers.
fn front_view(c: &Config) -> Config {
    let mut v = c.clone();
    v.source = None;
    v.origins = Default::default();
    v.server.workers = WorkerCount::Auto;
    v.app.command.clear();
    v.app.env.clear();
    v.app.cwd = None;
    v.app.ready = ReadyRule::Socket;
    v.app.stop_signal = Default::default();
    v.lifecycle.canary = Duration::ZERO;
    v
}

/// How often a reload waiting for old programs to let go of the listening
/// sockets looks at /proc (the master's tick: the loop wakes that often).
pub const OLD_SOCKETS_CHECK: Duration = super::MASTER_TICK;

/// Why a reload was refused before any worker changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration (or a file it names) is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A new address cannot be bound.
    #[error("{0}")]
    Bind(#[from] ListenError),
}
