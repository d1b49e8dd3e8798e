//! bench/run's load generator for the scenarios wrk cannot report:
//! requests and errors per second (the reload and recycling timelines) and
//! which worker answered (fairness, from `/pid` bodies). A client that never
//! retries: a failed request is counted and its connection replaced.
//!
//!     loadgen URL CONNECTIONS SECONDS [--close] [--bodies]
//!
//! Prints one JSON object.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default, Clone)]
struct Stats {
    ok: Vec<u64>,
    errors: Vec<u64>,
    bodies: HashMap<String, u64>,
    latencies_us: Vec<u32>,
}

impl Stats {
    fn bump(v: &mut Vec<u64>, sec: usize) {
        if v.len() <= sec {
            v.resize(sec + 1, 0);
        }
        v[sec] += 1;
    }
}

struct Opts {
    host: String,
    path: String,
    close: bool,
    bodies: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: loadgen URL CONNECTIONS SECONDS [--close] [--bodies]");
        std::process::exit(2);
    }
    let url = args[1]
        .strip_prefix("http://")
        .unwrap_or(&args[1])
        .to_string();
    let (host, path) = match url.find('/') {
        Some(i) => (url[..i].to_string(), url[i..].to_string()),
        None => (url.clone(), "/".to_string()),
    };
    let conns: usize = args[2].parse().expect("CONNECTIONS");
    let secs: u64 = args[3].parse().expect("SECONDS");
    let opts = std::sync::Arc::new(Opts {
        host,
        path,
        close: args.iter().any(|a| a == "--close"),
        bodies: args.iter().any(|a| a == "--bodies"),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let total = rt.block_on(async move {
        let tasks: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(client(opts.clone(), start, deadline)))
            .collect();
        let mut total = Stats::default();
        for t in tasks {
            let s = t.await.expect("client task");
            for (i, n) in s.ok.iter().enumerate() {
                for _ in 0..*n {
                    Stats::bump(&mut total.ok, i);
                }
            }
            for (i, n) in s.errors.iter().enumerate() {
                for _ in 0..*n {
                    Stats::bump(&mut total.errors, i);
                }
            }
            for (k, v) in s.bodies {
                *total.bodies.entry(k).or_default() += v;
            }
            total.latencies_us.extend(s.latencies_us);
        }
        total
    });
    let secs = secs as usize;
    let mut ok = total.ok.clone();
    let mut errors = total.errors.clone();
    ok.resize(secs, 0);
    errors.resize(secs, 0);
    let mut lat = total.latencies_us;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let out = serde_json::json!({
        "ok": ok,
        "errors": errors,
        "total_ok": ok.iter().sum::<u64>(),
        "total_errors": errors.iter().sum::<u64>(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "bodies": total.bodies,
    });
    println!("{out}");
}

async fn client(opts: std::sync::Arc<Opts>, start: Instant, deadline: Instant) -> Stats {
    let mut stats = Stats::default();
    let mut stream: Option<TcpStream> = None;
    let mut buf = vec![0u8; 16 * 1024];
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        opts.path,
        opts.host,
        if opts.close {
            "Connection: close\r\n"
        } else {
            ""
        }
    );
    while Instant::now() < deadline {
        let sec = start.elapsed().as_secs() as usize;
        let t0 = Instant::now();
        if stream.is_none() {
            match TcpStream::connect(&opts.host).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(_) => {
                    Stats::bump(&mut stats.errors, sec);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected");
        match exchange(s, req.as_bytes(), &mut buf).await {
            Ok((status, keep, body)) if (200..300).contains(&status) => {
                Stats::bump(&mut stats.ok, sec);
                stats.latencies_us.push(t0.elapsed().as_micros() as u32);
                if opts.bodies {
                    *stats.bodies.entry(body).or_default() += 1;
                }
                if !keep {
                    stream = None;
                }
            }
            _ => {
                Stats::bump(&mut stats.errors, sec);
                stream = None;
            }
        }
    }
    stats
}

/// One request and its response: (status, keep-alive, body).
async fn exchange(
    s: &mut TcpStream,
    req: &[u8],
    buf: &mut [u8],
) -> std::io::Result<(u16, bool, String)> {
    s.write_all(req).await?;
    let mut filled = 0;
    let head_end = loop {
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if filled == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let keep = !head.contains("connection: close");
    let mut body = buf[head_end..filled].to_vec();
    while body.len() < len {
        let n = s.read(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok((
        status,
        keep,
        String::from_utf8_lossy(&body[..len]).into_owned(),
    ))
}
