//! What the host says: the monotonic clock and the CPUs this process may
//! use.

use nix::unistd::Pid;

/// Current CLOCK_MONOTONIC in milliseconds: comparable across the master
/// and its workers, unlike `Instant`, which cannot be stored in shared memory.
pub fn monotonic_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

pub fn online_cpus() -> Option<usize> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map(|n| n as usize)
}

pub fn affinity_cpus() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok()?;
    Some(
        (0..nix::sched::CpuSet::count())
            .filter(|i| set.is_set(*i).unwrap_or(false))
            .count(),
    )
}

/// Current CLOCK_MONOTONIC in microseconds (systemd's MONOTONIC_USEC).
pub fn monotonic_us() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}
