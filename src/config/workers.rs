//! `workers = "auto"`: 2 × usable CPUs + 1, where usable CPUs are what this
//! process may really run on (cgroup quota, CPU affinity), not the host's count.

/// `server.workers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkerCount {
    /// 2 × usable CPUs + 1.
    #[default]
    Auto,
    /// This many.
    Fixed(usize),
}

/// The resolved count and a sentence saying where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkersResolution {
    /// Workers `"auto"` means here.
    pub workers: usize,
    /// CPUs this process may run on.
    pub usable_cpus: usize,
    /// Where that number came from (cgroup quota, affinity).
    pub explanation: String,
}

/// What `workers = "auto"` resolves to on this machine, for this process.
pub fn resolve_auto_workers() -> WorkersResolution {
    // std reads cgroup v2 cpu.max, cgroup v1 cfs quota/period and
    // sched_getaffinity, and returns the smallest; we only explain it.
    let usable = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = (2 * usable + 1).min(super::MAX_WORKERS);
    let online = crate::os::online_cpus();
    let affinity = crate::os::affinity_cpus();
    let limit = match (affinity, online) {
        (Some(a), _) if a == usable && online.is_some_and(|o| a < o) => {
            format!(
                "limited by CPU affinity ({a} of {} CPUs)",
                online.unwrap_or(a)
            )
        }
        (Some(a), _) if usable < a => {
            format!("limited by the cgroup CPU quota (affinity allows {a})")
        }
        _ => "no quota or affinity limit".to_string(),
    };
    let host = online
        .map(|o| format!("; host has {o} online CPUs"))
        .unwrap_or_default();
    WorkersResolution {
        workers,
        usable_cpus: usable,
        explanation: format!(
            "auto: 2 × {usable} usable CPU{} + 1 = {workers} ({limit}{host})",
            if usable == 1 { "" } else { "s" }
        ),
    }
}
