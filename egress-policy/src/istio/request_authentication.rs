//! Reading `RequestAuthentication` (`security.istio.io`): JWT issuers, their keys, where
//! tokens are found and what is forwarded of them.

use super::model::{ClaimToHeader, JwtHeader, JwtRule, Meta, RequestAuthentication};
use super::reader::{Fields, Reader};
use super::security::{read_scope, reserved_header, string_pairs};
use crate::yaml::Node;

/// Reads `spec` of a `RequestAuthentication`.
pub(crate) fn read_request_authentication(
    r: &mut Reader<'_>,
    meta: Meta,
    spec: &Node,
    namespace_given: bool,
) -> Option<RequestAuthentication> {
    let mut f = r.map(spec, "spec")?;
    let errors_before = r.diags.errors().count();
    let scope = read_scope(r, &mut f, namespace_given);
    let mut jwt_rules = Vec::new();
    if let Some(n) = f.take("jwtRules") {
        for (i, item) in r.list(n, "spec.jwtRules").unwrap_or(&[]).iter().enumerate() {
            if let Some(rule) = read_jwt_rule(r, item, &format!("spec.jwtRules[{i}]")) {
                if jwt_rules.iter().any(|x: &JwtRule| x.issuer == rule.issuer) {
                    r.error(
                        item,
                        format!("spec.jwtRules[{i}].issuer"),
                        format!("issuer {:?} appears twice", rule.issuer),
                    );
                }
                jwt_rules.push(rule);
            }
        }
    }
    f.finish(r, &[]);
    (r.diags.errors().count() == errors_before).then_some(RequestAuthentication {
        meta,
        scope,
        jwt_rules,
    })
}

fn read_jwt_rule(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<JwtRule> {
    let mut f = r.map(node, path)?;
    let issuer = f.string(r, "issuer").unwrap_or_default();
    if issuer.is_empty() {
        r.error(node, format!("{path}.issuer"), "a JWT rule needs an issuer");
    }
    let audiences = f.strings(r, "audiences");
    let (jwks, jwks_uri) = read_jwt_keys(r, &mut f, node, path, &issuer);
    let mut from_headers = Vec::new();
    for (h, p, name, prefix) in string_pairs(r, &mut f, path, "fromHeaders", ("name", "prefix")) {
        match name {
            Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => from_headers
                .push(JwtHeader {
                    name: name.to_ascii_lowercase(),
                    prefix: prefix.unwrap_or_default(),
                }),
            _ => r.error(h, format!("{p}.name"), "a header name is required"),
        }
    }
    let from_params = f.strings(r, "fromParams");
    let from_cookies = f.strings(r, "fromCookies");
    let forward_original_token = f.boolean(r, "forwardOriginalToken").unwrap_or(false);
    let (output_payload_to_header, output_claim_to_headers) =
        read_jwt_outputs(r, &mut f, node, path);
    let timeout = f.positive_duration(r, "timeout");
    f.finish(r, &[]);
    Some(JwtRule {
        issuer,
        audiences,
        jwks,
        jwks_uri,
        from_headers,
        from_params,
        from_cookies,
        forward_original_token,
        output_payload_to_header,
        output_claim_to_headers,
        timeout,
    })
}

/// `jwks` and `jwksUri` of a JWT rule: each valid, at most one, and one of them unless the
/// issuer is a URL (OpenID discovery).
fn read_jwt_keys(
    r: &mut Reader<'_>,
    f: &mut Fields<'_>,
    node: &Node,
    path: &str,
    issuer: &str,
) -> (Option<String>, Option<String>) {
    let jwks_node = f.take("jwks");
    let jwks = jwks_node.and_then(|n| r.string(n, &format!("{path}.jwks")));
    if let (Some(n), Some(text)) = (jwks_node, &jwks)
        && let Err(e) = crate::jwks::parse_jwks(text)
    {
        r.error(
            n,
            format!("{path}.jwks"),
            format!("invalid JSON Web Key Set: {e}"),
        );
    }
    let uri_node = f.take("jwksUri");
    let jwks_uri = uri_node.and_then(|n| r.string(n, &format!("{path}.jwksUri")));
    if let (Some(n), Some(u)) = (uri_node, &jwks_uri)
        && u.parse::<http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
            .is_none()
    {
        r.error(
            n,
            format!("{path}.jwksUri"),
            format!("{u:?} is not an http:// or https:// URL"),
        );
    }
    if jwks.is_some() && jwks_uri.is_some() {
        r.error(
            node,
            format!("{path}.jwks"),
            "jwks and jwksUri cannot both be set",
        );
    }
    let issuer_is_url = issuer
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if jwks.is_none() && jwks_uri.is_none() && !issuer_is_url {
        r.error(
            node,
            format!("{path}.jwksUri"),
            "jwks or jwksUri is required when the issuer is not a URL (keys are otherwise found by OpenID discovery from the issuer)",
        );
    }
    (jwks, jwks_uri)
}

/// `outputPayloadToHeader` and `outputClaimToHeaders`: header names the gateway does not own.
fn read_jwt_outputs(
    r: &mut Reader<'_>,
    f: &mut Fields<'_>,
    node: &Node,
    path: &str,
) -> (Option<String>, Vec<ClaimToHeader>) {
    let output_payload_to_header = f
        .string(r, "outputPayloadToHeader")
        .filter(|s| !s.is_empty());
    let mut output_claim_to_headers = Vec::new();
    for (h, p, header, claim) in
        string_pairs(r, f, path, "outputClaimToHeaders", ("header", "claim"))
    {
        match (header, claim) {
            (Some(header), Some(claim))
                if http::HeaderName::from_bytes(header.as_bytes()).is_ok() && !claim.is_empty() =>
            {
                output_claim_to_headers.push(ClaimToHeader {
                    header: header.to_ascii_lowercase(),
                    claim,
                })
            }
            _ => r.error(h, &p, "header (a valid header name) and claim are required"),
        }
    }
    for c in &output_claim_to_headers {
        if reserved_header(&c.header) {
            r.error(
                node,
                format!("{path}.outputClaimToHeaders"),
                format!(
                    "{:?} is a header the gateway owns (framing, routing or credentials)",
                    c.header
                ),
            );
        }
    }
    for h in output_payload_to_header.iter() {
        if reserved_header(h) {
            r.error(
                node,
                format!("{path}.outputPayloadToHeader"),
                format!("{h:?} is a header the gateway owns (framing, routing or credentials)"),
            );
        }
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            r.error(
                node,
                format!("{path}.outputPayloadToHeader"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    (output_payload_to_header, output_claim_to_headers)
}
