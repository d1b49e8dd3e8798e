//! The only home of `unsafe` in rsvisor: fork, signal dispositions, shared
//! memory, raw descriptors. Each block says why it is sound.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

/// What `fork` returned, seen from the process that continues.
pub enum Fork {
    Parent(Pid),
    Child,
}

/// Forks the calling process.
///
/// The master calls this from its single thread only, so the child starts
/// with a consistent heap and no lock held by a thread that does not exist
/// in the child.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the master never starts threads (no tokio, no helper threads;
    // see DESIGN.md "Known pitfalls"), so the child is a full copy of a
    // single-threaded process and may allocate and run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Fork::Parent(child)),
        Ok(nix::unistd::ForkResult::Child) => Ok(Fork::Child),
        Err(e) => Err(io::Error::from(e)),
    }
}

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

/// Puts every other catchable signal back to its default action and
/// unblocks all signals: a worker must not run the master's handlers, which
/// write to the master's pipe.
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
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(io::Error::from)
}

/// Signals queued by [`queue_signal`], indexed by number.
static PENDING: [AtomicBool; 65] = [const { AtomicBool::new(false) }; 65];
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
        if let Some(flag) = PENDING.get(sig as usize) {
            flag.store(true, Ordering::SeqCst);
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

/// Takes a queued signal: true once per delivery batch.
pub fn take_pending(sig: Signal) -> bool {
    PENDING
        .get(sig as usize)
        .is_some_and(|f| f.swap(false, Ordering::SeqCst))
}

/// Marker for types that may live in memory shared between processes:
/// only atomics and plain integers, valid when all bytes are zero, and no
/// pointers (a pointer means nothing in another address space).
///
/// # Safety
/// Implementors must be `repr(C)`, made only of atomics / integers / arrays
/// of them, and valid when zeroed.
pub unsafe trait SharedPlain: Sync {}

// SAFETY: the scoreboard is `repr(C)` and made only of atomic integers and
// arrays of them; all-zero is "free slot, no counts", a valid value.
unsafe impl SharedPlain for crate::scoreboard::Board {}

/// Maps one zeroed `T` into `MAP_SHARED | MAP_ANONYMOUS` memory that stays
/// shared with every child forked afterwards. It is never unmapped: it
/// lives as long as the process.
pub fn shared_zeroed<T: SharedPlain>() -> io::Result<&'static T> {
    let len = std::num::NonZeroUsize::new(std::mem::size_of::<T>().max(1))
        .ok_or_else(|| io::Error::other("zero-sized shared region"))?;
    assert!(
        std::mem::align_of::<T>() <= 4096,
        "mmap returns page-aligned memory"
    );
    // SAFETY: an anonymous mapping has no file or address preconditions; we
    // ask the kernel to choose the address and check the result.
    let ptr: NonNull<std::ffi::c_void> = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
        )
    }
    .map_err(io::Error::from)?;
    // SAFETY: the mapping is `size_of::<T>()` bytes, page-aligned (so
    // aligned for T), zero-filled by the kernel (a valid T by SharedPlain),
    // and never unmapped, so a shared 'static reference is valid; T is Sync
    // and only touched through atomics.
    Ok(unsafe { ptr.cast::<T>().as_ref() })
}

/// Closes a descriptor that this process inherited through fork but whose
/// owning object will never be dropped here (the child exits without
/// unwinding the master's state).
pub fn close_inherited(fd: RawFd) {
    // SAFETY: called in a freshly forked child for descriptors the master
    // owns; the child never drops the master's owning objects (it leaves via
    // `process::exit`), so nothing else will close this number again.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

/// Sets an environment variable in a worker before its runtime starts.
pub fn set_env(key: &str, value: &str) {
    // In a freshly forked worker there is exactly one thread, so changing
    // the environment cannot race with a reader.
    std::env::set_var(key, value);
}

/// Current CLOCK_MONOTONIC in milliseconds: comparable across the master
/// and its workers, unlike `Instant`, which cannot be stored in shared memory.
pub fn monotonic_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

pub fn online_cpus() -> Option<usize> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map(|n| n as usize)
}

pub fn affinity_cpus() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok()?;
    Some(
        (0..nix::sched::CpuSet::count())
            .filter(|i| set.is_set(*i).unwrap_or(false))
            .count(),
    )
}

/// Current CLOCK_MONOTONIC in microseconds (systemd's MONOTONIC_USEC).
pub fn monotonic_us() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}

/// Removes an environment variable. Called only while the process has a
/// single thread (the master, or a worker before its runtime exists).
pub fn unset_env(key: &str) {
    std::env::remove_var(key);
}

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

/// In a freshly forked child of the master: places `fds` at descriptors
/// 3, 4, … (the socket-activation layout), sets `env`, and executes `exe`
/// with `args`. Returns only if that failed.
pub fn exec_with_fds(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    fds: &[RawFd],
    env: &[(String, String)],
) -> io::Error {
    use std::os::unix::ffi::OsStrExt;
    // First copy every descriptor above the target range, so that placing
    // one cannot overwrite another that is still to be placed.
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor of this process
        // creates a new descriptor; it touches no memory.
        let new = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 1024) };
        if new < 0 {
            return io::Error::last_os_error();
        }
        high.push(new);
    }
    for (i, fd) in high.iter().enumerate() {
        let target = crate::systemd::LISTEN_FDS_START + i as RawFd;
        // SAFETY: dup2 onto a number in this child's own table; whatever
        // the master had there is not needed by the program we exec. The
        // copy is created without close-on-exec, as the protocol requires.
        if unsafe { libc::dup2(*fd, target) } < 0 {
            return io::Error::last_os_error();
        }
    }
    for (k, v) in env {
        set_env(k, v);
    }
    let cstr = |s: &std::ffi::OsStr| std::ffi::CString::new(s.as_bytes());
    let Ok(path) = cstr(exe.as_os_str()) else {
        return io::Error::other("executable path contains a NUL byte");
    };
    let Ok(argv) = args.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>() else {
        return io::Error::other("an argument contains a NUL byte");
    };
    match nix::unistd::execv(&path, &argv) {
        Err(e) => io::Error::from(e),
        Ok(never) => match never {},
    }
}

/// Ends a forked child at once, without running the parent's exit code
/// (atexit handlers, stdio flushes) copied into it.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and ends the process immediately.
    unsafe { libc::_exit(code) }
}

/// Runs the rest of this worker as `run_as`: supplementary groups, then
/// the group, then the user, and checks that root cannot be regained.
pub fn drop_privileges(run_as: &crate::config::RunAs) -> io::Result<()> {
    use nix::unistd::{Gid, Uid};
    let uid = Uid::from_raw(run_as.uid);
    let gid = Gid::from_raw(run_as.gid);
    if nix::unistd::geteuid() == uid && nix::unistd::getegid() == gid {
        return Ok(());
    }
    let user = std::ffi::CString::new(run_as.user.as_bytes())
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

/// Lets another runnable process (a worker sharing this CPU) run now.
pub fn yield_cpu() {
    // SAFETY: sched_yield takes no arguments and cannot fail on Linux.
    unsafe {
        libc::sched_yield();
    }
}
