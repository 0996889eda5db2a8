//! `AuthzLayer`: DENY and ALLOW `AuthorizationPolicy` evaluation for each request.
//!
//! - Reads: [`Destination`], [`ClientAddr`], [`SourcePrincipal`], [`RequestAuth`].
//!   Inserts: [`AuthzDecision`].
//! - Refuses with `x-egress-denied: rbac-denied`: **403** `RBAC: access denied` (a
//!   `CONNECT` is closed after it). The deciding policy and rule go to the log, not to the
//!   client.

use arc_swap::ArcSwap;

use crate::snapshot::Source;
use bytes::Bytes;
use egress_core::ctx::{
    ClientAddr, Destination, Host, Rejection, RejectionKind, RequestForm, SourcePrincipal,
};
use egress_core::respond::RefuseOr;
use http::{Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use super::{Attributes, AuthzDecision, AuthzPolicies, HttpAttributes};
use crate::identity::RequestAuth;

/// An `X-Forwarded-For` whose trusted entry is not an IP address.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BadForwardedFor;

/// The original client address: with `hops` trusted proxies in front of the gateway, the
/// `hops`-th address from the right of `X-Forwarded-For` (a client cannot push it away by
/// sending its own header, since the trusted proxies append); with none, the peer.
/// `Err` when the chosen entry is not an IP address.
pub fn remote_ip(
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
    hops: usize,
) -> Result<Option<IpAddr>, BadForwardedFor> {
    if hops == 0 {
        return Ok(peer);
    }
    let mut entries: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let v = v.to_str().map_err(|_| BadForwardedFor)?;
        entries.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    if entries.len() < hops {
        return Ok(peer);
    }
    let e = entries[entries.len() - hops];
    e.parse::<IpAddr>().map(Some).map_err(|_| BadForwardedFor)
}

/// What authorization knows of a request, gathered once from its extensions and headers:
/// everything [`Attributes`] borrows from, owned for the duration of one evaluation. The
/// CUSTOM (external authorizer) and the DENY/ALLOW layers read the same facts.
#[derive(Debug)]
pub struct RequestFacts {
    host: String,
    port: u16,
    destination_ip: Option<IpAddr>,
    source_ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
    principal: Option<Arc<str>>,
    http: bool,
}

impl RequestFacts {
    /// Gathers the facts of a request; `Err` for an `X-Forwarded-For` that cannot be read.
    pub fn of<B>(req: &Request<B>, xff_hops: usize) -> Result<Option<Self>, BadForwardedFor> {
        let Some(dst) = req.extensions().get::<Destination>() else {
            return Ok(None);
        };
        let source_ip = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
        let http = dst.form() != RequestForm::Connect;
        let remote_ip = if http {
            remote_ip(req.headers(), source_ip, xff_hops)?
        } else {
            source_ip
        };
        let host = match dst.host() {
            Host::Name(n) => n.to_string(),
            Host::Ip(ip) => ip.to_string(),
        };
        Ok(Some(RequestFacts {
            host,
            port: dst.port(),
            destination_ip: dst.ip(),
            source_ip,
            remote_ip,
            principal: req
                .extensions()
                .get::<SourcePrincipal>()
                .map(|p| p.0.clone()),
            http,
        }))
    }

    /// The attributes of `req` over these facts.
    pub fn attributes<'a, B>(&'a self, req: &'a Request<B>) -> Attributes<'a> {
        let (principal, namespace) = match &self.principal {
            Some(p) => {
                let (p, ns) = Attributes::split_principal(p);
                (Some(p), ns)
            }
            None => (None, None),
        };
        Attributes {
            http: self.http.then(|| HttpAttributes {
                method: req.method().as_str(),
                path: req.uri().path(),
                headers: req.headers(),
                auth: req.extensions().get::<RequestAuth>(),
            }),
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            principal,
            namespace,
            host: &self.host,
            port: self.port,
            destination_ip: self.destination_ip,
            sni: None,
        }
    }
}

/// The 400 for an `X-Forwarded-For` whose trusted entry is not an address.
pub fn bad_xff<RspB: From<Bytes>>() -> Response<RspB> {
    Rejection::new(RejectionKind::Malformed).respond(
        StatusCode::BAD_REQUEST,
        true,
        "egress: the trusted X-Forwarded-For entry is not an IP address\n".into(),
    )
}

/// Evaluates DENY and ALLOW policies from a swappable [`AuthzPolicies`].
#[derive(Clone, Debug)]
pub struct AuthzLayer {
    policies: Source<AuthzPolicies>,
    xff_hops: usize,
}

impl AuthzLayer {
    /// A layer over a swappable policy set; `xff_hops` trusted proxies in front of the
    /// gateway (0: `X-Forwarded-For` is never trusted).
    pub fn new(policies: Arc<ArcSwap<AuthzPolicies>>, xff_hops: usize) -> Self {
        Self {
            policies: Source::Swap(policies),
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
        if policies.deny.is_empty() && policies.allow.is_empty() && policies.audit.is_empty() {
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
        let decision = policies.evaluate(&facts.attributes(&req));
        if !decision.allowed {
            return RefuseOr::refused(denied(&decision, &facts.host, facts.port, !facts.http));
        }
        req.extensions_mut().insert(decision);
        RefuseOr::inner(self.inner.call(req))
    }
}
