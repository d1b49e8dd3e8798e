//! HTTP/3 (`http.http3`): the demo answers over QUIC on the TLS port, TCP
//! responses offer it with `Alt-Svc`, every connection's packets reach the
//! worker that owns it (many connections to two workers, all answered),
//! a request in flight completes across a `HUP` while new connections go
//! to the new generation, and `check` refuses what cannot serve QUIC.
//!
//! The client is quinn + h3, as a Rust HTTP/3 client would be.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use nix::sys::signal::Signal;

use crate::http_edge::make_pki;
use crate::util::*;

/// Every wait of a client: generous, never reached when things work.
const CLIENT_DEADLINE: Duration = Duration::from_secs(20);

fn h3_server(workers: usize) -> Server {
    h3_server_with(workers, "", "", "")
}

/// With more keys in `[http]` and `[tls]`, and `more` sections.
fn h3_server_with(workers: usize, http: &str, tls: &str, more: &str) -> Server {
    h3_server_at(r#"["127.0.0.1:0"]"#, workers, http, tls, more)
}

/// On the addresses of `bind` (TOML).
fn h3_server_at(bind: &str, workers: usize, http: &str, tls: &str, more: &str) -> Server {
    let b = demo(&format!(
        r#"
[server]
bind = {bind}
workers = {workers}
[http]
http3 = true
{http}
[tls]
cert = "{{dir}}/server.pem"
key = "{{dir}}/server.key"
{tls}
{more}
"#
    ));
    make_pki(b.dir());
    b.start()
}

fn client_endpoint(ca: &Path) -> quinn::Endpoint {
    client_endpoint_counting(ca).0
}

/// A client endpoint, and how many times it has verified the server's
/// certificate: a resumed TLS 1.3 handshake sends none, so the count
/// stays put when a connection resumes.
fn client_endpoint_counting(ca: &Path) -> (quinn::Endpoint, Arc<AtomicUsize>) {
    client_endpoint_with(
        ca,
        false,
        Arc::new(rustls::client::ClientSessionMemoryCache::new(32)),
    )
}

/// A client endpoint that sends 0-RTT data when it can (`early_data`) and
/// keeps its tickets in `sessions`.
fn client_endpoint_with(
    ca: &Path,
    early_data: bool,
    sessions: Arc<dyn rustls::client::ClientSessionStore>,
) -> (quinn::Endpoint, Arc<AtomicUsize>) {
    let (config, verified) = client_config(ca, early_data, sessions);
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("a client endpoint");
    endpoint.set_default_client_config(config);
    (endpoint, verified)
}

/// The client's QUIC configuration, and its count of certificate checks.
fn client_config(
    ca: &Path,
    early_data: bool,
    sessions: Arc<dyn rustls::client::ClientSessionStore>,
) -> (quinn::ClientConfig, Arc<AtomicUsize>) {
    let roots = test_roots(ca);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("a verifier");
    let verified = Arc::new(AtomicUsize::new(0));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Counting {
            inner: webpki,
            verified: verified.clone(),
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early_data;
    tls.resumption = rustls::client::Resumption::store(sessions);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    (quinn::ClientConfig::new(Arc::new(crypto)), verified)
}

/// The usual certificate checks, counted.
#[derive(Debug)]
struct Counting {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    verified: Arc<AtomicUsize>,
}

impl rustls::client::danger::ServerCertVerifier for Counting {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.verified.fetch_add(1, Relaxed);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>;

/// A new HTTP/3 connection; its driver runs in a task until it closes.
async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> SendRequest {
    let conn = tokio::time::timeout(CLIENT_DEADLINE, async {
        endpoint
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("QUIC handshake")
    })
    .await
    .expect("handshake within the deadline");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("HTTP/3 setup");
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    send
}

/// GET `path`: the status, the body, or the error.
async fn get3(send: &mut SendRequest, path: &str) -> Result<(u16, String), String> {
    request3(send, "GET", path, &[], b"").await
}

/// One request with `headers` and `body`: the status, the body, or the
/// error.
async fn request3(
    send: &mut SendRequest,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let fut = async {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(()).unwrap();
        let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !body.is_empty() {
            let data = bytes::Bytes::copy_from_slice(body);
            stream.send_data(data).await.map_err(|e| e.to_string())?;
        }
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                body.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        Ok((
            resp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    };
    tokio::time::timeout(CLIENT_DEADLINE, fut)
        .await
        .map_err(|_| NO_ANSWER.to_string())?
}

fn udp_addr(s: &mut Server) -> SocketAddr {
    let Target::Tcp(addr) = s.ready_tcp() else {
        unreachable!("a TCP listener")
    };
    addr.parse().expect("HOST:PORT")
}

#[test]
fn the_demo_answers_over_http3_and_tcp_offers_it() {
    let mut s = h3_server(2);
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let rt = rt();
    rt.block_on(async {
        let resp = tcp_get(addr, &ca, "/").await;
        let offer = resp
            .headers()
            .get("alt-svc")
            .expect("Alt-Svc on a TLS response")
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(offer, format!("h3=\":{}\"; ma=86400", addr.port()));

        let endpoint = client_endpoint(&ca);
        let mut send = connect(&endpoint, addr).await;
        let (status, body) = get3(&mut send, "/").await.expect("an HTTP/3 answer");
        assert_eq!(status, 200, "{body}");

        // Twenty connections to two workers, ten requests each: a packet
        // that reached the worker not owning its connection would stall
        // or reset it.
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let endpoint = endpoint.clone();
            tasks.push(tokio::spawn(async move {
                let mut send = connect(&endpoint, addr).await;
                let mut pids = std::collections::BTreeSet::new();
                for _ in 0..10 {
                    let (status, body) = get3(&mut send, "/pid").await?;
                    if status != 200 {
                        return Err(format!("status {status}: {body}"));
                    }
                    pids.insert(body.trim().to_string());
                }
                Ok::<_, String>(pids)
            }));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in tasks {
            let pids = t
                .await
                .expect("client task")
                .expect("every request answered");
            // One connection, one worker.
            assert_eq!(pids.len(), 1, "{pids:?}");
            seen.extend(pids);
        }
        assert_eq!(seen.len(), 2, "both workers took connections: {seen:?}");

        // Counted by protocol (a scrape is rendered before it is counted).
        let (status, metrics) = get3(&mut send, "/metrics").await.expect("a scrape");
        assert_eq!(status, 200, "{metrics}");
        let by = |p: &str| {
            metric(
                &metrics,
                &format!("rsvisor_http_requests_by_protocol_total{{protocol=\"{p}\"}}"),
            )
        };
        assert_eq!((by("h1"), by("h2"), by("h3")), (1.0, 0.0, 201.0));
    });
    let st = s.status().expect("status");
    assert_eq!(st.http3.len(), 1, "{st:?}");
    let group = &st.http3[0];
    assert_eq!(group.udp, addr.to_string());
    let mut slots: Vec<usize> = st.workers.iter().map(|w| w.slot).collect();
    slots.sort_unstable();
    assert_eq!(group.new_connection_slots, slots);
    assert!(
        group.steering.starts_with("classic BPF"),
        "{}",
        group.steering
    );
}

#[test]
fn a_request_in_flight_completes_across_a_hup_and_new_connections_reach_the_new_workers() {
    let mut s = h3_server(2);
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let before: std::collections::BTreeSet<String> =
        s.workers().iter().map(|p| p.to_string()).collect();
    let rt = rt();
    rt.block_on(async {
        let endpoint = client_endpoint(&ca);
        let mut send = connect(&endpoint, addr).await;
        let (status, old) = get3(&mut send, "/pid").await.expect("an answer");
        assert_eq!(status, 200);
        let mut slow_send = send.clone();
        let slow = tokio::spawn(async move { get3(&mut slow_send, "/sleep?ms=3000").await });
        // The request is in the worker before the reload starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.signal(Signal::SIGHUP);
        s.wait_reloads(1, Duration::from_secs(30));
        let (status, _) = slow
            .await
            .unwrap()
            .expect("the request in flight is answered");
        assert_eq!(status, 200);
        assert!(before.contains(old.trim()), "{old} was an old worker");

        // New connections go to the new generation only.
        for _ in 0..6 {
            let mut send = connect(&endpoint, addr).await;
            let (status, pid) = get3(&mut send, "/pid")
                .await
                .expect("an answer after the HUP");
            assert_eq!(status, 200);
            assert!(!before.contains(pid.trim()), "{pid} is an old worker");
        }
    });
}

#[test]
fn a_kill_9_of_one_worker_leaves_the_other_workers_connections_alone() {
    let mut s = h3_server(2);
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let rt = rt();
    rt.block_on(async {
        let endpoint = client_endpoint(&ca);
        // A connection on each worker (new connections are spread by the
        // client's ID: a few tries find both).
        let mut by_pid = std::collections::BTreeMap::new();
        for _ in 0..40 {
            let mut send = connect(&endpoint, addr).await;
            let (status, pid) = get3(&mut send, "/pid").await.expect("an answer");
            assert_eq!(status, 200);
            by_pid.entry(pid.trim().to_string()).or_insert(send);
            if by_pid.len() == 2 {
                break;
            }
        }
        assert_eq!(by_pid.len(), 2, "both workers took a connection");
        let mut conns = by_pid.into_iter();
        let (victim, _) = conns.next().unwrap();
        let (survivor, mut send) = conns.next().unwrap();
        kill(victim.parse().unwrap(), Signal::SIGKILL);
        for _ in 0..5 {
            let (status, pid) = get3(&mut send, "/pid")
                .await
                .expect("the other worker's connection keeps answering");
            assert_eq!(status, 200);
            assert_eq!(pid.trim(), survivor);
        }
        for _ in 0..4 {
            let mut send = connect(&endpoint, addr).await;
            let (status, _) = get3(&mut send, "/pid").await.expect("new connections work");
            assert_eq!(status, 200);
        }
    });
}

/// The `[http]` limits hold over HTTP/3 as over TCP: too many header
/// fields get 431, a body past `max_body_bytes` 413 (the app's
/// `RequestBody` refuses it), a body within it is echoed whole.
#[test]
fn the_http_limits_hold_over_http3() {
    let mut s = h3_server_with(1, "max_headers = 8\nmax_body_bytes = 1000", "", "");
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    rt().block_on(async {
        let endpoint = client_endpoint(&ca);
        let mut send = connect(&endpoint, addr).await;
        let many: Vec<(String, String)> =
            (0..12).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let (status, _) = request3(&mut send, "GET", "/", &many, b"")
            .await
            .expect("an answer");
        assert_eq!(status, 431);
        let (status, body) = request3(&mut send, "POST", "/echo", &[], &[b'a'; 600])
            .await
            .expect("an answer");
        assert_eq!((status, body.len()), (200, 600));
        let (status, _) = request3(&mut send, "POST", "/echo", &[], &[b'a'; 5000])
            .await
            .expect("an answer");
        assert_eq!(status, 413);
        // The connection still serves.
        let (status, _) = get3(&mut send, "/").await.expect("an answer");
        assert_eq!(status, 200);
    });
}

/// The session ticket of one worker resumes on the other and, after a HUP,
/// on the new generation: every worker shares the master's ticket keys.
#[test]
fn a_ticket_resumes_on_the_other_worker_and_after_a_hup() {
    let mut s = h3_server(2);
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let rt = rt();
    let first = rt.block_on(async {
        let (endpoint, verified) = client_endpoint_counting(&ca);
        let mut send = connect(&endpoint, addr).await;
        let (_, first) = get3(&mut send, "/pid").await.expect("an answer");
        assert_eq!(
            verified.load(Relaxed),
            1,
            "the first handshake is a full one"
        );
        // New connections, each resuming with a ticket the previous one
        // got, until one lands on the other worker.
        for _ in 0..40 {
            let mut send = connect(&endpoint, addr).await;
            let (_, pid) = get3(&mut send, "/pid").await.expect("an answer");
            assert_eq!(
                verified.load(Relaxed),
                1,
                "a resumed handshake sends no certificate"
            );
            if pid != first {
                return (endpoint, verified);
            }
        }
        panic!("no connection reached the other worker");
    });
    let (endpoint, verified) = first;
    let before: Vec<String> = s.workers().iter().map(|p| p.to_string()).collect();
    s.signal(Signal::SIGHUP);
    s.wait_reloads(1, Duration::from_secs(30));
    rt.block_on(async {
        let mut send = connect(&endpoint, addr).await;
        let (_, pid) = get3(&mut send, "/pid")
            .await
            .expect("an answer after the HUP");
        assert!(!before.contains(&pid), "{pid} is of the new generation");
        assert_eq!(verified.load(Relaxed), 1, "resumed across the HUP");
    });
}

/// rustls's ticket store, counting the tickets it is given (a test waits
/// for one before it resumes).
#[derive(Debug)]
struct CountedTickets {
    inner: rustls::client::ClientSessionMemoryCache,
    received: AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountedTickets {
    fn set_kx_hint(&self, name: rustls_pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }

    fn kx_hint(&self, name: &rustls_pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }

    fn set_tls12_session(
        &self,
        name: rustls_pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }

    fn tls12_session(
        &self,
        name: &rustls_pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }

    fn remove_tls12_session(&self, name: &rustls_pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }

    fn insert_tls13_ticket(
        &self,
        name: rustls_pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(name, value);
        self.received.fetch_add(1, Relaxed);
    }

    fn take_tls13_ticket(
        &self,
        name: &rustls_pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

impl CountedTickets {
    async fn wait_for(&self, n: usize) {
        tokio::time::timeout(CLIENT_DEADLINE, async {
            while self.received.load(Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no ticket {n} from the server"));
    }
}

/// A UDP relay between a client and the server that keeps a copy of every
/// datagram the client sends while `recording` is set. Once the server has
/// answered, what the client sends next arrives `lag` later: its first
/// flight (a resumed client's 0-RTT requests) comes at once, its handshake's
/// end late, so the server certainly reads those requests before the
/// handshake completes.
struct Relay {
    addr: SocketAddr,
    recorded: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    recording: Arc<std::sync::atomic::AtomicBool>,
}

async fn relay(server: SocketAddr, lag: Duration) -> Relay {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let r = Relay {
        addr: front.local_addr().unwrap(),
        recorded: Default::default(),
        recording: Default::default(),
    };
    let (recorded, recording) = (r.recorded.clone(), r.recording.clone());
    // Ends with the test's runtime.
    tokio::spawn(async move {
        let (mut up, mut down) = ([0u8; 2048], [0u8; 2048]);
        let mut client = None;
        let mut answered = false;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    client = Some(from);
                    let datagram = up[..n].to_vec();
                    if recording.load(Relaxed) {
                        recorded.lock().unwrap().push(datagram.clone());
                    }
                    if answered {
                        let back = back.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(lag).await;
                            let _ = back.send(&datagram).await;
                        });
                    } else {
                        let _ = back.send(&datagram).await;
                    }
                }
                Ok(n) = back.recv(&mut down) => {
                    answered = true;
                    if let Some(c) = client {
                        let _ = front.send_to(&down[..n], c).await;
                    }
                }
            }
        }
    });
    r
}

/// GET `path` over TLS on TCP (HTTP/1.1): the response, its body whole.
async fn tcp_get(addr: SocketAddr, ca: &Path, path: &str) -> http::Response<bytes::Bytes> {
    let tcp = tls_connect(&addr.to_string(), ca, &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 over TLS");
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get(path)
                .header("host", "localhost")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("an answer over TCP");
    let (head, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .expect("the body");
    http::Response::from_parts(head, body.to_bytes())
}

/// `/metrics` over TCP: a scrape that is not a QUIC connection.
async fn scrape(addr: SocketAddr, ca: &Path) -> String {
    String::from_utf8_lossy(tcp_get(addr, ca, "/metrics").await.body()).into_owned()
}

/// `tls.early_data`: a resuming client's GET in 0-RTT is served before the
/// handshake completes and its POST once it has; the same first flight
/// replayed (after a HUP, by a new generation that shares the session
/// table) resumes nothing, so the GET is not served again; the client's
/// next ticket still resumes with 0-RTT on the new generation.
#[test]
fn early_data_serves_a_resumed_get_at_once_and_a_replay_never() {
    let mut s = h3_server_with(2, "header_read_timeout = 2", "early_data = true", "");
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let tickets = Arc::new(CountedTickets {
        inner: rustls::client::ClientSessionMemoryCache::new(32),
        received: AtomicUsize::new(0),
    });
    let early = |metrics: &str| metric(metrics, "rsvisor_http_early_data_requests_total");
    let rt = rt();
    let endpoint = rt.block_on(async { client_endpoint_with(&ca, true, tickets.clone()).0 });
    let recorded = rt.block_on(async {
        let mut send = connect(&endpoint, addr).await;
        let (status, _) = get3(&mut send, "/pid").await.expect("an answer");
        assert_eq!(status, 200);
        tickets.wait_for(1).await;
        drop(send);

        // Resumed with 0-RTT, through a relay that keeps the first flight.
        let relay = relay(addr, Duration::from_millis(500)).await;
        relay.recording.store(true, Relaxed);
        let connecting = endpoint.connect(relay.addr, "localhost").expect("connect");
        let (conn, accepted) = connecting.into_0rtt().expect("a ticket allows 0-RTT");
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .expect("HTTP/3 setup in 0-RTT");
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        let mut send2 = send.clone();
        let (get, post) = tokio::join!(
            get3(&mut send, "/pid"),
            request3(&mut send2, "POST", "/echo", &[], b"once")
        );
        relay.recording.store(false, Relaxed);
        assert_eq!(get.expect("the GET answered").0, 200);
        assert_eq!(post.expect("the POST answered"), (200, "once".to_string()));
        assert!(accepted.await, "the server took the early data");
        assert_eq!(
            early(&scrape(addr, &ca).await),
            1.0,
            "the GET, not the POST"
        );
        tickets.wait_for(2).await;
        conn.close(0u32.into(), b"");
        let recorded = relay.recorded.lock().unwrap().clone();
        recorded
    });
    assert!(!recorded.is_empty());

    // The old generation, which saw the flight, is gone after the HUP.
    s.signal(Signal::SIGHUP);
    s.wait_reloads(1, Duration::from_secs(30));
    rt.block_on(async {
        let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for datagram in &recorded {
            attacker.send_to(datagram, addr).await.unwrap();
        }
        // The replay's handshake never completes: once it has timed out,
        // anything it could have had served would have been counted.
        let metrics = tokio::time::timeout(CLIENT_DEADLINE, async {
            loop {
                let m = scrape(addr, &ca).await;
                if metric(
                    &m,
                    "rsvisor_tls_handshake_failures_total{reason=\"timeout\"}",
                ) >= 1.0
                {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the replayed handshake timed out");
        assert_eq!(early(&metrics), 1.0, "the replayed GET was not served");
        assert_eq!(
            metric(
                &metrics,
                "rsvisor_http_requests_by_protocol_total{protocol=\"h3\"}"
            ),
            3.0,
            "nothing of the replay was served"
        );
        assert_eq!(
            metric(
                &metrics,
                "rsvisor_http_requests_by_method_total{method=\"POST\"}"
            ),
            1.0
        );

        // The client's second ticket resumes on the new generation.
        let connecting = endpoint.connect(addr, "localhost").expect("connect");
        let (conn, accepted) = connecting.into_0rtt().expect("a ticket allows 0-RTT");
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .expect("HTTP/3 setup in 0-RTT");
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        assert_eq!(get3(&mut send, "/").await.expect("an answer").0, 200);
        assert!(accepted.await, "resumed with 0-RTT after the HUP");
        assert_eq!(early(&scrape(addr, &ca).await), 2.0);
    });
}

/// Clients that keep requests going on `conns` connections until `stop`:
/// each gives how many were answered and how many it sent again on a new
/// connection. A request refused by a draining worker's `GOAWAY` (or whose
/// connection that worker closed) is the client's to send again, which is
/// what an HTTP/3 client does; it is retried once and counted apart. A
/// request left unanswered until the deadline (a connection whose packets
/// reach a worker that does not own it) fails the load.
struct H3Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(u64, u64), String>>>,
}

const NO_ANSWER: &str = "no answer within the deadline";

fn h3_load(
    rt: &tokio::runtime::Runtime,
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    conns: usize,
) -> H3Load {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = (0..conns)
        .map(|_| {
            let (endpoint, stop) = (endpoint.clone(), stop.clone());
            rt.spawn(async move {
                let (mut ok, mut retried) = (0u64, 0u64);
                let mut send = connect(&endpoint, addr).await;
                while !stop.load(Relaxed) {
                    match get3(&mut send, "/").await {
                        Ok((200, _)) => ok += 1,
                        Ok((status, body)) => return Err(format!("status {status}: {body}")),
                        Err(e) if e == NO_ANSWER => return Err(e),
                        Err(_) => {
                            retried += 1;
                            send = connect(&endpoint, addr).await;
                            match get3(&mut send, "/").await {
                                Ok((200, _)) => ok += 1,
                                other => return Err(format!("after a retry: {other:?}")),
                            }
                        }
                    }
                }
                Ok((ok, retried))
            })
        })
        .collect();
    H3Load { stop, tasks }
}

impl H3Load {
    /// Stops the clients: every request answered, and how many (retried
    /// ones included).
    fn finish(self, rt: &tokio::runtime::Runtime) -> (u64, u64) {
        self.stop.store(true, Relaxed);
        let (mut ok, mut retried) = (0, 0);
        rt.block_on(async {
            for t in self.tasks {
                let (o, r) = t.await.expect("a load task").expect("no failed request");
                ok += o;
                retried += r;
            }
        });
        (ok, retried)
    }
}

/// Lets the runtime's tasks run while this thread waits.
fn pause(rt: &tokio::runtime::Runtime, ms: u64) {
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(ms)).await });
}

/// Three HUPs while 8 connections keep requests going: no request fails.
#[test]
fn three_hups_under_http3_load_fail_no_request() {
    let mut s = h3_server(2);
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let rt = rt();
    let endpoint = rt.block_on(async { client_endpoint(&ca) });
    let load = h3_load(&rt, &endpoint, addr, 8);
    for n in 1..=3 {
        pause(&rt, 500);
        s.signal(Signal::SIGHUP);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            pause(&rt, 100);
            let st = s.status().expect("status");
            if st
                .last_reload
                .as_ref()
                .is_some_and(|r| r.generation == n + 1)
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{st:?}");
        }
    }
    pause(&rt, 500);
    let (ok, retried) = load.finish(&rt);
    drop(endpoint);
    assert!(ok > 100, "{ok} requests answered");
    eprintln!("{ok} requests answered, {retried} retried on a new connection");
}

/// `max_requests` recycling, a `TTIN` and a `TTOU` while 8 connections
/// keep requests going: no request fails, and none waits until the
/// deadline (each time the set of workers reading the port changes, the
/// datagrams of every open connection still reach their worker).
#[test]
fn recycling_and_scaling_under_http3_load_fail_no_request() {
    let mut s = h3_server_with(2, "", "", "[lifecycle]\nmax_requests = 400\n");
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let rt = rt();
    let endpoint = rt.block_on(async { client_endpoint(&ca) });
    let load = h3_load(&rt, &endpoint, addr, 8);
    let wait = |s: &mut Server, what: &str, ok: &dyn Fn(&Status) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            pause(&rt, 100);
            let st = s.status().expect("status");
            if ok(&st) {
                return st;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {st:?}");
        }
    };
    let recycled = |n: u64| {
        move |st: &Status| {
            st.totals
                .exits_by_reason
                .get(&ExitReason::MaxRequests)
                .is_some_and(|r| *r >= n)
        }
    };
    wait(&mut s, "two workers recycled", &recycled(2));
    s.signal(Signal::SIGTTIN);
    wait(&mut s, "three workers", &|st| {
        st.desired_workers == 3 && settled(st)
    });
    s.signal(Signal::SIGTTOU);
    wait(&mut s, "two workers again", &|st| {
        st.desired_workers == 2 && settled(st)
    });
    let st = wait(&mut s, "two more recycled", &recycled(4));
    let (ok, retried) = load.finish(&rt);
    drop(endpoint);
    assert!(ok >= 1600, "{ok} requests answered");
    assert_eq!(st.totals.exits_by_reason[&ExitReason::ScaleDown], 1);
    eprintln!("{ok} requests answered, {retried} retried on a new connection");
}

/// Random bytes, and datagrams that look like QUIC v1 Initial packets
/// (long header, random connection IDs, padded to 1,200 bytes) but carry
/// nothing a server can decrypt, from one socket as fast as it can send;
/// then 150 real handshakes at once from as many source ports (past
/// `RETRY_ABOVE_HANDSHAKES`, so some are asked to Retry). A client already
/// connected is served throughout, and every real handshake completes.
#[test]
fn garbage_datagrams_and_a_handshake_flood_leave_a_client_served() {
    let mut s = h3_server(1);
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    rt().block_on(async {
        let endpoint = client_endpoint(&ca);
        let mut send = connect(&endpoint, addr).await;
        let junk = std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for i in 0..4_000u32 {
                let mut d = vec![
                    0u8;
                    if i % 2 == 0 {
                        1 + (next() % 1400) as usize
                    } else {
                        1200
                    }
                ];
                d.iter_mut().for_each(|b| *b = next() as u8);
                if i % 2 == 1 {
                    // Long header, Initial, version 1, 8-byte IDs.
                    d[0] = 0xc0;
                    d[1..5].copy_from_slice(&1u32.to_be_bytes());
                    d[5] = 8;
                    d[14] = 8;
                }
                let _ = sock.send_to(&d, addr);
            }
        });
        let flood: Vec<_> = (0..150)
            .map(|_| {
                let ca = ca.clone();
                tokio::spawn(async move {
                    let endpoint = client_endpoint(&ca);
                    let mut send = connect(&endpoint, addr).await;
                    get3(&mut send, "/").await
                })
            })
            .collect();
        for _ in 0..20 {
            let (status, _) = get3(&mut send, "/")
                .await
                .expect("the connected client is served during the flood");
            assert_eq!(status, 200);
        }
        for f in flood {
            let (status, _) = f.await.expect("a flood task").expect("a flood handshake");
            assert_eq!(status, 200);
        }
        junk.join().expect("the junk sender");
        let (status, _) = get3(&mut send, "/").await.expect("served after it");
        assert_eq!(status, 200);
    });
}

/// A client that opens as many requests as it may and sends bodies the
/// app never reads: the worker takes at most its connection window (1 MiB)
/// of them, its memory grows by no more than a few MiB, and another
/// client on the same worker is served throughout.
#[test]
fn a_client_stalling_its_streams_gets_its_window_and_no_more() {
    const WINDOW: usize = 1024 * 1024;
    let mut s = h3_server(1);
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let worker = s.workers()[0];
    rt().block_on(async {
        let endpoint = client_endpoint(&ca);
        let mut other = connect(&endpoint, addr).await;
        assert_eq!(get3(&mut other, "/").await.expect("an answer").0, 200);
        let before = rss_kib(worker);

        let send = connect(&endpoint, addr).await;
        let sent = Arc::new(AtomicUsize::new(0));
        // 100 requests (the most a connection may have open), each
        // sending a body /sleep never reads, in 16 KiB pieces, never ending.
        let stalls: Vec<_> = (0..100)
            .map(|_| {
                let (mut send, sent) = (send.clone(), sent.clone());
                tokio::spawn(async move {
                    let req = http::Request::get("https://localhost/sleep?ms=60000")
                        .body(())
                        .unwrap();
                    let Ok(mut stream) = send.send_request(req).await else {
                        return;
                    };
                    let piece = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
                    while stream.send_data(piece.clone()).await.is_ok() {
                        sent.fetch_add(piece.len(), Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::timeout(CLIENT_DEADLINE, async {
            while sent.load(Relaxed) < WINDOW / 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the worker takes bodies up to its window");
        // Served while the stalled requests hold the window.
        for _ in 0..20 {
            assert_eq!(get3(&mut other, "/").await.expect("an answer").0, 200);
        }
        let taken = sent.load(Relaxed);
        assert!(taken <= WINDOW, "{taken} bytes taken, more than the window");
        let grown = rss_kib(worker).saturating_sub(before);
        assert!(grown < 16 * 1024, "the worker grew by {grown} KiB");
        eprintln!("{taken} bytes taken from the stalled requests; the worker grew by {grown} KiB");
        for t in &stalls {
            assert!(!t.is_finished(), "a stalled request ended");
        }
        stalls.iter().for_each(|t| t.abort());
    });
}

/// A connection with no request for `keepalive_timeout` is closed with
/// `H3_NO_ERROR`, although the client's PINGs keep QUIC's idle timer alive.
#[test]
fn an_idle_connection_is_closed_after_the_keepalive_timeout_despite_pings() {
    let mut s = h3_server_with(1, "keepalive_timeout = 1", "", "");
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    rt().block_on(async {
        let (mut config, _) = client_config(
            &ca,
            false,
            Arc::new(rustls::client::ClientSessionMemoryCache::new(4)),
        );
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_millis(100)));
        config.transport_config(Arc::new(transport));
        let endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("a client endpoint");
        let conn = endpoint
            .connect_with(config, addr, "localhost")
            .expect("connect")
            .await
            .expect("a handshake");
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .expect("HTTP/3 setup");
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        assert_eq!(get3(&mut send, "/").await.expect("an answer").0, 200);
        let answered = std::time::Instant::now();
        let reason = tokio::time::timeout(CLIENT_DEADLINE, conn.closed())
            .await
            .expect("closed within the deadline");
        let idle = answered.elapsed();
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(u64::from(c.error_code), 0x100, "H3_NO_ERROR")
            }
            other => panic!("closed by {other:?}"),
        }
        assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
    });
}

/// Proxy mode: the front workers serve HTTP/3 and forward to the app
/// processes; new connections go to the fronts' slots.
#[test]
fn proxy_mode_serves_http3_through_the_front_workers() {
    if !have_in_venv(&["uvicorn"]) {
        return;
    }
    let b = crate::proxy_mode::uvicorn_proxy(
        2,
        "",
        "[http]\nhttp3 = true\n[tls]\ncert = \"{dir}/server.pem\"\nkey = \"{dir}/server.key\"\n",
    );
    make_pki(b.dir());
    let mut s = b.start();
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let st = s.wait_settled(Duration::from_secs(60));
    let apps: Vec<String> = st.workers.iter().map(|w| w.pid.to_string()).collect();
    rt().block_on(async {
        let endpoint = client_endpoint(&ca);
        let mut send = connect(&endpoint, addr).await;
        let (status, pid) = get3(&mut send, "/pid").await.expect("an answer");
        assert_eq!(status, 200);
        assert!(
            apps.contains(&pid.trim().to_string()),
            "{pid} is an app process: {apps:?}"
        );
        let (status, xff) = get3(&mut send, "/xff").await.expect("an answer");
        assert_eq!(status, 200);
        assert!(xff.starts_with("127.0.0.1|https|"), "{xff}");
    });
    let st = s.status().expect("status");
    let mut fronts: Vec<usize> = st.fronts.iter().map(|f| f.slot).collect();
    fronts.sort_unstable();
    assert_eq!(st.http3[0].new_connection_slots, fronts);
}

/// A reload that turns HTTP/3 off closes the UDP sockets once the last
/// worker that served it is gone; the TCP port keeps serving.
#[test]
fn a_reload_that_turns_http3_off_closes_the_udp_port() {
    let mut s = h3_server(1);
    udp_addr(&mut s);
    assert_eq!(s.status().expect("status").http3.len(), 1);
    let text = std::fs::read_to_string(&s.config).expect("the config");
    std::fs::write(&s.config, text.replace("http3 = true", "http3 = false")).expect("written");
    s.signal(Signal::SIGHUP);
    s.wait_reloads(1, Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = s.status().expect("status");
        if st.http3.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.log_text().contains("UDP sockets closed"));
}

/// A reload that removes a TLS address closes its UDP port once the old
/// workers are gone, and HTTP/3 goes on on the address that stays.
#[test]
fn a_reload_that_removes_an_address_closes_its_udp_port() {
    let mut s = h3_server_at(r#"["127.0.0.1:0", "127.0.0.2:0"]"#, 1, "", "", "");
    let stays = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let st = s.status().expect("status");
    let mut udp: Vec<String> = st.http3.iter().map(|g| g.udp.clone()).collect();
    udp.sort();
    assert_eq!(udp.len(), 2, "{st:?}");
    let removed: SocketAddr = udp[1].parse().expect("an address");
    assert_eq!(removed.ip().to_string(), "127.0.0.2");
    let text = std::fs::read_to_string(&s.config).expect("the config");
    let text = text.replace(
        r#"bind = ["127.0.0.1:0", "127.0.0.2:0"]"#,
        r#"bind = ["127.0.0.1:0"]"#,
    );
    std::fs::write(&s.config, text).expect("written");
    s.signal(Signal::SIGHUP);
    s.wait_reloads(1, Duration::from_secs(30));
    let st = s.wait_status("one UDP group", Duration::from_secs(30), |st| {
        st.http3.len() == 1
    });
    assert_eq!(st.http3[0].udp, stays.to_string());
    // Nothing holds the port any more.
    std::net::UdpSocket::bind(removed).expect("the removed UDP port is free");
    assert!(s
        .log_text()
        .contains(&format!("UDP sockets closed udp={removed}")));
    rt().block_on(async {
        let endpoint = client_endpoint(&ca);
        let mut send = connect(&endpoint, stays).await;
        assert_eq!(get3(&mut send, "/").await.expect("an answer").0, 200);
    });
}

/// USR2 with HTTP/3: the new master takes the UDP groups over and gives
/// its workers the sockets after the old ones, so a request in flight on a
/// connection to an old worker completes, 4 connections of load fail no
/// request, the old master exits 0, and every new connection reaches a
/// new worker.
#[test]
fn a_binary_upgrade_hands_http3_over_without_failing_a_request() {
    let mut s = h3_server(2);
    let addr = udp_addr(&mut s);
    let ca = s.dir.path().join("ca.pem");
    let old_master = s.pid();
    let old_workers: Vec<String> = s.workers().iter().map(|p| p.to_string()).collect();
    let rt = rt();
    let endpoint = rt.block_on(async { client_endpoint(&ca) });
    let mut inflight = rt.block_on(async {
        let mut send = connect(&endpoint, addr).await;
        let (status, pid) = get3(&mut send, "/pid").await.expect("an answer");
        assert_eq!(status, 200);
        assert!(old_workers.contains(&pid), "{pid} of {old_workers:?}");
        send
    });
    let inflight = rt.spawn(async move { get3(&mut inflight, "/sleep?ms=3000").await });
    let load = h3_load(&rt, &endpoint, addr, 4);
    pause(&rt, 300);
    s.signal(Signal::SIGUSR2);
    // The old master hands over, and exits once its workers are done.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        pause(&rt, 100);
        if let Some(exit) = s.try_wait() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "{}", s.log_text());
    };
    assert_eq!(exit.code(), Some(0), "{}", s.log_text());
    let st = s.status().expect("the new master answers");
    assert_ne!(st.master_pid as i32, old_master);
    let new_workers: Vec<String> = children_of(st.master_pid as i32)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(new_workers.len(), 2, "{st:?}");
    // The old sockets stay in the group, the new workers' come after.
    assert_eq!(st.http3.len(), 1, "{st:?}");
    assert_eq!(st.http3[0].sockets, 4, "{st:?}");
    rt.block_on(async {
        let (status, _) = inflight
            .await
            .expect("the request's task")
            .expect("the request in flight across the upgrade answered");
        assert_eq!(status, 200);
        for _ in 0..6 {
            let mut send = connect(&endpoint, addr).await;
            let (_, pid) = get3(&mut send, "/pid").await.expect("an answer");
            assert!(new_workers.contains(&pid), "{pid} of {new_workers:?}");
        }
    });
    let (ok, retried) = load.finish(&rt);
    assert!(ok > 50, "{ok} requests answered");
    eprintln!("{ok} requests answered, {retried} retried on a new connection");
}

#[test]
fn check_refuses_http3_where_it_cannot_serve() {
    const TLS: &str = "[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n";
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    // Each configuration, `check`'s exit code, and what it says (and, for
    // the valid ones, what it must not say).
    let cases: [(String, i32, &str, &str); 6] = [
        (
            "[server]\nbind = [\"127.0.0.1:8000\"]\n[http]\nhttp3 = true\n".into(),
            2,
            "app.toml:4:1: http.http3: needs a TLS address over TCP",
            "",
        ),
        (
            "[server]\nbind = [\"127.0.0.1:8000\"]\n\
             [app]\ncommand = [\"uvicorn\", \"--fd\", \"{fd}\", \"m:app\"]\n\
             [http]\nhttp3 = true\n"
                .into(),
            2,
            "http.http3: cannot work with app.command in direct mode",
            "",
        ),
        // 0-RTT needs HTTP/3 and tickets.
        (
            format!("[server]\nbind = [\"127.0.0.1:8443\"]\n{TLS}early_data = true\n"),
            2,
            "app.toml:6:1: tls.early_data: 0-RTT is served over HTTP/3 only",
            "",
        ),
        (
            format!(
                "[server]\nbind = [\"127.0.0.1:8443\"]\n[http]\nhttp3 = true\n\
                 {TLS}early_data = true\nsession_tickets = false\n"
            ),
            2,
            "tls.early_data: 0-RTT resumes a session",
            "",
        ),
        // Configurations that serve it: check says how datagrams are
        // steered (after making sure this kernel takes the program), and
        // what 0-RTT does when it is on.
        (
            format!("[server]\nbind = [\"127.0.0.1:8443\"]\n[http]\nhttp3 = true\n{TLS}"),
            0,
            "http.http3: datagrams steered by classic BPF by connection ID",
            "tls.early_data",
        ),
        (
            format!(
                "[server]\nbind = [\"127.0.0.1:8443\"]\n[http]\nhttp3 = true\n\
                 {TLS}early_data = true\n"
            ),
            0,
            "tls.early_data: 0-RTT over HTTP/3 runs GET, HEAD and OPTIONS",
            "",
        ),
    ];
    for (text, want, says, not) in &cases {
        std::fs::write(dir.path().join("app.toml"), text).unwrap();
        let (code, _, err) = run(&rsvisor_bin(), &["check", "app.toml"], dir.path(), &[]);
        assert_eq!(code, *want, "{text}\n{err}");
        assert!(err.contains(says), "{text}\n{err}");
        assert!(not.is_empty() || !err.contains(not), "{text}\n{err}");
    }
}
