//! Memory shared between the master and its workers: anonymous shared
//! mappings of plain atomics, kept off disk.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

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
    // Without a `memcpy` call: a request path's words are packed on every
    // request (the in-flight table).
    match <[u8; 8]>::try_from(bytes.get(..8).unwrap_or(bytes)) {
        Ok(word) => u64::from_le_bytes(word),
        Err(_) => bytes.iter().rev().fold(0, |w, &b| w << 8 | u64::from(b)),
    }
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
        unsafe impl $crate::os::SharedPlain for $name {}

        const _: () = {
            fn assert_shared_plain<T: $crate::os::SharedPlain>() {}
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

/// An anonymous in-memory file (for a helper process's output).
pub fn memfd(name: &str) -> io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(io::Error::from)?;
    Ok(std::fs::File::from(fd))
}

/// Keeps the pages of `value` (shared memory from [`shared_zeroed`]) out of
/// core dumps, without making them resident (as locking them would).
pub fn keep_out_of_core_dumps<T: SharedPlain>(value: &'static T) -> io::Result<()> {
    let ptr = std::ptr::from_ref(value).cast::<libc::c_void>().cast_mut();
    let len = std::mem::size_of::<T>();
    // SAFETY: `value` is a live 'static mapping from `shared_zeroed`, which
    // is page-aligned and at least `len` bytes long; MADV_DONTDUMP only
    // changes how a core dump treats the pages, not their contents.
    let rc = unsafe { libc::madvise(ptr, len, libc::MADV_DONTDUMP) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps the pages of `value` (shared memory from [`shared_zeroed`]) out of
/// core dumps and out of swap, for secrets that must never reach a disk.
/// Failing to lock (a small `RLIMIT_MEMLOCK`) is reported, and the pages
/// still stay out of core dumps.
pub fn keep_off_disk<T: SharedPlain>(value: &'static T) -> io::Result<()> {
    keep_out_of_core_dumps(value)?;
    let ptr = std::ptr::from_ref(value).cast::<libc::c_void>().cast_mut();
    let len = std::mem::size_of::<T>();
    // SAFETY: `value` is a live 'static mapping from `shared_zeroed`, which
    // is page-aligned and at least `len` bytes long; mlock only pins the
    // pages in memory.
    let rc = unsafe { libc::mlock(ptr, len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_hold_up_to_eight_bytes_in_order_and_give_them_back() {
        let text = b"/a/path/of/some/length";
        for len in 0..=text.len() {
            let words: Vec<u64> = text[..len].chunks(8).map(pack_word).collect();
            assert_eq!(unpack_words(&words, len), &text[..len]);
        }
        assert_eq!(pack_word(b"GET"), u64::from_le_bytes(*b"GET\0\0\0\0\0"));
        assert_eq!(pack_word(b"0123456789"), u64::from_le_bytes(*b"01234567"));
        assert_eq!(pack_word(b""), 0);
    }
}
