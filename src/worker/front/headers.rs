//! The headers that cross the hop between the client and an app process:
//! hop-by-hop ones stay behind, and the client's address, scheme and host
//! travel in `X-Forwarded-*`. Every request and response passes here, so
//! the common case (none of them present) costs one walk over the names,
//! not a parse and a hash of every name looked for.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;

use crate::app::ClientInfo;

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop, never forwarded as they are.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == KEEP_ALIVE
        || name.as_str() == PROXY_CONNECTION
}

/// Forwarding headers a client may have sent: replaced by what rsvisor
/// knows (after its `[proxy]` rules), so the app can trust them.
fn forwarding(name: &HeaderName) -> bool {
    name == header::FORWARDED
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
}

/// The request's headers for the app: hop-by-hop ones left out (the
/// upgrade's kept for an upgrade), `Host` kept (from the HTTP/2
/// `:authority` when there is no header), `X-Forwarded-For`/`-Proto`/
/// `-Host` set from what rsvisor knows of the client.
pub fn to_app(mut h: HeaderMap, uri: &Uri, client: &ClientInfo, upgrade: bool) -> HeaderMap {
    strip(&mut h, upgrade, true);
    // With no name repeated, a Host field is the only one and stays as it
    // is; otherwise one of several is made one (an HTTP/2 client may send
    // them), or the authority of the URI becomes it.
    let single = h.len() == h.keys_len();
    let host = match h.get(header::HOST) {
        Some(v) if single => Some(v.clone()),
        found => {
            let v = found
                .cloned()
                .or_else(|| uri.authority().and_then(|a| a.as_str().parse().ok()));
            if let Some(v) = &v {
                h.insert(header::HOST, v.clone());
            }
            v
        }
    };
    if let Some(v) = client.addr.and_then(|a| ip_value(a.ip())) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme));
    let fwd_host = client
        .host
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
        .or(host);
    if let Some(v) = fwd_host {
        h.insert(X_FORWARDED_HOST, v);
    }
    h
}

/// The app's response headers for the client: hop-by-hop ones left out.
pub fn to_client(h: &mut HeaderMap) {
    strip(h, false, false);
}

/// Removes hop-by-hop headers and the names `Connection` lists (and, with
/// `forwarded`, the forwarding headers); for an upgrade,
/// `Connection: upgrade` and `Upgrade` stay.
fn strip(h: &mut HeaderMap, upgrade: bool, forwarded: bool) {
    let kept = |n: &HeaderName| upgrade && (n == header::UPGRADE || n == header::CONNECTION);
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut listed = false;
    for name in h.keys() {
        listed |= name == header::CONNECTION;
        if (hop_by_hop(name) && !kept(name)) || (forwarded && forwarding(name)) {
            doomed.push(name.clone());
        }
    }
    if listed {
        let named = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok());
        doomed.extend(named.filter(|n| !kept(n)));
    }
    for name in &doomed {
        h.remove(name);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// An address as a header value. IPv4 without `fmt`: formatting through
/// `Display` cost about 1,300 instructions on every proxied request.
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            HeaderValue::from_bytes(&buf[..n]).ok()
        }
        IpAddr::V6(v6) => HeaderValue::from_str(&v6.to_string()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind_and_the_client_is_forwarded() {
        let req = http::Request::builder()
            .uri("/a?b=1")
            .header("host", "example.com")
            .header("connection", "keep-alive, X-Secret")
            .header("x-secret", "1")
            .header("te", "trailers")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let client = ClientInfo {
            addr: Some("192.0.2.7:5000".parse().unwrap()),
            scheme: "https",
            host: None,
        };
        let h = to_app(parts.headers.clone(), &parts.uri, &client, false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["host"], "example.com");
        assert_eq!(h["accept"], "*/*");
        for gone in [
            "connection",
            "x-secret",
            "te",
            "keep-alive",
            "proxy-connection",
            "forwarded",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn the_app_gets_one_host_field() {
        let client = ClientInfo {
            addr: None,
            scheme: "http",
            host: None,
        };
        let uri: Uri = "https://from-uri.example/x".parse().unwrap();
        let mut several = HeaderMap::new();
        several.append(header::HOST, HeaderValue::from_static("a.example"));
        several.append(header::HOST, HeaderValue::from_static("b.example"));
        let h = to_app(several, &uri, &client, false);
        assert_eq!(h.get_all(header::HOST).iter().count(), 1);
        assert_eq!(h[header::HOST], "a.example");
        let h = to_app(HeaderMap::new(), &uri, &client, false);
        assert_eq!(h[header::HOST], "from-uri.example");
        assert_eq!(h["x-forwarded-host"], "from-uri.example");
        let h = to_app(HeaderMap::new(), &"/x".parse().unwrap(), &client, false);
        assert!(!h.contains_key(header::HOST));
    }

    #[test]
    fn an_upgrade_keeps_its_headers() {
        let req = http::Request::builder()
            .uri("http://example.com/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let h = to_app(
            parts.headers.clone(),
            &parts.uri,
            &ClientInfo::default(),
            true,
        );
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["host"], "example.com");
        assert!(!h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn a_response_loses_its_hop_by_hop_headers_only() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        to_client(&mut h);
        assert_eq!(h.len(), 2);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "192.0.2.7",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(addr).unwrap(), addr.to_string().as_str());
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn every_ipv4_address_reads_as_display_writes_it(v4 in any::<std::net::Ipv4Addr>()) {
                let ip = IpAddr::V4(v4);
                let shown = ip.to_string();
                prop_assert_eq!(ip_value(ip).unwrap(), shown.as_str());
            }
        }
    }
}
