//! Exec mode (`app.command`): a worker is a fork + exec of the app's own
//! server (uvicorn, gunicorn, Node, Go…), given the listening sockets as
//! descriptors 3, 4, … in the socket-activation layout. The master reads
//! its stdout and stderr (non-blocking, bounded) into its own log, and
//! learns that it is ready by the rule of `app.ready`: `READY=1` on the
//! worker's own `NOTIFY_SOCKET` (whose `WATCHDOG=1` pings are then its
//! heartbeat), a log line that matches, or a delay.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::PollFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use super::app_output::{escape_controls, LineBudget, Verdict, OUTPUT_LINES_PER_SEC};
use super::python_stacks::{FAULTHANDLER_ENV, MAX_STACK_TEXT};
use super::traceback::{Grouper, Output};
use crate::config::material::Loaded;
use crate::config::{Config, ReadyRule};
use crate::net::app_probe::{answer_is_ready, Probe, ProbeError, ProbeState, PROBE_RETRY};
use crate::net::app_socket::{FD_PLACEHOLDER, SOCKET_PLACEHOLDER};
use crate::os;
use crate::os::systemd::LISTEN_FDS_START;

/// Read by uvicorn and gunicorn: the peers whose `X-Forwarded-*` headers
/// they believe.
pub const FORWARDED_ALLOW_IPS_ENV: &str = "FORWARDED_ALLOW_IPS";

/// Proxy mode: how often the master tries a booting process's socket.
pub const SOCKET_POLL: Duration = Duration::from_millis(20);

/// Longest line of a worker's output kept whole; longer ones are cut.
pub const OUTPUT_LINE_MAX: usize = 16 * 1024;
/// Most bytes read from one stream in one turn of the master's loop: a
/// chatty worker cannot keep the master from its other work.
pub const OUTPUT_READ_PER_TURN: usize = 64 * 1024;
/// Most notify messages taken from one worker in one turn.
const NOTIFY_PER_TURN: usize = 64;

/// What the master learnt from a worker's output or notify socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEvent {
    Ready,
    /// `WATCHDOG=1`: a heartbeat.
    Beat,
    /// Output lines left out of the log (over its line budget).
    OutputDropped(u64),
}

/// The master's end of one exec worker: its output pipes, its notify
/// socket, and how far its readiness got.
pub struct ExecIo {
    streams: [Option<Stream>; 2],
    notify: Option<UnixDatagram>,
    rule: ReadyRule,
    ready: bool,
    /// It has sent `WATCHDOG=1`: its heartbeat is watched from now on.
    pub watchdog: bool,
    budget: LineBudget,
    /// Proxy mode: its socket, where `GET app.ready_path` must be
    /// answered before it is ready.
    socket: Option<PathBuf>,
    ready_path: String,
    /// How far the proxy-mode probe got.
    probing: Probing,
    /// Ready to serve was seen once (its rule met and, in proxy mode, its
    /// app answered the probe); it stays so.
    serving: bool,
    /// Set while the worker's Python stacks are collected (after the
    /// SIGABRT of a hang): its lines go here instead of the log.
    capture: Option<Captured>,
}

/// Proxy mode: how far a booting process's readiness probe got.
#[derive(Debug)]
enum Probing {
    /// Its socket has not accepted a connection yet.
    Connecting,
    /// `GET app.ready_path` was sent.
    Sent(Probe),
    /// The last probe was refused or not answered below 500 (`last`
    /// says how); the next is sent at `at`.
    Retrying { at: Instant, last: String },
}

/// Sends a probe, or says when to try again; `last` is what the
/// previous probe found (kept while the socket is not listening).
fn start_probe(socket: &Path, ready_path: &str, now: Instant, last: Option<String>) -> Probing {
    match Probe::start(socket, ready_path) {
        Ok(p) => Probing::Sent(p),
        Err(ProbeError::NotListening) => match last {
            Some(last) => Probing::Retrying { at: now, last },
            None => Probing::Connecting,
        },
        Err(e) => Probing::Retrying {
            at: now + PROBE_RETRY,
            last: e.to_string(),
        },
    }
}

/// Output lines kept for a forensics report, at most
/// [`MAX_STACK_TEXT`] bytes.
#[derive(Debug, Default)]
struct Captured {
    lines: Vec<String>,
    bytes: usize,
}

struct Stream {
    name: &'static str,
    fd: OwnedFd,
    buf: Vec<u8>,
    /// The current line was cut at OUTPUT_LINE_MAX; skip to its end.
    cut: bool,
    /// A Python traceback being collected into one event.
    traceback: Grouper,
}

