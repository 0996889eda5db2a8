//! Reading and validating `Gateway`, and deciding which ones this gateway is.

use super::model::{Gateway, Meta, Protocol, Server, ServerPort, ServerTlsFiles};
use super::reader::Reader;
use crate::yaml::Node;

/// Reads `spec` of a `Gateway`.
pub(crate) fn read(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<Gateway> {
    let mut f = r.map(spec, "spec")?;
    let errors_before = r.diags.errors().count();
    let selector = f.string_map(r, "selector");
    let mut servers = Vec::new();
    match f.take("servers") {
        None => r.error(spec, "spec.servers", "a Gateway needs at least one server"),
        Some(n) => {
            let list = r.list(n, "spec.servers").unwrap_or(&[]);
            if list.is_empty() {
                r.error(n, "spec.servers", "a Gateway needs at least one server");
            }
            for (i, s) in list.iter().enumerate() {
                if let Some(s) = read_server(r, s, &format!("spec.servers[{i}]")) {
                    servers.push(s);
                }
            }
        }
    }
    f.finish(r, &[]);
    if r.diags.errors().count() > errors_before {
        return None;
    }
    Some(Gateway {
        meta,
        selector,
        servers,
        class: None,
    })
}

fn read_server(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Server> {
    let mut f = r.map(node, path)?;
    let port = read_server_port(r, node, f.take("port"), path);
    let hosts = f.strings(r, "hosts");
    if hosts.is_empty() {
        r.error(
            node,
            format!("{path}.hosts"),
            "a server needs at least one host",
        );
    }
    let mut tls_files = ServerTlsFiles::default();
    let tls_mode = f
        .take("tls")
        .and_then(|n| read_server_tls(r, n, path, &mut tls_files));
    f.finish(r, &["bind", "defaultEndpoint", "name"]);
    Some(Server {
        port: port?,
        hosts: hosts
            .into_iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        tls_mode,
        tls_files,
    })
}

/// `port`: number and protocol required, `targetPort` ignored (a gateway listens where it
/// is told).
fn read_server_port(
    r: &mut Reader<'_>,
    node: &Node,
    port: Option<&Node>,
    path: &str,
) -> Option<ServerPort> {
    match port {
        None => {
            r.error(node, format!("{path}.port"), "a server needs a port");
            None
        }
        Some(n) => {
            let p = format!("{path}.port");
            let mut pf = r.map(n, &p)?;
            let number = pf.uint(r, "number", 1, 65535).map(|n| n as u16);
            let name = pf.string(r, "name").unwrap_or_default();
            let protocol = match pf.take("protocol") {
                None => {
                    r.error(n, format!("{p}.protocol"), "a server port needs a protocol");
                    None
                }
                Some(pn) => {
                    let s = r.string(pn, &format!("{p}.protocol"))?;
                    let parsed = Protocol::parse(&s);
                    if parsed.is_none() {
                        r.error(
                            pn,
                            format!("{p}.protocol"),
                            format!("unknown protocol {s:?}"),
                        );
                    }
                    parsed
                }
            };
            pf.finish(r, &["targetPort"]);
            if number.is_none() {
                r.error(n, format!("{p}.number"), "a server port needs a number");
            }
            Some(ServerPort {
                number: number?,
                name,
                protocol: protocol?,
            })
        }
    }
}

/// `tls`: the mode, and the files of a terminating server (checked to be readable).
fn read_server_tls(
    r: &mut Reader<'_>,
    n: &Node,
    path: &str,
    tls_files: &mut ServerTlsFiles,
) -> Option<String> {
    let tp = format!("{path}.tls");
    let mut tf = r.map(n, &tp)?;
    let mode_node = tf.take("mode");
    let mode = mode_node.and_then(|m| {
        r.one_of(
            m,
            &format!("{tp}.mode"),
            &[
                "PASSTHROUGH",
                "SIMPLE",
                "MUTUAL",
                "AUTO_PASSTHROUGH",
                "ISTIO_MUTUAL",
                "OPTIONAL_MUTUAL",
            ],
        )
        .map(str::to_owned)
    });
    let file =
        |tf: &mut super::reader::Fields<'_>, r: &mut Reader<'_>, key: &str| -> Option<String> {
            let n = tf.take(key)?;
            let p = format!("{tp}.{key}");
            let v = r.string(n, &p)?;
            if std::fs::metadata(&v).is_err() {
                r.error(n, &p, format!("cannot read {v:?}"));
            }
            Some(v)
        };
    tls_files.server_certificate = file(&mut tf, r, "serverCertificate");
    tls_files.private_key = file(&mut tf, r, "privateKey");
    tls_files.ca_certificates = file(&mut tf, r, "caCertificates");
    if let Some(c) = tf.take("credentialName") {
        let p = format!("{tp}.credentialName");
        if let Some(name) = r.string(c, &p)
            && let Some(c) = crate::credentials::credential(r, c, &p, &name)
        {
            tls_files.server_certificate = c.cert;
            tls_files.private_key = c.key;
            tls_files.ca_certificates = c.ca.or(tls_files.ca_certificates.take());
        }
    }
    // Client certificates are asked for by MUTUAL only: a SIMPLE server's CA (written, or
    // in its Secret) verifies nothing, as in Istio.
    if mode.as_deref() == Some("SIMPLE") {
        tls_files.ca_certificates = None;
    }
    tf.ignore_rest();
    match mode.as_deref() {
        Some("SIMPLE" | "MUTUAL")
            if tls_files.server_certificate.is_none() || tls_files.private_key.is_none() =>
        {
            r.error(
                n,
                &tp,
                "SIMPLE and MUTUAL servers need serverCertificate and privateKey",
            );
        }
        Some("MUTUAL") if tls_files.ca_certificates.is_none() => {
            r.error(
                n,
                &tp,
                "a MUTUAL server needs caCertificates to verify clients",
            );
        }
        // ISTIO_MUTUAL terminates with the mesh's certificates (`--mesh-certs`), which the
        // compile step adds or refuses; files written here would be ignored, as Istio does.
        Some("AUTO_PASSTHROUGH") => {
            r.error(
                mode_node.unwrap_or(n),
                format!("{tp}.mode"),
                "AUTO_PASSTHROUGH routes by mesh-internal SNI names and is not supported by this gateway",
            );
        }
        _ => {}
    }
    mode
}
