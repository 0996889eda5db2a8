//! `AuthzLayer`: DENY and ALLOW `AuthorizationPolicy` evaluation for each request.
//!
//! - Reads: [`Destination`](egress_core::ctx::Destination), [`ClientAddr`](egress_core::ctx::ClientAddr), [`SourcePrincipal`](egress_core::ctx::SourcePrincipal), [`RequestAuth`](crate::identity::RequestAuth).
//!   Inserts: [`AuthzDecision`].
//! - Refuses with `x-egress-denied: rbac-denied`: **403** `RBAC: access denied` (a
//!   `CONNECT` is closed after it). The deciding policy and rule go to the log, not to the
//!   client.
//! - Dry-run policies (`istio.io/dry-run`) are evaluated beside the enforced ones: their
//!   would-be decisions are logged and reported to the
//!   [`TelemetrySlot`] (metric, access log), never enforced.

use bytes::Bytes;
use egress_core::ctx::{Rejection, RejectionKind, TelemetrySlot};
use egress_core::respond::RefuseOr;
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::authz::{AuthzDecision, AuthzPolicies, BadForwardedFor, RequestFacts, bad_xff};
use crate::snapshot::{Shared, Source};
/// Evaluates DENY and ALLOW policies from a swappable [`AuthzPolicies`].
#[derive(Clone, Debug)]
pub struct AuthzLayer {
    policies: Source<AuthzPolicies>,
    xff_hops: usize,
}

impl AuthzLayer {
    /// A layer over a swappable policy set; `xff_hops` trusted proxies in front of the
    /// gateway (0: `X-Forwarded-For` is never trusted).
    pub fn new(policies: Shared<AuthzPolicies>, xff_hops: usize) -> Self {
        Self {
            policies: Source::Own(policies),
            xff_hops,
        }
    }

    /// A layer reading the policies of each request's
    /// [`Policy`](crate::snapshot::Policy).
    pub fn from_snapshot(xff_hops: usize) -> Self {
        Self {
            policies: Source::Snapshot(|p| &p.authz),
            xff_hops,
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = AuthzService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthzService {
            inner,
            policies: self.policies.clone(),
            xff_hops: self.xff_hops,
        }
    }
}

/// The service of [`AuthzLayer`].
#[derive(Clone, Debug)]
pub struct AuthzService<S> {
    inner: S,
    policies: Source<AuthzPolicies>,
    xff_hops: usize,
}

/// The 403 of a denial, logged with the deciding policy.
pub(crate) fn denied<RspB: From<Bytes>>(
    decision: &AuthzDecision,
    host: &str,
    port: u16,
    connect: bool,
) -> Response<RspB> {
    tracing::info!(
        policy = decision.policy.as_deref().unwrap_or("-"),
        rule = decision.rule.map_or(-1, |r| r as i64),
        action = decision.action.map_or("-", |a| a.as_str()),
        host,
        port,
        "authorization denied"
    );
    Rejection::new(RejectionKind::RbacDenied).respond(
        StatusCode::FORBIDDEN,
        connect,
        "RBAC: access denied\n".into(),
    )
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for AuthzService<S>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
    RspB: From<Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RefuseOr<S::Future, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let Some(policies) = self.policies.load(&req) else {
            return RefuseOr::refused(crate::snapshot::missing());
        };
        if policies.deny_allow_audit_is_empty() {
            return RefuseOr::inner(self.inner.call(req));
        }
        let facts = match RequestFacts::of(&req, self.xff_hops) {
            Ok(Some(f)) => f,
            Ok(None) => {
                // No destination: a stack assembled without DestinationLayer. Fail closed.
                let d = AuthzDecision {
                    allowed: false,
                    policy: None,
                    rule: None,
                    action: None,
                };
                return RefuseOr::refused(denied(&d, "-", 0, true));
            }
            Err(BadForwardedFor) => return RefuseOr::refused(bad_xff()),
        };
        let attributes = facts.attributes(&req);
        if let Some(dry) = policies.dry_run(&attributes) {
            crate::authz::log_dry_run(&dry, &facts.host, facts.port);
            if let Some(slot) = req.extensions().get::<Arc<TelemetrySlot>>() {
                slot.set_dry_run(dry);
            }
        }
        let decision = policies.evaluate(&attributes);
        if !decision.allowed {
            return RefuseOr::refused(denied(&decision, &facts.host, facts.port, !facts.http));
        }
        req.extensions_mut().insert(decision);
        RefuseOr::inner(self.inner.call(req))
    }
}
