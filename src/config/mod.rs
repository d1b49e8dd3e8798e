//! The validated configuration: TOML file, then `RSVISOR_<SECTION>_<KEY>`
//! environment overrides, then command-line flags, on top of the defaults.

mod convert;
#[cfg(test)]
mod docs;
mod error;
pub(crate) mod file;
pub(crate) mod keys;
pub(crate) mod material;
mod oneline;
mod parse;
mod to_toml;
mod value;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, Origin, ValueError};
pub use workers::{resolve_auto_workers, WorkerCount, WorkersResolution};

/// Upper bound for `server.workers`: the scoreboard holds twice this many
/// slots so that a full rolling reload always finds room for replacements.
pub const MAX_WORKERS: usize = 128;
/// The most front workers `app.front_workers = "auto"` gives in proxy mode.
pub const MAX_AUTO_FRONT_WORKERS: usize = 4;

/// Where the master listens. Parsed from `HOST:PORT`, `[V6]:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BindAddr {
    /// A TCP address (IPv6 sockets are v6-only).
    Tcp(SocketAddr),
    /// A Unix socket file.
    Unix(PathBuf),
}

impl std::fmt::Display for BindAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for BindAddr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path, e.g. \"unix:/run/app.sock\"".into());
            }
            if path.len() >= 108 {
                return Err(format!(
                    "unix socket path is {} bytes; Linux allows at most 107",
                    path.len()
                )
                .into());
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            let addr = format!("127.0.0.1:{port}");
            return addr
                .parse()
                .map(BindAddr::Tcp)
                .map_err(|_| format!("`{s}` has an invalid port").into());
        }
        if let Some(port) = s.strip_prefix("*:") {
            let addr = format!("0.0.0.0:{port}");
            return addr
                .parse()
                .map(BindAddr::Tcp)
                .map_err(|_| format!("`{s}` has an invalid port").into());
        }
        s.parse().map(BindAddr::Tcp).map_err(|_| {
            ValueError(format!(
                "`{s}` is not an address: use \"HOST:PORT\", \"[::1]:PORT\" or \"unix:/path.sock\""
            ))
        })
    }
}

/// Per-address options (`{ address = "…", tls = true, proxy_protocol = true }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BindOptions {
    /// `Some` when the entry said `tls = …`; otherwise TLS follows `tls.cert`.
    pub tls: Option<bool>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
}

/// Declares a config enum with its names (`as_str`, `NAMES`).
macro_rules! named_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[allow(missing_docs)] // each variant is its name in the config
        pub enum $name {
            #[default]
            $($variant),+
        }

        impl $name {
            /// Every name, as the config writes it.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// Its name in the config.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

named_enum! {
    pub enum LogFormat { Text = "text", Json = "json" }
}

named_enum! {
    pub enum AccessFormat { Combined = "combined", Json = "json" }
}

named_enum! {
    pub enum ClientAuth { None = "none", Optional = "optional", Required = "required" }
}

/// `[server]`: sockets, workers, the master's files and account.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// `server.bind`: Addresses to listen on: `"HOST:PORT"`, `"[::1]:PORT"`,
    /// `"unix:/path.sock"` (`localhost:PORT` and `*:PORT` are accepted), or a
    /// table `{ address = "0.0.0.0:443", tls = true, proxy_protocol = true
    /// }`: `tls` chooses TLS per …
    pub bind: Vec<BindAddr>,
    /// Options of bind entries written as tables.
    pub bind_options: BTreeMap<BindAddr, BindOptions>,
    /// `server.workers`: Number of worker processes (1–128), or `"auto"` = 2
    /// × usable CPUs + 1, where usable CPUs honour the cgroup v2 `cpu.max`
    /// quota, the cgroup v1 CFS quota and the CPU affinity mask
    /// (`std::thread::available_parallelism`).
    pub workers: WorkerCount,
    /// `server.backlog`: `listen()` backlog (1–65535).
    pub backlog: u32,
    /// `server.worker_threads`: Tokio threads per worker: 1 = current-thread
    /// runtime (fastest for pre-fork), more = multi-thread runtime.
    pub worker_threads: usize,
    /// `server.pidfile`: Write the master's pid here after binding.
    pub pidfile: Option<PathBuf>,
    /// `server.user`: Run workers as this user.
    pub user: Option<String>,
    /// `server.group`: The workers' group (default: the primary group of
    /// `user`).
    pub group: Option<String>,
    /// `server.umask`: Octal, e.g. `"0027"`: applied at start (socket files,
    /// pidfile, files the app creates).
    pub umask: Option<u32>,
    /// `server.socket_mode`: Octal, e.g. `"0660"`: permissions of Unix socket
    /// files, which are also owned by `user`/`group`.
    pub socket_mode: Option<u32>,
    /// `server.control_socket`: A Unix socket (mode 0600, the master's user
    /// only.
    pub control_socket: Option<PathBuf>,
}

