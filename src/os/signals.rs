//! Signal dispositions and masks around fork, and the master's handlers,
//! which only queue.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};

/// Signals a worker ignores: SIGPIPE (as Rust programs expect), and the
/// master's control signals, whose default actions would kill or stop a
/// worker that got one meant for the master (`kill -HUP -PGID`); USR1 gets
/// the worker's own handler later (reopen the access log).
const IGNORED_IN_WORKERS: [Signal; 6] = [
    Signal::SIGPIPE,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// Puts every other catchable signal back to its default action: a worker
/// must not run the master's handlers, which write to the master's pipe.
/// The signal mask is left as it is (see [`block_all_signals`]).
pub fn reset_signal_dispositions() -> io::Result<()> {
    let action = |handler| SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        let handler = if IGNORED_IN_WORKERS.contains(&sig) {
            SigHandler::SigIgn
        } else {
            SigHandler::SigDfl
        };
        // SAFETY: SIG_DFL and SIG_IGN run no Rust code in signal context, so
        // none of sigaction's handler-safety requirements apply.
        unsafe { nix::sys::signal::sigaction(sig, &action(handler)) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Blocks every signal in the calling thread and returns the mask it had.
///
/// The master forks with every signal blocked: a signal sent to the new
/// child before it has replaced the master's handlers with its own stays
/// pending (instead of running the master's handler in the child, where
/// it would be lost) and is delivered when the child unblocks, once its
/// own handlers are in place.
pub fn block_all_signals() -> io::Result<SigSet> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .map_err(io::Error::from)?;
    Ok(old)
}

/// Restores a mask returned by [`block_all_signals`].
pub fn set_signal_mask(mask: &SigSet) -> io::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None)
        .map_err(io::Error::from)
}

/// Unblocks every signal: pending ones are delivered now.
pub fn unblock_all_signals() -> io::Result<()> {
    set_signal_mask(&SigSet::empty())
}

/// Signals queued by [`queue_signal`], indexed by number.
/// Deliveries of each signal not yet taken by the loop: counted, so that
/// two TTINs make two workers and a second USR2 is said to be ignored.
static PENDING: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];

/// The master's self-pipe write end, for the handler to wake the loop.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// The master's signal handler: it only queues. It marks the signal
/// pending and writes one byte to the self-pipe; the master loop does the
/// work. (signal-hook is not used here on purpose: its global registry is
/// copied into every forked worker and then keeps tokio from installing
/// the worker's own TERM handler.)
extern "C" fn queue_signal(sig: libc::c_int) {
    // SAFETY: `__errno_location` returns this thread's errno; reading and
    // restoring it keeps the interrupted code's errno intact. `write` is
    // async-signal-safe; the fd is a non-blocking pipe, so a full pipe
    // cannot block the handler (the loop is awake anyway then).
    unsafe {
        let errno = *libc::__errno_location();
        if let Some(count) = PENDING.get(sig as usize) {
            count.fetch_add(1, Ordering::SeqCst);
        }
        let fd = WAKE_FD.load(Ordering::SeqCst);
        if fd >= 0 {
            let byte = 0u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// Installs [`queue_signal`] for `signals`, waking `wake_fd` on delivery.
pub fn install_queueing_handlers(signals: &[Signal], wake_fd: RawFd) -> io::Result<()> {
    WAKE_FD.store(wake_fd, Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(queue_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in signals {
        // SAFETY: `queue_signal` only touches atomics and calls `write`,
        // both async-signal-safe, and preserves errno.
        unsafe { nix::sys::signal::sigaction(*sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Takes a queued signal: how many times it was delivered since last taken.
pub fn take_pending(sig: Signal) -> u32 {
    PENDING
        .get(sig as usize)
        .map_or(0, |c| c.swap(0, Ordering::SeqCst))
}

/// Every catchable signal back to its default action (before exec, which
/// would keep ignored signals ignored in the new program).
pub fn default_signal_dispositions() -> io::Result<()> {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: SIG_DFL runs no Rust code in signal context.
        unsafe { nix::sys::signal::sigaction(sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}
