//! The listeners a gateway opens (servers of `Gateway` resources) and which of them this
//! gateway is.

#[cfg(feature = "serde")]
use serde::Serialize;

use super::{Meta, Protocol};

/// `Server.port`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct ServerPort {
    /// `number`.
    pub number: u16,
    /// `name`.
    pub name: String,
    /// `protocol`.
    pub protocol: Protocol,
}

/// `Gateway.servers[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Server {
    /// `port`.
    pub port: ServerPort,
    /// `hosts`, as written (`ns/host`, `host`, `*`, `*.suffix`).
    pub hosts: Vec<String>,
    /// `tls.mode`, when set.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "tlsMode", skip_serializing_if = "Option::is_none")
    )]
    pub tls_mode: Option<String>,
    /// `tls` files for `SIMPLE`/`MUTUAL` servers.
    #[cfg_attr(feature = "serde", serde(rename = "tlsFiles"))]
    pub tls_files: ServerTlsFiles,
}

/// `ServerTLSSettings` files of a terminating server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct ServerTlsFiles {
    /// `serverCertificate` (PEM chain).
    pub server_certificate: Option<String>,
    /// `privateKey` (PEM).
    pub private_key: Option<String>,
    /// `caCertificates` (PEM) verifying client certificates, for `MUTUAL`.
    pub ca_certificates: Option<String>,
}

/// A `Gateway`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Gateway {
    /// Name, namespace, source.
    pub meta: Meta,
    /// `selector`: the labels of the proxies this Gateway configures.
    pub selector: Vec<(String, String)>,
    /// The `gatewayClassName` of a Gateway API `Gateway` (`None` for Istio's): such a
    /// Gateway has no selector; see [`Binding::new`](crate::model::Binding::new).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub class: Option<String>,
    /// `servers`.
    pub servers: Vec<Server>,
}

/// Which Gateways this proxy is: those whose selector its labels satisfy.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Binding {
    /// `namespace/name` of every selected Gateway; empty means "acting for the mesh".
    pub selected: Vec<String>,
}
