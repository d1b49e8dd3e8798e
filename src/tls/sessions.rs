//! The TLS session store HTTP/3's 0-RTT needs (`tls.early_data`), shared
//! by every worker, where each session can be taken once.
//!
//! rustls accepts early data only on a session it can *take* from a store
//! (RFC 8446 §8.1: a single-use ticket is what stops an eavesdropper from
//! replaying a client's first flight any number of times); stateless
//! tickets ([`super::tickets`]) can be replayed and never allow it. A
//! per-worker store would resume only on the worker that issued the
//! session, so the master maps this table before it forks and every worker
//! of every generation puts and takes in it: a session resumes on any
//! worker and across a `HUP`, once.
//!
//! The table is direct-mapped (a session's ID, random, picks its entry),
//! so a new session may evict an older one: that client then gets a full
//! handshake. Entries are claimed with one compare-and-swap on their state
//! word, which holds when the claim was made: a process killed while it
//! held an entry leaves it for [`STALE_CLAIM_MS`], then anyone may claim
//! it. The pages are kept out of core dumps.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::OnceLock;
use std::time::Duration;

use crate::os::{self, shared_plain};

/// Sessions the table holds (the newest of those whose IDs share an entry).
pub const SESSION_ENTRIES: usize = 2048;
/// Bytes of a session's encoding an entry holds: rustls's is about 150
/// plus the client's certificate chain, so a session with client
/// certificates larger than this is not stored (that client resumes
/// never, and gets full handshakes).
pub const MAX_SESSION_BYTES: usize = VALUE_WORDS * 8;
/// How long a claim on an entry protects it: writing or reading one takes
/// microseconds, so a claim this old belongs to a process that died.
pub const STALE_CLAIM_MS: u64 = 1_000;

/// rustls's session IDs for TLS 1.3 tickets.
const ID_LEN: usize = 32;
const ID_WORDS: usize = ID_LEN / 8;
/// An entry is 1 KiB: the state, the time it was stored, the lengths, the
/// ID and the value.
const VALUE_WORDS: usize = 121;

const EMPTY: u64 = 0;
const FULL: u64 = 1;
const CLAIMED: u64 = 2;

shared_plain! {
    #[repr(C)]
    struct Entry {
        /// EMPTY, FULL, or CLAIMED with the claim's time in ms above the
        /// two low bits.
        state: AtomicU64,
        stored_ms: AtomicU64,
        len: AtomicU64,
        id: [AtomicU64; ID_WORDS],
        value: [AtomicU64; VALUE_WORDS],
    }
}

shared_plain! {
    /// Every worker's sessions.
    #[repr(C, align(64))]
    pub struct SessionTable {
        entries: [Entry; SESSION_ENTRIES],
    }
}

static TABLE: OnceLock<&'static SessionTable> = OnceLock::new();

/// The process's table, mapped on first use. The master calls this while
/// loading TLS settings with `tls.early_data`, before it forks, so every
/// worker inherits the same one.
pub fn shared_table() -> io::Result<&'static SessionTable> {
    if let Some(t) = TABLE.get() {
        return Ok(t);
    }
    let table: &'static SessionTable = os::shared_zeroed()?;
    if let Err(e) = os::keep_out_of_core_dumps(table) {
        tracing::warn!(error = %e, "cannot keep the TLS session table out of core dumps");
    }
    Ok(TABLE.get_or_init(|| table))
}

/// The table the master made, in a worker (none if it made none: the
/// worker must not make its own, which no other worker would see).
pub fn inherited_table() -> Option<&'static SessionTable> {
    TABLE.get().copied()
}

fn now_ms() -> u64 {
    os::monotonic_us() / 1000
}

fn id_words(id: &[u8]) -> Option<[u64; ID_WORDS]> {
    if id.len() != ID_LEN {
        return None;
    }
    Some(std::array::from_fn(|i| {
        os::pack_word(&id[i * 8..i * 8 + 8])
    }))
}

impl Entry {
    /// Claims the entry if `may(state)` and nobody holds it (or a dead
    /// process does); returns the claim, which releasing must present.
    fn claim(&self, may: impl Fn(u64) -> bool, now: u64) -> Option<u64> {
        let state = self.state.load(Acquire);
        let free = match state & 3 {
            CLAIMED => now.saturating_sub(state >> 2) > STALE_CLAIM_MS,
            s => may(s),
        };
        let claim = now << 2 | CLAIMED;
        free.then(|| self.state.compare_exchange(state, claim, Acquire, Relaxed))
            .and_then(Result::ok)
            .map(|_| claim)
    }

    /// Ends a claim with `state`; false if the claim was broken meanwhile
    /// (what was read may be torn).
    fn release(&self, claim: u64, state: u64) -> bool {
        self.state
            .compare_exchange(claim, state, Release, Relaxed)
            .is_ok()
    }

    fn holds(&self, id: &[u64; ID_WORDS]) -> bool {
        self.id.iter().zip(id).all(|(a, b)| a.load(Relaxed) == *b)
    }

    fn value(&self) -> Option<Vec<u8>> {
        let len = usize::try_from(self.len.load(Relaxed)).ok()?;
        if len > MAX_SESSION_BYTES {
            return None;
        }
        let words: Vec<u64> = self.value[..len.div_ceil(8)]
            .iter()
            .map(|w| w.load(Relaxed))
            .collect();
        Some(os::unpack_words(&words, len))
    }
}

impl SessionTable {
    fn entry(&self, id: &[u64; ID_WORDS]) -> &Entry {
        // IDs are random: their first word spreads them.
        &self.entries[(id[0] % SESSION_ENTRIES as u64) as usize]
    }

