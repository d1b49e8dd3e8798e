//! Raw descriptors: inherited sockets, close-on-exec, credentials on a
//! Unix datagram socket.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists()
}

/// Marks a descriptor close-on-exec.
pub fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl(F_SETFD) on a descriptor number only changes a flag of
    // this process's descriptor table; an invalid number just fails.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// Takes ownership of a descriptor handed over by the process that
/// started us (socket activation, binary upgrade).
pub fn adopt_inherited_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: by the LISTEN_FDS protocol this number is an open descriptor
    // handed to this process and owned by nobody else in it; the caller
    // checked it is open and unsets the variables naming it, so it is
    // adopted exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Asks the kernel to attach the sender's credentials to each datagram
/// received on `fd` (SO_PASSCRED).
pub fn set_passcred(fd: RawFd) -> io::Result<()> {
    // SAFETY: the descriptor is borrowed only for this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::socket::setsockopt(&borrowed, nix::sys::socket::sockopt::PassCred, &true)
        .map_err(io::Error::from)
}

/// Receives one datagram without blocking: its bytes and the sender's pid
/// (with [`set_passcred`] on). `None` when nothing is pending.
pub fn recv_with_sender(fd: RawFd) -> io::Result<Option<(Vec<u8>, Option<i32>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixCredentials};
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!(UnixCredentials);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(io::Error::from(e)),
    };
    let sender = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
            _ => None,
        })
    });
    let n = msg.bytes;
    buf.truncate(n);
    Ok(Some((buf, sender)))
}

/// The local address of a listening socket this process inherited, for
/// `rsvisor check` (which reports sockets without taking them).
pub fn describe_socket(fd: RawFd) -> Option<String> {
    if !is_open(fd) {
        return None;
    }
    // SAFETY: the descriptor is open (checked above) and only borrowed for
    // the two queries below; nothing closes it meanwhile (single thread).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&borrowed);
    if !sock.is_listener().ok()? {
        return None;
    }
    let addr = sock.local_addr().ok()?;
    if let Some(sa) = addr.as_socket() {
        Some(sa.to_string())
    } else {
        addr.as_pathname().map(|p| format!("unix:{}", p.display()))
    }
}

/// A non-blocking connection to the Unix stream socket at `path`, made
/// without waiting whatever the listener does; `None` when nothing
/// listens there or its backlog is full.
pub fn unix_connect_nonblocking(path: &std::path::Path) -> Option<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let addr = UnixAddr::new(path).ok()?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    // A Unix stream connect completes at once or fails with EAGAIN (a
    // full backlog): there is no connection in progress to wait for.
    connect(fd.as_raw_fd(), &addr).ok()?;
    Some(fd)
}
