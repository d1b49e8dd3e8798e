//! Canary reloads (`lifecycle.canary`): a reload first replaces one worker
//! and watches it against the previous generation, from the scoreboard's
//! per-worker counters, before the others are replaced. The rule is a pure
//! function ([`judge`]); the master feeds it samples every few ms.
//!
//! The canary is the first worker of the new generation to become ready.
//! Its window starts then. It fails when it exits (crash, heartbeat
//! timeout), when its share of 5xx answers exceeds the previous
//! generation's by more than `canary_max_5xx_ratio` (judged as soon as it
//! has answered [`CANARY_MIN_REQUESTS`], so a broken release is rolled back
//! within a few dozen requests), or when, at the end of the window, its
//! p99 latency is above `canary_max_latency_ratio` times theirs. The
//! previous generation is measured over the same window; when it answered
//! too few requests in it, its workers' lifetime counters stand in.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::config::LifecycleConfig;
use crate::shm::scoreboard::{quantile_us, Board, CountersSnapshot, LATENCY_BUCKETS};

/// Requests the canary must have answered before its 5xx share or its
/// latency is judged: fewer say nothing either way.
pub const CANARY_MIN_REQUESTS: u64 = 50;
/// A canary whose p99 is under this is never judged too slow: below it,
/// a ratio measures scheduling noise, not the code.
pub const CANARY_LATENCY_FLOOR: Duration = Duration::from_millis(5);
/// How often the master samples the counters during the window. The
/// canary also wakes the master when it reaches [`CANARY_MIN_REQUESTS`]
/// (and each doubling after), so a broken release is judged at once.
pub const CANARY_TICK: Duration = Duration::from_millis(20);
/// A canary that answered fewer than [`CANARY_MIN_REQUESTS`] when its
/// window ends is watched longer, up to this many windows in all; then
/// the reload goes on, logged as not judged.
pub const CANARY_WINDOW_STRETCH: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub window: Duration,
    pub max_5xx_ratio: f64,
    pub max_latency_ratio: f64,
}

impl Limits {
    /// The new generation's canary settings; `None` when canaries are off.
    pub fn of(lc: &LifecycleConfig) -> Option<Limits> {
        (!lc.canary.is_zero()).then_some(Limits {
            window: lc.canary,
            max_5xx_ratio: lc.canary_max_5xx_ratio,
            max_latency_ratio: lc.canary_max_latency_ratio,
        })
    }
}

/// What some workers answered over a stretch of time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub requests: u64,
    pub errors_5xx: u64,
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Sample {
    pub fn of(c: &CountersSnapshot) -> Sample {
        Sample {
            requests: c.requests,
            errors_5xx: c.status[4],
            latency: c.latency,
        }
    }

    /// What was answered after `base` was taken.
    pub fn since(&self, base: &Sample) -> Sample {
        Sample {
            requests: self.requests.saturating_sub(base.requests),
            errors_5xx: self.errors_5xx.saturating_sub(base.errors_5xx),
            latency: std::array::from_fn(|i| self.latency[i].saturating_sub(base.latency[i])),
        }
    }

    pub fn add(&mut self, o: &Sample) {
        self.requests += o.requests;
        self.errors_5xx += o.errors_5xx;
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            *a += b;
        }
    }

    pub fn ratio_5xx(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        }
    }

    /// The 99th percentile in microseconds, interpolated within its bucket
    /// as Prometheus' `histogram_quantile` does; `None` without requests.
    pub fn p99_us(&self) -> Option<f64> {
        quantile_us(&self.latency, 0.99)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Watching,
    Pass,
    /// Too little traffic to judge, even over the stretched window: the
    /// reload goes on (why is said).
    Unjudged(String),
    Fail(String),
}

