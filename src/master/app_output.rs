//! How an exec worker's output lines reach the master's log: at most
//! [`OUTPUT_LINES_PER_SEC`] per worker (a burst of as many), the rest
//! dropped and counted (`rsvisor_app_output_lines_dropped_total`), and
//! control characters escaped, so that no line can hide or forge the
//! slot/pid prefix the log puts before it (a bare `\r`, terminal escapes).

use std::borrow::Cow;

use crate::telemetry::throttle::Throttle;

/// Lines per second one worker's output may put in the log (both streams
/// together); a burst of as many is allowed, so a traceback is whole.
pub const OUTPUT_LINES_PER_SEC: u32 = 1000;

/// What to do with the next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Log,
    /// Left out; `Some(n)`: say now that lines are being dropped, `n`
    /// left unsaid since it was last said.
    Drop(Option<u64>),
}

/// A token bucket of log lines; what it drops is said through the
/// repeated-error throttle (once, then once per `REPEAT_LOG_INTERVAL`).
#[derive(Debug)]
pub struct LineBudget {
    tokens: f64,
    refilled_ms: u64,
    drops: Throttle,
}

impl LineBudget {
    pub fn new(now_ms: u64) -> LineBudget {
        LineBudget {
            tokens: f64::from(OUTPUT_LINES_PER_SEC),
            refilled_ms: now_ms,
            drops: Throttle::new(),
        }
    }

    /// One event of `lines` lines (a line, or a traceback): logged whole
    /// or dropped whole, each of its lines counted against the budget.
    /// `now_ms`: monotonic milliseconds (`os::monotonic_ms`).
    pub fn admit_lines(&mut self, now_ms: u64, lines: usize) -> Verdict {
        let rate = f64::from(OUTPUT_LINES_PER_SEC);
        let gained = now_ms.saturating_sub(self.refilled_ms) as f64 / 1000.0 * rate;
        self.tokens = (self.tokens + gained).min(rate);
        self.refilled_ms = now_ms;
        let cost = lines as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            return Verdict::Log;
        }
        Verdict::Drop(self.drops.admit_at(now_ms))
    }
}

/// `line` with every control character but tab written as an escape
/// (`\r`, `\u{1b}`…); borrowed when there is none.
pub fn escape_controls(line: &str) -> Cow<'_, str> {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::throttle::REPEAT_LOG_INTERVAL;

    #[test]
    fn an_event_of_many_lines_costs_each_line() {
        let t0 = 1_000;
        let mut b = LineBudget::new(t0);
        assert_eq!(
            b.admit_lines(t0, OUTPUT_LINES_PER_SEC as usize - 10),
            Verdict::Log
        );
        assert!(matches!(b.admit_lines(t0, 20), Verdict::Drop(_)));
        assert_eq!(b.admit_lines(t0, 10), Verdict::Log);
    }

    #[test]
    fn a_burst_then_the_rate_then_drops_said_once_per_interval() {
        let t0 = 1_000;
        let mut b = LineBudget::new(t0);
        for _ in 0..OUTPUT_LINES_PER_SEC {
            assert_eq!(b.admit_lines(t0, 1), Verdict::Log);
        }
        assert_eq!(b.admit_lines(t0, 1), Verdict::Drop(Some(0)));
        assert_eq!(b.admit_lines(t0, 1), Verdict::Drop(None));
        assert_eq!(b.admit_lines(t0, 1), Verdict::Drop(None));
        // 10 ms later: 10 more lines.
        let t1 = t0 + 10;
        let logged = (0..20)
            .filter(|_| b.admit_lines(t1, 1) == Verdict::Log)
            .count();
        assert_eq!(logged, 10);
        let t2 = t0 + REPEAT_LOG_INTERVAL.as_millis() as u64;
        // The bucket is full again: lines are logged, none said dropped…
        assert_eq!(b.admit_lines(t2, 1), Verdict::Log);
        for _ in 1..OUTPUT_LINES_PER_SEC {
            b.admit_lines(t2, 1);
        }
        // …until it is empty: then the 12 left unsaid are told.
        assert_eq!(b.admit_lines(t2, 1), Verdict::Drop(Some(12)));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(escape_controls("plain\ttext"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("ok\rslot=9 pid=1 FORGED"),
            "ok\\rslot=9 pid=1 FORGED"
        );
        assert_eq!(escape_controls("\u{1b}[2Kx\u{7f}"), "\\u{1b}[2Kx\\u{7f}");
    }
}
