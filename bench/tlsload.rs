//! bench/tls.py's handshake load generator: CONNECTIONS clients, each
//! connecting, handshaking, sending one `Connection: close` request and
//! reading the answer, over and over, for SECONDS. With `--resume` every
//! client keeps its session (tickets) and resumes; without, every
//! handshake is a full one. `--tls12` limits the clients to TLS 1.2.
//! The server's certificate is trusted from CA_PEM.
//!
//!     tlsload HOST:PORT CA_PEM CONNECTIONS SECONDS [--resume] [--tls12]
//!
//! Prints one JSON object: handshakes per second, how many resumed, errors.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    resumed: AtomicU64,
    errors: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: tlsload HOST:PORT CA_PEM CONNECTIONS SECONDS [--resume] [--tls12]");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let ca = &args[2];
    let conns: usize = args[3].parse().expect("CONNECTIONS");
    let secs: u64 = args[4].parse().expect("SECONDS");
    let resume = args.iter().any(|a| a == "--resume");
    let tls12 = args.iter().any(|a| a == "--tls12");

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA_PEM") {
        roots.add(c.expect("a certificate")).expect("a usable CA");
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            // Each client has its own session store, like a browser tab.
            let mut own = config.clone();
            own.resumption = if resume {
                Resumption::in_memory_sessions(4)
            } else {
                Resumption::disabled()
            };
            let connector = TlsConnector::from(Arc::new(own));
            let counts = counts.clone();
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    match once(&connector, &addr).await {
                        Ok(resumed) => {
                            counts.done.fetch_add(1, Relaxed);
                            if resumed {
                                counts.resumed.fetch_add(1, Relaxed);
                            }
                        }
                        Err(e) => {
                            if counts.errors.fetch_add(1, Relaxed) == 0 {
                                eprintln!("tlsload: first error: {e}");
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let done = counts.done.load(Relaxed);
    println!(
        "{{\"handshakes_per_second\": {:.1}, \"handshakes\": {done}, \"resumed\": {}, \"errors\": {}}}",
        done as f64 / elapsed,
        counts.resumed.load(Relaxed),
        counts.errors.load(Relaxed)
    );
}

/// One connection: handshake, one request, the whole answer. True if the
/// handshake resumed a session.
async fn once(connector: &TlsConnector, addr: &str) -> std::io::Result<bool> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("a name");
    let mut tls = connector.connect(name, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(512);
    tls.read_to_end(&mut buf).await.or_else(|e| {
        // A server that closes without close_notify after a complete answer.
        if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200"));
    }
    Ok(resumed)
}
