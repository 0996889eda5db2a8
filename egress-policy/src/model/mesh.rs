//! Settings of the whole gateway: the outbound policy, external authorizers, trace
//! collectors, path normalisation and the root namespace.

#[cfg(feature = "serde")]
use serde::Serialize;
use std::time::Duration;

use super::{Meta, Normalization, OutboundPolicy};

/// `extensionProviders[].envoyExtAuthzHttp`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct HttpAuthorizer {
    /// `service`: the authorizer's host name (`ns/host` accepted; the namespace is dropped).
    pub service: String,
    /// `port`.
    pub port: u16,
    /// `timeout` (Istio's default is 600s; here 10s, so a stuck authorizer cannot hold
    /// requests for ten minutes).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub timeout: Duration,
    /// `pathPrefix`, prepended to the request path in the check.
    pub path_prefix: String,
    /// `failOpen`: allow when the authorizer cannot be reached.
    pub fail_open: bool,
    /// `statusOnError` (default 403).
    pub status_on_error: u16,
    /// `includeRequestHeadersInCheck` (patterns).
    pub include_request_headers_in_check: Vec<String>,
    /// `includeAdditionalHeadersInCheck`.
    pub include_additional_headers_in_check: Vec<(String, String)>,
    /// `includeRequestBodyInCheck`.
    pub include_request_body_in_check: Option<BodyInCheck>,
    /// `headersToUpstreamOnAllow` (patterns).
    pub headers_to_upstream_on_allow: Vec<String>,
    /// `headersToDownstreamOnDeny` (patterns; empty: all).
    pub headers_to_downstream_on_deny: Vec<String>,
    /// `headersToDownstreamOnAllow` (patterns).
    pub headers_to_downstream_on_allow: Vec<String>,
    /// `envoyExtAuthzGrpc`: asked with Envoy's `envoy.service.auth.v3.Authorization/Check`
    /// over HTTP/2 instead of a copy of the request; the header fields above are then
    /// unused (the check carries every header, the answer says which to set).
    pub grpc: bool,
}

/// `includeRequestBodyInCheck`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct BodyInCheck {
    /// `maxRequestBytes`.
    pub max_request_bytes: u32,
    /// `allowPartialMessage`: send the first `maxRequestBytes` instead of refusing with 413.
    pub allow_partial_message: bool,
}

/// An `extensionProviders[]` entry this gateway can use.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct ExtensionProvider {
    /// `name`, as `AuthorizationPolicy.provider.name` refers to it.
    pub name: String,
    /// The HTTP authorizer.
    #[cfg_attr(feature = "serde", serde(rename = "envoyExtAuthzHttp"))]
    pub http: HttpAuthorizer,
}

/// `extensionProviders[].opentelemetry`: an OTLP collector for traces.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct OtelProvider {
    /// `name`, as `defaultProviders.tracing` refers to it.
    pub name: String,
    /// `service`: the collector's host name (`ns/host` accepted; the namespace is dropped).
    pub service: String,
    /// `port`.
    pub port: u16,
    /// `http.path` when the provider speaks OTLP/HTTP (`http` is set); `None`: OTLP/gRPC.
    pub http_path: Option<String>,
}

impl HttpAuthorizer {
    /// An authorizer at `service:port` with Istio's defaults: asked with the request's
    /// method, path and the headers Envoy always sends, answered within 10 s, failing
    /// closed with 403.
    pub fn new(service: impl Into<String>, port: u16) -> Self {
        Self {
            service: service.into(),
            port,
            timeout: Duration::from_secs(10),
            path_prefix: String::new(),
            fail_open: false,
            status_on_error: 403,
            include_request_headers_in_check: Vec::new(),
            include_additional_headers_in_check: Vec::new(),
            include_request_body_in_check: None,
            headers_to_upstream_on_allow: Vec::new(),
            headers_to_downstream_on_deny: Vec::new(),
            headers_to_downstream_on_allow: Vec::new(),
            grpc: false,
        }
    }
}

/// The MeshSettings fields this gateway reads.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct MeshSettings {
    /// Where it was read.
    pub meta: Meta,
    /// `outboundTrafficPolicy.mode`.
    pub outbound: Option<OutboundPolicy>,
    /// `extensionProviders` that are HTTP authorizers.
    pub extension_providers: Vec<ExtensionProvider>,
    /// `extensionProviders` that are OpenTelemetry collectors.
    pub otel_providers: Vec<OtelProvider>,
    /// `defaultProviders.tracing`: provider names, the first OpenTelemetry one is used.
    pub default_tracing: Vec<String>,
    /// `pathNormalization.normalization`.
    pub path_normalization: Option<Normalization>,
    /// `rootNamespace`.
    pub root_namespace: Option<String>,
}

impl MeshSettings {
    /// No settings: the gateway's defaults and its command line decide.
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            outbound: None,
            extension_providers: Vec::new(),
            otel_providers: Vec::new(),
            default_tracing: Vec::new(),
            path_normalization: None,
            root_namespace: None,
        }
    }
}
