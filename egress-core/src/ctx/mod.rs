//! Typed facts that layers pass to each other through `http::Extensions`.
//!
//! Each fact is inserted once, by the layer named in its docs, and only read afterwards. A
//! layer that finds a fact missing refuses the request with a precise [`RejectionKind`].

mod dry_run;
mod refusal;

pub use dry_run::{DryRun, ShadowResult};
pub use refusal::{
    DENIED_HEADER, ERROR_HEADER, Failure, Outcome, Refusal, Rejection, RejectionKind,
};

use http::HeaderValue;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The scheme a destination is reached with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The port used when a request names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// The scheme as written in a URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// How the client addressed the gateway.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RequestForm {
    /// `GET http://host/path` (forward proxy, `curl -x`).
    Absolute,
    /// `GET /path` with `Host:` (egress gateway behind sidecars, or h2 `:authority`).
    Origin,
    /// `CONNECT host:port` (tunnel, `HTTPS_PROXY`).
    Connect,
}

/// The host part of a destination, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: lower-case, no trailing dot, validated label by label.
    Name(Arc<str>),
    /// An IP literal (IPv4 in strict dotted-quad form, or a bracketed IPv6 address).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Where an egress request is going, normalised once at the edge.
///
/// - Inserted by: [`DestinationLayer`](crate::destination::DestinationLayer).
/// - Read by: the registry check, authorization, routing, the transport. The transport dials
///   exactly this host and port and writes exactly [`Destination::host_header`] upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    host: Host,
    port: u16,
    scheme: Scheme,
    form: RequestForm,
    host_header: HeaderValue,
}

impl Destination {
    /// Builds a destination from parts that are already normalised.
    pub fn new(host: Host, port: u16, scheme: Scheme, form: RequestForm) -> Self {
        let host_header = if port == scheme.default_port() && form != RequestForm::Connect {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        // `Host` is built only from validated characters, so this cannot fail; fall back to
        // an empty value rather than panicking.
        let host_header =
            HeaderValue::from_str(&host_header).unwrap_or(HeaderValue::from_static(""));
        Self {
            host,
            port,
            scheme,
            form,
            host_header,
        }
    }

    /// Like [`Destination::new`], reusing `raw` as the upstream `Host` value when it is
    /// already the canonical spelling (the common case), which saves formatting it again.
    pub fn with_raw_host(
        host: Host,
        port: u16,
        scheme: Scheme,
        form: RequestForm,
        raw: &HeaderValue,
    ) -> Self {
        let canonical = match (&host, raw.to_str()) {
            (Host::Name(name), Ok(text)) => {
                let default = port == scheme.default_port() && form != RequestForm::Connect;
                match text.split_once(':') {
                    // The port was parsed strictly (no sign, no leading zero), so equal
                    // numbers have equal spellings.
                    Some((h, p)) => !default && h == &**name && p.parse() == Ok(port),
                    None => default && text == &**name,
                }
            }
            _ => false,
        };
        if !canonical {
            return Self::new(host, port, scheme, form);
        }
        Self {
            host,
            port,
            scheme,
            form,
            host_header: raw.clone(),
        }
    }

    /// The same destination with another `Host` written upstream (a route's authority
    /// rewrite); what is dialled does not change.
    pub fn with_host_header(mut self, host_header: HeaderValue) -> Self {
        self.host_header = host_header;
        self
    }

    /// The normalised host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The DNS name, if the host is not an IP literal.
    pub fn name(&self) -> Option<&str> {
        match &self.host {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }

    /// The IP literal, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }

    /// The port, with the scheme's default filled in.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The scheme the client asked for.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// How the client addressed the gateway.
    pub fn form(&self) -> RequestForm {
        self.form
    }

    /// The `Host` header written upstream: the host, and the port when it is not the default.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How the transport finds the addresses of a destination.
///
/// - Inserted by: the registry check (from the matching `ServiceEntry`).
/// - Read by: the transport. Without a plan the transport resolves the destination's own name
///   (or dials its IP literal) on its own port, and trusts no internal address.
#[derive(Clone, Debug, Default)]
pub struct UpstreamPlan {
    /// Where to send the request; empty means "the destination itself".
    pub targets: Arc<[Target]>,
    /// The port to dial when a target names none (a `targetPort`, or the destination's port).
    pub port: Option<u16>,
    /// Networks the registry declares for this service (`ServiceEntry.addresses`): addresses in
    /// them are dialled even when they are internal.
    pub trusted_nets: Arc<[ipnet::IpNet]>,
    /// A label for logs: `namespace/name` of the `ServiceEntry`.
    pub service: Option<Arc<str>>,
    /// The host name this plan reaches, when it is not the request's own (a route's
    /// destination): `--resolve` overrides are looked up for it.
    pub name: Option<Arc<str>>,
    /// How one address is chosen among several (`DestinationRule` `loadBalancer`).
    pub balance: Balance,
    /// TLS to originate towards the upstream (`DestinationRule` `tls`), if any.
    pub tls: Option<Arc<TlsSettings>>,
    /// The local address upstream connections for this plan are made from (a
    /// `ServiceEntry`'s `egress.io/source-ip` annotation); `None`: the gateway's.
    pub source: Option<std::net::IpAddr>,
    /// The upstream speaks HTTP/2 (a port of protocol `HTTP2` or `GRPC`): a plain
    /// connection uses HTTP/2 with prior knowledge (h2c), as gRPC needs; TLS connections
    /// offer `h2` by ALPN in any case.
    pub http2: bool,
}

/// A load-balancing policy (`DestinationRule.trafficPolicy.loadBalancer`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Rotate through the addresses (Istio's default).
    #[default]
    RoundRobin,
    /// A random address.
    Random,
    /// The less busy of two random addresses (Envoy's `LEAST_REQUEST`).
    LeastRequest,
    /// Ignore the endpoints: dial the address the client asked for.
    Passthrough,
    /// The same address for the same value of this request header.
    HashHeader(http::HeaderName),
    /// The same address for the same client IP.
    HashSourceIp,
}

/// TLS origination settings (`DestinationRule.trafficPolicy.tls`), as plain data: the TLS
/// crate turns them into a client configuration, once per distinct value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// `MUTUAL`: present a client certificate.
    pub mutual: bool,
    /// `caCertificates`: PEM file of trusted roots; `None` means the system's / webpki roots.
    pub ca_certificates: Option<std::path::PathBuf>,
    /// `caCrl`: PEM file of certificate revocation lists checked against the server's chain.
    pub ca_crl: Option<std::path::PathBuf>,
    /// `clientCertificate` (PEM chain), for `MUTUAL`.
    pub client_certificate: Option<std::path::PathBuf>,
    /// `privateKey` (PEM), for `MUTUAL`.
    pub private_key: Option<std::path::PathBuf>,
    /// `sni`; `None` means the request's host.
    pub sni: Option<Arc<str>>,
    /// `subjectAltNames`: names the server certificate may carry instead of the SNI.
    pub subject_alt_names: Vec<String>,
    /// `insecureSkipVerify`.
    pub insecure_skip_verify: bool,
    /// Where the settings come from, for messages (`DestinationRule ns/name`).
    pub origin: Arc<str>,
}

impl TlsSettings {
    /// Server verification against the default trust (`SSL_CERT_FILE`, else the webpki
    /// roots) and nothing else: for the gateway's own clients (JWKS, an `https://` proxy).
    pub fn default_trust(origin: &str) -> Self {
        Self {
            mutual: false,
            ca_certificates: None,
            ca_crl: None,
            client_certificate: None,
            private_key: None,
            sni: None,
            subject_alt_names: Vec::new(),
            insecure_skip_verify: false,
            origin: Arc::from(origin),
        }
    }
}

/// What a `CONNECT` tunnel may carry, from the port's declared protocol.
///
/// - Inserted by: the registry check, for `CONNECT`. - Read by: the tunnel.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TunnelInspection {
    /// `HTTPS` / `TLS` port: the first bytes must be a `ClientHello` whose SNI is the
    /// `CONNECT` host (no domain fronting).
    Tls,
    /// `TCP` and other opaque ports, or passthrough under `ALLOW_ANY`: bytes pass as they are.
    Opaque,
}

