//! The worker's parked connections: idle keep-alive sockets held in one
//! table, outside any task and outside tokio's reactor.
//!
//! A task per parked connection (see `park`), with its timer and tokio's
//! registration of the socket, would cost about 900 bytes of heap, spread
//! over pages the allocator cannot give back. Here a parked connection is
//! one row of a slab (the socket's descriptor and what the connection
//! needs to be served again) and one entry of a deadline heap. The
//! sockets wait in an epoll set of the lot's own, whose descriptor is the
//! only one tokio watches; one task per worker takes the sockets that
//! became readable out of the set and hands each to a new connection task,
//! and closes the ones whose keep-alive timeout came first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Readiness events taken from the lot's epoll set per system call.
const EVENTS_PER_POLL: usize = 256;

/// Expired connections closed per turn of the lot's task: between turns
/// the worker's other tasks run, so a burst of timeouts (thousands of
/// connections opened together) does not hold up the requests in flight.
const CLOSE_BATCH: usize = 256;

/// The lot's timer never naps less than this (the worker clock's tick):
/// a shorter nap would find the clock unchanged and spin.
const MIN_NAP: Duration = super::clock::CLOCK_TICK;

/// How long the lot's task sleeps with no connection parked (a park with a
/// deadline wakes it).
const NO_DEADLINE_NAP: Duration = Duration::from_secs(3600);

/// A parked socket, out of tokio's reactor (non-blocking).
#[derive(Debug)]
pub enum Socket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// A parked connection: its socket and what serving it again needs (`M`).
pub struct Parked<M> {
    pub socket: Socket,
    pub meta: M,
}

struct Row<M> {
    parked: Parked<M>,
    deadline_ms: u64,
    /// Tells this row's readiness events and deadline from those of an
    /// earlier row with the same key.
    generation: u32,
}

struct Table<M> {
    rows: Slab<Row<M>>,
    /// (deadline, key, generation); entries of rows gone since are
    /// skipped when they come up, and dropped when the heap is rebuilt.
    deadlines: BinaryHeap<Reverse<(u64, u32, u32)>>,
    generation: u32,
    /// The deadline the lot's task sleeps until (`u64::MAX`: none).
    next_wake_ms: u64,
}

impl<M> Table<M> {
    /// Rebuilds the deadline heap from the rows when stale entries (of
    /// connections that resumed) outnumber the live ones: a busy
    /// connection parks and resumes many times per keep-alive timeout.
    fn compact(&mut self) {
        if self.deadlines.len() <= 2 * self.rows.len() + 64 {
            return;
        }
        self.deadlines = self
            .rows
            .iter()
            .map(|(key, r)| Reverse((r.deadline_ms, key as u32, r.generation)))
            .collect();
    }
}

/// One worker's parked connections. `park` may be called from any task;
/// [`LotTask::run`] serves them again or closes them.
pub struct Lot<M> {
    table: Mutex<Table<M>>,
    registry: mio::Registry,
    /// Wakes the lot's task when a deadline earlier than the one it sleeps
    /// until arrives.
    wake: Notify,
}

/// The lot's epoll set, watched by tokio; owned by the lot's task.
pub struct LotTask<M> {
    lot: Arc<Lot<M>>,
    poll: AsyncFd<mio::Poll>,
}

fn token(key: usize, generation: u32) -> Token {
    Token((u64::from(generation) << 32 | key as u64) as usize)
}

fn key_and_generation(t: Token) -> (usize, u32) {
    let t = t.0 as u64;
    ((t & u64::from(u32::MAX)) as usize, (t >> 32) as u32)
}

