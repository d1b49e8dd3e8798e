//! IP networks for `proxy.forwarded_allow_ips`.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `"10.0.0.0/8"`, `"::1"`, `"fd00::/8"`; a bare address is a /32 or /128.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_cidrs() {
        assert!(IpNet::parse("10.0.0.0/8").is_some());
        assert!(IpNet::parse("127.0.0.1").is_some());
        assert!(IpNet::parse("fd00::/8").is_some());
        assert!(IpNet::parse("1.2.3.4/33").is_none());
        assert!(IpNet::parse("nope").is_none());
    }
}