/// The canary rule, `elapsed` into its window. `previous` is the previous
/// generation over the same window (or its lifetime counters when that is
/// too little to go by).
pub fn judge(canary: &Sample, previous: &Sample, limits: &Limits, elapsed: Duration) -> Verdict {
    let enough = canary.requests >= CANARY_MIN_REQUESTS;
    if enough {
        let (mine, theirs) = (canary.ratio_5xx(), previous.ratio_5xx());
        if mine > theirs + limits.max_5xx_ratio {
            return Verdict::Fail(format!(
                "the canary answered {} of {} requests with 5xx (ratio {mine:.3}; the previous \
                 generation {theirs:.3}; canary_max_5xx_ratio {})",
                canary.errors_5xx, canary.requests, limits.max_5xx_ratio
            ));
        }
    }
    if elapsed < limits.window {
        return Verdict::Watching;
    }
    if !enough {
        if elapsed < limits.window * CANARY_WINDOW_STRETCH {
            return Verdict::Watching;
        }
        return Verdict::Unjudged(format!(
            "the canary answered only {} requests in {:.0} s (fewer than {CANARY_MIN_REQUESTS}): \
             not judged",
            canary.requests,
            elapsed.as_secs_f64()
        ));
    }
    let floor = CANARY_LATENCY_FLOOR.as_micros() as f64;
    if enough && previous.requests >= CANARY_MIN_REQUESTS {
        if let (Some(mine), Some(theirs)) = (canary.p99_us(), previous.p99_us()) {
            if mine > floor && mine > theirs * limits.max_latency_ratio {
                return Verdict::Fail(format!(
                    "the canary's p99 latency is {:.1} ms, the previous generation's {:.1} ms \
                     (canary_max_latency_ratio {})",
                    mine / 1000.0,
                    theirs / 1000.0,
                    limits.max_latency_ratio
                ));
            }
        }
    }
    Verdict::Pass
}

/// A worker whose counters are followed during the window.
#[derive(Debug, Clone)]
struct Followed {
    pid: Pid,
    slot: usize,
    base: Sample,
    /// Its answers since `base`, as last read while it lived.
    seen: Sample,
}

impl Followed {
    fn new(board: &Board, pid: Pid, slot: usize, from_zero: bool) -> Followed {
        let base = if from_zero {
            Sample::default()
        } else {
            Sample::of(&board.slot(slot).counters.snapshot())
        };
        Followed {
            pid,
            slot,
            base,
            seen: Sample::default(),
        }
    }

    /// Reads its slot if the worker is still there (a slot is reused once
    /// its worker is reaped: what was seen last stays).
    fn update(&mut self, board: &Board, live: &[(Pid, usize)]) {
        if live.contains(&(self.pid, self.slot)) {
            let now = Sample::of(&board.slot(self.slot).counters.snapshot());
            self.seen = now.since(&self.base);
        }
    }
}

/// The canary being watched.
#[derive(Debug, Clone)]
struct Watch {
    canary: Followed,
    since: Instant,
    /// The canary's answered count at which it wakes the master next.
    next_nudge: u64,
    /// When the previous generation's keep-alive connections were last
    /// closed (so that their clients reconnect, some to the canary).
    shed_at: Instant,
    previous: Vec<Followed>,
    /// The previous generation's lifetime counters when the window began.
    history: Sample,
}

/// A reload's canary: not yet ready, watched, or passed.
#[derive(Debug, Clone)]
pub struct Canary {
    pub limits: Limits,
    watch: Option<Watch>,
    passed: bool,
    /// The canary exited without being asked: why.
    lost: Option<String>,
    /// Said in the reload's result: why the canary was let through
    /// unjudged.
    pub note: Option<String>,
}

/// Where the canary stands, for `rsvisor status` and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub pid: Pid,
    pub remaining: Duration,
    pub canary: Sample,
    pub previous: Sample,
}

impl Canary {
    pub fn new(limits: Limits) -> Canary {
        Canary {
            limits,
            watch: None,
            passed: false,
            lost: None,
            note: None,
        }
    }

    /// While watched (or not yet ready), the reload may run one worker of
    /// the new generation only.
    pub fn holds_back(&self) -> bool {
        !self.passed
    }

    /// Whether the master should sample often.
    pub fn watching(&self) -> bool {
        self.watch.is_some() && !self.passed
    }

    pub fn is_canary(&self, pid: Pid) -> bool {
        self.watch.as_ref().is_some_and(|w| w.canary.pid == pid)
    }

    /// The canary worker exited without being asked to (`why` says how).
    pub fn lost(&mut self, why: String) {
        if !self.passed {
            self.lost.get_or_insert(why);
        }
    }

    /// Starts the window on `canary`, a ready worker of the new generation;
    /// `previous` are the serving workers of the previous generation.
    pub fn start(
        &mut self,
        board: &Board,
        canary: (Pid, usize),
        previous: &[(Pid, usize)],
        now: Instant,
    ) {
        let previous: Vec<Followed> = previous
            .iter()
            .map(|&(pid, slot)| Followed::new(board, pid, slot, false))
            .collect();
        let mut history = Sample::default();
        for p in &previous {
            history.add(&p.base);
        }
        board.slot(canary.1).nudge_at(CANARY_MIN_REQUESTS);
        // Long-lived keep-alive connections stay where they are: closed
        // once now, their clients reconnect and the canary gets its share.
        for p in &previous {
            board.slot(p.slot).shed_connections();
        }
        self.watch = Some(Watch {
            canary: Followed::new(board, canary.0, canary.1, true),
            since: now,
            next_nudge: CANARY_MIN_REQUESTS,
            shed_at: now,
            previous,
            history,
        });
    }

