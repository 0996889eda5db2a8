//! Reading `Gateway` and its listeners, each field checked where it is written (file,
//! line, field path).

use super::{ApiGateway, From, Listener};
use crate::model::{Meta, Protocol, ServerTlsFiles};
use crate::reader::Reader;
use crate::yaml::Node;

/// `tls.options` keys that give a Terminate listener its files (Kubernetes Secrets, which
/// `certificateRefs` name, are not readable outside a cluster).
pub const TLS_CERT_OPTION: &str = "egress.io/server-certificate";
/// Istio's `tls.options` key choosing how a Terminate listener terminates: `SIMPLE`,
/// `MUTUAL`, or `ISTIO_MUTUAL` (with the mesh's certificates).
pub const TERMINATE_MODE_OPTION: &str = "gateway.istio.io/tls-terminate-mode";
/// The private key of a Terminate listener.
pub const TLS_KEY_OPTION: &str = "egress.io/private-key";
/// CA certificates that verify clients: the listener then requires client certificates.
pub const TLS_CA_OPTION: &str = "egress.io/ca-certificates";

pub(super) fn gateway(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<ApiGateway> {
    let mut f = r.map(spec, "spec")?;
    let class = f.string(r, "gatewayClassName").unwrap_or_default();
    if class.is_empty() {
        r.error(
            spec,
            "spec.gatewayClassName",
            "a Gateway needs a gatewayClassName",
        );
    }
    // Another class's Gateway (a waypoint's HBONE listener, another controller's) is not
    // this gateway's to open: it is reported at attachment, and its listeners are not
    // judged by what this gateway serves.
    if class != super::CLASS {
        f.ignore_rest();
        return Some(ApiGateway {
            meta,
            class,
            listeners: Vec::new(),
        });
    }
    let listeners = f.read_list(r, "listeners", listener);
    if listeners.is_empty() {
        r.error(
            spec,
            "spec.listeners",
            "a Gateway needs at least one listener",
        );
    }
    f.finish(r, &[]);
    Some(ApiGateway {
        meta,
        class,
        listeners,
    })
}

fn listener(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Listener> {
    let mut f = r.map(node, path)?;
    let name = f.string(r, "name").unwrap_or_default();
    let hostname = f.string(r, "hostname").map(|h| h.to_ascii_lowercase());
    let port = f.uint(r, "port", 1, 65535).map(|p| p as u16);
    let protocol = f.take("protocol").and_then(|n| {
        let p = format!("{path}.protocol");
        match r.one_of(n, &p, &["HTTP", "HTTPS", "TLS", "TCP", "UDP"])? {
            "UDP" => {
                r.error(n, &p, "UDP listeners are not supported by this gateway");
                None
            }
            s => Protocol::parse(s),
        }
    });
    let mut tls_files = ServerTlsFiles::default();
    let has_tls = f.has("tls");
    let tls_mode = f.read(r, "tls", |r, n, p| listener_tls(r, n, p, &mut tls_files));
    let (from, kinds) = f
        .read(r, "allowedRoutes", allowed_routes)
        .unwrap_or((From::Same, Vec::new()));
    f.finish(r, &[]);
    if name.is_empty() {
        r.error(node, format!("{path}.name"), "a listener needs a name");
    }
    let (Some(port), Some(protocol)) = (port, protocol) else {
        r.error(node, path, "a listener needs a port and a protocol");
        return None;
    };
    let tls_mode = match (protocol, tls_mode) {
        (Protocol::Https, None) if !has_tls => {
            r.error(
                node,
                format!("{path}.tls"),
                "an HTTPS listener terminates TLS: give tls.mode Terminate with its files",
            );
            return None;
        }
        // The error is reported where the tls block was read.
        (Protocol::Https, None) => return None,
        (Protocol::Https, Some(m)) if m == "PASSTHROUGH" => {
            r.error(
                node,
                format!("{path}.tls.mode"),
                "an HTTPS listener terminates TLS; use protocol TLS for Passthrough",
            );
            return None;
        }
        (Protocol::Tls, None) if !has_tls => Some("PASSTHROUGH".to_owned()),
        (Protocol::Tls, Some(m)) if m != "PASSTHROUGH" => {
            r.error(node, format!("{path}.tls.mode"), "a TLS listener that terminates is not supported; use protocol HTTPS to terminate, or Passthrough");
            return None;
        }
        (Protocol::Tls, None) => return None,
        (Protocol::Https | Protocol::Tls, mode) => mode,
        (_, mode) if has_tls => {
            r.error(
                node,
                format!("{path}.tls"),
                "only HTTPS and TLS listeners take tls settings",
            );
            let _ = mode;
            return None;
        }
        (_, mode) => mode,
    };
    Some(Listener {
        name,
        hostname,
        port,
        protocol,
        tls_mode,
        tls_files,
        from,
        kinds,
    })
}

/// `tls`: `Passthrough`, or `Terminate` with its files from `options`.
fn listener_tls(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    files: &mut ServerTlsFiles,
) -> Option<String> {
    let mut f = r.map(node, path)?;
    let mode = f
        .take("mode")
        .and_then(|n| r.one_of(n, &format!("{path}.mode"), &["Terminate", "Passthrough"]))
        .unwrap_or("Terminate");
    let refs = f.take("certificateRefs");
    let options = f.string_map(r, "options");
    f.finish(r, &["frontendValidation"]);
    if mode == "Passthrough" {
        return Some("PASSTHROUGH".to_owned());
    }
    let option = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    // Istio's own option: ISTIO_MUTUAL terminates with the mesh's certificates, which the
    // compile step adds (`--mesh-certs`); MUTUAL requires client certificates.
    let terminate = option(TERMINATE_MODE_OPTION);
    match terminate.as_deref() {
        None | Some("SIMPLE" | "MUTUAL") => {}
        Some("ISTIO_MUTUAL") => return Some("ISTIO_MUTUAL".to_owned()),
        Some(other) => {
            r.error(
                node,
                format!("{path}.options"),
                format!(
                    "{TERMINATE_MODE_OPTION}: {other:?} is not one of SIMPLE, MUTUAL, ISTIO_MUTUAL"
                ),
            );
            return None;
        }
    }
    files.server_certificate = option(TLS_CERT_OPTION);
    files.private_key = option(TLS_KEY_OPTION);
    files.ca_certificates = option(TLS_CA_OPTION);
    // `certificateRefs`: the first Secret's files (`--credentials`), unless the options give
    // them; its `ca.crt` verifies clients when the listener is MUTUAL, as in Istio.
    let mut reported = false;
    if let Some(refs) = refs
        && files.server_certificate.is_none()
    {
        let c = secret_ref(r, refs, &format!("{path}.certificateRefs"));
        reported = c.is_none();
        let c = c.unwrap_or_default();
        files.server_certificate = c.cert;
        files.private_key = c.key;
        if terminate.as_deref() == Some("MUTUAL") && files.ca_certificates.is_none() {
            files.ca_certificates = c.ca;
        }
    }
    check_files(r, node, path, files);
    if files.server_certificate.is_none() || files.private_key.is_none() {
        // A Secret that could not be read is reported where it is named.
        if refs.is_none() {
            r.error(
                node,
                path,
                format!("a Terminate listener needs its certificate: certificateRefs (Secrets under --credentials), or the files as tls.options {TLS_CERT_OPTION} and {TLS_KEY_OPTION} (and {TLS_CA_OPTION} to require client certificates)"),
            );
        } else if !reported {
            r.error(
                node,
                format!("{path}.certificateRefs"),
                "the Secret has no tls.crt and tls.key",
            );
        }
        return None;
    }
    if terminate.as_deref() == Some("MUTUAL") && files.ca_certificates.is_none() {
        r.error(
            node,
            format!("{path}.options"),
            format!("a MUTUAL listener needs {TLS_CA_OPTION} to verify client certificates"),
        );
        return None;
    }
    let mode = if files.ca_certificates.is_some() {
        "MUTUAL"
    } else {
        "SIMPLE"
    };
    Some(mode.to_owned())
}

fn allowed_routes(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<(From, Vec<String>)> {
    let mut f = r.map(node, path)?;
    let from = f
        .read(r, "namespaces", |r, n, p| {
            let mut nf = r.map(n, p)?;
            let from = nf
                .take("from")
                .and_then(|v| r.one_of(v, &format!("{p}.from"), &["Same", "All", "Selector"]));
            let _selector = nf.take("selector");
            nf.finish(r, &[]);
            Some(match from {
                Some("All") => From::All,
                Some("Selector") => From::Selector,
                _ => From::Same,
            })
        })
        .unwrap_or(From::Same);
    let kinds = f.read_list(r, "kinds", |r, n, p| {
        let mut kf = r.map(n, p)?;
        let kind = kf.string(r, "kind");
        let _group = kf.take("group");
        kf.finish(r, &[]);
        kind
    });
    f.finish(r, &[]);
    Some((from, kinds))
}

/// The first of `certificateRefs` (a core `Secret`), read from `--credentials`.
fn secret_ref(
    r: &mut Reader<'_>,
    refs: &Node,
    path: &str,
) -> Option<crate::credentials::Credential> {
    let Some(first) = r.list(refs, path)?.first() else {
        r.error(refs, path, "certificateRefs is empty");
        return None;
    };
    let p = format!("{path}[0]");
    let mut f = r.map(first, &p)?;
    let name = f.string(r, "name");
    let kind = f.string(r, "kind").unwrap_or_else(|| "Secret".into());
    let group = f.string(r, "group").unwrap_or_default();
    let _namespace = f.take("namespace");
    f.finish(r, &[]);
    if kind != "Secret" || !group.is_empty() {
        r.error(first, &p, format!("a certificateRef of kind {kind:?} (group {group:?}) is not read; name a core Secret"));
        return None;
    }
    let name = name?;
    crate::credentials::credential(r, first, &format!("{p}.name"), &name)
}

/// Each file the options name must be readable.
fn check_files(r: &mut Reader<'_>, node: &Node, path: &str, files: &ServerTlsFiles) {
    for file in [
        &files.server_certificate,
        &files.private_key,
        &files.ca_certificates,
    ]
    .into_iter()
    .flatten()
    {
        if std::fs::metadata(file).is_err() {
            r.error(
                node,
                format!("{path}.options"),
                format!("cannot read {file:?}"),
            );
        }
    }
}
