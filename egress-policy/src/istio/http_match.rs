//! Reading `HTTPMatchRequest` and `StringMatch`: the conditions of a `VirtualService` HTTP
//! route, and how they match a request's bytes.

use super::model::{HttpMatch, StringMatch};
use super::reader::{Fields, Reader};
use crate::yaml::{Node, Value};

fn read_string_match(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    presence: bool,
) -> Option<StringMatch> {
    if presence && matches!(&node.value, Value::Map(e) if e.is_empty()) {
        return Some(StringMatch::Present);
    }
    let mut f = r.map(node, path)?;
    let exact = f.take("exact");
    let prefix = f.take("prefix");
    let regex = f.take("regex");
    f.finish(r, &[]);
    match (exact, prefix, regex) {
        (Some(n), None, None) => r
            .string(n, &format!("{path}.exact"))
            .map(StringMatch::Exact),
        (None, Some(n), None) => r
            .string(n, &format!("{path}.prefix"))
            .map(StringMatch::Prefix),
        (None, None, Some(n)) => {
            let p = format!("{path}.regex");
            let s = r.string(n, &p)?;
            // Envoy's safe regex must match the whole value; anchor it once here.
            match regex::RegexBuilder::new(&format!("^(?:{s})$"))
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => Some(StringMatch::Regex(re)),
                Err(e) => {
                    r.error(n, &p, format!("invalid regex {s:?}: {e}"));
                    None
                }
            }
        }
        (None, None, None) if presence => Some(StringMatch::Present),
        _ => {
            r.error(
                node,
                path,
                "a string match needs exactly one of exact, prefix and regex",
            );
            None
        }
    }
}

fn read_match_map(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    lower_keys: bool,
) -> Vec<(String, StringMatch)> {
    let Value::Map(entries) = &node.value else {
        if !matches!(node.value, Value::Null) {
            r.error(
                node,
                path,
                format!("expected a map, got {}", node.type_name()),
            );
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let p = format!("{path}.{}", e.key);
        if lower_keys && e.key.bytes().any(|b| b.is_ascii_uppercase()) {
            r.push(
                crate::diag::Severity::Error,
                e.line,
                e.col,
                &p,
                "header names must be lower-case",
            );
            continue;
        }
        if let Some(m) = read_string_match(r, &e.value, &p, true) {
            out.push((e.key.clone(), m));
        }
    }
    out
}

pub(super) fn read_match(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<HttpMatch> {
    let mut f: Fields<'_> = r.map(node, path)?;
    let mut m = HttpMatch {
        name: f.string(r, "name"),
        ..Default::default()
    };
    for (key, slot) in [
        ("uri", &mut m.uri),
        ("scheme", &mut m.scheme),
        ("method", &mut m.method),
        ("authority", &mut m.authority),
    ] {
        if let Some(n) = f.take(key) {
            *slot = read_string_match(r, n, &format!("{path}.{key}"), false);
        }
    }
    if let Some(n) = f.take("headers") {
        m.headers = read_match_map(r, n, &format!("{path}.headers"), true);
    }
    if let Some(n) = f.take("withoutHeaders") {
        m.without_headers = read_match_map(r, n, &format!("{path}.withoutHeaders"), true);
    }
    if let Some(n) = f.take("queryParams") {
        m.query_params = read_match_map(r, n, &format!("{path}.queryParams"), false);
    }
    m.port = f.uint(r, "port", 1, 65535).map(|p| p as u16);
    if let Some(n) = f.take("ignoreUriCase") {
        m.ignore_uri_case = r
            .boolean(n, &format!("{path}.ignoreUriCase"))
            .unwrap_or(false);
    }
    m.gateways = f.strings(r, "gateways");
    f.finish(r, &["sourceLabels", "sourceNamespace", "statPrefix"]);
    Some(m)
}

pub use egress_core::headers::trim_ows;
