//! The rule that keeps capacity: which workers to drain and how many to
//! start, from what each worker is doing. Pure, so it is tested alone.
//!
//! - A worker is *good* if it belongs to the current generation and has not
//!   asked to retire; *obsolete* if it is ready but of an old generation or
//!   retiring (max_requests, memory). Obsolete workers keep serving until a
//!   good one is ready to take their place: capacity never drops below
//!   `desired` because of a replacement.
//! - Replacements are started one at a time; positions nobody fills (a
//!   crashed worker, the first start) are filled at once.
//! - `limit` caps the good workers (a reload's canary window runs one);
//!   the worker the canary replaces is the busiest old one, so that the
//!   connections it drops reconnect to the (idle) canary: with long-lived
//!   keep-alive connections, replacing an idle worker would leave the
//!   canary without traffic.

/// What the plan needs to know about one live worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub current_generation: bool,
    pub booting: bool,
    /// Asked to retire itself (Retiring in the scoreboard).
    pub retiring: bool,
    /// Already told to leave by the master.
    pub leaving: bool,
    /// Open connections (what a drain moves elsewhere).
    pub connections: u64,
}

impl Seen {
    fn good(&self) -> bool {
        self.current_generation && !self.retiring && !self.leaving
    }
    fn obsolete(&self) -> bool {
        !self.leaving && !self.booting && (!self.current_generation || self.retiring)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indexes (into the input) of workers to drain, in order.
    pub drain: Vec<usize>,
    /// How many new workers of the current generation to start.
    pub spawn: usize,
}

/// `workers` must be ordered oldest first; `limit` caps the good workers
/// (ready or booting) below `desired`.
pub fn plan(desired: usize, workers: &[Seen], limit: Option<usize>) -> Plan {
    let mut out = Plan::default();
    let mut drained = vec![false; workers.len()];

    // A booting worker of an old generation will never be needed.
    for (i, w) in workers.iter().enumerate() {
        if !w.leaving && w.booting && !w.current_generation {
            drained[i] = true;
            out.drain.push(i);
        }
    }

    let count = |f: &dyn Fn(&Seen) -> bool, drained: &[bool]| {
        workers
            .iter()
            .zip(drained)
            .filter(|(w, d)| !**d && f(w))
            .count()
    };
    let ready_good = count(&|w| w.good() && !w.booting, &drained);
    let booting_good = count(&|w| w.good() && w.booting, &drained);
    let mut obsolete = count(&|w| w.obsolete(), &drained);

    // Drain obsolete workers while the ready good ones cover for them:
    // old generations first, then retiring ones, oldest first.
    let mut order: Vec<usize> = (0..workers.len())
        .filter(|i| !drained[*i] && workers[*i].obsolete())
        .collect();
    match limit {
        Some(_) => order.sort_by_key(|i| {
            let w = &workers[*i];
            (w.current_generation, std::cmp::Reverse(w.connections), *i)
        }),
        None => order.sort_by_key(|i| (workers[*i].current_generation, *i)),
    }
    for i in order {
        if ready_good + obsolete > desired {
            drained[i] = true;
            out.drain.push(i);
            obsolete -= 1;
        }
    }

    // Too many good workers (scale down): booting ones first, then the
    // oldest ready ones.
    let mut surplus = (ready_good + booting_good).saturating_sub(desired);
    let mut by_preference: Vec<usize> = (0..workers.len())
        .filter(|i| !drained[*i] && workers[*i].good())
        .collect();
    by_preference.sort_by_key(|i| (!workers[*i].booting, *i));
    for i in by_preference {
        if surplus == 0 {
            break;
        }
        drained[i] = true;
        out.drain.push(i);
        surplus -= 1;
    }
    let ready_good = count(&|w| w.good() && !w.booting, &drained);
    let booting_good = count(&|w| w.good() && w.booting, &drained);

    // Start what is missing: uncovered positions at once, covered ones (an
    // obsolete worker still serves there) one at a time.
    let uncovered = desired.saturating_sub(ready_good + obsolete);
    let mut want_booting = desired
        .saturating_sub(ready_good)
        .min(uncovered + obsolete.min(1));
    if let Some(limit) = limit {
        want_booting = want_booting.min(limit.saturating_sub(ready_good));
    }
    out.spawn = want_booting.saturating_sub(booting_good);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(current: bool) -> Seen {
        Seen {
            current_generation: current,
            booting: false,
            retiring: false,
            leaving: false,
            connections: 0,
        }
    }
    fn booting() -> Seen {
        Seen {
            booting: true,
            ..ready(true)
        }
    }
    fn retiring() -> Seen {
        Seen {
            retiring: true,
            ..ready(true)
        }
    }

    #[test]
    fn first_start_spawns_all_at_once() {
        assert_eq!(
            plan(3, &[], None),
            Plan {
                drain: vec![],
                spawn: 3
            }
        );
    }

    #[test]
    fn crashed_worker_is_replaced_at_once() {
        assert_eq!(plan(2, &[ready(true)], None).spawn, 1);
    }

    #[test]
    fn rolling_reload_one_at_a_time() {
        // HUP: two old workers serve; start one new.
        assert_eq!(
            plan(2, &[ready(false), ready(false)], None),
            Plan {
                drain: vec![],
                spawn: 1
            }
        );
        // While it boots, nothing more.
        assert_eq!(
            plan(2, &[ready(false), ready(false), booting()], None),
            Plan::default()
        );
        // It is ready: drain one old, start the next.
        assert_eq!(
            plan(2, &[ready(false), ready(false), ready(true)], None),
            Plan {
                drain: vec![0],
                spawn: 1
            }
        );
        // Last step.
        assert_eq!(
            plan(2, &[ready(false), ready(true), ready(true)], None),
            Plan {
                drain: vec![0],
                spawn: 0
            }
        );
    }

    #[test]
    fn retiring_workers_replaced_one_after_another() {
        assert_eq!(
            plan(2, &[retiring(), retiring()], None),
            Plan {
                drain: vec![],
                spawn: 1
            }
        );
        assert_eq!(
            plan(2, &[retiring(), retiring(), ready(true)], None),
            Plan {
                drain: vec![0],
                spawn: 1
            }
        );
    }

    #[test]
    fn scale_down_drains_oldest() {
        assert_eq!(
            plan(1, &[ready(true), ready(true)], None),
            Plan {
                drain: vec![0],
                spawn: 0
            }
        );
        assert_eq!(
            plan(1, &[ready(true), booting()], None),
            Plan {
                drain: vec![1],
                spawn: 0
            }
        );
    }

    #[test]
    fn old_booting_worker_is_dropped() {
        let old_booting = Seen {
            current_generation: false,
            ..booting()
        };
        assert_eq!(
            plan(1, &[old_booting, ready(false)], None),
            Plan {
                drain: vec![0],
                spawn: 1
            }
        );
    }

    #[test]
    fn leaving_workers_do_not_count() {
        let leaving = Seen {
            leaving: true,
            ..ready(true)
        };
        assert_eq!(plan(2, &[leaving, ready(true)], None).spawn, 1);
    }

    #[test]
    fn a_canary_replaces_one_worker_and_holds_the_rest() {
        let one = Some(1);
        assert_eq!(plan(2, &[ready(false), ready(false)], one).spawn, 1);
        assert_eq!(
            plan(2, &[ready(false), ready(false), booting()], one),
            Plan::default()
        );
        // Ready: it takes the oldest worker's place, and nothing more starts.
        assert_eq!(
            plan(2, &[ready(false), ready(false), ready(true)], one),
            Plan {
                drain: vec![0],
                spawn: 0
            }
        );
        let leaving = Seen {
            leaving: true,
            ..ready(false)
        };
        assert_eq!(
            plan(2, &[leaving, ready(false), ready(true)], one),
            Plan::default()
        );
        // The busiest old worker makes way, so its clients reach the canary.
        let busy = Seen {
            connections: 32,
            ..ready(false)
        };
        assert_eq!(
            plan(2, &[ready(false), busy, ready(true)], one),
            Plan {
                drain: vec![1],
                spawn: 0
            }
        );
        // Growing during a canary reload waits for the canary too.
        assert_eq!(plan(4, &[ready(false), ready(false)], one).spawn, 1);
    }

    #[test]
    fn grow_during_reload() {
        // Reload from 1 to 3 workers: two positions are uncovered.
        assert_eq!(
            plan(3, &[ready(false)], None),
            Plan {
                drain: vec![],
                spawn: 3
            }
        );
    }
}
