//! Examples of the egress SDK outside the gateway binary.
//!
//! [`registry_client`] puts the registry check in front of an application's own hyper-util
//! client: the same `ServiceEntry` YAML, the same refusals, no gateway process. Run it with
//! `cargo run -p egress-examples --example registry_client`.
//!
//! [`app_client`] adds TLS origination (as a `DestinationRule` says) and Prometheus metrics
//! to such a client, from the same YAML.
//!
//! [`policy_in_code`] builds a policy from the model types, without YAML, and serves it with
//! [`custom_proxy`]: `cargo run -p egress-examples --example policy_in_code`.
//!
//! [`custom_proxy`] composes the policy layers (registry, routes, authorization, path
//! normalisation, the gateway's own headers) into an embedder's own hyper server, under one
//! reloadable snapshot: `cargo run -p egress-examples --example custom_proxy`.

pub mod app_client;
pub mod custom_proxy;
pub mod policy_in_code;
pub mod registry_client;
