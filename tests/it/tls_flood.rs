//! A client that floods TLS handshakes the TLS library complains about
//! (an illegal 16 KB SNI, a Finished as the first record) cannot fill the
//! disk: the library's lines go through the repeated-line throttle and the
//! rest are counted.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::http_edge::make_pki;
use crate::util::*;

/// A TLS 1.3 ClientHello whose server name is `len` underscores.
fn hello_with_illegal_sni(len: usize) -> Vec<u8> {
    let name = vec![b'_'; len];
    let mut sni = ((1 + 2 + name.len()) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(&name);
    let mut ext = 0u16.to_be_bytes().to_vec();
    ext.extend((sni.len() as u16).to_be_bytes());
    ext.extend(sni);
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend(2u16.to_be_bytes());
    body.extend([0x13, 0x01]);
    body.extend([1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

/// A Finished handshake message as the first record.
const BARE_FINISHED: &[u8] = b"\x16\x03\x03\x00\x10\x14\x00\x00\x0c\0\0\0\0\0\0\0\0\0\0\0\0";

#[test]
fn a_flood_of_bad_handshakes_writes_under_1_mb_of_log_and_is_counted() {
    let b = demo(
        "[server]\nbind = [\"127.0.0.1:0\", { address = \"127.0.0.2:0\", tls = false }]\n\
         workers = 1\n[tls]\ncert = \"{dir}/server.pem\"\nkey = \"{dir}/server.key\"\n",
    );
    make_pki(b.dir());
    let mut s = b.start();
    let st = s.wait_settled(START_TIMEOUT);
    let tls = st
        .listeners
        .iter()
        .find(|l| l.starts_with("127.0.0.1:"))
        .expect("the TLS listener")
        .clone();
    let plain = Target::Tcp(
        st.listeners
            .iter()
            .find(|l| l.starts_with("127.0.0.2:"))
            .expect("the plain listener")
            .clone(),
    );
    let log_before = std::fs::metadata(&s.log).unwrap().len();
    let hello = hello_with_illegal_sni(16_000);
    let sent: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = [hello.as_slice(), BARE_FINISHED]
            .into_iter()
            .map(|record| {
                let tls = tls.clone();
                scope.spawn(move || {
                    let t0 = Instant::now();
                    let mut n = 0;
                    while t0.elapsed() < Duration::from_secs(5) {
                        let Ok(mut c) = std::net::TcpStream::connect(&tls) else {
                            continue;
                        };
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = c.write_all(record);
                        let _ = c.read(&mut [0u8; 256]);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(sent > 1000, "only {sent} handshakes sent");
    let written = std::fs::metadata(&s.log).unwrap().len() - log_before;
    assert!(
        written < 1024 * 1024,
        "{written} bytes of log for {sent} handshakes"
    );
    let metrics = get(&plain, "/metrics").unwrap().text();
    let suppressed = metric(&metrics, "rsvisor_log_lines_suppressed_total");
    assert!(
        suppressed > 1000.0,
        "{suppressed} lines counted as left out"
    );
    eprintln!("{sent} bad handshakes: {written} bytes of log, {suppressed} library lines left out");
}

/// Lines the configured level drops anyway are neither written nor counted
/// as left out: the level filter (here a per-target rule under a wider
/// level) decides before the throttle.
#[test]
fn library_lines_below_the_level_are_not_counted_as_left_out() {
    let b = demo(
        "[server]\nbind = [\"127.0.0.1:0\", { address = \"127.0.0.2:0\", tls = false }]\n\
         workers = 1\n[tls]\ncert = \"{dir}/server.pem\"\nkey = \"{dir}/server.key\"\n\
         [log]\nlevel = \"info,rustls=error\"\n",
    );
    make_pki(b.dir());
    let mut s = b.start();
    let st = s.wait_settled(START_TIMEOUT);
    let tls = listener(&st, "127.0.0.1:");
    let plain = Target::Tcp(listener(&st, "127.0.0.2:"));
    for _ in 0..200 {
        let mut c = std::net::TcpStream::connect(&tls).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(BARE_FINISHED).unwrap();
        let _ = c.read(&mut [0u8; 256]);
    }
    let metrics = get(&plain, "/metrics").unwrap().text();
    assert_eq!(metric(&metrics, "rsvisor_log_lines_suppressed_total"), 0.0);
    // rustls's own line is below its level; rsvisor's own (throttled)
    // "TLS handshake failed" line is not.
    let log = s.log_text();
    assert!(
        !log.contains("Received a Finished handshake message"),
        "{log}"
    );
}
