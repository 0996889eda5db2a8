//! Reading and validating `DestinationRule`: subsets, traffic policies (load balancing,
//! client TLS), per port and per subset.

use super::model::{ClientTls, DestinationRule, LoadBalancer, Meta, Subset};
use super::reader::{Fields, Reader};
use crate::yaml::Node;

/// Reads a `trafficPolicy`, keeping its load balancer and port-level load balancers.
/// `trafficPolicy`: what this gateway applies of it.
#[derive(Clone, Debug, Default)]
struct TrafficPolicy {
    lb: Option<LoadBalancer>,
    port_lb: Vec<(u16, LoadBalancer)>,
    tls: Option<ClientTls>,
    port_tls: Vec<(u16, ClientTls)>,
}

fn read_traffic_policy(r: &mut Reader<'_>, node: &Node, path: &str) -> TrafficPolicy {
    let Some(mut f) = r.map(node, path) else {
        return TrafficPolicy::default();
    };
    let mut tp = TrafficPolicy {
        lb: f
            .take("loadBalancer")
            .and_then(|n| read_balance(r, n, &format!("{path}.loadBalancer"))),
        tls: f
            .take("tls")
            .and_then(|n| read_tls(r, n, &format!("{path}.tls"))),
        ..Default::default()
    };
    for (s, p) in f.list(r, "portLevelSettings") {
        let Some(mut sf) = r.map(s, &p) else { continue };
        let port = sf.take("port").and_then(|pn| {
            let mut pf = r.map(pn, &format!("{p}.port"))?;
            let n = pf
                .take("number")
                .and_then(|v| r.uint(v, &format!("{p}.port.number"), 1, 65535));
            pf.finish(r, &[]);
            n.map(|n| n as u16)
        });
        let lb = sf
            .take("loadBalancer")
            .and_then(|n| read_balance(r, n, &format!("{p}.loadBalancer")));
        let tls = sf
            .take("tls")
            .and_then(|n| read_tls(r, n, &format!("{p}.tls")));
        sf.finish(r, &["connectionPool", "outlierDetection"]);
        let Some(port) = port else {
            r.error(
                s,
                format!("{p}.port"),
                "port-level settings need a port number",
            );
            continue;
        };
        if let Some(lb) = lb {
            tp.port_lb.push((port, lb));
        }
        if let Some(tls) = tls {
            tp.port_tls.push((port, tls));
        }
    }
    f.finish(
        r,
        &[
            "connectionPool",
            "outlierDetection",
            "tunnel",
            "proxyProtocol",
        ],
    );
    tp
}

