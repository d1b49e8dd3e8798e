//! An epoll set of the caller's own, watched by tokio's reactor: the
//! caller adds descriptors through the `mio::Registry` and is woken when
//! any of them is ready.

use std::io;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A new epoll set, registered with the current tokio runtime (call on
/// it), and a handle that adds and removes descriptors from any thread.
pub fn watched_epoll() -> io::Result<(AsyncFd<mio::Poll>, mio::Registry)> {
    let poll = mio::Poll::new()?;
    let registry = poll.registry().try_clone()?;
    // SAFETY: the `mio::Poll` owns its epoll descriptor, and `AsyncFd` owns
    // the `Poll`: the descriptor stays open, and is not replaced, for as
    // long as tokio has it registered (it deregisters before dropping
    // the `Poll`).
    let watched = unsafe { AsyncFd::register_with_interest(poll, Interest::READABLE) }?;
    Ok((watched, registry))
}
