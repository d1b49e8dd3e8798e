//! PROXY protocol v1 (text) and v2 (binary), for binds with
//! `proxy_protocol = true`: a load balancer (HAProxy, AWS NLB…) prefixes
//! each connection with the client's address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line the specification allows, CRLF included.
const V1_MAX: usize = 107;
/// A v2 header with more address data than this is refused.
const V2_MAX: usize = 16 + 536;

/// What the header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The original client.
    Client(SocketAddr),
    /// A health check of the proxy itself (v2 LOCAL, v1 UNKNOWN): the
    /// connection's own peer stands.
    Local,
}

/// Reads the header; returns the source and the connection, whose reads
/// continue right after the header.
pub async fn accept<IO: AsyncRead + Unpin>(mut io: IO) -> io::Result<(Source, Prefixed<IO>)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some((source, used)) = parse(&buf)? {
            let rest = buf.split_off(used);
            return Ok((
                source,
                Prefixed {
                    prefix: rest,
                    pos: 0,
                    inner: io,
                },
            ));
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed before the PROXY header ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("PROXY protocol: {why}"))
}

/// `Ok(None)`: need more bytes. `Ok(Some((source, header length)))`.
pub fn parse(buf: &[u8]) -> io::Result<Option<(Source, usize)>> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] {
        return if buf.len() < 16 {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let v1_len = buf.len().min(6);
    if buf[..v1_len] == b"PROXY "[..v1_len] {
        return parse_v1(buf);
    }
    Err(bad("the connection does not start with a PROXY header"))
}

fn parse_v1(buf: &[u8]) -> io::Result<Option<(Source, usize)>> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(bad("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| bad("v1 header is not text"))?;
    let mut f = line.split(' ');
    f.next(); // PROXY
    let source = match f.next() {
        Some("UNKNOWN") => Source::Local,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let ip: IpAddr = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("v1 source address"))?;
            let _dst: IpAddr = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("v1 destination address"))?;
            let port: u16 = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("v1 source port"))?;
            if (proto == "TCP4") != ip.is_ipv4() {
                return Err(bad("v1 address does not match its family"));
            }
            Source::Client(SocketAddr::new(ip, port))
        }
        _ => return Err(bad("v1 protocol must be TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Some((source, end + 2)))
}

fn parse_v2(buf: &[u8]) -> io::Result<Option<(Source, usize)>> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(bad("v2 version must be 2"));
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + len > V2_MAX {
        return Err(bad("v2 header too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let addr = &buf[16..16 + len];
    let source = match (ver_cmd & 0x0f, buf[13]) {
        (0, _) => Source::Local,
        (1, 0x11) if len >= 12 => {
            let ip = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            let port = u16::from_be_bytes([addr[8], addr[9]]);
            Source::Client(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (1, 0x21) if len >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addr[..16]);
            let port = u16::from_be_bytes([addr[32], addr[33]]);
            Source::Client(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // UNSPEC or Unix addresses: nothing to report.
        (1, _) => Source::Local,
        _ => return Err(bad("v2 command must be LOCAL or PROXY")),
    };
    Ok(Some((source, 16 + len)))
}

/// A connection whose first bytes were already read: they are served
/// again before the rest.
pub struct Prefixed<IO> {
    prefix: Vec<u8>,
    pos: usize,
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

super::forward_async_write!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        let (s, n) = parse(h).unwrap().unwrap();
        assert_eq!(s, Source::Client("203.0.113.7:5555".parse().unwrap()));
        assert_eq!(&h[n..n + 3], b"GET");
        let h = b"PROXY TCP6 2001:db8::1 ::1 4000 443\r\n";
        assert_eq!(
            parse(h).unwrap().unwrap().0,
            Source::Client("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            Source::Local
        );
        assert!(parse(b"PROXY TCP4 203.0.113.7").unwrap().is_none());
        // The line ends within 107 bytes or not at all.
        let long = format!("PROXY UNKNOWN{}\r\n", " ".repeat(120));
        assert!(parse(long.as_bytes()).is_err());
        assert!(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n").is_err());
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)).is_err());
    }

    #[test]
    fn v2() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80,
        ]);
        h.extend_from_slice(b"GET");
        let (s, n) = parse(&h).unwrap().unwrap();
        assert_eq!(s, Source::Client("198.51.100.9:8080".parse().unwrap()));
        assert_eq!(&h[n..], b"GET");
        assert!(parse(&h[..20]).unwrap().is_none());
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().unwrap().0, Source::Local);
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert!(parse(&bad_version).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig::with_cases(10_000)
        }

        fn v2_header(cmd: u8, fam: u8, addr: &[u8]) -> Vec<u8> {
            let mut h = V2_SIGNATURE.to_vec();
            h.push(0x20 | cmd);
            h.push(fam);
            h.extend_from_slice(&(addr.len() as u16).to_be_bytes());
            h.extend_from_slice(addr);
            h
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn any_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..700)) {
                if let Ok(Some((_, used))) = parse(&buf) {
                    prop_assert!(used <= buf.len());
                }
            }

            #[test]
            fn any_bytes_after_a_signature_never_panic(
                v2 in any::<bool>(),
                tail in proptest::collection::vec(any::<u8>(), 0..700),
            ) {
                let mut buf = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
                buf.extend(tail);
                if let Ok(Some((_, used))) = parse(&buf) {
                    prop_assert!(used <= buf.len());
                    prop_assert!(v2 || used <= V1_MAX);
                }
            }

            /// A v1 line as a proxy prints it is read back, with whatever
            /// follows it left alone; every prefix of it asks for more.
            #[test]
            fn v1_round_trips(
                src in any::<std::net::IpAddr>(),
                dst_port in any::<u16>(),
                port in any::<u16>(),
                rest in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let (proto, dst) = match src {
                    IpAddr::V4(_) => ("TCP4", "10.0.0.1"),
                    IpAddr::V6(_) => ("TCP6", "::1"),
                };
                let line = format!("PROXY {proto} {src} {dst} {port} {dst_port}\r\n");
                let mut buf = line.clone().into_bytes();
                buf.extend(&rest);
                let (source, used) = parse(&buf).unwrap().unwrap();
                prop_assert_eq!(source, Source::Client(SocketAddr::new(src, port)));
                prop_assert_eq!(used, line.len());
                for cut in 0..line.len() - 1 {
                    prop_assert!(parse(&buf[..cut]).unwrap().is_none());
                }
            }

            /// A v2 header with IPv4 or IPv6 addresses and any TLVs after
            /// them is read back; every prefix of it asks for more.
            #[test]
            fn v2_round_trips(
                src in any::<std::net::IpAddr>(),
                port in any::<u16>(),
                tlvs in proptest::collection::vec(any::<u8>(), 0..200),
                rest in proptest::collection::vec(any::<u8>(), 0..32),
            ) {
                let (fam, mut addr) = match src {
                    IpAddr::V4(ip) => (0x11, ip.octets().to_vec()),
                    IpAddr::V6(ip) => (0x21, ip.octets().to_vec()),
                };
                addr.extend_from_slice(&addr.clone()); // destination
                addr.extend_from_slice(&port.to_be_bytes());
                addr.extend_from_slice(&443u16.to_be_bytes());
                addr.extend(&tlvs);
                let header = v2_header(1, fam, &addr);
                let mut buf = header.clone();
                buf.extend(&rest);
                let (source, used) = parse(&buf).unwrap().unwrap();
                prop_assert_eq!(source, Source::Client(SocketAddr::new(src, port)));
                prop_assert_eq!(used, header.len());
                for cut in 0..header.len() {
                    prop_assert!(parse(&buf[..cut]).unwrap().is_none());
                }
            }
        }
    }
}
