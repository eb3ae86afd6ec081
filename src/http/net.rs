//! Which network addresses Easel may reach on a person's behalf.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn v4_refusal(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private network address"
    } else if o == [169, 254, 169, 254] || o == [100, 100, 100, 200] {
        "a cloud metadata address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        "a carrier-grade NAT address"
    } else if ip.is_unspecified() || o[0] == 0 {
        "an unspecified address"
    } else if ip.is_multicast() || ip.is_broadcast() {
        "a multicast or broadcast address"
    } else if ip.is_documentation()
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
        || o[0] >= 240
    {
        "a reserved address"
    } else {
        return None;
    })
}

fn v6_refusal(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_refusal(v4);
    }
    let s = ip.segments();
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if s[0] == 0xfd00 && s[1] == 0x0ec2 {
        "a cloud metadata address" // fd00:ec2::254
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "a private network address" // unique local fc00::/7
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "a link-local address"
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        "a NAT64 address" // can reach IPv4 private space
    } else if s[0] == 0x2001 && s[1] == 0xdb8 {
        "a reserved address"
    } else if s[..6] == [0; 6] {
        "an IPv4-compatible address" // ::a.b.c.d, deprecated
    } else {
        return None;
    })
}

/// Why Easel will not reach `ip` on a person's behalf ("a loopback address", ...), or
/// `None` for a public unicast address. Covers private, loopback, link-local, CGNAT,
/// multicast, unspecified, reserved and cloud metadata addresses, IPv4-mapped IPv6
/// included.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_refusal(v4),
        IpAddr::V6(v6) => v6_refusal(v6),
    }
}

/// One allowlist entry.
#[derive(Clone, Debug, PartialEq)]
enum Allow {
    /// A host name, matched exactly (case aside).
    Host(String),
    /// An address or network in CIDR notation.
    Net(IpAddr, u8),
}

