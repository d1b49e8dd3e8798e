//! What the master can learn about a worker that no longer answers, kept
//! in shared memory so that reading it needs nothing from the worker:
//!
//! - [`InFlightTable`]: the requests a worker's app is working on (method,
//!   path without the query, start time, the connection's peer), written by
//!   the worker as requests start and end;
//! - [`DumpArea`]: where each thread of a worker, interrupted by the
//!   master's [`dump signal`](crate::os::dump_signal), writes the raw
//!   return addresses of its stack. The handler takes no lock and
//!   allocates nothing; the addresses are symbolized later, by a helper
//!   process the master forks (see `master::forensics`).
//!
//! Entries are written with atomics only, under a sequence number (odd
//! while being written), so a reader never sees a torn entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use crate::os::{self, shared_plain, StackWalk};

/// Requests in flight a worker's table holds; more are counted, not shown.
pub const IN_FLIGHT_ENTRIES: usize = 32;
/// Bytes of a request's path kept (longer paths are cut, marked `…`).
pub const PATH_BYTES: usize = 64;
/// Threads of one worker whose stacks are captured.
pub const MAX_DUMP_THREADS: usize = 16;
/// Return addresses captured per thread.
pub const MAX_FRAMES: usize = 64;

const PATH_WORDS: usize = PATH_BYTES / 8;

shared_plain! {
    /// One request in flight.
    #[repr(C)]
    pub struct InFlightEntry {
        /// 1 while a request owns the entry.
        used: AtomicU32,
        /// Odd while the entry is being written.
        seq: AtomicU32,
        start_ms: AtomicU64,
        /// Up to 8 bytes of the method.
        method: AtomicU64,
        path: [AtomicU64; PATH_WORDS],
        path_len: AtomicU64,
        /// Family (0 none, 1 Unix, 4, 6) | port << 8.
        peer_kind: AtomicU64,
        peer_ip: [AtomicU64; 2],
    }
}

shared_plain! {
    /// A worker's requests in flight.
    #[repr(C, align(64))]
    pub struct InFlightTable {
        entries: [InFlightEntry; IN_FLIGHT_ENTRIES],
        /// Where the next claim starts looking.
        hint: AtomicU32,
        /// Requests in flight that found the table full.
        overflow: AtomicU64,
    }
}

/// Where the connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAddr {
    Unknown,
    Unix,
    Ip(SocketAddr),
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Unknown => f.write_str("-"),
            PeerAddr::Unix => f.write_str("unix"),
            PeerAddr::Ip(a) => write!(f, "{a}"),
        }
    }
}

/// A request in flight as the master reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub method: String,
    pub path: String,
    pub start_ms: u64,
    pub peer: PeerAddr,
}

fn unpack(words: &[u64], len: usize) -> String {
    String::from_utf8_lossy(&os::unpack_words(words, len)).into_owned()
}

impl InFlightEntry {
    fn write(&self, method: &str, path: &str, peer: PeerAddr, now_ms: u64) {
        // Only the request that claimed the entry writes it: `seq` is even.
        let s = self.seq.load(Relaxed);
        self.seq.store(s.wrapping_add(1), Relaxed);
        std::sync::atomic::fence(Release);
        self.start_ms.store(now_ms, Relaxed);
        self.method.store(os::pack_word(method.as_bytes()), Relaxed);
        // Only the words the path fills: the reader stops at `path_len`.
        let p = path.as_bytes();
        for (w, chunk) in self.path.iter().zip(p.chunks(8)) {
            w.store(os::pack_word(chunk), Relaxed);
        }
        self.path_len.store(p.len() as u64, Relaxed);
        match peer {
            PeerAddr::Unknown => self.peer_kind.store(0, Relaxed),
            PeerAddr::Unix => self.peer_kind.store(1, Relaxed),
            PeerAddr::Ip(a) => {
                let port = (a.port() as u64) << 8;
                match a.ip() {
                    IpAddr::V4(v4) => {
                        self.peer_kind.store(4 | port, Relaxed);
                        self.peer_ip[0].store(u32::from(v4) as u64, Relaxed);
                    }
                    IpAddr::V6(v6) => {
                        let bits = u128::from(v6);
                        self.peer_kind.store(6 | port, Relaxed);
                        self.peer_ip[0].store((bits >> 64) as u64, Relaxed);
                        self.peer_ip[1].store(bits as u64, Relaxed);
                    }
                }
            }
        }
        self.seq.store(s.wrapping_add(2), Release);
    }

