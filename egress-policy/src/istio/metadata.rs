//! `metadata`: name, namespace, and the annotations this gateway reads.

use super::SOURCE_IP_ANNOTATION;
use super::reader::Reader;
use crate::yaml::Node;

/// What `metadata` says that this gateway reads.
pub(super) struct Metadata {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) namespace_given: bool,
    pub(super) annotations: Annotations,
}

/// The annotations this gateway reads; the others belong to other tools.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Annotations {
    /// [`SOURCE_IP_ANNOTATION`] (ServiceEntry).
    pub(super) source_ip: Option<std::net::IpAddr>,
    /// [`DRY_RUN_ANNOTATION`] (AuthorizationPolicy).
    pub(super) dry_run: Option<bool>,
}

/// Istio's shadow mode for an `AuthorizationPolicy`: evaluated and reported, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Reads `metadata`: the name (required), the namespace (`default` when absent) and this
/// gateway's own annotation; the many server-set Kubernetes fields are left alone.
pub(super) fn read_metadata(
    r: &mut Reader<'_>,
    doc: &Node,
    metadata: Option<&Node>,
    kind: &str,
) -> Metadata {
    let mut name = String::new();
    let mut namespace = "default".to_owned();
    let mut namespace_given = false;
    let mut annotations = Annotations::default();
    match metadata {
        None => r.error(doc, "metadata.name", "a resource needs metadata.name"),
        Some(m) => {
            if let Some(mut mf) = r.map(m, "metadata") {
                match mf.string(r, "name") {
                    Some(n) if !n.is_empty() => name = n,
                    _ => r.error(m, "metadata.name", "a resource needs metadata.name"),
                }
                if let Some(ns) = mf.string(r, "namespace") {
                    namespace = ns;
                    namespace_given = true;
                }
                if let Some(a) = mf.take("annotations") {
                    annotations = read_annotations(r, a, kind);
                }
                // Kubernetes metadata carries many server-set fields; none matter here.
                mf.ignore_rest();
            }
        }
    }
    Metadata {
        name,
        namespace,
        namespace_given,
        annotations,
    }
}

fn read_annotations(r: &mut Reader<'_>, node: &Node, kind: &str) -> Annotations {
    let mut out = Annotations::default();
    let Some(mut af) = r.map(node, "metadata.annotations") else {
        return out;
    };
    let only = |r: &mut Reader<'_>, n: &Node, field: &str, owner: &str| {
        r.warn(
            n,
            field,
            format!("only {owner} reads this annotation, ignored"),
        );
    };
    if let Some(n) = af.take(SOURCE_IP_ANNOTATION) {
        let field = format!("metadata.annotations.{SOURCE_IP_ANNOTATION}");
        match r.string(n, &field).map(|s| s.parse::<std::net::IpAddr>()) {
            Some(Ok(ip)) if kind == "ServiceEntry" => out.source_ip = Some(ip),
            Some(Ok(_)) => only(r, n, &field, "ServiceEntry"),
            Some(Err(_)) => r.error(n, &field, "expected an IP address of this host"),
            None => {}
        }
    }
    if let Some(n) = af.take(DRY_RUN_ANNOTATION) {
        let field = format!("metadata.annotations.{DRY_RUN_ANNOTATION}");
        // Kubernetes annotations are strings; anything but the two spellings Istio
        // documents could be read as either, so it is refused.
        match r.string(n, &field).as_deref() {
            Some("true") if kind == "AuthorizationPolicy" => out.dry_run = Some(true),
            Some("false") if kind == "AuthorizationPolicy" => out.dry_run = Some(false),
            Some("true" | "false") => only(r, n, &field, "AuthorizationPolicy"),
            Some(other) => r.error(
                n,
                &field,
                format!("expected \"true\" or \"false\", got {other:?}"),
            ),
            None => {}
        }
    }
    // Other annotations belong to other tools.
    af.ignore_rest();
    out
}
