//! What the master is doing, in one place. Every step of the loop asks the
//! lifecycle what it may do (start workers? start a reload?) instead of
//! combining flags.
//!
//! ```text
//!             HUP                     all new workers ready / abandoned
//!   Running ─────────► Reloading ───────────────────────────────► Running
//!      │  USR2                        new master ready: Stopping (handed over)
//!      ├─────────────► Upgrading ───► new master failed: Running
//!      │  TERM / INT / QUIT (from any phase)
//!      └─────────────► Stopping ────► exit when no worker is left
//! ```

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::super::canary::{Canary, Limits};
use super::super::control_socket::ClientId;
use super::Current;
use crate::proto::state::Phase;

/// New workers that may fail to boot during one reload before it is
/// abandoned and the previous generation is restored.
pub const RELOAD_MAX_BOOT_FAILURES: u32 = 3;

pub enum Lifecycle {
    /// Serving; the fleet converges on the current generation.
    Running,
    /// A new generation replaces the previous one, worker by worker.
    Reloading(Reload),
    /// A new master binary is starting; this one serves until it is ready.
    Upgrading(Upgrade),
    /// On the way out; nothing new starts.
    Stopping(Stop),
}

pub struct Stop {
    pub kind: StopKind,
    /// A new master (binary upgrade) owns the sockets, socket files and
    /// pidfile now, and speaks to systemd.
    pub handed_over: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// TERM: `/ready` fails at once; at `close_at` (after `shutdown_delay`)
    /// the listeners close and the workers drain.
    Graceful { close_at: Instant, closed: bool },
    /// INT / QUIT: listeners closed, workers told to exit now.
    Quick,
}

