//! Processes: fork, exec with inherited descriptors, the child's exit,
//! environment, privileges and the checks made as another user.

use std::io;
use std::os::fd::RawFd;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::signals::{block_all_signals, set_signal_mask};

/// What `fork` returned, seen from the process that continues.
pub enum Fork {
    Parent(Pid),
    Child,
}

/// Forks the calling process. Callers block signals around it (see
/// [`block_all_signals`]).
///
/// The master calls this from its single thread only, so the child starts
/// with a consistent heap and no lock held by a thread that does not exist
/// in the child.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the master never starts threads (no tokio, no helper threads;
    // see docs/ARCHITECTURE.md), so the child is a full copy of a
    // single-threaded process and may allocate and run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Fork::Parent(child)),
        Ok(nix::unistd::ForkResult::Child) => Ok(Fork::Child),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// In a freshly forked child: closes every descriptor except 0, 1, 2 and
/// `keep`. What the child keeps is a list of what it needs; anything the
/// master opened (its pipes, control clients, sockets of other
/// generations) is closed without having to be named.
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|fd| *fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first: libc::c_uint = 3;
    for fd in keep.iter().copied().chain([RawFd::MAX]) {
        let fd = fd as libc::c_uint;
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd.saturating_add(1);
    }
    Ok(())
}

