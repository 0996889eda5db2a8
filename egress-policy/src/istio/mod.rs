//! Istio's own YAML: the resources users already have, read with positions and validated.
//!
//! Accepted: `networking.istio.io` `v1`, `v1beta1` and `v1alpha3` `ServiceEntry` and
//! `Sidecar` (its `outboundTrafficPolicy`), `VirtualService`, `DestinationRule`, `Gateway`,
//! and ASM's `ASMEgressTrafficPolicy` (as the resources it stands for). Other Istio kinds are reported once per kind as
//! "not yet supported, ignored", never silently. `kind: List` documents are unpacked.

mod asm;
mod destination_rule;
mod gateway;
mod http_match;
mod k8s_service;
mod l4_route;
pub mod mesh;
mod metadata;
mod model;
pub(crate) use crate::reader;
mod request_authentication;
pub mod security;
mod service_entry;
mod virtual_service;

pub use http_match::trim_ows;
pub use model::{
    Binding, ClientTls, DestinationRule, DirectResponse, Endpoint, Fault, Gateway, HeaderOps,
    Headers, HttpMatch, HttpRoute, LoadBalancer, Location, Meta, OutboundPolicy, Port, Protocol,
    Redirect, Resolution, Retries, Rewrite, RouteTarget, Server, ServerPort, ServerTlsFiles,
    ServiceEntry, Sidecar, StringMatch, Subset, TcpRoute, TlsMatch, TlsRoute, VirtualService,
    WeightedDestination,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{Diagnostic, Severity};
use crate::yaml::{Node, for_each_document};
pub use metadata::DRY_RUN_ANNOTATION;
use metadata::{Annotations, read_metadata};
use reader::Reader;

const NETWORKING_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// The `ServiceEntry` annotation that fixes the local address of its upstream connections.
pub const SOURCE_IP_ANNOTATION: &str = "egress.io/source-ip";

/// Istio kinds that later versions of this gateway will read; reported as ignored for now.
const KNOWN_LATER: &[&str] = &[
    "WorkloadEntry",
    "WorkloadGroup",
    "EnvoyFilter",
    "ProxyConfig",
    "PeerAuthentication",
    "Telemetry",
    "WasmPlugin",
];

/// Everything read from the configuration sources: the neutral [`crate::model::Config`],
/// which this module's readers fill.
pub type ConfigSet = crate::model::Config;

/// A configuration source that cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SourceError {
    /// The path.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl ConfigSet {
    /// Reads files and directories (their `.yaml` / `.yml` files, sorted, recursively).
    pub fn load_paths(paths: &[PathBuf]) -> Result<Self, SourceError> {
        Self::load_paths_with(paths, &LoadOptions::default())
    }

    /// [`ConfigSet::load_paths`], with what the files refer to outside themselves.
    pub fn load_paths_with(paths: &[PathBuf], options: &LoadOptions) -> Result<Self, SourceError> {
        let mut set = ConfigSet::default();
        let mut state = Load::new(options);
        for path in paths {
            let mut files = Vec::new();
            collect_files(path, &mut files)?;
            for file in files {
                let text = std::fs::read_to_string(&file).map_err(|source| SourceError {
                    path: file.clone(),
                    source,
                })?;
                set.read_text(&file.display().to_string(), &text, &mut state);
            }
        }
        set.finish(state);
        Ok(set)
    }

    /// Reads one YAML text; `name` is used in diagnostics.
    pub fn load_str(name: &str, text: &str) -> Self {
        Self::load_str_with(name, text, &LoadOptions::default())
    }

    /// [`ConfigSet::load_str`], with what the text refers to outside itself.
    pub fn load_str_with(name: &str, text: &str, options: &LoadOptions) -> Self {
        let mut set = ConfigSet::default();
        let mut state = Load::new(options);
        set.read_text(name, text, &mut state);
        set.finish(state);
        set
    }

    fn read_text(&mut self, name: &str, text: &str, state: &mut Load) {
        let file: Arc<str> = name.into();
        self.sources.push(name.to_owned());
        // One document at a time: a file of a million resources never holds a million
        // trees.
        let parsed = for_each_document(text, |doc| self.read_resource(&file, &doc, state));
        if let Err(e) = parsed {
            self.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file,
                line: e.line,
                col: e.col,
                resource: None,
                field: String::new(),
                message: format!("invalid YAML: {}", e.message),
            });
        }
    }

    fn read_resource(&mut self, file: &Arc<str>, doc: &Node, state: &mut Load) {
        // Taken out while reading, so that the reader and the set are borrowed apart.
        let mut diags = std::mem::take(&mut self.diagnostics);
        self.read_into(&mut diags, file, doc, state);
        self.diagnostics = diags;
    }

    fn read_into(
        &mut self,
        diags: &mut crate::diag::Diagnostics,
        file: &Arc<str>,
        doc: &Node,
        state: &mut Load,
    ) {
        let mut r = Reader {
            file: file.clone(),
            resource: None,
            diags,
            deferred: Vec::new(),
            credentials: state.credentials.clone(),
        };
        let Some(mut f) = r.map(doc, "") else { return };
        let api = f.take("apiVersion").and_then(|n| r.string(n, "apiVersion"));
        let kind = f.take("kind").and_then(|n| r.string(n, "kind"));
        let (Some(api), Some(kind)) = (api, kind) else {
            r.error(doc, "", "a resource needs apiVersion and kind");
            return;
        };
        if kind == "List" && api == "v1" {
            let items = f.take("items").map(|n| r.list(n, "items").unwrap_or(&[]));
            for item in items.unwrap_or(&[]) {
                self.read_into(r.diags, file, item, state);
            }
            return;
        }
        let md = read_metadata(&mut r, doc, f.take("metadata"), &kind);
        let (namespace_given, annotations) = (md.namespace_given, md.annotations);
        let meta = Meta {
            name: md.name,
            namespace: md.namespace,
            file: file.clone(),
            line: doc.line,
        };
        let id: Arc<str> = format!("{kind} {}", meta.id()).into();
        r.resource = Some(id.clone());
        let spec = f.take("spec");
        let _status = f.take("status");
        let data = if kind == "ConfigMap" {
            f.take("data")
        } else {
            None
        };
        let networking = NETWORKING_VERSIONS.contains(&api.as_str());
        let empty = Node {
            value: crate::yaml::Value::Null,
            line: doc.line,
            col: doc.col,
        };
        let spec = spec.unwrap_or(&empty);
        let data = data.unwrap_or(&empty);
        let head = Head {
            doc,
            api: &api,
            kind: &kind,
            namespace_given,
            networking,
        };
        let unread = if api.starts_with(crate::gateway_api::GROUP) {
            state.gateway_api.read(&mut r, &api, &kind, meta, spec)
        } else {
            self.read_kind(&mut r, &head, meta, spec, data, annotations)
        };
        // The top-level fields of a kind that is read are checked; a ConfigMap's
        // `binaryData` or `immutable`, and everything of a kind not read, are not ours.
        if unread.is_some() || kind == "ConfigMap" {
            f.ignore_rest();
        } else {
            f.finish(&mut r, &[]);
        }
        if let Some(id) = unread {
            self.ignored.push(format!("{id} ({file}:{})", doc.line));
            count_ignored(&mut state.ignored, file, doc, &kind, &api, id);
        }
    }

    /// Reads one resource of a known kind into the set; `Some(id)` for a kind (or version)
    /// the gateway does not read, to be listed as ignored.
    fn read_kind(
        &mut self,
        r: &mut Reader<'_>,
        head: &Head<'_>,
        meta: Meta,
        spec: &Node,
        data: &Node,
        annotations: Annotations,
    ) -> Option<Arc<str>> {
        let Head {
            doc,
            api,
            kind,
            namespace_given,
            networking,
        } = *head;
        let r = &mut *r;
        match kind {
            "ServiceEntry" | "Sidecar" | "VirtualService" | "DestinationRule" | "Gateway"
                if !networking =>
            {
                unsupported_version(r, doc, api, kind, NETWORKING_VERSIONS)
            }
            "ServiceEntry" => {
                if let Some(mut se) = service_entry::read(r, meta, spec) {
                    se.source_ip = annotations.source_ip;
                    self.services.push(se);
                }
            }
            "Sidecar" => {
                if let Some(sc) = read_sidecar(r, meta, spec) {
                    self.outbound_settings.push(sc);
                }
            }
            "VirtualService" => {
                if let Some(vs) = virtual_service::read(r, meta, spec) {
                    self.virtual_hosts.push(vs);
                }
            }
            "Gateway" => {
                if let Some(g) = gateway::read(r, meta, spec) {
                    self.gateways.push(g);
                }
            }
            "DestinationRule" => {
                if let Some(dr) = destination_rule::read_destination_rule(r, meta, spec) {
                    self.destination_policies.push(dr);
                }
            }
            "ASMEgressTrafficPolicy" if asm::ASM_VERSIONS.contains(&api) => {
                if let Some(g) = asm::read(r, &meta, spec) {
                    self.services.extend(g.services);
                    self.destination_policies.extend(g.destination_policies);
                }
            }
            "AuthorizationPolicy" | "RequestAuthentication"
                if !security::SECURITY_VERSIONS.contains(&api) =>
            {
                unsupported_version(r, doc, api, kind, security::SECURITY_VERSIONS)
            }
            "AuthorizationPolicy" => {
                if let Some(mut p) =
                    security::read_authorization_policy(r, meta, spec, namespace_given)
                {
                    p.dry_run = annotations.dry_run.unwrap_or(false);
                    if p.dry_run && p.action == crate::model::AuthzAction::Custom {
                        // Istio has no shadow mode for CUSTOM; enforcing it, or not at
                        // all, would each surprise someone: refused.
                        r.error(
                            doc,
                            format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
                            "dry-run is not supported for CUSTOM policies (Istio has no shadow mode for an external authorizer)",
                        );
                    } else {
                        self.access_policies.push(p);
                    }
                }
            }
            "RequestAuthentication" => {
                if let Some(p) = request_authentication::read_request_authentication(
                    r,
                    meta,
                    spec,
                    namespace_given,
                ) {
                    self.jwt_authentications.push(p);
                }
            }
            _ => return self.read_other(r, head, meta, spec, data),
        }
        None
    }

    /// Kinds outside Istio's networking and security APIs: MeshConfig in its ConfigMap or
    /// an IstioOperator, and Kubernetes Services; `Some(id)` for one not read.
    fn read_other(
        &mut self,
        r: &mut Reader<'_>,
        head: &Head<'_>,
        meta: Meta,
        spec: &Node,
        data: &Node,
    ) -> Option<Arc<str>> {
        let (doc, api, kind) = (head.doc, head.api, head.kind);
        match kind {
            "ConfigMap" if api == "v1" && meta.name == "istio" => {
                if let Some(m) = mesh::read_config_map(r, meta, data) {
                    set_mesh(&mut self.mesh, r, doc, m);
                }
            }
            "IstioOperator" if api.starts_with("install.istio.io/") => {
                read_istio_operator(&mut self.mesh, r, meta, spec, doc)
            }
            "Service" if api == "v1" => {
                if let Some(s) = k8s_service::read(r, meta, spec) {
                    self.services.push(s);
                }
            }
            _ => return r.resource.clone(),
        }
        None
    }
}

