//! What a reload needs from the world (the core decides the rest): the
//! new configuration loaded and its addresses bound, whether a leaving
//! program still accepts on a listening socket, the canary's samples, and
//! new helpers once a reload is done.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use nix::unistd::Pid;

use super::canary::{Canary, Verdict};
use super::core::ReloadError;
use super::{Fleet, Sockets};
use crate::config::material::Loaded;
use crate::config::{BindAddr, Config, ConfigSource, ReadyRule, WorkerCount};
use crate::os::procfs;
use crate::proto::outcome::ExitReason;
use crate::worker::WorkerRole;

impl Sockets {
    /// The new configuration, with what it refers to loaded and its new
    /// addresses bound (`extra_binds`: inherited sockets no `server.bind`
    /// names, kept across reloads).
    pub(super) fn load_new_config(
        &mut self,
        source: &ConfigSource,
        extra_binds: &[BindAddr],
    ) -> Result<Loaded, ReloadError> {
        let mut config = source.load()?;
        for extra in extra_binds {
            if !config.server.bind.contains(extra) {
                config.server.bind.push(extra.clone());
            }
        }
        let loaded = Loaded::from_config(config)?;
        let c = &loaded.config.server;
        let owner = loaded.material.run_as.as_ref().map(|r| (r.uid, r.gid));
        self.listeners.ensure(
            &loaded.config.listen_addrs(),
            c.backlog,
            c.socket_mode,
            owner,
        )?;
        Ok(loaded)
    }

    /// Whether one of `leaving` (exec workers of another generation told
    /// to stop) or a process it started still holds a listening socket:
    /// such a program may accept for a while after its stop signal
    /// (uvicorn does), so a reload is not done, and `rsvisor reload` does
    /// not return, until it let go of it or exited. Forked workers drop
    /// their listeners when told to drain. /proc is read at most every
    /// [`OLD_SOCKETS_CHECK`] (the loop can wake for every line a worker
    /// writes); a process that exits ends the wait at once, being reaped.
    /// `None`: no reload is in progress (forget what was seen).
    pub(super) fn old_program_still_accepts(&mut self, leaving: Option<Vec<i32>>) -> bool {
        let Some(leaving) = leaving else {
            self.old_holders_seen = None;
            return false;
        };
        if leaving.is_empty() {
            return false;
        }
        let now = Instant::now();
        if let Some((at, holds)) = self.old_holders_seen {
            if now < at + OLD_SOCKETS_CHECK {
                return holds;
            }
        }
        let inodes = self.listeners.inodes();
        let parents = procfs::parents();
        let holds = leaving.into_iter().any(|pid| {
            procfs::tree(pid, &parents)
                .into_iter()
                .any(|p| procfs::holds_socket(p, &inodes))
        });
        self.old_holders_seen = Some((now, holds));
        holds
    }
}

impl Fleet {
    /// Exec workers of another generation than `current` told to stop.
    pub(super) fn leaving_programs(&self, current: u32) -> Vec<i32> {
        self.workers
            .iter()
            .filter(|w| w.generation != current && w.exec.is_some() && w.leaving())
            .map(|w| w.pid.as_raw())
            .collect()
    }

    /// After a successful reload: the sidecar serves the old config's
    /// `metrics.bind` and is replaced; proxy mode's front workers are
    /// replaced only when what they serve changed (anything but the app
    /// processes' own keys, or certificates that may have been renewed),
    /// so that a reload of the app leaves every client connection open.
    /// Returns whether one was told to drain.
    pub(super) fn replace_helpers(&mut self, new: &Config) -> bool {
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
        }
        replaced
    }

    /// Starts the canary's window once it is ready, samples it, and says
    /// why it failed, if it did.
    pub(super) fn watch_canary(&self, canary: &mut Canary, current: u32) -> Option<String> {
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