/// Who a line came from, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Label {
    pub slot: usize,
    pub pid: i32,
    pub generation: u32,
}

impl ExecIo {
    /// The descriptors to poll: stdout, stderr (until they close), notify.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut v: Vec<(BorrowedFd<'_>, PollFlags)> = self
            .streams
            .iter()
            .flatten()
            .map(|s| (s.fd.as_fd(), PollFlags::POLLIN))
            .collect();
        if let Some(n) = &self.notify {
            v.push((n.as_fd(), PollFlags::POLLIN));
        }
        v
    }

    /// Reads what `revents` (in [`ExecIo::interest`]'s order) says is
    /// there; logs output lines; returns what happened.
    pub fn handle(&mut self, revents: &[Option<PollFlags>], who: Label) -> Vec<ExecEvent> {
        let mut events = Vec::new();
        let mut i = 0;
        let ready_rule = self.rule.clone();
        for slot in self.streams.iter_mut() {
            let Some(stream) = slot else {
                continue;
            };
            let hit = revents
                .get(i)
                .copied()
                .flatten()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP));
            i += 1;
            if !hit {
                continue;
            }
            let (lines, closed) = stream.read();
            if let Some(c) = &mut self.capture {
                for line in lines {
                    if c.bytes + line.len() <= MAX_STACK_TEXT {
                        c.bytes += line.len() + 1;
                        c.lines.push(line);
                    }
                }
                if closed {
                    *slot = None;
                }
                continue;
            }
            let now = os::monotonic_ms();
            let mut dropped = 0;
            let mut outputs = Vec::new();
            for line in lines {
                if !self.ready {
                    if let ReadyRule::Log(p) = &ready_rule {
                        if p.0.is_match(&line) {
                            self.ready = true;
                            events.push(ExecEvent::Ready);
                        }
                    }
                }
                outputs.extend(stream.traceback.push(line));
            }
            if closed {
                outputs.extend(stream.traceback.flush());
            }
            for output in outputs {
                match self.budget.admit_lines(now, output.lines()) {
                    Verdict::Log => log_output(&output, who, stream.name),
                    Verdict::Drop(say) => {
                        dropped += output.lines() as u64;
                        if let Some(unsaid) = say {
                            warn!(
                                slot = who.slot,
                                pid = who.pid,
                                dropped_since_last_said = unsaid,
                                "worker output over {OUTPUT_LINES_PER_SEC} lines/s: lines dropped \
                                 (counted in rsvisor_app_output_lines_dropped_total)"
                            );
                        }
                    }
                }
            }
            if dropped > 0 {
                events.push(ExecEvent::OutputDropped(dropped));
            }
            if closed {
                *slot = None;
            }
        }
        let notify_hit = revents
            .get(i)
            .copied()
            .flatten()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if notify_hit {
            if let Some(sock) = &self.notify {
                for msg in receive_notifications(sock, who) {
                    for line in msg.lines() {
                        match line {
                            "READY=1" if !self.ready => {
                                self.ready = matches!(self.rule, ReadyRule::Notify);
                                if self.ready {
                                    events.push(ExecEvent::Ready);
                                }
                            }
                            "WATCHDOG=1" => {
                                self.watchdog = true;
                                events.push(ExecEvent::Beat);
                            }
                            other => {
                                debug!(slot = who.slot, pid = who.pid, "sd_notify: {other}")
                            }
                        }
                    }
                }
            }
        }
        events
    }

    /// Reads what is left in its output pipes (the worker was reaped: no
    /// poll will say so any more).
    pub fn drain(&mut self, who: Label) -> Vec<ExecEvent> {
        let all = vec![Some(PollFlags::POLLIN); self.streams.iter().flatten().count()];
        self.handle(&all, who)
    }

    /// From now on its output lines are kept for [`ExecIo::take_capture`]
    /// instead of being logged.
    pub fn start_capture(&mut self) {
        self.capture.get_or_insert_with(Captured::default);
    }

    /// The lines kept since [`ExecIo::start_capture`].
    pub fn take_capture(&mut self) -> Vec<String> {
        self.capture
            .as_mut()
            .map(|c| std::mem::take(&mut c.lines))
            .unwrap_or_default()
    }

    /// Whether its readiness rule is met and, in proxy mode, the app
    /// answered `GET app.ready_path` over its socket below 500 (probed
    /// only once the rule is met; never waits).
    pub fn ready_to_serve(&mut self, now: Instant) -> bool {
        if self.serving || !(self.ready || self.rule == ReadyRule::Socket) {
            return self.serving;
        }
        let Some(socket) = self.socket.as_deref() else {
            self.serving = true;
            return true;
        };
        self.probing = match std::mem::replace(&mut self.probing, Probing::Connecting) {
            Probing::Connecting => start_probe(socket, &self.ready_path, now, None),
            Probing::Retrying { at, last } if now >= at => {
                start_probe(socket, &self.ready_path, now, Some(last))
            }
            waiting @ Probing::Retrying { .. } => waiting,
            Probing::Sent(mut probe) => match probe.poll(now) {
                ProbeState::Pending => Probing::Sent(probe),
                ProbeState::Answered(code) if answer_is_ready(code) => {
                    self.serving = true;
                    Probing::Connecting
                }
                ProbeState::Answered(code) => Probing::Retrying {
                    at: now + PROBE_RETRY,
                    last: format!("GET {} over its socket answered {code}", self.ready_path),
                },
                ProbeState::Failed(why) => Probing::Retrying {
                    at: now + PROBE_RETRY,
                    last: format!("GET {} over its socket: {why}", self.ready_path),
                },
            },
        };
        self.serving
    }

    /// Proxy mode: still waiting for its socket or its probe's answer
    /// (the master looks again every [`SOCKET_POLL`]).
    pub fn awaiting_socket(&self) -> bool {
        self.socket.is_some() && !self.serving
    }

    /// Proxy mode, for a boot timeout's message: what the probe last
    /// found (`None`: its socket never accepted a connection).
    pub fn probe_outcome(&self) -> Option<&str> {
        match &self.probing {
            Probing::Retrying { last, .. } => Some(last),
            Probing::Sent(_) => Some("the app never answered the readiness probe"),
            _ => None,
        }
    }

    /// Proxy mode: its socket's path.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// `delay:SECONDS`: ready once it has been alive that long.
    pub fn delay_elapsed(&mut self, spawned_at: Instant) -> bool {
        if let ReadyRule::Delay(d) = self.rule {
            if !self.ready && spawned_at.elapsed() >= d {
                self.ready = true;
                return true;
            }
        }
        false
    }

    /// When a `delay:` rule will be met (for the master's wake-up).
    pub fn delay_deadline(&self, spawned_at: Instant) -> Option<Instant> {
        match self.rule {
            ReadyRule::Delay(d) if !self.ready => Some(spawned_at + d),
            _ => None,
        }
    }
}