fn read_tls(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<ClientTls> {
    let mut f = r.map(node, path)?;
    let mode_node = f.take("mode");
    let mode = mode_node
        .and_then(|n| {
            r.one_of(
                n,
                &format!("{path}.mode"),
                &["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
            )
        })
        .unwrap_or("DISABLE");
    let file = |f: &mut Fields<'_>, r: &mut Reader<'_>, key: &str| -> Option<String> {
        let n = f.take(key)?;
        let p = format!("{path}.{key}");
        let v = r.string(n, &p)?;
        if std::fs::metadata(&v).is_err() {
            r.error(n, &p, format!("cannot read {v:?}"));
        }
        Some(v)
    };
    let mut ca_certificates = file(&mut f, r, "caCertificates");
    let ca_crl = file(&mut f, r, "caCrl");
    let mut client_certificate = file(&mut f, r, "clientCertificate");
    let mut private_key = file(&mut f, r, "privateKey");
    let sni = f.string(r, "sni");
    let subject_alt_names = f.strings(r, "subjectAltNames");
    let insecure_skip_verify = f.boolean(r, "insecureSkipVerify").unwrap_or(false);
    // A Secret's files take the place of the file fields, as in Istio: its certificate
    // and key for MUTUAL, its CA to verify the server.
    if let Some(n) = f.take("credentialName") {
        let p = format!("{path}.credentialName");
        if let Some(name) = r.string(n, &p)
            && let Some(c) = crate::credentials::credential(r, n, &p, &name)
        {
            if mode == "MUTUAL" {
                client_certificate = c.cert;
                private_key = c.key;
            }
            ca_certificates = c.ca.or(ca_certificates);
        }
    }
    f.finish(r, &[]);
    if mode == "ISTIO_MUTUAL" {
        // The sidecar hop of a two-hop egress configuration says ISTIO_MUTUAL for its
        // connections to this gateway: an error only where this gateway would dial with it.
        r.defer_error(mode_node.unwrap_or(node), format!("{path}.mode"), "ISTIO_MUTUAL is not supported outside a mesh (there is no mesh certificate authority); use MUTUAL with files");
        return None;
    }
    if mode == "MUTUAL" && (client_certificate.is_none() || private_key.is_none()) {
        r.error(
            node,
            path,
            "MUTUAL needs clientCertificate and privateKey (or a credentialName whose Secret has tls.crt and tls.key)",
        );
        return None;
    }
    Some(ClientTls {
        mode: mode.to_owned(),
        ca_certificates,
        ca_crl,
        client_certificate,
        private_key,
        sni,
        subject_alt_names,
        insecure_skip_verify,
    })
}

fn read_balance(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<LoadBalancer> {
    let mut f = r.map(node, path)?;
    let simple = f.take("simple");
    let hash = f.take("consistentHash");
    f.finish(r, &["localityLbSetting", "warmupDurationSecs", "warmup"]);
    match (simple, hash) {
        (Some(n), None) => match r.one_of(
            n,
            &format!("{path}.simple"),
            &[
                "UNSPECIFIED",
                "LEAST_CONN",
                "RANDOM",
                "PASSTHROUGH",
                "ROUND_ROBIN",
                "LEAST_REQUEST",
            ],
        )? {
            "RANDOM" => Some(LoadBalancer::Random),
            "PASSTHROUGH" => Some(LoadBalancer::Passthrough),
            "LEAST_REQUEST" | "LEAST_CONN" => Some(LoadBalancer::LeastRequest),
            _ => Some(LoadBalancer::RoundRobin),
        },
        (None, Some(n)) => {
            let p = format!("{path}.consistentHash");
            let mut hf = r.map(n, &p)?;
            let header = hf.take("httpHeaderName");
            let source = hf.take("useSourceIp");
            hf.finish(
                r,
                &[
                    "httpCookie",
                    "httpQueryParameterName",
                    "minimumRingSize",
                    "ringHash",
                    "maglev",
                ],
            );
            match (header, source) {
                (Some(h), None) => {
                    let name = r
                        .string(h, &format!("{p}.httpHeaderName"))?
                        .to_ascii_lowercase();
                    match http::HeaderName::from_bytes(name.as_bytes()) {
                        Ok(_) => Some(LoadBalancer::HashHeader(name)),
                        Err(_) => {
                            r.error(
                                h,
                                format!("{p}.httpHeaderName"),
                                format!("invalid header name {name:?}"),
                            );
                            None
                        }
                    }
                }
                (None, Some(s)) => match r.boolean(s, &format!("{p}.useSourceIp"))? {
                    true => Some(LoadBalancer::HashSourceIp),
                    false => Some(LoadBalancer::RoundRobin),
                },
                _ => {
                    r.error(n, &p, "consistentHash needs exactly one of httpHeaderName and useSourceIp (cookies and query parameters are not supported)");
                    None
                }
            }
        }
        _ => {
            r.error(
                node,
                path,
                "a loadBalancer needs exactly one of simple and consistentHash",
            );
            None
        }
    }
}

/// Reads `spec` of a `DestinationRule` (host and subsets).
pub(crate) fn read_destination_rule(
    r: &mut Reader<'_>,
    meta: Meta,
    spec: &Node,
) -> Option<DestinationRule> {
    let mut f = r.map(spec, "spec")?;
    let errors_before = r.diags.errors().count();
    r.deferred.clear();
    let host = match f.string(r, "host") {
        Some(h) => h.trim_end_matches('.').to_ascii_lowercase(),
        None => {
            r.error(spec, "spec.host", "a DestinationRule needs a host");
            String::new()
        }
    };
    let mut subsets = Vec::new();
    if let Some(n) = f.take("subsets") {
        for (i, s) in r.list(n, "spec.subsets").unwrap_or(&[]).iter().enumerate() {
            let p = format!("spec.subsets[{i}]");
            let Some(mut sf) = r.map(s, &p) else { continue };
            let name = sf.string(r, "name");
            let labels = sf.string_map(r, "labels");
            let tp = sf
                .take("trafficPolicy")
                .map(|n| read_traffic_policy(r, n, &format!("{p}.trafficPolicy")))
                .unwrap_or_default();
            let (lb, tls) = (tp.lb, tp.tls);
            sf.finish(r, &[]);
            match name {
                Some(name) if !name.is_empty() => {
                    if subsets.iter().any(|x: &Subset| x.name == name) {
                        r.error(
                            s,
                            format!("{p}.name"),
                            format!("subset {name:?} is defined twice"),
                        );
                    }
                    subsets.push(Subset {
                        name,
                        labels,
                        lb,
                        tls,
                    });
                }
                _ => r.error(s, format!("{p}.name"), "a subset needs a name"),
            }
        }
    }
    let tp = f
        .take("trafficPolicy")
        .map(|n| read_traffic_policy(r, n, "spec.trafficPolicy"))
        .unwrap_or_default();
    let _export_to = f.take("exportTo");
    // The workloads whose sidecars take the rule: this gateway proxies for the clients, so
    // the rule applies to all it proxies for, and says so.
    if let Some(n) = f.take("workloadSelector") {
        r.warn(
            n,
            "spec.workloadSelector",
            "selects the client workloads whose sidecars apply this rule; this gateway proxies for its clients and applies it to every one",
        );
    }
    f.finish(r, &[]);
    if r.diags.errors().count() > errors_before {
        return None;
    }
    Some(DestinationRule {
        meta,
        host,
        subsets,
        lb: tp.lb,
        port_lb: tp.port_lb,
        tls: tp.tls,
        port_tls: tp.port_tls,
        mesh_only: std::mem::take(&mut r.deferred),
    })
}
