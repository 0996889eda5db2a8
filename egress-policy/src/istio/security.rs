//! Reading and validating `AuthorizationPolicy` (`security.istio.io`), and the scope rules
//! it shares with `RequestAuthentication`.
//!
//! Istio's own validation is followed, and made stricter where Istio is silent: an unknown
//! `when` key, a value with a `*` in the middle, or an HTTP-only key at the wrong place are
//! errors naming the field, not rules that quietly never match.

use ipnet::IpNet;

use super::model::Meta;
pub use super::model::{
    AuthorizationPolicy, AuthzAction, ClaimToHeader, Condition, JwtHeader, JwtRule, Operation,
    RequestAuthentication, Rule, Scope, Source, TargetRef,
};
use super::reader::Reader;
pub use crate::model::{WHEN_KEYS, bracketed, parse_ip_block, when_key_is_http_only};
use crate::yaml::Node;

/// The API versions of the security kinds read.
pub(crate) const SECURITY_VERSIONS: &[&str] =
    &["security.istio.io/v1", "security.istio.io/v1beta1"];

pub(super) fn read_scope(
    r: &mut Reader<'_>,
    f: &mut super::reader::Fields<'_>,
    namespace_given: bool,
) -> Scope {
    let mut scope = Scope {
        namespace_given,
        ..Scope::default()
    };
    if let Some(sel) = f.take("selector") {
        let path = "spec.selector";
        if let Some(mut sf) = r.map(sel, path) {
            let labels = sf.string_map(r, "matchLabels");
            sf.finish(r, &[]);
            scope.selector = Some(labels);
        }
    }
    let mut refs = Vec::new();
    if let Some(n) = f.take("targetRef") {
        refs.extend(read_target_ref(r, n, "spec.targetRef"));
    }
    if let Some(n) = f.take("targetRefs") {
        for (i, t) in r
            .list(n, "spec.targetRefs")
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            refs.extend(read_target_ref(r, t, &format!("spec.targetRefs[{i}]")));
        }
    }
    if scope.selector.is_some()
        && !refs.is_empty()
        && let Some(n) = f.take("selector")
    {
        r.error(
            n,
            "spec.selector",
            "selector and targetRefs cannot both be set",
        );
    }
    scope.target_refs = refs;
    scope
}

fn read_target_ref(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<TargetRef> {
    let mut f = r.map(node, path)?;
    let s = |f: &mut super::reader::Fields<'_>, r: &mut Reader<'_>, k: &str| {
        f.take(k).and_then(|n| r.string(n, &format!("{path}.{k}")))
    };
    let group = s(&mut f, r, "group").unwrap_or_default();
    let kind = s(&mut f, r, "kind");
    let name = s(&mut f, r, "name");
    let namespace = s(&mut f, r, "namespace");
    f.finish(r, &[]);
    match (kind, name) {
        (Some(kind), Some(name)) if !kind.is_empty() && !name.is_empty() => Some(TargetRef {
            group,
            kind,
            name,
            namespace,
        }),
        _ => {
            r.error(node, path, "a targetRef needs kind and name");
            None
        }
    }
}

/// Reads `spec` of an `AuthorizationPolicy`.
pub(crate) fn read_authorization_policy(
    r: &mut Reader<'_>,
    meta: Meta,
    spec: &Node,
    namespace_given: bool,
) -> Option<AuthorizationPolicy> {
    let mut f = r.map(spec, "spec")?;
    let errors_before = r.diags.errors().count();
    let scope = read_scope(r, &mut f, namespace_given);
    let action = match f.take("action") {
        None => AuthzAction::Allow,
        Some(n) => match r.one_of(n, "spec.action", &["ALLOW", "DENY", "AUDIT", "CUSTOM"]) {
            Some("DENY") => AuthzAction::Deny,
            Some("AUDIT") => AuthzAction::Audit,
            Some("CUSTOM") => AuthzAction::Custom,
            _ => AuthzAction::Allow,
        },
    };
    let mut provider = None;
    if let Some(n) = f.take("provider") {
        if let Some(mut pf) = r.map(n, "spec.provider") {
            provider = pf.string(r, "name").filter(|s| !s.is_empty());
            pf.finish(r, &[]);
        }
        if action != AuthzAction::Custom {
            r.error(n, "spec.provider", "provider is only for action CUSTOM");
        }
    }
    if action == AuthzAction::Custom && provider.is_none() {
        r.error(
            spec,
            "spec.provider.name",
            "action CUSTOM needs provider.name",
        );
    }
    let rules = f.take("rules").map(|n| {
        r.list(n, "spec.rules")
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| read_rule(r, rule, &format!("spec.rules[{i}]"), action))
            .collect::<Vec<_>>()
    });
    if action == AuthzAction::Custom
        && rules.as_ref().is_some_and(|rs| {
            rs.iter().any(|r| {
                r.from.iter().any(|s| {
                    !s.request_principals.is_empty() || !s.not_request_principals.is_empty()
                })
            })
        })
    {
        r.error(spec, "spec.rules", "a CUSTOM policy cannot use requestPrincipals (the external authorizer runs before JWT claims are trusted)");
    }
    f.finish(r, &[]);
    (r.diags.errors().count() == errors_before).then_some(AuthorizationPolicy {
        meta,
        scope,
        action,
        provider,
        rules,
        // Set from the annotation by the caller, which read the metadata.
        dry_run: false,
    })
}

