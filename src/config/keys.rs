//! Every configuration key, in one table: its default, its meaning (the
//! tables of docs/configuration.md are generated from it), how a value is
//! checked and stored, and how it is printed back by `rsvisor check`. The order here is
//! the order of `check`'s output and of docs/configuration.md.

use super::convert::*;
use super::value::Val;
use super::{
    AccessFormat, AppMode, ClientAuth, Config, LogFormat, ReadyRule, ValueError, WorkerCount,
    MAX_WORKERS,
};

pub type Setter = fn(&mut Config, &Val) -> Result<(), ValueError>;

pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    /// The default as a TOML literal; `Config::default()` is made by
    /// applying these.
    pub default: &'static str,
    /// What the key means (Markdown, one paragraph): the reference's text.
    #[cfg_attr(not(test), allow(dead_code))]
    pub doc: &'static str,
    pub set: Setter,
    /// The current value as a TOML literal.
    pub get: fn(&Config) -> String,
    /// A comment `check` adds after the value (how `auto` was resolved).
    pub note: Option<fn(&Config) -> Option<String>>,
}

macro_rules! key {
    ($section:literal . $name:literal = $default:literal,
     $doc:literal,
     set |$c:ident, $v:ident| $set:expr,
     get |$g:ident| $get:expr $(, note $note:expr)? $(,)?) => {
        Key {
            section: $section,
            name: $name,
            default: $default,
            doc: $doc,
            set: |$c, $v| {
                $set;
                Ok(())
            },
            get: |$g| $get,
            note: key!(@note $($note)?),
        }
    };
    (@note $note:expr) => { Some($note) };
    (@note) => { None };
}

pub const SECTIONS: &[&str] = &[
    "server",
    "lifecycle",
    "http",
    "proxy",
    "tls",
    "log",
    "app",
    "metrics",
];

