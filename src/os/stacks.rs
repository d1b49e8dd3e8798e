//! Stack capture for hang forensics: the dump signal, its handler and
//! `tgkill`.

use std::io;

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
