//! Where requests and connections go: virtual hosts with HTTP routes (matches, weighted
//! destinations, rewrites, redirects, header operations, retries, faults, mirrors) and the
//! TLS (by SNI) and TCP routes of tunnels.

use regex::Regex;
#[cfg(feature = "serde")]
use serde::Serialize;
use std::time::Duration;

use super::Meta;

/// `Destination` of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct RouteTarget {
    /// `host` (lower-case).
    pub host: String,
    /// `subset`.
    pub subset: Option<String>,
    /// `port.number`.
    pub port: Option<u16>,
}

/// `HTTPRouteDestination`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct WeightedDestination {
    /// `destination`.
    pub destination: RouteTarget,
    /// `weight` (relative; 0 gets nothing).
    pub weight: u32,
    /// `headers` for this destination.
    pub headers: Headers,
}

/// Header operations of one direction.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct HeaderOps {
    /// Replace.
    pub set: Vec<(String, String)>,
    /// Append.
    pub add: Vec<(String, String)>,
    /// Remove.
    pub remove: Vec<String>,
}

/// `Headers`.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Headers {
    /// On the request.
    pub request: HeaderOps,
    /// On the response.
    pub response: HeaderOps,
}

/// `HTTPRedirect`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct Redirect {
    /// New path.
    pub uri: Option<String>,
    /// New authority.
    pub authority: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// Keep the request's port (`FROM_PROTOCOL_DEFAULT` / `FROM_REQUEST_PORT`).
    pub derive_port: Option<String>,
    /// New scheme.
    pub scheme: Option<String>,
    /// Status (default 301).
    pub redirect_code: u16,
}

/// `HTTPDirectResponse`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct DirectResponse {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Option<String>,
}

/// `HTTPRewrite`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path for exact/regex matches).
    pub uri: Option<String>,
    /// Replaces the authority (`Host`).
    pub authority: Option<String>,
    /// `uriRegexRewrite`: pattern and replacement (`\1` style groups).
    pub uri_regex: Option<(String, String)>,
}

/// `HTTPRoute`.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct HttpRoute {
    /// `name`.
    pub name: Option<String>,
    /// `match` (empty: everything).
    pub matches: Vec<HttpMatch>,
    /// `route`.
    pub route: Vec<WeightedDestination>,
    /// `redirect`.
    pub redirect: Option<Redirect>,
    /// `directResponse`.
    pub direct_response: Option<DirectResponse>,
    /// `rewrite`.
    pub rewrite: Option<Rewrite>,
    /// `timeout`.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub timeout: Option<Duration>,
    /// `headers`.
    pub headers: Headers,
    /// `mirror` + `mirrorPercentage`, or `mirrors[]`: destinations and percentages.
    pub mirrors: Vec<(RouteTarget, f64)>,
    /// `fault`.
    pub fault: Fault,
    /// `retries`.
    pub retries: Option<Retries>,
}

/// `HTTPFaultInjection`.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Fault {
    /// `delay.fixedDelay` and its percentage.
    pub delay: Option<(Duration, f64)>,
    /// `abort.httpStatus` and its percentage.
    pub abort: Option<(u16, f64)>,
}

/// `HTTPRetry`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct Retries {
    /// Retries after the first attempt (Istio's `attempts`).
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Conditions (`5xx`, `gateway-error`, `connect-failure`, `reset`, `refused-stream`,
    /// `retriable-4xx`, `retriable-status-codes`, status numbers).
    pub retry_on: Vec<String>,
}

/// A `VirtualHost`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct VirtualHost {
    /// Name, namespace, source.
    pub meta: Meta,
    /// The kind of resource it was read from (`VirtualService`, `HTTPRoute`, ...), for
    /// messages.
    pub kind: &'static str,
    /// `hosts` (lower-case; `*.suffix` wildcards).
    pub hosts: Vec<String>,
    /// `gateways` (empty means `mesh`).
    pub gateways: Vec<String>,
    /// `http`, in order.
    pub http: Vec<HttpRoute>,
    /// `tls`, in order (routes for TLS passthrough by SNI).
    pub tls: Vec<TlsRoute>,
    /// `tcp`, in order (routes for opaque TCP: CONNECT tunnels to the VirtualHost's hosts).
    pub tcp: Vec<TcpRoute>,
}

