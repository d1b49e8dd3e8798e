//! Processes an app started that outlive their worker: the members of an
//! exec worker's process group left behind when it exited, and orphans
//! that the kernel hands to the master (a child subreaper) — a daemonised
//! helper, a child that ignored the stop signal, a grandchild that left
//! the group with `setsid`. Each is logged once and sent SIGTERM when it is
//! found, and SIGKILL when its worker's `graceful_timeout` is over; the
//! master does not exit before they are gone.
//!
//! Only the decisions live here; the caller supplies the process table
//! (`procfs::processes`) and sends the signals this returns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::os::procfs::ProcEntry;

/// How often the process table is read while strays may exist.
pub const STRAY_SWEEP: Duration = Duration::from_millis(500);

/// A worker that exited, whose leftovers are looked for.
#[derive(Debug, Clone, Copy)]
struct Watch {
    worker: i32,
    slot: usize,
    /// Exec workers lead their own process group (pgid = their pid).
    group: Option<i32>,
    /// The end of its graceful_timeout: leftovers are killed then.
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Stray {
    worker: Option<(i32, usize)>,
    deadline: Instant,
    killed: bool,
}

/// One thing to do about a stray process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub pid: i32,
    pub signal: Signal,
    /// The worker (pid, slot) it outlived, when known.
    pub worker: Option<(i32, usize)>,
    /// True the first time this process is seen (log it with its command).
    pub found: bool,
}

#[derive(Debug, Default)]
pub struct Strays {
    watches: Vec<Watch>,
    seen: HashMap<i32, Stray>,
    next_sweep: Option<Instant>,
    /// Children the program had before the master started (an embedding
    /// program's own helpers): never strays.
    exempt: Vec<i32>,
}

impl Strays {
    /// `existing`: the children the process already has.
    pub fn new(existing: Vec<i32>) -> Strays {
        Strays {
            exempt: existing,
            ..Strays::default()
        }
    }

    /// A worker was reaped: look for what it left until `deadline`.
    pub fn worker_exited(&mut self, worker: i32, slot: usize, exec: bool, deadline: Instant) {
        self.watches.push(Watch {
            worker,
            slot,
            group: exec.then_some(worker),
            deadline,
        });
        // At once: the kernel reparented its orphans before it was reaped.
        self.next_sweep = Some(Instant::now());
    }

