//! A [`Config`] compiled into the one [`Policy`] snapshot that every layer reads.
//!
//! Compiling resolves and checks every reference between the parts of a configuration once
//! (routes to registered services and their subsets, policies to this gateway, providers to
//! the MeshConfig that declares them), so the request path never meets a dangling name. The
//! gateway's start, its reloads, `check` and an embedder's own configuration system all go
//! through [`compile`]; what compiled is swapped in whole or not at all.
//!
//! ```
//! use egress_policy::compile::{Settings, compile};
//! use egress_policy::istio::ConfigSet;
//! use egress_policy::model::OutboundPolicy;
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
//! let compiled = compile(&config, &Settings::default()).expect("valid");
//! assert_eq!(compiled.policy.registry.policy(), OutboundPolicy::RegistryOnly);
//! assert!(compiled.diagnostics.errors().next().is_none());
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use crate::Registry;
use crate::authz::{AuthzPolicies, Identity};
use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::jwt::JwtPolicy;
use crate::model::{Binding, Config, Normalization, OutboundPolicy};
use crate::routes::RouteTable;
use crate::snapshot::Policy;

/// What the running gateway adds to a configuration: who it is and the command line's
/// overrides.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This gateway's `namespace/name`: policies with `targetRefs` naming it apply.
    pub gateway_name: String,
    /// This gateway's labels: `Gateway` resources and policy selectors match them. The
    /// default is the labels of Istio's own egress gateway pods.
    pub gateway_labels: Vec<(String, String)>,
    /// Overrides the configuration's outbound policy (`--outbound-policy`).
    pub outbound: Option<OutboundPolicy>,
    /// Overrides the configuration's path normalisation (`--path-normalization`).
    pub normalization: Option<Normalization>,
    /// The directory of this gateway's mesh certificates (`--mesh-certs`), as Istio mounts
    /// them: `cert-chain.pem`, `key.pem`, `root-cert.pem`. `ISTIO_MUTUAL` Gateway servers
    /// terminate with them; the default is Istio's `/etc/certs`.
    pub mesh_certs: PathBuf,
}

/// The files of a mesh certificate directory, as Istio names them.
pub const MESH_CERT_FILES: [&str; 3] = ["cert-chain.pem", "key.pem", "root-cert.pem"];

impl Default for Settings {
    fn default() -> Self {
        Self {
            gateway_name: "istio-system/istio-egressgateway".to_owned(),
            gateway_labels: vec![
                ("istio".to_owned(), "egressgateway".to_owned()),
                ("app".to_owned(), "istio-egressgateway".to_owned()),
            ],
            outbound: None,
            normalization: None,
            mesh_certs: PathBuf::from("/etc/certs"),
        }
    }
}

/// A compiled configuration.
#[derive(Debug)]
pub struct Compiled {
    /// What the request layers read, swapped as one.
    pub policy: Policy,
    /// Which `Gateway` resources select this gateway (the listeners to open).
    pub binding: Binding,
    /// Warnings of the whole configuration (errors would have failed the compile).
    pub diagnostics: Diagnostics,
}

/// Compiles a configuration, with the warnings found on the way; every error found, when
/// there is one.
pub fn compile(config: &Config, settings: &Settings) -> Result<Compiled, Diagnostics> {
    compile_owned(config.clone(), settings)
}

