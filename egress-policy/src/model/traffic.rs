//! How traffic to a service is sent: subsets of its endpoints, load balancing and TLS
//! origination, per port and per subset.

#[cfg(feature = "serde")]
use serde::Serialize;

use super::Meta;

/// A named subset of a service's endpoints, selected by labels (Istio `DestinationRule.subsets`).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Subset {
    /// `name`.
    pub name: String,
    /// `labels` selecting `ServiceEntry` endpoints.
    pub labels: Vec<(String, String)>,
    /// `trafficPolicy.loadBalancer` of the subset.
    pub lb: Option<LoadBalancer>,
    /// `trafficPolicy.tls` of the subset.
    pub tls: Option<ClientTls>,
}

/// How traffic to one host is sent: its subsets, load balancing and TLS origination, for
/// the whole host and per port (Istio `DestinationRule`).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct DestinationPolicy {
    /// Name, namespace, source.
    pub meta: Meta,
    /// `host`.
    pub host: String,
    /// `subsets`.
    pub subsets: Vec<Subset>,
    /// `trafficPolicy.loadBalancer`.
    pub lb: Option<LoadBalancer>,
    /// `trafficPolicy.portLevelSettings[].loadBalancer`, by port.
    pub port_lb: Vec<(u16, LoadBalancer)>,
    /// `trafficPolicy.tls`.
    pub tls: Option<ClientTls>,
    /// `trafficPolicy.portLevelSettings[].tls`, by port.
    pub port_tls: Vec<(u16, ClientTls)>,
    /// Settings only a mesh can honour (`ISTIO_MUTUAL`), left out of the fields above: each
    /// is an error, unless `host` is this gateway's own service, whose policy is the
    /// sidecar's for its hop to the gateway and never applies to what the gateway dials.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub mesh_only: Vec<crate::diag::Diagnostic>,
}

impl DestinationPolicy {
    /// A policy for one host with no subsets and no settings yet.
    pub fn new(meta: Meta, host: impl Into<String>) -> Self {
        Self {
            meta,
            host: host.into(),
            subsets: Vec::new(),
            lb: None,
            port_lb: Vec::new(),
            tls: None,
            port_tls: Vec::new(),
            mesh_only: Vec::new(),
        }
    }
}

/// How a destination's endpoints are balanced (Istio `trafficPolicy.loadBalancer`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub enum LoadBalancer {
    /// `ROUND_ROBIN` (and `UNSPECIFIED`).
    RoundRobin,
    /// `RANDOM`.
    Random,
    /// `LEAST_REQUEST` (and the older `LEAST_CONN`).
    LeastRequest,
    /// `PASSTHROUGH`.
    Passthrough,
    /// `consistentHash.httpHeaderName` (lower-case).
    HashHeader(String),
    /// `consistentHash.useSourceIp`.
    HashSourceIp,
}

/// TLS the gateway originates to a destination (Istio `ClientTLSSettings`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct ClientTls {
    /// `DISABLE`, `SIMPLE` or `MUTUAL`.
    pub mode: String,
    /// `caCertificates`.
    pub ca_certificates: Option<String>,
    /// `caCrl`.
    pub ca_crl: Option<String>,
    /// `clientCertificate`.
    pub client_certificate: Option<String>,
    /// `privateKey`.
    pub private_key: Option<String>,
    /// `sni`.
    pub sni: Option<String>,
    /// `subjectAltNames`.
    pub subject_alt_names: Vec<String>,
    /// `insecureSkipVerify`.
    pub insecure_skip_verify: bool,
}
