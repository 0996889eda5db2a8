//! Services the gateway knows: their hosts, addresses, ports, endpoints and how they are
//! resolved, and the outbound policy for destinations that are not among them.

use ipnet::IpNet;
#[cfg(feature = "serde")]
use serde::Serialize;

use super::Meta;

/// How a service's endpoints are found (Istio `ServiceEntry.resolution`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
pub enum Resolution {
    /// Forward to the address the client asked for.
    None,
    /// Use the endpoints' IP addresses.
    Static,
    /// Resolve the host (or the endpoints' names) with DNS.
    Dns,
    /// Like `DNS`, one address at a time.
    DnsRoundRobin,
    /// Resolve the requested name, for wildcard hosts.
    DynamicDns,
}

/// Whether a service is outside the mesh (Istio `ServiceEntry.location`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
pub enum Location {
    /// Outside the mesh (the usual case for egress).
    MeshExternal,
    /// Inside the mesh.
    MeshInternal,
}

/// A port's protocol (`ServicePort.protocol`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// HTTP over TLS (opaque to the gateway unless it originates TLS).
    Https,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
    /// gRPC-Web.
    GrpcWeb,
    /// TLS, routed by SNI.
    Tls,
    /// Opaque TCP.
    Tcp,
    /// MongoDB (TCP).
    Mongo,
    /// MySQL (TCP).
    Mysql,
    /// Redis (TCP).
    Redis,
}

impl Protocol {
    /// Parses Istio's protocol names, which are case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTPS" => Protocol::Https,
            "HTTP2" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "GRPC-WEB" => Protocol::GrpcWeb,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "MONGO" => Protocol::Mongo,
            "MYSQL" => Protocol::Mysql,
            "REDIS" => Protocol::Redis,
            _ => return None,
        })
    }

    /// Whether a `CONNECT` tunnel may carry this protocol: the gateway cannot look inside a
    /// tunnel, so only ports that are opaque anyway (TLS, TCP) accept one.
    pub fn allows_tunnel(self) -> bool {
        matches!(
            self,
            Protocol::Https
                | Protocol::Tls
                | Protocol::Tcp
                | Protocol::Mongo
                | Protocol::Mysql
                | Protocol::Redis
        )
    }

    /// Whether the gateway proxies this protocol as HTTP requests.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }
}

/// A port of a service (Istio `ServicePort`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Port {
    /// The port clients use.
    pub number: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its name (may be empty).
    pub name: String,
    /// The port dialled upstream, when it differs.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "targetPort", skip_serializing_if = "Option::is_none")
    )]
    pub target_port: Option<u16>,
}

/// An endpoint of a service (Istio `WorkloadEntry` in `ServiceEntry.endpoints`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Endpoint {
    /// An IP address, or a DNS name for `DNS` resolution.
    pub address: String,
    /// Port name to port number overrides.
    pub ports: Vec<(String, u16)>,
    /// Labels (selected by `DestinationRule` subsets).
    pub labels: Vec<(String, String)>,
    /// Load-balancing weight.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub weight: Option<u32>,
}

/// An external service: its hosts, addresses, ports and endpoints (Istio `ServiceEntry`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Service {
    /// Name, namespace, source.
    pub meta: Meta,
    /// Hosts, lower-cased; `*.suffix` wildcards allowed.
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service.
    pub addresses: Vec<IpNet>,
    /// Ports.
    pub ports: Vec<Port>,
    /// Inside or outside the mesh.
    pub location: Location,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// `exportTo` (accepted, not enforced: a gateway serves every namespace).
    #[cfg_attr(feature = "serde", serde(rename = "exportTo"))]
    pub export_to: Vec<String>,
    /// The `egress.io/source-ip` annotation: the local address this service's upstream
    /// connections are made from (a firewall allow-list per destination).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "sourceIp", skip_serializing_if = "Option::is_none")
    )]
    pub source_ip: Option<std::net::IpAddr>,
    /// Networks whose addresses this service's name may resolve to and still be dialled,
    /// beyond [`Service::addresses`] (a Kubernetes Service's cluster-internal ones).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "trustedNets", skip_serializing_if = "Vec::is_empty")
    )]
    pub trusted_nets: Vec<IpNet>,
    /// What declared it: `ServiceEntry`, or a Kubernetes `Service`.
    pub kind: &'static str,
}

impl Service {
    /// The networks this service's connections may reach though internal: its addresses,
    /// and its trusted networks.
    pub fn trusted(&self) -> Vec<IpNet> {
        let mut nets = self.addresses.clone();
        nets.extend(self.trusted_nets.iter().copied());
        nets
    }

    /// An external service outside the mesh with these hosts (lower-cased, trailing dot
    /// removed; `*.suffix` for a wildcard) and ports, and no endpoints: with
    /// [`Resolution::Dns`] the host itself is resolved, with [`Resolution::Static`] add
    /// [`Endpoint`]s to [`Service::endpoints`].
    pub fn new<H: AsRef<str>>(
        meta: Meta,
        hosts: impl IntoIterator<Item = H>,
        ports: impl IntoIterator<Item = Port>,
        resolution: Resolution,
    ) -> Self {
        Self {
            meta,
            hosts: hosts
                .into_iter()
                .map(|h| h.as_ref().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            addresses: Vec::new(),
            ports: ports.into_iter().collect(),
            location: Location::MeshExternal,
            resolution,
            endpoints: Vec::new(),
            export_to: Vec::new(),
            source_ip: None,
            trusted_nets: Vec::new(),
            kind: "ServiceEntry",
        }
    }
}

impl Port {
    /// A port dialled as it is numbered.
    pub fn new(number: u16, protocol: Protocol, name: impl Into<String>) -> Self {
        Self {
            number,
            protocol,
            name: name.into(),
            target_port: None,
        }
    }
}

impl Endpoint {
    /// An endpoint at an IP address (or a DNS name), with no labels or port overrides.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            ports: Vec::new(),
            labels: Vec::new(),
            weight: None,
        }
    }
}

/// What happens to destinations outside the registry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
pub enum OutboundPolicy {
    /// Unregistered destinations pass (Istio's mesh default).
    AllowAny,
    /// Unregistered destinations are refused (this gateway's default).
    RegistryOnly,
}

impl OutboundPolicy {
    /// Istio's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundPolicy::AllowAny => "ALLOW_ANY",
            OutboundPolicy::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

/// An outbound policy set by one resource (Istio `Sidecar`: only its
/// `outboundTrafficPolicy` applies to a gateway); several must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct OutboundSetting {
    /// Name, namespace, source.
    pub meta: Meta,
    /// The mode it sets, if any.
    pub outbound: Option<OutboundPolicy>,
}
