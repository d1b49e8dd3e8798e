//! The only home of `unsafe` in rsvisor: fork, signal dispositions, shared
//! memory, raw descriptors. Each block says why it is sound.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

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

/// Types that may live in memory shared between processes: atomics and
/// arrays of them. They hold no pointers (a pointer means nothing in
/// another address space) and are valid when all bytes are zero.
///
/// Structs get it from [`shared_plain!`], which checks every field.
///
/// # Safety
/// Implementors must hold no pointers and be valid when zeroed.
pub unsafe trait SharedPlain: Sync {}

// SAFETY: atomics of integers hold no pointers, and zero is a valid value
// of each.
unsafe impl SharedPlain for AtomicU64 {}
// SAFETY: as above.
unsafe impl SharedPlain for AtomicU32 {}
// SAFETY: as above.
unsafe impl SharedPlain for AtomicBool {}
// SAFETY: an array of such values is such a value.
unsafe impl<T: SharedPlain, const N: usize> SharedPlain for [T; N] {}

/// Up to 8 bytes as one word (little-endian, zero-padded): how byte strings
/// are kept in [`SharedPlain`] atomics, so that memory holds the bytes in
/// order.
pub fn pack_word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    word[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(word)
}

/// The first `len` bytes of words made by [`pack_word`].
pub fn unpack_words(words: &[u64], len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.truncate(len);
    bytes
}

