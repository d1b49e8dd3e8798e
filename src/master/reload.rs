//! One reload in progress: what to go back to, and when to give up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;

/// New workers that may fail to boot during one reload before it is
/// abandoned and the previous generation is restored.
pub const RELOAD_MAX_BOOT_FAILURES: u32 = 3;

pub struct Reload {
    pub old_config: Arc<Config>,
    pub old_generation: u32,
    pub old_desired: usize,
    started: Instant,
    failures: u32,
}

pub enum ReloadOutcome {
    InProgress,
    Done { elapsed: Duration },
    Abandon { failures: u32 },
}

impl Reload {
    pub fn new(old_config: Arc<Config>, old_generation: u32, old_desired: usize) -> Reload {
        Reload {
            old_config,
            old_generation,
            old_desired,
            started: Instant::now(),
            failures: 0,
        }
    }

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