impl Allow {
    fn parse(entry: &str) -> Result<Allow, String> {
        let e = entry.trim().trim_start_matches('[').trim_end_matches(']');
        let (addr, bits) = match e.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (e, None),
        };
        if let Ok(ip) = addr.parse::<IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("`{entry}` has a bad prefix length"))?,
            };
            return Ok(Allow::Net(ip, bits));
        }
        let host = e.to_ascii_lowercase();
        let ok = !host.is_empty()
            && bits.is_none()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "`{entry}` is neither a host name nor an address or network (10.0.0.0/8)"
            ));
        }
        Ok(Allow::Host(host))
    }

    fn covers_ip(&self, ip: IpAddr) -> bool {
        let Allow::Net(net, bits) = self else {
            return false;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Checks allowlist entries, for config validation.
pub fn check_allowlist(entries: &[String]) -> Result<(), String> {
    Allowlist::parse(entries).map(drop)
}

/// What an admin lets Easel reach on a person's behalf although it is not public: host
/// names, addresses and networks (`assets.intra`, `10.20.0.0/16`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowlist {
    allow: Vec<Allow>,
}

/// Why a host is not reached.
#[derive(Debug, PartialEq)]
pub enum Unreached {
    /// Its name did not resolve, or resolved to nothing.
    Lookup(String),
    /// It resolves to an address Easel does not reach on a person's behalf; the message
    /// names the host, the address and what kind it is.
    Refused(String),
}

impl Allowlist {
    /// The allowlist of `entries`, or the first entry that is none of the three.
    pub fn parse(entries: &[String]) -> Result<Allowlist, String> {
        let allow = entries
            .iter()
            .map(|e| Allow::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowlist { allow })
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.allow
            .iter()
            .any(|a| matches!(a, Allow::Host(h) if h.eq_ignore_ascii_case(host)))
    }

    /// Why `ip` (reached as `host`) is refused, if it is.
    pub fn refuse(&self, host: &str, ip: IpAddr) -> Option<String> {
        let why = refusal(ip)?;
        if self.allow.iter().any(|a| a.covers_ip(ip)) {
            return None;
        }
        Some(if host.parse::<IpAddr>().is_ok() {
            format!("`{host}` is {why}")
        } else {
            format!("`{host}` resolves to {ip}, {why}")
        })
    }

    /// The addresses of `host` (a name or an address) with `port`: all of them refused
    /// when any is not public, unless the host or those addresses are allowed. Connect
    /// only to what this returns, so that a DNS answer changed between the check and
    /// the connection (rebinding) cannot slip through.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Unreached> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Unreached::Lookup(format!("cannot resolve `{host}`")))?
            .collect();
        if addrs.is_empty() {
            return Err(Unreached::Lookup(format!("`{host}` has no address")));
        }
        if !self.host_allowed(host)
            && let Some(why) = addrs.iter().find_map(|a| self.refuse(host, a.ip()))
        {
            return Err(Unreached::Refused(why));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::{Allow, Allowlist, Unreached, refusal};

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::127.0.0.1",
        ] {
            assert!(refusal(a.parse().unwrap()).is_some(), "{a}");
        }
        assert_eq!(
            refusal("169.254.169.254".parse().unwrap()),
            Some("a cloud metadata address")
        );
        assert_eq!(
            refusal("::ffff:127.0.0.1".parse().unwrap()),
            Some("a loopback address")
        );
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(refusal(a.parse().unwrap()).is_none(), "{a}");
        }
    }

    #[test]
    fn allowlist_entries_are_hosts_addresses_or_networks() {
        assert_eq!(
            Allow::parse("Assets.Intra").unwrap(),
            Allow::Host("assets.intra".into())
        );
        assert!(matches!(Allow::parse("10.0.0.0/8"), Ok(Allow::Net(_, 8))));
        assert!(matches!(Allow::parse("[fd00::1]"), Ok(Allow::Net(_, 128))));
        assert!(Allow::parse("10.0.0.0/33").is_err());
        assert!(Allow::parse("http://x").is_err());
        assert!(Allow::parse("").is_err());
    }

    #[test]
    fn a_network_entry_allows_only_its_addresses() {
        let rules = Allowlist::parse(&["10.20.0.0/16".into()]).unwrap();
        assert!(rules.refuse("a", "10.20.3.4".parse().unwrap()).is_none());
        assert!(
            rules
                .refuse("a", "::ffff:10.20.3.4".parse().unwrap())
                .is_none()
        );
        let why = rules.refuse("a", "10.21.0.1".parse().unwrap()).unwrap();
        assert!(why.contains("private"), "{why}");
        assert!(rules.refuse("a", "1.1.1.1".parse().unwrap()).is_none());
        let everything = Allowlist::parse(&["0.0.0.0/0".into()]).unwrap();
        assert!(
            everything
                .refuse("a", "127.0.0.1".parse().unwrap())
                .is_none()
        );
    }

    #[tokio::test]
    async fn names_resolve_to_public_addresses_or_allowed_ones_only() {
        let none = Allowlist::default();
        for host in ["localhost", "127.0.0.1", "[::1]"] {
            match none.resolve(host, 80).await {
                Err(Unreached::Refused(why)) => assert!(why.contains("loopback"), "{why}"),
                other => panic!("{host}: {other:?}"),
            }
        }
        let by_name = Allowlist::parse(&["LocalHost".into()]).unwrap();
        let addrs = by_name.resolve("localhost", 8080).await.unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 8080 && a.ip().is_loopback())
        );
        let by_net = Allowlist::parse(&["127.0.0.0/8".into()]).unwrap();
        assert!(by_net.resolve("127.0.0.1", 80).await.is_ok());
        assert!(matches!(
            by_net.resolve("[::1]", 80).await,
            Err(Unreached::Refused(_))
        ));
        assert!(matches!(
            none.resolve("no-such-host.invalid", 80).await,
            Err(Unreached::Lookup(_))
        ));
    }
}
