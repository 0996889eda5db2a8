//! Reading and validating `VirtualService`: HTTP, TLS and TCP routes and their matches.

use regex::Regex;

use super::model::{
    DirectResponse, Fault, HeaderOps, Headers, HttpRoute, Meta, Redirect, Retries, Rewrite,
    RouteTarget, VirtualService, WeightedDestination,
};
use super::reader::{Fields, Reader};
use crate::yaml::Node;

use super::http_match::read_match;
use super::l4_route::{read_tcp_route, read_tls_route};

const ROUTE_LATER: &[&str] = &["corsPolicy", "delegate"];

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "unavailable",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "envoy-ratelimited",
    "retriable-headers",
];

/// Reads `spec` of a `VirtualService`.
pub(crate) fn read(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<VirtualService> {
    let mut f = r.map(spec, "spec")?;
    let errors_before = r.diags.errors().count();
    let hosts: Vec<String> = match f.take("hosts") {
        Some(n) => r
            .strings(n, "spec.hosts")
            .into_iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        None => Vec::new(),
    };
    if hosts.is_empty() {
        r.error(
            spec,
            "spec.hosts",
            "a VirtualService needs at least one host",
        );
    }
    let gateways = f.strings(r, "gateways");
    let mut http = Vec::new();
    if let Some(n) = f.take("http") {
        for (i, route) in r.list(n, "spec.http").unwrap_or(&[]).iter().enumerate() {
            if let Some(route) = read_route(r, route, &format!("spec.http[{i}]")) {
                http.push(route);
            }
        }
    }
    let _export_to = f.take("exportTo");
    let mut tls = Vec::new();
    if let Some(n) = f.take("tls") {
        for (i, t) in r.list(n, "spec.tls").unwrap_or(&[]).iter().enumerate() {
            if let Some(t) = read_tls_route(r, t, &format!("spec.tls[{i}]")) {
                tls.push(t);
            }
        }
    }
    let mut tcp = Vec::new();
    if let Some(n) = f.take("tcp") {
        for (i, t) in r.list(n, "spec.tcp").unwrap_or(&[]).iter().enumerate() {
            if let Some(t) = read_tcp_route(r, t, &format!("spec.tcp[{i}]")) {
                tcp.push(t);
            }
        }
    }
    f.finish(r, &[]);
    if r.diags.errors().count() > errors_before {
        return None;
    }
    Some(VirtualService {
        meta,
        kind: "VirtualService",
        hosts,
        gateways,
        http,
        tls,
        tcp,
    })
}

fn read_route(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<HttpRoute> {
    let mut f = r.map(node, path)?;
    let name = f.string(r, "name");
    let matches = f.read_list(r, "match", read_match);
    let has_route = f.has("route");
    let route = f.read_list(r, "route", read_weighted);
    let redirect_given = f.has("redirect");
    let redirect = f.read(r, "redirect", read_redirect);
    let direct_given = f.has("directResponse");
    let direct_response = f.read(r, "directResponse", read_direct);
    let rewrite = f.read(r, "rewrite", read_rewrite);
    let timeout = f.duration(r, "timeout");
    let headers = f
        .read(r, "headers", |r, n, p| Some(read_headers(r, n, p)))
        .unwrap_or_default();
    let mirrors = read_mirrors(r, &mut f, node, path);
    let fault = f
        .read(r, "fault", |r, n, p| Some(read_fault(r, n, p)))
        .unwrap_or_default();
    let retries = f.read(r, "retries", read_retries);
    f.finish(r, ROUTE_LATER);
    if [has_route, redirect_given, direct_given]
        .iter()
        .filter(|a| **a)
        .count()
        != 1
    {
        r.error(
            node,
            path,
            "an HTTP route needs exactly one of route, redirect and directResponse",
        );
    }
    if has_route {
        check_weights(r, node, &format!("{path}.route"), &route);
    }
    if rewrite.is_some() && redirect.is_some() {
        r.error(
            node,
            format!("{path}.rewrite"),
            "rewrite cannot be combined with redirect",
        );
    }
    Some(HttpRoute {
        name,
        matches,
        route,
        redirect,
        direct_response,
        rewrite,
        timeout,
        headers,
        mirrors,
        fault,
        retries,
    })
}

/// A route's destinations: at least one, and not all of several weighted zero.
fn check_weights(r: &mut Reader<'_>, node: &Node, path: &str, route: &[WeightedDestination]) {
    if route.is_empty() {
        r.error(node, path, "a route needs at least one destination");
    } else if route.len() > 1 && route.iter().all(|d| d.weight == 0) {
        r.error(node, path, "weights are all zero: nothing would be routed");
    }
}

/// `percentage: {value}` (or the deprecated integer `percent`); absent means 100.
fn read_percentage(r: &mut Reader<'_>, f: &mut Fields<'_>, path: &str) -> f64 {
    if let Some(n) = f.take("percentage") {
        let p = format!("{path}.percentage");
        let Some(mut pf) = r.map(n, &p) else {
            return 0.0;
        };
        let v = pf
            .take("value")
            .and_then(|v| r.float(v, &format!("{p}.value"), 0.0, 100.0))
            .unwrap_or(0.0);
        pf.finish(r, &[]);
        return v;
    }
    if let Some(n) = f.take("percent") {
        return r.uint(n, &format!("{path}.percent"), 0, 100).unwrap_or(0) as f64;
    }
    100.0
}

fn read_fault(r: &mut Reader<'_>, node: &Node, path: &str) -> Fault {
    let Some(mut f) = r.map(node, path) else {
        return Fault::default();
    };
    let mut fault = Fault::default();
    if let Some(n) = f.take("delay") {
        let p = format!("{path}.delay");
        if let Some(mut df) = r.map(n, &p) {
            let d = df
                .take("fixedDelay")
                .and_then(|d| r.duration(d, &format!("{p}.fixedDelay")));
            let pct = read_percentage(r, &mut df, &p);
            df.finish(r, &["exponentialDelay"]);
            match d {
                Some(d) => fault.delay = Some((d, pct)),
                None => r.error(n, format!("{p}.fixedDelay"), "a delay needs fixedDelay"),
            }
        }
    }
    if let Some(n) = f.take("abort") {
        let p = format!("{path}.abort");
        if let Some(mut af) = r.map(n, &p) {
            let status = af
                .take("httpStatus")
                .and_then(|s| r.uint(s, &format!("{p}.httpStatus"), 200, 599))
                .map(|s| s as u16);
            let pct = read_percentage(r, &mut af, &p);
            af.finish(r, &["grpcStatus", "http2Error"]);
            match status {
                Some(s) => fault.abort = Some((s, pct)),
                None => r.error(
                    n,
                    format!("{p}.httpStatus"),
                    "an abort needs httpStatus (grpcStatus and http2Error are not supported)",
                ),
            }
        }
    }
    f.finish(r, &[]);
    fault
}

fn read_retries(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Retries> {
    let mut f = r.map(node, path)?;
    let attempts = f.uint(r, "attempts", 0, 100).unwrap_or(0) as u32;
    let per_try_timeout = f
        .take("perTryTimeout")
        .and_then(|n| r.duration(n, &format!("{path}.perTryTimeout")));
    let mut retry_on = Vec::new();
    if let Some(n) = f.take("retryOn") {
        let p = format!("{path}.retryOn");
        if let Some(s) = r.string(n, &p) {
            for cond in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let numeric = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                if !numeric && !RETRY_ON.contains(&cond) {
                    r.error(n, &p, format!("unknown retry condition {cond:?}"));
                    continue;
                }
                retry_on.push(cond.to_owned());
            }
        }
    }
    f.finish(r, &["retryRemoteLocalities", "backoff"]);
    if retry_on.is_empty() {
        // Istio's default conditions.
        retry_on = [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "503",
        ]
        .map(str::to_owned)
        .to_vec();
    }
    Some(Retries {
        attempts,
        per_try_timeout,
        retry_on,
    })
}

/// `mirror` with `mirrorPercentage` (or the deprecated `mirrorPercent`), or `mirrors[]`
/// with per-mirror `percentage`. An absent percentage means 100; 0 means none.
fn read_mirrors(
    r: &mut Reader<'_>,
    f: &mut Fields<'_>,
    node: &Node,
    path: &str,
) -> Vec<(RouteTarget, f64)> {
    let single = f.take("mirror");
    let pct = f.take("mirrorPercentage");
    let legacy = f.take("mirrorPercent").or_else(|| f.take("mirror_percent"));
    let many = f.take("mirrors");
    if single.is_some() && many.is_some() {
        r.error(
            node,
            format!("{path}.mirrors"),
            "mirror and mirrors cannot both be set",
        );
        return Vec::new();
    }
    let percentage = |r: &mut Reader<'_>, n: Option<&Node>, p: &str| -> f64 {
        let Some(n) = n else { return 100.0 };
        let Some(mut pf) = r.map(n, p) else {
            return 100.0;
        };
        let v = pf
            .take("value")
            .and_then(|v| r.float(v, &format!("{p}.value"), 0.0, 100.0))
            .unwrap_or(0.0);
        pf.finish(r, &[]);
        v
    };
    let mut out = Vec::new();
    if let Some(n) = single {
        let mut pct_value = percentage(r, pct, &format!("{path}.mirrorPercentage"));
        if pct.is_none()
            && let Some(l) = legacy
        {
            pct_value = r
                .uint(l, &format!("{path}.mirrorPercent"), 0, 100)
                .unwrap_or(0) as f64;
        }
        if let Some(t) = read_target(r, n, &format!("{path}.mirror")) {
            out.push((t, pct_value));
        }
    }
    if let Some(n) = many {
        for (i, m) in r
            .list(n, &format!("{path}.mirrors"))
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let p = format!("{path}.mirrors[{i}]");
            let Some(mut mf) = r.map(m, &p) else { continue };
            let dest = mf.take("destination");
            let pc = mf.take("percentage");
            mf.finish(r, &[]);
            let value = percentage(r, pc, &format!("{p}.percentage"));
            match dest.and_then(|d| read_target(r, d, &format!("{p}.destination"))) {
                Some(t) => out.push((t, value)),
                None if dest.is_none() => r.error(
                    m,
                    format!("{p}.destination"),
                    "a mirror needs a destination",
                ),
                None => {}
            }
        }
    }
    out
}