/// Declares a struct whose fields are all [`SharedPlain`] and makes it
/// `SharedPlain` too, so it can live in [`shared_zeroed`] memory. The
/// field check happens at compile time: a field of any other type (a
/// pointer, a `String`) does not compile.
macro_rules! shared_plain {
    ($(#[$m:meta])* $vis:vis struct $name:ident {
        $($(#[$fm:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$m])*
        $vis struct $name {
            $($(#[$fm])* $fvis $field: $ty),*
        }

        // SAFETY: every field is SharedPlain (the function below does not
        // compile otherwise), so the struct holds no pointers and is valid
        // when zeroed.
        #[allow(unsafe_code)]
        unsafe impl $crate::sys::SharedPlain for $name {}

        const _: () = {
            fn assert_shared_plain<T: $crate::sys::SharedPlain>() {}
            #[allow(dead_code)]
            fn every_field_is_shared_plain() {
                $(assert_shared_plain::<$ty>();)*
            }
        };
    };
}
pub(crate) use shared_plain;

/// Maps one zeroed `T` into `MAP_SHARED | MAP_ANONYMOUS` memory that stays
/// shared with every child forked afterwards. It is never unmapped: it
/// lives as long as the process.
pub fn shared_zeroed<T: SharedPlain>() -> io::Result<&'static T> {
    let len = std::num::NonZeroUsize::new(std::mem::size_of::<T>().max(1))
        .ok_or_else(|| io::Error::other("zero-sized shared region"))?;
    if std::mem::align_of::<T>() > 4096 {
        return Err(io::Error::other("type needs more than page alignment"));
    }
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
    // aligned for T, checked above), zero-filled by the kernel (a valid T by
    // SharedPlain), and never unmapped, so a shared 'static reference is
    // valid; T is Sync and only touched through atomics.
    Ok(unsafe { ptr.cast::<T>().as_ref() })
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

/// Largest allocation glibc's malloc serves from its heap in a worker;
/// bigger ones get their own mapping, returned to the system when freed.
/// (glibc would raise this threshold by itself after the first big free,
/// after which a burst of big bodies stays resident for good.)
pub const MALLOC_MMAP_THRESHOLD: usize = 128 * 1024;

/// In a worker: fixes glibc malloc's mmap threshold (see
/// [`MALLOC_MMAP_THRESHOLD`]). Harmless when the program uses another
/// global allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    // SAFETY: mallopt only changes glibc malloc's parameters; it is called
    // before the worker starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD as libc::c_int);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// Gives memory that malloc holds free back to the system (after a burst
/// of connections closed, say), so that RSS follows what is really used.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes glibc's own locks and only returns free
    // pages to the kernel; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

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

/// The real-time signal the master sends to each thread of a worker to
/// have it record its stack ([`install_dump_handler`]). Real-time signals
/// queue and are unused by tokio and std; glibc keeps the first few above
/// `SIGRTMIN` for itself, hence the offset.
pub fn dump_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

/// What the dump handler calls with the interrupted thread's id and a
/// walker that hands it each return address, innermost first, until it
/// returns false. It must be async-signal-safe: atomics only.
pub type StackRecorder = fn(u32, &mut StackWalk<'_>);

/// Walks the current stack, giving each address to its argument until
/// that returns false.
pub type StackWalk<'a> = dyn FnMut(&mut dyn FnMut(u64) -> bool) + 'a;

/// Set once in a worker, before its threads start.
static RECORDER: std::sync::OnceLock<StackRecorder> = std::sync::OnceLock::new();

/// Hands the interrupted thread's stack to the worker's recorder.
extern "C" fn on_dump_signal(_sig: libc::c_int) {
    // SAFETY: errno is saved and restored around the handler.
    // `OnceLock::get` is an atomic load. `gettid` is async-signal-safe.
    // The recorder touches atomics only (see `StackRecorder`).
    // `trace_unsynchronized` walks the stack with libgcc's
    // `_Unwind_Backtrace`, which allocates nothing and, with glibc ≥ 2.35
    // (`_dl_find_object`), takes no lock; where an older libc makes it wait
    // for the loader lock, the master stops waiting after its dump timeout
    // and reports the dump as not obtained. Calls are not synchronized
    // with each other on purpose: each thread walks its own stack.
    unsafe {
        let errno = *libc::__errno_location();
        if let Some(record) = RECORDER.get() {
            let tid = libc::gettid() as u32;
            record(tid, &mut |push| {
                backtrace::trace_unsynchronized(|frame| push(frame.ip() as usize as u64));
            });
        }
        *libc::__errno_location() = errno;
    }
}

/// In a worker, before its threads start: installs the dump handler
/// (calling `recorder`) and unblocks the dump signal, so every thread
/// created later (tokio's included) inherits a mask that lets it answer.
pub fn install_dump_handler(recorder: StackRecorder) -> io::Result<()> {
    if RECORDER.set(recorder).is_err() {
        return Err(io::Error::other("the dump handler is installed already"));
    }
    let sig = dump_signal();
    // SAFETY: a zeroed `sigaction` is a valid value to fill in; the handler
    // is async-signal-safe (see `on_dump_signal`); the set functions get
    // pointers to live locals.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_dump_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let rc = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// Sends `sig` to one thread of another process.
pub fn tgkill(pid: i32, tid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An anonymous in-memory file (for a helper process's output).
pub fn memfd(name: &str) -> io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(io::Error::from)?;
    Ok(std::fs::File::from(fd))
}

/// Keeps the pages of `value` (shared memory from [`shared_zeroed`]) out of
/// core dumps and out of swap, for secrets that must never reach a disk.
/// Failing to lock (a small `RLIMIT_MEMLOCK`) is reported, and the pages
/// still stay out of core dumps.
pub fn keep_off_disk<T: SharedPlain>(value: &'static T) -> io::Result<()> {
    let ptr = std::ptr::from_ref(value).cast::<libc::c_void>().cast_mut();
    let len = std::mem::size_of::<T>();
    // SAFETY: `value` is a live 'static mapping from `shared_zeroed`, which
    // is page-aligned and at least `len` bytes long; MADV_DONTDUMP only
    // changes how a core dump treats the pages, not their contents.
    let rc = unsafe { libc::madvise(ptr, len, libc::MADV_DONTDUMP) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; mlock only pins the pages in memory.
    let rc = unsafe { libc::mlock(ptr, len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops this process's page mappings of executable code (the binary's and
/// the shared libraries' `r-xp` mappings): the pages stay in the page
/// cache, shared with every other process that maps them, and the ones
/// still used are mapped again at their next use. The master calls this
/// once its fleet is up, so that its RSS (what monitoring and the OOM
/// killer see) holds the code its loop runs, not the code that started it.
/// Returns the bytes of mappings advised.
pub fn drop_code_mappings() -> io::Result<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // offset, device, inode, then the path: only file-backed code.
        let path = fields.nth(3).unwrap_or("");
        if perms != "r-xp" || !path.starts_with('/') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a whole mapping of this process, read and
        // execute only and backed by a file: its pages were never written
        // (no private copies to lose), so MADV_DONTNEED only drops the page
        // table entries and the next access maps the same file pages again.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            advised += end - start;
        }
    }
    Ok(advised)
}

#[cfg(test)]
mod tests {
    fn vm_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    #[test]
    fn dropping_code_mappings_lowers_rss_and_the_code_still_runs() {
        let before = vm_rss_kib();
        let advised = super::drop_code_mappings().expect("/proc/self/maps");
        let after = vm_rss_kib();
        assert!(advised > 0);
        assert!(after < before, "{before} KiB -> {after} KiB");
        // Code mapped again on use: formatting, allocation, a syscall.
        assert_eq!(format!("{:?}", vec![1, 2]), "[1, 2]");
        assert!(super::monotonic_ms() > 0);
    }
}
