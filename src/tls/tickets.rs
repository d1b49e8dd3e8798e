//! Stateless TLS session tickets whose keys every worker shares.
//!
//! Each worker is its own process, so rustls's default ticketer (a key per
//! process) would let a client resume only when it happens to reach the
//! worker that issued its ticket. Here the master creates the keys in
//! shared memory before it forks, so every worker of every generation
//! encrypts and decrypts with the same keys, and a `HUP` (which only forks
//! new workers) keeps them. A binary upgrade (`USR2`) is a new master and
//! starts with a new key.
//!
//! The master is the only writer: every `session_ticket_lifetime` it makes
//! a new key and keeps the previous one for decryption only, so a ticket is
//! honoured for between one and two lifetimes and a stolen key opens at
//! most two lifetimes of sessions. The region is kept out of core dumps and
//! swap and the keys are never logged or written anywhere.
//!
//! A ticket is `key name (16) ‖ nonce (12) ‖ AES-256-GCM(state) ‖ tag (16)`.
//! Nonces come from a counter in the shared region, so no two tickets
//! under one key (from any worker) share a nonce.

use std::hint::spin_loop;
use std::io;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

// aws-lc-rs and ring have the same AEAD and random API; use the one rustls
// is built with.
#[cfg(not(feature = "tls-ring"))]
use aws_lc_rs as crypto;
use crypto::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use crypto::rand::{SecureRandom, SystemRandom};
#[cfg(feature = "tls-ring")]
use ring as crypto;

#[cfg(test)]
use crate::config::DEFAULT_TICKET_LIFETIME;
use crate::os::{self, shared_plain};

/// What the shared region starts with. Tests (as root) look for it in the
/// master's shared mappings to learn the live key, then check that no
/// file the server wrote contains it.
pub const TICKET_KEYS_MAGIC: [u8; 16] = *b"rsvisor:tickets\0";

const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = aead::NONCE_LEN;
const TAG_LEN: usize = 16;
const OVERHEAD: usize = NAME_LEN + NONCE_LEN + TAG_LEN;
/// A reader that finds the master mid-write this many times in a row gives
/// up (a master killed while rotating must not hang a handshake): the
/// ticket is not issued, or the client gets a full handshake.
const READ_ATTEMPTS: u32 = 1000;

shared_plain! {
    #[repr(C)]
    struct KeySlot {
        name: [AtomicU64; NAME_LEN / 8],
        key: [AtomicU64; KEY_LEN / 8],
    }
}

shared_plain! {
    /// The shared keys: two slots, the current one chosen by `seq`.
    #[repr(C, align(64))]
    pub struct TicketKeys {
        magic: [AtomicU64; 2],
        /// Twice the number of keys made, plus one while one is written.
        seq: AtomicU64,
        next_nonce: AtomicU64,
        slots: [KeySlot; 2],
    }
}

/// Plain copies of the keys, for building AEAD keys.
#[derive(Clone, PartialEq, Eq)]
struct Snapshot {
    seq: u64,
    current: Option<([u8; NAME_LEN], [u8; KEY_LEN])>,
    previous: Option<([u8; NAME_LEN], [u8; KEY_LEN])>,
}

fn store(words: &[AtomicU64], bytes: &[u8]) {
    for (w, chunk) in words.iter().zip(bytes.chunks(8)) {
        w.store(os::pack_word(chunk), Ordering::Relaxed);
    }
}

fn load<const N: usize>(words: &[AtomicU64]) -> [u8; N] {
    let words: Vec<u64> = words.iter().map(|w| w.load(Ordering::Relaxed)).collect();
    let mut out = [0u8; N];
    out.copy_from_slice(&os::unpack_words(&words, N));
    out
}