pub const KEYS: &[Key] = &[
    key!("server"."bind" = r#"["127.0.0.1:8000"]"#,
        "addresses to listen on: `\"HOST:PORT\"`, `\"[::1]:PORT\"`, `\"unix:/path.sock\"` \
         (`localhost:PORT` and `*:PORT` are accepted), or a table `{ address = \"0.0.0.0:443\", \
         tls = true, proxy_protocol = true }`: `tls` chooses TLS per address, `proxy_protocol` \
         expects every connection to start with a PROXY protocol v1 or v2 header (HAProxy, AWS \
         NLB) whose source address becomes the client's (`LOCAL`/`UNKNOWN` keep the peer; a \
         connection without a valid header within `header_read_timeout` is closed). Bound by the \
         master before any worker starts; IPv6 sockets are v6-only. A stale Unix socket file is \
         replaced only if nothing accepts on it; the file is removed on exit.",
        set |c, v| {
            let (addrs, options) = bind_list(v)?;
            c.server.bind = addrs;
            c.server.bind_options = options;
        },
        get |c| binds(&c.server.bind, &c.server.bind_options)),
    key!("server"."workers" = r#""auto""#,
    "number of worker processes (1–128), or `\"auto\"` = 2 × usable CPUs + 1, where usable \
     CPUs honour the cgroup v2 `cpu.max` quota, the cgroup v1 CFS quota and the CPU affinity \
     mask (`std::thread::available_parallelism`); `rsvisor check` shows the number and which \
     limit applied",
    set |c, v| c.server.workers = workers(v)?,
    get |c| match c.server.workers {
        WorkerCount::Fixed(n) => n.to_string(),
        WorkerCount::Auto => q("auto"),
    },
    note |c| match c.server.workers {
        WorkerCount::Auto => Some(super::resolve_auto_workers().explanation),
        WorkerCount::Fixed(_) => None,
    }),
    key!("server"."backlog" = "2048",
        "`listen()` backlog (1–65535)",
        set |c, v| c.server.backlog = int_in(v, 1, 65535)? as u32,
        get |c| c.server.backlog.to_string()),
    key!("server"."worker_threads" = "1",
        "tokio threads per worker: 1 = current-thread runtime (fastest for pre-fork), more = \
         multi-thread runtime",
        set |c, v| c.server.worker_threads = int_in(v, 1, 256)? as usize,
        get |c| c.server.worker_threads.to_string()),
    key!("server"."pidfile" = r#""""#,
        "write the master's pid here after binding; removed on exit (only if it still holds this \
         pid: after a binary upgrade it names the new master)",
        set |c, v| c.server.pidfile = opt_path(v)?,
        get |c| q_path(&c.server.pidfile)),
    key!("server"."user" = r#""""#,
        "run workers as this user. The master must start as root; sockets and pidfile are \
         created first, then each worker sets its supplementary groups (`initgroups`), group, \
         then user, checks that root cannot be regained, and refuses to serve if any step \
         fails. Unknown names are config errors.",
        set |c, v| c.server.user = opt_string(v)?,
        get |c| q_opt(&c.server.user)),
    key!("server"."group" = r#""""#,
        "the workers' group (default: the primary group of `user`); needs `user`",
        set |c, v| c.server.group = opt_string(v)?,
        get |c| q_opt(&c.server.group)),
    key!("server"."umask" = r#""""#,
        "octal, e.g. `\"0027\"`: applied at start (socket files, pidfile, files the app creates)",
        set |c, v| c.server.umask = opt_mode(v, 0o777)?,
        get |c| mode(c.server.umask)),
    key!("server"."socket_mode" = r#""""#,
        "octal, e.g. `\"0660\"`: permissions of Unix socket files, which are also owned by \
         `user`/`group`",
        set |c, v| c.server.socket_mode = opt_mode(v, 0o7777)?,
        get |c| mode(c.server.socket_mode)),
    key!("server"."control_socket" = r#""""#,
        "a Unix socket (mode 0600, the master's user only; other users are refused by file mode \
         and by a peer-credential check) that answers `status`, `reload`, `scale N` and `stop`, \
         one line each, with one JSON line; used by `rsvisor status` and `rsvisor reload`. \
         Served from the master's poll loop without ever blocking it: a client has 10 s to send \
         each request line and to take each answer, at most 32 are open at once (more get an \
         error line), and a connection may carry many requests",
        set |c, v| c.server.control_socket = opt_path(v)?,
        get |c| q_path(&c.server.control_socket)),
    key!("lifecycle"."timeout" = "30",
        "a worker must be ready within this many seconds of its fork, and once serving must not \
         miss its heartbeat for longer; otherwise its stacks and requests in flight are logged \
         (within 1 s; see Hang forensics), it gets `SIGABRT`, then `SIGKILL` 1 s later, and is \
         replaced",
        set |c, v| c.lifecycle.timeout = seconds(v, false)?,
        get |c| secs(c.lifecycle.timeout)),
    key!("lifecycle"."graceful_timeout" = "30",
        "how long a draining worker (stop, reload, recycling) may take to finish in-flight \
         requests before `SIGKILL`",
        set |c, v| c.lifecycle.graceful_timeout = seconds(v, true)?,
        get |c| secs(c.lifecycle.graceful_timeout)),
    key!("lifecycle"."max_requests" = "0",
        "recycle a worker after this many requests (0 = never)",
        set |c, v| c.lifecycle.max_requests = int_in(v, 0, i64::MAX)? as u64,
        get |c| c.lifecycle.max_requests.to_string()),
    key!("lifecycle"."max_requests_jitter" = "0",
        "each worker draws its own limit in `[max_requests, max_requests + jitter]`",
        set |c, v| c.lifecycle.max_requests_jitter = int_in(v, 0, i64::MAX)? as u64,
        get |c| c.lifecycle.max_requests_jitter.to_string()),
    key!("lifecycle"."shutdown_delay" = "0",
        "after `SIGTERM`, keep serving for this long with `/ready` answering 503, so load \
         balancers stop sending traffic first",
        set |c, v| c.lifecycle.shutdown_delay = seconds(v, true)?,
        get |c| secs(c.lifecycle.shutdown_delay)),
    key!("lifecycle"."max_worker_memory" = r#""""#,
        "e.g. `\"512MiB\"`, `\"2GiB\"`: a worker whose RSS (read each second from /proc) is \
         above this for two checks in a row is replaced like a max_requests worker: its \
         replacement first, then a graceful drain",
        set |c, v| c.lifecycle.max_worker_memory = opt_size(v)?,
        get |c| size(c.lifecycle.max_worker_memory)),
    key!("lifecycle"."max_worker_lifetime" = "0",
        "replace a worker after it has lived this many seconds (0 = never), like a max_requests \
         worker: its replacement first, then a graceful drain. The only recycling by age for \
         `app.command` apps, whose requests rsvisor does not count",
        set |c, v| {
            let d = seconds(v, true)?;
            c.lifecycle.max_worker_lifetime = (!d.is_zero()).then_some(d);
        },
        get |c| secs(c.lifecycle.max_worker_lifetime.unwrap_or_default())),
    key!("lifecycle"."max_worker_lifetime_jitter" = "0",
        "each worker draws its own lifetime in `[max_worker_lifetime, max_worker_lifetime + \
         jitter]` seconds, so that workers started together do not all leave together",
        set |c, v| c.lifecycle.max_worker_lifetime_jitter = seconds(v, true)?,
        get |c| secs(c.lifecycle.max_worker_lifetime_jitter)),
    key!("lifecycle"."canary" = "0",
        "a reload first replaces one worker (the canary) and watches it for this many seconds \
         against the previous generation before replacing the others (0 = off). It is rolled \
         back (the canary drained and replaced by a worker of the previous generation; the \
         reload ends `rolled_back`) if it exits, if its share of 5xx answers exceeds the \
         previous generation's by more than `canary_max_5xx_ratio`, or if its p99 latency is \
         above `canary_max_latency_ratio` times theirs. Both are judged once the canary has \
         answered 50 requests (a 5xx share at once, the latency at the end of the window); \
         a p99 under 5 ms is never too slow. A canary with fewer requests when the window ends \
         is watched up to 3 windows, then let through (the reload's result says it was not \
         judged). With `app.command`, whose \
         requests rsvisor does not see, only exits and heartbeats are judged",
        set |c, v| c.lifecycle.canary = seconds(v, true)?,
        get |c| secs(c.lifecycle.canary)),
    key!("lifecycle"."canary_max_5xx_ratio" = "0.01",
        "how much larger (as a share of all its answers, 0–1) the canary's share of 5xx \
         answers may be than the previous generation's over the same window",
        set |c, v| c.lifecycle.canary_max_5xx_ratio = float_in(v, 0.0, 1.0)?,
        get |c| float(c.lifecycle.canary_max_5xx_ratio)),
    key!("lifecycle"."canary_max_latency_ratio" = "2.0",
        "the canary's p99 latency (from the latency histograms, over the window) may be at \
         most this many times the previous generation's",
        set |c, v| c.lifecycle.canary_max_latency_ratio = float_in(v, 1.0, 1000.0)?,
        get |c| float(c.lifecycle.canary_max_latency_ratio)),
    key!("http"."keepalive_timeout" = "5",
        "close a connection that has had no request in flight for this long; also closes a \
         connection that never sends a byte (0 = no keep-alive)",
        set |c, v| c.http.keepalive_timeout = seconds(v, true)?,
        get |c| secs(c.http.keepalive_timeout)),
    key!("http"."header_read_timeout" = "10",
        "a request head not complete within this time from its first byte (slowloris) gets \
         `408 Request Timeout` and the connection closes; a request body that stalls this long \
         while the app waits for it gets `408` too (HTTP/1.1 and HTTP/2 alike; the app's \
         `RequestBody` yields `BodyError::TimedOut`); also bounds the TLS handshake and a PROXY \
         protocol header",
        set |c, v| c.http.header_read_timeout = seconds(v, false)?,
        get |c| secs(c.http.header_read_timeout)),
    key!("http"."max_header_bytes" = "16384",
        "largest request head (8192–16 MiB); larger heads get `431`",
        // hyper's read buffer cannot be smaller than 8 KiB.
        set |c, v| c.http.max_header_bytes = int_in(v, 8192, 1 << 24)? as usize,
        get |c| c.http.max_header_bytes.to_string()),
    key!("http"."max_headers" = "100",
        "most header fields in a request head (1–1000); more get `431`",
        set |c, v| c.http.max_headers = int_in(v, 1, 1000)? as usize,
        get |c| c.http.max_headers.to_string()),
    key!("http"."max_body_bytes" = "10485760",
        "a larger `Content-Length` gets `413` before the body is read; a chunked body that \
         grows past it gets `413` too (the app's `RequestBody` yields `BodyError::TooLarge`)",
        set |c, v| c.http.max_body_bytes = int_in(v, 0, i64::MAX)? as u64,
        get |c| c.http.max_body_bytes.to_string()),
    key!("http"."limit_concurrency" = "0",
        "per worker: app requests beyond this many in flight get `503` with `Retry-After: 1` at \
         once (0 = unlimited); health, readiness and metrics are exempt",
        set |c, v| c.http.limit_concurrency = int_in(v, 0, 1 << 20)? as usize,
        get |c| c.http.limit_concurrency.to_string()),
    key!("http"."send_timeout" = "30",
        "a response that cannot hand the client a single byte for this long ends (nginx's \
         `send_timeout`: the time between two writes, not the whole response): an HTTP/1.1 \
         connection is closed, an HTTP/2 stream is reset (`RST_STREAM`), and what it held \
         (the app's body, rsvisor's buffers) is freed. Covers clients that stop reading and \
         HTTP/2 flow-control windows that never open",
        set |c, v| c.http.send_timeout = seconds(v, false)?,
        get |c| secs(c.http.send_timeout)),
    key!("http"."upgrade_idle_timeout" = "300",
        "an upgraded connection (a WebSocket) on which no byte moves either way for this long \
         is closed (its socket reset) and counted in `rsvisor_http_upgrade_idle_timeouts_total`; \
         applications that keep idle WebSockets open should ping more often than this",
        set |c, v| c.http.upgrade_idle_timeout = seconds(v, false)?,
        get |c| secs(c.http.upgrade_idle_timeout)),
    key!("http"."compression" = "false",
        "compress responses with gzip, br or zstd, as the request's `Accept-Encoding` asks \
         (tower-http's compression: not for bodies under 32 bytes, images, server-sent events, \
         gRPC or responses that already have a `Content-Encoding`), for every app, the built-in \
         static one included; the static app also serves `file.gz`, `file.br` and `file.zst` \
         next to a file as they are, whatever this says",
        set |c, v| c.http.compression = boolean(v)?,
        get |c| c.http.compression.to_string()),
    key!("http"."http2" = "true",
        "HTTP/2: over TLS by ALPN (`h2`), and on plain sockets with prior knowledge (h2c)",
        set |c, v| c.http.http2 = boolean(v)?,
        get |c| c.http.http2.to_string()),
    key!("http"."http3" = "false",
        "HTTP/3 over QUIC (needs `[tls]`): every TLS TCP address is also served over UDP on \
         the same port, and responses over TCP carry `Alt-Svc: h3=\":PORT\"` so that browsers \
         switch. Each worker owns its connections: a BPF program in the kernel steers every \
         datagram to the worker whose connection ID it carries, across reloads and restarts",
        set |c, v| c.http.http3 = boolean(v)?,
        get |c| c.http.http3.to_string()),
    key!("proxy"."proxy_headers" = "false",
        "honour `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` \
         (RFC 7239, which wins when present)",
        set |c, v| c.proxy.proxy_headers = boolean(v)?,
        get |c| c.proxy.proxy_headers.to_string()),
    key!("proxy"."forwarded_allow_ips" = r#"["127.0.0.1"]"#,
        "peers allowed to set them: IPs and CIDRs (v4 and v6), `\"unix\"` for Unix-socket peers, \
         `\"*\"` for any. The client is the rightmost address in the chain that is not itself in \
         this list, so a client cannot spoof its way in by prepending addresses. The app sees \
         the result as `ClientInfo::of(&req)` (demo: `/client`); the access log logs it.",
        set |c, v| {
            let list = string_list(v)?;
            for entry in &list {
                check_allow_entry(entry)?;
            }
            c.proxy.forwarded_allow_ips = list;
        },
        get |c| list(&c.proxy.forwarded_allow_ips)),
    key!("tls"."cert" = r#""""#,
        "PEM certificate chain; with `key`, every bind uses TLS unless its entry says \
         `tls = false`",
        set |c, v| c.tls.cert = opt_path(v)?,
        get |c| q_path(&c.tls.cert)),
    key!("tls"."key" = r#""""#,
        "PEM private key: RSA, ECDSA or Ed25519 (PKCS#8, PKCS#1 or SEC1)",
        set |c, v| c.tls.key = opt_path(v)?,
        get |c| q_path(&c.tls.key)),
    key!("tls"."client_ca" = r#""""#,
        "PEM CA certificates that sign client certificates",
        set |c, v| c.tls.client_ca = opt_path(v)?,
        get |c| q_path(&c.tls.client_ca)),
    key!("tls"."client_auth" = r#""none""#,
        "`none`, `optional` (verified if sent), `required` (handshake refused without a valid \
         one) — gunicorn's `--cert-reqs 0/1/2`",
        set |c, v| c.tls.client_auth = match one_of(v, ClientAuth::NAMES)? {
            "none" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            _ => ClientAuth::Required,
        },
        get |c| q(c.tls.client_auth.as_str())),
    key!("tls"."session_tickets" = "true",
        "resume TLS sessions (1.3 and 1.2) with stateless tickets whose keys the master creates \
         in shared memory (never on disk), so a client resumes on any worker and across `HUP`; \
         `false` turns resumption off (every handshake is a full one). There is no per-worker \
         session-ID cache; 0-RTT early data only over HTTP/3, with `early_data`",
        set |c, v| c.tls.session_tickets = boolean(v)?,
        get |c| c.tls.session_tickets.to_string()),
    key!("tls"."session_ticket_lifetime" = "86400",
        "seconds a ticket is valid for (at most 604800, TLS 1.3's limit): the master makes a new \
         ticket key this often and keeps the previous one for decryption only, so a ticket is \
         honoured for between one and two lifetimes",
        set |c, v| {
            let d = seconds(v, false)?;
            if d > super::MAX_TICKET_LIFETIME {
                return Err(format!(
                    "{} s is more than TLS 1.3 allows ({} s, 7 days)",
                    d.as_secs(),
                    super::MAX_TICKET_LIFETIME.as_secs()
                ).into());
            }
            if d < super::MIN_TICKET_LIFETIME {
                return Err(format!(
                    "must be at least {} s",
                    super::MIN_TICKET_LIFETIME.as_secs()
                ).into());
            }
            c.tls.session_ticket_lifetime = d;
        },
        get |c| secs(c.tls.session_ticket_lifetime)),
    key!("tls"."early_data" = "false",
        "HTTP/3 only: accept 0-RTT early data from a client resuming a session, a round trip \
         sooner. GET, HEAD and OPTIONS requests in it are served at once and reach the app with \
         `Early-Data: 1` (RFC 8470); other methods wait until the handshake completes. Each \
         session resumes once, from a table every worker shares (2048 sessions, for \
         `session_ticket_lifetime`), so a recorded first flight replays at most once: an \
         idempotent request in early data may run twice, and only apps whose GETs change \
         nothing should turn this on. TLS over TCP never takes early data",
        set |c, v| c.tls.early_data = boolean(v)?,
        get |c| c.tls.early_data.to_string()),
    key!("log"."level" = r#""info""#,
        "a level or a `RUST_LOG`-style filter (`\"info,rsvisor=debug\"`)",
        set |c, v| {
            let level = string(v)?;
            // A bare word is a target to the filter's parser ("verbose"
            // would show only the lines of a crate named verbose, i.e.
            // none): outside `target=level`, only level names are taken.
            const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
            if let Some(bad) = level.split(',').map(str::trim).find(|d| {
                !d.is_empty()
                    && !d.contains(['=', '['])
                    && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
            }) {
                return Err(format!(
                    "{bad:?} is not a level: use one of {} or a filter such as \
                     \"info,rsvisor=debug\"",
                    LEVELS.join(", ")
                ).into());
            }
            tracing_subscriber::EnvFilter::try_new(&level)
                .map_err(|e| ValueError::from(format!("{level:?} is not a level or RUST_LOG filter: {e}")))?;
            c.log.level = level;
        },
        get |c| q(&c.log.level)),
    key!("log"."format" = r#""text""#,
        "`text` or `json` (one JSON object per line)",
        set |c, v| c.log.format = match one_of(v, LogFormat::NAMES)? {
            "text" => LogFormat::Text,
            _ => LogFormat::Json,
        },
        get |c| q(c.log.format.as_str())),
    key!("log"."access_log" = r#""-""#,
        "one line per response to stdout (`\"-\"`), a file path, or nowhere (`\"\"`)",
        set |c, v| c.log.access_log = opt_string(v)?,
        get |c| q_opt(&c.log.access_log)),
    key!("log"."access_format" = r#""combined""#,
        "`combined`: the Apache/nginx combined format followed by the duration in µs and the \
         request id; `json`: one object per line with `time`, `client`, `method`, `path`, \
         `protocol`, `status`, `bytes`, `duration_us`, `user_agent`, `referer`, `request_id`",
        set |c, v| c.log.access_format = match one_of(v, AccessFormat::NAMES)? {
            "combined" => AccessFormat::Combined,
            _ => AccessFormat::Json,
        },
        get |c| q(c.log.access_format.as_str())),
    key!("app"."static_dir" = r#""""#,
        "the built-in app of the `rsvisor` binary serves files from here (content type by \
         extension, `HEAD`, ranges, `Last-Modified`/`If-Modified-Since`, `ETag`/`If-None-Match`); \
         `..` and symlinks that leave the directory answer 404. `check` and a reload refuse a \
         directory that does not exist, is not a directory, or that the worker user \
         (`server.user`) cannot list",
        set |c, v| c.app.static_dir = opt_path(v)?,
        get |c| q_path(&c.app.static_dir)),
    key!("app"."health_path" = r#""/health""#,
        "liveness: `200 {\"status\":\"ok\"}` while the worker's event loop runs",
        set |c, v| c.app.health_path = url_path(v)?,
        get |c| q(&c.app.health_path)),
    key!("app"."ready_path" = r#""/ready""#,
        "readiness: `200 {\"status\":\"ready\",\"checks\":{…}}`; `503` while the server is \
         stopping or the worker draining, or when one of the app's readiness checks fails. Proxy \
         mode: also the path rsvisor probes on a new app process's socket (ready when answered \
         below 500, so a 404 counts; answer 503 to hold traffic back)",
        set |c, v| c.app.ready_path = url_path(v)?,
        get |c| q(&c.app.ready_path)),
    key!("app"."env" = "{}",
        "environment variables set in every worker before the app starts (gunicorn's \
         `raw_env`), e.g. `env = { DATABASE_URL = \"postgres://…\" }`",
        set |c, v| c.app.env = env_table(v)?,
        get |c| env(&c.app.env)),
    key!("app"."command" = "[]",
        "exec mode: every worker runs this program with its arguments (`[\"uvicorn\", \"--fd\", \
         \"3\", \"app:app\"]`; the program is looked up in `PATH`) instead of the built-in app. The \
         `server.bind` sockets are its descriptors 3, 4, … in bind order, with `LISTEN_FDS`, \
         `LISTEN_PID`, `LISTEN_FDNAMES` (systemd's socket-activation protocol), \
         `RSVISOR_WORKER_SLOT` and `RSVISOR_GENERATION`. Its stdout and stderr go to rsvisor's log \
         with the worker's slot, pid and generation (control characters escaped; at most 1,000 \
         lines/s per worker, the rest counted in `rsvisor_app_output_lines_dropped_total`). \
         `metrics.bind` then serves `/metrics`, \
         `/health` and `/ready` of the fleet",
        set |c, v| c.app.command = string_list(v)?,
        get |c| list(&c.app.command)),
    key!("app"."cwd" = r#""""#,
        "exec mode: the program's working directory (default: rsvisor's)",
        set |c, v| c.app.cwd = opt_path(v)?,
        get |c| q_path(&c.app.cwd)),
    key!("app"."ready" = r#""notify""#,
        "exec mode: when a worker counts as ready (for reloads, recycling and systemd's \
         `READY=1`): `\"notify\"` — it sends `READY=1` to its own `NOTIFY_SOCKET`, and from its \
         first `WATCHDOG=1` on (`WATCHDOG_USEC` is `lifecycle.timeout`) those pings are its \
         heartbeat; `\"log:REGEX\"` — a line of its output matches (uvicorn: \
         `\"log:Application startup complete\"`); `\"delay:SECONDS\"` — it stayed alive that long \
         (the weakest: it proves nothing about serving); `\"socket\"` — proxy mode: its socket \
         accepts a connection (proxy mode's default). In proxy mode, once the rule is met, \
         rsvisor also sends `GET app.ready_path` over the socket and waits for an answer below \
         500. Not ready within `lifecycle.timeout` is a boot failure",
        set |c, v| c.app.ready = ready_rule(v)?,
        get |c| q(&c.app.ready.show())),
    key!("app"."stop_signal" = r#""TERM""#,
        "exec mode: the signal that asks a worker to finish and exit (uvicorn and gunicorn: \
         `TERM`); `SIGKILL` to its whole process group follows after \
         `lifecycle.graceful_timeout`. Each worker leads its own process group, and \
         processes the app leaves behind (children that ignore the signal, or left the \
         group) are logged, sent `TERM`, and killed at the end of `graceful_timeout`",
        set |c, v| c.app.stop_signal = stop_signal(v)?,
        get |c| q(c.app.stop_signal.name())),
    key!("app"."mode" = r#""direct""#,
    "how clients reach the processes of `app.command`: `\"direct\"` — each process accepts \
     on the listening sockets itself (descriptors 3, 4, …); `\"proxy\"` — rsvisor's own \
     workers (`app.front_workers`) accept the clients, serve HTTP/1.1, HTTP/2, TLS and every \
     `[http]` limit, and forward each request over a Unix socket to the app process with \
     the fewest requests in flight; `{socket}` in `app.command` is that process's socket \
     path (`uvicorn --uds {socket} main:app`, `gunicorn --bind unix:{socket} wsgi:app`), and \
     rsvisor counts, times and logs every request. `server.workers` is the number of app \
     processes",
    set |c, v| c.app.mode = match one_of(v, &["direct", "proxy"])? {
        "proxy" => AppMode::Proxy,
        _ => AppMode::Direct,
    },
    get |c| q(match c.app.mode {
        AppMode::Direct => "direct",
        AppMode::Proxy => "proxy",
    })),
    key!("app"."front_workers" = r#""auto""#,
        "proxy mode: rsvisor workers in front of the app processes (1–128), or `\"auto\"` = the \
         usable CPUs, at most 4",
        set |c, v| c.app.front_workers = match v {
            Val::Str(s) if s == "auto" => None,
            other => Some(int_in(other, 1, MAX_WORKERS as i64)? as usize),
        },
        get |c| c.app.front_workers.map_or_else(|| q("auto"), |n| n.to_string())),
    key!("app"."max_concurrency" = "0",
        "proxy mode: most requests in flight per app process (0 = unlimited); `1` gives \
         gunicorn's sync-worker semantics without its head-of-line blocking: waiting requests \
         queue in rsvisor, not behind a slow one",
        set |c, v| c.app.max_concurrency = int_in(v, 0, i64::MAX)? as u64,
        get |c| c.app.max_concurrency.to_string()),
    key!("app"."queue_timeout" = "30",
        "proxy mode: how long a request may wait for an app process to take it (none ready, or \
         all at `max_concurrency`) before it is answered `503`",
        set |c, v| c.app.queue_timeout = seconds(v, false)?,
        get |c| secs(c.app.queue_timeout)),
    key!("app"."body_buffer" = "65536",
        "proxy mode: request bodies up to this size (bytes, or `\"64KiB\"`) are held in memory \
         before they are forwarded; larger ones go to an unnamed temporary file in the run \
         directory under `socket_dir`, so many large uploads at once cost disk, not memory \
         (bodies stay bounded by `http.max_body_bytes`)",
        set |c, v| c.app.body_buffer = opt_size(v)?.unwrap_or(0),
        get |c| c.app.body_buffer.to_string()),
    key!("app"."response_buffer" = "1048576",
        "proxy mode: how much of a response (bytes, or `\"1MiB\"`) the front reads from the \
         app process ahead of a client that reads slower, so that the process is free once it \
         has written its answer, as behind nginx's `proxy_buffering` (0: the process writes at \
         the client's pace). Bytes still stream to the client as they arrive; this much (and the \
         read under way from the process) is held per response at most, for at most \
         `http.send_timeout` once the client stops reading",
        set |c, v| c.app.response_buffer = opt_size(v)?.unwrap_or(0),
        get |c| c.app.response_buffer.to_string()),
    key!("app"."socket_dir" = r#""""#,
        "proxy mode: where rsvisor creates the private directory (mode 0700, owned by \
         `server.user`) that holds the app processes' sockets; removed when rsvisor exits \
         (default: the system's temporary directory, `$TMPDIR` or `/tmp`)",
        set |c, v| c.app.socket_dir = opt_path(v)?,
        get |c| q_path(&c.app.socket_dir)),
    key!("metrics"."enabled" = "true",
        "serve Prometheus metrics of the whole fleet (when `false`, workers also skip the \
         per-request metric counters)",
        set |c, v| c.metrics.enabled = boolean(v)?,
        get |c| c.metrics.enabled.to_string()),
    key!("metrics"."path" = r#""/metrics""#,
        "where",
        set |c, v| c.metrics.path = url_path(v)?,
        get |c| q(&c.metrics.path)),
    key!("metrics"."bind" = r#""""#,
        "serve metrics only on this separate address (`\"127.0.0.1:9100\"`, \
         `\"unix:/run/app-metrics.sock\"`), so they need not be public; the main listeners then \
         pass `metrics.path` to the app",
        set |c, v| c.metrics.bind = match opt_string(v)? {
            None => None,
            Some(s) => Some(s.parse()?),
        },
        get |c| q(&c.metrics.bind.as_ref().map(|b| b.to_string()).unwrap_or_default())),
];

