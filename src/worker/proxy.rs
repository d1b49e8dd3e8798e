//! `[proxy]`: who the client really is when a trusted proxy (nginx, a load
//! balancer) forwards the request. `X-Forwarded-For/-Proto/-Host` and
//! `Forwarded` are honoured only from peers in `forwarded_allow_ips`; the
//! client is the rightmost address that is not itself a trusted proxy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;

use super::conn_info::{ConnState, Peer};
use crate::app::ClientInfo;
use crate::config::ProxyConfig;
use crate::net::netmask::IpNet;

/// The parsed trust list.
pub struct Trust {
    enabled: bool,
    any: bool,
    unix: bool,
    nets: Vec<IpNet>,
}

impl Trust {
    pub fn new(cfg: &ProxyConfig) -> Trust {
        Trust {
            enabled: cfg.proxy_headers,
            any: cfg.forwarded_allow_ips.iter().any(|e| e == "*"),
            unix: cfg.forwarded_allow_ips.iter().any(|e| e == "unix"),
            nets: cfg
                .forwarded_allow_ips
                .iter()
                .filter_map(|e| IpNet::parse(e))
                .collect(),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.any || self.nets.iter().any(|n| n.contains(ip))
    }

    fn trusts_peer(&self, peer: Peer) -> bool {
        match peer {
            Peer::Tcp(a) => self.trusts(a.ip()),
            Peer::Unix => self.unix || self.any,
        }
    }

    /// The client of one request on `conn`: the connection's own
    /// (shared) unless its peer is a trusted proxy whose headers say
    /// otherwise.
    pub fn client_of(&self, conn: &ConnState, headers: &HeaderMap) -> Arc<ClientInfo> {
        if !self.enabled || !self.trusts_peer(conn.peer) {
            return conn.client.clone();
        }
        Arc::new(self.client(conn.peer, conn.tls, headers))
    }

    /// The client as the app should see it.
    pub fn client(&self, peer: Peer, tls: bool, headers: &HeaderMap) -> ClientInfo {
        let direct = peer.as_client(tls);
        if !self.enabled || !self.trusts_peer(peer) {
            return direct;
        }
        let fwd = Forwarded::from_headers(headers);
        let mut info = direct;
        // Walk the chain from the nearest hop outwards; stop at the first
        // address that is not a trusted proxy: that is the client.
        let mut chosen = None;
        for hop in fwd.chain.iter().rev() {
            chosen = Some(*hop);
            if !self.trusts(*hop) {
                break;
            }
        }
        if let Some(ip) = chosen {
            info.addr = Some(SocketAddr::new(ip, 0));
        }
        if let Some(proto) = fwd.proto {
            info.scheme = if proto.eq_ignore_ascii_case("https") {
                "https"
            } else {
                "http"
            };
        }
        info.host = fwd.host;
        info
    }
}

/// What the forwarding headers say.
#[derive(Debug, Default, PartialEq)]
struct Forwarded {
    /// Client addresses, leftmost (farthest) first.
    chain: Vec<IpAddr>,
    proto: Option<String>,
    host: Option<String>,
}

impl Forwarded {
    fn from_headers(headers: &HeaderMap) -> Forwarded {
        let mut f = Forwarded::default();
        // RFC 7239 `Forwarded` wins over the X- headers when present.
        let forwarded: Vec<&str> = headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !forwarded.is_empty() {
            for element in forwarded.iter().flat_map(|v| v.split(',')) {
                for pair in element.split(';') {
                    let Some((k, v)) = pair.trim().split_once('=') else {
                        continue;
                    };
                    let v = v.trim().trim_matches('"');
                    match k.trim().to_ascii_lowercase().as_str() {
                        "for" => f.chain.extend(parse_node(v)),
                        "proto" => f.proto = Some(v.to_string()),
                        "host" => f.host = Some(v.to_string()),
                        _ => {}
                    }
                }
            }
            return f;
        }
        for v in headers.get_all("x-forwarded-for").iter() {
            if let Ok(v) = v.to_str() {
                f.chain
                    .extend(v.split(',').filter_map(|s| parse_node(s.trim())));
            }
        }
        let last = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next_back())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        f.proto = last("x-forwarded-proto");
        f.host = last("x-forwarded-host");
        f
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`, `::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(list: &[&str]) -> Trust {
        Trust::new(&ProxyConfig {
            proxy_headers: true,
            forwarded_allow_ips: list.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn peer(s: &str) -> Peer {
        Peer::Tcp(s.parse().unwrap())
    }

    #[test]
    fn trusted_peer_forwarded_client() {
        let t = trust(&["127.0.0.1", "10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "example.com"),
        ]);
        let c = t.client(peer("127.0.0.1:5000"), false, &h);
        assert_eq!(c.addr.unwrap().ip().to_string(), "203.0.113.9");
        assert_eq!(c.scheme, "https");
        assert_eq!(c.host.as_deref(), Some("example.com"));
    }

    #[test]
    fn rightmost_untrusted_is_the_client() {
        // A client spoofing an XFF entry: the spoofed left part is ignored.
        let t = trust(&["127.0.0.1"]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        let c = t.client(peer("127.0.0.1:1"), false, &h);
        assert_eq!(c.addr.unwrap().ip().to_string(), "198.51.100.7");
    }

    #[test]
    fn untrusted_peer_is_taken_as_is() {
        let t = trust(&["127.0.0.1"]);
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = t.client(peer("192.0.2.1:9"), false, &h);
        assert_eq!(c.addr.unwrap().to_string(), "192.0.2.1:9");
        assert_eq!(c.scheme, "http");
    }

    #[test]
    fn rfc7239_and_ipv6_and_unix() {
        let t = trust(&["unix", "::1"]);
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https;host=a.example",
        )]);
        let c = t.client(Peer::Unix, false, &h);
        assert_eq!(c.addr.unwrap().ip().to_string(), "2001:db8::1");
        assert_eq!(c.scheme, "https");
        let c = t.client(peer("[::1]:80"), false, &h);
        assert_eq!(c.addr.unwrap().ip().to_string(), "2001:db8::1");
        let untrusting = trust(&["127.0.0.1"]);
        assert_eq!(untrusting.client(Peer::Unix, false, &h).addr, None);
    }

    #[test]
    fn disabled_means_direct() {
        let t = Trust::new(&ProxyConfig {
            proxy_headers: false,
            forwarded_allow_ips: vec!["*".into()],
        });
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        let c = t.client(peer("127.0.0.1:1"), true, &h);
        assert_eq!(c.addr.unwrap().ip().to_string(), "127.0.0.1");
        assert_eq!(c.scheme, "https");
    }
}
