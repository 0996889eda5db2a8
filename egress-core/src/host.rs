//! Strict parsing of hosts and authorities.
//!
//! Two parsers must never read one authority differently (a proxy and a resolver, say), so
//! anything that is not plainly a DNS name, a dotted-quad IPv4 address or a bracketed IPv6
//! address is refused: numeric shorthands such as `2130706433`, `0x7f.1` or `0177.0.0.1`,
//! which `inet_aton` would turn into `127.0.0.1`, never reach a resolver as names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::ctx::Host;

/// The longest DNS name (RFC 1035), without the trailing dot.
pub const MAX_NAME_LEN: usize = 253;

/// Why an authority or host was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// No host at all.
    #[error("empty host")]
    Empty,
    /// `user:pass@host`: credentials do not belong in a destination.
    #[error("userinfo is not allowed in the authority")]
    Userinfo,
    /// Longer than 253 characters or a label longer than 63.
    #[error("host name too long")]
    TooLong,
    /// A character outside letters, digits, `-`, `_` and `.`.
    #[error("invalid character in host name")]
    InvalidChar,
    /// An empty label, or one that starts or ends with `-`.
    #[error("invalid label in host name")]
    BadLabel,
    /// A numeric host that is not a plain dotted quad (`2130706433`, `0x7f.1`, `010.0.0.1`).
    #[error("ambiguous numeric host (only dotted-quad IPv4 is accepted)")]
    AmbiguousIpv4,
    /// A bracketed literal that is not an IPv6 address (zone ids are refused too).
    #[error("invalid IPv6 literal")]
    InvalidIpv6,
    /// A port that is not 1 to 65535 written as plain decimal digits.
    #[error("invalid port")]
    BadPort,
    /// A port is required here (CONNECT) and is missing.
    #[error("missing port")]
    MissingPort,
}

/// Splits `host[:port]` and validates both parts. The port is `None` when absent.
pub fn parse_authority(authority: &str) -> Result<(Host, Option<u16>), HostError> {
    if authority.contains('@') {
        return Err(HostError::Userinfo);
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostError::InvalidIpv6)?;
        let literal = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or(HostError::BadPort)?)?),
        };
        let ip: Ipv6Addr = literal.parse().map_err(|_| HostError::InvalidIpv6)?;
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (authority, None),
        }
    };
    Ok((parse_host(host)?, port))
}

/// Parses a port: 1 to 5 ASCII digits, no sign, no leading zero, 1..=65535.
pub fn parse_port(p: &str) -> Result<u16, HostError> {
    let b = p.as_bytes();
    if b.is_empty() || b.len() > 5 || !b.iter().all(u8::is_ascii_digit) || b[0] == b'0' {
        return Err(HostError::BadPort);
    }
    match p.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(HostError::BadPort),
    }
}

/// Parses a host without a port: a DNS name (lower-cased, one trailing dot removed), a
/// dotted-quad IPv4 address, or a bracketed IPv6 address.
pub fn parse_host(host: &str) -> Result<Host, HostError> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: Ipv6Addr = inner.parse().map_err(|_| HostError::InvalidIpv6)?;
        return Ok(Host::Ip(IpAddr::V6(ip)));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if host.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if ends_in_number(last) {
        return parse_dotted_quad(host).map(|ip| Host::Ip(IpAddr::V4(ip)));
    }
    let mut lower = false;
    for label in host.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::BadLabel);
        }
        if label.len() > 63 {
            return Err(HostError::TooLong);
        }
        for b in label.bytes() {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
                b'A'..=b'Z' => lower = true,
                _ => return Err(HostError::InvalidChar),
            }
        }
    }
    let name: Arc<str> = if lower {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    };
    Ok(Host::Name(name))
}

/// WHATWG URL's "ends in a number": the last label is all digits or a `0x` hex number, so
/// some parser somewhere reads the host as an IPv4 address.
fn ends_in_number(label: &str) -> bool {
    let b = label.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    matches!(b, [b'0', b'x' | b'X', rest @ ..] if rest.iter().all(u8::is_ascii_hexdigit))
}