fn read_rule(r: &mut Reader<'_>, node: &Node, path: &str, action: AuthzAction) -> Option<Rule> {
    let mut f = r.map(node, path)?;
    let mut rule = Rule {
        from: wrapped(r, &mut f, path, ("from", "source"), read_source),
        to: wrapped(r, &mut f, path, ("to", "operation"), read_operation),
        when: Vec::new(),
    };
    if let Some(n) = f.take("when") {
        for (i, item) in r
            .list(n, &format!("{path}.when"))
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if let Some(c) = read_condition(r, item, &format!("{path}.when[{i}]"), action) {
                rule.when.push(c);
            }
        }
    }
    f.finish(r, &[]);
    Some(rule)
}

/// Reads `key: [{inner: …}, …]` (`from[].source`, `to[].operation`) with `read`.
fn wrapped<T>(
    r: &mut Reader<'_>,
    f: &mut super::reader::Fields<'_>,
    path: &str,
    (key, inner): (&str, &str),
    read: fn(&mut Reader<'_>, &Node, &str) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    let Some(n) = f.take(key) else { return out };
    for (i, item) in r
        .list(n, &format!("{path}.{key}"))
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let p = format!("{path}.{key}[{i}]");
        let Some(mut itf) = r.map(item, &p) else {
            continue;
        };
        match itf.take(inner) {
            None => r.error(
                item,
                format!("{p}.{inner}"),
                format!("{key}[] needs {inner}"),
            ),
            Some(x) => out.extend(read(r, x, &format!("{p}.{inner}"))),
        }
        itf.finish(r, &[]);
    }
    out
}

/// Headers a token must never be written into: message framing, routing, hop-by-hop,
/// credentials.
pub(super) fn reserved_header(h: &str) -> bool {
    matches!(
        h.to_ascii_lowercase().as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-authorization"
            | "authorization"
            | "cookie"
    ) || h.starts_with(':')
}

/// Reads `key: [{a: …, b: …}, …]`: each entry's node, path and two optional strings.
pub(super) fn string_pairs<'n>(
    r: &mut Reader<'_>,
    f: &mut super::reader::Fields<'n>,
    path: &str,
    key: &str,
    (a, b): (&str, &str),
) -> Vec<(&'n Node, String, Option<String>, Option<String>)> {
    let mut out = Vec::new();
    let Some(n) = f.take(key) else { return out };
    for (i, item) in r
        .list(n, &format!("{path}.{key}"))
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let p = format!("{path}.{key}[{i}]");
        let Some(mut itf) = r.map(item, &p) else {
            continue;
        };
        let x = itf.take(a).and_then(|n| r.string(n, &format!("{p}.{a}")));
        let y = itf.take(b).and_then(|n| r.string(n, &format!("{p}.{b}")));
        itf.finish(r, &[]);
        out.push((item, p, x, y));
    }
    out
}

/// Checks Istio's string-match forms: exact, `prefix*`, `*suffix`, or `*`.
fn check_pattern(r: &mut Reader<'_>, node: &Node, path: &str, s: &str) -> bool {
    let inner = s.strip_prefix('*').unwrap_or(s);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if s.len() > 1 && s.starts_with('*') && s.ends_with('*') || inner.contains('*') {
        r.error(
            node,
            path,
            format!("{s:?}: a '*' is only allowed alone, at the start (\"*suffix\") or at the end (\"prefix*\")"),
        );
        return false;
    }
    if s.is_empty() {
        r.error(
            node,
            path,
            "an empty string matches nothing; remove it or use \"*\"",
        );
        return false;
    }
    true
}

fn patterns(r: &mut Reader<'_>, f: &mut super::reader::Fields<'_>, key: &str) -> Vec<String> {
    let Some(n) = f.take(key) else {
        return Vec::new();
    };
    let path = f.path(key);
    let items = r.list(n, &path).unwrap_or(&[]);
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(s) = r.string(item, &p)
            && check_pattern(r, item, &p, &s)
        {
            out.push(s);
        }
    }
    out
}

fn ip_blocks(r: &mut Reader<'_>, f: &mut super::reader::Fields<'_>, key: &str) -> Vec<IpNet> {
    let Some(n) = f.take(key) else {
        return Vec::new();
    };
    let path = f.path(key);
    let mut out = Vec::new();
    for (i, item) in r.list(n, &path).unwrap_or(&[]).iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(s) = r.string(item, &p) {
            match parse_ip_block(&s) {
                Some(net) => out.push(net),
                None => r.error(item, &p, format!("{s:?} is not an IP address or CIDR")),
            }
        }
    }
    out
}

