//! bench/h3.py's load generator: CONNECTIONS HTTP/3 connections (quinn +
//! h3), or with `--h2` HTTP/2-over-TLS ones (hyper + rustls, the same
//! client code otherwise, so that the two protocols are compared with the
//! same client cost), each with STREAMS requests in flight at all times (a
//! new `GET PATH` as soon as one is answered), for SECONDS. The server's
//! certificate is trusted from CA_PEM.
//!
//!     h3load HOST:PORT CA_PEM CONNECTIONS STREAMS SECONDS PATH [--h2]
//!
//! Prints one JSON object: requests answered with 200, other answers and
//! errors, requests per second, p50 and p99 latency in microseconds.
//! Single-threaded, so that `taskset` pins all of it to one CPU.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// How long a connection may take to be made before the run gives up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// A request not answered within this long counts as failed (a server
/// that lost its packets would otherwise hold the run).
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u32>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: h3load HOST:PORT CA_PEM CONNECTIONS STREAMS SECONDS PATH");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("HOST:PORT");
    let ca = &args[2];
    let conns: usize = args[3].parse().expect("CONNECTIONS");
    let streams: usize = args[4].parse().expect("STREAMS");
    let secs: f64 = args[5].parse().expect("SECONDS");
    let path = args[6].clone();
    let h2 = args.iter().any(|a| a == "--h2");

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA_PEM") {
        roots.add(c.expect("a certificate")).expect("a usable CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"h3".to_vec() }];

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let tally = rt.block_on(async move {
        let mut senders = Vec::new();
        for _ in 0..conns {
            let client = tokio::time::timeout(CONNECT_DEADLINE, connect(addr, &tls, h2))
                .await
                .expect("connected in time");
            senders.push(client);
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for send in &senders {
            for _ in 0..streams {
                let (mut send, path) = (send.clone(), path.clone());
                tasks.push(tokio::spawn(async move {
                    let mut t = Tally::default();
                    while Instant::now() < deadline {
                        let begun = Instant::now();
                        match tokio::time::timeout(REQUEST_DEADLINE, one(&mut send, &path)).await {
                            Ok(Ok(200)) => {
                                t.ok += 1;
                                let us = begun.elapsed().as_micros();
                                t.latencies_us.push(us.min(u32::MAX as u128) as u32);
                            }
                            _ => t.failed += 1,
                        }
                    }
                    t
                }));
            }
        }
        let mut all = Tally::default();
        for task in tasks {
            let t = task.await.expect("a load task");
            all.ok += t.ok;
            all.failed += t.failed;
            all.latencies_us.extend(t.latencies_us);
        }
        let elapsed = started.elapsed().as_secs_f64();
        (all, elapsed)
    });
    let (mut all, elapsed) = tally;
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.latencies_us.is_empty() {
            return 0;
        }
        let i = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        all.latencies_us[i]
    };
    println!(
        "{{\"ok\": {}, \"failed\": {}, \"seconds\": {:.3}, \"rps\": {:.1}, \"p50_us\": {}, \"p99_us\": {}}}",
        all.ok,
        all.failed,
        elapsed,
        all.ok as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}

#[derive(Clone)]
enum Client {
    H3(h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>),
    H2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>),
}

/// One connection; its driver runs in a task.
async fn connect(addr: SocketAddr, tls: &rustls::ClientConfig, h2: bool) -> Client {
    if h2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls.clone()))
            .connect(name, tcp)
            .await
            .expect("a TLS handshake");
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 set up");
        tokio::spawn(conn);
        return Client::H2(send);
    }
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.clone()).expect("QUIC TLS");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("a client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("a QUIC handshake");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("HTTP/3 set up");
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Client::H3(send)
}

/// One request to its end: the status.
async fn one(client: &mut Client, path: &str) -> Result<u16, Box<dyn std::error::Error>> {
    match client {
        Client::H3(send) => {
            let req = http::Request::get(format!("https://localhost{path}")).body(())?;
            let mut stream = send.send_request(req).await?;
            stream.finish().await?;
            let resp = stream.recv_response().await?;
            while let Some(mut chunk) = stream.recv_data().await? {
                chunk.advance(chunk.remaining());
            }
            Ok(resp.status().as_u16())
        }
        Client::H2(send) => {
            use http_body_util::BodyExt;
            send.ready().await?;
            let req = http::Request::get(format!("https://localhost{path}"))
                .body(http_body_util::Empty::new())?;
            let resp = send.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok(status)
        }
    }
}
