//! Reading the routes and `ReferenceGrant`, each field checked where it is written (file,
//! line, field path); what needs other resources is left to attachment.

use super::{Backend, Grant, ParentRef, Route, RouteKind, Rule};
use crate::model::{HeaderOps, Headers, HttpMatch, Meta, Redirect, Retries, Rewrite, StringMatch};
use crate::reader::{Fields, Reader};
use crate::yaml::Node;

pub(super) fn route(r: &mut Reader<'_>, meta: Meta, spec: &Node, kind: RouteKind) -> Option<Route> {
    let errors_before = r.diags.errors().count();
    let mut f = r.map(spec, "spec")?;
    let parents = f.read_list(r, "parentRefs", parent_ref);
    if parents.is_empty() {
        r.error(
            spec,
            "spec.parentRefs",
            "a route needs at least one parentRef",
        );
    }
    let hostnames = f
        .strings(r, "hostnames")
        .into_iter()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let rules = f.read_list(r, "rules", |r, n, p| rule(r, n, p, kind));
    f.finish(r, &[]);
    (r.diags.errors().count() == errors_before).then_some(Route {
        meta,
        kind,
        parents,
        hostnames,
        rules,
    })
}

fn parent_ref(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<ParentRef> {
    let mut f = r.map(node, path)?;
    let group = f
        .string(r, "group")
        .unwrap_or_else(|| "gateway.networking.k8s.io".into());
    let kind = f.string(r, "kind").unwrap_or_else(|| "Gateway".into());
    let namespace = f.string(r, "namespace");
    let name = f.string(r, "name");
    let section = f.string(r, "sectionName");
    let port = f.uint(r, "port", 1, 65535).map(|p| p as u16);
    f.finish(r, &[]);
    let Some(name) = name else {
        r.error(node, format!("{path}.name"), "a parentRef needs a name");
        return None;
    };
    Some(ParentRef {
        group,
        kind,
        namespace,
        name,
        section,
        port,
    })
}

fn backend(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Backend> {
    let mut f = r.map(node, path)?;
    let group = f.string(r, "group").unwrap_or_default();
    let kind = f.string(r, "kind").unwrap_or_else(|| "Service".into());
    let namespace = f.string(r, "namespace");
    let name = f.string(r, "name");
    let port = f.uint(r, "port", 1, 65535).map(|p| p as u16);
    let weight = f.uint(r, "weight", 0, 1_000_000).map_or(1, |w| w as u32);
    let headers = f
        .read(r, "filters", |r, n, p| Some(backend_filters(r, n, p)))
        .unwrap_or_default();
    f.finish(r, &[]);
    let Some(name) = name else {
        r.error(node, format!("{path}.name"), "a backendRef needs a name");
        return None;
    };
    if port.is_none() && kind != "ServiceEntry" {
        r.error(
            node,
            format!("{path}.port"),
            format!("a backendRef of kind {kind} needs a port"),
        );
        return None;
    }
    Some(Backend {
        group,
        kind,
        namespace,
        name,
        port,
        weight,
        headers,
    })
}

/// A backend's own `filters`: header modifiers only.
fn backend_filters(r: &mut Reader<'_>, node: &Node, path: &str) -> Headers {
    let mut rule = Rule::default();
    for (i, item) in r.list(node, path).unwrap_or(&[]).iter().enumerate() {
        filter(r, item, &format!("{path}[{i}]"), &mut rule, BACKEND_FILTERS);
    }
    rule.headers
}

fn rule(r: &mut Reader<'_>, node: &Node, path: &str, kind: RouteKind) -> Option<Rule> {
    let mut f = r.map(node, path)?;
    let mut rule = Rule {
        name: f.string(r, "name"),
        backends: f.read_list(r, "backendRefs", backend),
        ..Rule::default()
    };
    if kind == RouteKind::Grpc {
        rule.matches = f.read_list(r, "matches", super::grpc::grpc_match);
        for (n, p) in f.list(r, "filters") {
            filter(r, n, &p, &mut rule, GRPC_FILTERS);
        }
    }
    if kind == RouteKind::Http {
        rule.matches = f.read_list(r, "matches", http_match);
        for (n, p) in f.list(r, "filters") {
            filter(r, n, &p, &mut rule, HTTP_FILTERS);
        }
        if let Some(t) = f.take("timeouts")
            && let Some(mut tf) = r.map(t, &format!("{path}.timeouts"))
        {
            rule.timeout = tf.positive_duration(r, "request");
            tf.finish(r, &["backendRequest"]);
        }
        rule.retries = f.read(r, "retry", retry);
    }
    f.finish(r, &["sessionPersistence"]);
    Some(rule)
}

fn retry(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Retries> {
    let mut f = r.map(node, path)?;
    let attempts = f.uint(r, "attempts", 0, 100).map_or(1, |a| a as u32);
    let codes: Vec<String> = f
        .list(r, "codes")
        .into_iter()
        .filter_map(|(n, p)| r.uint(n, &p, 400, 599).map(|c| c.to_string()))
        .collect();
    let _backoff = f.take("backoff");
    f.finish(r, &[]);
    let retry_on = if codes.is_empty() {
        vec![
            "connect-failure".into(),
            "refused-stream".into(),
            "503".into(),
        ]
    } else {
        codes
    };
    Some(Retries {
        attempts,
        per_try_timeout: None,
        retry_on,
    })
}

fn http_match(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<HttpMatch> {
    let mut f = r.map(node, path)?;
    let mut m = HttpMatch {
        uri: f.read(r, "path", path_match),
        method: f.string(r, "method").map(StringMatch::Exact),
        ..HttpMatch::default()
    };
    for (key, out) in [
        ("headers", &mut m.headers),
        ("queryParams", &mut m.query_params),
    ] {
        for (n, p) in f.list(r, key) {
            if let Some(pair) = named_match(r, n, &p, key == "headers") {
                out.push(pair);
            }
        }
    }
    f.finish(r, &[]);
    Some(m)
}

/// `path`: `PathPrefix` (default, by segments), `Exact`, `RegularExpression`.
fn path_match(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<StringMatch> {
    let mut f = r.map(node, path)?;
    let kind = f
        .take("type")
        .and_then(|n| {
            r.one_of(
                n,
                &format!("{path}.type"),
                &["PathPrefix", "Exact", "RegularExpression"],
            )
        })
        .unwrap_or("PathPrefix");
    let value = f.string(r, "value").unwrap_or_else(|| "/".into());
    f.finish(r, &[]);
    if kind != "RegularExpression" && !value.starts_with('/') {
        r.error(node, format!("{path}.value"), "a path starts with /");
        return None;
    }
    match kind {
        "Exact" => Some(StringMatch::Exact(value)),
        "PathPrefix" => {
            let trimmed = value.trim_end_matches('/');
            Some(StringMatch::PathPrefix(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            }))
        }
        _ => regex(r, node, &format!("{path}.value"), &value),
    }
}

pub(super) fn regex(r: &mut Reader<'_>, node: &Node, path: &str, s: &str) -> Option<StringMatch> {
    match regex::RegexBuilder::new(&format!("^(?:{s})$"))
        .size_limit(1 << 20)
        .build()
    {
        Ok(re) => Some(StringMatch::Regex(re)),
        Err(e) => {
            r.error(node, path, format!("invalid regex {s:?}: {e}"));
            None
        }
    }
}

/// A header or query match: `{type: Exact | RegularExpression, name, value}`.
pub(super) fn named_match(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    header: bool,
) -> Option<(String, StringMatch)> {
    let mut f = r.map(node, path)?;
    let kind = f
        .take("type")
        .and_then(|n| r.one_of(n, &format!("{path}.type"), &["Exact", "RegularExpression"]))
        .unwrap_or("Exact");
    let name = f.string(r, "name");
    let value = f.string(r, "value");
    f.finish(r, &[]);
    let (Some(name), Some(value)) = (name, value) else {
        r.error(node, path, "a match needs a name and a value");
        return None;
    };
    let name = if header {
        name.to_ascii_lowercase()
    } else {
        name
    };
    let m = match kind {
        "Exact" => StringMatch::Exact(value),
        _ => regex(r, node, &format!("{path}.value"), &value)?,
    };
    Some((name, m))
}

/// One `filters[]` entry into the rule; `backend` allows header modifiers only.
/// The filters a backend takes.
const BACKEND_FILTERS: &[&str] = &["RequestHeaderModifier", "ResponseHeaderModifier"];
/// The filters an `HTTPRoute` rule takes.
const HTTP_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
];
/// The filters a `GRPCRoute` rule takes (gRPC has no redirects or rewrites).
const GRPC_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
];

fn filter(r: &mut Reader<'_>, node: &Node, path: &str, rule: &mut Rule, allowed: &[&str]) {
    let Some(mut f) = r.map(node, path) else {
        return;
    };
    let kind = f.take("type").and_then(|n| {
        let p = format!("{path}.type");
        match r.string(n, &p)?.as_str() {
            k if allowed.contains(&k) => Some(k.to_owned()),
            other => {
                r.error(
                    n,
                    &p,
                    format!("filter {other:?} is not supported here (supported: {allowed:?})"),
                );
                None
            }
        }
    });
    let Some(kind) = kind else {
        f.ignore_rest();
        return;
    };
    match kind.as_str() {
        "RequestHeaderModifier" => {
            rule.headers.request = f
                .read(r, "requestHeaderModifier", header_ops)
                .unwrap_or_default()
        }
        "ResponseHeaderModifier" => {
            rule.headers.response = f
                .read(r, "responseHeaderModifier", header_ops)
                .unwrap_or_default()
        }
        "RequestRedirect" => rule.redirect = f.read(r, "requestRedirect", redirect),
        "URLRewrite" => rule.rewrite = f.read(r, "urlRewrite", rewrite),
        _ => {
            if let Some(m) = f.read(r, "requestMirror", mirror) {
                rule.mirrors.push(m);
            }
        }
    }
    f.finish(r, &[]);
}

fn header_ops(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<HeaderOps> {
    let mut f = r.map(node, path)?;
    let pairs = |f: &mut Fields<'_>, r: &mut Reader<'_>, key: &str| -> Vec<(String, String)> {
        f.read_list(r, key, |r, n, p| {
            let mut hf = r.map(n, p)?;
            let name = hf.string(r, "name");
            let value = hf.string(r, "value");
            hf.finish(r, &[]);
            Some((name?.to_ascii_lowercase(), value?))
        })
    };
    let ops = HeaderOps {
        set: pairs(&mut f, r, "set"),
        add: pairs(&mut f, r, "add"),
        remove: f
            .strings(r, "remove")
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    };
    f.finish(r, &[]);
    Some(ops)
}

/// `path` of a redirect or rewrite: `(full, prefix)` replacement.
fn path_modifier(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
) -> Option<(Option<String>, Option<String>)> {
    let mut f = r.map(node, path)?;
    let kind = f.take("type").and_then(|n| {
        r.one_of(
            n,
            &format!("{path}.type"),
            &["ReplaceFullPath", "ReplacePrefixMatch"],
        )
    });
    let full = f.string(r, "replaceFullPath");
    let prefix = f.string(r, "replacePrefixMatch");
    f.finish(r, &[]);
    match kind {
        Some("ReplaceFullPath") if full.is_some() => Some((full, None)),
        Some("ReplacePrefixMatch") if prefix.is_some() => Some((None, prefix)),
        _ => {
            r.error(node, path, "type ReplaceFullPath needs replaceFullPath, ReplacePrefixMatch needs replacePrefixMatch");
            None
        }
    }
}

fn redirect(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Redirect> {
    let mut f = r.map(node, path)?;
    let scheme = f.take("scheme").and_then(|n| {
        r.one_of(n, &format!("{path}.scheme"), &["http", "https"])
            .map(str::to_owned)
    });
    let authority = f.string(r, "hostname");
    let port = f.uint(r, "port", 1, 65535).map(|p| p as u16);
    let code = f
        .take("statusCode")
        .and_then(|n| r.uint(n, &format!("{path}.statusCode"), 301, 308))
        .map_or(302, |c| c as u16);
    if ![301, 302, 303, 307, 308].contains(&code) {
        r.error(
            node,
            format!("{path}.statusCode"),
            "a redirect status is 301, 302, 303, 307 or 308",
        );
    }
    let uri = match f.read(r, "path", path_modifier) {
        Some((Some(full), _)) => Some(full),
        Some((None, Some(prefix))) => {
            r.error(
                node,
                format!("{path}.path"),
                "ReplacePrefixMatch in a redirect is not supported; use ReplaceFullPath",
            );
            Some(prefix)
        }
        _ => None,
    };
    f.finish(r, &[]);
    Some(Redirect {
        uri,
        authority,
        port,
        derive_port: None,
        scheme,
        redirect_code: code,
    })
}

fn rewrite(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Rewrite> {
    let mut f = r.map(node, path)?;
    let authority = f.string(r, "hostname");
    let (uri, uri_regex) = match f.read(r, "path", path_modifier) {
        // The whole path, whatever matched it.
        Some((Some(full), _)) => (None, Some(("^.*$".to_owned(), full))),
        Some((None, Some(prefix))) => (Some(prefix), None),
        _ => (None, None),
    };
    f.finish(r, &[]);
    Some(Rewrite {
        uri,
        authority,
        uri_regex,
    })
}

fn mirror(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<(Backend, f64)> {
    let mut f = r.map(node, path)?;
    let backend = f.read(r, "backendRef", backend);
    let percent = f.uint(r, "percent", 0, 100).map(|p| p as f64);
    let fraction = f.read(r, "fraction", |r, n, p| {
        let mut ff = r.map(n, p)?;
        let num = ff.uint(r, "numerator", 0, u32::MAX.into())?;
        let den = ff.uint(r, "denominator", 1, u32::MAX.into()).unwrap_or(100);
        ff.finish(r, &[]);
        Some(num as f64 * 100.0 / den as f64)
    });
    f.finish(r, &[]);
    let Some(backend) = backend else {
        r.error(
            node,
            format!("{path}.backendRef"),
            "a mirror needs a backendRef",
        );
        return None;
    };
    Some((backend, percent.or(fraction).unwrap_or(100.0).min(100.0)))
}

pub(super) fn grant(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<Grant> {
    let mut f = r.map(spec, "spec")?;
    let from = f.read_list(r, "from", |r, n, p| {
        let mut ff = r.map(n, p)?;
        let group = ff.string(r, "group").unwrap_or_default();
        let kind = ff.string(r, "kind");
        let namespace = ff.string(r, "namespace");
        ff.finish(r, &[]);
        Some((group, kind?, namespace?))
    });
    let to = f.read_list(r, "to", |r, n, p| {
        let mut tf = r.map(n, p)?;
        let group = tf.string(r, "group").unwrap_or_default();
        let kind = tf.string(r, "kind");
        let name = tf.string(r, "name");
        tf.finish(r, &[]);
        Some((group, kind?, name))
    });
    f.finish(r, &[]);
    Some(Grant {
        namespace: meta.namespace,
        from,
        to,
    })
}
