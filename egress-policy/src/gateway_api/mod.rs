//! The Kubernetes Gateway API (`gateway.networking.k8s.io` v1, v1beta1, v1alpha2, as Istio
//! accepts them) read into the policy model, beside [`crate::istio`]: `Gateway` listeners
//! become the servers of a [`model::Gateway`](crate::model::Gateway), `HTTPRoute`,
//! `TLSRoute` and `TCPRoute` become [`VirtualHost`](crate::model::VirtualHost) routes, and
//! `ReferenceGrant` permits references across namespaces.
//!
//! Routes attach to their parents only once every file is read:
//! a `Gateway` of class `istio` (its listeners, by `sectionName`, `port`, hostname and
//! `allowedRoutes`), or, for the mesh (GAMMA), a `ServiceEntry` (group
//! `networking.istio.io`) or a `Service`. Each attachment's outcome is a
//! [`RouteStatus`](crate::model::RouteStatus) with Gateway API's reasons (`Accepted`,
//! `NoMatchingParent`, `NotAllowedByListeners`, `NoMatchingListenerHostname`,
//! `RefNotPermitted`, `BackendNotFound`), shown by `check` and `/config_dump`.
//!
//! For a host that both APIs route for the same proxy, the Gateway API route is used and
//! the `VirtualService` is reported as ignored for that host.

mod attach;
mod grpc;
mod listener;
mod parent;
mod read;

pub use listener::{TERMINATE_MODE_OPTION, TLS_CA_OPTION, TLS_CERT_OPTION, TLS_KEY_OPTION};

use std::time::Duration;

use crate::model::{
    Headers, HttpMatch, Meta, Protocol, Redirect, Retries, Rewrite, ServerTlsFiles,
};
use crate::reader::Reader;
use crate::yaml::Node;

/// The API group, as it starts an `apiVersion`.
pub const GROUP: &str = "gateway.networking.k8s.io/";

/// The versions read.
const VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha2"];

/// The `gatewayClassName` this gateway serves (Istio's own gateways).
pub const CLASS: &str = "istio";
/// The class of Istio's ambient waypoints, which also serve as egress gateways.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

/// The Gateway API resources of a configuration, kept until all files are read.
#[derive(Debug, Default)]
pub(crate) struct Documents {
    gateways: Vec<ApiGateway>,
    routes: Vec<Route>,
    grants: Vec<Grant>,
}

/// A `Gateway`.
#[derive(Debug)]
struct ApiGateway {
    meta: Meta,
    class: String,
    listeners: Vec<Listener>,
}

/// Which namespaces' routes a listener takes (`allowedRoutes.namespaces.from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum From {
    Same,
    All,
    Selector,
}

/// `Gateway.spec.listeners[]`.
#[derive(Debug)]
struct Listener {
    name: String,
    hostname: Option<String>,
    port: u16,
    protocol: Protocol,
    /// `PASSTHROUGH` or `SIMPLE` / `MUTUAL` (Terminate), in Istio's words.
    tls_mode: Option<String>,
    tls_files: ServerTlsFiles,
    from: From,
    /// `allowedRoutes.kinds[].kind` (empty: the kinds the protocol takes).
    kinds: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteKind {
    Http,
    /// `GRPCRoute`: HTTP/2 routes matched by service and method, attached as HTTP routes.
    Grpc,
    Tls,
    Tcp,
}

impl RouteKind {
    fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Tcp => "TCPRoute",
        }
    }
}

/// `parentRefs[]`.
#[derive(Clone, Debug)]
struct ParentRef {
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    section: Option<String>,
    port: Option<u16>,
}

/// A `backendRefs[]` entry (or a mirror's `backendRef`).
#[derive(Clone, Debug)]
struct Backend {
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    port: Option<u16>,
    weight: u32,
    headers: Headers,
}

/// One rule of a route.
#[derive(Debug, Default)]
struct Rule {
    name: Option<String>,
    /// HTTP matches (empty: every request, as `PathPrefix /`).
    matches: Vec<HttpMatch>,
    backends: Vec<Backend>,
    headers: Headers,
    redirect: Option<Redirect>,
    rewrite: Option<Rewrite>,
    mirrors: Vec<(Backend, f64)>,
    timeout: Option<Duration>,
    retries: Option<Retries>,
}

/// An `HTTPRoute`, `TLSRoute` or `TCPRoute`.
#[derive(Debug)]
struct Route {
    meta: Meta,
    kind: RouteKind,
    parents: Vec<ParentRef>,
    hostnames: Vec<String>,
    rules: Vec<Rule>,
}

/// A `ReferenceGrant`: references from `from` into its own namespace, to `to`.
#[derive(Debug)]
struct Grant {
    namespace: String,
    /// `(group, kind, namespace)`.
    from: Vec<(String, String, String)>,
    /// `(group, kind, name)`; no name: every resource of the kind.
    to: Vec<(String, String, Option<String>)>,
}

impl Documents {
    /// Reads one Gateway API resource; `Some(id)` for a kind or version not read (listed
    /// as ignored).
    pub(crate) fn read(
        &mut self,
        r: &mut Reader<'_>,
        api: &str,
        kind: &str,
        meta: Meta,
        spec: &Node,
    ) -> Option<std::sync::Arc<str>> {
        let version = api.strip_prefix(GROUP).unwrap_or("");
        if !VERSIONS.contains(&version) {
            r.error(
                spec,
                "apiVersion",
                format!("{api} is not a Gateway API version this gateway reads ({VERSIONS:?})"),
            );
            return None;
        }
        match kind {
            "Gateway" => {
                if let Some(g) = listener::gateway(r, meta, spec) {
                    self.gateways.push(g);
                }
            }
            "HTTPRoute" | "GRPCRoute" | "TLSRoute" | "TCPRoute" => {
                let kind = match kind {
                    "HTTPRoute" => RouteKind::Http,
                    "GRPCRoute" => RouteKind::Grpc,
                    "TLSRoute" => RouteKind::Tls,
                    _ => RouteKind::Tcp,
                };
                if let Some(route) = read::route(r, meta, spec, kind) {
                    self.routes.push(route);
                }
            }
            "ReferenceGrant" => {
                if let Some(g) = read::grant(r, meta, spec) {
                    self.grants.push(g);
                }
            }
            // Cluster-level: which controller runs a class. Nothing for a gateway to read.
            "GatewayClass" => {}
            _ => return r.resource.clone(),
        }
        None
    }
}

#[cfg(test)]
mod tests;
