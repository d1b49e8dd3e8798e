//! `serve --reload`: a helper process that watches the app's files and
//! asks the master for the normal health-gated reload (`HUP`) when one
//! changes, or for a binary upgrade (`USR2`) when the program's own
//! executable was rebuilt. Code that fails to start therefore never
//! replaces the code that serves; the error is in the log.
//!
//! It is a process of its own, forked before the master starts, because
//! the watcher (notify's inotify backend) runs threads and the master
//! never does. It dies with the master (`PR_SET_PDEATHSIG`).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use notify::event::{EventKind, MetadataKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::os::{self, Fork};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Notify(#[from] notify::Error),
}

/// Changes closer together than this are one reload (an editor's
/// write-rename-chmod, a `git checkout` of many files).
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(250);

/// A stream of changes still reloads this long after its first one.
pub const WATCH_MAX_DELAY: Duration = Duration::from_secs(2);

/// Directories whose changes never mean new code: version control,
/// caches, virtual environments, build output.
const IGNORED_DIRS: [&str; 9] = [
    ".git",
    ".hg",
    "__pycache__",
    ".venv",
    "venv",
    "node_modules",
    "target",
    ".mypy_cache",
    ".pytest_cache",
];

/// File endings of compiled, swap, backup and log files.
const IGNORED_SUFFIXES: [&str; 8] = [".pyc", ".pyo", ".swp", ".swx", "~", ".tmp", ".log", ".sock"];

/// What the helper watches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchPlan {
    /// Watched with everything below them.
    pub dirs: Vec<PathBuf>,
    /// Single files (the configuration): a change reloads.
    pub files: Vec<PathBuf>,
    /// The program's own executable: a change re-executes it (`USR2`).
    pub exe: Option<PathBuf>,
    /// Files rsvisor itself writes inside watched directories (control
    /// socket, pidfile, access log), which must not trigger a reload.
    pub ignore: Vec<PathBuf>,
}

/// What a batch of changed paths asks the master for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    Reload(PathBuf),
    Upgrade(PathBuf),
}

impl WatchPlan {
    /// The defaults: for a command, the directory it runs in; the static
    /// directory; the configuration file; for a program that is its own
    /// app, its executable. `dirs` given on the command line replace the
    /// directories.
    pub fn for_config(config: &Config, file: Option<&Path>, dirs: &[PathBuf]) -> WatchPlan {
        let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let mut plan = WatchPlan::default();
        if dirs.is_empty() {
            if !config.app.command.is_empty() {
                let cwd = config
                    .app
                    .cwd
                    .clone()
                    .or_else(|| std::env::current_dir().ok());
                plan.dirs.extend(cwd);
            }
            plan.dirs.extend(config.app.static_dir.clone());
        } else {
            plan.dirs.extend(dirs.iter().cloned());
        }
        plan.dirs = plan.dirs.iter().map(|d| absolute(d)).collect();
        plan.files.extend(file.map(absolute));
        if config.app.command.is_empty() {
            plan.exe = std::env::current_exe().ok().map(|e| absolute(&e));
        }
        let s = &config.server;
        let own = [s.control_socket.clone(), s.pidfile.clone()]
            .into_iter()
            .chain([config.log.access_log.as_ref().map(PathBuf::from)]);
        plan.ignore = own.flatten().map(|p| absolute(&p)).collect();
        plan
    }

    /// Whether a change of `path` means new code or configuration.
    fn matters(&self, path: &Path) -> bool {
        if self.files.iter().any(|f| f == path) {
            return true;
        }
        if self.ignore.iter().any(|f| f == path) {
            return false;
        }
        // A watched directory's own events (its entries changed) come
        // with the entries' paths as well.
        let Some(dir) = self.dirs.iter().find(|d| path.starts_with(d) && path != *d) else {
            return false;
        };
        let below = path.strip_prefix(dir).unwrap_or(path);
        if below
            .components()
            .any(|c| IGNORED_DIRS.iter().any(|d| c.as_os_str() == *d))
        {
            return false;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        !(name.starts_with(".#") || IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)))
    }

    /// A rebuilt executable wins: re-executing it also reloads the rest.
    pub fn judge<'a>(&self, changed: impl IntoIterator<Item = &'a Path>) -> Verdict {
        let mut verdict = Verdict::Nothing;
        for path in changed {
            if self.exe.as_deref() == Some(path) {
                return Verdict::Upgrade(path.to_path_buf());
            }
            if verdict == Verdict::Nothing && self.matters(path) {
                verdict = Verdict::Reload(path.to_path_buf());
            }
        }
        verdict
    }
}