/// What to do with a reload request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadAdmission {
    Start,
    /// Another reload or an upgrade is in progress: run it afterwards.
    Queue,
    /// Stopping: never.
    Refuse,
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self {
            Lifecycle::Running => Phase::Running,
            Lifecycle::Reloading(_) => Phase::Reloading,
            Lifecycle::Upgrading(_) => Phase::Upgrading,
            Lifecycle::Stopping(_) => Phase::Stopping,
        }
    }

    /// Whether the fleet is maintained: workers replaced, retired, started.
    pub fn serving(&self) -> bool {
        !matches!(self, Lifecycle::Stopping(_))
    }

    pub fn stopping(&self) -> bool {
        matches!(self, Lifecycle::Stopping(_))
    }

    pub fn quick_stopping(&self) -> bool {
        matches!(
            self,
            Lifecycle::Stopping(Stop {
                kind: StopKind::Quick,
                ..
            })
        )
    }

    pub fn handed_over(&self) -> bool {
        matches!(
            self,
            Lifecycle::Stopping(Stop {
                handed_over: true,
                ..
            })
        )
    }

    pub fn admit_reload(&self) -> ReloadAdmission {
        match self {
            Lifecycle::Running => ReloadAdmission::Start,
            Lifecycle::Reloading(_) | Lifecycle::Upgrading(_) => ReloadAdmission::Queue,
            Lifecycle::Stopping(_) => ReloadAdmission::Refuse,
        }
    }

    /// A binary upgrade starts only from a settled fleet.
    pub fn may_upgrade(&self) -> bool {
        matches!(self, Lifecycle::Running)
    }

    pub fn reload(&self) -> Option<&Reload> {
        match self {
            Lifecycle::Reloading(r) => Some(r),
            _ => None,
        }
    }

    pub fn reload_mut(&mut self) -> Option<&mut Reload> {
        match self {
            Lifecycle::Reloading(r) => Some(r),
            _ => None,
        }
    }

    pub fn upgrade(&self) -> Option<&Upgrade> {
        match self {
            Lifecycle::Upgrading(u) => Some(u),
            _ => None,
        }
    }

    pub fn upgrade_mut(&mut self) -> Option<&mut Upgrade> {
        match self {
            Lifecycle::Upgrading(u) => Some(u),
            _ => None,
        }
    }

    /// Leaves `Reloading` (its reload is returned) for `Running`.
    pub fn end_reload(&mut self) -> Option<Reload> {
        match std::mem::replace(self, Lifecycle::Running) {
            Lifecycle::Reloading(r) => Some(r),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Leaves `Upgrading` (its upgrade is returned) for `Running`.
    pub fn end_upgrade(&mut self) -> Option<Upgrade> {
        match std::mem::replace(self, Lifecycle::Running) {
            Lifecycle::Upgrading(u) => Some(u),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Enters `Stopping`; what the master was doing is returned so that
    /// its waiters can be answered and a half-started upgrade killed.
    pub fn stop(&mut self, kind: StopKind, handed_over: bool) -> Lifecycle {
        let handed_over = handed_over || self.handed_over();
        std::mem::replace(self, Lifecycle::Stopping(Stop { kind, handed_over }))
    }

    /// The graceful stop's deadline for closing the listeners, if pending.
    pub fn close_deadline(&self) -> Option<Instant> {
        match self {
            Lifecycle::Stopping(Stop {
                kind:
                    StopKind::Graceful {
                        close_at,
                        closed: false,
                    },
                ..
            }) => Some(*close_at),
            _ => None,
        }
    }

    /// After a graceful stop's `close_at`: mark the listeners closed.
    /// Returns true the one time the caller must close them.
    pub fn close_listeners_due(&mut self, now: Instant) -> bool {
        if let Lifecycle::Stopping(Stop {
            kind: StopKind::Graceful { close_at, closed },
            ..
        }) = self
        {
            if !*closed && now >= *close_at {
                *closed = true;
                return true;
            }
        }
        false
    }

    /// Stopping with the listeners closed: the master exits when the last
    /// worker is gone.
    pub fn draining_to_exit(&self) -> bool {
        matches!(
            self,
            Lifecycle::Stopping(Stop {
                kind: StopKind::Quick | StopKind::Graceful { closed: true, .. },
                ..
            })
        )
    }
}

/// A reload in progress (`Lifecycle::Reloading`).
pub struct Reload {
    /// The generation being replaced, restored if the reload is abandoned.
    pub previous: Current,
    pub started: Instant,
    failures: u32,
    /// Control-socket clients waiting for the result.
    pub waiters: Vec<ClientId>,
    /// `lifecycle.canary`: one worker first, watched before the others.
    pub canary: Option<Box<Canary>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    InProgress,
    Done { elapsed: Duration },
    Abandon { failures: u32 },
}

impl Reload {
    pub fn new(
        previous: Current,
        started: Instant,
        waiters: Vec<ClientId>,
        canary: Option<Limits>,
    ) -> Reload {
        Reload {
            previous,
            started,
            failures: 0,
            waiters,
            canary: canary.map(|l| Box::new(Canary::new(l))),
        }
    }

    pub fn boot_failed(&mut self) {
        self.failures += 1;
    }

    /// `complete`: the new generation is fully ready and no old worker
    /// still serves.
    pub fn outcome(&self, complete: bool, now: Instant) -> ReloadOutcome {
        judge(
            self.failures,
            complete,
            now.saturating_duration_since(self.started),
        )
    }
}

/// The reload rule: too many boot failures abandon it, whatever else.
fn judge(failures: u32, complete: bool, elapsed: Duration) -> ReloadOutcome {
    if failures >= RELOAD_MAX_BOOT_FAILURES {
        ReloadOutcome::Abandon { failures }
    } else if complete {
        ReloadOutcome::Done { elapsed }
    } else {
        ReloadOutcome::InProgress
    }
}

/// An upgrade this master started: the new master's pid, and what it
/// said so far on its pipe (the shell reads the pipe).
pub struct Upgrade {
    pub pid: Pid,
    pub deadline: Instant,
    pub started: Instant,
    said: Vec<u8>,
    closed: bool,
}

/// Where an upgrade stands, from what the new master said and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeVerdict {
    Waiting,
    Ready,
    Failed(&'static str),
}

/// The upgrade rule: "ready" wins; a closed pipe or the deadline fail it.
pub fn judge_upgrade(said: &[u8], closed: bool, late: bool) -> UpgradeVerdict {
    if said.starts_with(b"ready") {
        UpgradeVerdict::Ready
    } else if closed {
        UpgradeVerdict::Failed("the new master closed its pipe before it was ready")
    } else if late {
        UpgradeVerdict::Failed("the new master was not ready within lifecycle.timeout")
    } else {
        UpgradeVerdict::Waiting
    }
}

impl Upgrade {
    pub fn new(pid: Pid, started: Instant, deadline: Instant) -> Upgrade {
        Upgrade {
            pid,
            deadline,
            started,
            said: Vec::new(),
            closed: false,
        }
    }

    /// Takes in what the new master wrote (`closed`: its end is closed).
    pub fn heard(&mut self, bytes: &[u8], closed: bool) {
        // "ready" is all it ever says; more is not kept.
        if self.said.len() < 64 {
            self.said.extend_from_slice(bytes);
        }
        self.closed |= closed;
    }

    pub fn verdict(&self, now: Instant) -> UpgradeVerdict {
        judge_upgrade(&self.said, self.closed, now >= self.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reloads_are_queued_during_reloads_and_refused_when_stopping() {
        assert_eq!(Lifecycle::Running.admit_reload(), ReloadAdmission::Start);
        let mut l = Lifecycle::Running;
        l.stop(StopKind::Quick, false);
        assert_eq!(l.admit_reload(), ReloadAdmission::Refuse);
        assert!(!l.serving());
        assert!(l.draining_to_exit());
    }

    #[test]
    fn graceful_stop_closes_listeners_once_after_the_delay() {
        let now = Instant::now();
        let mut l = Lifecycle::Running;
        l.stop(
            StopKind::Graceful {
                close_at: now + Duration::from_secs(1),
                closed: false,
            },
            false,
        );
        assert!(!l.close_listeners_due(now));
        assert!(!l.draining_to_exit());
        assert_eq!(l.close_deadline(), Some(now + Duration::from_secs(1)));
        assert!(l.close_listeners_due(now + Duration::from_secs(2)));
        assert!(!l.close_listeners_due(now + Duration::from_secs(3)));
        assert!(l.draining_to_exit());
        assert_eq!(l.close_deadline(), None);
    }

    #[test]
    fn a_quick_stop_after_a_handover_stays_handed_over() {
        let mut l = Lifecycle::Running;
        l.stop(
            StopKind::Graceful {
                close_at: Instant::now(),
                closed: false,
            },
            true,
        );
        l.stop(StopKind::Quick, false);
        assert!(l.handed_over());
        assert!(l.quick_stopping());
    }

    #[test]
    fn ending_a_reload_only_ends_a_reload() {
        let mut l = Lifecycle::Running;
        assert!(l.end_reload().is_none());
        assert!(matches!(l, Lifecycle::Running));
    }

    #[test]
    fn too_many_boot_failures_abandon_even_a_complete_reload() {
        let d = Duration::from_millis(5);
        assert_eq!(judge(0, false, d), ReloadOutcome::InProgress);
        assert_eq!(judge(2, true, d), ReloadOutcome::Done { elapsed: d });
        assert_eq!(
            judge(RELOAD_MAX_BOOT_FAILURES, true, d),
            ReloadOutcome::Abandon {
                failures: RELOAD_MAX_BOOT_FAILURES
            }
        );
    }

    #[test]
    fn ready_wins_then_a_closed_pipe_then_the_deadline() {
        assert_eq!(judge_upgrade(b"", false, false), UpgradeVerdict::Waiting);
        assert_eq!(judge_upgrade(b"rea", false, false), UpgradeVerdict::Waiting);
        assert_eq!(judge_upgrade(b"ready\n", true, true), UpgradeVerdict::Ready);
        assert!(matches!(
            judge_upgrade(b"", true, false),
            UpgradeVerdict::Failed(_)
        ));
        assert!(matches!(
            judge_upgrade(b"", false, true),
            UpgradeVerdict::Failed(_)
        ));
    }
}
