//! One configuration snapshot per request.
//!
//! The request layers each decide with a part of the compiled configuration: the registry,
//! the routes, the authorization policies, the JWT rules, the path normalisation. Swapped
//! one after another on a reload, a request could meet new routes with the old registry or
//! new policies with old routes. A [`Policy`] holds all of them, compiled together; a reload
//! swaps the whole of it at once, and [`SnapshotLayer`] loads it once per request into the
//! request's extensions, where every layer built with [`Source::Snapshot`] reads its part.
//! A request that started before a swap finishes wholly on the old policy.
//!
//! A layer used on its own (an application's client, a test) can still be given its part
//! directly ([`Source::Own`]), swappable by itself. Where the policy comes from is a
//! [`PolicySource`]: the gateway's [`PolicyStore`], or an embedder's own.

pub use crate::shared::Shared;
use http::Request;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::Registry;
use crate::authz::AuthzPolicies;
use crate::authz::path::Normalization;
use crate::jwt::JwtPolicy;
use crate::model::Config;
use crate::routes::RouteTable;

/// Everything the request layers decide with, compiled together and swapped as one.
#[derive(Debug)]
pub struct Policy {
    /// `ServiceEntry` registry and outbound policy.
    pub registry: Arc<Registry>,
    /// `VirtualService` routes.
    pub routes: Arc<RouteTable>,
    /// `AuthorizationPolicy` (CUSTOM, DENY, ALLOW, AUDIT).
    pub authz: Arc<AuthzPolicies>,
    /// `RequestAuthentication`.
    pub jwt: Arc<JwtPolicy>,
    /// Path normalisation.
    pub normalization: Normalization,
    /// The configuration this was compiled from, as read: what a dump of the policy in
    /// force shows, so that it never pairs one configuration's resources with another's
    /// decisions.
    pub config: Arc<Config>,
    /// The warnings its compile found (an error would have failed it), for the same dump.
    pub warnings: Vec<String>,
}

/// The gateway's store of its [`Policy`]: a reload compiles a new one and stores it.
pub type PolicyStore = Shared<Policy>;

/// Where [`SnapshotLayer`] gets the policy for each request. [`PolicyStore`] is the usual
/// one; an embedder with its own configuration system (a control plane client, a database)
/// implements this to hand out its latest compiled [`Policy`].
pub trait PolicySource: Send + Sync + 'static {
    /// The policy a request that starts now is decided with.
    fn current(&self) -> Arc<Policy>;
}

impl PolicySource for Shared<Policy> {
    #[inline]
    fn current(&self) -> Arc<Policy> {
        self.load()
    }
}

/// Where a layer finds its part of the configuration.
pub enum Source<T: 'static> {
    /// Its own shared value.
    Own(Shared<T>),
    /// The request's [`Policy`] snapshot (inserted by [`SnapshotLayer`]), through this
    /// projection. A request without a snapshot is refused by the layer (fail closed).
    Snapshot(fn(&Policy) -> &T),
}

impl<T: Default> Default for Source<T> {
    fn default() -> Self {
        Source::fixed(T::default())
    }
}

impl<T> Clone for Source<T> {
    fn clone(&self) -> Self {
        match self {
            Source::Own(s) => Source::Own(s.clone()),
            Source::Snapshot(f) => Source::Snapshot(*f),
        }
    }
}

impl<T> std::fmt::Debug for Source<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Own(_) => f.write_str("Source::Own"),
            Source::Snapshot(_) => f.write_str("Source::Snapshot"),
        }
    }
}

/// A loaded part of the configuration, kept alive for as long as the layer needs it.
pub struct Loaded<T: 'static>(LoadedInner<T>);

enum LoadedInner<T: 'static> {
    Own(Arc<T>),
    Snapshot(Arc<Policy>, fn(&Policy) -> &T),
}

impl<T> std::ops::Deref for Loaded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        match &self.0 {
            LoadedInner::Own(v) => v,
            LoadedInner::Snapshot(p, f) => f(p),
        }
    }
}

impl<T> Source<T> {
    /// A value of the layer's own, which can be swapped by itself.
    pub fn fixed(value: T) -> Self {
        Source::Own(Shared::new(value))
    }

