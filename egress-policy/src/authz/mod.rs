//! `AuthorizationPolicy` compiled into an immutable [`AuthzPolicies`] set and evaluated as
//! Istio documents: CUSTOM first (see [`ext_authz`](crate::ext_authz)), then DENY, then
//! ALLOW (no ALLOW policy: allow; one matches: allow; else deny). AUDIT never changes the
//! outcome.
//!
//! A request is described once, as [`Attributes`], by whoever sees it (the HTTP layer, the
//! `CONNECT` dispatcher, a passthrough listener). For traffic that is not HTTP (a `CONNECT`
//! tunnel, TLS passthrough, TCP) the HTTP-only fields follow Istio: an ALLOW (or AUDIT,
//! CUSTOM) rule that uses one is dropped, and in a DENY rule the field is ignored, so that a
//! DENY never becomes narrower because the traffic is opaque.

mod attributes;
mod compile;
mod dry_run;
mod facts;
mod index;
pub mod path;

pub use attributes::{Attributes, HttpAttributes, Pattern, remove_matching};
pub use dry_run::log_dry_run;
pub use facts::{BadForwardedFor, RequestFacts, bad_xff, remote_ip};
use index::PolicyList;

use ipnet::IpNet;
#[cfg(feature = "serde")]
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

use crate::diag::{Diagnostic, Diagnostics, Severity};
pub use crate::identity::Identity;
use crate::model::{
    AccessPolicy, AuthzAction, Condition, Config, HttpAuthorizer, Operation, Rule, Source,
    bracketed, parse_ip_block, when_key_is_http_only,
};

pub use egress_core::headers::trim_ows;

fn compile(v: &[String]) -> Vec<Pattern> {
    v.iter().map(|s| Pattern::new(s)).collect()
}

fn any(p: &[Pattern], v: Option<&str>) -> bool {
    v.is_some_and(|v| p.iter().any(|p| p.matches(v)))
}

/// A `hosts` entry: the host pattern and, when written `host:port`, the port.
#[derive(Clone, Debug)]
struct HostPattern {
    host: Pattern,
    port: Option<Option<u16>>,
}

impl HostPattern {
    fn new(s: &str) -> Self {
        // `host:port` (not an IPv6 literal without brackets): the port must match too.
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => HostPattern {
                // `[::1]:443`: the request's host is compared without brackets.
                host: Pattern::new(h.trim_start_matches('[').trim_end_matches(']')),
                port: Some(if p == "*" { None } else { p.parse().ok() }),
            },
            _ => HostPattern {
                host: Pattern::new(s),
                port: None,
            },
        }
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        self.host.matches(host)
            && match self.port {
                None | Some(None) => true,
                Some(Some(p)) => p == port,
            }
    }
}

#[derive(Clone, Debug)]
struct CSource {
    principals: Vec<Pattern>,
    not_principals: Vec<Pattern>,
    request_principals: Vec<Pattern>,
    not_request_principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
    not_namespaces: Vec<Pattern>,
    ip_blocks: Vec<IpNet>,
    not_ip_blocks: Vec<IpNet>,
    remote_ip_blocks: Vec<IpNet>,
    not_remote_ip_blocks: Vec<IpNet>,
}

fn ip_in(nets: &[IpNet], ip: Option<IpAddr>) -> bool {
    ip.is_some_and(|ip| {
        // An IPv4-mapped IPv6 peer is the IPv4 address it carries.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        nets.iter().any(|n| n.contains(&ip))
    })
}

impl CSource {
    fn new(s: &Source) -> Self {
        Self {
            principals: compile(&s.principals),
            not_principals: compile(&s.not_principals),
            request_principals: compile(&s.request_principals),
            not_request_principals: compile(&s.not_request_principals),
            namespaces: compile(&s.namespaces),
            not_namespaces: compile(&s.not_namespaces),
            ip_blocks: s.ip_blocks.clone(),
            not_ip_blocks: s.not_ip_blocks.clone(),
            remote_ip_blocks: s.remote_ip_blocks.clone(),
            not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
        }
    }