pub(super) fn read_weighted(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
) -> Option<WeightedDestination> {
    let mut f = r.map(node, path)?;
    let destination = match f.take("destination") {
        Some(n) => read_target(r, n, &format!("{path}.destination")),
        None => {
            r.error(
                node,
                format!("{path}.destination"),
                "a route destination needs a destination",
            );
            None
        }
    };
    let weight = f
        .uint(r, "weight", 0, u32::MAX as u64)
        .map_or(1, |w| w as u32);
    let headers = f
        .take("headers")
        .map(|n| read_headers(r, n, &format!("{path}.headers")))
        .unwrap_or_default();
    f.finish(r, &[]);
    Some(WeightedDestination {
        destination: destination?,
        weight,
        headers,
    })
}

fn read_target(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<RouteTarget> {
    let mut f = r.map(node, path)?;
    let host = match f.take("host") {
        Some(n) => r.string(n, &format!("{path}.host")),
        None => {
            r.error(node, format!("{path}.host"), "a destination needs a host");
            None
        }
    };
    let subset = f.string(r, "subset");
    let port = match f.take("port") {
        Some(n) => {
            let mut pf = r.map(n, &format!("{path}.port"))?;
            let number = pf
                .take("number")
                .and_then(|n| r.uint(n, &format!("{path}.port.number"), 1, 65535))
                .map(|p| p as u16);
            pf.finish(r, &[]);
            number
        }
        None => None,
    };
    f.finish(r, &[]);
    let host = host?.trim_end_matches('.').to_ascii_lowercase();
    if host.contains('*') {
        r.error(
            node,
            format!("{path}.host"),
            "a route destination cannot be a wildcard host",
        );
        return None;
    }
    Some(RouteTarget { host, subset, port })
}

fn read_ops(r: &mut Reader<'_>, node: &Node, path: &str) -> HeaderOps {
    let Some(mut f) = r.map(node, path) else {
        return HeaderOps::default();
    };
    let mut ops = HeaderOps::default();
    for (key, slot) in [("set", &mut ops.set), ("add", &mut ops.add)] {
        if let Some(n) = f.take(key) {
            let p = format!("{path}.{key}");
            for (k, v) in r.string_map(n, &p) {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || http::HeaderValue::from_str(&v).is_err()
                {
                    r.error(n, format!("{p}.{k}"), "invalid header name or value");
                    continue;
                }
                slot.push((k.to_ascii_lowercase(), v));
            }
        }
    }
    if let Some(n) = f.take("remove") {
        ops.remove = r
            .strings(n, &format!("{path}.remove"))
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
    }
    f.finish(r, &[]);
    ops
}

fn read_headers(r: &mut Reader<'_>, node: &Node, path: &str) -> Headers {
    let Some(mut f) = r.map(node, path) else {
        return Headers::default();
    };
    let request = f
        .take("request")
        .map(|n| read_ops(r, n, &format!("{path}.request")))
        .unwrap_or_default();
    let response = f
        .take("response")
        .map(|n| read_ops(r, n, &format!("{path}.response")))
        .unwrap_or_default();
    f.finish(r, &[]);
    Headers { request, response }
}

fn read_redirect(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Redirect> {
    let mut f = r.map(node, path)?;
    let s = |f: &mut Fields<'_>, r: &mut Reader<'_>, k: &str| {
        f.take(k).and_then(|n| r.string(n, &format!("{path}.{k}")))
    };
    let uri = s(&mut f, r, "uri");
    let authority = s(&mut f, r, "authority");
    let scheme = s(&mut f, r, "scheme");
    let port = f.uint(r, "port", 1, 65535).map(|p| p as u16);
    let derive_port = f.take("derivePort").and_then(|n| {
        r.one_of(
            n,
            &format!("{path}.derivePort"),
            &["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"],
        )
        .map(str::to_owned)
    });
    let redirect_code = f
        .uint(r, "redirectCode", 300, 399)
        .map_or(301, |c| c as u16);
    f.finish(r, &[]);
    Some(Redirect {
        uri,
        authority,
        port,
        derive_port,
        scheme,
        redirect_code,
    })
}

fn read_direct(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<DirectResponse> {
    let mut f = r.map(node, path)?;
    let status = match f.take("status") {
        Some(n) => r
            .uint(n, &format!("{path}.status"), 200, 599)
            .map(|s| s as u16),
        None => {
            r.error(
                node,
                format!("{path}.status"),
                "a direct response needs a status",
            );
            None
        }
    };
    let body = f.take("body").and_then(|n| {
        let mut bf = r.map(n, &format!("{path}.body"))?;
        let s = bf
            .take("string")
            .and_then(|n| r.string(n, &format!("{path}.body.string")));
        bf.finish(r, &["bytes"]);
        s
    });
    f.finish(r, &[]);
    Some(DirectResponse {
        status: status?,
        body,
    })
}

fn read_rewrite(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Rewrite> {
    let mut f = r.map(node, path)?;
    let uri = f.string(r, "uri");
    let authority = f.string(r, "authority");
    let uri_regex = f.take("uriRegexRewrite").and_then(|n| {
        let p = format!("{path}.uriRegexRewrite");
        let mut rf = r.map(n, &p)?;
        let m = rf.string(r, "match");
        let w = rf.string(r, "rewrite");
        rf.finish(r, &[]);
        let (m, w) = (m?, w?);
        if let Err(e) = Regex::new(&m) {
            r.error(n, format!("{p}.match"), format!("invalid regex {m:?}: {e}"));
            return None;
        }
        Some((m, w))
    });
    f.finish(r, &[]);
    if uri.is_some() && uri_regex.is_some() {
        r.error(node, path, "uri and uriRegexRewrite cannot both be set");
    }
    if let Some(a) = &authority
        && http::uri::Authority::try_from(a.as_str()).is_err()
    {
        r.error(
            node,
            format!("{path}.authority"),
            format!("invalid authority {a:?}"),
        );
    }
    Some(Rewrite {
        uri,
        authority,
        uri_regex,
    })
}
