//! Header sets the proxy layers clean: hop-by-hop headers (RFC 9110 section 7.6.1) and the
//! gateway's own `x-egress-*`. A leaf, shared by the request and response sides.

use http::header::{self, HeaderMap, HeaderName};

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, including those `Connection`
/// names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none, and a pass over a few names is cheaper than six removals.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    // `Connection: keep-alive` / `close` (the usual values) name nothing to remove.
    let names_other = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| {
            let t = t.trim_ascii();
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"close")
        });
    if names_other {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Every header whose name starts with this is the gateway's own.
pub const GATEWAY_PREFIX: &[u8] = b"x-egress-";

/// Removes every `x-egress-*` header: in a request from a client, or in a response from an
/// upstream, these can only be forgeries of what this gateway says.
pub fn remove_gateway_headers(headers: &mut HeaderMap) {
    // Most messages carry none: look before building a list of names to remove.
    let forged = |n: &HeaderName| n.as_str().as_bytes().starts_with(GATEWAY_PREFIX);
    if headers.keys().any(forged) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| forged(n)).cloned().collect();
        for n in names {
            headers.remove(n);
        }
    }
}

/// A header value as HTTP reads it: without surrounding spaces and tabs.
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else { return &[] };
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(start);
    &v[start..=end]
}
