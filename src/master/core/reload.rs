//! The core's reloads: started, queued behind another or an upgrade,
//! refused (an invalid config), done, abandoned (new workers cannot boot)
//! or rolled back (the canary failed); the previous generation restored.

use std::time::{Duration, Instant};

use tracing::{error, info};

use super::lifecycle::{Lifecycle, Reload, ReloadAdmission, ReloadOutcome};
use super::{Core, Current, Effect, Member};
use crate::config::material::Loaded;
use crate::config::ConfigError;
use crate::master::canary::Limits;
use crate::master::control_socket::ClientId;
use crate::net::listen::ListenError;
use crate::proto::control::{ReloadReport, Response};
use crate::proto::outcome::{ExitReason, ReloadResult};

/// The result of the last reload, for `rsvisor status`.
pub struct LastReload {
    pub result: ReloadResult,
    pub generation: u32,
    pub at: Instant,
    pub duration: Duration,
    pub message: String,
    /// The code and heap the reload cycle used were given back, once the
    /// last worker of another generation was gone.
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

impl Core {
    /// HUP or `rsvisor reload`: start a reload now, or queue it behind the
    /// reload or upgrade in progress (never interleave two).
    pub(super) fn request_reload(
        &mut self,
        waiter: Option<ClientId>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        match self.lifecycle.admit_reload() {
            ReloadAdmission::Start => {
                fx.push(Effect::NotifyReloading);
                fx.push(Effect::LoadConfig {
                    waiters: waiter.into_iter().collect(),
                    started: now,
                });
            }
            ReloadAdmission::Queue => {
                info!("reload requested during a reload or upgrade: queued until it finishes");
                self.queued_reload
                    .get_or_insert_with(Vec::new)
                    .extend(waiter);
            }
            ReloadAdmission::Refuse => {
                info!("reload ignored: stopping");
                if let Some(to) = waiter {
                    fx.push(Effect::Reply {
                        to,
                        response: Box::new(Response::error("stopping; not reloading")),
                    });
                }
            }
        }
    }

    /// Runs a reload that waited for the previous one (or an upgrade).
    pub(super) fn start_queued_reload(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if let Some(waiters) = self.queued_reload.take() {
            fx.push(Effect::NotifyReloading);
            fx.push(Effect::LoadConfig {
                waiters,
                started: now,
            });
        }
    }

    pub(super) fn start_reload(
        &mut self,
        new: Loaded,
        waiters: Vec<ClientId>,
        started: Instant,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        if !matches!(self.lifecycle, Lifecycle::Running) {
            // Stopping began while the configuration loaded.
            return self.refuse_reload(waiters, "stopping; not reloading".into(), started, now, fx);
        }
        fx.push(Effect::ApplyLog(new.config.log.clone()));
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
        fx.push(Effect::SetGeneration(self.current.generation));
        self.lifecycle = Lifecycle::Reloading(Reload::new(previous, started, waiters, canary));
        self.backoff.reset(now);
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

    pub(super) fn refuse_reload(
        &mut self,
        waiters: Vec<ClientId>,
        why: String,
        started: Instant,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        error!("reload refused, still serving with the current configuration: {why}");
        let elapsed = now.saturating_duration_since(started);
        self.finish_reload(ReloadResult::InvalidConfig, elapsed, why, waiters, now, fx);
        self.start_queued_reload(now, fx);
    }

    pub(super) fn finish_reload(
        &mut self,
        result: ReloadResult,
        duration: Duration,
        message: String,
        waiters: Vec<ClientId>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        fx.push(Effect::CountReload(result));
        let last = LastReload {
            result,
            generation: self.current.generation,
            at: now,
            duration,
            message,
            memory_returned: false,
        };
        let ok = result == ReloadResult::Success;
        for to in waiters {
            fx.push(Effect::Reply {
                to,
                response: Box::new(Response {
                    ok,
                    error: (!ok).then(|| format!("reload {result}: {}", last.message)),
                    status: None,
                    reload: Some(last.report()),
                    message: None,
                    forensics: None,
                }),
            });
        }
        self.last_reload = Some(last);
        fx.push(Effect::NotifyReady);
    }

    /// Makes a reload's previous generation current again.
    pub(super) fn restore(&mut self, previous: Current, now: Instant, fx: &mut Vec<Effect>) {
        fx.push(Effect::ApplyLog(previous.loaded.config.log.clone()));
        self.current = previous;
        fx.push(Effect::SetGeneration(self.current.generation));
        // The new generation's addresses stay while its workers do.
        fx.push(Effect::CloseUnusedListeners);
        self.backoff.reset(now);
    }

    /// Ends a reload that is done or must be abandoned.
    pub(super) fn progress_reload(
        &mut self,
        members: &[Member],
        old_program_accepts: bool,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let current = self.current.generation;
        let old_serving = members
            .iter()
            .any(|m| m.generation != current && !m.leaving);
        let complete = self.ready_count(members) >= self.current.desired
            && !old_serving
            && !old_program_accepts;
        let Some(r) = self.lifecycle.reload() else {
            return;
        };
        match r.outcome(complete, now) {
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
                self.finish_reload(ReloadResult::Success, elapsed, msg, r.waiters, now, fx);
                fx.push(Effect::ReplaceHelpers);
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
                self.restore(r.previous, now, fx);
                let msg = format!(
                    "{failures} new workers failed to boot; generation {} keeps serving",
                    self.current.generation
                );
                let elapsed = now.saturating_duration_since(r.started);
                self.finish_reload(ReloadResult::Abandoned, elapsed, msg, r.waiters, now, fx);
            }
        }
        self.start_queued_reload(now, fx);
    }

    /// The canary failed: the previous generation is current again, and
    /// the new generation's workers drain (the next plan starts their
    /// replacements of the previous generation).
    pub(super) fn roll_back(
        &mut self,
        why: String,
        members: &[Member],
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some(r) = self.lifecycle.end_reload() else {
            return;
        };
        let rejected = self.current.generation;
        error!(
            generation = rejected,
            "RELOAD ROLLED BACK: {why}; generation {} keeps serving", r.previous.generation
        );
        self.restore(r.previous, now, fx);
        for m in members {
            if m.generation == rejected && !m.leaving {
                info!(pid = m.pid.as_raw(), "draining the canary");
                fx.push(Effect::Drain {
                    pid: m.pid,
                    reason: ExitReason::Rollback,
                });
            }
        }
        let msg = format!(
            "{why}; generation {} keeps serving",
            self.current.generation
        );
        let elapsed = now.saturating_duration_since(r.started);
        self.finish_reload(ReloadResult::RolledBack, elapsed, msg, r.waiters, now, fx);
    }

    /// Once a reload cycle is over (the last worker of another generation
    /// is gone), the code it ran once and the heap it freed are given back.
    pub(super) fn return_memory(&mut self, members: &[Member], fx: &mut Vec<Effect>) {
        let current = self.current.generation;
        let Some(last) = &mut self.last_reload else {
            return;
        };
        if last.memory_returned
            || !matches!(self.lifecycle, Lifecycle::Running)
            || members.iter().any(|m| m.generation != current)
        {
            return;
        }
        last.memory_returned = true;
        fx.push(Effect::ReturnMemory);
    }
}
