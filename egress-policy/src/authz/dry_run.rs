//! Istio's shadow engines for `istio.io/dry-run` policies: what they would decide, and the
//! log line that reports it. Never part of the decision.

use egress_core::ctx::{DryRun, ShadowResult};

use super::{Attributes, AuthzAction, AuthzPolicies};

/// The log line of a request's or connection's dry-run decisions, one per shadow engine.
pub fn log_dry_run(dry: &DryRun, host: &str, port: u16) {
    for (engine, r) in dry.results() {
        // "shadow denied" / "shadow allowed", as Envoy's RBAC filter logs it.
        tracing::info!(
            target: "egress::authz",
            engine,
            policy = r.policy.as_deref().unwrap_or("-"),
            rule = r.rule.map_or(-1, |r| r as i64),
            host,
            port,
            "dry-run policy: shadow {} (not enforced)",
            r.decision()
        );
    }
}

impl AuthzPolicies {
    /// What the dry-run policies would decide, each kind as Istio's shadow engine for it:
    /// DENY denies when one matches, ALLOW allows when one matches and denies otherwise.
    /// `None` when no policy is in dry-run (the common case costs one check).
    pub fn dry_run(&self, a: &Attributes<'_>) -> Option<DryRun> {
        if self.dry_deny.is_empty() && self.dry_allow.is_empty() {
            return None;
        }
        let deny = (!self.dry_deny.is_empty()).then(|| {
            match self.dry_deny.first_match(a, AuthzAction::Deny) {
                Some((p, rule)) => ShadowResult {
                    allowed: false,
                    policy: Some(p.name.clone()),
                    rule: Some(rule),
                },
                None => ShadowResult {
                    allowed: true,
                    policy: None,
                    rule: None,
                },
            }
        });
        let allow = self.dry_allow.any_covers(a).then(|| {
            match self.dry_allow.first_match(a, AuthzAction::Allow) {
                Some((p, rule)) => ShadowResult {
                    allowed: true,
                    policy: Some(p.name.clone()),
                    rule: Some(rule),
                },
                None => ShadowResult {
                    allowed: false,
                    policy: None,
                    rule: None,
                },
            }
        });
        Some(DryRun { deny, allow })
    }
}