/// [`compile`], for a configuration the caller hands over: it becomes the snapshot's
/// [`Policy::config`] without a copy, its services kept once, by the registry.
pub fn compile_owned(mut own: Config, settings: &Settings) -> Result<Compiled, Diagnostics> {
    let config = &own;
    let binding = Binding::new(&config.gateways, &settings.gateway_labels);
    let mesh_only = mesh_only_errors(config, &own_services(config, settings, &binding));
    let (registry, mut diagnostics) = match Registry::compile(config, settings.outbound) {
        Ok(_) if mesh_only.has_errors() => {
            let mut d = config.diagnostics.clone();
            d.extend(mesh_only);
            return Err(d);
        }
        Ok(found) => found,
        Err(mut d) => {
            d.extend(mesh_only);
            return Err(d);
        }
    };
    let (routes, route_diags) = RouteTable::compile(config, &registry, &binding)?;
    diagnostics.extend(route_diags);
    let mut identity = Identity::new(&settings.gateway_name, &settings.gateway_labels, &binding);
    if let Some(root) = config.mesh.as_ref().and_then(|m| m.root_namespace.clone()) {
        identity.root_namespace = root;
    }
    let (authz, authz_diags) = AuthzPolicies::compile(config, &identity)?;
    diagnostics.extend(authz_diags);
    let (jwt, jwt_diags) = JwtPolicy::compile(config, &identity);
    diagnostics.extend(jwt_diags);
    let normalization = settings
        .normalization
        .or_else(|| config.mesh.as_ref().and_then(|m| m.path_normalization))
        .unwrap_or_default();
    if let Some(d) = weak_normalization(config, normalization) {
        diagnostics.push(d);
    }
    let warnings: Vec<String> = diagnostics.warnings().map(|d| d.to_string()).collect();
    let mesh_certs = add_mesh_certs(&mut own, &binding, &settings.mesh_certs);
    if mesh_certs.has_errors() {
        let mut d = diagnostics;
        d.extend(mesh_certs);
        return Err(d);
    }
    // The registry holds the services (`/config_dump` shows them from there): a million
    // hosts are kept once.
    own.services = Vec::new();
    Ok(Compiled {
        policy: Policy {
            registry: Arc::new(registry),
            routes: Arc::new(routes),
            authz: Arc::new(authz),
            jwt: Arc::new(jwt),
            normalization,
            config: Arc::new(own),
            warnings,
        },
        binding,
        diagnostics,
    })
}

/// Gives the `ISTIO_MUTUAL` servers of the Gateways selecting this gateway the mesh's
/// certificates from `dir`: its chain and key to present, its root to verify clients. A
/// file that cannot be read is an error on the server, not a listener that fails later.
fn add_mesh_certs(config: &mut Config, binding: &Binding, dir: &std::path::Path) -> Diagnostics {
    let mut out = Diagnostics::default();
    let [chain, key, root] = MESH_CERT_FILES.map(|f| dir.join(f));
    let missing = [&chain, &key, &root]
        .into_iter()
        .find(|p| std::fs::File::open(p).is_err());
    for gw in config
        .gateways
        .iter_mut()
        .filter(|gw| binding.selected.contains(&gw.meta.id()))
    {
        let api = gw.class.is_some();
        for (i, server) in gw.servers.iter_mut().enumerate() {
            if server.tls_mode.as_deref() != Some("ISTIO_MUTUAL") {
                continue;
            }
            if let Some(path) = missing {
                let field = if api {
                    format!("spec.listeners[{i}].tls.options")
                } else {
                    format!("spec.servers[{i}].tls.mode")
                };
                out.push(Diagnostic {
                    severity: Severity::Error,
                    file: gw.meta.file.clone(),
                    line: gw.meta.line,
                    col: 1,
                    resource: Some(format!("Gateway {}", gw.meta.id()).into()),
                    field,
                    message: format!(
                        "ISTIO_MUTUAL terminates with this gateway's mesh certificates, and {} cannot be read; give --mesh-certs DIR holding {} (Istio's file-mounted certificates)",
                        path.display(),
                        MESH_CERT_FILES.join(", ")
                    ),
                });
                continue;
            }
            let file = |p: &PathBuf| Some(p.display().to_string());
            server.tls_files = crate::model::ServerTlsFiles {
                server_certificate: file(&chain),
                private_key: file(&key),
                ca_certificates: file(&root),
            };
        }
    }
    out
}