    fn http_only(&self) -> bool {
        !self.request_principals.is_empty()
            || !self.not_request_principals.is_empty()
            || !self.remote_ip_blocks.is_empty()
            || !self.not_remote_ip_blocks.is_empty()
    }

    fn matches(&self, a: &Attributes<'_>) -> bool {
        let field = |pos: &[Pattern], neg: &[Pattern], v: Option<&str>| {
            (pos.is_empty() || any(pos, v)) && !any(neg, v)
        };
        let ips = |pos: &[IpNet], neg: &[IpNet], v: Option<IpAddr>| {
            (pos.is_empty() || ip_in(pos, v)) && !ip_in(neg, v)
        };
        let l4 = field(&self.principals, &self.not_principals, a.principal)
            && field(&self.namespaces, &self.not_namespaces, a.namespace)
            && ips(&self.ip_blocks, &self.not_ip_blocks, a.source_ip);
        let Some(h) = &a.http else {
            // Only DENY rules get here with HTTP-only fields: those fields are ignored.
            return l4;
        };
        let rp = h.auth.map(|x| &*x.principal);
        l4 && field(&self.request_principals, &self.not_request_principals, rp)
            && ips(
                &self.remote_ip_blocks,
                &self.not_remote_ip_blocks,
                a.remote_ip,
            )
    }
}

#[derive(Clone, Debug)]
struct COperation {
    hosts: Vec<HostPattern>,
    not_hosts: Vec<HostPattern>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Vec<Pattern>,
    not_methods: Vec<Pattern>,
    paths: Vec<Pattern>,
    not_paths: Vec<Pattern>,
}

impl COperation {
    fn new(o: &Operation) -> Self {
        Self {
            hosts: o.hosts.iter().map(|h| HostPattern::new(h)).collect(),
            not_hosts: o.not_hosts.iter().map(|h| HostPattern::new(h)).collect(),
            ports: o.ports.clone(),
            not_ports: o.not_ports.clone(),
            methods: compile(&o.methods),
            not_methods: compile(&o.not_methods),
            paths: compile(&o.paths),
            not_paths: compile(&o.not_paths),
        }
    }

    fn http_only(&self) -> bool {
        !self.methods.is_empty()
            || !self.not_methods.is_empty()
            || !self.paths.is_empty()
            || !self.not_paths.is_empty()
    }

    fn matches(&self, a: &Attributes<'_>) -> bool {
        let host = |ps: &[HostPattern]| ps.iter().any(|p| p.matches(a.host, a.port));
        let l4 = (self.hosts.is_empty() || host(&self.hosts))
            && !host(&self.not_hosts)
            && (self.ports.is_empty() || self.ports.contains(&a.port))
            && !self.not_ports.contains(&a.port);
        let Some(h) = &a.http else { return l4 };
        let field = |pos: &[Pattern], neg: &[Pattern], v: &str| {
            (pos.is_empty() || any(pos, Some(v))) && !any(neg, Some(v))
        };
        l4 && field(&self.methods, &self.not_methods, h.method)
            && field(&self.paths, &self.not_paths, h.path)
    }
}

#[derive(Clone, Debug)]
enum Key {
    Header(http::HeaderName),
    SourceIp,
    RemoteIp,
    SourcePrincipal,
    SourceNamespace,
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    AuthClaim(Vec<String>),
    DestinationIp,
    DestinationPort,
    Sni,
}

#[derive(Clone, Debug)]
struct CCondition {
    key: Key,
    values: Vec<Pattern>,
    not_values: Vec<Pattern>,
    nets: Vec<IpNet>,
    not_nets: Vec<IpNet>,
}