    pub fn started(&self) -> bool {
        self.watch.is_some()
    }

    /// Reads the counters and applies the rule. `live`: every worker the
    /// master still has, as (pid, slot).
    pub fn check(&mut self, board: &Board, live: &[(Pid, usize)], now: Instant) -> Verdict {
        if self.passed {
            return Verdict::Pass;
        }
        if let Some(why) = &self.lost {
            return Verdict::Fail(why.clone());
        }
        let Some(w) = &mut self.watch else {
            return Verdict::Watching;
        };
        w.canary.update(board, live);
        for p in &mut w.previous {
            p.update(board, live);
        }
        let elapsed = now.saturating_duration_since(w.since);
        let verdict = judge(&w.canary.seen, &previous_sample(w), &self.limits, elapsed);
        let slot = board.slot(w.canary.slot);
        match &verdict {
            Verdict::Watching => {
                if w.canary.seen.requests >= w.next_nudge {
                    w.next_nudge = w.canary.seen.requests.saturating_mul(2);
                    slot.nudge_at(w.next_nudge);
                }
                // Starved in a stretched window: the clients reconnected
                // to the old workers; once more each window.
                let starved =
                    elapsed >= self.limits.window && w.canary.seen.requests < CANARY_MIN_REQUESTS;
                if starved && now.saturating_duration_since(w.shed_at) >= self.limits.window {
                    w.shed_at = now;
                    for p in &w.previous {
                        if live.contains(&(p.pid, p.slot)) {
                            board.slot(p.slot).shed_connections();
                        }
                    }
                }
            }
            Verdict::Pass | Verdict::Unjudged(_) => {
                self.passed = true;
                slot.nudge_at(0);
            }
            Verdict::Fail(_) => slot.nudge_at(0),
        }
        verdict
    }

    pub fn progress(&self, now: Instant) -> Option<Progress> {
        let w = self.watch.as_ref()?;
        Some(Progress {
            pid: w.canary.pid,
            remaining: (w.since + self.limits.window).saturating_duration_since(now),
            canary: w.canary.seen.clone(),
            previous: previous_sample(w),
        })
    }
}

