//! TLS session resumption across workers and reloads: the ticket keys live
//! in memory the master shares with every worker, so a client resumes
//! whichever worker it reaches, before and after a `HUP`; the keys never
//! reach a file; tickets can be turned off.
//!
//! The client is CPython's `ssl` (OpenSSL), as a browser or an HTTP
//! library would resume: tests/support/tls_resume.py.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;

use crate::http_edge::make_pki;
use crate::util::*;

/// What the shared key region starts with (src/tls/tickets.rs).
const MAGIC: &[u8; 16] = b"rsvisor:tickets\0";
const RECONNECTS: usize = 40;

fn tls_server(extra: &str) -> Server {
    let b = demo(&format!(
        r#"
[server]
bind = ["127.0.0.1:0"]
workers = 2
[tls]
cert = "{{dir}}/server.pem"
key = "{{dir}}/server.key"
{extra}
[log]
access_log = "{{dir}}/access.log"
"#
    ));
    make_pki(b.dir());
    b.start()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls_resume.py")
}

/// The Python client; killed on drop so that a failed test leaves nothing.
struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Client {
    fn start(s: &mut Server, version: &str, count: usize, pause: bool) -> Client {
        let Target::Tcp(addr) = s.ready_tcp() else {
            unreachable!("a TCP listener")
        };
        let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
        let mut cmd = Command::new("python3");
        cmd.arg(script())
            .args([host, port])
            .arg(s.dir.path().join("ca.pem"))
            .args([version, &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if pause {
            cmd.arg("--pause");
        }
        Client(cmd.spawn().expect("python3 is installed"))
    }

    fn line(&mut self) -> String {
        let out = self.0.stdout.as_mut().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("client output");
        line
    }

    /// How many reconnects resumed, and how many reconnects reached another
    /// worker than the one before and how many of those resumed.
    fn result(mut self) -> (usize, (u64, u64)) {
        let line = self.line();
        let status = self.0.wait().expect("client exit");
        assert!(status.success(), "client failed: {status}, said {line:?}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON from the client");
        let resumed = v["resumed"].as_u64().expect("resumed") as usize;
        let switches = v["switches"].as_u64().expect("switches");
        let switches_resumed = v["switches_resumed"].as_u64().expect("switches_resumed");
        (resumed, (switches, switches_resumed))
    }
}

fn resumes_across_workers(version: &str) {
    if !have("python3", "CPython's ssl module is the TLS client") {
        return;
    }
    let mut s = tls_server("");
    let (resumed, (switches, switches_resumed)) =
        Client::start(&mut s, version, RECONNECTS, false).result();
    assert!(
        resumed >= RECONNECTS - 2,
        "TLS {version}: {resumed} of {RECONNECTS} reconnects resumed"
    );
    // A session issued by one worker resumed on the other: the client
    // reconnects until that happened at least once.
    assert!(
        switches >= 1,
        "TLS {version}: every connection reached one worker"
    );
    assert_eq!(
        switches_resumed, switches,
        "TLS {version}: reconnects to another worker that resumed"
    );
}

#[test]
fn tls13_sessions_resume_on_every_worker() {
    resumes_across_workers("1.3");
}

#[test]
fn tls12_sessions_resume_on_every_worker() {
    resumes_across_workers("1.2");
}

#[test]
fn a_ticket_issued_before_a_reload_resumes_on_the_new_workers() {
    if !have("python3", "CPython's ssl module is the TLS client") {
        return;
    }
    for version in ["1.3", "1.2"] {
        let mut s = tls_server("");
        let before = s.wait_settled(START_TIMEOUT);
        let mut client = Client::start(&mut s, version, 4, true);
        assert_eq!(client.line().trim(), "have-session");
        s.signal(Signal::SIGHUP);
        s.wait_reloads(1, START_TIMEOUT);
        let after = s.wait_settled(START_TIMEOUT);
        let old: Vec<u32> = before.workers.iter().map(|w| w.pid).collect();
        assert!(
            after.workers.iter().all(|w| !old.contains(&w.pid)),
            "the reload kept a worker"
        );
        let stdin = client.0.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("tell the client");
        let (resumed, _) = client.result();
        assert_eq!(
            resumed, 4,
            "TLS {version}: reconnects after HUP resumed {resumed} of 4"
        );
    }
}

#[test]
fn with_session_tickets_off_nothing_resumes() {
    if !have("python3", "CPython's ssl module is the TLS client") {
        return;
    }
    let mut s = tls_server("session_tickets = false");
    for version in ["1.3", "1.2"] {
        let (resumed, _) = Client::start(&mut s, version, 10, false).result();
        assert_eq!(resumed, 0, "TLS {version}: resumed with tickets off");
    }
}

/// The shared mappings of `pid` (`rw-s`), with their smaps flags.
fn shared_mappings(pid: i32) -> Vec<(u64, u64, String)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| line.contains(" rw-s ")) {
            let parse = |x: &str| u64::from_str_radix(x, 16).expect("hex address");
            current = Some((parse(a), parse(b)));
        } else if first.contains('-') && !first.ends_with(':') {
            current = None;
        } else if let (Some(flags), Some((a, b))) = (line.strip_prefix("VmFlags:"), current) {
            out.push((a, b, flags.trim().to_string()));
        }
    }
    out
}