impl CCondition {
    fn new(c: &Condition) -> Option<Self> {
        let key = match c.key.as_str() {
            "source.ip" => Key::SourceIp,
            "remote.ip" => Key::RemoteIp,
            "source.principal" => Key::SourcePrincipal,
            "source.namespace" => Key::SourceNamespace,
            "request.auth.principal" => Key::AuthPrincipal,
            "request.auth.audiences" => Key::AuthAudiences,
            "request.auth.presenter" => Key::AuthPresenter,
            "destination.ip" => Key::DestinationIp,
            "destination.port" => Key::DestinationPort,
            "connection.sni" => Key::Sni,
            k => {
                if let Some(h) = bracketed(k, "request.headers") {
                    Key::Header(http::HeaderName::from_bytes(h.as_bytes()).ok()?)
                } else {
                    let inner = bracketed(k, "request.auth.claims").or_else(|| {
                        bracketed(k, "experimental.envoy.filters.http.jwt_authn.claims")
                    })?;
                    Key::AuthClaim(inner.split("][").map(str::to_owned).collect())
                }
            }
        };
        let ip = matches!(key, Key::SourceIp | Key::RemoteIp | Key::DestinationIp);
        let nets = |v: &[String]| -> Vec<IpNet> {
            if ip {
                v.iter().filter_map(|s| parse_ip_block(s)).collect()
            } else {
                Vec::new()
            }
        };
        Some(Self {
            nets: nets(&c.values),
            not_nets: nets(&c.not_values),
            values: compile(&c.values),
            not_values: compile(&c.not_values),
            key,
        })
    }

    fn http_only(&self) -> bool {
        matches!(
            self.key,
            Key::Header(_)
                | Key::RemoteIp
                | Key::AuthPrincipal
                | Key::AuthAudiences
                | Key::AuthPresenter
                | Key::AuthClaim(_)
        )
    }

    /// Whether one header line satisfies the condition.
    fn line_matches(&self, v: &[u8]) -> bool {
        let v = trim_ows(v);
        (self.values.is_empty() || self.values.iter().any(|p| p.matches_bytes(v)))
            && !self.not_values.iter().any(|p| p.matches_bytes(v))
    }