/// This gateway's own services as `(namespace, name)`: the one `--gateway-name` names, and
/// the `<name>-istio` Service Istio deploys for each Gateway API Gateway selecting it.
fn own_services(config: &Config, settings: &Settings, binding: &Binding) -> Vec<(String, String)> {
    let (namespace, name) = settings
        .gateway_name
        .split_once('/')
        .unwrap_or(("default", &settings.gateway_name));
    let mut out = vec![(namespace.to_owned(), name.to_owned())];
    for gw in config
        .gateways
        .iter()
        .filter(|g| g.class.is_some() && binding.selected.contains(&g.meta.id()))
    {
        let class = gw.class.as_deref().unwrap_or_default();
        out.push((
            gw.meta.namespace.clone(),
            format!("{}-{class}", gw.meta.name),
        ));
    }
    out
}

/// The mesh-only settings of `DestinationRule`s that apply here: all but those for this
/// gateway's own services (`name.namespace.svc.cluster.local` and its shorter forms), which
/// the sidecars of a two-hop configuration use to reach it.
fn mesh_only_errors(config: &Config, own_services: &[(String, String)]) -> Diagnostics {
    let own = |host: &str| {
        own_services.iter().any(|(namespace, name)| {
            let Some(rest) = host.strip_prefix(name.as_str()) else {
                return false;
            };
            match rest.strip_prefix('.') {
                None => rest.is_empty(),
                Some(rest) => rest
                    .strip_prefix(namespace.as_str())
                    .is_some_and(|r| matches!(r, "" | ".svc" | ".svc.cluster.local")),
            }
        })
    };
    let mut out = Diagnostics::default();
    for dr in config
        .destination_policies
        .iter()
        .filter(|dr| !own(&dr.host))
    {
        for d in &dr.mesh_only {
            out.push(d.clone());
        }
    }
    out
}

/// A warning when a normalisation weaker than the default meets rules that match paths:
/// those rules then see spellings (`//admin`, `%2Fadmin`) that an origin may read as the
/// path they protect.
fn weak_normalization(config: &Config, mode: Normalization) -> Option<Diagnostic> {
    if !mode.is_weaker_than_default() {
        return None;
    }
    let policy = config.access_policies.iter().find(|p| {
        p.rules.iter().flatten().any(|r| {
            r.to.iter()
                .any(|o| !o.paths.is_empty() || !o.not_paths.is_empty())
        })
    });
    let route = config.virtual_hosts.iter().find(|vs| {
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
    Some(Diagnostic {
        severity: Severity::Warning,
        file: meta.file.clone(),
        line: meta.line,
        col: 1,
        resource: Some(format!("{kind} {}", meta.id()).into()),
        field: field.to_owned(),
        message: format!(
            "path normalisation is {}, weaker than this gateway's default DECODE_AND_MERGE_SLASHES: rules on paths may not see //, %2F or %5C spellings the origin reads as the same path",
            mode.as_str()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: {host}\n  subsets:\n  - name: s\n    trafficPolicy:\n      portLevelSettings:\n      - port: {{number: 443}}\n        tls: {{mode: ISTIO_MUTUAL, sni: nginx.example.com}}\n"
        )
    }

    /// `ISTIO_MUTUAL` is refused where this gateway would dial with it, and left to the
    /// sidecars where the rule is for this gateway's own service (two-hop egress).
    #[test]
    fn mesh_only_tls_is_an_error_except_for_the_gateways_own_service() {
        for own in [
            "istio-egressgateway.istio-system.svc.cluster.local",
            "istio-egressgateway.istio-system.svc",
            "istio-egressgateway.istio-system",
        ] {
            let config = Config::load_str("own.yaml", &rule(own));
            let compiled = compile(&config, &Settings::default());
            assert!(compiled.is_ok(), "{own}: {}", compiled.err().unwrap());
        }
        for other in [
            "nginx.example.com",
            "istio-egressgateway.other.svc.cluster.local",
            "istio-egressgateway-x.istio-system.svc.cluster.local",
        ] {
            let config = Config::load_str("other.yaml", &rule(other));
            let err = compile(&config, &Settings::default())
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("other.yaml:11:")
                    && err.contains("spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.mode")
                    && err.contains("ISTIO_MUTUAL is not supported outside a mesh"),
                "{other}: {err}"
            );
        }
    }
}