    /// Nothing left to look for: the master may exit.
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty() && self.seen.is_empty()
    }

    /// When [`Self::sweep`] is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let kill = self
            .seen
            .values()
            .filter(|s| !s.killed)
            .map(|s| s.deadline)
            .min();
        match (self.next_sweep, kill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the process table should be read now.
    pub fn due(&self, now: Instant) -> bool {
        self.next_deadline().is_some_and(|at| now >= at)
    }

    /// Decides from the process table: `me` is the master's pid, `known`
    /// says whether a child of the master is one it started itself.
    pub fn sweep(
        &mut self,
        now: Instant,
        me: i32,
        table: &[ProcEntry],
        known: impl Fn(i32) -> bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut live = Vec::new();
        let mut groups_in_use = Vec::new();
        // A process found with no watch of its own: killed with the
        // earliest deadline still running, at once if there is none.
        let fallback = self
            .watches
            .iter()
            .map(|w| w.deadline)
            .chain(self.seen.values().map(|s| s.deadline))
            .min()
            .unwrap_or(now);
        for p in table {
            let watch = self
                .watches
                .iter()
                .find(|w| w.group.is_some_and(|g| g == p.pgrp) && p.pid != me);
            let orphan = p.ppid == me && !known(p.pid) && !self.exempt.contains(&p.pid);
            if watch.is_none() && !orphan {
                continue;
            }
            if let Some(w) = watch {
                groups_in_use.push(w.worker);
            }
            live.push(p.pid);
            let fresh = !self.seen.contains_key(&p.pid);
            let stray = self.seen.entry(p.pid).or_insert_with(|| Stray {
                worker: watch
                    .map(|w| (w.worker, w.slot))
                    .or_else(|| self.watches.first().map(|w| (w.worker, w.slot))),
                deadline: watch.map(|w| w.deadline).unwrap_or(fallback),
                killed: false,
            });
            if now >= stray.deadline && !stray.killed {
                stray.killed = true;
                actions.push(Action {
                    pid: p.pid,
                    signal: Signal::SIGKILL,
                    worker: stray.worker,
                    found: fresh,
                });
            } else if fresh {
                actions.push(Action {
                    pid: p.pid,
                    signal: Signal::SIGTERM,
                    worker: stray.worker,
                    found: true,
                });
            }
        }
        self.seen.retain(|pid, _| live.contains(pid));
        // A watch ends once its group is empty: its orphans, if any, were
        // reparented before it was reaped and are in `seen` by now.
        self.watches.retain(|w| groups_in_use.contains(&w.worker));
        self.next_sweep = (!self.is_empty()).then(|| now + STRAY_SWEEP);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: i32 = 100;

    fn p(pid: i32, ppid: i32, pgrp: i32) -> ProcEntry {
        ProcEntry { pid, ppid, pgrp }
    }

    #[test]
    fn a_clean_exit_leaves_nothing_to_watch() {
        let mut s = Strays::default();
        let now = Instant::now();
        s.worker_exited(200, 0, true, now + Duration::from_secs(30));
        let table = [p(ME, 1, ME), p(201, ME, 201)];
        assert!(s.sweep(now, ME, &table, |pid| pid == 201).is_empty());
        assert!(s.is_empty());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn group_members_and_orphans_get_term_then_kill_at_the_deadline() {
        let mut s = Strays::default();
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(5);
        s.worker_exited(200, 3, true, end);
        // 300 stayed in the group; 400 left it with setsid (reparented to
        // the master); 201 is a worker the master knows.
        let table = [
            p(ME, 1, ME),
            p(300, ME, 200),
            p(400, ME, 400),
            p(201, ME, 201),
        ];
        let a = s.sweep(t0, ME, &table, |pid| pid == 201);
        assert_eq!(a.len(), 2);
        assert!(a
            .iter()
            .all(|a| a.signal == Signal::SIGTERM && a.found && a.worker == Some((200, 3))));
        assert!(!s.is_empty());
        // Before the deadline: nothing more to do.
        assert!(s
            .sweep(t0 + Duration::from_secs(1), ME, &table, |pid| pid == 201)
            .is_empty());
        let a = s.sweep(end, ME, &table, |pid| pid == 201);
        let kills: Vec<i32> = a
            .iter()
            .filter(|a| a.signal == Signal::SIGKILL && !a.found)
            .map(|a| a.pid)
            .collect();
        assert_eq!(kills, vec![300, 400]);
        // Killed once only, and forgotten once gone.
        assert!(s.sweep(end, ME, &table, |pid| pid == 201).is_empty());
        assert!(s.sweep(end, ME, &[p(ME, 1, ME)], |_| false).is_empty());
        assert!(s.is_empty());
    }

    #[test]
    fn a_grandchild_reparented_after_the_deadline_is_killed_at_once() {
        let mut s = Strays::default();
        let t0 = Instant::now();
        s.worker_exited(200, 0, true, t0);
        let a = s.sweep(t0, ME, &[p(300, ME, 300)], |_| false);
        assert_eq!(a[0].signal, Signal::SIGKILL);
        assert!(a[0].found);
        // 300 died; its child 500 came to the master.
        let a = s.sweep(t0 + STRAY_SWEEP, ME, &[p(500, ME, 300)], |_| false);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].pid, a[0].signal), (500, Signal::SIGKILL));
    }

    #[test]
    fn children_from_before_the_master_are_left_alone() {
        let mut s = Strays::new(vec![150]);
        let t0 = Instant::now();
        s.worker_exited(200, 0, false, t0);
        assert!(s.sweep(t0, ME, &[p(150, ME, ME)], |_| false).is_empty());
        assert!(s.is_empty());
    }

    #[test]
    fn the_master_itself_is_never_a_stray() {
        let mut s = Strays::default();
        let t0 = Instant::now();
        // A forked (non-exec) worker shares the master's group: no group
        // watch, only orphans count.
        s.worker_exited(200, 0, false, t0);
        assert!(s.sweep(t0, ME, &[p(ME, 1, ME)], |_| false).is_empty());
        assert!(s.is_empty());
    }
}