/// Forks the watcher; returns its pid. In the child it never returns.
/// Called after the master installed its signal handlers (a change seen
/// at once must not find `HUP` at its default action, which kills) and
/// with every signal blocked around the fork (the child must not run the
/// master's handlers).
pub fn start(plan: WatchPlan) -> std::io::Result<Pid> {
    let master = nix::unistd::getpid();
    let mask = os::block_all_signals()?;
    match os::fork() {
        Ok(Fork::Child) => {
            let code = match child(master, &plan) {
                Ok(()) => 0,
                Err(e) => {
                    error!("--reload: the file watcher stopped: {e}");
                    1
                }
            };
            os::exit_child(code)
        }
        Ok(Fork::Parent(pid)) => {
            os::set_signal_mask(&mask)?;
            Ok(pid)
        }
        Err(e) => {
            let _ = os::set_signal_mask(&mask);
            Err(e)
        }
    }
}

fn child(master: Pid, plan: &WatchPlan) -> Result<(), WatchError> {
    os::reset_signal_dispositions()?;
    os::unblock_all_signals()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
    // The master may have died before the line above took effect.
    if nix::unistd::getppid() != master {
        return Ok(());
    }
    // Only stdio: the listeners and the master's pipes are not ours.
    os::close_fds_except(&[0, 1, 2])?;
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    for dir in &plan.dirs {
        watcher.watch(dir, RecursiveMode::Recursive)?;
    }
    // A single file is watched through its directory: editors and cargo
    // replace files by renaming, which ends a watch on the file itself.
    for file in plan.files.iter().chain(&plan.exe) {
        if let Some(parent) = file.parent() {
            if !plan.dirs.iter().any(|d| parent.starts_with(d)) {
                watcher.watch(parent, RecursiveMode::NonRecursive)?;
            }
        }
    }
    info!(
        dirs = ?plan.dirs,
        files = ?plan.files,
        exe = ?plan.exe,
        "--reload: watching for changes"
    );
    while let Some(changed) = next_batch(&rx) {
        let (signal, path) = match plan.judge(changed.iter().map(PathBuf::as_path)) {
            Verdict::Nothing => continue,
            Verdict::Reload(p) => (Signal::SIGHUP, p),
            Verdict::Upgrade(p) => (Signal::SIGUSR2, p),
        };
        info!(changed = %path.display(), "--reload: sending {signal} to the master");
        if kill(master, signal).is_err() {
            break;
        }
    }
    Ok(())
}

/// Whether an event changed something. Opens and reads (the master
/// reading its config, Python importing a module) do not.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// The paths of the next burst of changes: from the first change until
/// [`WATCH_DEBOUNCE`] passes without one (or [`WATCH_MAX_DELAY`] after
/// the first). `None` when the watcher is gone.
fn next_batch(rx: &mpsc::Receiver<notify::Result<notify::Event>>) -> Option<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let mut first = None;
    loop {
        let event = match first {
            None => rx.recv().ok()?,
            Some(at) => {
                let left = WATCH_MAX_DELAY.saturating_sub(Instant::now().duration_since(at));
                match rx.recv_timeout(WATCH_DEBOUNCE.min(left)) {
                    Ok(e) => e,
                    Err(mpsc::RecvTimeoutError::Timeout) => return Some(changed),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                }
            }
        };
        match event {
            Ok(e) if is_change(&e.kind) => {
                first.get_or_insert_with(Instant::now);
                changed.extend(e.paths);
            }
            Ok(_) => {}
            Err(e) => warn!("--reload: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> WatchPlan {
        WatchPlan {
            dirs: vec!["/srv/app".into(), "/srv/www".into()],
            files: vec!["/etc/rsvisor/app.toml".into()],
            exe: Some("/srv/bin/myapp".into()),
            ignore: vec!["/srv/app/rsvisor.sock".into()],
        }
    }

    fn judge(paths: &[&str]) -> Verdict {
        plan().judge(paths.iter().map(Path::new))
    }

    #[test]
    fn code_static_files_and_the_config_reload() {
        for p in [
            "/srv/app/main.py",
            "/srv/app/pkg/views.py",
            "/srv/www/index.html",
            "/etc/rsvisor/app.toml",
        ] {
            assert_eq!(judge(&[p]), Verdict::Reload(p.into()), "{p}");
        }
    }

    #[test]
    fn caches_swap_files_and_rsvisors_own_files_do_not() {
        for p in [
            "/srv/app/__pycache__/main.cpython-311.pyc",
            "/srv/app/.git/index",
            "/srv/app/.venv/lib/x.py",
            "/srv/app/.main.py.swp",
            "/srv/app/main.py~",
            "/srv/app/.#main.py",
            "/srv/app/rsvisor.sock",
            "/srv/app/access.log",
            "/etc/rsvisor/other.toml",
            "/srv/bin/other",
            "/srv/app",
        ] {
            assert_eq!(judge(&[p]), Verdict::Nothing, "{p}");
        }
    }

    #[test]
    fn a_rebuilt_executable_is_re_executed_whatever_else_changed() {
        assert_eq!(
            judge(&["/srv/app/main.py", "/srv/bin/myapp"]),
            Verdict::Upgrade("/srv/bin/myapp".into())
        );
    }
}
