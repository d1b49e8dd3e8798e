//! USR2: binary upgrade. The master starts the executable found at its
//! original path (re-read, so a newly installed version runs) with every
//! listening socket and the control socket inherited (the socket-activation
//! layout: descriptors from 3, `LISTEN_FDS`, `LISTEN_FDNAMES`) and the same
//! arguments. The new master boots its workers and, once they are all
//! ready, writes `ready` on a pipe it also inherited and tells systemd
//! `MAINPID=`. Only then does the old master drain and exit. A new binary
//! that exits, or is not ready within `lifecycle.timeout`, is killed, and
//! the old master goes on as before.

use nix::fcntl::OFlag;
use nix::unistd::Pid;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use tracing::warn;

use super::Sockets;
use crate::os::systemd::LISTEN_FDS_START;
use crate::os::{self, Fork};

/// `LISTEN_FDNAMES` name of the inherited control socket.
pub const FD_NAME_CONTROL: &str = "rsvisor-control";
/// `LISTEN_FDNAMES` name of the pipe the new master reports readiness on.
pub const FD_NAME_UPGRADE: &str = "rsvisor-upgrade";
/// `LISTEN_FDNAMES` name of a listening socket (names may not contain `:`,
/// so the address is read from the socket itself).
pub const FD_NAME_LISTENER: &str = "rsvisor-listener";
/// `LISTEN_FDNAMES` name of an HTTP/3 UDP socket (each group's in order:
/// their order is what the steering program's indexes mean).
pub const FD_NAME_QUIC: &str = "rsvisor-quic";
/// Set in the new master's environment: the old master's pid.
pub const UPGRADE_FROM_ENV: &str = "RSVISOR_UPGRADE_FROM";

impl Sockets {
    /// Starts the executable at `exe` again with every socket inherited;
    /// it says it is ready on a pipe whose read end is kept here. Returns
    /// its pid.
    pub(super) fn spawn_new_master(
        &mut self,
        exe: &Path,
        args: &[OsString],
    ) -> std::io::Result<Pid> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let mut fds: Vec<RawFd> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for l in self.listeners.iter() {
            fds.push(l.raw_fd());
            names.push(FD_NAME_LISTENER.into());
        }
        for s in self.quic.handed_over() {
            fds.push(s.as_raw_fd());
            names.push(FD_NAME_QUIC.into());
        }
        if let Some(c) = &self.control {
            fds.push(c.raw_fd());
            names.push(FD_NAME_CONTROL.into());
        }
        fds.push(write.as_raw_fd());
        names.push(FD_NAME_UPGRADE.into());
        let old_pid = std::process::id().to_string();
        let mask = os::block_all_signals()?;
        let forked = os::fork();
        if !matches!(forked, Ok(Fork::Child)) {
            os::set_signal_mask(&mask)?;
        }
        match forked? {
            Fork::Child => {
                // The new master must start clean: default signal actions,
                // nothing blocked (a signal sent to it meanwhile is delivered
                // now, with the default action: it dies, and the upgrade
                // fails visibly). exec keeps neither our handlers nor us.
                let _ = os::reset_signal_dispositions();
                let _ = os::unblock_all_signals();
                let me = std::process::id().to_string();
                let mut env = vec![
                    ("LISTEN_PID".to_string(), me.clone()),
                    ("LISTEN_FDS".to_string(), fds.len().to_string()),
                    ("LISTEN_FDNAMES".to_string(), names.join(":")),
                    (UPGRADE_FROM_ENV.to_string(), old_pid),
                ];
                if std::env::var_os("WATCHDOG_USEC").is_some() {
                    env.push(("WATCHDOG_PID".to_string(), me));
                }
                let err = os::exec_with_fds(exe, args, &fds, LISTEN_FDS_START, &env);
                eprintln!("rsvisor: cannot execute {}: {err}", exe.display());
                os::exit_child(127)
            }
            Fork::Parent(pid) => {
                drop(write);
                self.upgrade_pipe = Some(read);
                Ok(pid)
            }
        }
    }

    /// What the new master wrote on its pipe since the last look, and
    /// whether it closed it.
    pub(super) fn read_upgrade_pipe(&mut self) -> (Vec<u8>, bool) {
        let Some(pipe) = &self.upgrade_pipe else {
            return (Vec::new(), false);
        };
        let mut buf = [0u8; 64];
        match nix::unistd::read(pipe, &mut buf) {
            Ok(0) => (Vec::new(), true),
            Ok(n) => (buf[..n].to_vec(), false),
            // EAGAIN: nothing yet.
            Err(_) => (Vec::new(), false),
        }
    }

    /// The upgrade is over: its pipe is closed.
    pub(super) fn forget_upgrade(&mut self) {
        self.upgrade_pipe = None;
    }

    /// A ready new master owns the socket files and the pidfile now.
    pub(super) fn hand_over(&mut self) {
        self.listeners.hand_over_files();
        if let Some(c) = &mut self.control {
            c.hand_over_file();
        }
    }

    /// A failed new master may have written the pidfile: it names this
    /// master again.
    pub(super) fn take_back(&self) {
        if let Some(p) = &self.pidfile {
            if let Err(e) = p.rewrite() {
                warn!(error = %e, "cannot restore the pidfile");
            }
        }
    }
}