fn read_source(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Source> {
    let mut f = r.map(node, path)?;
    let s = Source {
        principals: patterns(r, &mut f, "principals"),
        not_principals: patterns(r, &mut f, "notPrincipals"),
        request_principals: patterns(r, &mut f, "requestPrincipals"),
        not_request_principals: patterns(r, &mut f, "notRequestPrincipals"),
        namespaces: patterns(r, &mut f, "namespaces"),
        not_namespaces: patterns(r, &mut f, "notNamespaces"),
        ip_blocks: ip_blocks(r, &mut f, "ipBlocks"),
        not_ip_blocks: ip_blocks(r, &mut f, "notIpBlocks"),
        remote_ip_blocks: ip_blocks(r, &mut f, "remoteIpBlocks"),
        not_remote_ip_blocks: ip_blocks(r, &mut f, "notRemoteIpBlocks"),
    };
    f.finish(r, &["serviceAccounts", "notServiceAccounts"]);
    if s == Source::default() {
        r.error(node, path, "a source needs at least one field");
        return None;
    }
    Some(s)
}

fn ports(r: &mut Reader<'_>, f: &mut super::reader::Fields<'_>, key: &str) -> Vec<u16> {
    let Some(n) = f.take(key) else {
        return Vec::new();
    };
    let path = f.path(key);
    let mut out = Vec::new();
    for (i, item) in r.list(n, &path).unwrap_or(&[]).iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(s) = r.string(item, &p) {
            match s.parse::<u16>() {
                Ok(port) => out.push(port),
                Err(_) => r.error(item, &p, format!("{s:?} is not a port number (0-65535)")),
            }
        }
    }
    out
}

/// `{`, which opens an Envoy path template; spelled as an escape so that tools counting
/// braces to find functions stay in step.
const TEMPLATE_OPEN: char = '\u{7b}';

fn read_operation(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Operation> {
    let mut f = r.map(node, path)?;
    let mut o = Operation {
        hosts: patterns(r, &mut f, "hosts"),
        not_hosts: patterns(r, &mut f, "notHosts"),
        ports: ports(r, &mut f, "ports"),
        not_ports: ports(r, &mut f, "notPorts"),
        methods: patterns(r, &mut f, "methods"),
        not_methods: patterns(r, &mut f, "notMethods"),
        paths: patterns(r, &mut f, "paths"),
        not_paths: patterns(r, &mut f, "notPaths"),
    };
    f.finish(r, &[]);
    for (i, p) in o.paths.iter().chain(o.not_paths.iter()).enumerate() {
        if p.contains(TEMPLATE_OPEN) {
            r.error(
                node,
                format!("{path}.paths[{i}]"),
                format!("{p:?}: path templates ({{*}}, {{**}}) are not supported"),
            );
        }
    }
    // Istio compares hosts case-insensitively.
    for h in o.hosts.iter_mut().chain(o.not_hosts.iter_mut()) {
        h.make_ascii_lowercase();
    }
    if o == Operation::default() {
        r.error(node, path, "an operation needs at least one field");
        return None;
    }
    Some(o)
}

fn read_condition(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    action: AuthzAction,
) -> Option<Condition> {
    let mut f = r.map(node, path)?;
    let key = match f.string(r, "key") {
        Some(k) => k,
        None => {
            r.error(node, format!("{path}.key"), "a condition needs a key");
            return None;
        }
    };
    let values = patterns(r, &mut f, "values");
    let not_values = patterns(r, &mut f, "notValues");
    f.finish(r, &[]);
    let known = WHEN_KEYS.iter().any(|(k, _)| *k == key)
        || bracketed(&key, "request.headers").is_some()
        || bracketed(&key, "request.auth.claims").is_some()
        || bracketed(&key, "experimental.envoy.filters.http.jwt_authn.claims").is_some();
    if !known {
        r.error(
            node,
            format!("{path}.key"),
            format!("unknown condition key {key:?} (expected request.headers[NAME], source.ip, remote.ip, source.principal, source.namespace, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port or connection.sni)"),
        );
        return None;
    }
    if values.is_empty() && not_values.is_empty() {
        r.error(node, path, "a condition needs values or notValues");
        return None;
    }
    let ip_key = matches!(key.as_str(), "source.ip" | "remote.ip" | "destination.ip");
    for v in values.iter().chain(not_values.iter()) {
        if ip_key && parse_ip_block(v).is_none() {
            r.error(
                node,
                path,
                format!("{key}: {v:?} is not an IP address or CIDR"),
            );
        }
        if key == "destination.port" && v.parse::<u16>().is_err() {
            r.error(
                node,
                path,
                format!("destination.port: {v:?} is not a port number"),
            );
        }
    }
    let _ = action;
    Some(Condition {
        key,
        values,
        not_values,
    })
}
