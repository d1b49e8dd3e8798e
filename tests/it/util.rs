//! Shared helpers for the integration tests: start the real binaries in a
//! temporary directory, talk HTTP/1.1 to them over TCP or Unix sockets, and
//! make sure every process a test started is gone when it ends.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
pub use rsvisor::control::Status;
pub use rsvisor::outcome::{ExitReason, ReloadResult};
pub use rsvisor::state::{Phase, WorkerState};

/// Generous, because CI machines have 2 noisy cores.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Path of a built example, e.g. `demo` (cargo test builds the examples
/// next to the binaries).
pub fn example(name: &str) -> PathBuf {
    let mut p = PathBuf::from(env!("CARGO_BIN_EXE_rsvisor"));
    p.pop();
    p.push("examples");
    p.push(name);
    p
}

pub fn rsvisor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rsvisor"))
}

/// The demo app (the contract routes tests and benchmarks use) with `config`.
pub fn demo(config: &str) -> ServerBuilder {
    ServerBuilder::new(example("demo")).config(config)
}

/// Adds `server.control_socket` in `dir` unless the config names one, so
/// that every test can ask the master for its state.
fn with_control_socket(text: &str, dir: &Path) -> (String, PathBuf) {
    if let Some(line) = text
        .lines()
        .find(|l| l.trim_start().starts_with("control_socket"))
    {
        let path = line
            .split('"')
            .nth(1)
            .map(PathBuf::from)
            .unwrap_or_default();
        // Relative to the config file, as rsvisor reads it.
        return (text.to_string(), dir.join(path));
    }
    let path = dir.join("control.sock");
    let line = format!("control_socket = \"{}\"\n", path.display());
    let text = match text.find("[server]\n") {
        Some(i) => {
            let at = i + "[server]\n".len();
            format!("{}{line}{}", &text[..at], &text[at..])
        }
        None => format!("[server]\n{line}{text}"),
    };
    (text, path)
}

/// Where to reach a server.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

