//! The typed reasons the gateway answers, refuses or closes instead of the upstream: set as
//! extensions and read by telemetry, the access log and traces; headers only render them.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// The header that names why the gateway refused a request, as a stable token.
pub const DENIED_HEADER: &str = "x-egress-denied";
/// The header that names which upstream failure the gateway reports (502/503/504).
pub const ERROR_HEADER: &str = "x-egress-error";
/// The upstream step that failed for a response the gateway wrote itself (`None`: an
/// internal error). With [`Rejection`] for refusals, this is what telemetry, the access log
/// and traces read; the `x-egress-error` header only renders it for the client.
///
/// - Inserted by: [`respond::error_response`](crate::respond::error_response). - Read by:
///   telemetry, traces.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Failure(pub Option<crate::error::UpstreamErrorKind>);

impl Failure {
    /// The stable token of `x-egress-error`.
    pub fn token(self) -> &'static str {
        self.0
            .map_or("internal", crate::error::UpstreamErrorKind::token)
    }
}

/// Why the gateway answered, refused or closed instead of the upstream: the one typed
/// reason behind every refusal token, metric label, access log flag and trace attribute,
/// for HTTP requests and for connections (tunnels, passthrough, TCP) alike.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A policy or a check refused.
    Denied(RejectionKind),
    /// An upstream step failed.
    Failed(crate::error::UpstreamErrorKind),
}

impl Outcome {
    /// The stable token (`x-egress-denied` / `x-egress-error`, metric and log labels).
    pub fn token(self) -> &'static str {
        match self {
            Outcome::Denied(k) => k.token(),
            Outcome::Failed(k) => k.token(),
        }
    }

    /// Envoy's response flag for it.
    pub fn flags(self) -> &'static str {
        use crate::error::UpstreamErrorKind as U;
        match self {
            Outcome::Denied(k) => match k {
                RejectionKind::NotInRegistry
                | RejectionKind::NoRoute
                | RejectionKind::TunnelNotAllowed => "NR",
                RejectionKind::Malformed
                | RejectionKind::Unsupported
                | RejectionKind::HeaderTooLarge => "DPE",
                RejectionKind::BodyTimeout | RejectionKind::HeaderTimeout => "SI",
                RejectionKind::TunnelLimit => "UO",
                RejectionKind::RbacDenied => "RBAC",
                RejectionKind::ExtAuthzDenied
                | RejectionKind::ExtAuthzError
                | RejectionKind::JwtInvalid
                | RejectionKind::IpDenied
                | RejectionKind::LoopDetected
                | RejectionKind::MissingDestination
                | RejectionKind::MissingPolicy => "UAEX",
                RejectionKind::BodyTooLarge
                | RejectionKind::NotTls
                | RejectionKind::NoClientHello
                | RejectionKind::SniMissing
                | RejectionKind::SniMismatch
                | RejectionKind::ClientTlsHandshake => "-",
            },
            Outcome::Failed(k) => match k {
                U::DnsFailed | U::DnsTimeout => "UH",
                U::ConnectFailed | U::ConnectTimeout | U::Protocol | U::TlsHandshake => "UF",
                U::ResponseTimeout => "UT",
                U::IpDenied | U::LoopDetected => "UAEX",
                U::ClientBodyMalformed => "DPE",
                U::ClientBodyTimeout => "SI",
            },
        }
    }
}

/// Why a layer answered instead of forwarding.
///
/// - Inserted by: the refusing layer, into the *response* extensions.
/// - Read by: telemetry, tests.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
}

/// The stable reasons for a refusal; [`RejectionKind::token`] is the `x-egress-denied` value.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The request is ambiguous or malformed (400).
    Malformed,
    /// A layer found no [`Destination`](super::Destination) in the request (a stack assembled in the wrong order).
    MissingDestination,
    /// `REGISTRY_ONLY` and the destination is not registered.
    NotInRegistry,
    /// A `CONNECT` to a registered port whose protocol does not allow opaque tunnels.
    TunnelNotAllowed,
    /// The destination resolves to an internal address that is not declared (SSRF guard).
    IpDenied,
    /// The request would loop back into the gateway.
    LoopDetected,
    /// The scheme or request form is not supported.
    Unsupported,
    /// A `VirtualService` covers the host but none of its routes matches (Envoy's `NR`).
    NoRoute,
    /// An `AuthorizationPolicy` denied the request (403 `RBAC: access denied`).
    RbacDenied,
    /// A JWT was present and did not validate: signature, key, issuer, audience, time (401).
    JwtInvalid,
    /// The external authorizer denied the request.
    ExtAuthzDenied,
    /// The external authorizer could not be asked (unreachable, timeout, 5xx, overloaded).
    ExtAuthzError,
    /// A body that must be buffered (for the external authorizer) is over its limit (413).
    BodyTooLarge,
    /// `--max-tunnels` tunnels are open; this one would exceed the cap (429).
    TunnelLimit,
    /// The client's request body stalled for longer than `--body-idle-timeout` (408).
    BodyTimeout,
    /// A layer that reads the request's configuration snapshot found none (a stack
    /// assembled without the snapshot layer): refused rather than decided without policy.
    MissingPolicy,
    /// A tunnel to a TLS port, or a passthrough connection, whose first bytes are not TLS.
    NotTls,
    /// No complete `ClientHello` arrived in time.
    NoClientHello,
    /// A `ClientHello` without a server name where one is needed.
    SniMissing,
    /// A `ClientHello` naming another host than the tunnel was opened to (domain fronting).
    SniMismatch,
    /// The TLS handshake of a client with a terminating Gateway server failed.
    ClientTlsHandshake,
    /// A request head over `--max-header-bytes` (answered 431 by the HTTP parser).
    HeaderTooLarge,
    /// A request head that did not arrive within `--header-read-timeout`.
    HeaderTimeout,
}