/// `[lifecycle]`: timeouts, recycling, drain and canary reloads.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LifecycleConfig {
    /// `lifecycle.timeout`: A worker must be ready within this many seconds
    /// of its fork, and once serving must not miss its heartbeat for longer.
    pub timeout: Duration,
    /// `lifecycle.graceful_timeout`: How long a draining worker (stop,
    /// reload, recycling) may take to finish in-flight requests before
    /// `SIGKILL`.
    pub graceful_timeout: Duration,
    /// `lifecycle.max_requests`: Recycle a worker after this many requests (0
    /// = never).
    pub max_requests: u64,
    /// `lifecycle.max_requests_jitter`: Each worker draws its own limit in
    /// `[max_requests, max_requests + jitter]`.
    pub max_requests_jitter: u64,
    /// `lifecycle.shutdown_delay`: After `SIGTERM`, keep serving for this
    /// long with `/ready` answering 503, so load balancers stop sending
    /// traffic first.
    pub shutdown_delay: Duration,
    /// `lifecycle.max_worker_memory`: E.g. `"512MiB"`, `"2GiB"`: a worker
    /// whose RSS (read each second from /proc) is above this for two checks
    /// in a row is replaced like a max_requests worker: its replacement
    /// first, then a graceful drain.
    pub max_worker_memory: Option<u64>,
    /// Replace a worker after it has lived this long (plus its jitter).
    pub max_worker_lifetime: Option<Duration>,
    /// `lifecycle.max_worker_lifetime_jitter`: Each worker draws its own
    /// lifetime in `[max_worker_lifetime, max_worker_lifetime + jitter]`
    /// seconds, so that workers started together do not all leave together.
    pub max_worker_lifetime_jitter: Duration,
    /// Reloads first replace one worker and watch it this long (zero: off).
    pub canary: Duration,
    /// `lifecycle.canary_max_5xx_ratio`: How much larger (as a share of all
    /// its answers, 0–1) the canary's share of 5xx answers may be than the
    /// previous generation's over the same window.
    pub canary_max_5xx_ratio: f64,
    /// `lifecycle.canary_max_latency_ratio`: The canary's p99 latency (from
    /// the latency histograms, over the window) may be at most this many
    /// times the previous generation's.
    pub canary_max_latency_ratio: f64,
}