impl<M> Lot<M> {
    fn table(&self) -> MutexGuard<'_, Table<M>> {
        // A panic while the lock was held left the table consistent: each
        // change to it is one call that does not panic halfway.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks a connection until its socket has bytes (or an end) to read,
    /// or until `deadline_ms` on the worker clock, when it is closed. On
    /// an error (the kernel refused to watch one more socket), the
    /// connection is given back.
    pub fn park(&self, parked: Parked<M>, deadline_ms: u64) -> Result<(), (io::Error, Parked<M>)> {
        let fd = parked.socket.as_raw_fd();
        let mut t = self.table();
        t.generation = t.generation.wrapping_add(1);
        let generation = t.generation;
        let key = t.rows.vacant_key();
        if let Err(e) = self.registry.register(
            &mut SourceFd(&fd),
            token(key, generation),
            Interest::READABLE,
        ) {
            return Err((e, parked));
        }
        t.rows.insert(Row {
            parked,
            deadline_ms,
            generation,
        });
        t.deadlines
            .push(Reverse((deadline_ms, key as u32, generation)));
        t.compact();
        if deadline_ms < t.next_wake_ms {
            t.next_wake_ms = deadline_ms;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Takes the connection a readiness event was for out of the set.
    fn take(&self, t: Token) -> Option<Parked<M>> {
        let (key, generation) = key_and_generation(t);
        let mut t = self.table();
        if t.rows.get(key)?.generation != generation {
            return None;
        }
        let row = t.rows.remove(key);
        drop(t);
        // Before tokio registers the descriptor in its own set.
        self.unwatch(&row.parked.socket);
        Some(row.parked)
    }

    fn unwatch(&self, socket: &Socket) {
        let fd = socket.as_raw_fd();
        // Fails only for a descriptor not in the set: nothing to undo.
        let _ = self.registry.deregister(&mut SourceFd(&fd));
    }

    /// Closes up to [`CLOSE_BATCH`] connections whose deadline has come;
    /// returns the next deadline (`u64::MAX`: none), at or before `now`
    /// when more are due.
    fn expire(&self, now: u64) -> u64 {
        let mut due = Vec::new();
        let mut t = self.table();
        let next = loop {
            let Some(&Reverse((at, key, generation))) = t.deadlines.peek() else {
                break u64::MAX;
            };
            // A row's generation is new at each park, and its deadline is
            // set then: the same generation means the same deadline.
            let live = t
                .rows
                .get(key as usize)
                .is_some_and(|r| r.generation == generation);
            if live && (at > now || due.len() == CLOSE_BATCH) {
                break at;
            }
            t.deadlines.pop();
            if live {
                due.push(t.rows.remove(key as usize).parked);
            }
        };
        t.next_wake_ms = next;
        drop(t);
        for p in due {
            self.unwatch(&p.socket);
            // Dropped here: the socket closes, the connection's guard (if
            // `M` holds one) counts it closed.
        }
        next
    }
}

impl<M> LotTask<M> {
    /// An empty lot and its task. Must be called on the worker's runtime.
    pub fn new() -> io::Result<LotTask<M>> {
        let (poll, registry) = crate::os::watched_epoll()?;
        let lot = Arc::new(Lot {
            table: Mutex::new(Table {
                rows: Slab::new(),
                deadlines: BinaryHeap::new(),
                generation: 0,
                next_wake_ms: u64::MAX,
            }),
            registry,
            wake: Notify::new(),
        });
        Ok(LotTask { lot, poll })
    }

    pub fn lot(&self) -> &Arc<Lot<M>> {
        &self.lot
    }

    /// Runs for the worker's life: each parked connection whose socket
    /// becomes readable goes to `resume`; each whose deadline (on the clock
    /// `now` reads, in milliseconds) comes first is closed.
    pub async fn run(self, now: impl Fn() -> u64, mut resume: impl FnMut(Parked<M>)) {
        let LotTask { lot, mut poll } = self;
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut nap = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        loop {
            let now_ms = now();
            let next = lot.expire(now_ms);
            let wait = match next {
                u64::MAX => NO_DEADLINE_NAP,
                at if at <= now_ms => {
                    // More are due: after the worker's other tasks.
                    tokio::task::yield_now().await;
                    continue;
                }
                at => Duration::from_millis(at - now_ms).max(MIN_NAP),
            };
            nap.as_mut().reset(tokio::time::Instant::now() + wait);
            tokio::select! {
                ready = poll.readable_mut() => {
                    let Ok(mut ready) = ready else {
                        // Only when the runtime is shutting down.
                        return;
                    };
                    events.clear();
                    match ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) if events.is_empty() => ready.clear_ready(),
                        Ok(()) => {}
                        // EINTR: look again.
                        Err(_) => continue,
                    }
                    for event in events.iter() {
                        if let Some(parked) = lot.take(event.token()) {
                            resume(parked);
                        }
                    }
                }
                _ = &mut nap => {}
                _ = lot.wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    fn pair() -> (Socket, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("non-blocking");
        b.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        (Socket::Unix(a), b)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A running lot whose clock the test moves, and what it hands back.
    fn started<M: Send + 'static>(
        start_ms: u64,
    ) -> (
        Arc<Lot<M>>,
        Arc<AtomicU64>,
        tokio::sync::mpsc::UnboundedReceiver<Parked<M>>,
    ) {
        let clock = Arc::new(AtomicU64::new(start_ms));
        let task = LotTask::<M>::new().expect("lot");
        let lot = task.lot().clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let now = clock.clone();
        tokio::spawn(task.run(
            move || now.load(Relaxed),
            move |p| {
                let _ = tx.send(p);
            },
        ));
        (lot, clock, rx)
    }

    #[test]
    fn a_socket_with_bytes_is_handed_back_and_an_idle_one_closes_at_its_deadline() {
        runtime().block_on(async {
            let (lot, clock, mut rx) = started::<u32>(1_000);

            let (talker, mut talker_peer) = pair();
            let (sleeper, mut sleeper_peer) = pair();
            assert!(lot
                .park(
                    Parked {
                        socket: talker,
                        meta: 1
                    },
                    60_000
                )
                .is_ok());
            assert!(lot
                .park(
                    Parked {
                        socket: sleeper,
                        meta: 2
                    },
                    2_000
                )
                .is_ok());
            assert_eq!(lot.table().rows.len(), 2);

            talker_peer.write_all(b"GET").expect("write");
            let back = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("handed back in time")
                .expect("a connection");
            assert_eq!(back.meta, 1);
            assert_eq!(lot.table().rows.len(), 1);

            // The sleeper's deadline passes on the worker clock.
            clock.store(2_000, Relaxed);
            let eof = tokio::task::spawn_blocking(move || {
                let mut rest = Vec::new();
                sleeper_peer.read_to_end(&mut rest).map(|_| rest)
            });
            let rest = tokio::time::timeout(Duration::from_secs(10), eof)
                .await
                .expect("closed in time")
                .expect("joined")
                .expect("an orderly close");
            assert!(rest.is_empty());
            assert_eq!(lot.table().rows.len(), 0);
            // The socket handed back is the caller's: still open.
            let Socket::Unix(mut s) = back.socket else {
                unreachable!()
            };
            let mut got = [0u8; 3];
            s.set_nonblocking(false).expect("blocking");
            s.read_exact(&mut got).expect("the bytes");
            assert_eq!(&got, b"GET");
        });
    }

    #[test]
    fn an_earlier_deadline_wakes_the_lot_and_stale_deadlines_do_not_pile_up() {
        runtime().block_on(async {
            let (lot, clock, mut rx) = started::<()>(0);
            // One connection parks and resumes many times.
            let (s, mut peer) = pair();
            let mut socket = Some(s);
            for _ in 0..1_000 {
                let p = Parked {
                    socket: socket.take().expect("socket"),
                    meta: (),
                };
                assert!(lot.park(p, 3_600_000).is_ok());
                peer.write_all(b"x").expect("write");
                let back = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("handed back in time")
                    .expect("a connection");
                let Socket::Unix(mut s) = back.socket else {
                    unreachable!()
                };
                let mut one = [0u8; 1];
                s.set_nonblocking(false).expect("blocking");
                s.read_exact(&mut one).expect("the byte");
                s.set_nonblocking(true).expect("non-blocking");
                socket = Some(Socket::Unix(s));
            }
            assert!(lot.table().deadlines.len() <= 64 + 2);
            // The lot sleeps until an hour from now; a connection due
            // sooner is closed at its own deadline.
            let (short, mut short_peer) = pair();
            assert!(lot
                .park(
                    Parked {
                        socket: short,
                        meta: ()
                    },
                    100
                )
                .is_ok());
            clock.store(100, Relaxed);
            let eof = tokio::task::spawn_blocking(move || {
                let mut rest = Vec::new();
                short_peer.read_to_end(&mut rest)
            });
            tokio::time::timeout(Duration::from_secs(10), eof)
                .await
                .expect("closed in time")
                .expect("joined")
                .expect("an orderly close");
        });
    }

    #[test]
    fn more_expired_connections_than_a_batch_are_all_closed() {
        runtime().block_on(async {
            let (lot, clock, _rx) = started::<()>(0);
            let mut peers = Vec::new();
            for _ in 0..CLOSE_BATCH + 44 {
                let (socket, peer) = pair();
                assert!(lot.park(Parked { socket, meta: () }, 100).is_ok());
                peers.push(peer);
            }
            clock.store(100, Relaxed);
            let closed = async {
                while !lot.table().rows.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), closed)
                .await
                .expect("every row closed in time");
            for mut peer in peers {
                let mut rest = Vec::new();
                assert_eq!(peer.read_to_end(&mut rest).expect("an orderly close"), 0);
            }
        });
    }

    #[test]
    fn tokens_carry_the_row_and_its_generation() {
        let t = token(12_345, 7);
        assert_eq!(key_and_generation(t), (12_345, 7));
        assert_eq!(key_and_generation(token(0, u32::MAX)), (0, u32::MAX));
    }
}
