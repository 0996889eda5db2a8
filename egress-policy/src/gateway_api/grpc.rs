//! `GRPCRoute` matches read as the HTTP matches they are: a gRPC call is an HTTP/2 `POST` to
//! `/{service}/{method}`, so a method match is a path match, and the rest of the route
//! (filters, backends, attachment, precedence) is an `HTTPRoute`'s.

use super::read::{named_match, regex};
use crate::model::{HttpMatch, StringMatch};
use crate::reader::Reader;
use crate::yaml::Node;

/// `matches[]`: `method` (`type` `Exact`, the default, or `RegularExpression`; `service`,
/// `method`, at least one of them) and `headers`.
pub(super) fn grpc_match(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<HttpMatch> {
    let mut f = r.map(node, path)?;
    let uri = f.read(r, "method", method_match);
    let mut m = HttpMatch {
        uri,
        ..HttpMatch::default()
    };
    for (n, p) in f.list(r, "headers") {
        if let Some(pair) = named_match(r, n, &p, true) {
            m.headers.push(pair);
        }
    }
    f.finish(r, &[]);
    Some(m)
}

/// The path a `method` match stands for: both names exact, the whole path; a service alone,
/// its path segment; otherwise a regular expression over the two segments.
fn method_match(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<StringMatch> {
    let mut f = r.map(node, path)?;
    let kind = f
        .take("type")
        .and_then(|n| r.one_of(n, &format!("{path}.type"), &["Exact", "RegularExpression"]))
        .unwrap_or("Exact");
    let service = f.string(r, "service").filter(|s| !s.is_empty());
    let method = f.string(r, "method").filter(|s| !s.is_empty());
    f.finish(r, &[]);
    if kind == "Exact" {
        // A name is a run of characters without `/`: anything else can never be a call.
        for (name, v) in [("service", &service), ("method", &method)] {
            if let Some(v) = v
                && (v.contains('/') || v.chars().any(char::is_whitespace))
            {
                r.error(
                    node,
                    format!("{path}.{name}"),
                    format!("{v:?} is not a gRPC {name} name"),
                );
                return None;
            }
        }
    }
    match (kind, service, method) {
        ("Exact", None, None) => {
            r.error(
                node,
                path,
                "an Exact method match needs a service, a method, or both",
            );
            None
        }
        ("Exact", Some(s), Some(m)) => Some(StringMatch::Exact(format!("/{s}/{m}"))),
        ("Exact", Some(s), None) => Some(StringMatch::PathPrefix(format!("/{s}"))),
        ("Exact", None, Some(m)) => regex(r, node, path, &format!("/[^/]+/{}", regex::escape(&m))),
        (_, s, m) => {
            let any = "[^/]+".to_owned();
            regex(
                r,
                node,
                path,
                &format!("/(?:{})/(?:{})", s.unwrap_or(any.clone()), m.unwrap_or(any)),
            )
        }
    }
}