/// `[http]`: limits and deadlines of every connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// `http.keepalive_timeout`: Close a connection that has had no request
    /// in flight for this long.
    pub keepalive_timeout: Duration,
    /// `http.header_read_timeout`: A request head not complete within this
    /// time from its first byte (slowloris) gets `408 Request Timeout` and
    /// the connection closes.
    pub header_read_timeout: Duration,
    /// `http.max_header_bytes`: Largest request head (8192–16 MiB).
    pub max_header_bytes: usize,
    /// `http.max_headers`: Most header fields in a request head (1–1000).
    pub max_headers: usize,
    /// `http.max_body_bytes`: A larger `Content-Length` gets `413` before the
    /// body is read.
    pub max_body_bytes: u64,
    /// `http.limit_concurrency`: Per worker: app requests beyond this many in
    /// flight get `503` with `Retry-After: 1` at once (0 = unlimited).
    pub limit_concurrency: usize,
    /// `http.send_timeout`: A response that cannot hand the client a single
    /// byte for this long ends (nginx's `send_timeout`: the time between two
    /// writes, not the whole response): an HTTP/1.1 connection is closed, an
    /// HTTP/2 stream is reset …
    pub send_timeout: Duration,
    /// `http.upgrade_idle_timeout`: An upgraded connection (a WebSocket) on
    /// which no byte moves either way for this long is closed (its socket
    /// reset) and counted in `rsvisor_http_upgrade_idle_timeouts_total`.
    pub upgrade_idle_timeout: Duration,
    /// `http.compression`: Compress responses with gzip, br or zstd, as the
    /// request's `Accept-Encoding` asks (tower-http's compression: not for
    /// bodies under 32 bytes, images, server-sent events, gRPC or responses
    /// that already have a …
    pub compression: bool,
    /// `http.http2`: HTTP/2: over TLS by ALPN (`h2`), and on plain sockets
    /// with prior knowledge (h2c).
    pub http2: bool,
    /// `http.http3`: HTTP/3 over QUIC (needs `[tls]`): every TLS TCP
    /// address is also served over UDP on the same port, and responses over
    /// TCP carry `Alt-Svc` …
    pub http3: bool,
}

/// `[proxy]`: which peers may say who the client is.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// `proxy.proxy_headers`: Honour `X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `X-Forwarded-Host` and `Forwarded` (RFC 7239, which wins when
    /// present).
    pub proxy_headers: bool,
    /// `proxy.forwarded_allow_ips`: Peers allowed to set them: IPs and CIDRs
    /// (v4 and v6), `"unix"` for Unix-socket peers, `"*"` for any.
    pub forwarded_allow_ips: Vec<String>,
}

/// `tls.session_ticket_lifetime` by default: one day, as the deployment
/// guide's nginx `ssl_session_timeout 1d`.
pub const DEFAULT_TICKET_LIFETIME: Duration = Duration::from_secs(86_400);
/// TLS 1.3 forbids advertising more than seven days (RFC 8446 §4.6.1).
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(604_800);
/// Shorter lifetimes rotate keys faster than tickets are useful.
pub const MIN_TICKET_LIFETIME: Duration = Duration::from_secs(60);

/// `[tls]`: certificates, client certificates and session resumption.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// `tls.cert`: PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// `tls.key`: PEM private key: RSA, ECDSA or Ed25519 (PKCS#8, PKCS#1 or
    /// SEC1).
    pub key: Option<PathBuf>,
    /// `tls.client_ca`: PEM CA certificates that sign client certificates.
    pub client_ca: Option<PathBuf>,
    /// `tls.client_auth`: `none`, `optional` (verified if sent), `required`
    /// (handshake refused without a valid one) — gunicorn's `--cert-reqs
    /// 0/1/2`.
    pub client_auth: ClientAuth,
    /// `tls.session_tickets`: Resume TLS sessions (1.3 and 1.2) with
    /// stateless tickets whose keys the master creates in shared memory
    /// (never on disk), so a client resumes on any worker and across `HUP`.
    pub session_tickets: bool,
    /// `tls.session_ticket_lifetime`: Seconds a ticket is valid for (at most
    /// 604800, TLS 1.3's limit): the master makes a new ticket key this often
    /// and keeps the previous one for decryption only, so a ticket is
    /// honoured for between one and two lifetimes.
    pub session_ticket_lifetime: Duration,
    /// `tls.early_data`: HTTP/3 only: accept 0-RTT early data from a client
    /// resuming a session, a round trip sooner.
    pub early_data: bool,
}

/// `[log]`: the event log and the access log.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LogConfig {
    /// `log.level`: A level or a `RUST_LOG`-style filter
    /// (`"info,rsvisor=debug"`).
    pub level: String,
    /// `log.format`: `text` or `json` (one JSON object per line).
    pub format: LogFormat,
    /// `None` = off, `Some("-")` = stdout, otherwise a file path.
    pub access_log: Option<String>,
    /// `log.access_format`: `combined`: the Apache/nginx combined format
    /// followed by the duration in µs and the request id.
    pub access_format: AccessFormat,
}

