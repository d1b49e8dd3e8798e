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

/// Drops this process's page mappings of file-backed code and read-only
/// data: the `r-xp` mappings of the binary and the shared libraries, and
/// the `r--p` ones none of whose pages is a private copy (`Anonymous: 0`
/// in smaps; this leaves out the relocated RELRO pages, which exist only
/// in this process). The pages stay in the page cache, shared with every
/// other process that maps them, and the ones still used are mapped again
/// at their next use. The master calls this once its fleet is up and once
/// each reload cycle is over, so that its RSS (what monitoring and the
/// OOM killer see) holds what its loop uses, not what started it.
/// Returns the bytes of mappings advised.
pub fn drop_code_mappings() -> io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut advised = 0;
    let mut candidate: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(range) = mapping_header(line) {
            candidate = range;
            continue;
        }
        let Some(anon) = line.strip_prefix("Anonymous:") else {
            continue;
        };
        let Some((start, end)) = candidate.take() else {
            continue;
        };
        if anon.split_whitespace().next() != Some("0") {
            continue;
        }
        // SAFETY: the range is a whole mapping of this process, not
        // writable and backed by a file, with no private copy of any page
        // (smaps says Anonymous: 0; it cannot gain one, being read-only):
        // MADV_DONTNEED only drops the page table entries, and the next
        // access maps the same file pages again.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            advised += end - start;
        }
    }
    Ok(advised)
}

/// For a mapping's header line of smaps: `Some(Some(range))` when it is a
/// file-backed `r-xp` or `r--p` mapping, `Some(None)` for any other
/// mapping; `None` for the lines that describe a mapping.
fn mapping_header(line: &str) -> Option<Option<(usize, usize)>> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let (Ok(start), Ok(end)) = (
        usize::from_str_radix(start, 16),
        usize::from_str_radix(end, 16),
    ) else {
        return None;
    };
    let perms = fields.next()?;
    // offset, device, inode, then the path.
    let path = fields.nth(3).unwrap_or("");
    let droppable = matches!(perms, "r-xp" | "r--p") && path.starts_with('/');
    Some(droppable.then_some((start, end)))
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
