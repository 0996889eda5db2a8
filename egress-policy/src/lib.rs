//! Policy for egress traffic, configured with Istio's own YAML or built in code.
//!
//! ```text
//! YAML ──istio──▶ model::Config ──compile──▶ snapshot::Policy ──PolicyStore/PolicySource──▶
//!   SnapshotLayer (one Arc<Policy> per request) ─▶ layers::* ─▶ engines (registry, routes,
//!   authz, jwt) decide over the request's snapshot
//! ```
//!
//! - [`model`] holds the plain types of what the gateway enforces; [`compile`] turns a
//!   [`model::Config`] into the one [`snapshot::Policy`] every layer reads.
//! - [`istio`] reads `networking.istio.io` resources with file and line positions and
//!   validates them as Istio does ([`diag`] carries the findings); [`gateway_api`] reads
//!   the Kubernetes Gateway API (`Gateway`, `HTTPRoute`, `TLSRoute`, `TCPRoute`,
//!   `ReferenceGrant`) into the same model, in the same files.
//! - [`registry`] compiles `ServiceEntry` resources into an immutable [`Registry`] and
//!   provides [`RegistryOnlyLayer`], which refuses unregistered destinations under
//!   `REGISTRY_ONLY`.
//!
//! - [`authz`] compiles `AuthorizationPolicy` into [`authz::AuthzPolicies`] with
//!   [`layers::AuthzLayer`] (DENY/ALLOW) and [`layers::PathNormalizeLayer`];
//!   [`ext_authz::ExtAuthzLayer`] runs CUSTOM policies against an HTTP authorizer; [`jwt`]
//!   validates tokens as `RequestAuthentication` says ([`layers::JwtLayer`]).
//!
//! - [`connection`] decides for connections without an HTTP request (TLS passthrough by
//!   SNI, TCP Gateway servers by port) with the same engines: the route table,
//!   [`Registry::admit`] (which HTTP requests and `CONNECT` ask too) and the policies; every
//!   refusal is a typed [`Refusal`](egress_core::ctx::Refusal).
//!
//! Mechanisms (destination parsing, transport) live in `egress-core`; this crate only decides.
//!
//! Feature `serde` (off by default) derives `Serialize` for the model and the compiled
//! summaries, which is how the gateway's `/config_dump` prints them; the model itself
//! carries no serialisation.
//!
//! ```
//! use egress_policy::{istio::ConfigSet, registry::Registry};
//!
//! let config = ConfigSet::load_str("inline.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: { name: httpbin }
//! spec:
//!   hosts: [httpbin.org]
//!   ports: [{ number: 80, name: http, protocol: HTTP }]
//!   resolution: DNS
//! "#);
//! let (registry, _warnings) = Registry::compile(&config, None).expect("valid");
//! assert!(registry.lookup_name("httpbin.org", 80).is_some());
//! assert!(registry.lookup_name("example.com", 80).is_none());
//! ```

pub mod authz;
pub mod compile;
pub mod connection;
pub(crate) mod credentials;
pub mod diag;
pub mod duration;
pub mod ext_authz;
pub mod gateway_api;
pub mod identity;
pub mod istio;
pub mod jwks;
pub mod jwt;
pub mod layers;
pub mod model;
pub(crate) mod reader;
pub mod registry;
pub mod routes;
pub mod shared;
pub mod snapshot;
pub mod yaml;

#[cfg(test)]
mod engine_tests;

pub use layers::RegistryOnlyLayer;
pub use registry::Registry;
