//! The access log: one line per response, `combined` (with duration and
//! request id appended) or `json`, to stdout or a file. A writer thread per
//! worker formats and writes, so a slow disk never blocks request handling
//! (when its queue is full, lines are dropped and counted). USR1 reopens the
//! file, for logrotate.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};

use crate::config::{AccessFormat, LogConfig};
use crate::shm::scoreboard::Slot;
use crate::telemetry::throttle::Throttle;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE_LINES: usize = 16 * 1024;
/// Largest single write: at most PIPE_BUF, so lines from different workers
/// sharing one pipe (journald) never interleave.
const WRITE_CHUNK: usize = 4096;
/// How long the writer waits for more lines before it writes what it has.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// One finished request.
pub struct Entry {
    pub time: SystemTime,
    pub client: Option<std::net::IpAddr>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub status: u16,
    pub bytes: u64,
    /// `os::monotonic_us` when the request arrived; the line's duration
    /// runs to when it is logged (HTTP/1.1: when its last byte left hyper).
    pub started_us: u64,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    /// Why the response did not reach the client whole, if it did not.
    pub incomplete: Option<&'static str>,
}

enum Msg {
    /// With its duration in microseconds.
    Entry(Box<Entry>, u64),
    Reopen,
}

#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Target {
    Stdout,
    File(PathBuf),
}

impl AccessLog {
    /// `None` when `log.access_log` is off.
    pub fn start(cfg: &LogConfig, slot: &'static Slot) -> io::Result<Option<AccessLog>> {
        let target = match cfg.access_log.as_deref() {
            None => return Ok(None),
            Some("-") => Target::Stdout,
            Some(path) => Target::File(PathBuf::from(path)),
        };
        let out = open(&target)?;
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            target,
            out,
            format: cfg.access_format,
            pid: std::process::id(),
            next_id: 0,
            dropped: dropped.clone(),
            reported_drops: 0,
            slot,
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Some(AccessLog { tx, dropped }))
    }

    pub fn log(&self, entry: Box<Entry>) {
        let duration_us = crate::os::monotonic_us().saturating_sub(entry.started_us);
        match self.tx.try_send(Msg::Entry(entry, duration_us)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub fn reopen(&self) {
        // Blocking send: a reopen must not be lost.
        let _ = self.tx.send(Msg::Reopen);
    }
}

fn open(target: &Target) -> io::Result<File> {
    match target {
        Target::Stdout => Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?)),
        Target::File(p) => OpenOptions::new().create(true).append(true).open(p),
    }
}

struct Writer {
    target: Target,
    out: File,
    format: AccessFormat,
    pid: u32,
    next_id: u64,
    dropped: Arc<AtomicU64>,
    reported_drops: u64,
    slot: &'static Slot,
}

static WRITE_ERRORS: Throttle = Throttle::new();
static DROPS: Throttle = Throttle::new();

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf = Vec::with_capacity(2 * WRITE_CHUNK);
        let mut line = String::with_capacity(512);
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    self.write(&mut buf);
                    match rx.recv_timeout(FLUSH_INTERVAL) {
                        Ok(m) => m,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            match msg {
                Msg::Entry(e, duration_us) => {
                    line.clear();
                    self.format(&e, duration_us, &mut line);
                    if buf.len() + line.len() > WRITE_CHUNK {
                        self.write(&mut buf);
                    }
                    buf.extend_from_slice(line.as_bytes());
                }
                Msg::Reopen => {
                    self.write(&mut buf);
                    match open(&self.target) {
                        Ok(f) => self.out = f,
                        Err(e) => tracing::error!(error = %e, "cannot reopen the access log"),
                    }
                }
            }
        }
        self.write(&mut buf);
    }

    fn write(&mut self, buf: &mut Vec<u8>) {
        let dropped = self.dropped.load(Relaxed);
        if dropped > self.reported_drops {
            let lines = dropped - self.reported_drops;
            self.slot.count_access_log_dropped(lines);
            self.reported_drops = dropped;
            if let Some(suppressed) = DROPS.admit() {
                tracing::warn!(
                    lines,
                    suppressed,
                    "access log could not keep up; lines dropped \
                     (counted in rsvisor_access_log_dropped_lines_total)"
                );
            }
        }
        if buf.is_empty() {
            return;
        }
        // A failing log must not take the worker down; the error is said
        // once per interval and counted.
        if let Err(e) = self.out.write_all(buf) {
            self.slot.count_access_log_write_error();
            if let Some(suppressed) = WRITE_ERRORS.admit() {
                tracing::error!(
                    error = %e,
                    suppressed,
                    "access log write failed (counted in rsvisor_access_log_write_errors_total)"
                );
            }
        }
        buf.clear();
    }

    fn format(&mut self, e: &Entry, duration_us: u64, out: &mut String) {
        use std::fmt::Write as _;
        self.next_id += 1;
        let generated;
        let request_id = match e.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            Some(id) => id,
            None => {
                generated = format!("{:x}-{:x}", self.pid, self.next_id);
                &generated
            }
        };
        let client = e
            .client
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "-".into());
        let ua = e.user_agent.as_ref().map(lossy).unwrap_or_default();
        let referer = e.referer.as_ref().map(lossy).unwrap_or_default();
        let secs = e
            .time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        match self.format {
            AccessFormat::Combined => {
                let _ = writeln!(
                    out,
                    "{client} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" {} {}",
                    clf_time(secs as i64),
                    e.method,
                    escape(&e.uri.to_string()),
                    e.version,
                    e.status,
                    e.bytes,
                    escape(if referer.is_empty() { "-" } else { &referer }),
                    escape(if ua.is_empty() { "-" } else { &ua }),
                    duration_us,
                    escape(request_id),
                );
                if let Some(why) = e.incomplete {
                    // Only on a cut response, so lines of whole ones keep
                    // the usual columns.
                    out.pop();
                    let _ = writeln!(out, " incomplete={why}");
                }
            }
            AccessFormat::Json => {
                let v = serde_json::json!({
                    "time": rfc3339(secs),
                    "client": client,
                    "method": e.method.as_str(),
                    "path": e.uri.to_string(),
                    "protocol": format!("{:?}", e.version),
                    "status": e.status,
                    "bytes": e.bytes,
                    "duration_us": duration_us,
                    "user_agent": ua,
                    "referer": referer,
                    "request_id": request_id,
                });
                let mut v = v;
                if let Some(why) = e.incomplete {
                    v["incomplete"] = why.into();
                }
                let _ = writeln!(out, "{v}");
            }
        }
    }
}

fn lossy(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// Quotes and control characters escaped, so a line stays one line.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `26/Nov/2026:21:35:24 +0000`
fn clf_time(secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

/// `2026-11-26T21:35:24.123Z`
fn rfc3339(secs: f64) -> String {
    let whole = secs.floor() as i64;
    let ms = ((secs - whole as f64) * 1000.0) as u32;
    let (y, m, d) = civil(whole.div_euclid(86_400));
    let t = whole.rem_euclid(86_400);
    format!(
        "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(clf_time(0), "01/Jan/1970:00:00:00 +0000");
        // 2026-11-26 21:35:24 UTC
        assert_eq!(clf_time(1_795_728_924), "26/Nov/2026:21:35:24 +0000");
        assert_eq!(rfc3339(951_782_400.5), "2000-02-29T00:00:00.500Z");
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\x0ad");
    }
}