impl TicketKeys {
    /// Writes a new key into the slot of the older one. Single writer (the
    /// master); readers see either the old pair or the new pair.
    fn install(&self, name: &[u8; NAME_LEN], key: &[u8; KEY_LEN]) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let slot = &self.slots[((seq / 2 + 1) % 2) as usize];
        store(&slot.name, name);
        store(&slot.key, key);
        self.seq.store((seq | 1) + 1, Ordering::Release);
    }

    fn make_key(&self, rng: &SystemRandom) -> io::Result<()> {
        let mut name = [0u8; NAME_LEN];
        let mut key = [0u8; KEY_LEN];
        rng.fill(&mut name)
            .and_then(|()| rng.fill(&mut key))
            .map_err(|_| io::Error::other("the system random source failed"))?;
        self.install(&name, &key);
        key.fill(0);
        Ok(())
    }

    fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Option<Snapshot> {
        for _ in 0..READ_ATTEMPTS {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 1 {
                spin_loop();
                continue;
            }
            let read = |i: u64| {
                let slot = &self.slots[(i % 2) as usize];
                let name: [u8; NAME_LEN] = load(&slot.name);
                (name != [0; NAME_LEN]).then(|| (name, load::<KEY_LEN>(&slot.key)))
            };
            let generation = seq / 2;
            let current = read(generation);
            let previous = read(generation + 1);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == seq {
                return Some(Snapshot {
                    seq,
                    current,
                    previous,
                });
            }
        }
        None
    }

    fn nonce(&self) -> [u8; NONCE_LEN] {
        let n = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; NONCE_LEN];
        out[NONCE_LEN - 8..].copy_from_slice(&n.to_be_bytes());
        out
    }
}

static KEYS: OnceLock<&'static TicketKeys> = OnceLock::new();

/// The process's shared keys, created (with a first key) on first use.
/// The master calls this while loading TLS settings, before it forks, so
/// that every worker inherits the same region.
pub fn shared_keys() -> io::Result<&'static TicketKeys> {
    if let Some(k) = KEYS.get() {
        return Ok(k);
    }
    let keys: &'static TicketKeys = os::shared_zeroed()?;
    if let Err(e) = os::keep_off_disk(keys) {
        tracing::warn!(
            error = %e,
            "cannot lock the TLS ticket keys in memory; they may be swapped out \
             (raise LimitMEMLOCK / ulimit -l)"
        );
    }
    store(&keys.magic, &TICKET_KEYS_MAGIC);
    keys.make_key(&SystemRandom::new())?;
    Ok(KEYS.get_or_init(|| keys))
}

/// Replaces the current key by a new one (the current one stays valid for
/// decryption), if this process has keys. The master calls it every
/// `session_ticket_lifetime`.
pub fn rotate() -> io::Result<bool> {
    match KEYS.get() {
        Some(keys) => keys.make_key(&SystemRandom::new()).map(|()| true),
        None => Ok(false),
    }
}

struct NamedKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

impl NamedKey {
    fn new((name, bytes): ([u8; NAME_LEN], [u8; KEY_LEN])) -> Option<NamedKey> {
        let key = UnboundKey::new(&AES_256_GCM, &bytes).ok()?;
        Some(NamedKey {
            name,
            key: LessSafeKey::new(key),
        })
    }
}

#[derive(Default)]
struct Cache {
    seq: u64,
    current: Option<NamedKey>,
    previous: Option<NamedKey>,
}