/// The host a `CONNECT` tunnel was opened to, kept when a `tls` route sends the tunnel to
/// another destination (a wildcard host served by one upstream): the ClientHello's SNI must
/// name this host, the one the route matched, not the route's destination.
///
/// - Inserted by: the route layer. - Read by: the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelAuthority(pub Host);

/// The identity a client proved with its TLS certificate (a `MUTUAL` Gateway server): the
/// certificate's URI SAN (`spiffe://…`) or, without one, its first DNS SAN.
///
/// - Inserted by: the server, per connection. - Read by: authorization (`principals`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePrincipal(pub Arc<str>);

/// The `x-forwarded-client-cert` value describing the client certificate that the
/// connection's TLS handshake verified (a `MUTUAL` Gateway server), computed once per
/// connection.
///
/// - Inserted by: the server, per connection. - Read by: [`GatewayHeadersLayer`](crate::gateway_headers::GatewayHeadersLayer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate(pub HeaderValue);

/// A `VirtualService` fault aborted this request (Envoy's `FI` flag).
///
/// - Inserted by: the route layer. - Read by: telemetry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FaultInjected;

/// The address the client connected from.
///
/// - Inserted by: the server, per connection. - Read by: consistent hashing, authz.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// One upstream target of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A fixed address (`STATIC` endpoints). Declared by the operator, hence trusted even when
    /// internal.
    Addr(SocketAddr),
    /// A name to resolve (`DNS` endpoints), on this port (or the plan's port).
    Name(Arc<str>, Option<u16>),
}

