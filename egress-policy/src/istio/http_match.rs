//! Reading `HTTPMatchRequest` and `StringMatch`: the conditions of a `VirtualService` HTTP
//! route, and how they match a request's bytes.

use regex::Regex;
use serde::Serialize;

use super::reader::{Fields, Reader};
use crate::yaml::{Node, Value};

/// A string match (`StringMatch`), or presence (`{}`) where Istio allows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the whole value (RE2 syntax, as Envoy's safe regex).
    Regex(#[serde(serialize_with = "regex_str")] Regex),
    /// Present, whatever its value (`{}`).
    Present,
}

fn regex_str<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    let text = r.as_str();
    // Undo the anchoring added at compile time.
    let text = text
        .strip_prefix("^(?:")
        .and_then(|t| t.strip_suffix(")$"))
        .unwrap_or(text);
    s.serialize_str(text)
}

impl StringMatch {
    /// Whether `value` matches; `ignore_case` applies to exact and prefix.
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatch::Exact(e) if ignore_case => value.eq_ignore_ascii_case(e),
            StringMatch::Exact(e) => value == e,
            StringMatch::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
            StringMatch::Present => true,
        }
    }

    /// Whether the bytes `value` match; `None` when this matcher cannot evaluate them (a
    /// regex over bytes that are not UTF-8), which callers treat as a refusal to match.
    pub fn matches_bytes(&self, value: &[u8], ignore_case: bool) -> Option<bool> {
        Some(match self {
            StringMatch::Exact(e) if ignore_case => value.eq_ignore_ascii_case(e.as_bytes()),
            StringMatch::Exact(e) => value == e.as_bytes(),
            StringMatch::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
            StringMatch::Prefix(p) => value.starts_with(p.as_bytes()),
            StringMatch::Regex(r) => r.is_match(std::str::from_utf8(value).ok()?),
            StringMatch::Present => true,
        })
    }
}

/// `HTTPMatchRequest`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// `name`.
    pub name: Option<String>,
    /// `uri`, matched against the request path without its query string, as Envoy does.
    pub uri: Option<StringMatch>,
    /// `scheme`.
    pub scheme: Option<StringMatch>,
    /// `method`.
    pub method: Option<StringMatch>,
    /// `authority`.
    pub authority: Option<StringMatch>,
    /// `headers`: lower-case name and match.
    pub headers: Vec<(String, StringMatch)>,
    /// `withoutHeaders`.
    pub without_headers: Vec<(String, StringMatch)>,
    /// `queryParams`.
    pub query_params: Vec<(String, StringMatch)>,
    /// `port`.
    pub port: Option<u16>,
    /// `ignoreUriCase`.
    pub ignore_uri_case: bool,
    /// `gateways`.
    pub gateways: Vec<String>,
}

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
        name: f
            .take("name")
            .and_then(|n| r.string(n, &format!("{path}.name"))),
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
    m.port = f
        .take("port")
        .and_then(|n| r.uint(n, &format!("{path}.port"), 1, 65535))
        .map(|p| p as u16);
    if let Some(n) = f.take("ignoreUriCase") {
        m.ignore_uri_case = r
            .boolean(n, &format!("{path}.ignoreUriCase"))
            .unwrap_or(false);
    }
    m.gateways = f
        .take("gateways")
        .map(|n| r.strings(n, &format!("{path}.gateways")))
        .unwrap_or_default();
    f.finish(r, &["sourceLabels", "sourceNamespace", "statPrefix"]);
    Some(m)
}

/// A header value as HTTP reads it: without surrounding spaces and tabs.
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else { return &[] };
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(start);
    &v[start..=end]
}