/// `[app]`: the built-in app, its endpoints, and exec mode's command.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AppConfig {
    /// `app.static_dir`: The built-in app of the `rsvisor` binary serves
    /// files from here (content type by extension, `HEAD`, ranges, `Last-
    /// Modified`/`If-Modified-Since`, `ETag`/`If-None-Match`).
    pub static_dir: Option<PathBuf>,
    /// `app.health_path`: Liveness: `200 {"status":"ok"}` while the worker's
    /// event loop runs.
    pub health_path: String,
    /// `app.ready_path`: Readiness: `200 {"status":"ready","checks":{…}}`.
    pub ready_path: String,
    /// Environment variables set in every worker before the app starts
    /// (gunicorn's `raw_env`): how an operator hands settings to the app.
    pub env: BTreeMap<String, String>,
    /// Exec mode: every worker runs this program (and arguments) with the
    /// listening sockets as descriptors 3, 4, …; empty = the built-in app.
    pub command: Vec<String>,
    /// Exec mode: the program's working directory.
    pub cwd: Option<PathBuf>,
    /// Exec mode: when a worker counts as ready.
    pub ready: ReadyRule,
    /// Exec mode: the signal that asks a worker to drain and exit.
    pub stop_signal: StopSignal,
    /// `app.mode`: how clients reach `app.command`'s processes.
    pub mode: AppMode,
    /// `app.front_workers`: proxy mode's rsvisor workers in front of the
    /// app processes (`None`: automatic, see [`Config::front_count`]).
    pub front_workers: Option<usize>,
    /// `app.max_concurrency`: proxy mode: requests in flight per app
    /// process (0 = unlimited).
    pub max_concurrency: u64,
    /// `app.queue_timeout`: proxy mode: how long a request may wait for an
    /// app process to take it before it is answered 503.
    pub queue_timeout: Duration,
    /// `app.body_buffer`: proxy mode: request bodies larger than this go
    /// to a temporary file before they are forwarded.
    pub body_buffer: u64,
    /// `app.response_buffer`: proxy mode: how much of a response is read
    /// from the app process ahead of a slower client (0: none).
    pub response_buffer: u64,
    /// `app.socket_dir`: proxy mode: where the app processes' sockets live
    /// (in a private directory rsvisor creates there); `None`: the system's
    /// temporary directory.
    pub socket_dir: Option<PathBuf>,
}

/// `app.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppMode {
    /// Each app process accepts on the listening sockets itself.
    #[default]
    Direct,
    /// rsvisor's own workers accept the clients and forward each request
    /// to an app process over its Unix socket.
    Proxy,
}

/// When an exec-mode worker counts as ready (`app.ready`).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub enum ReadyRule {
    /// It sends `READY=1` on its own `NOTIFY_SOCKET` (sd_notify).
    #[default]
    Notify,
    /// A line of its stdout or stderr matches.
    Log(LogPattern),
    /// It has stayed alive this long (the weakest).
    Delay(Duration),
    /// Proxy mode (its default): its socket accepts a connection.
    Socket,
}

/// A regular expression from `app.ready = "log:…"`.
#[derive(Debug, Clone)]
pub struct LogPattern(pub(crate) regex::Regex);

