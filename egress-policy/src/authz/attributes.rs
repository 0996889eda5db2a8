//! What policies read of a request or connection ([`Attributes`]) and the string patterns
//! they compare it with ([`Pattern`]).

use std::net::IpAddr;

use crate::identity::RequestAuth;

/// One Istio string match: exact, `prefix*`, `*suffix`, or `*` (present and non-empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// The whole value.
    Exact(Box<str>),
    /// `prefix*`.
    Prefix(Box<str>),
    /// `*suffix`.
    Suffix(Box<str>),
    /// `*`.
    Present,
}

impl Pattern {
    /// Compiles a validated pattern.
    pub fn new(s: &str) -> Self {
        if s == "*" {
            Pattern::Present
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.into())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.into())
        } else {
            Pattern::Exact(s.into())
        }
    }

    /// Whether `v` matches.
    pub fn matches(&self, v: &str) -> bool {
        self.matches_bytes(v.as_bytes())
    }

    /// Whether the bytes `v` match: header values are bytes (obs-text is not UTF-8), and a
    /// value that is not text still has a prefix, a suffix and an exact spelling.
    pub fn matches_bytes(&self, v: &[u8]) -> bool {
        match self {
            Pattern::Exact(e) => v == e.as_bytes(),
            Pattern::Prefix(p) => v.starts_with(p.as_bytes()),
            Pattern::Suffix(s) => v.ends_with(s.as_bytes()),
            Pattern::Present => !v.is_empty(),
        }
    }
}

/// Removes every header whose (lower-case) name matches one of `patterns`.
pub fn remove_matching(patterns: &[Pattern], headers: &mut http::HeaderMap) {
    if patterns.is_empty() {
        return;
    }
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| patterns.iter().any(|p| p.matches(n.as_str())))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// What a request or connection is, as policies see it. Built once per request.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// HTTP request facts; `None` for `CONNECT` tunnels, TLS passthrough and TCP.
    pub http: Option<HttpAttributes<'a>>,
    /// The peer address.
    pub source_ip: Option<IpAddr>,
    /// The original client, from `X-Forwarded-For` with trusted hops (else the peer).
    pub remote_ip: Option<IpAddr>,
    /// The client certificate's identity without `spiffe://`.
    pub principal: Option<&'a str>,
    /// The namespace in that identity (`…/ns/NAME/…`).
    pub namespace: Option<&'a str>,
    /// The destination host (lower case; the `CONNECT` host or SNI for L4 traffic).
    pub host: &'a str,
    /// The destination port.
    pub port: u16,
    /// The destination IP, when the destination is an IP literal.
    pub destination_ip: Option<IpAddr>,
    /// The TLS server name (passthrough, terminating servers).
    pub sni: Option<&'a str>,
}

/// The HTTP part of [`Attributes`].
#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    /// The method.
    pub method: &'a str,
    /// The normalised path, without the query.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
    /// The validated JWT, if any.
    pub auth: Option<&'a RequestAuth>,
}

impl<'a> Attributes<'a> {
    /// The principal without `spiffe://`, and its namespace.
    pub fn split_principal(uri_san: &'a str) -> (&'a str, Option<&'a str>) {
        let p = uri_san.strip_prefix("spiffe://").unwrap_or(uri_san);
        let ns = p
            .split('/')
            .skip_while(|s| *s != "ns")
            .nth(1)
            .filter(|s| !s.is_empty());
        (p, ns)
    }
}
