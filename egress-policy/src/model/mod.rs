//! The policy API: plain Rust types for what the gateway enforces, with no YAML behind them.
//!
//! Configuration front ends (today [`crate::istio`]) read their resources into these types;
//! [`crate::compile`] turns a [`Config`] into the one immutable
//! [`Policy`](crate::snapshot::Policy) that every layer reads. A program can build a
//! [`Config`] in code just as well:
//!
//! ```
//! use egress_policy::model::{Config, Meta, Port, Protocol, Resolution, Service};
//! use egress_policy::compile::{Settings, compile};
//!
//! let mut config = Config::default();
//! config.services.push(Service::new(
//!     Meta::new("httpbin", "default"),
//!     ["httpbin.org"],
//!     [Port::new(80, Protocol::Http, "http")],
//!     Resolution::Dns,
//! ));
//! let compiled = compile(&config, &Settings::default()).expect("valid");
//! let registry = &compiled.policy.registry;
//! assert!(registry.lookup_name("httpbin.org", 80).is_some());
//! assert!(registry.lookup_name("example.com", 80).is_none());
//! ```
//!
//! | type | what it is | Istio resource |
//! | --- | --- | --- |
//! | [`Service`] | an external service: hosts, ports, endpoints | `ServiceEntry` |
//! | [`OutboundSetting`] | the outbound policy (`REGISTRY_ONLY`, `ALLOW_ANY`) | `Sidecar`, MeshConfig |
//! | [`DestinationPolicy`] | subsets, load balancing, TLS origination | `DestinationRule` |
//! | [`VirtualHost`] | HTTP, TLS and TCP routes for hosts | `VirtualService` |
//! | [`Gateway`] | listeners this gateway opens | `Gateway` |
//! | [`AccessPolicy`] | allow, deny, audit and custom rules | `AuthorizationPolicy` |
//! | [`JwtAuthentication`] | JWT providers | `RequestAuthentication` |
//! | [`MeshSettings`] | authorizers, collectors, normalisation | MeshConfig |

#[cfg(feature = "serde")]
use serde::Serialize;
use std::sync::Arc;

mod authz;
mod listener;
mod mesh;
mod route;
mod service;
mod traffic;

pub use authz::{
    AccessPolicy, AuthzAction, ClaimToHeader, Condition, JwtAuthentication, JwtHeader, JwtProvider,
    Operation, Rule, Scope, Source, TargetRef, WHEN_KEYS, bracketed, parse_ip_block,
    when_key_is_http_only,
};
pub use listener::{Binding, Gateway, Server, ServerPort, ServerTlsFiles};
pub use mesh::{BodyInCheck, ExtensionProvider, HttpAuthorizer, MeshSettings, OtelProvider};
pub use route::{
    DirectResponse, Fault, HeaderOps, Headers, HttpMatch, HttpRoute, Redirect, Retries, Rewrite,
    RouteTarget, StringMatch, TcpRoute, TlsMatch, TlsRoute, VirtualHost, WeightedDestination,
};
pub use service::{
    Endpoint, Location, OutboundPolicy, OutboundSetting, Port, Protocol, Resolution, Service,
};
pub use traffic::{ClientTls, DestinationPolicy, LoadBalancer, Subset};

/// A whole configuration: every resource of the policy, in the order read, and what reading
/// found. Filled by a front end ([`crate::istio`]) or built in code; [`crate::compile`]
/// checks the references between its parts and compiles it.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Config {
    /// External services (Istio `ServiceEntry`, Kubernetes `Service`). Emptied in a
    /// compiled [`Policy::config`](crate::snapshot::Policy::config): the registry keeps them.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "service_entries", skip_serializing_if = "Vec::is_empty")
    )]
    pub services: Vec<Service>,
    /// Resources that set the outbound policy (Istio `Sidecar`).
    #[cfg_attr(feature = "serde", serde(rename = "sidecars"))]
    pub outbound_settings: Vec<OutboundSetting>,
    /// Routes per host (Istio `VirtualService`).
    #[cfg_attr(feature = "serde", serde(rename = "virtual_services"))]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Subsets, balancing and TLS per destination (Istio `DestinationRule`).
    #[cfg_attr(feature = "serde", serde(rename = "destination_rules"))]
    pub destination_policies: Vec<DestinationPolicy>,
    /// Listeners (Istio `Gateway`).
    pub gateways: Vec<Gateway>,
    /// Access policies (Istio `AuthorizationPolicy`).
    #[cfg_attr(feature = "serde", serde(rename = "authorization_policies"))]
    pub access_policies: Vec<AccessPolicy>,
    /// JWT authentication (Istio `RequestAuthentication`).
    #[cfg_attr(feature = "serde", serde(rename = "request_authentications"))]
    pub jwt_authentications: Vec<JwtAuthentication>,
    /// Gateway-wide settings (Istio MeshConfig).
    pub mesh: Option<MeshSettings>,
    /// Resources read but not applied: `Kind namespace/name (file:line)`.
    pub ignored: Vec<String>,
    /// The files read.
    pub sources: Vec<String>,
    /// Errors and warnings found while reading.
    pub diagnostics: crate::diag::Diagnostics,
    /// How each Gateway API route attached to each of its parents.
    pub route_status: Vec<RouteStatus>,
}

/// Whether a route (Gateway API `HTTPRoute`, `TLSRoute`, `TCPRoute`) attached to one of its
/// parents, with Gateway API's reason (`Accepted`, `NoMatchingParent`,
/// `NotAllowedByListeners`, `NoMatchingListenerHostname`, `RefNotPermitted`,
/// `BackendNotFound`, `InvalidKind`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct RouteStatus {
    /// `Kind namespace/name` of the route.
    pub route: String,
    /// `Kind namespace/name` of the parent.
    pub parent: String,
    /// Attached and in force (a rule may still answer 500 for a backend not permitted).
    pub accepted: bool,
    /// The reason token.
    pub reason: &'static str,
    /// What it means here.
    pub message: String,
}

/// Where a resource was defined.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Meta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// The file it came from.
    pub file: Arc<str>,
    /// The line where the resource starts.
    pub line: u32,
}

impl Meta {
    /// A resource built in code: its name and namespace, with `<code>` as its file.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            file: Arc::from("<code>"),
            line: 0,
        }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `pathNormalization.normalization`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
pub enum Normalization {
    /// As received.
    None,
    /// RFC 3986 normalisation (Istio's default, `DEFAULT`).
    Base,
    /// `BASE` and merged slashes.
    MergeSlashes,
    /// Decoded `%2F`/`%5C`, then `MERGE_SLASHES`: the strictest, and this gateway's default.
    #[default]
    DecodeAndMergeSlashes,
}

impl Normalization {
    /// Whether this mode reads fewer path spellings as one than the default does.
    pub fn is_weaker_than_default(self) -> bool {
        self != Normalization::default()
    }

    /// Istio's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Normalization::None => "NONE",
            Normalization::Base => "BASE",
            Normalization::MergeSlashes => "MERGE_SLASHES",
            Normalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }

    /// From Istio's names (`DEFAULT` is `BASE`, as in Istio).
    pub fn from_istio(s: &str) -> Self {
        match s {
            "NONE" => Normalization::None,
            "MERGE_SLASHES" => Normalization::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Normalization::DecodeAndMergeSlashes,
            _ => Normalization::Base,
        }
    }
}