/// Which route served a request.
///
/// - Inserted by: the route layer. - Read by: telemetry, tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDecision {
    /// `namespace/name` of the `VirtualService` and the route's name or index.
    pub route: Arc<str>,
    /// The destination host chosen.
    pub destination: Arc<str>,
    /// The subset, if any.
    pub subset: Option<Arc<str>>,
}

/// Where shadow copies of a request go.
///
/// - Inserted by: the route layer, for routes with `mirror`/`mirrors` whose percentage
///   sampled in. - Read by: [`MirrorLayer`](crate::mirror::MirrorLayer).
#[derive(Clone, Debug)]
pub struct Mirrors(pub Arc<[MirrorTarget]>);

/// One shadow destination.
#[derive(Clone, Debug)]
pub struct MirrorTarget {
    /// `host` of the mirror destination, for logs.
    pub host: Arc<str>,
    /// How to reach it.
    pub plan: UpstreamPlan,
}

/// Marks a shadow copy, so that no layer mirrors a mirror.
///
/// - Inserted by: [`MirrorLayer`](crate::mirror::MirrorLayer) on the copies it sends.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Mirrored;

/// How often and on what a request is retried.
///
/// - Inserted by: the route layer (`VirtualService` `retries`).
/// - Read by: [`RetryLayer`](crate::retry::RetryLayer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// The timeout of each attempt.
    pub per_try_timeout: Option<std::time::Duration>,
    /// Retry any 5xx, and attempts that time out or fail.
    pub on_5xx: bool,
    /// Retry 502, 503, 504.
    pub on_gateway_error: bool,
    /// Retry when the connection cannot be made.
    pub on_connect_failure: bool,
    /// Retry when the upstream resets or closes mid-exchange.
    pub on_reset: bool,
    /// Retry these statuses (shared: the policy is copied into every request of its route).
    pub statuses: Arc<[u16]>,
}

impl RetryPolicy {
    /// Whether a response status asks for another attempt.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && status >= 500)
            || (self.on_gateway_error && matches!(status, 502..=504))
            || self.statuses.contains(&status)
    }
}

/// Facts that layers deeper in the stack report to the telemetry layer for one request.
///
/// - Inserted by: [`TelemetryLayer`](crate::telemetry::TelemetryLayer), shared by reference.
/// - Written by: the registry check (service), the route layer (route, destination), the
///   authorization layer (dry-run decisions).
#[derive(Debug, Default)]
pub struct TelemetrySlot {
    service: std::sync::OnceLock<(Arc<str>, Arc<str>)>,
    route: std::sync::OnceLock<Arc<str>>,
    cluster: std::sync::OnceLock<(u16, Option<Arc<str>>)>,
    upstream: std::sync::OnceLock<std::net::SocketAddr>,
    dry_run: std::sync::OnceLock<DryRun>,
    request_bytes: std::sync::atomic::AtomicU64,
}

impl TelemetrySlot {
    /// Adds request body bytes read from the client.
    pub fn add_request_bytes(&self, n: u64) {
        self.request_bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The request body bytes read so far.
    pub fn request_bytes(&self) -> u64 {
        self.request_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the destination service: its host and its name (Istio's
    /// `destination_service` and `destination_service_name`). The first report wins.
    pub fn set_service(&self, host: Arc<str>, name: Arc<str>) {
        let _ = self.service.set((host, name));
    }

    /// Records the destination port and subset (Istio's `outbound|port|subset|host`).
    pub fn set_cluster(&self, port: u16, subset: Option<Arc<str>>) {
        let _ = self.cluster.set((port, subset));
    }

    /// The destination port and subset, if reported.
    pub fn cluster(&self) -> Option<&(u16, Option<Arc<str>>)> {
        self.cluster.get()
    }

    /// Records the upstream address dialled (the first attempt's).
    pub fn set_upstream(&self, addr: std::net::SocketAddr) {
        let _ = self.upstream.set(addr);
    }

    /// The upstream address, if one was chosen.
    pub fn upstream(&self) -> Option<std::net::SocketAddr> {
        self.upstream.get().copied()
    }

    /// Records what the dry-run authorization policies would have decided.
    pub fn set_dry_run(&self, d: DryRun) {
        let _ = self.dry_run.set(d);
    }

    /// The dry-run decisions, if any policy ran in dry-run.
    pub fn dry_run(&self) -> Option<&DryRun> {
        self.dry_run.get()
    }

    /// Records the route that served the request.
    pub fn set_route(&self, route: Arc<str>) {
        let _ = self.route.set(route);
    }

    /// The destination service, if reported.
    pub fn service(&self) -> Option<&(Arc<str>, Arc<str>)> {
        self.service.get()
    }

    /// The route, if reported.
    pub fn route(&self) -> Option<&Arc<str>> {
        self.route.get()
    }
}

/// Marks a request let through under `ALLOW_ANY` without a matching registry entry.
///
/// - Inserted by: the registry check. - Read by: telemetry (Istio's `PassthroughCluster`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Passthrough;
