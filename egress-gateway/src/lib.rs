//! The egress gateway: the `egress-core` and `egress-policy` layers assembled into a binary.
//!
//! `egress-gateway` listens for HTTP/1.1 and h2c on one port and serves forward-proxy requests
//! (`curl -x`), Host-routed requests (as an Istio egress gateway receives them from sidecars)
//! and `CONNECT` tunnels, checking each destination against a registry read from Istio's own
//! YAML. See [`stack::build`] for the order of the layers.
//!
//! The configuration is compiled once into one policy snapshot, which `check` reports on and
//! the server swaps whole on reload:
//!
//! ```
//! use egress_gateway::cli::ConfigArgs;
//! use egress_gateway::config::load;
//!
//! // No files: the embedded default configuration, as `egress-gateway` runs without flags.
//! let loaded = load(&ConfigArgs {
//!     config: Vec::new(),
//!     outbound_policy: None,
//!     gateway_name: "istio-system/istio-egressgateway".into(),
//!     gateway_labels: vec![("istio".into(), "egressgateway".into())],
//!     path_normalization: None,
//!     mesh_certs: "/etc/certs".into(),
//!     credentials: None,
//! })
//! .expect("the embedded configuration is valid");
//! assert!(loaded.diagnostics.is_empty());
//! assert_eq!(loaded.policy.registry.policy().as_str(), "REGISTRY_ONLY");
//! ```

pub mod check;
pub mod cli;
pub mod config;
pub mod server;
pub mod stack;

mod admin;
mod client_conn;
mod jwks;
mod listeners;
mod passthrough;
mod reload;
mod setup;
mod tunnel;
