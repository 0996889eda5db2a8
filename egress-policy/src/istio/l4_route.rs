//! Reading `TLSRoute` and `TCPRoute`: where a `VirtualService` sends TLS connections (by
//! SNI, unterminated) and TCP connections (by port).

use super::model::{TcpRoute, TlsMatch, TlsRoute};
use super::reader::Reader;
use crate::yaml::Node;

use super::virtual_service::read_weighted;

pub(super) fn read_tcp_route(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<TcpRoute> {
    let mut f = r.map(node, path)?;
    let mut matches = Vec::new();
    for (m, p) in f.list(r, "match") {
        let Some(mut mf) = r.map(m, &p) else { continue };
        let port = mf.uint(r, "port", 1, 65535).map(|p| p as u16);
        let gateways = mf.strings(r, "gateways");
        mf.finish(
            r,
            &[
                "destinationSubnets",
                "sourceLabels",
                "sourceNamespace",
                "sourceSubnet",
            ],
        );
        matches.push(TlsMatch {
            sni_hosts: vec!["*".into()],
            port,
            gateways,
        });
    }
    let mut route = Vec::new();
    if let Some(n) = f.take("route") {
        for (i, d) in r
            .list(n, &format!("{path}.route"))
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if let Some(d) = read_weighted(r, d, &format!("{path}.route[{i}]")) {
                route.push(d);
            }
        }
    }
    if route.is_empty() {
        r.error(
            node,
            format!("{path}.route"),
            "a TCP route needs at least one destination",
        );
    }
    f.finish(r, &[]);
    Some(TcpRoute { matches, route })
}

pub(super) fn read_tls_route(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<TlsRoute> {
    let mut f = r.map(node, path)?;
    let mut matches = Vec::new();
    for (m, p) in f.list(r, "match") {
        let Some(mut mf) = r.map(m, &p) else { continue };
        let sni_hosts: Vec<String> = mf
            .strings(r, "sniHosts")
            .into_iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        if sni_hosts.is_empty() {
            r.error(m, format!("{p}.sniHosts"), "a TLS match needs sniHosts");
        }
        let port = mf.uint(r, "port", 1, 65535).map(|p| p as u16);
        let gateways = mf.strings(r, "gateways");
        mf.finish(
            r,
            &["destinationSubnets", "sourceLabels", "sourceNamespace"],
        );
        matches.push(TlsMatch {
            sni_hosts,
            port,
            gateways,
        });
    }
    if matches.is_empty() {
        r.error(
            node,
            format!("{path}.match"),
            "a TLS route needs at least one match",
        );
    }
    let mut route = Vec::new();
    if let Some(n) = f.take("route") {
        for (i, d) in r
            .list(n, &format!("{path}.route"))
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if let Some(d) = read_weighted(r, d, &format!("{path}.route[{i}]")) {
                route.push(d);
            }
        }
    }
    if route.is_empty() {
        r.error(
            node,
            format!("{path}.route"),
            "a TLS route needs at least one destination",
        );
    }
    f.finish(r, &[]);
    Some(TlsRoute { matches, route })
}
