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

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            // An IPv4 client seen on a dual-stack socket.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
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

    #[test]
    fn membership() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(IpNet::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::net::{Ipv4Addr, Ipv6Addr};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            #[test]
            fn any_text_never_panics(s in any::<String>()) {
                if let Some(n) = IpNet::parse(&s) {
                    let _ = n.contains(IpAddr::V4(Ipv4Addr::LOCALHOST));
                }
            }

            /// A network holds its own address and anything that differs
            /// only after the prefix, and nothing that differs within it.
            #[test]
            fn v4_membership_follows_the_prefix(ip in any::<u32>(), prefix in 0u8..=32, bit in 0u32..32) {
                let net = IpNet::parse(&format!("{}/{prefix}", Ipv4Addr::from(ip))).unwrap();
                prop_assert!(net.contains(IpAddr::V4(Ipv4Addr::from(ip))));
                let other = IpAddr::V4(Ipv4Addr::from(ip ^ (1u32 << bit)));
                // Bit `bit` counted from the right is inside the prefix
                // when it is among its `prefix` leftmost bits.
                prop_assert_eq!(net.contains(other), bit < 32 - prefix as u32);
            }

            #[test]
            fn v6_membership_follows_the_prefix(ip in any::<u128>(), prefix in 0u8..=128, bit in 0u32..128) {
                let net = IpNet::parse(&format!("{}/{prefix}", Ipv6Addr::from(ip))).unwrap();
                prop_assert!(net.contains(IpAddr::V6(Ipv6Addr::from(ip))));
                let other = IpAddr::V6(Ipv6Addr::from(ip ^ (1u128 << bit)));
                prop_assert_eq!(net.contains(other), bit < 128 - prefix as u32);
            }

            #[test]
            fn prefixes_beyond_the_family_are_refused(ip in any::<u32>(), prefix in 33u16..1000) {
                let text = format!("{}/{prefix}", Ipv4Addr::from(ip));
                prop_assert!(IpNet::parse(&text).is_none());
            }
        }
    }
}
