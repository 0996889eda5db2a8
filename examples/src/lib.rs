//! Examples of the egress SDK outside the gateway binary.
//!
//! [`registry_client`] puts the registry check in front of an application's own hyper-util
//! client: the same `ServiceEntry` YAML, the same refusals, no gateway process. Run it with
//! `cargo run -p egress-examples --example registry_client`.

pub mod registry_client;
