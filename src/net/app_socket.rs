//! Proxy mode's Unix sockets, one per app process: where each lives, so
//! that the master (which starts the process with the path in its command)
//! and the front workers (which connect to it) agree without telling each
//! other anything but the slot and generation in the scoreboard.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The placeholder in `app.command` replaced by the process's socket path.
pub const SOCKET_PLACEHOLDER: &str = "{socket}";
/// The placeholder replaced by the first inherited descriptor (direct mode).
pub const FD_PLACEHOLDER: &str = "{fd}";
/// Longest path a Unix socket address holds (`sun_path` is 108 bytes,
/// with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The private directory of one master's app sockets under `base`.
pub fn run_dir(base: &Path, master_pid: u32) -> PathBuf {
    base.join(format!("rsvisor-{master_pid}"))
}

/// The socket of the app process in `slot` of `generation`.
pub fn socket_path(run_dir: &Path, slot: usize, generation: u32) -> PathBuf {
    run_dir.join(format!("app-{slot}-{generation}.sock"))
}

/// The longest socket path `base` can lead to (largest pid, slot and
/// generation), for `check`.
pub fn longest_path(base: &Path) -> usize {
    let dir = run_dir(base, 4_194_304);
    socket_path(&dir, crate::shm::scoreboard::SLOT_CAPACITY, u32::MAX)
        .as_os_str()
        .len()
}

/// The base directory: `app.socket_dir`, else the system's temporary
/// directory.
pub fn base_dir(configured: Option<&Path>) -> PathBuf {
    configured.map_or_else(std::env::temp_dir, Path::to_path_buf)
}

/// The private directory of the app sockets, created by the master
/// (mode 0700, owned by the workers' user) and removed when it is dropped
/// (the master exits).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates `run_dir(base, pid)` of this process. A directory of that
    /// name left by a master that had the same pid (and died) is removed
    /// first, if it is ours; anything else there (another user's
    /// directory, a symlink) is refused.
    pub fn create(base: &Path, owner: Option<(u32, u32)>) -> io::Result<RunDir> {
        let path = run_dir(base, std::process::id());
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            let ours = meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw();
            if !ours {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a directory of this user",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(RunDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_after_master_slot_and_generation() {
        let dir = run_dir(Path::new("/run/app"), 42);
        assert_eq!(dir, Path::new("/run/app/rsvisor-42"));
        assert_eq!(
            socket_path(&dir, 3, 7),
            Path::new("/run/app/rsvisor-42/app-3-7.sock")
        );
        assert!(longest_path(Path::new("/tmp")) < MAX_SOCKET_PATH);
        assert!(longest_path(&Path::new("/x").join("y".repeat(100))) > MAX_SOCKET_PATH);
    }

    #[test]
    fn the_run_dir_is_private_replaces_a_stale_one_and_goes_away() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let d = RunDir::create(base.path(), None).unwrap();
        let path = d.path().to_path_buf();
        std::fs::write(path.join("app-0-1.sock"), "").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::mem::forget(d);
        // A master with the same pid finds it: it is replaced, empty.
        let d = RunDir::create(base.path(), None).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        drop(d);
        assert!(!path.exists());
        // A symlink in its place is refused.
        std::os::unix::fs::symlink(base.path(), &path).unwrap();
        assert!(RunDir::create(base.path(), None).is_err());
    }
}
