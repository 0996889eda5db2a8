//! The egress gateway: the `egress-core` and `egress-policy` layers assembled into a binary.
//!
//! `egress-gateway` listens for HTTP/1.1 and h2c on one port and serves forward-proxy requests
//! (`curl -x`), Host-routed requests (as an Istio egress gateway receives them from sidecars)
//! and `CONNECT` tunnels, checking each destination against a registry read from Istio's own
//! YAML. See [`stack::build`] for the order of the layers.

pub mod check;
pub mod cli;
pub mod config;
pub mod server;
pub mod stack;

mod admin;
mod jwks;
mod listeners;
mod passthrough;
mod reload;
mod setup;
mod tunnel;