/// rustls's ticketer over the shared keys. Each worker keeps the AEAD keys
/// it derived for the current pair and rebuilds them when the master has
/// rotated.
pub struct SharedTicketer {
    keys: &'static TicketKeys,
    lifetime: u32,
    cache: RwLock<Cache>,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl SharedTicketer {
    pub fn new(lifetime: Duration) -> io::Result<SharedTicketer> {
        Ok(Self::over(shared_keys()?, lifetime))
    }

    fn over(keys: &'static TicketKeys, lifetime: Duration) -> SharedTicketer {
        SharedTicketer {
            keys,
            lifetime: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
            cache: RwLock::new(Cache::default()),
        }
    }

    /// Runs `f` on the current pair of keys, refreshed if the master has
    /// rotated since the last call.
    fn with_keys<R>(&self, f: impl FnOnce(&Cache) -> Option<R>) -> Option<R> {
        let seq = self.keys.seq();
        if let Ok(cache) = self.cache.read() {
            if cache.seq == seq && seq != 0 {
                return f(&cache);
            }
        }
        let snap = self.keys.snapshot()?;
        let mut cache = self.cache.write().ok()?;
        if cache.seq != snap.seq {
            *cache = Cache {
                seq: snap.seq,
                current: snap.current.and_then(NamedKey::new),
                previous: snap.previous.and_then(NamedKey::new),
            };
        }
        f(&cache)
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let nonce = self.keys.nonce();
        self.with_keys(|cache| {
            let k = cache.current.as_ref()?;
            let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
            out.extend_from_slice(&k.name);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(plain);
            let tag = k
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&k.name),
                    &mut out[NAME_LEN + NONCE_LEN..],
                )
                .ok()?;
            out.extend_from_slice(tag.as_ref());
            Some(out)
        })
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < OVERHEAD {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        self.with_keys(|cache| {
            let k = [&cache.current, &cache.previous]
                .into_iter()
                .flatten()
                .find(|k| k.name == name)?;
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buf = sealed.to_vec();
            let plain_len = k
                .key
                .open_in_place(nonce, Aad::from(&k.name), &mut buf)
                .ok()?
                .len();
            buf.truncate(plain_len);
            Some(buf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn fresh() -> &'static TicketKeys {
        let keys: &'static TicketKeys = os::shared_zeroed().expect("shared memory");
        keys.make_key(&SystemRandom::new()).expect("random");
        keys
    }

    #[test]
    fn a_ticket_opens_on_another_ticketer_over_the_same_keys() {
        let keys = fresh();
        let a = SharedTicketer::over(keys, DEFAULT_TICKET_LIFETIME);
        let b = SharedTicketer::over(keys, DEFAULT_TICKET_LIFETIME);
        let t = a.encrypt(b"session state").expect("ticket");
        assert_eq!(t.len(), b"session state".len() + OVERHEAD);
        assert_eq!(b.decrypt(&t).as_deref(), Some(&b"session state"[..]));
    }

    #[test]
    fn the_previous_key_still_opens_but_not_the_one_before() {
        let keys = fresh();
        let t = SharedTicketer::over(keys, DEFAULT_TICKET_LIFETIME);
        let old = t.encrypt(b"x").expect("ticket");
        keys.make_key(&SystemRandom::new()).expect("random");
        assert_eq!(t.decrypt(&old).as_deref(), Some(&b"x"[..]));
        let newer = t.encrypt(b"y").expect("ticket");
        assert_ne!(old[..NAME_LEN], newer[..NAME_LEN]);
        keys.make_key(&SystemRandom::new()).expect("random");
        assert_eq!(t.decrypt(&old), None);
        assert_eq!(t.decrypt(&newer).as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn tampered_short_and_foreign_tickets_are_refused() {
        let keys = fresh();
        let t = SharedTicketer::over(keys, DEFAULT_TICKET_LIFETIME);
        let mut ticket = t.encrypt(b"state").expect("ticket");
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(t.decrypt(&ticket), None);
        assert_eq!(t.decrypt(&[0u8; OVERHEAD - 1]), None);
        assert_eq!(t.decrypt(&[]), None);
        let other = SharedTicketer::over(fresh(), DEFAULT_TICKET_LIFETIME);
        let foreign = other.encrypt(b"state").expect("ticket");
        assert_eq!(t.decrypt(&foreign), None);
    }

    #[test]
    fn nonces_never_repeat_across_ticketers() {
        let keys = fresh();
        let a = SharedTicketer::over(keys, DEFAULT_TICKET_LIFETIME);
        let b = SharedTicketer::over(keys, DEFAULT_TICKET_LIFETIME);
        let nonce = |t: &[u8]| t[NAME_LEN..NAME_LEN + NONCE_LEN].to_vec();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            assert!(seen.insert(nonce(&a.encrypt(b"s").expect("ticket"))));
            assert!(seen.insert(nonce(&b.encrypt(b"s").expect("ticket"))));
        }
    }

    #[test]
    fn a_reader_gives_up_on_a_master_that_died_mid_write() {
        let keys = fresh();
        keys.seq.fetch_add(1, Ordering::Relaxed);
        let t = SharedTicketer::over(keys, DEFAULT_TICKET_LIFETIME);
        assert_eq!(t.encrypt(b"s"), None);
    }
}
