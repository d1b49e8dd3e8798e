//! `server.pidfile`: written after the sockets are bound, removed on exit
//! if it still names this process.

use std::io;
use std::path::{Path, PathBuf};

pub struct Pidfile {
    path: PathBuf,
    pid: u32,
}

impl Pidfile {
    pub fn create(path: &Path) -> io::Result<Pidfile> {
        let pid = std::process::id();
        // Write to a temporary name and rename: readers never see a
        // half-written file.
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{pid}\n"))?;
        std::fs::rename(&tmp, path)?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl Pidfile {
    /// Writes our pid again (after a failed upgrade overwrote it).
    pub fn rewrite(&self) -> io::Result<()> {
        let tmp = self.path.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", self.pid))?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        // During a binary upgrade the new master may own the file by now.
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            if text.trim() == self.pid.to_string() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
