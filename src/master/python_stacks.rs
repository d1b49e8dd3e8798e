//! Python stacks of an `app.command` worker, for its hang forensics and
//! `rsvisor dump`. Two ways, the first that works wins:
//!
//! - **py-spy**: `py-spy dump --pid PID --subprocesses`, when py-spy is
//!   installed beside the program of `app.command` (where `pip install
//!   py-spy` in the app's virtual environment puts it) or on `PATH`. It
//!   reads every thread of every Python process of the worker from the
//!   outside, so it also works where the app replaced the `SIGABRT` handler
//!   (gunicorn's workers do) and for `rsvisor dump` of a worker that goes on
//!   serving. It needs ptrace permission: rsvisor running as root, or
//!   `CAP_SYS_PTRACE`, or `kernel.yama.ptrace_scope = 0`.
//! - **faulthandler**: rsvisor starts app processes with
//!   `PYTHONFAULTHANDLER=1` (unless the environment or `app.env` sets it), so
//!   the `SIGABRT` that ends a hung worker (sent to its whole process group)
//!   makes each Python process print every thread's traceback on stderr.
//!   What the worker writes between that signal and its exit is collected
//!   into the forensics event instead of being logged line by line.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;

use crate::os::{self, Fork};
use crate::proto::control::ThreadDump;

/// Longest `py-spy dump` may take before it is killed (it usually needs
/// tens of milliseconds; a hung worker's abort waits for it).
pub const PY_SPY_TIMEOUT: Duration = Duration::from_secs(5);
/// The variable that turns Python's faulthandler on.
pub const FAULTHANDLER_ENV: &str = "PYTHONFAULTHANDLER";
/// Most text of Python stacks kept for one report.
pub const MAX_STACK_TEXT: usize = 256 * 1024;

/// How a report's stacks were obtained (`Forensics::stacks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// rsvisor's own dump signal handler (forked workers).
    SignalHandler,
    PySpy,
    Faulthandler,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::SignalHandler => "rsvisor dump signal",
            Method::PySpy => "py-spy dump",
            Method::Faulthandler => "Python faulthandler (SIGABRT)",
        }
    }
}

/// Where py-spy is for `command`: beside its program (as invoked, not the
/// symlink's target: a virtual environment's `bin/`), else on `path` (the
/// app's `PATH` if `app.env` sets one, else the master's).
pub fn find_py_spy(
    command: &[String],
    cwd: Option<&Path>,
    path: Option<&OsStr>,
) -> Option<PathBuf> {
    let path: Option<OsString> = path
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"));
    let program = command.first()?;
    let resolved = if program.contains('/') {
        let p = PathBuf::from(program);
        match cwd {
            Some(dir) if p.is_relative() => Some(dir.join(p)),
            _ => Some(p),
        }
    } else {
        search(program, path.as_deref())
    };
    resolved
        .as_deref()
        .and_then(Path::parent)
        .map(|dir| dir.join("py-spy"))
        .filter(|p| executable(p))
        .or_else(|| search("py-spy", path.as_deref()))
}

fn search(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts `py-spy dump` on `pid` and the processes it started; its output
/// (and errors) go to the returned memfd. Reaped by the master's reap step
/// like its other helpers.
pub fn spawn_py_spy(py_spy: &Path, pid: i32) -> io::Result<(Pid, File)> {
    let out = os::memfd("rsvisor-py-spy")?;
    let command = [
        py_spy.display().to_string(),
        "dump".into(),
        "--pid".into(),
        pid.to_string(),
        "--subprocesses".into(),
    ];
    let mask = os::block_all_signals()?;
    let forked = os::fork();
    if !matches!(forked, Ok(Fork::Child)) {
        os::set_signal_mask(&mask)?;
    }
    match forked? {
        Fork::Parent(helper) => Ok((helper, out)),
        Fork::Child => {
            // The master's handlers would write to its self-pipe.
            let fd = out.as_raw_fd();
            let ready = os::default_signal_dispositions()
                .and_then(|_| os::unblock_all_signals())
                .and_then(|_| os::redirect_stdio(fd, fd))
                .and_then(|_| os::close_fds_except(&[]));
            if ready.is_ok() {
                let e = os::exec_program(&command, &[], 3, &[]);
                eprintln!("rsvisor: cannot run {}: {e}", command[0]);
            }
            os::exit_child(127)
        }
    }
}

/// What the helper wrote, at most [`MAX_STACK_TEXT`].
pub fn read_output(mut out: File) -> String {
    let mut text = String::new();
    let _ = out.rewind().and_then(|_| {
        (&mut out)
            .take(MAX_STACK_TEXT as u64)
            .read_to_string(&mut text)
    });
    text
}

/// `py-spy dump` output: `Thread TID (STATE): "NAME"` then one indented
/// `function (file:line)` per frame, innermost first; with
/// `--subprocesses`, a `Process PID: COMMAND` line before each process.
pub fn parse_py_spy(text: &str) -> Vec<ThreadDump> {
    let mut out: Vec<ThreadDump> = Vec::new();
    let mut process = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Process ") {
            process = rest
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
        } else if let Some(rest) = line.strip_prefix("Thread ") {
            let (id, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let tid = id.parse().unwrap_or(0);
            let state = rest
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map_or("", |(s, _)| s);
            let name = rest
                .split_once('"')
                .and_then(|(_, r)| r.rsplit_once('"'))
                .map_or("", |(n, _)| n);
            out.push(ThreadDump {
                tid,
                name: format!("{name} ({state}, process {process})"),
                heartbeat: false,
                frames: Vec::new(),
            });
        } else if let (Some(frame), Some(t)) = (line.strip_prefix("    "), out.last_mut()) {
            if !frame.starts_with(' ') {
                t.frames.push(frame.trim_end().to_string());
            }
        }
    }
    out
}

