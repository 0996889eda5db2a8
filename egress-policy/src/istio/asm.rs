//! Alibaba Cloud Service Mesh's `ASMEgressTrafficPolicy` (`istio.alibabacloud.com/v1beta1`),
//! read as the Istio resources ASM generates from it.
//!
//! Each `egressRules[].to[]` entry registers its hosts and port (a `ServiceEntry`, DNS
//! resolution). With `httpsUpgrade: {enabled: true, port: 443}` the plain HTTP that clients
//! send is upgraded: the entry's port gets `targetPort` 443 and a `DestinationRule` gives it
//! `SIMPLE` TLS, SNI and certificate check from the request's host — the same mechanism as
//! Istio's TLS-origination task. `httpsUpgrade` is read beside `byEgressGateway` in a `to`
//! entry (as ASM's examples write it) and, for manifests that nest it, inside that entry's
//! `byEgressGateway`.
//!
//! Not enforced here: `from` (which workloads may use a rule). At a gateway without mesh
//! identities the source namespace is unknown; the policy says so in a warning, and an
//! `AuthorizationPolicy` on the gateway is the way to restrict sources.

use super::model::{ClientTls, DestinationRule};
use super::model::{Location, Meta, Port, Protocol, Resolution, ServiceEntry};
use super::reader::Reader;
use super::service_entry::{check_host, read_port};
use crate::yaml::Node;

/// The API versions of `ASMEgressTrafficPolicy` read.
pub(crate) const ASM_VERSIONS: &[&str] = &["istio.alibabacloud.com/v1beta1"];

/// What one policy stands for.
#[derive(Default)]
pub(crate) struct Generated {
    pub services: Vec<ServiceEntry>,
    pub destination_policies: Vec<DestinationRule>,
}

/// Reads `spec` of an `ASMEgressTrafficPolicy`.
pub(crate) fn read(r: &mut Reader<'_>, meta: &Meta, spec: &Node) -> Option<Generated> {
    let mut f = r.map(spec, "spec")?;
    let errors_before = r.diags.errors().count();
    match f.take("byEgressGateway") {
        None => r.error(
            spec,
            "spec.byEgressGateway.name",
            "an ASMEgressTrafficPolicy names its egress gateway",
        ),
        Some(n) => {
            if let Some(mut g) = r.map(n, "spec.byEgressGateway") {
                if g.string(r, "name").is_none_or(|s| s.is_empty()) {
                    r.error(
                        n,
                        "spec.byEgressGateway.name",
                        "the egress gateway's name is required",
                    );
                }
                g.finish(r, &[]);
            }
        }
    }
    let mut out = Generated::default();
    if let Some(rules) = f.take("egressRules") {
        for (i, rule) in r
            .list(rules, "spec.egressRules")
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            read_rule(r, meta, rule, &format!("spec.egressRules[{i}]"), &mut out);
        }
    }
    f.finish(r, &[]);
    (r.diags.errors().count() == errors_before).then_some(out)
}

fn read_rule(r: &mut Reader<'_>, meta: &Meta, rule: &Node, path: &str, out: &mut Generated) {
    let Some(mut f) = r.map(rule, path) else {
        return;
    };
    if let Some(from) = f.take("from") {
        // Validated for shape, then reported: the gateway cannot tell a workload's namespace
        // or labels from a plain connection.
        for (i, src) in r
            .list(from, &format!("{path}.from"))
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let p = format!("{path}.from[{i}]");
            if let Some(mut sf) = r.map(src, &p) {
                let _ = sf.string(r, "namespace");
                let _ = sf
                    .take("workloadSelector")
                    .map(|n| r.string_map(n, &format!("{p}.workloadSelector")));
                sf.finish(r, &[]);
            }
        }
        r.warn(
            from,
            format!("{path}.from"),
            "sources are not enforced by this gateway (it sees connections, not workloads); restrict them with an AuthorizationPolicy",
        );
    }
    match f.take("to") {
        None => r.error(
            rule,
            format!("{path}.to"),
            "an egress rule needs at least one destination",
        ),
        Some(to) => {
            for (i, t) in r
                .list(to, &format!("{path}.to"))
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                read_to(r, meta, t, &format!("{path}.to[{i}]"), out);
            }
        }
    }
    f.finish(r, &[]);
}

