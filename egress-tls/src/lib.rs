//! TLS for egress traffic, on rustls (ring provider, no OpenSSL).
//!
//! - [`EgressConnector`]: TLS origination ("HTTPS upgrade") for the egress-core transport:
//!   apps send plain HTTP, the gateway speaks TLS upstream as `DestinationRule` `tls`
//!   (`SIMPLE`, `MUTUAL`, `caCertificates`, `sni`, `subjectAltNames`, `insecureSkipVerify`)
//!   says, pooling connections per SNI and port.
//! - [`ProxyTlsClient`]: TLS to an `https://` upstream proxy.
//! - [`probe`]: telling a TLS handshake from other bytes at the start of a stream (for the
//!   `CONNECT` and passthrough inspection).
//!
//! ```
//! use egress_tls::{TlsProbe, probe};
//!
//! // A TLS 1.2 record header carrying a handshake, and a plain HTTP request line.
//! assert_eq!(probe(&[22, 3, 1, 0, 200, 1]), TlsProbe::Handshake);
//! assert_eq!(probe(b"GET / HTTP/1.1\r\n"), TlsProbe::NotTls);
//! // TLS to an upstream proxy, verified against the webpki roots.
//! let _client = egress_tls::ProxyTlsClient::new(None).expect("roots load");
//! ```

mod config;
mod connect;
mod proxy;
mod server;
pub mod sni;

pub use config::client_config;
pub use connect::{Conn, ConnStats, EgressConnector, Stream};
pub use proxy::ProxyTlsClient;
pub use server::{certificate_principal, forwarded_client_cert, server_config};

/// What the first bytes of a stream say about TLS.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TlsProbe {
    /// A TLS handshake record (a `ClientHello` is expected inside).
    Handshake,
    /// Not TLS: the stream starts with something else (plain HTTP, say).
    NotTls,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Looks at the record header (RFC 8446 section 5.1): content type 22 (handshake), legacy
/// version 3.x, and a length within the 2^14 + 2048 bytes a record may have.
pub fn probe(prefix: &[u8]) -> TlsProbe {
    match prefix {
        [] => TlsProbe::NeedMore,
        [22] | [22, 3] | [22, 3, _] | [22, 3, _, _] => TlsProbe::NeedMore,
        [22, 3, minor, hi, lo, ..] => {
            let len = u16::from_be_bytes([*hi, *lo]);
            if *minor <= 4 && len > 0 && len <= 16384 + 2048 {
                TlsProbe::Handshake
            } else {
                TlsProbe::NotTls
            }
        }
        _ => TlsProbe::NotTls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes() {
        assert_eq!(probe(b""), TlsProbe::NeedMore);
        assert_eq!(probe(&[22, 3]), TlsProbe::NeedMore);
        assert_eq!(probe(&[22, 3, 1, 0, 200, 1]), TlsProbe::Handshake);
        assert_eq!(probe(&[22, 3, 1, 0, 0]), TlsProbe::NotTls);
        assert_eq!(probe(&[22, 3, 9, 0, 5]), TlsProbe::NotTls);
        assert_eq!(probe(&[22, 3, 3, 0xff, 0xff]), TlsProbe::NotTls);
        assert_eq!(probe(b"GET / HTTP/1.1\r\n"), TlsProbe::NotTls);
        assert_eq!(probe(b"\x16\x02"), TlsProbe::NotTls);
    }
}