/// Python's faulthandler output: `Current thread 0x… (most recent call
/// first):` or `Thread 0x… (…):`, then `  File "PATH", line N in FUNCTION`
/// per frame, innermost first. Frames are written as py-spy writes them,
/// `FUNCTION (PATH:N)`.
pub fn parse_faulthandler(lines: &[String]) -> Vec<ThreadDump> {
    const HEADER_END: &str = " (most recent call first):";
    let mut out: Vec<ThreadDump> = Vec::new();
    for line in lines {
        if let Some(name) = line.strip_suffix(HEADER_END) {
            out.push(ThreadDump {
                tid: 0,
                name: name.trim().to_string(),
                heartbeat: false,
                frames: Vec::new(),
            });
        } else if let (Some(frame), Some(t)) = (line.strip_prefix("  "), out.last_mut()) {
            t.frames.push(faulthandler_frame(frame.trim()));
        }
    }
    out
}

fn faulthandler_frame(frame: &str) -> String {
    let parsed = frame
        .strip_prefix("File \"")
        .and_then(|r| r.rsplit_once("\", line "))
        .and_then(|(file, r)| {
            let (line, function) = r.split_once(" in ")?;
            Some(format!("{function} ({file}:{line})"))
        });
    parsed.unwrap_or_else(|| frame.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_spy_output_becomes_threads_of_frames() {
        let text = "Process 5359: /venv/bin/python3 /venv/bin/uvicorn app:app\n\
                    Python v3.11.7 (/usr/bin/python3.11)\n\
                    \n\
                    Thread 5359 (idle): \"MainThread\"\n\
                    \x20   stuck_in_handler (app.py:3)\n\
                    \x20   app (app.py:7)\n\
                    \n\
                    Process 5361: gunicorn: worker [app]\n\
                    Thread 5361 (active): \"MainThread\"\n\
                    \x20   handle (wsgi.py:9)\n";
        let threads = parse_py_spy(text);
        assert_eq!(threads.len(), 2);
        assert_eq!(threads[0].tid, 5359);
        assert_eq!(threads[0].name, "MainThread (idle, process 5359)");
        assert_eq!(
            threads[0].frames,
            vec!["stuck_in_handler (app.py:3)", "app (app.py:7)"]
        );
        assert_eq!(threads[1].name, "MainThread (active, process 5361)");
        assert_eq!(threads[1].frames, vec!["handle (wsgi.py:9)"]);
        assert!(parse_py_spy("Error: Permission Denied (os error 13)\n").is_empty());
    }

    #[test]
    fn faulthandler_output_becomes_threads_of_frames() {
        let lines: Vec<String> = [
            "Fatal Python error: Aborted",
            "",
            "Thread 0x00007f0000000700 (most recent call first):",
            "  File \"/usr/lib/python3.11/threading.py\", line 320 in wait",
            "",
            "Current thread 0x00007ff67ffc9b80 (most recent call first):",
            "  File \"/tmp/app.py\", line 3 in stuck_in_handler",
            "  File \"/tmp/app.py\", line 7 in app",
            "",
            "Extension modules: yaml._yaml (total: 1)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let threads = parse_faulthandler(&lines);
        assert_eq!(threads.len(), 2);
        assert_eq!(
            threads[0].frames,
            vec!["wait (/usr/lib/python3.11/threading.py:320)"]
        );
        assert_eq!(threads[1].name, "Current thread 0x00007ff67ffc9b80");
        assert_eq!(
            threads[1].frames,
            vec!["stuck_in_handler (/tmp/app.py:3)", "app (/tmp/app.py:7)"]
        );
    }

    #[test]
    fn py_spy_is_found_beside_the_program_then_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv/bin");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&venv).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let make = |p: &Path| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        make(&venv.join("uvicorn"));
        let uvicorn = [venv.join("uvicorn").display().to_string()];
        let path = std::env::join_paths([&elsewhere]).unwrap();
        assert_eq!(find_py_spy(&uvicorn, None, Some(&path)), None);
        make(&elsewhere.join("py-spy"));
        assert_eq!(
            find_py_spy(&uvicorn, None, Some(&path)),
            Some(elsewhere.join("py-spy"))
        );
        make(&venv.join("py-spy"));
        assert_eq!(
            find_py_spy(&uvicorn, None, Some(&path)),
            Some(venv.join("py-spy"))
        );
        // A bare program name is looked up on the path first.
        let path = std::env::join_paths([&venv]).unwrap();
        assert_eq!(
            find_py_spy(&["uvicorn".into()], None, Some(&path)),
            Some(venv.join("py-spy"))
        );
        // Relative to app.cwd.
        assert_eq!(
            find_py_spy(
                &["venv/bin/uvicorn".into()],
                Some(dir.path()),
                Some(OsStr::new(""))
            ),
            Some(dir.path().join("venv/bin/py-spy"))
        );
    }
}