impl RejectionKind {
    /// The stable token sent in `x-egress-denied`.
    pub fn token(self) -> &'static str {
        match self {
            RejectionKind::Malformed => "malformed",
            RejectionKind::MissingDestination => "missing-destination",
            RejectionKind::NotInRegistry => "registry-only",
            RejectionKind::TunnelNotAllowed => "tunnel-not-allowed",
            RejectionKind::IpDenied => "ip-denied",
            RejectionKind::LoopDetected => "loop-detected",
            RejectionKind::Unsupported => "unsupported",
            RejectionKind::NoRoute => "no-route",
            RejectionKind::RbacDenied => "rbac-denied",
            RejectionKind::JwtInvalid => "jwt-invalid",
            RejectionKind::ExtAuthzDenied => "ext-authz-denied",
            RejectionKind::ExtAuthzError => "ext-authz-error",
            RejectionKind::BodyTooLarge => "body-too-large",
            RejectionKind::TunnelLimit => "tunnel-limit",
            RejectionKind::BodyTimeout => "request-body-timeout",
            RejectionKind::MissingPolicy => "missing-policy",
            RejectionKind::NotTls => "not-tls",
            RejectionKind::NoClientHello => "no-client-hello",
            RejectionKind::SniMissing => "sni-missing",
            RejectionKind::SniMismatch => "sni-mismatch",
            RejectionKind::ClientTlsHandshake => "tls-handshake",
            RejectionKind::HeaderTooLarge => "header-too-large",
            RejectionKind::HeaderTimeout => "header-timeout",
        }
    }
}

impl Rejection {
    /// A rejection of this kind.
    pub fn new(kind: RejectionKind) -> Self {
        Self { kind }
    }

    /// Its kind.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// Builds the refusal response: status, plain-text body, `x-egress-denied`, this fact in
    /// the extensions, and `Connection: close` when `close` (ambiguous input, failed CONNECT).
    /// Every refusal goes through here, so every refusal is also logged.
    pub fn respond<B: From<Bytes>>(
        self,
        status: StatusCode,
        close: bool,
        why: String,
    ) -> Response<B> {
        tracing::info!(reason = self.kind.token(), %status, why = why.trim_end(), "request refused");
        let mut rsp = Response::new(B::from(Bytes::from(why)));
        *rsp.status_mut() = status;
        let headers = rsp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(DENIED_HEADER, HeaderValue::from_static(self.kind.token()));
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        rsp.extensions_mut().insert(self);
        rsp
    }
}

/// A refusal an engine decided: its typed reason, the status and whether the connection
/// closes, and the message. A layer renders it with [`Refusal::respond`]; a connection
/// handler (TLS passthrough, TCP) that has no response to send logs and counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    kind: RejectionKind,
    status: StatusCode,
    close: bool,
    why: String,
}

impl Refusal {
    /// A refusal of `kind`, answered with `status` (closing the connection when `close`)
    /// and `why` as the body.
    pub fn new(kind: RejectionKind, status: StatusCode, close: bool, why: String) -> Self {
        Self {
            kind,
            status,
            close,
            why,
        }
    }

    /// Its reason.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// Its outcome, for metrics and the access log.
    pub fn outcome(&self) -> Outcome {
        Outcome::Denied(self.kind)
    }

    /// Its message, without the trailing newline of a response body.
    pub fn why(&self) -> &str {
        self.why.trim_end()
    }

    /// The refusal as a response (see [`Rejection::respond`]).
    pub fn respond<B: From<Bytes>>(self) -> Response<B> {
        Rejection::new(self.kind).respond(self.status, self.close, self.why)
    }
}