impl Stream {
    /// Reads at most OUTPUT_READ_PER_TURN; returns the complete lines and
    /// whether the stream closed.
    fn read(&mut self) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        let mut buf = [0u8; 8192];
        let mut taken = 0;
        let mut closed = false;
        while taken < OUTPUT_READ_PER_TURN {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    taken += n;
                    self.take(&buf[..n], &mut lines);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        if closed && !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            lines.push(String::from_utf8_lossy(&rest).into_owned());
        }
        (lines, closed)
    }

    fn take(&mut self, mut data: &[u8], lines: &mut Vec<String>) {
        while let Some(end) = data.iter().position(|b| *b == b'\n') {
            if self.cut {
                self.cut = false;
            } else {
                self.buf.extend_from_slice(&data[..end]);
                let line = std::mem::take(&mut self.buf);
                let text = String::from_utf8_lossy(&line);
                lines.push(text.trim_end_matches('\r').to_string());
            }
            data = &data[end + 1..];
        }
        if self.cut {
            return;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > OUTPUT_LINE_MAX {
            self.buf.truncate(OUTPUT_LINE_MAX);
            let line = std::mem::take(&mut self.buf);
            lines.push(format!(
                "{} [line cut at {OUTPUT_LINE_MAX} bytes]",
                String::from_utf8_lossy(&line)
            ));
            self.cut = true;
        }
    }
}