impl VirtualHost {
    /// Routes for these hosts (lower-cased) at this gateway (no `gateways` means the mesh,
    /// which is what a gateway bound to no `Gateway` resource serves).
    pub fn new<H: AsRef<str>>(
        meta: Meta,
        hosts: impl IntoIterator<Item = H>,
        http: Vec<HttpRoute>,
    ) -> Self {
        Self {
            meta,
            kind: "VirtualService",
            hosts: hosts
                .into_iter()
                .map(|h| h.as_ref().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            gateways: Vec::new(),
            http,
            tls: Vec::new(),
            tcp: Vec::new(),
        }
    }
}

impl WeightedDestination {
    /// All of the traffic (or `weight` of it) to a host, optionally a subset and a port.
    pub fn to(host: impl Into<String>, subset: Option<&str>, weight: u32) -> Self {
        Self {
            destination: RouteTarget {
                host: host.into(),
                subset: subset.map(str::to_owned),
                port: None,
            },
            weight,
            headers: Headers::default(),
        }
    }
}

/// A string match (`StringMatch`), or presence (`{}`) where Istio allows it.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Starts with these path segments (Gateway API `PathPrefix`): `/a` matches `/a` and
    /// `/a/b`, not `/ab`. Kept without a trailing `/` (`/` itself aside).
    PathPrefix(String),
    /// Matches the whole value (RE2 syntax, as Envoy's safe regex).
    Regex(#[cfg_attr(feature = "serde", serde(serialize_with = "regex_str"))] Regex),
    /// Present, whatever its value (`{}`).
    Present,
}

#[cfg(feature = "serde")]
fn regex_str<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    let text = r.as_str();
    // Undo the anchoring added at compile time.
    let text = text
        .strip_prefix("^(?:")
        .and_then(|t| t.strip_suffix(")$"))
        .unwrap_or(text);
    s.serialize_str(text)
}

/// `HTTPMatchRequest`.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct HttpMatch {
    /// `name`.
    pub name: Option<String>,
    /// `uri`, matched against the request path without its query string, as Envoy does.
    pub uri: Option<StringMatch>,
    /// `scheme`.
    pub scheme: Option<StringMatch>,
    /// `method`.
    pub method: Option<StringMatch>,
    /// `authority`.
    pub authority: Option<StringMatch>,
    /// `headers`: lower-case name and match.
    pub headers: Vec<(String, StringMatch)>,
    /// `withoutHeaders`.
    pub without_headers: Vec<(String, StringMatch)>,
    /// `queryParams`.
    pub query_params: Vec<(String, StringMatch)>,
    /// `port`.
    pub port: Option<u16>,
    /// `ignoreUriCase`.
    pub ignore_uri_case: bool,
    /// `gateways`.
    pub gateways: Vec<String>,
}

/// `TCPRoute`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct TcpRoute {
    /// `match`: port and gateways (empty: everything).
    pub matches: Vec<TlsMatch>,
    /// `route`: weighted destinations.
    pub route: Vec<WeightedDestination>,
}

/// `TLSRoute`: where TLS connections with matching SNI go, unterminated.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct TlsRoute {
    /// `match` blocks: SNI hosts (wildcards allowed), port, gateways.
    pub matches: Vec<TlsMatch>,
    /// `route`: weighted destinations.
    pub route: Vec<WeightedDestination>,
}

/// `TLSMatchAttributes`.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct TlsMatch {
    /// `sniHosts` (lower-case).
    pub sni_hosts: Vec<String>,
    /// `port`.
    pub port: Option<u16>,
    /// `gateways`.
    pub gateways: Vec<String>,
}
