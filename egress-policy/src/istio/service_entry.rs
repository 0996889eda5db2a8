//! Reading and validating `ServiceEntry`, following Istio's own validation rules.

use egress_core::ctx::Host;
use egress_core::host::parse_host;
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;

use super::model::{Endpoint, Location, Meta, Port, Protocol, Resolution, ServiceEntry};
use super::reader::Reader;
use crate::yaml::Node;

const UNSUPPORTED: &[&str] = &["workloadSelector", "subjectAltNames"];

/// Reads `spec` of a `ServiceEntry`; errors go to the reader's diagnostics.
pub(crate) fn read(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<ServiceEntry> {
    let mut f = r.map(spec, "spec")?;
    let errors_before = r.diags.errors().count();

    let hosts = read_hosts(r, spec, f.take("hosts"));

    let (addresses, cidr) = read_addresses(r, f.take("addresses"));

    let ports = read_ports(r, spec, f.take("ports"), addresses.is_empty());

    let location = match f.take("location") {
        None => Location::MeshExternal,
        Some(n) => match r.one_of(n, "spec.location", &["MESH_EXTERNAL", "MESH_INTERNAL"]) {
            Some("MESH_INTERNAL") => Location::MeshInternal,
            _ => Location::MeshExternal,
        },
    };

    let resolution_node = f.take("resolution");
    let resolution = match resolution_node {
        None => Resolution::None,
        Some(n) => match r.one_of(
            n,
            "spec.resolution",
            &["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"],
        ) {
            Some("STATIC") => Resolution::Static,
            Some("DNS") => Resolution::Dns,
            Some("DNS_ROUND_ROBIN") => Resolution::DnsRoundRobin,
            Some("DYNAMIC_DNS") => Resolution::DynamicDns,
            _ => Resolution::None,
        },
    };

    let mut endpoints = Vec::new();
    let endpoints_node = f.take("endpoints");
    if let Some(node) = endpoints_node {
        for (i, e) in r
            .list(node, "spec.endpoints")
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let path = format!("spec.endpoints[{i}]");
            if let Some(ep) = read_endpoint(r, e, &path, resolution, &ports) {
                endpoints.push(ep);
            }
        }
    }

    let export_to = f.strings(r, "exportTo");
    f.finish(r, UNSUPPORTED);

    check_resolution(
        r,
        spec,
        resolution_node,
        endpoints_node,
        resolution,
        cidr,
        &hosts,
        &endpoints,
    );

    if r.diags.errors().count() > errors_before {
        return None;
    }
    Some(ServiceEntry {
        meta,
        hosts,
        addresses,
        ports,
        location,
        resolution,
        endpoints,
        export_to,
        source_ip: None,
        trusted_nets: Vec::new(),
        kind: "ServiceEntry",
    })
}

fn read_hosts(r: &mut Reader<'_>, spec: &Node, node: Option<&Node>) -> Vec<String> {
    let mut hosts = Vec::new();
    match node {
        None => r.error(spec, "spec.hosts", "a ServiceEntry needs at least one host"),
        Some(node) => {
            let list = r.list(node, "spec.hosts").unwrap_or(&[]);
            if list.is_empty() {
                r.error(node, "spec.hosts", "a ServiceEntry needs at least one host");
            }
            for (i, h) in list.iter().enumerate() {
                let path = format!("spec.hosts[{i}]");
                if let Some(s) = r.string(h, &path)
                    && let Some(host) = check_host(r, h, &path, &s)
                {
                    hosts.push(host);
                }
            }
        }
    }
    hosts
}

/// `addresses`, and whether any is a CIDR (which limits the resolution).
fn read_addresses(r: &mut Reader<'_>, node: Option<&Node>) -> (Vec<IpNet>, bool) {
    let mut addresses = Vec::new();
    let mut cidr = false;
    if let Some(node) = node {
        for (i, a) in r
            .list(node, "spec.addresses")
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let path = format!("spec.addresses[{i}]");
            let Some(s) = r.string(a, &path) else {
                continue;
            };
            if s.contains('/') {
                cidr = true;
                match s.parse::<IpNet>() {
                    Ok(net) => addresses.push(net.trunc()),
                    Err(_) => r.error(a, &path, format!("{s:?} is not an IP address or CIDR")),
                }
            } else {
                match s.parse::<IpAddr>() {
                    Ok(ip) => addresses.push(IpNet::from(ip)),
                    Err(_) => r.error(a, &path, format!("{s:?} is not an IP address or CIDR")),
                }
            }
        }
    }
    (addresses, cidr)
}