fn ready_rule(v: &Val) -> Result<ReadyRule, ValueError> {
    let s = string(v)?;
    if s == "notify" {
        return Ok(ReadyRule::Notify);
    }
    if s == "socket" {
        return Ok(ReadyRule::Socket);
    }
    if let Some(re) = s.strip_prefix("log:") {
        if re.is_empty() {
            return Err("`log:` needs a regular expression, e.g. \"log:startup complete\"".into());
        }
        return regex::Regex::new(re)
            .map(|r| ReadyRule::Log(super::LogPattern(r)))
            .map_err(|e| format!("{re:?} is not a regular expression: {e}").into());
    }
    if let Some(n) = s.strip_prefix("delay:") {
        return Ok(ReadyRule::Delay(seconds(&Val::Str(n.into()), false)?));
    }
    Err(
        format!("{s:?} is not one of \"notify\", \"log:REGEX\", \"delay:SECONDS\", \"socket\"")
            .into(),
    )
}

fn stop_signal(v: &Val) -> Result<super::StopSignal, ValueError> {
    let s = string(v)?;
    let name = s.trim().to_ascii_uppercase();
    let full = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .filter(|sig| {
            !matches!(
                sig,
                nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
            )
        })
        .map(super::StopSignal)
        .ok_or_else(|| format!("{s:?} is not a signal name such as \"TERM\" or \"INT\"").into())
}

