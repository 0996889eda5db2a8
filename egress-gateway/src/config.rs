//! The only place that reads configuration files.

use egress_policy::compile::{Settings, compile_owned};
use egress_policy::diag::Diagnostics;
use egress_policy::istio::ConfigSet;
use egress_policy::model::Binding;
use egress_policy::snapshot::Policy;
use std::fmt;

use crate::cli::ConfigArgs;

/// The configuration compiled into this binary, used when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.yaml");
/// The name the embedded configuration has in diagnostics.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

/// A configuration that loaded: the compiled policy and what was read and found.
#[derive(Debug)]
pub struct Loaded {
    /// What the request layers read, swapped as one.
    pub policy: Policy,
    /// Which `Gateway` resources select this gateway.
    pub binding: Binding,
    /// Warnings (errors would have failed the load).
    pub diagnostics: Diagnostics,
}

impl Loaded {
    /// The compiled policy (which keeps the configuration it was compiled from), the
    /// `Gateway` binding and the warnings.
    pub fn into_policy(self) -> (Policy, Binding, Diagnostics) {
        (self.policy, self.binding, self.diagnostics)
    }
}

/// Why a configuration did not load.
#[derive(Debug)]
pub enum LoadError {
    /// A path could not be read.
    Source(egress_policy::istio::SourceError),
    /// The configuration has errors.
    Invalid(Diagnostics),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Source(e) => write!(f, "cannot read configuration: {e}"),
            LoadError::Invalid(d) => {
                let n = d.errors().count();
                writeln!(f, "configuration has {n} error(s):")?;
                write!(f, "{d}")
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and compiles the configuration named by the arguments.
pub fn load(args: &ConfigArgs) -> Result<Loaded, LoadError> {
    let config = if args.config.is_empty() {
        ConfigSet::load_str(DEFAULT_CONFIG_NAME, DEFAULT_CONFIG)
    } else {
        let options = egress_policy::istio::LoadOptions {
            credentials: args.credentials.clone(),
        };
        ConfigSet::load_paths_with(&args.config, &options).map_err(LoadError::Source)?
    };
    let settings = Settings {
        gateway_name: args.gateway_name.clone(),
        gateway_labels: args.gateway_labels.clone(),
        outbound: args.outbound_policy.map(Into::into),
        normalization: args.path_normalization.map(Into::into),
        mesh_certs: args.mesh_certs.clone(),
    };
    let compiled = compile_owned(config, &settings).map_err(LoadError::Invalid)?;
    Ok(Loaded {
        policy: compiled.policy,
        binding: compiled.binding,
        diagnostics: compiled.diagnostics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_registry_only() {
        let loaded = load(&ConfigArgs {
            config: Vec::new(),
            outbound_policy: None,
            gateway_name: "istio-system/istio-egressgateway".into(),
            gateway_labels: vec![("istio".into(), "egressgateway".into())],
            path_normalization: None,
            mesh_certs: "/etc/certs".into(),
            credentials: None,
        })
        .unwrap();
        assert!(loaded.diagnostics.is_empty(), "{}", loaded.diagnostics);
        assert_eq!(
            loaded.policy.registry.policy(),
            egress_policy::istio::OutboundPolicy::RegistryOnly
        );
        assert!(
            loaded
                .policy
                .registry
                .lookup_name("httpbin.org", 80)
                .is_some()
        );
        assert!(
            loaded
                .policy
                .registry
                .lookup_name("en.wikipedia.org", 443)
                .is_some()
        );
    }
}
