//! Which network addresses Easel may reach on a person's behalf.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// Whether `ip` is a public unicast address (see [`refusal`]).
pub fn is_public(ip: IpAddr) -> bool {
    refusal(ip).is_none()
}

#[cfg(test)]
mod tests {
    use super::is_public;

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
            assert!(!is_public(a.parse().unwrap()), "{a}");
            assert!(super::refusal(a.parse().unwrap()).is_some(), "{a}");
        }
        assert_eq!(
            super::refusal("169.254.169.254".parse().unwrap()),
            Some("a cloud metadata address")
        );
        assert_eq!(
            super::refusal("::ffff:127.0.0.1".parse().unwrap()),
            Some("a loopback address")
        );
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }
}
