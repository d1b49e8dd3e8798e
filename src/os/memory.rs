//! The allocator's tuning and giving memory back to the kernel.

use std::io;

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
        assert!(crate::os::monotonic_ms() > 0);
    }
}
