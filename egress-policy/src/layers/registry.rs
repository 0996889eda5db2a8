//! `RegistryOnlyLayer`: refuses destinations that are not registered under `REGISTRY_ONLY`.
//!
//! - Reads: [`Destination`]. Inserts: [`UpstreamPlan`] (registered) or [`Passthrough`]
//!   (`ALLOW_ANY`, not registered).
//! - Refuses with `x-egress-denied`: `registry-only` (**502** for HTTP, as Istio's
//!   BlackHoleCluster answers; **403** for `CONNECT`), `tunnel-not-allowed` (**403**: a
//!   `CONNECT` to a registered port whose protocol is HTTP, which must be proxied as HTTP to
//!   be checked), `missing-destination` (**500**).
//! - The upstream never sees a byte of a refused request.

use crate::snapshot::{Shared, Source};
use bytes::Bytes;
use egress_core::ctx::{
    Destination, Passthrough, Rejection, RejectionKind, RequestForm, TelemetrySlot,
    TunnelInspection, UpstreamPlan,
};
use egress_core::respond::RefuseOr;
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::Registry;
use crate::model::Protocol;
use crate::registry::Admission;

/// Checks each request's destination against a [`Registry`] that can be swapped at run time.
#[derive(Clone, Debug)]
pub struct RegistryOnlyLayer {
    registry: Source<Registry>,
}

impl RegistryOnlyLayer {
    /// A layer over a fixed registry.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self::from_shared(Shared::from_arc(registry))
    }

    /// A layer over a swappable registry: `store` a new one to reload, atomically.
    pub fn from_shared(registry: Shared<Registry>) -> Self {
        Self {
            registry: Source::Own(registry),
        }
    }

    /// A layer reading the registry of each request's [`Policy`](crate::snapshot::Policy).
    pub fn from_snapshot() -> Self {
        Self {
            registry: Source::Snapshot(|p| &p.registry),
        }
    }
}

impl<S> Layer<S> for RegistryOnlyLayer {
    type Service = RegistryOnly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RegistryOnly {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// The service of [`RegistryOnlyLayer`].
#[derive(Clone, Debug)]
pub struct RegistryOnly<S> {
    inner: S,
    registry: Source<Registry>,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for RegistryOnly<S>
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
        let Some(dst) = req.extensions().get::<Destination>() else {
            let why = "egress: no destination was determined for this request\n".to_owned();
            return RefuseOr::refused(Rejection::new(RejectionKind::MissingDestination).respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                why,
            ));
        };
        // A route already chose a destination, checked against this registry when the
        // routes were compiled.
        if req.extensions().get::<UpstreamPlan>().is_some() {
            return RefuseOr::inner(self.inner.call(req));
        }
        let Some(registry) = self.registry.load(&req) else {
            return RefuseOr::refused(crate::snapshot::missing());
        };
        let connect = dst.form() == RequestForm::Connect;
        match registry.admit(dst) {
            Ok(Admission::Registered(found)) => {
                let plan = found.plan.clone();
                if connect {
                    let tls = matches!(found.port.protocol, Protocol::Https | Protocol::Tls);
                    req.extensions_mut().insert(if tls {
                        TunnelInspection::Tls
                    } else {
                        TunnelInspection::Opaque
                    });
                }
                if let Some(slot) = req.extensions().get::<Arc<TelemetrySlot>>() {
                    slot.set_service(found.labels.0.clone(), found.labels.1.clone());
                    slot.set_cluster(found.port.number, None);
                }
                req.extensions_mut().insert(plan);
                RefuseOr::inner(self.inner.call(req))
            }
            Ok(Admission::Passthrough) => {
                req.extensions_mut().insert(TunnelInspection::Opaque);
                if let Some(slot) = req.extensions().get::<Arc<TelemetrySlot>>() {
                    let p: Arc<str> = Arc::from("PassthroughCluster");
                    slot.set_service(p.clone(), p);
                }
                req.extensions_mut().insert(Passthrough);
                RefuseOr::inner(self.inner.call(req))
            }
            Err(refusal) => RefuseOr::refused(refusal.respond()),
        }
    }
}