fn workers(v: &Val) -> Result<WorkerCount, ValueError> {
    Ok(match v {
        Val::Str(s) if s == "auto" => WorkerCount::Auto,
        Val::Str(s) => match s.parse::<i64>() {
            Ok(n) => WorkerCount::Fixed(int_in(&Val::Int(n), 1, MAX_WORKERS as i64)? as usize),
            Err(_) => return Err(format!("expected an integer or \"auto\", found {s:?}").into()),
        },
        Val::Int(_) => WorkerCount::Fixed(int_in(v, 1, MAX_WORKERS as i64)? as usize),
        other => {
            return Err(format!(
                "expected an integer or \"auto\", found {}",
                other.type_name()
            )
            .into())
        }
    })
}

pub fn find(section: &str, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

pub fn keys_of(section: &str) -> impl Iterator<Item = &'static Key> + '_ {
    KEYS.iter().filter(move |k| k.section == section)
}

/// The configuration every key's default makes.
pub fn defaults() -> Config {
    let mut c = Config::blank();
    for k in KEYS {
        let v = Val::literal(k.default);
        // The table's own literals; `every_default_is_accepted` checks them.
        if let Err(e) = (k.set)(&mut c, &v) {
            debug_assert!(false, "default of {}.{} is refused: {e}", k.section, k.name);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_accepted_and_renders_as_written() {
        let mut c = Config::blank();
        for k in KEYS {
            (k.set)(&mut c, &Val::literal(k.default))
                .unwrap_or_else(|e| panic!("{}.{}: {e}", k.section, k.name));
            assert_eq!((k.get)(&c), k.default, "{}.{}", k.section, k.name);
        }
    }

    #[test]
    fn keys_are_unique_and_in_section_order() {
        let mut seen = std::collections::HashSet::new();
        let mut last_section = 0;
        for k in KEYS {
            assert!(
                seen.insert((k.section, k.name)),
                "{}.{} twice",
                k.section,
                k.name
            );
            let s = SECTIONS
                .iter()
                .position(|s| *s == k.section)
                .expect("known section");
            assert!(
                s >= last_section,
                "{}.{} is out of section order",
                k.section,
                k.name
            );
            last_section = s;
        }
    }
}
