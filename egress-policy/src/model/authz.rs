//! Who may do what: access policies (allow, deny, audit, custom) and their rules, and JWT
//! authentication.

use ipnet::IpNet;
#[cfg(feature = "serde")]
use serde::Serialize;
use std::net::IpAddr;
use std::time::Duration;

use super::Meta;

/// `AccessPolicy.action`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
pub enum AuthzAction {
    /// Allow what matches; with any ALLOW policy, what matches none is denied.
    Allow,
    /// Deny what matches.
    Deny,
    /// Log what matches; never changes the outcome.
    Audit,
    /// Ask the external authorizer named by `provider.name` about what matches.
    Custom,
}

impl AuthzAction {
    /// Istio's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
            AuthzAction::Custom => "CUSTOM",
        }
    }
}

/// `targetRefs[]` / `targetRef`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct TargetRef {
    /// `group` (empty for core).
    pub group: String,
    /// `kind`.
    pub kind: String,
    /// `name`.
    pub name: String,
    /// `namespace` (the policy's when absent).
    pub namespace: Option<String>,
}

/// Which proxies a security resource applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Scope {
    /// `selector.matchLabels`, when a selector is given.
    pub selector: Option<Vec<(String, String)>>,
    /// `targetRefs` (and the older `targetRef`).
    #[cfg_attr(feature = "serde", serde(rename = "targetRefs"))]
    pub target_refs: Vec<TargetRef>,
    /// Whether `metadata.namespace` was written (a resource without one is taken as meant
    /// for this gateway, as `kubectl apply -n` would place it).
    #[cfg_attr(feature = "serde", serde(rename = "namespaceGiven"))]
    pub namespace_given: bool,
}

/// `Source`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
#[allow(
    missing_docs,
    reason = "each field is the Istio field of the same name"
)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
}

/// `Operation`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
#[allow(
    missing_docs,
    reason = "each field is the Istio field of the same name"
)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

/// `Condition` (`when[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct Condition {
    /// `key`, e.g. `request.headers[x-token]`.
    pub key: String,
    /// `values`.
    pub values: Vec<String>,
    /// `notValues`.
    pub not_values: Vec<String>,
}

/// `Rule`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Rule {
    /// `from[].source`.
    pub from: Vec<Source>,
    /// `to[].operation`.
    pub to: Vec<Operation>,
    /// `when`.
    pub when: Vec<Condition>,
}

/// An `AccessPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct AccessPolicy {
    /// Name, namespace, source.
    pub meta: Meta,
    /// Where it applies.
    pub scope: Scope,
    /// `action` (default `ALLOW`).
    pub action: AuthzAction,
    /// `provider.name`, for `CUSTOM`.
    pub provider: Option<String>,
    /// `rules`: `None` when absent (never matches), `Some(vec![Rule::default()])` for
    /// `rules: [{}]` (matches everything).
    pub rules: Option<Vec<Rule>>,
    /// Shadow mode (Istio's `istio.io/dry-run` annotation): evaluated and reported with
    /// its would-be decision, never enforced. Not for `CUSTOM`.
    #[cfg_attr(feature = "serde", serde(rename = "dryRun"))]
    pub dry_run: bool,
}

impl AccessPolicy {
    /// A policy applying to this gateway (no selector, no `targetRefs`) with these rules.
    pub fn new(meta: Meta, action: AuthzAction, rules: Vec<Rule>) -> Self {
        Self {
            meta,
            scope: Scope {
                namespace_given: false,
                ..Scope::default()
            },
            action,
            provider: None,
            rules: Some(rules),
            dry_run: false,
        }
    }
}

/// `JWTHeader` (`fromHeaders[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct JwtHeader {
    /// `name`.
    pub name: String,
    /// `prefix` (e.g. `Bearer `).
    pub prefix: String,
}

/// `ClaimToHeader` (`outputClaimToHeaders[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct ClaimToHeader {
    /// `header`.
    pub header: String,
    /// `claim` (dotted for nested claims).
    pub claim: String,
}

/// `JWTRule`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct JwtProvider {
    /// `issuer`.
    pub issuer: String,
    /// `audiences` (empty: any).
    pub audiences: Vec<String>,
    /// `jwks`: an inline JSON Web Key Set.
    pub jwks: Option<String>,
    /// `jwksUri`.
    pub jwks_uri: Option<String>,
    /// `fromHeaders` (default: `Authorization: Bearer …`).
    pub from_headers: Vec<JwtHeader>,
    /// `fromParams` (default: `access_token`, when no location is given).
    pub from_params: Vec<String>,
    /// `fromCookies`.
    pub from_cookies: Vec<String>,
    /// `forwardOriginalToken`.
    pub forward_original_token: bool,
    /// `outputPayloadToHeader`.
    pub output_payload_to_header: Option<String>,
    /// `outputClaimToHeaders`.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// `timeout`: for fetching `jwksUri`.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub timeout: Option<Duration>,
}

impl JwtProvider {
    /// Tokens of `issuer`, found where Istio looks by default (`Authorization: Bearer`,
    /// then `access_token`); set [`jwks`](Self::jwks) or [`jwks_uri`](Self::jwks_uri).
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: Vec::new(),
            jwks: None,
            jwks_uri: None,
            from_headers: Vec::new(),
            from_params: Vec::new(),
            from_cookies: Vec::new(),
            forward_original_token: false,
            output_payload_to_header: None,
            output_claim_to_headers: Vec::new(),
            timeout: None,
        }
    }
}

/// A `JwtAuthentication`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct JwtAuthentication {
    /// Name, namespace, source.
    pub meta: Meta,
    /// Where it applies.
    pub scope: Scope,
    /// `jwtRules`.
    pub jwt_rules: Vec<JwtProvider>,
}

impl JwtAuthentication {
    /// These providers, for every workload of the gateway's scope (`meta`'s namespace, or
    /// all of them from the root namespace).
    pub fn new(meta: Meta, jwt_rules: Vec<JwtProvider>) -> Self {
        Self {
            meta,
            scope: Scope::default(),
            jwt_rules,
        }
    }
}

/// Keys a [`Condition`] may use besides `request.headers[…]` and `request.auth.claims[…]`,
/// and whether each needs HTTP.
pub const WHEN_KEYS: &[(&str, bool)] = &[
    ("source.ip", false),
    ("remote.ip", true),
    ("source.principal", false),
    ("source.namespace", false),
    ("request.auth.principal", true),
    ("request.auth.audiences", true),
    ("request.auth.presenter", true),
    ("destination.ip", false),
    ("destination.port", false),
    ("connection.sni", false),
];

/// Whether a `when` key only has meaning for HTTP requests.
pub fn when_key_is_http_only(key: &str) -> bool {
    key.starts_with("request.") || WHEN_KEYS.iter().any(|(k, http)| *k == key && *http)
}

/// An IP address or CIDR, as `ipBlocks` and `source.ip` take them.
pub fn parse_ip_block(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        s.parse::<IpNet>().ok().map(|n| n.trunc())
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// `prefix[NAME]` → `NAME`.
pub fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let inner = key
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    (!inner.is_empty()).then_some(inner)
}
