//! The master's signals: handlers only queue (see `os/signals.rs`);
//! the loop waits on the self-pipe, which workers also use to nudge it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

/// Signals the master handles, in the order it dispatches them when
/// several are queued at once: stopping wins over everything else.
pub const HANDLED: [Signal; 9] = [
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

pub struct SignalQueue {
    read: OwnedFd,
    write: OwnedFd,
}

impl SignalQueue {
    pub fn install() -> io::Result<SignalQueue> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        crate::os::install_queueing_handlers(&HANDLED, write.as_raw_fd())?;
        Ok(SignalQueue { read, write })
    }

    /// A descriptor workers write to when their slot changed (ready,
    /// retiring), so the master reacts at once instead of at its next tick.
    pub fn nudge_fd(&self) -> io::Result<OwnedFd> {
        self.write.try_clone()
    }

    /// Sleeps until a signal or a worker nudge arrives, one of `fds` is
    /// ready for what it asks (or hung up), or `timeout`. The self-pipe is
    /// drained; `fds` keep their results.
    pub fn wait(
        &self,
        timeout: Duration,
        fds: &[(BorrowedFd<'_>, PollFlags)],
    ) -> Vec<Option<PollFlags>> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut polled = Vec::with_capacity(fds.len() + 1);
        polled.push(PollFd::new(self.read.as_fd(), PollFlags::POLLIN));
        polled.extend(fds.iter().map(|(fd, flags)| PollFd::new(*fd, *flags)));
        // EINTR is the normal way a signal ends this wait.
        let _ = nix::poll::poll(
            &mut polled,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
        let revents = polled[1..].iter().map(|p| p.revents()).collect();
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(&self.read, &mut buf), Ok(n) if n > 0) {}
        revents
    }

    /// The queued signals, in dispatch order, each with how many times it
    /// was delivered (the kernel merges deliveries it has not handed over
    /// yet; these are the ones the handler saw).
    pub fn take(&self) -> Vec<(Signal, u32)> {
        HANDLED
            .iter()
            .map(|s| (*s, crate::os::take_pending(*s)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
