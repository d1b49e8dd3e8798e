//! USR2: binary upgrade. The master starts the executable found at its
//! original path (re-read, so a newly installed version runs) with every
//! listening socket and the control socket inherited (the socket-activation
//! layout: descriptors from 3, `LISTEN_FDS`, `LISTEN_FDNAMES`) and the same
//! arguments. The new master boots its workers and, once they are all
//! ready, writes `ready` on a pipe it also inherited and tells systemd
//! `MAINPID=`. Only then does the old master drain and exit. A new binary
//! that exits, or is not ready within `lifecycle.timeout`, is killed, and
//! the old master goes on as before.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::core::lifecycle::{judge_upgrade, Upgrade, UpgradeVerdict};
use super::core::{Ended, Event};
use super::Master;
use crate::os::systemd::LISTEN_FDS_START;
use crate::os::{self, Fork};
use crate::proto::exit::Exit;

/// `LISTEN_FDNAMES` name of the inherited control socket.
pub const FD_NAME_CONTROL: &str = "rsvisor-control";
/// `LISTEN_FDNAMES` name of the pipe the new master reports readiness on.
pub const FD_NAME_UPGRADE: &str = "rsvisor-upgrade";
/// `LISTEN_FDNAMES` name of a listening socket (names may not contain `:`,
/// so the address is read from the socket itself).
pub const FD_NAME_LISTENER: &str = "rsvisor-listener";
/// Set in the new master's environment: the old master's pid.
pub const UPGRADE_FROM_ENV: &str = "RSVISOR_UPGRADE_FROM";

impl Master {
    /// The core admitted a USR2 (the master runs, settled).
    pub(super) fn start_upgrade(&mut self) -> Option<Exit> {
        if self.systemd.upgrade_pipe.is_some() {
            // Started by a USR2 itself: the old master has not handed over.
            warn!("USR2 ignored: this master is still taking over from the previous one");
            return None;
        }
        match self.spawn_new_master() {
            Ok(up) => {
                info!(
                    new_master = up.pid.as_raw(),
                    exe = %self.fixed.exe.display(),
                    "USR2: started the new binary; old workers serve until it is ready"
                );
                self.step(Event::UpgradeStarted(up))
            }
            Err(e) => {
                error!("USR2: cannot start the new binary: {e}");
                None
            }
        }
    }

    fn spawn_new_master(&mut self) -> std::io::Result<Upgrade> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let mut fds: Vec<RawFd> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for l in self.sockets.listeners.iter() {
            fds.push(l.raw_fd());
            names.push(FD_NAME_LISTENER.into());
        }
        if let Some(c) = &self.sockets.control {
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
                let err = os::exec_with_fds(
                    &self.fixed.exe,
                    &self.fixed.args,
                    &fds,
                    LISTEN_FDS_START,
                    &env,
                );
                eprintln!(
                    "rsvisor: cannot execute {}: {err}",
                    self.fixed.exe.display()
                );
                os::exit_child(127)
            }
            Fork::Parent(pid) => {
                drop(write);
                let now = Instant::now();
                Ok(Upgrade::new(
                    pid,
                    read,
                    now,
                    now + self.core.current().loaded.config.lifecycle.timeout,
                ))
            }
        }
    }

    /// Reads what the new master said and applies [`judge_upgrade`].
    pub(super) fn check_upgrade(&mut self, pipe_readable: bool) -> Option<Exit> {
        let up = self.core.upgrade_mut()?;
        if pipe_readable {
            up.read_pipe();
        }
        match judge_upgrade(&up.said, up.closed, Instant::now() >= up.deadline) {
            UpgradeVerdict::Waiting => None,
            UpgradeVerdict::Ready => self.step(Event::UpgradeEnded {
                ready: true,
                why: String::new(),
            }),
            UpgradeVerdict::Failed(why) => self.step(Event::UpgradeEnded {
                ready: false,
                why: why.into(),
            }),
        }
    }

    /// The reap step found a child that is not a worker: the new master of
    /// an upgrade, if it is that one.
    pub(super) fn other_child_exited(&mut self, pid: Pid, how: Ended) {
        if self.core.lifecycle().upgrade().map(|u| u.pid) == Some(pid) {
            // An upgrade's failure never leads to an exit by itself.
            let _ = self.step(Event::UpgradeEnded {
                ready: false,
                why: format!("the new master exited ({how})"),
            });
        }
    }

    /// The core ended an upgrade: a failed one's new master is killed and
    /// this master takes its place again; a ready one's owns the socket
    /// files and the pidfile now.
    pub(super) fn upgrade_over(&mut self, up: Upgrade, ready: bool) {
        if ready {
            self.sockets.listeners.hand_over_files();
            if let Some(c) = &mut self.sockets.control {
                c.hand_over_file();
            }
            return;
        }
        up.kill();
        if let Some(p) = &self.sockets.pidfile {
            if let Err(e) = p.rewrite() {
                warn!(error = %e, "cannot restore the pidfile");
            }
        }
        // The new master may have said MAINPID= before failing.
        self.systemd
            .notifier
            .send(&format!("MAINPID={}", std::process::id()));
    }

    /// In a master started by an upgrade: tell the old one we are ready.
    pub(super) fn report_ready_to_old_master(&mut self) {
        if let Some(pipe) = self.systemd.upgrade_pipe.take() {
            let mut f = std::fs::File::from(pipe);
            let _ = std::io::Write::write_all(&mut f, b"ready\n");
            self.board
                .header
                .upgrades
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
