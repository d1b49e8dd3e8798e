//! The few /proc readings rsvisor reports: memory, CPU time, start time
//! and open descriptors of a process.

pub struct ProcStats {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub start_time_unix: f64,
    pub open_fds: u64,
}

/// Reads `/proc/PID/{stat,statm,fd}`; `None` if the process is gone.
pub fn stats(pid: i32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // Field numbers from proc(5), minus the two before and including comm.
    let ticks = clock_ticks();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcStats {
        rss_bytes: rss_bytes(pid).unwrap_or(0),
        cpu_seconds: (utime + stime) / ticks,
        start_time_unix: boot_time().unwrap_or(0.0) + start_ticks / ticks,
        open_fds,
    })
}

/// Resident set size of a process in bytes, from /proc/PID/statm.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|n| n as u64)
        .unwrap_or(4096)
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|n| n as f64)
        .unwrap_or(100.0)
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}
