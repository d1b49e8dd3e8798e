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

/// Memory and CPU time of a process tree (a worker and what it started).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeUsage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// One process's place in the tree, from /proc/PID/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: i32,
    pub ppid: i32,
    /// Its process group.
    pub pgrp: i32,
}

/// Every process's parent and group, read once from /proc.
pub fn processes() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
            let ppid = fields.nth(1)?.parse().ok()?;
            let pgrp = fields.next()?.parse().ok()?;
            Some(ProcEntry { pid, ppid, pgrp })
        })
        .collect()
}

/// The children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .map(|p| p.pid)
        .collect()
}

/// Every process's parent (for [`tree`]).
pub fn parents() -> Vec<(i32, i32)> {
    processes().into_iter().map(|p| (p.pid, p.ppid)).collect()
}

/// A process's command line, arguments joined by spaces (at most 200
/// bytes: it is for a log line).
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut text: String = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Some(text)
}

/// `pid` and its descendants (from [`parents`]).
pub fn tree(pid: i32, parents: &[(i32, i32)]) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Whether the process holds a descriptor of any of these sockets (by
/// inode, as `fstat` gives it): a process of an old generation that still
/// does may still accept on it.
pub fn holds_socket(pid: i32, inodes: &[u64]) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|ino| inodes.contains(&ino))
        })
    })
}

/// RSS and CPU time summed over `pids`.
pub fn tree_usage(pids: &[i32]) -> TreeUsage {
    let ticks = clock_ticks();
    let mut u = TreeUsage::default();
    for pid in pids {
        u.rss_bytes += rss_bytes(*pid).unwrap_or(0);
        if let Some(cpu) = cpu_ticks(*pid) {
            u.cpu_seconds += cpu / ticks;
        }
    }
    u
}

fn cpu_ticks(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The parent of a process.
pub fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A process's state letter from /proc/PID/stat (`R`, `S`, `D`, `T` for
/// stopped, `Z`…).
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// One thread of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadInfo {
    pub tid: i32,
    pub name: String,
    /// It blocks the signal asked about (it cannot answer it).
    pub blocks: bool,
}

/// The threads of a process (tid order), and whether each blocks `sig`.
pub fn threads(pid: i32, sig: i32) -> Vec<ThreadInfo> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<ThreadInfo> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .map(|tid| {
            let base = format!("/proc/{pid}/task/{tid}");
            let name = std::fs::read_to_string(format!("{base}/comm"))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default();
            let status = std::fs::read_to_string(format!("{base}/status")).unwrap_or_default();
            ThreadInfo {
                tid,
                name,
                blocks: blocked_in(&status, sig),
            }
        })
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// Whether the `SigBlk:` mask of a /proc status text has `sig`.
fn blocked_in(status: &str, sig: i32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| (1..=64).contains(&sig) && mask & (1u64 << (sig - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_signals_are_read_from_the_mask() {
        let status = "Name:\tx\nSigBlk:\t0000000000000001\nSigIgn:\t0\n";
        assert!(blocked_in(status, 1));
        assert!(!blocked_in(status, 2));
        assert!(!blocked_in("", 1));
    }

    #[test]
    fn this_process_lists_its_threads() {
        let me = std::process::id() as i32;
        let threads = threads(me, 37);
        assert!(threads.iter().any(|t| t.tid == me), "{threads:?}");
        assert!(matches!(state(me), Some('R' | 'S')));
    }
}