    /// `all_lines`: a header sent on several lines satisfies the condition only if every
    /// line does (ALLOW); otherwise if any line does (DENY, CUSTOM, AUDIT). Either way a
    /// client cannot split a value across lines to slip past a policy that one line would
    /// trigger, whichever line the origin reads.
    fn matches(&self, a: &Attributes<'_>, all_lines: bool) -> bool {
        let strs = |v: Option<&str>| {
            (self.values.is_empty() || any(&self.values, v)) && !any(&self.not_values, v)
        };
        let ips = |v: Option<IpAddr>| {
            (self.nets.is_empty() && self.values.is_empty() || ip_in(&self.nets, v))
                && !ip_in(&self.not_nets, v)
        };
        match &self.key {
            Key::SourceIp => ips(a.source_ip),
            Key::DestinationIp => ips(a.destination_ip),
            Key::SourcePrincipal => strs(a.principal),
            Key::SourceNamespace => strs(a.namespace),
            Key::DestinationPort => strs(Some(&a.port.to_string())),
            Key::Sni => strs(a.sni),
            key => {
                // HTTP-only keys; without HTTP only DENY rules get here, and ignore them.
                let Some(h) = &a.http else { return true };
                match key {
                    Key::RemoteIp => ips(a.remote_ip),
                    Key::Header(name) => {
                        let mut lines = h.headers.get_all(name).iter().peekable();
                        if lines.peek().is_none() {
                            return strs(None);
                        }
                        if all_lines {
                            lines.all(|v| self.line_matches(v.as_bytes()))
                        } else {
                            lines.any(|v| self.line_matches(v.as_bytes()))
                        }
                    }
                    Key::AuthPrincipal => strs(h.auth.map(|x| &*x.principal)),
                    Key::AuthPresenter => strs(h.auth.and_then(|x| x.presenter.as_deref())),
                    Key::AuthAudiences => match h.auth {
                        None => strs(None),
                        Some(x) => {
                            (self.values.is_empty()
                                || x.audiences.iter().any(|v| any(&self.values, Some(v))))
                                && !x.audiences.iter().any(|v| any(&self.not_values, Some(v)))
                        }
                    },
                    Key::AuthClaim(path) => {
                        let vals = h.auth.map(|x| x.claim_strings(path)).unwrap_or_default();
                        (self.values.is_empty() || vals.iter().any(|v| any(&self.values, Some(v))))
                            && !vals.iter().any(|v| any(&self.not_values, Some(v)))
                    }
                    _ => false,
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
struct CRule {
    from: Vec<CSource>,
    to: Vec<COperation>,
    when: Vec<CCondition>,
    http_only: bool,
}

impl CRule {
    fn new(r: &Rule) -> Self {
        let from: Vec<CSource> = r.from.iter().map(CSource::new).collect();
        let to: Vec<COperation> = r.to.iter().map(COperation::new).collect();
        let when: Vec<CCondition> = r.when.iter().filter_map(CCondition::new).collect();
        let http_only = from.iter().any(CSource::http_only)
            || to.iter().any(COperation::http_only)
            || when.iter().any(CCondition::http_only)
            || r.when.iter().any(|c| when_key_is_http_only(&c.key));
        Self {
            from,
            to,
            when,
            http_only,
        }
    }

    fn matches(&self, a: &Attributes<'_>, action: AuthzAction) -> bool {
        if a.http.is_none() && self.http_only && action != AuthzAction::Deny {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self
                .when
                .iter()
                .all(|c| c.matches(a, action == AuthzAction::Allow))
    }
}

/// A service a policy is attached to by `targetRefs` (kind `ServiceEntry` or `Service`, as
/// at an Istio waypoint): its hosts and, when listed, its ports.
#[derive(Clone, Debug)]
struct ServiceScope {
    hosts: Vec<Pattern>,
    /// Empty: every port.
    ports: Vec<u16>,
}

impl ServiceScope {
    fn covers(&self, host: &str, port: u16) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port))
            && self.hosts.iter().any(|h| h.matches(host))
    }
}

/// A compiled policy.
#[derive(Clone, Debug)]
struct CPolicy {
    name: Arc<str>,
    provider: Option<Arc<str>>,
    rules: Vec<CRule>,
    /// `Some`: attached to these services, and applies only to requests for them.
    services: Option<Arc<[ServiceScope]>>,
}

impl CPolicy {
    /// Whether the policy applies to this request at all (its services, if it has some).
    fn covers(&self, a: &Attributes<'_>) -> bool {
        self.services
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s.covers(a.host, a.port)))
    }

    /// The index of the first matching rule.
    fn matching_rule(&self, a: &Attributes<'_>, action: AuthzAction) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(a, action))
    }
}

/// The outcome of DENY and ALLOW evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct AuthzDecision {
    /// Allowed or not.
    pub allowed: bool,
    /// The policy that decided (`ns/name`), if one did.
    pub policy: Option<Arc<str>>,
    /// The index of its matching rule.
    pub rule: Option<usize>,
    /// The action of that policy.
    pub action: Option<AuthzAction>,
}

/// The `AuthorizationPolicy` resources that apply to this gateway, compiled. Immutable:
/// a reload builds a new set and swaps it in whole.
#[derive(Clone, Debug, Default)]
pub struct AuthzPolicies {
    custom: PolicyList,
    deny: PolicyList,
    allow: PolicyList,
    audit: PolicyList,
    /// Dry-run DENY and ALLOW policies: Istio's shadow engines, reported, never enforced.
    dry_deny: PolicyList,
    dry_allow: PolicyList,
    providers: Vec<(Arc<str>, Arc<HttpAuthorizer>)>,
    /// `headersToUpstreamOnAllow` of every provider a CUSTOM policy in force uses: what
    /// the authorizer alone may set upstream, so never taken from the client.
    authorizer_headers: Arc<[Pattern]>,
    summary: Vec<PolicySummary>,
}