/// `ports`: numbers and names unique.
fn read_ports(
    r: &mut Reader<'_>,
    spec: &Node,
    node: Option<&Node>,
    no_addresses: bool,
) -> Vec<Port> {
    let mut ports = Vec::new();
    match node {
        None => r.error(spec, "spec.ports", "a ServiceEntry needs at least one port"),
        Some(node) => {
            let list = r.list(node, "spec.ports").unwrap_or(&[]);
            if list.is_empty() {
                r.error(node, "spec.ports", "a ServiceEntry needs at least one port");
            }
            let mut numbers = HashSet::new();
            let mut names = HashSet::new();
            for (i, p) in list.iter().enumerate() {
                let path = format!("spec.ports[{i}]");
                let Some(port) = read_port(r, p, &path) else {
                    continue;
                };
                if !numbers.insert(port.number) {
                    r.error(
                        p,
                        format!("{path}.number"),
                        format!("port {} is defined twice", port.number),
                    );
                }
                if !port.name.is_empty() && !names.insert(port.name.clone()) {
                    r.error(
                        p,
                        format!("{path}.name"),
                        format!("port name {:?} is defined twice", port.name),
                    );
                }
                if no_addresses && port.protocol == Protocol::Tcp {
                    r.warn(p, format!("{path}.protocol"), "TCP ports without spec.addresses can only be reached through CONNECT with the host name");
                }
                ports.push(port);
            }
        }
    }
    ports
}

/// What the resolution allows: endpoints, wildcard hosts and CIDR addresses.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one ServiceEntry it checks together"
)]
fn check_resolution(
    r: &mut Reader<'_>,
    spec: &Node,
    resolution_node: Option<&Node>,
    endpoints_node: Option<&Node>,
    resolution: Resolution,
    cidr: bool,
    hosts: &[String],
    endpoints: &[Endpoint],
) {
    let at_resolution = resolution_node.unwrap_or(spec);
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        r.error(
            at_resolution,
            "spec.resolution",
            "CIDR addresses are allowed only with resolution NONE or STATIC",
        );
    }
    let wildcard = hosts.iter().any(|h| h.starts_with("*."));
    match resolution {
        Resolution::None if !endpoints.is_empty() => r.error(
            endpoints_node.unwrap_or(spec),
            "spec.endpoints",
            "no endpoints may be given with resolution NONE",
        ),
        Resolution::Static if endpoints.is_empty() => r.error(
            at_resolution,
            "spec.resolution",
            "resolution STATIC needs endpoints (workloadSelector is not supported by this gateway)",
        ),
        Resolution::Dns | Resolution::DnsRoundRobin if endpoints.is_empty() && wildcard => r.error(
            at_resolution,
            "spec.resolution",
            "hosts must be FQDN (no wildcards) when resolution is DNS and no endpoints are given; use NONE or DYNAMIC_DNS for wildcard hosts",
        ),
        Resolution::DnsRoundRobin if endpoints.len() > 1 => r.error(
            endpoints_node.unwrap_or(spec),
            "spec.endpoints",
            "resolution DNS_ROUND_ROBIN allows at most one endpoint",
        ),
        Resolution::DynamicDns if !endpoints.is_empty() => r.error(
            endpoints_node.unwrap_or(spec),
            "spec.endpoints",
            "no endpoints may be given with resolution DYNAMIC_DNS",
        ),
        Resolution::DynamicDns if !wildcard => r.error(
            at_resolution,
            "spec.resolution",
            "resolution DYNAMIC_DNS is only for wildcard hosts",
        ),
        _ => {}
    }
}

/// Validates one host: `*.suffix` or a name; `*` alone is refused, as Istio does.
pub(super) fn check_host(r: &mut Reader<'_>, node: &Node, path: &str, s: &str) -> Option<String> {
    if s == "*" {
        r.error(node, path, "the wildcard host \"*\" is not allowed in a ServiceEntry (it would register everything)");
        return None;
    }
    let (wild, name) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if name.contains('*') {
        r.error(
            node,
            path,
            format!("invalid host {s:?}: a wildcard is only allowed as a leading \"*.\""),
        );
        return None;
    }
    match parse_host(name) {
        Ok(Host::Name(n)) if wild => Some(format!("*.{n}")),
        Ok(Host::Name(n)) => Some(n.to_string()),
        Ok(Host::Ip(_)) if wild => {
            r.error(
                node,
                path,
                format!("invalid host {s:?}: a wildcard cannot precede an IP address"),
            );
            None
        }
        Ok(Host::Ip(ip)) => Some(ip.to_string()),
        Err(e) => {
            r.error(node, path, format!("invalid host {s:?}: {e}"));
            None
        }
    }
}

