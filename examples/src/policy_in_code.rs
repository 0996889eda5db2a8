//! A policy built in code, without any YAML: the model types a configuration front end would
//! produce, compiled by the same [`compile`] the gateway uses.

use egress_policy::compile::{Settings, compile};
use egress_policy::model::{
    AccessPolicy, AuthzAction, Config, Endpoint, Meta, Operation, Port, Protocol, Resolution, Rule,
    Service,
};
use egress_policy::snapshot::Policy;
use std::net::SocketAddr;

/// `api.internal.test` on port 80, served at `origin` (a declared endpoint, which the SSRF
/// guard accepts), with `/admin` denied to everyone.
pub fn policy(origin: SocketAddr) -> Result<Policy, String> {
    let mut config = Config::default();
    let mut port = Port::new(80, Protocol::Http, "http");
    port.target_port = Some(origin.port());
    let mut api = Service::new(
        Meta::new("internal-api", "default"),
        ["api.internal.test"],
        [port],
        Resolution::Static,
    );
    api.endpoints.push(Endpoint::new(origin.ip().to_string()));
    config.services.push(api);
    config.access_policies.push(AccessPolicy::new(
        Meta::new("no-admin", "default"),
        AuthzAction::Deny,
        vec![Rule {
            to: vec![Operation {
                paths: vec!["/admin*".into()],
                ..Operation::default()
            }],
            ..Rule::default()
        }],
    ));
    let compiled = compile(&config, &Settings::default()).map_err(|d| d.to_string())?;
    Ok(compiled.policy)
}
