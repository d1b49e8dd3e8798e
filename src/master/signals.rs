//! The master's signals: handlers only queue (see `sys::queue_signal`);
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

/// What woke the loop besides signals and nudges (which only mean "run
/// the steps").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wakeup {
    /// A control client is waiting to be accepted.
    pub control: bool,
    /// The new master of a binary upgrade wrote (or closed) its pipe.
    pub upgrade: bool,
}

pub struct SignalQueue {
    read: OwnedFd,
    write: OwnedFd,
}

impl SignalQueue {
    pub fn install() -> io::Result<SignalQueue> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        crate::sys::install_queueing_handlers(&HANDLED, write.as_raw_fd())?;
        Ok(SignalQueue { read, write })
    }

    /// A descriptor workers write to when their slot changed (ready,
    /// retiring), so the master reacts at once instead of at its next tick.
    pub fn nudge_fd(&self) -> io::Result<OwnedFd> {
        self.write.try_clone()
    }

    /// Sleeps until a signal, a worker nudge, the control socket or the
    /// upgrade pipe becomes readable (or hung up), or `timeout`.
    pub fn wait(
        &self,
        timeout: Duration,
        control: Option<BorrowedFd<'_>>,
        upgrade: Option<BorrowedFd<'_>>,
    ) -> Wakeup {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = vec![PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
        let mut at = [None, None];
        for (i, fd) in [control, upgrade].into_iter().enumerate() {
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                at[i] = Some(fds.len() - 1);
            }
        }
        let [control_at, upgrade_at] = at;
        // EINTR is the normal way a signal ends this wait.
        let _ = nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
        let readable = |at: Option<usize>| {
            at.and_then(|i| fds[i].revents())
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
        };
        let woke = Wakeup {
            control: readable(control_at),
            upgrade: readable(upgrade_at),
        };
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(&self.read, &mut buf), Ok(n) if n > 0) {}
        woke
    }

    /// The queued signals, in dispatch order.
    pub fn take(&self) -> Vec<Signal> {
        HANDLED
            .iter()
            .copied()
            .filter(|s| crate::sys::take_pending(*s))
            .collect()
    }
}