/// Takes the pending datagrams of a worker's notify socket, keeping only
/// those sent by the worker or a process it started (anything else could
/// pretend a worker is ready).
fn receive_notifications(sock: &UnixDatagram, who: Label) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..NOTIFY_PER_TURN {
        match os::recv_with_sender(sock.as_raw_fd()) {
            Ok(Some((data, sender))) => {
                if sender.is_some_and(|p| descends_from(p, who.pid)) {
                    out.push(String::from_utf8_lossy(&data).into_owned());
                } else {
                    warn!(
                        slot = who.slot,
                        sender, "sd_notify message from outside the worker's processes ignored"
                    );
                }
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    out
}

/// Whether `pid` is `ancestor` or one of its descendants.
fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    for _ in 0..16 {
        if p == ancestor {
            return true;
        }
        let Some(parent) = crate::os::procfs::parent(p) else {
            return false;
        };
        if parent <= 1 {
            return false;
        }
        p = parent;
    }
    false
}

/// What `spawn` needs to start one exec worker.
pub struct ExecRequest<'a> {
    pub loaded: &'a Loaded,
    pub slot: usize,
    pub generation: u32,
    /// This worker's own copies of the listening sockets, in bind order.
    pub listeners: Vec<OwnedFd>,
    pub master_pid: Pid,
    /// Proxy mode: where the program must listen (`{socket}`).
    pub socket: Option<PathBuf>,
}

/// Forks and executes `app.command`; returns the pid and the master's end.
pub fn spawn(req: ExecRequest<'_>) -> io::Result<(Pid, ExecIo)> {
    let cfg: &Config = &req.loaded.config;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // The child's ends must block (programs expect blocking stdio).
    for fd in [&out_w, &err_w] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))?;
    }
    let notify = match cfg.app.ready {
        ReadyRule::Notify => Some(notify_socket(req.master_pid, req.slot)?),
        _ => None,
    };
    let notify_name = notify.as_ref().map(|(_, name)| name.clone());
    let mask = os::block_all_signals()?;
    let forked = os::fork();
    if !matches!(forked, Ok(os::Fork::Child)) {
        os::set_signal_mask(&mask)?;
    }
    match forked? {
        os::Fork::Child => {
            let err = exec_child(&req, out_w, err_w, notify_name.as_deref());
            // stderr is the pipe to the master by now (or still ours).
            eprintln!(
                "rsvisor: cannot start {:?}: {err}",
                cfg.app.command.first().map(String::as_str).unwrap_or("")
            );
            os::exit_child(127)
        }
        os::Fork::Parent(pid) => {
            // Also set here, so that a signal to the group cannot come
            // before the child's own call (EACCES once it has exec'd).
            let _ = nix::unistd::setpgid(pid, pid);
            drop(out_w);
            drop(err_w);
            let stream = |name, fd| Stream {
                name,
                fd,
                buf: Vec::new(),
                cut: false,
                traceback: Grouper::default(),
            };
            Ok((
                pid,
                ExecIo {
                    streams: [Some(stream("stdout", out_r)), Some(stream("stderr", err_r))],
                    notify: notify.map(|(s, _)| s),
                    rule: cfg.app.ready.clone(),
                    ready: false,
                    watchdog: false,
                    budget: LineBudget::new(os::monotonic_ms()),
                    socket: req.socket.clone(),
                    ready_path: cfg.app.ready_path.clone(),
                    probing: Probing::Connecting,
                    serving: false,
                    capture: None,
                },
            ))
        }
    }
}

/// A datagram socket in the abstract namespace, named after the master and
/// the slot, with sender credentials on (see `receive_notifications`).
fn notify_socket(master: Pid, slot: usize) -> io::Result<(UnixDatagram, String)> {
    use std::os::linux::net::SocketAddrExt;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("rsvisor/{master}/{slot}/{nonce:x}");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let sock = UnixDatagram::bind_addr(&addr)?;
    sock.set_nonblocking(true)?;
    os::set_passcred(sock.as_raw_fd())?;
    Ok((sock, format!("@{name}")))
}