/// What the head of a resource says, for reading its `spec`.
struct Head<'a> {
    doc: &'a Node,
    api: &'a str,
    kind: &'a str,
    namespace_given: bool,
    networking: bool,
}

/// An `IstioOperator`: only its `spec.meshConfig` is for a gateway.
fn read_istio_operator(
    slot: &mut Option<mesh::MeshConfig>,
    r: &mut Reader<'_>,
    meta: Meta,
    spec: &Node,
    doc: &Node,
) {
    let mut sf = r.map(spec, "spec");
    let mc = sf.as_mut().and_then(|f| f.take("meshConfig"));
    if let Some(f) = sf {
        // The rest of an IstioOperator installs Istio; nothing here for a gateway.
        f.ignore_rest();
    }
    if let Some(mc) = mc
        && let Some(m) = mesh::read_mesh(r, meta, mc, "spec.meshConfig")
    {
        set_mesh(slot, r, doc, m);
    }
}

fn unsupported_version(r: &mut Reader<'_>, doc: &Node, api: &str, kind: &str, known: &[&str]) {
    r.error(
        doc,
        "apiVersion",
        format!(
            "unsupported apiVersion {api:?} for {kind} (expected one of {})",
            known.join(", ")
        ),
    );
}

/// Counts a resource that is not read, once per kind, for one warning naming the first.
fn count_ignored(
    ignored: &mut BTreeMap<String, (Diagnostic, usize)>,
    file: &Arc<str>,
    doc: &Node,
    kind: &str,
    api: &str,
    id: Arc<str>,
) {
    let what = if KNOWN_LATER.contains(&kind) && api.contains(".istio.io/") {
        format!("{kind} ({api})")
    } else {
        format!("{kind} ({api}), which is not an Istio resource this gateway reads,")
    };
    let entry = ignored.entry(what).or_insert_with(|| {
        (
            Diagnostic {
                severity: Severity::Warning,
                file: file.clone(),
                line: doc.line,
                col: doc.col,
                resource: Some(id),
                field: String::new(),
                message: String::new(),
            },
            0,
        )
    });
    entry.1 += 1;
}