    /// This request's part: `None` only for a snapshot source and a request that carries no
    /// snapshot (a stack assembled without [`SnapshotLayer`]).
    #[inline]
    pub fn load<B>(&self, req: &Request<B>) -> Option<Loaded<T>> {
        match self {
            Source::Own(s) => Some(Loaded(LoadedInner::Own(s.load()))),
            Source::Snapshot(f) => snapshot_of(req).map(|p| Loaded(LoadedInner::Snapshot(p, *f))),
        }
    }
}

/// The refusal of a layer that found no snapshot in the request: 500, fail closed.
pub fn missing<B: From<bytes::Bytes>>() -> http::Response<B> {
    egress_core::ctx::Rejection::new(egress_core::ctx::RejectionKind::MissingPolicy).respond(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        false,
        "egress: no configuration snapshot was loaded for this request\n".to_owned(),
    )
}

/// The snapshot a request carries.
#[inline]
pub fn snapshot_of<B>(req: &Request<B>) -> Option<Arc<Policy>> {
    req.extensions().get::<Arc<Policy>>().cloned()
}

/// Loads the current [`Policy`] once per request into its extensions.
#[derive(Clone)]
pub struct SnapshotLayer {
    source: Arc<dyn PolicySource>,
}

impl std::fmt::Debug for SnapshotLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotLayer").finish_non_exhaustive()
    }
}

impl SnapshotLayer {
    /// A layer taking each request's policy from this source (a [`PolicyStore`], or an
    /// embedder's own [`PolicySource`]).
    pub fn new(source: impl PolicySource) -> Self {
        Self {
            source: Arc::new(source),
        }
    }
}

impl<S> Layer<S> for SnapshotLayer {
    type Service = Snapshot<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Snapshot {
            inner,
            source: self.source.clone(),
        }
    }
}

/// The service of [`SnapshotLayer`].
#[derive(Clone)]
pub struct Snapshot<S> {
    inner: S,
    source: Arc<dyn PolicySource>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Snapshot<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for Snapshot<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.source.current());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OutboundPolicy;
    use tower::{ServiceExt, service_fn};

    fn policy(outbound: OutboundPolicy) -> Policy {
        let set = crate::model::Config::default();
        let (registry, _) = Registry::compile(&set, Some(outbound)).unwrap();
        Policy {
            registry: Arc::new(registry),
            routes: Arc::default(),
            authz: Arc::default(),
            jwt: Arc::default(),
            normalization: Normalization::default(),
            config: Arc::new(set),
            warnings: Vec::new(),
        }
    }

    /// A reload in the middle of a request: every part the request reads afterwards is
    /// still the snapshot it started with; the next request sees the new one.
    #[tokio::test]
    async fn a_request_finishes_on_the_snapshot_it_started_with() {
        let swap = PolicyStore::new(policy(OutboundPolicy::RegistryOnly));
        let registry: Source<Registry> = Source::Snapshot(|p| &p.registry);
        let norm: Source<Normalization> = Source::Snapshot(|p| &p.normalization);
        let reload = swap.clone();
        let svc = SnapshotLayer::new(swap.clone()).layer(service_fn(move |req: Request<()>| {
            let (registry, norm, reload) = (registry.clone(), norm.clone(), reload.clone());
            async move {
                let before = registry.load(&req).unwrap().policy();
                let mut next = policy(OutboundPolicy::AllowAny);
                next.normalization = Normalization::None;
                reload.store(next);
                let after = registry.load(&req).unwrap().policy();
                let mode = *norm.load(&req).unwrap();
                Ok::<_, std::convert::Infallible>((before, after, mode))
            }
        }));
        let (before, after, mode) = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            (before, after),
            (OutboundPolicy::RegistryOnly, OutboundPolicy::RegistryOnly)
        );
        assert_eq!(mode, Normalization::DecodeAndMergeSlashes);
        let (next, _, mode) = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            (next, mode),
            (OutboundPolicy::AllowAny, Normalization::None)
        );
        // A snapshot source without a snapshot refuses rather than guesses.
        let no_snapshot: Source<Registry> = Source::Snapshot(|p| &p.registry);
        assert!(no_snapshot.load(&Request::new(())).is_none());
    }
}