    /// A consistent copy, if the entry is in use and not being written.
    fn read(&self) -> Option<InFlight> {
        let before = self.seq.load(Acquire);
        if before % 2 == 1 || self.used.load(Acquire) == 0 {
            return None;
        }
        let start_ms = self.start_ms.load(Relaxed);
        let method = unpack(&[self.method.load(Relaxed)], 8);
        let len = self.path_len.load(Relaxed) as usize;
        let words: Vec<u64> = self
            .path
            .iter()
            .take(len.div_ceil(8))
            .map(|w| w.load(Relaxed))
            .collect();
        let kind = self.peer_kind.load(Relaxed);
        let ip = [self.peer_ip[0].load(Relaxed), self.peer_ip[1].load(Relaxed)];
        std::sync::atomic::fence(Acquire);
        if self.seq.load(Relaxed) != before {
            return None;
        }
        let mut path = unpack(&words, len.min(PATH_BYTES));
        if len > PATH_BYTES {
            path.push('…');
        }
        let port = (kind >> 8) as u16;
        let peer = match kind & 0xff {
            1 => PeerAddr::Unix,
            4 => {
                let v4 = Ipv4Addr::from(ip[0] as u32);
                PeerAddr::Ip(SocketAddr::new(IpAddr::V4(v4), port))
            }
            6 => {
                let v6 = Ipv6Addr::from((ip[0] as u128) << 64 | ip[1] as u128);
                PeerAddr::Ip(SocketAddr::new(IpAddr::V6(v6), port))
            }
            _ => PeerAddr::Unknown,
        };
        Some(InFlight {
            method: method.trim_end_matches('\0').to_string(),
            path,
            start_ms,
            peer,
        })
    }
}

