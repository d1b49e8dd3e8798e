//! Reading the files a configuration names (the config itself, TLS
//! certificates, keys and CAs) without letting them stall or bloat the
//! master: each must be a regular file, is opened without blocking (a FIFO
//! would otherwise hang `open` until someone writes to it) and read only
//! up to a documented size (`/dev/zero` or a huge file would otherwise be
//! read whole, in the master, during a reload).

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Largest PEM file (certificate chain, key, client CA bundle) read.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The whole of `path`, if it is a regular file of at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = f.metadata()?;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {what}; a regular file is needed"),
        ));
    }
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is larger than {} KiB, the limit for this file", cap / 1024),
        )
    };
    if meta.len() > cap {
        return Err(too_big());
    }
    // The file may grow between the check and the read: never read more.
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.by_ref().take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_big());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.pem");
        std::fs::write(&ok, b"hello").unwrap();
        assert_eq!(read_capped(&ok, 5).unwrap(), b"hello");
        assert!(read_capped(&ok, 4)
            .unwrap_err()
            .to_string()
            .contains("larger"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Returns at once (no writer needed) and refuses it.
        assert!(read_capped(&fifo, 5)
            .unwrap_err()
            .to_string()
            .contains("FIFO"));
        let zero = read_capped(Path::new("/dev/zero"), MAX_PEM_BYTES).unwrap_err();
        assert!(zero.to_string().contains("character device"), "{zero}");
        let d = read_capped(dir.path(), 5).unwrap_err();
        assert!(d.to_string().contains("directory"), "{d}");
    }
}
