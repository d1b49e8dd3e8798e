//! Listening sockets: bound by the master before any fork (TCP v4/v6 and
//! Unix), shared by every worker through inheritance.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::BindAddr;

/// Why a listening socket could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// `bind` or `listen` failed.
    #[error("cannot bind {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: BindAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
        /// What to do about it, if rsvisor knows.
        hint: &'static str,
    },
    /// A live process accepts on the Unix socket file already.
    #[error("cannot bind {addr}: another process is listening on {}", path.display())]
    UnixInUse {
        /// The address.
        addr: BindAddr,
        /// The socket file.
        path: PathBuf,
    },
    /// The Unix socket's path is taken by something that is not a socket.
    #[error("cannot bind {addr}: {} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket {
        /// The address.
        addr: BindAddr,
        /// What is there.
        path: PathBuf,
    },
    /// A socket from systemd or the previous master cannot be used.
    #[error("inherited socket: {0}")]
    Inherited(#[source] io::Error),
    /// `server.socket_mode` or the owner cannot be set on a socket file.
    #[error("cannot set permissions of {}: {source}", path.display())]
    Permissions {
        /// The socket file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// One bound listening socket.
#[derive(Debug)]
pub struct Listener {
    pub addr: BindAddr,
    socket: OwnedFd,
    /// For Unix sockets: the file we created, to remove on exit only if it
    /// is still ours (same inode).
    unix_file: Option<(PathBuf, u64, u64)>,
}

impl Listener {
    pub fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The actual address (useful for port 0 in tests and logs).
    pub fn local_addr(&self) -> String {
        match &self.addr {
            BindAddr::Tcp(_) => self
                .tcp_local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| self.addr.to_string()),
            BindAddr::Unix(_) => self.addr.to_string(),
        }
    }

    /// The address a TCP socket is bound to (its real port when the
    /// configuration said 0).
    pub fn tcp_local_addr(&self) -> Option<std::net::SocketAddr> {
        match self.addr {
            BindAddr::Tcp(_) => socket2::SockRef::from(&self.socket)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket()),
            BindAddr::Unix(_) => None,
        }
    }

    /// A new descriptor for the same socket, for a worker to own.
    pub fn dup(&self) -> io::Result<OwnedFd> {
        self.socket.try_clone()
    }

    /// A listening socket handed over by systemd or by the master we are
    /// upgrading from. `owns_file`: remove its Unix socket file on exit
    /// (not for systemd's, which systemd manages).
    pub fn from_inherited(fd: OwnedFd, owns_file: bool) -> io::Result<Listener> {
        let sock = socket2::SockRef::from(&fd);
        if !sock.is_listener()? {
            return Err(io::Error::other("not a listening socket"));
        }
        let local = sock.local_addr()?;
        sock.set_nonblocking(true)?;
        let addr = if let Some(sa) = local.as_socket() {
            BindAddr::Tcp(sa)
        } else if let Some(path) = local.as_pathname() {
            BindAddr::Unix(path.to_path_buf())
        } else {
            return Err(io::Error::other("neither a TCP nor a named Unix socket"));
        };
        let unix_file = match (&addr, owns_file) {
            (BindAddr::Unix(p), true) => std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (p.clone(), m.dev(), m.ino())),
            _ => None,
        };
        Ok(Listener {
            addr,
            socket: fd,
            unix_file,
        })
    }

    /// Leaves the socket file in place on exit.
    pub fn forget_file(&mut self) {
        self.unix_file = None;
    }

    /// Removes the Unix socket file if it is still the one we created.
    fn remove_file(&self) {
        if let Some((path, dev, ino)) = &self.unix_file {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.dev() == *dev && meta.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// Binds `addr` with `backlog`; Unix socket files get `mode` if given.
pub fn bind(
    addr: &BindAddr,
    backlog: u32,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<Listener, ListenError> {
    match addr {
        BindAddr::Tcp(sa) => {
            let wrap = |source: io::Error| {
                let hint = match source.kind() {
                    io::ErrorKind::AddrInUse => " (is another server running on this port?)",
                    io::ErrorKind::PermissionDenied => {
                        " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                    }
                    io::ErrorKind::AddrNotAvailable => " (this host has no such address)",
                    _ => "",
                };
                ListenError::Bind {
                    addr: addr.clone(),
                    source,
                    hint,
                }
            };
            let socket = Socket::new(Domain::for_address(*sa), Type::STREAM, None).map_err(wrap)?;
            socket.set_reuse_address(true).map_err(wrap)?;
            if sa.is_ipv6() {
                socket.set_only_v6(true).map_err(wrap)?;
            }
            socket.set_tcp_nodelay(true).map_err(wrap)?;
            socket.bind(&SockAddr::from(*sa)).map_err(wrap)?;
            socket.listen(backlog as i32).map_err(wrap)?;
            // O_NONBLOCK lives on the shared open file description: set once
            // here, every worker's copy is non-blocking for tokio.
            socket.set_nonblocking(true).map_err(wrap)?;
            Ok(Listener {
                addr: addr.clone(),
                socket: socket.into(),
                unix_file: None,
            })
        }
        BindAddr::Unix(path) => bind_unix(addr, path, backlog, mode, owner),
    }
}

fn bind_unix(
    addr: &BindAddr,
    path: &Path,
    backlog: u32,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<Listener, ListenError> {
    let wrap = |source: io::Error| ListenError::Bind {
        addr: addr.clone(),
        source,
        hint: "",
    };
    remove_stale_socket(addr, path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(wrap)?;
    socket
        .bind(&SockAddr::unix(path).map_err(wrap)?)
        .map_err(wrap)?;
    let perm_err = |source| ListenError::Permissions {
        path: path.to_path_buf(),
        source,
    };
    // Before listen(): nobody can connect while the file still has the
    // umask's permissions.
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(perm_err)?;
    }
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(perm_err)?;
    }
    socket.listen(backlog as i32).map_err(wrap)?;
    socket.set_nonblocking(true).map_err(wrap)?;
    let meta = std::fs::symlink_metadata(path).map_err(wrap)?;
    Ok(Listener {
        addr: addr.clone(),
        socket: socket.into(),
        unix_file: Some((path.to_path_buf(), meta.dev(), meta.ino())),
    })
}

/// A leftover socket file from a crashed run is removed, but only when
/// nothing accepts connections on it; anything else is left alone.
fn remove_stale_socket(addr: &BindAddr, path: &Path) -> Result<(), ListenError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            addr: addr.clone(),
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ListenError::UnixInUse {
            addr: addr.clone(),
            path: path.to_path_buf(),
        }),
        Err(_) => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
    }
}

/// The set of sockets the master holds, keyed by address.
#[derive(Debug, Default)]
pub struct ListenerSet {
    listeners: Vec<Listener>,
}

impl ListenerSet {
    /// Binds the addresses of `addrs` that are not bound yet. Returns the
    /// newly bound ones' addresses; on failure, closes what it bound.
    pub fn ensure(
        &mut self,
        addrs: &[BindAddr],
        backlog: u32,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<BindAddr>, ListenError> {
        let mut added = Vec::new();
        for addr in addrs {
            if self.get(addr).is_some() {
                continue;
            }
            match bind(addr, backlog, mode, owner) {
                Ok(l) => {
                    added.push(addr.clone());
                    self.listeners.push(l);
                }
                Err(e) => {
                    self.listeners.retain(|l| !added.contains(&l.addr));
                    return Err(e);
                }
            }
        }
        Ok(added)
    }

    /// Adds an inherited socket under `addr` (the config entry it serves).
    pub fn adopt(&mut self, mut listener: Listener, addr: BindAddr) {
        listener.addr = addr;
        self.listeners.retain(|l| l.addr != listener.addr);
        self.listeners.push(listener);
    }

    /// Keeps the sockets open but stops removing their files on exit: a
    /// new master (binary upgrade) serves them now.
    pub fn hand_over_files(&mut self) {
        for l in &mut self.listeners {
            l.forget_file();
        }
    }

    pub fn get(&self, addr: &BindAddr) -> Option<&Listener> {
        self.listeners.iter().find(|l| &l.addr == addr)
    }

    /// The sockets' inodes (how /proc names them in a process's fds).
    pub fn inodes(&self) -> Vec<u64> {
        self.iter()
            .filter_map(|l| nix::sys::stat::fstat(l.as_fd()).ok())
            .map(|st| st.st_ino)
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter()
    }

    /// Closes (and for Unix, removes) every socket not in `keep`.
    pub fn retain(&mut self, keep: &[&BindAddr]) {
        self.listeners.retain(|l| keep.contains(&&l.addr));
    }

    /// Closes everything: new connections are refused from now on.
    pub fn close_all(&mut self) {
        self.listeners.clear();
    }
}