/// Exactly four decimal octets, 0..=255, without leading zeros (which some read as octal).
fn parse_dotted_quad(host: &str) -> Result<Ipv4Addr, HostError> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in host.split('.') {
        if n == 4 {
            return Err(HostError::AmbiguousIpv4);
        }
        let b = part.as_bytes();
        if b.is_empty()
            || b.len() > 3
            || !b.iter().all(u8::is_ascii_digit)
            || (b.len() > 1 && b[0] == b'0')
        {
            return Err(HostError::AmbiguousIpv4);
        }
        octets[n] = part.parse().map_err(|_| HostError::AmbiguousIpv4)?;
        n += 1;
    }
    if n != 4 {
        return Err(HostError::AmbiguousIpv4);
    }
    Ok(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Host {
        Host::Name(s.into())
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(parse_host("Example.COM."), Ok(name("example.com")));
        assert_eq!(parse_host("a-b.c_d.example"), Ok(name("a-b.c_d.example")));
        assert_eq!(parse_host("localhost"), Ok(name("localhost")));
    }

    #[test]
    fn bad_names_are_refused() {
        for (input, err) in [
            ("", HostError::Empty),
            (".", HostError::Empty),
            ("a..b", HostError::BadLabel),
            ("-a.com", HostError::BadLabel),
            ("a-.com", HostError::BadLabel),
            ("a b.com", HostError::InvalidChar),
            ("a%2eb.com", HostError::InvalidChar),
            ("exa\u{0}mple.com", HostError::InvalidChar),
            ("ex\u{e4}mple.com", HostError::InvalidChar),
            ("a,b.com", HostError::InvalidChar),
        ] {
            assert_eq!(parse_host(input), Err(err), "{input:?}");
        }
        assert_eq!(parse_host(&"a".repeat(64)), Err(HostError::TooLong));
        assert_eq!(
            parse_host(&format!("{}.com", "a.".repeat(130))),
            Err(HostError::TooLong)
        );
    }

    #[test]
    fn ipv4_only_as_dotted_quad() {
        assert_eq!(
            parse_host("127.0.0.1"),
            Ok(Host::Ip("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            parse_host("10.0.0.1."),
            Ok(Host::Ip("10.0.0.1".parse().unwrap()))
        );
        for odd in [
            "2130706433",
            "0x7f.1",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "127.0.0.1.1",
            "1.2.3.256",
            "0x7f.0.0.1",
            "127.0.0.0x1",
            "a.0x10",
            "foo.123",
            "01.2.3.4",
        ] {
            assert_eq!(parse_host(odd), Err(HostError::AmbiguousIpv4), "{odd}");
        }
        // A numeric label that is not last is an ordinary name.
        assert_eq!(parse_host("123.example.com"), Ok(name("123.example.com")));
        assert_eq!(parse_host("0x7f.example"), Ok(name("0x7f.example")));
    }

    #[test]
    fn authorities() {
        assert_eq!(
            parse_authority("Example.com:8080"),
            Ok((name("example.com"), Some(8080)))
        );
        assert_eq!(
            parse_authority("example.com"),
            Ok((name("example.com"), None))
        );
        assert_eq!(
            parse_authority("[::1]:443"),
            Ok((Host::Ip("::1".parse().unwrap()), Some(443)))
        );
        assert_eq!(
            parse_authority("[::ffff:127.0.0.1]"),
            Ok((Host::Ip("::ffff:127.0.0.1".parse().unwrap()), None))
        );
        for (input, err) in [
            ("user:pw@example.com", HostError::Userinfo),
            ("@example.com", HostError::Userinfo),
            ("example.com:", HostError::BadPort),
            ("example.com:0", HostError::BadPort),
            ("example.com:080", HostError::BadPort),
            ("example.com:+80", HostError::BadPort),
            ("example.com:-80", HostError::BadPort),
            ("example.com:65536", HostError::BadPort),
            ("example.com:99999999999", HostError::BadPort),
            ("example.com:80:80", HostError::BadPort),
            ("[::1%eth0]:80", HostError::InvalidIpv6),
            ("[::1]80", HostError::BadPort),
            ("[zz]:80", HostError::InvalidIpv6),
            ("::1", HostError::BadPort),
        ] {
            assert_eq!(parse_authority(input), Err(err), "{input:?}");
        }
    }
}
