//! The only place that reads configuration files.

use egress_policy::Registry;
use egress_policy::authz::path::Normalization;
use egress_policy::authz::{AuthzPolicies, Identity};
use egress_policy::diag::Diagnostics;
use egress_policy::istio::{Binding, ConfigSet};
use egress_policy::jwt::JwtPolicy;
use egress_policy::routes::RouteTable;
use std::fmt;

use crate::cli::ConfigArgs;

/// The configuration compiled into this binary, used when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.yaml");
/// The name the embedded configuration has in diagnostics.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

/// A configuration that loaded: the registry and what was found along the way.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled registry (with the outbound policy).
    pub registry: Registry,
    /// The compiled routes.
    pub routes: RouteTable,
    /// Which `Gateway` resources select this gateway.
    pub binding: Binding,
    /// The `AuthorizationPolicy` resources that apply to this gateway.
    pub authz: AuthzPolicies,
    /// The `RequestAuthentication` rules that apply to this gateway.
    pub jwt: JwtPolicy,
    /// Path normalisation (flag, else MeshConfig, else `BASE`).
    pub normalization: Normalization,
    /// Everything that was read.
    pub config: ConfigSet,
    /// Warnings (errors would have failed the load).
    pub diagnostics: Diagnostics,
}

impl Loaded {
    /// The compiled parts as the one [`Policy`](egress_policy::snapshot::Policy) the request
    /// layers read, with what was read and found.
    pub fn into_policy(
        self,
    ) -> (
        egress_policy::snapshot::Policy,
        ConfigSet,
        Binding,
        Diagnostics,
    ) {
        let policy = egress_policy::snapshot::Policy {
            registry: std::sync::Arc::new(self.registry),
            routes: std::sync::Arc::new(self.routes),
            authz: std::sync::Arc::new(self.authz),
            jwt: std::sync::Arc::new(self.jwt),
            normalization: self.normalization,
        };
        (policy, self.config, self.binding, self.diagnostics)
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
        ConfigSet::load_paths(&args.config).map_err(LoadError::Source)?
    };
    let policy = args.outbound_policy.map(Into::into);
    match Registry::compile(&config, policy) {
        Ok((registry, mut diagnostics)) => {
            let binding = Binding::new(&config.gateways, &args.gateway_labels);
            let (routes, route_diags) =
                RouteTable::compile(&config, &registry, &binding).map_err(LoadError::Invalid)?;
            diagnostics.extend(route_diags);
            let mut identity = Identity::new(&args.gateway_name, &args.gateway_labels, &binding);
            if let Some(root) = config.mesh.as_ref().and_then(|m| m.root_namespace.clone()) {
                identity.root_namespace = root;
            }
            let (authz, authz_diags) =
                AuthzPolicies::compile(&config, &identity).map_err(LoadError::Invalid)?;
            diagnostics.extend(authz_diags);
            let (jwt, jwt_diags) = JwtPolicy::compile(&config, &identity);
            diagnostics.extend(jwt_diags);
            let normalization = args
                .path_normalization
                .map(Into::into)
                .or_else(|| config.mesh.as_ref().and_then(|m| m.path_normalization))
                .unwrap_or_default();
            if let Some(d) = weak_normalization(&config, normalization) {
                diagnostics.push(d);
            }
            Ok(Loaded {
                registry,
                routes,
                binding,
                authz,
                jwt,
                normalization,
                config,
                diagnostics,
            })
        }
        Err(d) => Err(LoadError::Invalid(d)),
    }
}

/// A warning when a normalisation weaker than the default meets rules that match paths:
/// those rules then see spellings (`//admin`, `%2Fadmin`) that an origin may read as the
/// path they protect.
fn weak_normalization(
    config: &ConfigSet,
    mode: Normalization,
) -> Option<egress_policy::diag::Diagnostic> {
    if !mode.is_weaker_than_default() {
        return None;
    }
    let policy = config.authorization_policies.iter().find(|p| {
        p.rules.iter().flatten().any(|r| {
            r.to.iter()
                .any(|o| !o.paths.is_empty() || !o.not_paths.is_empty())
        })
    });
    let route = config.virtual_services.iter().find(|vs| {
        vs.http
            .iter()
            .any(|r| r.matches.iter().any(|m| m.uri.is_some()))
    });
    let (meta, kind, field) = match (policy, route) {
        (Some(p), _) => (
            &p.meta,
            "AuthorizationPolicy",
            "spec.rules[].to[].operation.paths",
        ),
        (None, Some(vs)) => (&vs.meta, "VirtualService", "spec.http[].match[].uri"),
        (None, None) => return None,
    };
    let name = serde_json::to_value(mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Some(egress_policy::diag::Diagnostic {
        severity: egress_policy::diag::Severity::Warning,
        file: meta.file.clone(),
        line: meta.line,
        col: 1,
        resource: Some(format!("{kind} {}", meta.id()).into()),
        field: field.to_owned(),
        message: format!(
            "path normalisation is {name}, weaker than this gateway's default DECODE_AND_MERGE_SLASHES: rules on paths may not see //, %2F or %5C spellings the origin reads as the same path"
        ),
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
        })
        .unwrap();
        assert!(loaded.diagnostics.is_empty(), "{}", loaded.diagnostics);
        assert_eq!(
            loaded.registry.policy(),
            egress_policy::istio::OutboundPolicy::RegistryOnly
        );
        assert!(loaded.registry.lookup_name("httpbin.org", 80).is_some());
        assert!(
            loaded
                .registry
                .lookup_name("en.wikipedia.org", 443)
                .is_some()
        );
    }
}