impl InFlightTable {
    /// Worker: records a request whose app handler starts now; `None`
    /// when the table is full (the request is counted as not shown).
    pub fn begin(&self, method: &str, path: &str, peer: PeerAddr, now_ms: u64) -> Option<usize> {
        let start = self.hint.load(Relaxed) as usize;
        for k in 0..IN_FLIGHT_ENTRIES {
            let i = (start + k) % IN_FLIGHT_ENTRIES;
            let e = &self.entries[i];
            if e.used.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
                e.write(method, path, peer, now_ms);
                self.hint.store((i + 1) as u32, Relaxed);
                return Some(i);
            }
        }
        self.overflow.fetch_add(1, Relaxed);
        None
    }

    /// Worker: the request of `begin` is over.
    pub fn end(&self, entry: Option<usize>) {
        match entry {
            Some(i) => self.entries[i].used.store(0, Release),
            None => {
                self.overflow.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Master: the requests in flight, oldest first, and how many more
    /// there are that the table could not hold.
    pub fn snapshot(&self) -> (Vec<InFlight>, u64) {
        let mut all: Vec<InFlight> = self.entries.iter().filter_map(|e| e.read()).collect();
        all.sort_by_key(|r| r.start_ms);
        (all, self.overflow.load(Relaxed))
    }

    /// Master: a new worker takes the slot.
    pub fn clear(&self) {
        for e in &self.entries {
            e.used.store(0, Relaxed);
        }
        self.overflow.store(0, Relaxed);
    }
}

shared_plain! {
    /// One thread's captured stack.
    #[repr(C)]
    pub struct ThreadFrames {
        /// The dump this answers (see [`DumpArea::request`]).
        request: AtomicU64,
        tid: AtomicU32,
        depth: AtomicU32,
        frames: [AtomicU64; MAX_FRAMES],
    }
}

shared_plain! {
    /// Where a worker's threads answer a dump.
    #[repr(C, align(64))]
    pub struct DumpArea {
        /// Bumped by the master for each dump.
        request: AtomicU64,
        /// Threads that took a place in `threads` (may exceed its size).
        claimed: AtomicU32,
        threads: [ThreadFrames; MAX_DUMP_THREADS],
    }
}

/// One thread's stack as captured: raw instruction addresses, innermost
/// first (the signal handler's own frames included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedThread {
    pub tid: u32,
    pub frames: Vec<u64>,
}

impl DumpArea {
    /// Master: starts a dump; returns its number.
    pub fn begin(&self) -> u64 {
        self.claimed.store(0, Relaxed);
        self.request.fetch_add(1, AcqRel) + 1
    }

    /// In the worker's signal handler: records the calling thread's stack.
    /// `walk` calls its argument with each address, innermost first, until
    /// it returns false. Atomics only: no lock, no allocation.
    pub fn record(&self, tid: u32, walk: &mut StackWalk<'_>) {
        let request = self.request.load(Acquire);
        let i = self.claimed.fetch_add(1, AcqRel) as usize;
        let Some(t) = self.threads.get(i) else {
            return;
        };
        t.request.store(0, Relaxed);
        t.tid.store(tid, Relaxed);
        let mut n = 0usize;
        walk(&mut |ip| {
            if n >= MAX_FRAMES {
                return false;
            }
            t.frames[n].store(ip, Relaxed);
            n += 1;
            true
        });
        t.depth.store(n as u32, Relaxed);
        t.request.store(request, Release);
    }

    /// Master: the threads that answered dump `request` so far.
    pub fn answers(&self, request: u64) -> Vec<CapturedThread> {
        self.threads
            .iter()
            .filter(|t| t.request.load(Acquire) == request)
            .map(|t| {
                let depth = (t.depth.load(Relaxed) as usize).min(MAX_FRAMES);
                CapturedThread {
                    tid: t.tid.load(Relaxed),
                    frames: t.frames[..depth].iter().map(|f| f.load(Relaxed)).collect(),
                }
            })
            .collect()
    }
}

/// This worker's dump area, for [`record_this_thread`].
static MY_AREA: std::sync::OnceLock<&'static DumpArea> = std::sync::OnceLock::new();

/// In a freshly forked worker, before its threads start: its threads will
/// answer the master's dump signal into `area`.
pub fn install(area: &'static DumpArea) -> std::io::Result<()> {
    if MY_AREA.set(area).is_err() {
        return Err(std::io::Error::other("a dump area is set already"));
    }
    crate::os::install_dump_handler(record_this_thread)
}

/// The [`StackRecorder`](crate::os::StackRecorder): atomics only.
fn record_this_thread(tid: u32, walk: &mut StackWalk<'_>) {
    if let Some(area) = MY_AREA.get() {
        area.record(tid, walk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> &'static InFlightTable {
        crate::os::shared_zeroed::<InFlightTable>().unwrap()
    }

    #[test]
    fn requests_in_flight_read_back_oldest_first() {
        let t = table();
        let peer = PeerAddr::Ip("127.0.0.1:4242".parse().unwrap());
        let a = t.begin("GET", "/block", peer, 200);
        let b = t.begin("POST", "/echo", PeerAddr::Unix, 100);
        let (all, more) = t.snapshot();
        assert_eq!(more, 0);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].method, "POST");
        assert_eq!(all[0].peer, PeerAddr::Unix);
        assert_eq!(all[1].path, "/block");
        assert_eq!(all[1].peer.to_string(), "127.0.0.1:4242");
        t.end(b);
        t.end(a);
        assert!(t.snapshot().0.is_empty());
    }

    #[test]
    fn long_paths_are_cut_and_ipv6_peers_kept() {
        let t = table();
        let long = format!("/{}", "x".repeat(100));
        let peer = PeerAddr::Ip("[::1]:8080".parse().unwrap());
        let e = t.begin("PROPFINDX", &long, peer, 1);
        let (all, _) = t.snapshot();
        assert_eq!(all[0].method, "PROPFIND");
        assert_eq!(all[0].path.chars().count(), PATH_BYTES + 1);
        assert!(all[0].path.ends_with('…'));
        assert_eq!(all[0].peer.to_string(), "[::1]:8080");
        t.end(e);
    }

    #[test]
    fn a_full_table_counts_what_it_cannot_show() {
        let t = table();
        let held: Vec<_> = (0..IN_FLIGHT_ENTRIES + 3)
            .map(|i| t.begin("GET", &format!("/{i}"), PeerAddr::Unknown, i as u64))
            .collect();
        let (all, more) = t.snapshot();
        assert_eq!(all.len(), IN_FLIGHT_ENTRIES);
        assert_eq!(more, 3);
        for h in held {
            t.end(h);
        }
        assert_eq!(t.snapshot(), (vec![], 0));
    }

    #[test]
    fn only_answers_to_the_current_dump_count() {
        let area = crate::os::shared_zeroed::<DumpArea>().unwrap();
        let first = area.begin();
        area.record(7, &mut |push| {
            for ip in [1, 2, 3] {
                if !push(ip) {
                    break;
                }
            }
        });
        assert_eq!(
            area.answers(first),
            vec![CapturedThread {
                tid: 7,
                frames: vec![1, 2, 3]
            }]
        );
        let second = area.begin();
        assert!(area.answers(second).is_empty());
        area.record(8, &mut |push| while push(9) {});
        let got = area.answers(second);
        assert_eq!(got[0].frames.len(), MAX_FRAMES);
    }
}