fn set_mesh(
    slot: &mut Option<mesh::MeshConfig>,
    r: &mut Reader<'_>,
    doc: &Node,
    m: mesh::MeshConfig,
) {
    match slot {
        Some(first) => r.error(
            doc,
            "",
            format!(
                "MeshConfig is already given by {} ({}:{}); one source only",
                first.meta.id(),
                first.meta.file,
                first.meta.line
            ),
        ),
        None => *slot = Some(m),
    }
}

/// What loading keeps until every file is read: the kinds ignored, and the Gateway API
/// resources, whose routes attach to their parents only once all are known.
#[derive(Default)]
struct Load {
    ignored: BTreeMap<String, (Diagnostic, usize)>,
    credentials: Option<Arc<Path>>,
    gateway_api: crate::gateway_api::Documents,
}

impl Load {
    fn new(options: &LoadOptions) -> Self {
        Self {
            credentials: options.credentials.as_deref().map(Arc::from),
            ..Self::default()
        }
    }
}

/// What a configuration refers to outside its files.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The directory where the Kubernetes Secrets that `credentialName` and `certificateRefs`
    /// name are mounted, one directory per Secret (`--credentials`).
    pub credentials: Option<PathBuf>,
}

impl ConfigSet {
    fn finish(&mut self, state: Load) {
        state.gateway_api.attach(self);
        self.report_ignored(state.ignored);
    }