/// The previous generation over the window, or its history when the
/// window holds too little of it.
fn previous_sample(w: &Watch) -> Sample {
    let mut window = Sample::default();
    for p in &w.previous {
        window.add(&p.seen);
    }
    if window.requests >= CANARY_MIN_REQUESTS {
        window
    } else {
        w.history.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::scoreboard::{RequestClass, LATENCY_BOUNDS_US};

    fn limits() -> Limits {
        Limits {
            window: Duration::from_secs(3),
            max_5xx_ratio: 0.01,
            max_latency_ratio: 2.0,
        }
    }

    /// `n` requests, `bad` of them 5xx, all in the bucket ending at `us`.
    fn sample(n: u64, bad: u64, us: u64) -> Sample {
        let mut s = Sample {
            requests: n,
            errors_5xx: bad,
            ..Default::default()
        };
        let i = LATENCY_BOUNDS_US.iter().position(|b| *b == us).unwrap();
        s.latency[i] = n;
        s
    }

    #[test]
    fn a_failing_canary_is_rolled_back_as_soon_as_it_has_answered_enough() {
        let old = sample(1000, 0, 1_000);
        let early = sample(CANARY_MIN_REQUESTS - 1, CANARY_MIN_REQUESTS - 1, 1_000);
        let d = Duration::from_millis;
        assert_eq!(judge(&early, &old, &limits(), d(10)), Verdict::Watching);
        let enough = sample(CANARY_MIN_REQUESTS, CANARY_MIN_REQUESTS, 1_000);
        match judge(&enough, &old, &limits(), d(10)) {
            Verdict::Fail(why) => assert!(why.contains("5xx"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn the_5xx_share_is_compared_with_the_previous_generation() {
        // The old generation fails 10% too: 10.5% is within 0.01 of it.
        let old = sample(1000, 100, 1_000);
        let canary = sample(200, 21, 1_000);
        let over = limits().window;
        assert_eq!(judge(&canary, &old, &limits(), over), Verdict::Pass);
        let worse = sample(200, 23, 1_000);
        assert!(matches!(
            judge(&worse, &old, &limits(), over),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn latency_is_judged_at_the_end_of_the_window_above_the_floor() {
        let (during, over) = (Duration::from_secs(1), limits().window);
        let old = sample(1000, 0, 10_000);
        let slow = sample(1000, 0, 50_000);
        assert_eq!(judge(&slow, &old, &limits(), during), Verdict::Watching);
        match judge(&slow, &old, &limits(), over) {
            Verdict::Fail(why) => assert!(why.contains("p99"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Four times slower, but under the floor: noise.
        let fast_old = sample(1000, 0, 500);
        let fast = sample(1000, 0, 2_500);
        assert_eq!(judge(&fast, &fast_old, &limits(), over), Verdict::Pass);
    }

    #[test]
    fn a_canary_without_traffic_is_watched_longer_then_let_through_unjudged() {
        let old = sample(1000, 0, 10_000);
        let few = sample(10, 10, 50_000);
        let window = limits().window;
        assert_eq!(judge(&few, &old, &limits(), window), Verdict::Watching);
        let stretched = window * CANARY_WINDOW_STRETCH;
        match judge(&few, &old, &limits(), stretched) {
            Verdict::Unjudged(why) => assert!(why.contains("only 10 requests"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn the_documented_constants_are_the_real_ones() {
        let key = crate::config::keys::KEYS
            .iter()
            .find(|k| k.section == "lifecycle" && k.name == "canary")
            .unwrap();
        assert!(key
            .doc
            .contains(&format!("answered {CANARY_MIN_REQUESTS} requests")));
        let floor = CANARY_LATENCY_FLOOR.as_millis();
        assert!(key.doc.contains(&format!("p99 under {floor} ms")));
        assert_eq!(CANARY_WINDOW_STRETCH, 3);
        assert!(key.doc.contains("watched up to 3 windows"));
    }

    #[test]
    fn p99_interpolates_within_its_bucket() {
        let mut h = [0u64; LATENCY_BUCKETS];
        h[0] = 98; // ≤ 500 µs
        h[1] = 2; // ≤ 1 ms
        let p = quantile_us(&h, 0.99).unwrap();
        assert!((p - 750.0).abs() < 1e-6, "{p}");
        assert_eq!(quantile_us(&[0; LATENCY_BUCKETS], 0.99), None);
        let mut slow = [0u64; LATENCY_BUCKETS];
        slow[LATENCY_BUCKETS - 1] = 5;
        assert_eq!(quantile_us(&slow, 0.99), Some(10_000_000.0));
    }

    #[test]
    fn an_exited_canary_fails_whatever_its_counters_say() {
        let board = Board::create().unwrap();
        board.claim(0, 2);
        let pid = Pid::from_raw(4242);
        let mut c = Canary::new(limits());
        assert!(c.holds_back());
        let now = Instant::now();
        c.start(board, (pid, 0), &[], now);
        assert_eq!(c.check(board, &[(pid, 0)], now), Verdict::Watching);
        c.lost("it was killed by signal 9".into());
        assert!(matches!(c.check(board, &[], now), Verdict::Fail(_)));
    }

    #[test]
    fn a_healthy_canary_passes_lifts_the_hold_and_stops_the_nudges() {
        let board = Board::create().unwrap();
        board.claim(0, 2);
        let pid = Pid::from_raw(4242);
        let mut c = Canary::new(limits());
        let now = Instant::now();
        c.start(board, (pid, 0), &[], now);
        let slot = board.slot(0);
        let get = RequestClass::of(&http::Method::GET, http::Version::HTTP_11);
        for _ in 0..CANARY_MIN_REQUESTS - 1 {
            slot.record(200, get, 100);
        }
        assert!(!slot.wants_nudge(CANARY_MIN_REQUESTS - 1));
        assert!(slot.wants_nudge(slot.record(200, get, 100)));
        assert_eq!(c.check(board, &[(pid, 0)], now), Verdict::Watching);
        // The next wake-up is at twice as many.
        assert!(slot.wants_nudge(2 * CANARY_MIN_REQUESTS));
        let later = now + Duration::from_secs(4);
        assert_eq!(c.check(board, &[(pid, 0)], later), Verdict::Pass);
        assert!(!c.holds_back());
        assert!(!c.watching());
        assert!(!slot.wants_nudge(2 * CANARY_MIN_REQUESTS));
    }
}
