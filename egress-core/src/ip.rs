//! Classification of IP addresses for the SSRF guard.
//!
//! An egress gateway must not become a way into the network it protects: addresses that are
//! internal by nature are refused unless the operator declared them. IPv6 forms that embed an
//! IPv4 address (mapped, compatible, NAT64, 6to4) are judged by the address they embed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of address an IP is, for the SSRF guard.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AddrClass {
    /// Routable on the public internet.
    Public,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918, CGNAT `100.64.0.0/10`, IPv6 unique-local and site-local.
    Private,
    /// `169.254.0.0/16` (cloud metadata lives here) and `fe80::/10`.
    LinkLocal,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// Multicast and broadcast.
    Multicast,
    /// Reserved, benchmarking and protocol-assignment ranges.
    Reserved,
}

impl AddrClass {
    /// Whether the guard refuses this class unless the address is declared.
    pub fn is_internal(self) -> bool {
        self != AddrClass::Public
    }

    /// A short word for error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Multicast => "multicast",
            AddrClass::Reserved => "reserved",
        }
    }
}

/// Classifies an address.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddrClass::Unspecified,
        (127, _, _) => AddrClass::Loopback,
        (10, _, _) => AddrClass::Private,
        (172, 16..=31, _) => AddrClass::Private,
        (192, 168, _) => AddrClass::Private,
        (100, 64..=127, _) => AddrClass::Private,
        (169, 254, _) => AddrClass::LinkLocal,
        (224..=239, _, _) => AddrClass::Multicast,
        (255, 255, 255) if ip.is_broadcast() => AddrClass::Multicast,
        (240..=255, _, _) => AddrClass::Reserved,
        (192, 0, 0) | (198, 18..=19, _) => AddrClass::Reserved,
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let seg = ip.segments();
    if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip.is_loopback() {
        AddrClass::Loopback
    } else if seg[0] & 0xfe00 == 0xfc00 || seg[0] & 0xffc0 == 0xfec0 {
        AddrClass::Private
    } else if seg[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if seg[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if seg[0] == 0x100 && seg[1..4] == [0, 0, 0] {
        // 100::/64 discard-only.
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// The IPv4 address inside an IPv6 one: `::ffff:a.b.c.d`, `::a.b.c.d`, `64:ff9b::a.b.c.d`,
/// `2002:AABB:CCDD::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let tail = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    match seg {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // IPv4-compatible (deprecated); `::` and `::1` are handled as IPv6 themselves.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for (ip, class) in [
            ("8.8.8.8", AddrClass::Public),
            ("93.184.216.34", AddrClass::Public),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.0.9", AddrClass::Loopback),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::Private),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Unspecified),
            ("224.0.0.1", AddrClass::Multicast),
            ("255.255.255.255", AddrClass::Multicast),
            ("240.0.0.1", AddrClass::Reserved),
            ("::1", AddrClass::Loopback),
            ("::", AddrClass::Unspecified),
            ("fd00::1", AddrClass::Private),
            ("fe80::1", AddrClass::LinkLocal),
            ("ff02::1", AddrClass::Multicast),
            ("2606:4700::1111", AddrClass::Public),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:169.254.169.254", AddrClass::LinkLocal),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("::127.0.0.1", AddrClass::Loopback),
            ("::10.0.0.1", AddrClass::Private),
            ("64:ff9b::10.0.0.1", AddrClass::Private),
            ("2002:7f00:1::", AddrClass::Loopback),
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(classify(parsed), class, "{ip}");
            assert_eq!(
                classify(parsed).is_internal(),
                class != AddrClass::Public,
                "{ip}"
            );
        }
    }
}
