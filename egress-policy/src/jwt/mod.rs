//! `RequestAuthentication`: JWT validation as Istio configures Envoy's `jwt_authn`.
//!
//! - No token: the request goes on without an identity (an `AuthorizationPolicy` may then
//!   require one with `requestPrincipals`).
//! - A token that does not validate (bad signature, expired, not yet valid, unknown issuer,
//!   no matching key, `alg: none` or a symmetric algorithm): **401** with
//!   `www-authenticate: Bearer realm="…", error="invalid_token"` and a body naming the
//!   failure.
//! - A token whose audience is not allowed fails authentication too: **401**, as every
//!   failure of the token itself (Envoy's `jwt_authn`); 403 only ever comes from
//!   authorization.
//! - A valid token: [`RequestAuth`] (principal `iss/sub`, audiences, presenter, claims) in
//!   the request extensions; the token removed before forwarding unless
//!   `forwardOriginalToken`; `outputPayloadToHeader` / `outputClaimToHeaders` written — and
//!   those headers always removed from what the client sent first, so they cannot be forged.
//!
//! Keys come inline (`jwks`) or from `jwksUri`, fetched by a [`JwksStore`] in the background
//! (the last good set is kept when a refresh fails).

mod store;

pub use store::{FetchJwks, JwksStatus, JwksStore};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use std::sync::Arc;
use std::time::Duration;

pub use crate::identity::RequestAuth;
pub use crate::jwks::{Key, Keys, parse_jwks};

use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::identity::Identity;
use crate::model::{Config, JwtProvider};

/// Clock skew allowed for `exp` and `nbf`, as Envoy's default.
const CLOCK_SKEW_SECS: u64 = 60;

/// Where a token was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A header, with the prefix to strip.
    Header(HeaderName, String),
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// Where keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `jwks`, parsed at load.
    Inline(Arc<Keys>),
    /// `jwksUri`, read from the [`JwksStore`].
    Uri(Arc<str>),
}

/// One compiled `jwtRules` entry.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    issuer: String,
    audiences: Vec<String>,
    keys: KeySource,
    timeout: Duration,
    locations: Vec<Location>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
}

/// The `RequestAuthentication` rules that apply to this gateway, merged and compiled.
#[derive(Clone, Debug, Default)]
pub struct JwtPolicy {
    rules: Vec<CompiledRule>,
    /// Every location any rule reads, in order.
    locations: Vec<Location>,
    /// Headers the gateway writes from tokens: removed from every request first.
    output_headers: Vec<HeaderName>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtFailure {
    /// Always 401: every failure of a token is a failure of authentication.
    pub status: StatusCode,
    /// Envoy's wording.
    pub message: String,
}

impl JwtFailure {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }
}

impl JwtPolicy {
    /// Compiles the rules of every `RequestAuthentication` applying to this gateway.
    pub fn compile(config: &Config, identity: &Identity) -> (Self, Diagnostics) {
        let mut policy = JwtPolicy::default();
        let mut diags = Diagnostics::default();
        for ra in &config.jwt_authentications {
            if let Err(why) = identity.applies(&ra.scope, &ra.meta.namespace) {
                diags.push(Diagnostic {
                    severity: Severity::Warning,
                    file: ra.meta.file.clone(),
                    line: ra.meta.line,
                    col: 1,
                    resource: Some(format!("RequestAuthentication {}", ra.meta.id()).into()),
                    field: String::new(),
                    message: format!("does not apply to this gateway: {why}"),
                });
                continue;
            }
            for rule in &ra.jwt_rules {
                policy.add(rule);
            }
        }
        (policy, diags)
    }