/// The live ticket keys, read from the master's memory: (key, smaps flags).
fn ticket_keys_of(pid: i32) -> (Vec<[u8; 32]>, String) {
    use std::io::{Read, Seek, SeekFrom};
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("read /proc/PID/mem");
    for (start, end, flags) in shared_mappings(pid) {
        let mut buf = vec![0u8; (end - start) as usize];
        mem.seek(SeekFrom::Start(start)).expect("seek");
        if mem.read_exact(&mut buf).is_err() {
            continue;
        }
        let Some(at) = buf.windows(16).position(|w| w == MAGIC) else {
            continue;
        };
        // magic (16), seq (8), next nonce (8), then two slots of
        // name (16) and key (32).
        let slots = &buf[at + 32..at + 32 + 2 * 48];
        let keys = slots
            .chunks(48)
            .map(|s| <[u8; 32]>::try_from(&s[16..48]).expect("32 bytes"))
            .filter(|k| k != &[0u8; 32])
            .collect();
        return (keys, flags);
    }
    panic!("no ticket key region in the master's shared mappings")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

#[test]
fn the_ticket_key_stays_in_memory_and_out_of_every_file() {
    if !have("python3", "CPython's ssl module is the TLS client") {
        return;
    }
    let mut s = tls_server("");
    // Traffic, a reload and its log lines: everything that writes.
    let (resumed, _) = Client::start(&mut s, "1.3", 5, false).result();
    assert!(resumed >= 4, "{resumed}");
    s.signal(Signal::SIGHUP);
    s.wait_reloads(1, START_TIMEOUT);
    let (resumed, _) = Client::start(&mut s, "1.2", 5, false).result();
    assert!(resumed >= 4, "{resumed}");
    let (keys, flags) = ticket_keys_of(s.pid());
    assert_eq!(keys.len(), 1, "one key before the first rotation");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    assert!(
        flags.contains(&"dd"),
        "not excluded from core dumps: {flags:?}"
    );
    let mut files = Vec::new();
    files_under(s.dir.path(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("access.log")));
    for key in &keys {
        let needles = [
            key.to_vec(),
            hex(key).into_bytes(),
            hex(key).to_uppercase().into_bytes(),
            base64(key).into_bytes(),
        ];
        for f in &files {
            let text = std::fs::read(f).expect("read a written file");
            for n in &needles {
                assert!(
                    !text.windows(n.len()).any(|w| w == n.as_slice()),
                    "the ticket key is in {}",
                    f.display()
                );
            }
        }
    }
    s.signal(Signal::SIGTERM);
    assert!(s.expect_exit(START_TIMEOUT).success());
}

/// TLS connections are not parked (see src/worker/park.rs): an idle one
/// stays with hyper and answers its next request.
#[test]
fn an_idle_tls_keep_alive_connection_answers_its_next_request() {
    if !have("python3", "CPython's ssl module is the TLS client") {
        return;
    }
    let mut s = tls_server("");
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!("a TCP listener")
    };
    let (_, port) = addr.rsplit_once(':').expect("HOST:PORT");
    let ca = s.dir.path().join("ca.pem");
    let script = format!(
        "import http.client, ssl, time\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         c = http.client.HTTPSConnection('127.0.0.1', {port}, context=ctx, timeout=20)\n\
         out = []\n\
         for _ in range(3):\n\
         \x20   c.request('GET', '/pid')\n\
         \x20   r = c.getresponse()\n\
         \x20   out.append('%d %s' % (r.status, r.read().decode()))\n\
         \x20   time.sleep(0.3)\n\
         print(len(set(out)), out[0].split()[0])\n",
        ca = ca.display().to_string()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same answer three times (one connection, so one worker), 200.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 200");
}