fn close_range(first: libc::c_uint, last: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range(2) only closes descriptors of this process in
    // the given range; the child owns no Rust object that will use them
    // (it never drops the master's state, see `close_fds_except`).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // Kernels before 5.9: close what /proc lists in the range.
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if (first as i64..=last as i64).contains(&(fd as i64)) {
            // SAFETY: as above; a descriptor that is already closed (the
            // directory handle of read_dir) just fails with EBADF.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Sets an environment variable in a worker before its runtime starts.
pub fn set_env(key: &str, value: &str) {
    // In a freshly forked worker there is exactly one thread, so changing
    // the environment cannot race with a reader.
    std::env::set_var(key, value);
}

/// Removes an environment variable. Called only while the process has a
/// single thread (the master, or a worker before its runtime exists).
pub fn unset_env(key: &str) {
    std::env::remove_var(key);
}

/// In a forked child: copies `fds` to `first_fd`, `first_fd + 1`, …
/// (the socket-activation layout), without close-on-exec.
fn place_fds(fds: &[RawFd], first_fd: RawFd) -> io::Result<()> {
    // First copy every descriptor above the target range, so that placing
    // one cannot overwrite another that is still to be placed.
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor of this process
        // creates a new descriptor; it touches no memory.
        let new = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 1024) };
        if new < 0 {
            return Err(io::Error::last_os_error());
        }
        high.push(new);
    }
    for (i, fd) in high.iter().enumerate() {
        let target = first_fd + i as RawFd;
        // SAFETY: dup2 onto a number in this child's own table; whatever
        // the master had there is not needed by the program we exec. The
        // copy is created without close-on-exec, as the protocol requires.
        if unsafe { libc::dup2(*fd, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn c_strings<'a>(
    items: impl Iterator<Item = &'a std::ffi::OsStr>,
) -> Result<Vec<std::ffi::CString>, io::Error> {
    use std::os::unix::ffi::OsStrExt;
    items
        .map(|s| std::ffi::CString::new(s.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| io::Error::other("an argument contains a NUL byte"))
}

/// In a freshly forked child of the master: places `fds` at descriptors
/// `first_fd`, `first_fd + 1`, … (the socket-activation layout), sets
/// `env`, and executes `exe` with `args`. Returns only if that failed.
pub fn exec_with_fds(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    fds: &[RawFd],
    first_fd: RawFd,
    env: &[(String, String)],
) -> io::Error {
    if let Err(e) = place_fds(fds, first_fd) {
        return e;
    }
    for (k, v) in env {
        set_env(k, v);
    }
    let path = match c_strings(std::iter::once(exe.as_os_str())) {
        Ok(mut p) => p.remove(0),
        Err(e) => return e,
    };
    let argv = match c_strings(args.iter().map(|a| a.as_os_str())) {
        Ok(a) => a,
        Err(e) => return e,
    };
    match nix::unistd::execv(&path, &argv) {
        Err(e) => io::Error::from(e),
        Ok(never) => match never {},
    }
}

/// Like [`exec_with_fds`] for a command line: `command[0]` is looked up in
/// `PATH` (the environment's, after `env` is applied).
pub fn exec_program(
    command: &[String],
    fds: &[RawFd],
    first_fd: RawFd,
    env: &[(String, String)],
) -> io::Error {
    if let Err(e) = place_fds(fds, first_fd) {
        return e;
    }
    for (k, v) in env {
        set_env(k, v);
    }
    let argv = match c_strings(command.iter().map(|a| std::ffi::OsStr::new(a.as_str()))) {
        Ok(a) => a,
        Err(e) => return e,
    };
    let Some(program) = argv.first() else {
        return io::Error::other("empty command");
    };
    match nix::unistd::execvp(program, &argv) {
        Err(e) => io::Error::from(e),
        Ok(never) => match never {},
    }
}

/// In a forked child: makes `out` its stdout and `err` its stderr.
pub fn redirect_stdio(out: RawFd, err: RawFd) -> io::Result<()> {
    for (from, to) in [(out, 1), (err, 2)] {
        // SAFETY: dup2 onto 1 and 2 of this child's own table; the copies
        // are created without close-on-exec, as stdio must be.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Ends a forked child at once, without running the parent's exit code
/// (atexit handlers, stdio flushes) copied into it.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and ends the process immediately.
    unsafe { libc::_exit(code) }
}

/// Runs the rest of this process as `user` (`uid`, `gid`): supplementary
/// groups, then the group, then the user, and checks that root cannot be
/// regained.
pub fn drop_privileges(user: &str, uid: u32, gid: u32) -> io::Result<()> {
    use nix::unistd::{Gid, Uid};
    let uid = Uid::from_raw(uid);
    let gid = Gid::from_raw(gid);
    if nix::unistd::geteuid() == uid && nix::unistd::getegid() == gid {
        return Ok(());
    }
    let user = std::ffi::CString::new(user.as_bytes())
        .map_err(|_| io::Error::other("user name contains a NUL byte"))?;
    nix::unistd::initgroups(&user, gid).map_err(io::Error::from)?;
    nix::unistd::setgid(gid).map_err(io::Error::from)?;
    nix::unistd::setuid(uid).map_err(io::Error::from)?;
    if nix::unistd::getuid() != uid
        || nix::unistd::geteuid() != uid
        || nix::unistd::getgid() != gid
        || (!uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok())
    {
        return Err(io::Error::other("privileges were not dropped completely"));
    }
    Ok(())
}

/// Lets another runnable process (a worker sharing this CPU) run now.
pub fn yield_cpu() {
    // SAFETY: sched_yield takes no arguments and cannot fail on Linux.
    unsafe {
        libc::sched_yield();
    }
}

/// Whether `user` (`uid`, `gid`, with its supplementary groups) may list
/// the directory `path` (read and search it, and search every directory on
/// the way), asked in a short-lived child that drops to that user: the
/// kernel's own answer, ACLs included. Gives up after `timeout`.
///
/// Called from single-threaded processes only (`rsvisor check`, the
/// master), like [`fork`].
pub fn can_list_as(
    path: &std::path::Path,
    user: &str,
    uid: u32,
    gid: u32,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mask = block_all_signals()?;
    let forked = fork();
    if !matches!(forked, Ok(Fork::Child)) {
        set_signal_mask(&mask)?;
    }
    match forked? {
        Fork::Child => {
            let ok = drop_privileges(user, uid, gid).is_ok()
                && nix::unistd::access(
                    path,
                    nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK,
                )
                .is_ok();
            exit_child(if ok { 0 } else { 1 })
        }
        Fork::Parent(pid) => {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code == 0),
                    Ok(WaitStatus::Signaled(..)) => return Ok(false),
                    Ok(_) => {}
                    Err(e) => return Err(io::Error::from(e)),
                }
                if std::time::Instant::now() >= deadline {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the permission check did not finish in time",
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}