    fn add(&mut self, r: &JwtProvider) {
        let keys = match (&r.jwks, &r.jwks_uri) {
            (Some(text), _) => KeySource::Inline(Arc::new(parse_jwks(text).unwrap_or_default())),
            (None, Some(uri)) => KeySource::Uri(uri.as_str().into()),
            // OpenID discovery: the store reads the issuer's configuration for `jwks_uri`.
            (None, None) => KeySource::Uri(format!("{}{}", store::DISCOVERY, r.issuer).into()),
        };
        let mut locations = Vec::new();
        for h in &r.from_headers {
            if let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) {
                locations.push(Location::Header(name, h.prefix.clone()));
            }
        }
        locations.extend(r.from_params.iter().cloned().map(Location::Param));
        locations.extend(r.from_cookies.iter().cloned().map(Location::Cookie));
        if locations.is_empty() {
            locations.push(Location::Header(
                http::header::AUTHORIZATION,
                "Bearer ".to_owned(),
            ));
            locations.push(Location::Param("access_token".to_owned()));
        }
        for l in &locations {
            if !self.locations.contains(l) {
                self.locations.push(l.clone());
            }
        }
        let payload_header = r
            .output_payload_to_header
            .as_ref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        let claim_headers: Vec<(HeaderName, Vec<String>)> = r
            .output_claim_to_headers
            .iter()
            .filter_map(|c| {
                Some((
                    HeaderName::from_bytes(c.header.as_bytes()).ok()?,
                    c.claim.split('.').map(str::to_owned).collect(),
                ))
            })
            .collect();
        self.output_headers.extend(payload_header.iter().cloned());
        self.output_headers
            .extend(claim_headers.iter().map(|(h, _)| h.clone()));
        self.rules.push(CompiledRule {
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            keys,
            timeout: r.timeout.unwrap_or(Duration::from_secs(5)),
            locations,
            forward: r.forward_original_token,
            payload_header,
            claim_headers,
        });
    }

    /// Whether no rule applies (the layer then costs nothing).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The `jwksUri`s to keep fetched, with their fetch timeouts.
    pub fn uris(&self) -> Vec<(Arc<str>, Duration)> {
        let mut out: Vec<(Arc<str>, Duration)> = Vec::new();
        for r in &self.rules {
            if let KeySource::Uri(u) = &r.keys
                && !out.iter().any(|(x, _)| x == u)
            {
                out.push((u.clone(), r.timeout));
            }
        }
        out
    }

    /// The issuers, for `/config_dump`.
    pub fn issuers(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.issuer.clone()).collect()
    }

    /// Authenticates a request: strips forgeable output headers, finds tokens, validates
    /// them. `Ok(None)`: no token. On success the caller applies [`Authenticated::apply`].
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        store: &JwksStore,
    ) -> Result<Option<Authenticated>, JwtFailure> {
        let mut found: Vec<(&Location, String)> = Vec::new();
        for loc in &self.locations {
            for token in extract(loc, headers, query)? {
                found.push((loc, token));
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        // Every token present must validate: one bad token is never hidden by a good one.
        let mut result = None;
        for (loc, token) in &found {
            let (rule, auth) = self.validate(loc, token, store)?;
            if result.is_none() {
                result = Some((rule, auth));
            }
        }
        let (rule, auth) = result.ok_or_else(|| JwtFailure::invalid("Jwt is missing"))?;
        let rule = &self.rules[rule];
        let mut set = Vec::new();
        if let Some(h) = &rule.payload_header
            && let Some(payload) = found[0].1.split('.').nth(1)
            && let Ok(v) = http::HeaderValue::from_str(payload)
        {
            set.push((h.clone(), v));
        }
        for (h, path) in &rule.claim_headers {
            let vals = auth.claim_strings(path);
            if let Some(v) = vals.first()
                && let Ok(v) = http::HeaderValue::from_str(v)
            {
                set.push((h.clone(), v));
            }
        }
        let remove = if rule.forward {
            Vec::new()
        } else {
            found
                .iter()
                .filter_map(|(l, _)| match l {
                    Location::Header(h, _) => Some(h.clone()),
                    _ => None,
                })
                .collect()
        };
        Ok(Some(Authenticated { auth, set, remove }))
    }

    /// Headers the gateway itself writes from tokens.
    pub fn output_headers(&self) -> &[HeaderName] {
        &self.output_headers
    }

    fn validate(
        &self,
        loc: &Location,
        token: &str,
        store: &JwksStore,
    ) -> Result<(usize, RequestAuth), JwtFailure> {
        let (alg, header, payload) = unverified(token)?;
        let iss = payload.get("iss").and_then(|v| v.as_str()).unwrap_or("");
        let Some((index, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.issuer == iss && r.locations.contains(loc))
        else {
            return Err(JwtFailure::invalid(format!(
                "Jwt issuer {iss:?} is not configured"
            )));
        };
        let keys = match &rule.keys {
            KeySource::Inline(k) => k.clone(),
            KeySource::Uri(u) => store.keys(u).ok_or_else(|| {
                JwtFailure::invalid(format!(
                    "Jwks for issuer {iss:?} are not available (fetching {u} has not succeeded yet)"
                ))
            })?,
        };
        let kid = header.get("kid").and_then(|k| k.as_str());
        let candidates: Vec<&Key> = keys
            .keys
            .iter()
            .filter(|k| k.algs.contains(&alg))
            .filter(|k| match (kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(JwtFailure::invalid(
                "Jwks doesn't have key to match kid or alg from Jwt",
            ));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.validate_nbf = true;
        let mut last = None;
        for k in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &validation) {
                Ok(data) => return Ok((index, verified(rule, iss, data.claims)?)),
                Err(e) => last = Some(e),
            }
        }
        use jsonwebtoken::errors::ErrorKind;
        Err(JwtFailure::invalid(match last.as_ref().map(|e| e.kind()) {
            Some(ErrorKind::ExpiredSignature) => "Jwt is expired",
            Some(ErrorKind::ImmatureSignature) => "Jwt not yet valid",
            _ => "Jwt verification fails",
        }))
    }
}

/// The algorithm, header and payload of a compact JWS, before its signature is checked:
/// only asymmetric algorithms are accepted (never `none` or a shared secret).
fn unverified(
    token: &str,
) -> Result<(Algorithm, serde_json::Value, serde_json::Value), JwtFailure> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtFailure::invalid(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ));
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: serde_json::Value = b64
        .decode(h.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| JwtFailure::invalid("Jwt header is an invalid JSON"))?;
    let payload: serde_json::Value = b64
        .decode(p.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| JwtFailure::invalid("Jwt payload is an invalid JSON"))?;
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    let alg: Algorithm = match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA" => {
            alg.parse()
                .map_err(|_| JwtFailure::invalid("Jwt algorithm is not supported"))?
        }
        _ => {
            return Err(JwtFailure::invalid(format!(
                "Jwt algorithm {alg:?} is not supported (asymmetric algorithms only; never \"none\")"
            )));
        }
    };
    Ok((alg, header, payload))
}

