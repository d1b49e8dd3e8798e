//! systemd integration: `sd_notify` (READY, RELOADING, STOPPING, STATUS,
//! WATCHDOG, MAINPID) and socket activation (`LISTEN_FDS`), written
//! against the documented protocols, without libsystemd.

use std::os::fd::{OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::warn;

/// First inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Sends state changes to the service manager; a no-op without
/// `NOTIFY_SOCKET`.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket)
    /// and `WATCHDOG_USEC` / `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = if let Some(name) = path.strip_prefix('@') {
                SocketAddr::from_abstract_name(name.as_bytes())
            } else {
                SocketAddr::from_pathname(&path)
            };
            let addr = match addr {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, notify_socket = %path, "NOTIFY_SOCKET is not usable");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(s) => Some((s, addr)),
                Err(e) => {
                    warn!(error = %e, "cannot create the sd_notify socket");
                    None
                }
            }
        });
        let me = std::process::id().to_string();
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0)
            .filter(|_| std::env::var("WATCHDOG_PID").map_or(true, |p| p == me))
            .map(|us| Duration::from_micros(us / 2));
        Notifier { socket, watchdog }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog ping interval, if systemd asked for one.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Sends newline-separated `KEY=VALUE` assignments.
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                warn!(error = %e, "sd_notify failed");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` that `Type=notify-reload`
    /// requires.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            crate::os::monotonic_us()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// One socket handed over by systemd (or by the master we upgrade from).
pub struct Inherited {
    pub fd: OwnedFd,
    pub name: Option<String>,
}

/// What the `LISTEN_*` variables offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenFds {
    /// No `LISTEN_FDS`.
    None,
    /// `LISTEN_FDS` is meant for another process (`LISTEN_PID` differs).
    NotOurs,
    /// This many descriptors from [`LISTEN_FDS_START`] are ours.
    Ours(i32),
}

/// Reads `LISTEN_PID` and `LISTEN_FDS` without taking anything.
pub fn listen_fds() -> ListenFds {
    let Some(count) = std::env::var("LISTEN_FDS").ok() else {
        return ListenFds::None;
    };
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !ours {
        return ListenFds::NotOurs;
    }
    ListenFds::Ours(count.parse::<i32>().unwrap_or(0).max(0))
}

/// Takes the `LISTEN_FDS` sockets if `LISTEN_PID` is this process, and
/// unsets the variables so that nothing started later takes them again.
pub fn take_listen_fds() -> Vec<Inherited> {
    let count = match listen_fds() {
        ListenFds::Ours(n) => n,
        ListenFds::None | ListenFds::NotOurs => 0,
    };
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(String::from).collect())
        .unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        crate::os::unset_env(var);
    }
    if count == 0 {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| {
            let fd = LISTEN_FDS_START + i;
            if !crate::os::is_open(fd) {
                warn!(fd, "LISTEN_FDS names a descriptor that is not open");
                return None;
            }
            crate::os::set_cloexec(fd);
            Some(Inherited {
                fd: crate::os::adopt_inherited_fd(fd),
                name: names.get(i as usize).filter(|n| !n.is_empty()).cloned(),
            })
        })
        .collect()
}