pub(super) fn read_port(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Port> {
    let mut f = r.map(node, path)?;
    let number = match f.take("number") {
        Some(n) => r
            .uint(n, &format!("{path}.number"), 1, 65535)
            .map(|n| n as u16),
        None => {
            r.error(node, format!("{path}.number"), "a port needs a number");
            None
        }
    };
    let protocol = match f.take("protocol") {
        None => Some(Protocol::Tcp),
        Some(n) => {
            let p = format!("{path}.protocol");
            let s = r.string(n, &p)?;
            let parsed = Protocol::parse(&s);
            if parsed.is_none() {
                r.error(n, &p, format!("unknown protocol {s:?} (expected HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, MONGO, MYSQL or REDIS)"));
            }
            parsed
        }
    };
    let name = match f.take("name") {
        None => String::new(),
        Some(n) => {
            let p = format!("{path}.name");
            let s = r.string(n, &p).unwrap_or_default();
            if !is_dns1123_label(&s) {
                r.error(
                    n,
                    &p,
                    format!(
                        "invalid port name {s:?} (lower-case letters, digits and '-', at most 63)"
                    ),
                );
            }
            s
        }
    };
    let target_port = f.uint(r, "targetPort", 1, 65535).map(|n| n as u16);
    f.finish(r, &[]);
    Some(Port {
        number: number?,
        protocol: protocol?,
        name,
        target_port,
    })
}

fn read_endpoint(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    resolution: Resolution,
    ports: &[Port],
) -> Option<Endpoint> {
    let mut f = r.map(node, path)?;
    let address = match f.take("address") {
        Some(n) => {
            let p = format!("{path}.address");
            let s = r.string(n, &p)?;
            let ok = match resolution {
                Resolution::Static => s.parse::<IpAddr>().is_ok(),
                _ => s.parse::<IpAddr>().is_ok() || matches!(parse_host(&s), Ok(Host::Name(_))),
            };
            if !ok {
                let want = if resolution == Resolution::Static {
                    "an IP address (resolution STATIC)"
                } else {
                    "an IP address or a DNS name"
                };
                r.error(n, &p, format!("endpoint address {s:?} is not {want}"));
            }
            Some(s.to_ascii_lowercase())
        }
        None => {
            r.error(
                node,
                format!("{path}.address"),
                "an endpoint needs an address",
            );
            None
        }
    };
    let mut eports = Vec::new();
    if let Some(n) = f.take("ports")
        && let Some(m) = r.map(n, &format!("{path}.ports"))
    {
        let mut m = m;
        for p in ports {
            if let Some(v) = m.take(&p.name)
                && let Some(num) = r.uint(v, &format!("{path}.ports.{}", p.name), 1, 65535)
            {
                eports.push((p.name.clone(), num as u16));
            }
        }
        // What is left names no port of the ServiceEntry: an error in Istio.
        let unknown = collect_unknown(n, ports);
        for (key, line, col) in unknown {
            r.push(
                crate::diag::Severity::Error,
                line,
                col,
                format!("{path}.ports.{key}"),
                format!("endpoint port {key:?} is not defined by the ServiceEntry's ports"),
            );
        }
        m.ignore_rest();
    }
    let labels = f.string_map(r, "labels");
    let weight = f.uint(r, "weight", 0, u32::MAX as u64).map(|w| w as u32);
    f.finish(r, &["network", "locality", "serviceAccount"]);
    Some(Endpoint {
        address: address?,
        ports: eports,
        labels,
        weight,
    })
}

fn collect_unknown(node: &Node, known: &[Port]) -> Vec<(String, u32, u32)> {
    match &node.value {
        crate::yaml::Value::Map(entries) => entries
            .iter()
            .filter(|e| !known.iter().any(|p| p.name == e.key))
            .map(|e| (e.key.clone(), e.line, e.col))
            .collect(),
        _ => Vec::new(),
    }
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