impl Target {
    pub fn connect(&self) -> io::Result<Stream> {
        let s = match self {
            Target::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Target::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Stream::Unix(s)
            }
        };
        Ok(s)
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (Content-Length, chunked, or until EOF).
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 {
        return Ok(resp);
    }
    if let Some(len) = resp.header("content-length") {
        let n: usize = len
            .parse()
            .map_err(|_| io::Error::other("bad content-length"))?;
        let mut body = vec![0; n];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(t: &Target, method: &str, path: &str, body: &[u8]) -> io::Result<Resp> {
    let mut s = t.connect()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD")
}

pub fn get(t: &Target, path: &str) -> io::Result<Resp> {
    request(t, "GET", path, b"")
}

/// Sends raw bytes and returns everything the server sent before closing.
pub fn raw(t: &Target, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = t.connect()?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(out)
}

/// A kept-alive HTTP/1.1 connection.
pub struct KeepAlive {
    r: BufReader<Stream>,
}

impl KeepAlive {
    pub fn open(t: &Target) -> io::Result<KeepAlive> {
        Ok(KeepAlive {
            r: BufReader::new(t.connect()?),
        })
    }

    pub fn get(&mut self, path: &str) -> io::Result<Resp> {
        let s = self.r.get_mut();
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
        read_response(&mut self.r, false)
    }
}

/// A server process (master and workers) that is killed, whole process
/// group, when the test ends, even on panic.
pub struct Server {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The master's control socket (always configured by the builder).
    pub control: PathBuf,
    exited: Option<ExitStatus>,
}

pub struct ServerBuilder {
    bin: PathBuf,
    config: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    raw: Option<Vec<String>>,
    /// `serve ARGS…` with no config file (the control socket then comes
    /// from the environment).
    one_line: Option<Vec<String>>,
    dir: tempfile::TempDir,
}

impl ServerBuilder {
    pub fn new(bin: impl AsRef<Path>) -> ServerBuilder {
        ServerBuilder {
            bin: bin.as_ref().to_path_buf(),
            config: String::new(),
            env: Vec::new(),
            args: Vec::new(),
            raw: None,
            one_line: None,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `{dir}` in the text is replaced by the temporary directory.
    pub fn config(mut self, text: &str) -> ServerBuilder {
        self.config = text.replace("{dir}", &self.dir.path().display().to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> ServerBuilder {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Runs `bin RAW… CONFIG` instead of `bin serve CONFIG` (a wrapper such
    /// as systemd-socket-activate that ends with `… -- demo serve`).
    pub fn raw_args(mut self, raw: &[&str]) -> ServerBuilder {
        self.raw = Some(raw.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Runs `bin serve CONFIG ARGS…`.
    pub fn args(mut self, args: &[&str]) -> ServerBuilder {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Runs `bin serve ARGS…` without a config file.
    pub fn one_line(mut self, args: &[&str]) -> ServerBuilder {
        self.one_line = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn start(self) -> Server {
        let config = self.dir.path().join("app.toml");
        let (text, control) = with_control_socket(&self.config, self.dir.path());
        std::fs::write(&config, text).expect("write config");
        let log = self.dir.path().join("stderr.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(&self.bin);
        match (&self.raw, &self.one_line) {
            (_, Some(args)) => cmd
                .arg("serve")
                .args(args)
                .env("RSVISOR_SERVER_CONTROL_SOCKET", &control),
            (Some(raw), None) => cmd.args(raw).arg(&config),
            (None, None) => cmd.arg("serve").arg(&config).args(&self.args),
        };
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start server binary");
        Server {
            child,
            dir: self.dir,
            config,
            log,
            control,
            exited: None,
        }
    }
}

impl Server {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The master's state, asked through its control socket; `None` while
    /// it cannot answer (not started yet, or gone).
    pub fn status(&self) -> Option<Status> {
        let stream = UnixStream::connect(&self.control).ok()?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        (&stream).write_all(b"status\n").ok()?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).ok()?;
        let resp: rsvisor::control::Response = serde_json::from_str(&line).ok()?;
        resp.status
    }

    /// Waits until the master's status satisfies `pred`; returns it.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(st) = self.status() {
                if pred(&st) {
                    return st;
                }
                last = Some(st);
            }
            if let Some(st) = self.try_wait() {
                panic!(
                    "server exited ({st}) while waiting for {what}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status {last:#?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every worker the master wants is ready and of the
    /// current generation, and nothing else runs: a settled fleet.
    pub fn wait_settled(&mut self, timeout: Duration) -> Status {
        self.wait_status("a settled fleet", timeout, settled)
    }

    /// Waits until the master's `reloads_by_result` counts reach `n` in all
    /// (finished reloads, whatever their result); returns that status.
    pub fn wait_reloads(&mut self, n: u64, timeout: Duration) -> Status {
        self.wait_status(&format!("{n} finished reload(s)"), timeout, |st| {
            st.totals.reloads_by_result.values().sum::<u64>() >= n
        })
    }

    /// The first TCP address the master listens on (a port 0 resolved).
    pub fn tcp_addr(&mut self) -> Target {
        let st = self.wait_status("a TCP listener", START_TIMEOUT, |st| {
            st.listeners.iter().any(|l| !l.starts_with("unix:"))
        });
        let addr = st
            .listeners
            .iter()
            .find(|l| !l.starts_with("unix:"))
            .cloned()
            .unwrap_or_default();
        Target::Tcp(addr)
    }

    /// Waits until `/ready` answers 200 through `t`.
    pub fn wait_ready(&mut self, t: &Target) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(r) = get(t, "/ready") {
                if r.status == 200 {
                    return;
                }
            }
            if let Some(st) = self.try_wait() {
                panic!("server exited ({st}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "server not ready in time:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a settled fleet (so that a signal sent next finds every
    /// initial worker ready) and returns the first TCP address.
    pub fn ready_tcp(&mut self) -> Target {
        self.wait_settled(START_TIMEOUT);
        self.tcp_addr()
    }

    /// Worker pids as the master reports them.
    pub fn worker_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .status()
            .map(|st| st.workers.iter().map(|w| w.pid as i32).collect())
            .unwrap_or_default();
        pids.sort();
        pids
    }

    /// Worker processes: children of the master.
    pub fn workers(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Waits until `pred(workers)` holds.
    pub fn wait_workers(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[i32]) -> bool,
    ) -> Vec<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let w = self.workers();
            if pred(&w) {
                return w;
            }
            if let Some(st) = self.try_wait() {
                panic!(
                    "server exited ({st}) while waiting for {what}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; workers now {w:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig);
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the master to exit; panics with its log if it does not.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(st) => st,
            None => panic!(
                "master still running after {timeout:?}; workers {:?}\n{}",
                self.workers(),
                self.log_text()
            ),
        }
    }
}

/// The listening address in the status that starts with `prefix`
/// (`"127.0.0.2:"`), for configs that bind several.
pub fn listener(st: &Status, prefix: &str) -> String {
    st.listeners
        .iter()
        .find(|l| l.starts_with(prefix))
        .cloned()
        .unwrap_or_else(|| panic!("no listener {prefix}: {:?}", st.listeners))
}

/// Every worker the master wants is ready, of the current generation, and
/// nothing else runs.
pub fn settled(st: &Status) -> bool {
    st.phase == Phase::Running
        && st.workers.len() == st.desired_workers
        && st
            .workers
            .iter()
            .all(|w| w.state == WorkerState::Ready && w.generation == st.generation)
}

impl Drop for Server {
    fn drop(&mut self) {
        // Exec workers lead process groups of their own: each group of a
        // descendant first (while the master still holds the tree), then
        // the master's whole group, even if workers were orphaned.
        for pid in descendants(self.pid()) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
            kill(pid, Signal::SIGKILL);
        }
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every process below `root` (children, their children…), from /proc.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut out = children_of(root);
    let mut i = 0;
    while i < out.len() {
        let more = children_of(out[i]);
        out.extend(more);
        i += 1;
    }
    out
}

/// Pids whose parent is `ppid`, from /proc.
pub fn children_of(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((parent, state)) = stat_ppid(pid) {
            if parent == ppid && state != 'Z' {
                out.push(pid);
            }
        }
    }
    out.sort();
    out
}

/// Parent pid and state letter of a process.
pub fn stat_ppid(pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

pub fn alive(pid: i32) -> bool {
    stat_ppid(pid).is_some_and(|(_, s)| s != 'Z')
}

pub fn kill(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
}

/// Runs the binary to completion (for `check`).
pub fn run(bin: &Path, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Result of a load run.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    /// Worker pids that answered (`/pid` responses).
    pub pids: std::collections::BTreeSet<i32>,
}

impl LoadStats {
    /// Every request answered 200, and enough of them to mean something.
    pub fn assert_all_ok(&self, at_least: u64) {
        assert_eq!(
            self.failed,
            0,
            "failed requests: {:?}",
            &self.errors[..self.errors.len().min(10)]
        );
        assert!(
            self.ok >= at_least,
            "only {} requests; expected at least {at_least}",
            self.ok
        );
    }
}

/// A bounded load of `/pid` requests from `threads` clients that never
/// retry: half keep connections alive (reconnecting only after a
/// `Connection: close` or a failure), half open a new connection per request.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<LoadStats>>,
}

impl Load {
    pub fn start(t: &Target, threads: usize, max_duration: Duration) -> Load {
        Self::start_path(t, threads, max_duration, "/pid")
    }

    pub fn start_path(t: &Target, threads: usize, max_duration: Duration, path: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|i| {
                let t = t.clone();
                let stop = stop.clone();
                let path = path.to_string();
                std::thread::spawn(move || {
                    load_client(&t, i % 2 == 0, &stop, Instant::now() + max_duration, &path)
                })
            })
            .collect();
        Load { stop, handles }
    }

    pub fn finish(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut total = LoadStats::default();
        for h in self.handles {
            let s = h.join().expect("load thread");
            total.ok += s.ok;
            total.failed += s.failed;
            total.errors.extend(s.errors);
            total.pids.extend(s.pids);
        }
        total
    }
}

fn load_client(
    t: &Target,
    keep_alive: bool,
    stop: &std::sync::atomic::AtomicBool,
    deadline: Instant,
    path: &str,
) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut conn: Option<BufReader<Stream>> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
        let res = if keep_alive {
            (|| -> io::Result<Resp> {
                if conn.is_none() {
                    conn = Some(BufReader::new(t.connect()?));
                }
                let r = conn.as_mut().expect("just set");
                write!(r.get_mut(), "GET {path} HTTP/1.1\r\nHost: load\r\n\r\n")?;
                read_response(r, false)
            })()
        } else {
            get(t, path)
        };
        match res {
            Ok(r) if r.status == 200 => {
                stats.ok += 1;
                if let Ok(pid) = r.text().trim().parse() {
                    stats.pids.insert(pid);
                }
                if r.header("connection") == Some("close") {
                    conn = None;
                }
            }
            Ok(r) => {
                stats.failed += 1;
                stats.errors.push(format!("status {}", r.status));
                conn = None;
            }
            Err(e) => {
                stats.failed += 1;
                stats.errors.push(format!(
                    "{}: {e}",
                    if keep_alive { "keep-alive" } else { "new conn" }
                ));
                conn = None;
            }
        }
    }
    stats
}

/// A current-thread tokio runtime for a test's async clients.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The value of one sample (`name` or `name{labels}`) in a `/metrics` text.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no sample {name_and_labels}"))
}

/// A process's resident memory, KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The test CA of `http_edge::make_pki` as a root store.
pub fn test_roots(ca: &Path) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("the test CA") {
        roots.add(c.expect("a CA certificate")).expect("a CA root");
    }
    roots
}

/// A TLS connection to `addr` as `localhost`, trusting the CA in `ca`
/// (`http_edge::make_pki`), offering `alpn`.
pub async fn tls_connect(
    addr: &str,
    ca: &Path,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let roots = test_roots(ca);
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a server name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Whether `tool` (a program on PATH, or an absolute path) can run here.
/// A test that needs it returns early when it cannot, printing why —
/// unless `RSVISOR_TEST_ALL=1` (set by `scripts/test` and CI), where a
/// missing tool fails the test instead of skipping it.
pub fn have(tool: &str, why: &str) -> bool {
    let found = if tool.contains('/') {
        Path::new(tool).exists()
    } else {
        on_path(tool)
    };
    if !found {
        assert!(
            std::env::var_os("RSVISOR_TEST_ALL").is_none_or(|v| v != "1"),
            "{tool} is needed ({why}) and RSVISOR_TEST_ALL=1 forbids skipping"
        );
        eprintln!("skipped: {tool} not found ({why})");
    }
    found
}

/// Whether a program of that name is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The events of a JSON log (`log.format = "json"`) whose message starts
/// with `prefix`, oldest first.
pub fn json_events(s: &Server, prefix: &str) -> Vec<serde_json::Value> {
    s.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        })
        .collect()
}

/// The first event of a JSON log whose message starts with `prefix`,
/// waiting for it up to `timeout`.
pub fn wait_json_event(s: &Server, prefix: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = json_events(s, prefix).into_iter().next() {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {prefix:?} event:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A program of tests/.venv (uvicorn, gunicorn, py-spy…, which
/// `scripts/deps` installs from PyPI).
pub fn venv_bin(program: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/.venv/bin")
        .join(program)
}

/// Whether every one of `programs` is in tests/.venv (a test skips,
/// saying why, when one is missing).
pub fn have_in_venv(programs: &[&str]) -> bool {
    programs.iter().all(|p| {
        have(
            &venv_bin(p).display().to_string(),
            "scripts/deps installs it from PyPI into tests/.venv",
        )
    })
}