    fn put(&self, id: &[u8], value: &[u8]) -> bool {
        let Some(id) = id_words(id) else {
            return false;
        };
        if value.len() > MAX_SESSION_BYTES {
            return false;
        }
        let now = now_ms();
        let entry = self.entry(&id);
        let Some(claim) = entry.claim(|_| true, now) else {
            return false;
        };
        for (w, v) in entry.id.iter().zip(id) {
            w.store(v, Relaxed);
        }
        for (w, chunk) in entry.value.iter().zip(value.chunks(8)) {
            w.store(os::pack_word(chunk), Relaxed);
        }
        entry.len.store(value.len() as u64, Relaxed);
        entry.stored_ms.store(now, Relaxed);
        entry.release(claim, FULL)
    }

    /// The session stored under `id` if younger than `lifetime`; `once`
    /// removes it.
    fn read(&self, id: &[u8], lifetime: Duration, once: bool) -> Option<Vec<u8>> {
        let id = id_words(id)?;
        let now = now_ms();
        let entry = self.entry(&id);
        let claim = entry.claim(|s| s == FULL, now)?;
        if !entry.holds(&id) {
            entry.release(claim, FULL);
            return None;
        }
        let age = now.saturating_sub(entry.stored_ms.load(Relaxed));
        let fresh = u128::from(age) < lifetime.as_millis();
        let value = if fresh { entry.value() } else { None };
        let left = if once || !fresh { EMPTY } else { FULL };
        if entry.release(claim, left) {
            value
        } else {
            None
        }
    }
}

/// rustls's session store over the shared table.
pub struct SharedSessions {
    table: &'static SessionTable,
    lifetime: Duration,
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSessions")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl SharedSessions {
    /// Sessions are honoured for `lifetime` (`tls.session_ticket_lifetime`).
    pub fn new(table: &'static SessionTable, lifetime: Duration) -> SharedSessions {
        SharedSessions { table, lifetime }
    }
}

impl rustls::server::StoresServerSessions for SharedSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.table.put(&key, &value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.table.read(key, self.lifetime, false)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.table.read(key, self.lifetime, true)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// No stateless tickets: sessions go to the store (rustls asks the ticketer
/// first, and its own never-ticketer is private).
#[derive(Debug)]
pub struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn id(n: u8) -> Vec<u8> {
        let mut id = vec![n; ID_LEN];
        id[8] = 0xee;
        id
    }

    #[test]
    fn a_session_is_taken_once_and_read_as_stored() {
        let table: &'static SessionTable = os::shared_zeroed().unwrap();
        let value: Vec<u8> = (0..=200).collect();
        assert!(table.put(&id(1), &value));
        assert_eq!(table.read(&id(1), DAY, false).as_deref(), Some(&value[..]));
        assert_eq!(table.read(&id(1), DAY, true).as_deref(), Some(&value[..]));
        assert_eq!(table.read(&id(1), DAY, true), None, "taken twice");
        assert_eq!(table.read(&id(1), DAY, false), None);
    }

    #[test]
    fn what_is_not_a_stored_session_is_refused() {
        let table: &'static SessionTable = os::shared_zeroed().unwrap();
        assert!(!table.put(b"short", b"v"), "not a session ID");
        assert!(!table.put(&id(2), &vec![7; MAX_SESSION_BYTES + 1]));
        assert!(table.put(&id(2), &vec![7; MAX_SESSION_BYTES]));
        // Another ID in the same entry finds nothing, and leaves it.
        let mut other = id(2);
        other[31] ^= 1;
        assert_eq!(table.read(&other, DAY, true), None);
        assert_eq!(
            table.read(&id(2), DAY, true).map(|v| v.len()),
            Some(MAX_SESSION_BYTES)
        );
        // An expired session is not given, and is gone.
        assert!(table.put(&id(3), b"old"));
        assert_eq!(table.read(&id(3), Duration::ZERO, false), None);
        assert_eq!(table.read(&id(3), DAY, false), None);
    }

    #[test]
    fn a_claim_held_by_a_dead_process_expires() {
        let table: &'static SessionTable = os::shared_zeroed().unwrap();
        assert!(table.put(&id(4), b"v"));
        let entry = table.entry(&id_words(&id(4)).unwrap());
        // As if a process were killed while it held the entry.
        let dead = entry.claim(|_| true, now_ms()).unwrap();
        assert_eq!(table.read(&id(4), DAY, true), None, "held");
        assert!(!table.put(&id(4), b"w"), "held");
        entry
            .state
            .store((now_ms() - STALE_CLAIM_MS - 1) << 2 | CLAIMED, Relaxed);
        assert!(table.put(&id(4), b"w"), "a stale claim is broken");
        // The dead process's claim no longer releases anything.
        assert!(!entry.release(dead, EMPTY));
        assert_eq!(table.read(&id(4), DAY, true).as_deref(), Some(&b"w"[..]));
    }

    #[test]
    fn rustls_takes_from_the_table() {
        use rustls::server::StoresServerSessions;
        let table: &'static SessionTable = os::shared_zeroed().unwrap();
        let store = SharedSessions::new(table, DAY);
        assert!(store.can_cache());
        assert!(store.put(id(5), b"s".to_vec()));
        assert_eq!(store.get(&id(5)), Some(b"s".to_vec()));
        assert_eq!(store.take(&id(5)), Some(b"s".to_vec()));
        assert_eq!(store.take(&id(5)), None);
    }
}