/// The identity of a token whose signature verified, once its audience is allowed.
fn verified(
    rule: &CompiledRule,
    iss: &str,
    claims: serde_json::Value,
) -> Result<RequestAuth, JwtFailure> {
    let audiences: Vec<String> = match claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    if !rule.audiences.is_empty() && !audiences.iter().any(|a| rule.audiences.contains(a)) {
        return Err(JwtFailure::invalid("Audiences in Jwt are not allowed"));
    }
    let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
    let presenter = claims
        .get("azp")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Ok(RequestAuth {
        principal: format!("{iss}/{sub}").into(),
        audiences,
        presenter,
        claims,
    })
}

/// A validated token and what to change in the request.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The identity.
    pub auth: RequestAuth,
    set: Vec<(HeaderName, http::HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Authenticated {
    /// Removes the token (unless forwarded) and writes the output headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for h in &self.remove {
            headers.remove(h);
        }
        for (h, v) in &self.set {
            headers.insert(h.clone(), v.clone());
        }
    }
}

fn extract(
    loc: &Location,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Vec<String>, JwtFailure> {
    let mut out = Vec::new();
    match loc {
        Location::Header(name, prefix) => {
            for v in headers.get_all(name) {
                let v = v
                    .to_str()
                    .map_err(|_| JwtFailure::invalid("Jwt header is not visible ASCII"))?;
                let token = if prefix.is_empty() {
                    Some(v)
                } else if v.len() >= prefix.len()
                    && v.is_char_boundary(prefix.len())
                    && v[..prefix.len()].eq_ignore_ascii_case(prefix)
                {
                    Some(&v[prefix.len()..])
                } else {
                    None
                };
                if let Some(t) = token {
                    let t = t.trim();
                    if !t.is_empty() {
                        out.push(t.to_owned());
                    }
                }
            }
        }
        Location::Param(name) => {
            for pair in query.unwrap_or("").split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && k == name
                    && !v.is_empty()
                {
                    out.push(v.to_owned());
                }
            }
        }
        Location::Cookie(name) => {
            for v in headers.get_all(http::header::COOKIE) {
                let Ok(v) = v.to_str() else { continue };
                for c in v.split(';') {
                    if let Some((k, val)) = c.trim().split_once('=')
                        && k == name
                        && !val.is_empty()
                    {
                        out.push(val.to_owned());
                    }
                }
            }
        }
    }
    if out.len() > 1 {
        return Err(JwtFailure::invalid(
            "more than one Jwt in one location is ambiguous",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