/// In the child: everything up to exec. Returns only on failure.
fn exec_child(
    req: &ExecRequest<'_>,
    out_w: OwnedFd,
    err_w: OwnedFd,
    notify: Option<&str>,
) -> io::Error {
    let cfg = &req.loaded.config;
    // Its own process group, which the master's last SIGKILL reaches
    // whole (the app's children with it).
    if let Err(e) = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        return io::Error::from(e);
    }
    // Default actions for every signal (exec keeps ignored ones ignored).
    if let Err(e) = os::default_signal_dispositions() {
        return e;
    }
    if let Some(r) = &req.loaded.material.run_as {
        if let Err(e) = os::drop_privileges(&r.user, r.uid, r.gid) {
            return e;
        }
    }
    // Set after the privilege drop, which clears it; the check covers a
    // master that died before this line.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return io::Error::from(e);
    }
    if nix::unistd::getppid() != req.master_pid {
        os::exit_child(crate::proto::exit::WorkerExit::Orphaned.code());
    }
    if let Err(e) = os::redirect_stdio(out_w.as_raw_fd(), err_w.as_raw_fd()) {
        return e;
    }
    let keep: Vec<RawFd> = req.listeners.iter().map(|l| l.as_raw_fd()).collect();
    if let Err(e) = os::close_fds_except(&keep) {
        return e;
    }
    if let Some(dir) = &cfg.app.cwd {
        if let Err(e) = std::env::set_current_dir(dir) {
            return e;
        }
    }
    let me = std::process::id().to_string();
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
    ] {
        os::unset_env(var);
    }
    let mut env = vec![
        ("RSVISOR_WORKER_SLOT".to_string(), req.slot.to_string()),
        ("RSVISOR_GENERATION".to_string(), req.generation.to_string()),
    ];
    if !names_its_socket(&cfg.app.command) && !req.listeners.is_empty() {
        let names: Vec<String> = (0..req.listeners.len())
            .map(|i| format!("bind{i}"))
            .collect();
        env.push(("LISTEN_PID".to_string(), me.clone()));
        env.push(("LISTEN_FDS".to_string(), req.listeners.len().to_string()));
        env.push(("LISTEN_FDNAMES".to_string(), names.join(":")));
    }
    if let Some(name) = notify {
        env.push(("NOTIFY_SOCKET".into(), name.into()));
        let usec = cfg.lifecycle.timeout.as_micros().to_string();
        env.push(("WATCHDOG_USEC".into(), usec));
        env.push(("WATCHDOG_PID".into(), me));
    }
    // Proxy mode: only rsvisor can reach the private socket, so uvicorn
    // and gunicorn may trust the X-Forwarded-* headers it sets (they
    // trust none from a Unix-socket peer by default).
    if req.socket.is_some() && std::env::var_os(FORWARDED_ALLOW_IPS_ENV).is_none() {
        env.push((FORWARDED_ALLOW_IPS_ENV.into(), "*".into()));
    }
    // A hung worker's SIGABRT then prints every thread's Python stack
    // (see `python_stacks`); a setting of the user's own wins.
    if std::env::var_os(FAULTHANDLER_ENV).is_none() {
        env.push((FAULTHANDLER_ENV.into(), "1".into()));
    }
    for (k, v) in &cfg.app.env {
        env.push((k.clone(), v.clone()));
    }
    let fds: Vec<RawFd> = req.listeners.iter().map(|l| l.as_raw_fd()).collect();
    if let Err(e) = os::unblock_all_signals() {
        return e;
    }
    let command = with_placeholders(&cfg.app.command, req.socket.as_deref());
    os::exec_program(&command, &fds, LISTEN_FDS_START, &env)
}

/// One line, or one traceback, of a worker's output in the log.
fn log_output(output: &Output, who: Label, stream: &'static str) {
    match output {
        Output::Line(line) => info!(
            target: "app",
            slot = who.slot,
            pid = who.pid,
            generation = who.generation,
            stream,
            "{}",
            escape_controls(line)
        ),
        // The frames stay as Python wrote them, one per line; every
        // line but the first starts with white space, so none can pass
        // for a record of the log's own.
        Output::Traceback { exception, frames } => error!(
            target: "app",
            slot = who.slot,
            pid = who.pid,
            generation = who.generation,
            stream,
            traceback = %escape_frames(frames),
            "{}",
            escape_controls(exception)
        ),
    }
}

/// [`escape_controls`] for each line of a traceback.
fn escape_frames(frames: &str) -> String {
    frames
        .split('\n')
        .map(|l| escape_controls(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `{socket}` (proxy mode: the process's socket path) and `{fd}` (direct
/// mode: the first inherited descriptor) written in the command.
fn with_placeholders(command: &[String], socket: Option<&Path>) -> Vec<String> {
    let fd = LISTEN_FDS_START.to_string();
    let socket = socket.map(|p| p.display().to_string()).unwrap_or_default();
    command
        .iter()
        .map(|a| {
            a.replace(SOCKET_PLACEHOLDER, &socket)
                .replace(FD_PLACEHOLDER, &fd)
        })
        .collect()
}

/// Whether the command says which descriptor to serve (`--bind fd://3`):
/// then it gets no `LISTEN_FDS`, which servers such as gunicorn adopt as
/// well, taking the socket twice and closing it.
fn names_its_socket(command: &[String]) -> bool {
    command.iter().any(|a| a.contains("fd://"))
}