/// One policy, as `/config_dump` shows it.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct PolicySummary {
    /// `ns/name`.
    pub name: String,
    /// The action.
    pub action: AuthzAction,
    /// Whether it applies to this gateway, and why not.
    pub applies: Result<usize, String>,
    /// Evaluated in shadow mode only (`istio.io/dry-run`).
    #[cfg_attr(feature = "serde", serde(rename = "dryRun"))]
    pub dry_run: bool,
}

impl AuthzPolicies {
    /// Removes from a client's request every header that an authorizer in force may set
    /// upstream (`headersToUpstreamOnAllow`): the upstream sees only the authorizer's values.
    pub fn remove_authorizer_headers(&self, headers: &mut http::HeaderMap) {
        remove_matching(&self.authorizer_headers, headers);
    }

    /// The patterns [`AuthzPolicies::remove_authorizer_headers`] removes.
    pub fn authorizer_headers(&self) -> Arc<[Pattern]> {
        self.authorizer_headers.clone()
    }

    /// Whether no DENY, ALLOW or AUDIT policy applies (the DENY/ALLOW layer then does nothing).
    pub fn deny_allow_audit_is_empty(&self) -> bool {
        self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && self.dry_deny.is_empty()
            && self.dry_allow.is_empty()
    }

    /// Whether no CUSTOM policy applies.
    pub fn custom_is_empty(&self) -> bool {
        self.custom.is_empty()
    }

    /// The configuration of a CUSTOM provider.
    pub fn provider(&self, name: &str) -> Option<Arc<HttpAuthorizer>> {
        self.providers
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, p)| p.clone())
    }

    /// Whether no policy applies (the layer then costs nothing).
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty() && self.deny_allow_audit_is_empty()
    }

    /// The policies and whether each applies.
    pub fn summary(&self) -> &[PolicySummary] {
        &self.summary
    }

    /// The CUSTOM provider to ask, and the policy that asks, when a CUSTOM policy matches.
    pub fn custom_match(&self, a: &Attributes<'_>) -> Option<(&Arc<str>, &Arc<str>)> {
        let (p, _) = self.custom.first_match(a, AuthzAction::Custom)?;
        p.provider.as_ref().map(|prov| (prov, &p.name))
    }

    /// DENY, then ALLOW. AUDIT matches are logged.
    pub fn evaluate(&self, a: &Attributes<'_>) -> AuthzDecision {
        for p in self.audit.policies.iter().filter(|p| p.covers(a)) {
            if let Some(rule) = p.matching_rule(a, AuthzAction::Audit) {
                tracing::info!(target: "egress::audit", policy = %p.name, rule, host = a.host, port = a.port, "AUDIT policy matched");
            }
        }
        if let Some((p, rule)) = self.deny.first_match(a, AuthzAction::Deny) {
            {
                return AuthzDecision {
                    allowed: false,
                    policy: Some(p.name.clone()),
                    rule: Some(rule),
                    action: Some(AuthzAction::Deny),
                };
            }
        }
        // No ALLOW policy for this request (none at all, or only ones attached to other
        // services): allowed, as at an Istio proxy where none is configured.
        if !self.allow.any_covers(a) {
            return AuthzDecision {
                allowed: true,
                policy: None,
                rule: None,
                action: None,
            };
        }
        if let Some((p, rule)) = self.allow.first_match(a, AuthzAction::Allow) {
            {
                return AuthzDecision {
                    allowed: true,
                    policy: Some(p.name.clone()),
                    rule: Some(rule),
                    action: Some(AuthzAction::Allow),
                };
            }
        }
        AuthzDecision {
            allowed: false,
            policy: None,
            rule: None,
            action: Some(AuthzAction::Allow),
        }
    }
}

#[cfg(test)]
mod tests;