    fn report_ignored(&mut self, ignored: BTreeMap<String, (Diagnostic, usize)>) {
        for (what, (mut d, n)) in ignored {
            let more = if n > 1 {
                format!(" ({n} resources of this kind; the first is named here)")
            } else {
                String::new()
            };
            d.message = format!("{what} is not yet supported, ignored{more}");
            self.diagnostics.push(d);
        }
    }
}

fn read_sidecar(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<Sidecar> {
    let mut f = r.map(spec, "spec")?;
    let mut outbound = None;
    if let Some(otp) = f.take("outboundTrafficPolicy")
        && let Some(mut of) = r.map(otp, "spec.outboundTrafficPolicy")
    {
        if let Some(mode) = of.take("mode") {
            outbound = match r.one_of(
                mode,
                "spec.outboundTrafficPolicy.mode",
                &["ALLOW_ANY", "REGISTRY_ONLY"],
            ) {
                Some("ALLOW_ANY") => Some(OutboundPolicy::AllowAny),
                Some(_) => Some(OutboundPolicy::RegistryOnly),
                None => None,
            };
        }
        of.finish(r, &["egressProxy"]);
    }
    f.finish(
        r,
        &[
            "workloadSelector",
            "ingress",
            "egress",
            "inboundConnectionPool",
        ],
    );
    Some(Sidecar { meta, outbound })
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let err = |source| SourceError {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        // Kubernetes ConfigMap mounts keep the real files in `..data`-style hidden folders
        // and link them in; reading hidden entries would read every file twice.
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
        {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
