//! A Kubernetes `Service` (core `v1`) as a registry entry. Istio's registry holds every
//! Service of its cluster, and its tasks route to them by name
//! (`my-nginx.mesh-external.svc.cluster.local`); a gateway outside the API server learns
//! them from the manifests given to it.
//!
//! The host is `NAME.NAMESPACE.svc.cluster.local`, resolved by DNS (the cluster's, which
//! answers with the Service's cluster IP). Such addresses are internal by nature, so the
//! SSRF guard dials them for this host when they are private (RFC 1918, CGNAT, ULA), never
//! loopback or link-local. An `ExternalName` Service is its external name, resolved and
//! guarded like any other. Port protocols follow Istio's selection: `appProtocol`, else the
//! port name's prefix (`http-web`, `grpc`, `tls-…`), else HTTP, which a gateway that
//! proxies requests reads (Istio would sniff); name a port `tcp-…` for opaque traffic.

use ipnet::IpNet;

use super::model::{Endpoint, Location, Meta, Port, Protocol, Resolution, ServiceEntry};
use super::reader::Reader;
use crate::yaml::Node;

/// The cluster-internal networks a Service's name may resolve to.
const CLUSTER_NETS: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// Reads `spec` of a Service; UDP and SCTP ports are left out with a warning.
pub(crate) fn read(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<ServiceEntry> {
    let mut f = r.map(spec, "spec")?;
    let kind = f.string(r, "type").unwrap_or_else(|| "ClusterIP".into());
    let external = f.string(r, "externalName");
    let cluster_ip = f.string(r, "clusterIP");
    let mut ports = Vec::new();
    for (n, p) in f.list(r, "ports") {
        if let Some(port) = read_port(r, n, &p) {
            ports.push(port);
        }
    }
    // Selectors, session affinity, IP families: how the cluster runs the Service.
    f.ignore_rest();
    let host = format!("{}.{}.svc.cluster.local", meta.name, meta.namespace);
    let (endpoints, trusted_nets) = match (kind.as_str(), external) {
        ("ExternalName", Some(name)) => (
            vec![Endpoint {
                address: name.trim_end_matches('.').to_ascii_lowercase(),
                ports: Vec::new(),
                labels: Vec::new(),
                weight: None,
            }],
            Vec::new(),
        ),
        ("ExternalName", None) => {
            r.error(
                spec,
                "spec.externalName",
                "an ExternalName Service needs externalName",
            );
            return None;
        }
        _ => (
            Vec::new(),
            CLUSTER_NETS.iter().filter_map(|n| n.parse().ok()).collect(),
        ),
    };
    let addresses: Vec<IpNet> = cluster_ip
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(IpNet::from)
        .into_iter()
        .collect();
    if ports.is_empty() {
        r.warn(
            spec,
            "spec.ports",
            "a Service without TCP ports registers nothing",
        );
        return None;
    }
    Some(ServiceEntry {
        meta,
        hosts: vec![host],
        addresses,
        ports,
        location: Location::MeshInternal,
        resolution: Resolution::Dns,
        endpoints,
        export_to: Vec::new(),
        source_ip: None,
        trusted_nets,
        kind: "Service",
    })
}

fn read_port(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Port> {
    let mut f = r.map(node, path)?;
    let number = f.uint(r, "port", 1, 65535).map(|p| p as u16);
    let name = f.string(r, "name").unwrap_or_default();
    let app = f.string(r, "appProtocol");
    let transport = f.string(r, "protocol").unwrap_or_else(|| "TCP".into());
    // A named targetPort is the pod's; the Service's cluster IP listens on `port`.
    let target = f.take("targetPort");
    f.ignore_rest();
    let Some(number) = number else {
        r.error(node, format!("{path}.port"), "a Service port needs a port");
        return None;
    };
    if transport != "TCP" {
        r.warn(
            node,
            format!("{path}.protocol"),
            format!("{transport} ports are not proxied; port {number} left out"),
        );
        return None;
    }
    let _ = target;
    Some(Port {
        number,
        protocol: protocol_of(app.as_deref(), &name),
        name,
        target_port: None,
    })
}

/// Istio's protocol selection: `appProtocol`, else the name's prefix, else HTTP.
fn protocol_of(app: Option<&str>, name: &str) -> Protocol {
    let by_app = app.and_then(|a| match a {
        "kubernetes.io/h2c" => Some(Protocol::Http2),
        "kubernetes.io/ws" | "kubernetes.io/wss" => Some(Protocol::Http),
        a => Protocol::parse(a),
    });
    let prefix = name.split('-').next().unwrap_or_default();
    by_app
        .or_else(|| Protocol::parse(prefix))
        .unwrap_or(Protocol::Http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_follow_istio_selection() {
        for (app, name, want) in [
            (Some("https"), "web", Protocol::Https),
            (Some("kubernetes.io/h2c"), "", Protocol::Http2),
            (None, "grpc-api", Protocol::Grpc),
            (None, "tcp", Protocol::Tcp),
            (None, "tls-db", Protocol::Tls),
            (None, "", Protocol::Http),
            (None, "metrics", Protocol::Http),
        ] {
            assert_eq!(protocol_of(app, name), want, "{app:?} {name}");
        }
    }
}