fn read_to(r: &mut Reader<'_>, meta: &Meta, node: &Node, path: &str, out: &mut Generated) {
    let Some(mut f) = r.map(node, path) else {
        return;
    };
    let name = f.string(r, "name").unwrap_or_default();
    if !f.has("hosts") {
        r.error(
            node,
            format!("{path}.hosts"),
            "a destination needs at least one host",
        );
    }
    let mut hosts = Vec::new();
    for (h, p) in f.list(r, "hosts") {
        if let Some(s) = r.string(h, &p)
            && let Some(host) = check_host(r, h, &p, &s)
        {
            hosts.push(host);
        }
    }
    let port = match f.take("port") {
        None => {
            r.error(node, format!("{path}.port"), "a destination needs a port");
            None
        }
        Some(n) => read_port(r, n, &format!("{path}.port")),
    };
    let mut upgrade = f
        .take("httpsUpgrade")
        .and_then(|n| read_upgrade(r, n, &format!("{path}.httpsUpgrade")));
    if let Some(g) = f.take("byEgressGateway") {
        upgrade = read_by_gateway(r, g, &f.path("byEgressGateway"), upgrade);
    }
    f.finish(r, &[]);
    let Some(mut port) = port else { return };
    if hosts.is_empty() {
        return;
    }
    let label = if name.is_empty() {
        format!("{}", out.services.len())
    } else {
        name
    };
    let generated = Meta {
        name: format!("{}-{label}", meta.name),
        namespace: meta.namespace.clone(),
        file: meta.file.clone(),
        line: node.line,
    };
    if let Some(Some(target)) = upgrade {
        if !matches!(port.protocol, Protocol::Http) {
            r.error(
                node,
                format!("{path}.httpsUpgrade"),
                format!(
                    "httpsUpgrade upgrades plain HTTP; this port's protocol is {:?}",
                    port.protocol
                ),
            );
            return;
        }
        port.target_port = Some(target);
        out.destination_policies.extend(
            hosts
                .iter()
                .map(|host| upgrade_policy(&generated, host, port.number)),
        );
    }
    out.services.push(service(generated, hosts, port));
}

/// `byEgressGateway`: the port on the egress gateway the sidecar sends to (clients of this
/// gateway reach it on its listeners, so the number is only checked), and possibly the
/// destination's `httpsUpgrade`, set once.
fn read_by_gateway(
    r: &mut Reader<'_>,
    g: &Node,
    gp: &str,
    upgrade: Option<Option<u16>>,
) -> Option<Option<u16>> {
    let Some(mut gf) = r.map(g, gp) else {
        return upgrade;
    };
    let _ = gf.uint(r, "port", 1, 65535);
    let mut upgrade = upgrade;
    if let Some(n) = gf.take("httpsUpgrade") {
        if upgrade.is_some() {
            r.error(
                n,
                format!("{gp}.httpsUpgrade"),
                "httpsUpgrade is set twice for this destination",
            );
        }
        upgrade = upgrade.or_else(|| read_upgrade(r, n, &format!("{gp}.httpsUpgrade")));
    }
    gf.finish(r, &[]);
    upgrade
}

/// The `DestinationRule` ASM generates for an upgraded host: TLS origination on the port.
fn upgrade_policy(generated: &Meta, host: &str, port: u16) -> DestinationRule {
    DestinationRule {
        meta: Meta {
            name: format!("{}-{host}", generated.name),
            ..generated.clone()
        },
        host: host.to_owned(),
        subsets: Vec::new(),
        lb: None,
        port_lb: Vec::new(),
        tls: None,
        port_tls: vec![(port, simple_tls())],
        mesh_only: Vec::new(),
    }
}

/// The `ServiceEntry` ASM generates for one destination.
fn service(meta: Meta, hosts: Vec<String>, port: Port) -> ServiceEntry {
    let wildcard = hosts.iter().any(|h| h.starts_with("*."));
    ServiceEntry {
        meta,
        hosts,
        addresses: Vec::new(),
        ports: vec![port],
        location: Location::MeshExternal,
        // A wildcard cannot be resolved as such: the requested name is.
        resolution: if wildcard {
            Resolution::None
        } else {
            Resolution::Dns
        },
        endpoints: Vec::new(),
        export_to: Vec::new(),
        source_ip: None,
        trusted_nets: Vec::new(),
        kind: "ServiceEntry",
    }
}

/// `Some(Some(port))` when enabled, `Some(None)` when disabled.
fn read_upgrade(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Option<u16>> {
    let mut f = r.map(node, path)?;
    let enabled = f.boolean(r, "enabled").unwrap_or(false);
    let port = f.uint(r, "port", 1, 65535).map_or(443, |p| p as u16);
    f.finish(r, &[]);
    Some(enabled.then_some(port))
}

fn simple_tls() -> ClientTls {
    ClientTls {
        mode: "SIMPLE".into(),
        ca_certificates: None,
        ca_crl: None,
        client_certificate: None,
        private_key: None,
        sni: None,
        subject_alt_names: Vec::new(),
        insecure_skip_verify: false,
    }
}