impl LogPattern {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for LogPattern {
    fn eq(&self, other: &LogPattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl ReadyRule {
    /// As written in the config.
    pub fn show(&self) -> String {
        match self {
            ReadyRule::Notify => "notify".into(),
            ReadyRule::Log(p) => format!("log:{}", p.0.as_str()),
            ReadyRule::Delay(d) => format!("delay:{}", convert::secs(*d)),
            ReadyRule::Socket => "socket".into(),
        }
    }
}

/// A signal named in the config (`app.stop_signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSignal(pub(crate) nix::sys::signal::Signal);

impl StopSignal {
    /// Its name without `SIG` (`TERM`, `INT`), as the config writes it.
    pub fn name(&self) -> &'static str {
        self.0.as_str().trim_start_matches("SIG")
    }

    /// Its number.
    pub fn number(&self) -> i32 {
        self.0 as i32
    }
}

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal(nix::sys::signal::Signal::SIGTERM)
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// `metrics.enabled`: Serve Prometheus metrics of the whole fleet (when
    /// `false`, workers also skip the per-request metric counters).
    pub enabled: bool,
    /// `metrics.path`: Where.
    pub path: String,
    /// `metrics.bind`: Serve metrics only on this separate address
    /// (`"127.0.0.1:9100"`, `"unix:/run/app-metrics.sock"`), so they need not
    /// be public.
    pub bind: Option<BindAddr>,
}

/// The whole validated configuration: data only. What it refers to
/// outside itself (certificates, the worker account, the static
/// directory) is loaded and checked separately, by `crate::config::material`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The file it was read from, if any (for messages and reloads).
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[lifecycle]`.
    pub lifecycle: LifecycleConfig,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[proxy]`.
    pub proxy: ProxyConfig,
    /// `[tls]`.
    pub tls: TlsConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[app]`.
    pub app: AppConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// Where each key that was set got its value.
    pub(crate) origins: Origins,
}

impl Default for Config {
    /// Every key at its documented default.
    fn default() -> Self {
        keys::defaults()
    }
}

impl Config {
    /// Every field at Rust's zero value: the canvas defaults are applied on.
    fn blank() -> Config {
        Config {
            source: None,
            server: ServerConfig {
                bind: Vec::new(),
                bind_options: BTreeMap::new(),
                workers: WorkerCount::default(),
                backlog: 0,
                worker_threads: 0,
                pidfile: None,
                user: None,
                group: None,
                umask: None,
                socket_mode: None,
                control_socket: None,
            },
            lifecycle: LifecycleConfig {
                timeout: Duration::ZERO,
                graceful_timeout: Duration::ZERO,
                max_requests: 0,
                max_requests_jitter: 0,
                shutdown_delay: Duration::ZERO,
                max_worker_memory: None,
                max_worker_lifetime: None,
                max_worker_lifetime_jitter: Duration::ZERO,
                canary: Duration::ZERO,
                canary_max_5xx_ratio: 0.0,
                canary_max_latency_ratio: 0.0,
            },
            http: HttpConfig {
                keepalive_timeout: Duration::ZERO,
                header_read_timeout: Duration::ZERO,
                max_header_bytes: 0,
                max_headers: 0,
                max_body_bytes: 0,
                limit_concurrency: 0,
                send_timeout: Duration::ZERO,
                upgrade_idle_timeout: Duration::ZERO,
                compression: false,
                http2: false,
                http3: false,
            },
            proxy: ProxyConfig {
                proxy_headers: false,
                forwarded_allow_ips: Vec::new(),
            },
            tls: TlsConfig {
                cert: None,
                key: None,
                client_ca: None,
                client_auth: ClientAuth::default(),
                session_tickets: false,
                session_ticket_lifetime: Duration::ZERO,
                early_data: false,
            },
            log: LogConfig {
                level: String::new(),
                format: LogFormat::default(),
                access_log: None,
                access_format: AccessFormat::default(),
            },
            app: AppConfig {
                static_dir: None,
                health_path: String::new(),
                ready_path: String::new(),
                env: BTreeMap::new(),
                command: Vec::new(),
                cwd: None,
                ready: ReadyRule::default(),
                stop_signal: StopSignal::default(),
                mode: AppMode::Direct,
                front_workers: None,
                max_concurrency: 0,
                queue_timeout: Duration::ZERO,
                body_buffer: 0,
                response_buffer: 0,
                socket_dir: None,
            },
            metrics: MetricsConfig {
                enabled: false,
                path: String::new(),
                bind: None,
            },
            origins: Origins::default(),
        }
    }
}

impl Default for ServerConfig {
    /// Every key of the section at its documented default.
    fn default() -> Self {
        Config::default().server
    }
}

impl Default for LifecycleConfig {
    /// Every key of the section at its documented default.
    fn default() -> Self {
        Config::default().lifecycle
    }
}

impl Default for HttpConfig {
    /// Every key of the section at its documented default.
    fn default() -> Self {
        Config::default().http
    }
}

impl Default for ProxyConfig {
    /// Every key of the section at its documented default.
    fn default() -> Self {
        Config::default().proxy
    }
}

impl Default for TlsConfig {
    /// Every key of the section at its documented default.
    fn default() -> Self {
        Config::default().tls
    }
}

impl Default for LogConfig {
    /// Every key of the section at its documented default.
    fn default() -> Self {
        Config::default().log
    }
}

impl Default for AppConfig {
    /// Every key of the section at its documented default.
    fn default() -> Self {
        Config::default().app
    }
}

impl Default for MetricsConfig {
    /// Every key of the section at its documented default.
    fn default() -> Self {
        Config::default().metrics
    }
}

/// Where each key got its value (`"server.user"` → file:line:col), so
/// that checks made after parsing can point at the line. Two configs that
/// differ only in where their values came from are equal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins(HashMap<String, Origin>);

impl PartialEq for Origins {
    fn eq(&self, _: &Origins) -> bool {
        true
    }
}

impl Origins {
    pub fn get(&self, key: &str) -> Origin {
        self.0.get(key).cloned().unwrap_or(Origin::Default)
    }

    pub fn set(&mut self, key: String, origin: Origin) {
        self.0.insert(key, origin);
    }
}

/// Where the master gets its configuration, at start and on every reload.
#[derive(Debug, Clone)]
pub(crate) enum ConfigSource {
    /// A TOML file (read again on reload), the environment and flags.
    File { path: PathBuf, overrides: Overrides },
    /// A configuration built by the embedding program; a reload starts a
    /// new generation with it.
    Fixed(Box<Config>),
    /// No file: the defaults, the environment and flags (a one-line
    /// `serve`); a reload reads the environment again.
    Flags(Overrides),
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File { path, overrides } => Config::load(path, overrides),
            // Checked by the same rules as a file: what `check` would
            // print for it is parsed again (every key's range, the rules
            // between keys).
            ConfigSource::Fixed(c) => {
                Config::from_parts(&c.render(), None, &[], &Overrides::default())?;
                Ok((**c).clone())
            }
            ConfigSource::Flags(overrides) => {
                let env: Vec<(String, String)> = std::env::vars().collect();
                Config::from_parts("", None, &env, overrides)
            }
        }
    }

    /// For log lines: the file, or that the config was built in code.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::File { path, .. } => path.display().to_string(),
            ConfigSource::Fixed(_) => "(configuration built by the program)".into(),
            ConfigSource::Flags(_) => "(command-line flags, no file)".into(),
        }
    }
}

/// Command-line flags that override file and environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Overrides {
    pub bind: Vec<String>,
    pub workers: Option<usize>,
    /// `serve -- COMMAND ARGS…`: `app.command` (see `oneline`).
    pub command: Vec<String>,
}

impl Config {
    /// Reads `path`, applies the process environment and `overrides`, validates.
    /// A configuration file with the process environment applied
    /// (`RSVISOR_<SECTION>_<KEY>`), as `rsvisor serve` reads it.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Self::load(path, &Overrides::default())
    }

    pub(crate) fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        };
        let bytes = file::read_capped(path, file::MAX_CONFIG_BYTES).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "is not UTF-8 text",
            ))
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_parts(&text, Some(path), &env, overrides)
    }

    /// Builds a config from TOML text, environment pairs and overrides.
    /// A configuration from TOML text alone (no environment, no flags),
    /// checked by every rule a file is.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_parts(text, None, &[], &Overrides::default())
    }

    pub(crate) fn from_parts(
        text: &str,
        path: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        parse::build(text, path, env, overrides)
    }

    /// The number of workers this config asks for, with `auto` resolved.
    pub fn worker_count(&self) -> usize {
        match self.server.workers {
            WorkerCount::Fixed(n) => n,
            WorkerCount::Auto => resolve_auto_workers().workers,
        }
    }

    /// Every address the master listens on: `server.bind`, then
    /// `metrics.bind` if set.
    pub fn listen_addrs(&self) -> Vec<BindAddr> {
        let mut addrs = self.server.bind.clone();
        addrs.extend(self.metrics.bind.clone());
        addrs
    }

    /// Exec mode: workers run `app.command` instead of the built-in app.
    pub fn exec_mode(&self) -> bool {
        !self.app.command.is_empty()
    }

    /// Proxy mode: rsvisor's workers serve the clients and forward to the
    /// app processes.
    pub fn proxy_mode(&self) -> bool {
        self.exec_mode() && self.app.mode == AppMode::Proxy
    }

    /// Proxy mode's front workers: `app.front_workers`, or as many as the
    /// usable CPUs, at most [`MAX_AUTO_FRONT_WORKERS`] (forwarding is light
    /// next to the app's own work).
    pub fn front_count(&self) -> usize {
        self.app.front_workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_AUTO_FRONT_WORKERS)
        })
    }

    /// The TCP addresses of `server.bind` that take TLS: with `http.http3`,
    /// each is also served over QUIC on its UDP port.
    pub fn tls_tcp_binds(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        self.server.bind.iter().filter_map(|a| match a {
            BindAddr::Tcp(sa) if self.bind_uses_tls(a) => Some(*sa),
            _ => None,
        })
    }

    /// Whether connections on `addr` are TLS.
    pub fn bind_uses_tls(&self, addr: &BindAddr) -> bool {
        self.server
            .bind_options
            .get(addr)
            .and_then(|o| o.tls)
            .unwrap_or(self.tls.cert.is_some())
    }

    /// Whether connections on `addr` start with a PROXY protocol header.
    pub fn bind_uses_proxy_protocol(&self, addr: &BindAddr) -> bool {
        self.server
            .bind_options
            .get(addr)
            .is_some_and(|o| o.proxy_protocol)
    }

    /// The effective configuration as TOML, with the resolved worker count.
    pub fn render(&self) -> String {
        to_toml::render(self)
    }
}

/// Parses sizes like `"512MiB"`, `"1G"`, `"1048576"` into bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, ValueError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| {
        ValueError::from(format!(
            "`{s}` is not a size: use e.g. \"512MiB\" or \"2GiB\""
        ))
    })?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" | "k" | "kB" => 1e3,
        "KiB" => 1024.0,
        "M" | "MB" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "G" | "GB" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`: use B, KiB, MiB, GiB (or KB, MB, GB)"
            )
            .into())
        }
    };
    Ok((num * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(
            "127.0.0.1:80".parse::<BindAddr>().unwrap(),
            BindAddr::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "[::1]:80".parse::<BindAddr>().unwrap(),
            BindAddr::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            "unix:/tmp/x.sock".parse::<BindAddr>().unwrap(),
            BindAddr::Unix("/tmp/x.sock".into())
        );
        assert!("nonsense".parse::<BindAddr>().is_err());
        assert!("unix:".parse::<BindAddr>().is_err());
    }

    #[test]
    fn each_sections_default_is_the_key_tables() {
        let c = Config::default();
        assert_eq!(HttpConfig::default(), c.http);
        assert!(HttpConfig::default().max_header_bytes > 0);
        assert_eq!(LifecycleConfig::default(), c.lifecycle);
        assert!(TlsConfig::default().session_tickets);
        assert_eq!(ServerConfig::default().bind, c.server.bind);
    }

    /// The key and message an invalid value gets, wherever it came from.
    fn key_and_message(e: ConfigError) -> (String, String) {
        match e {
            ConfigError::Invalid { key, message, .. } => (key, message),
            other => panic!("not a key error: {other}"),
        }
    }

    #[test]
    fn a_value_set_in_code_gets_the_error_the_toml_gets() {
        let mut c = Config::default();
        c.server.workers = WorkerCount::Fixed(0);
        let from_code = ConfigSource::Fixed(Box::new(c)).load().unwrap_err();
        let from_toml = Config::from_toml("[server]\nworkers = 0\n").unwrap_err();
        assert_eq!(key_and_message(from_code), key_and_message(from_toml));
        let mut c = Config::default();
        c.http.max_header_bytes = 10;
        let from_code = ConfigSource::Fixed(Box::new(c)).load().unwrap_err();
        let from_toml = Config::from_toml("[http]\nmax_header_bytes = 10\n").unwrap_err();
        assert_eq!(key_and_message(from_code), key_and_message(from_toml));
    }

    #[test]
    fn a_config_built_in_code_is_checked_like_a_file() {
        assert!(ConfigSource::Fixed(Box::default()).load().is_ok());
        let mut c = Config::default();
        c.server.workers = WorkerCount::Fixed(0);
        let e = ConfigSource::Fixed(Box::new(c))
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.workers"), "{e}");
        let mut c = Config::default();
        c.tls.cert = Some("/a.pem".into());
        let e = ConfigSource::Fixed(Box::new(c))
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls.cert and tls.key must be set together"),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_size("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn log_levels_are_level_names_or_target_directives() {
        let load = |level: &str| {
            let text = format!("[log]\nlevel = \"{level}\"\n");
            Config::from_parts(&text, None, &[], &Overrides::default())
        };
        for ok in [
            "info",
            "DEBUG",
            "warn,rsvisor=debug",
            "off",
            "info,h2=error",
        ] {
            assert!(load(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "info,loud", "rsvisor"] {
            let e = load(bad).unwrap_err().to_string();
            assert!(
                e.contains("log.level") && e.contains("is not a level"),
                "{e}"
            );
            assert!(e.contains("trace, debug, info, warn, error, off"), "{e}");
        }
    }

    mod props {
        use super::super::convert::{seconds, secs, size};
        use super::super::value::Val;
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            #[test]
            fn any_text_never_panics(s in any::<String>()) {
                let _ = parse_size(&s);
                let _ = seconds(&Val::Str(s.clone()), true);
                let _ = s.parse::<BindAddr>();
            }

            /// What `check` prints for a size reads back as the same size.
            #[test]
            fn sizes_round_trip(n in 1u64..(1 << 53)) {
                let printed = size(Some(n));
                prop_assert_eq!(parse_size(printed.trim_matches('"')), Ok(n));
                prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
            }

            #[test]
            fn binary_units_multiply(n in 0u64..(1 << 30)) {
                prop_assert_eq!(parse_size(&format!("{n}KiB")), Ok(n * 1024));
                prop_assert_eq!(parse_size(&format!("{n} MiB")), Ok(n << 20));
            }

            /// What `check` prints for a duration reads back within a
            /// microsecond (seconds are floats in the file).
            #[test]
            fn durations_round_trip(ms in 0u64..(365 * 86_400_000)) {
                let d = Duration::from_millis(ms);
                let back = seconds(&Val::Str(secs(d)), true).unwrap();
                let diff = back.abs_diff(d);
                prop_assert!(diff < Duration::from_micros(1), "{d:?} -> {back:?}");
            }

            #[test]
            fn tcp_addresses_round_trip(addr in any::<std::net::SocketAddr>()) {
                let addr = match addr {
                    // Flow info and scope are not part of the text form.
                    std::net::SocketAddr::V6(a) => std::net::SocketAddr::V6(
                        std::net::SocketAddrV6::new(*a.ip(), a.port(), 0, 0),
                    ),
                    v4 => v4,
                };
                let b = BindAddr::Tcp(addr);
                prop_assert_eq!(b.to_string().parse::<BindAddr>(), Ok(b));
            }

            #[test]
            fn unix_paths_round_trip(path in "/[a-zA-Z0-9._/-]{1,100}") {
                let b = BindAddr::Unix(PathBuf::from(&path));
                prop_assert_eq!(b.to_string().parse::<BindAddr>(), Ok(b));
            }
        }
    }
}
