//! `JwtLayer`: validates JWTs on HTTP requests (see the module docs of [`crate::jwt`]).
//!
//! - Reads: [`Destination`] (for the `realm`). Inserts: [`RequestAuth`](crate::identity::RequestAuth).
//! - Refuses with `x-egress-denied: jwt-invalid`: **401** for every token that fails
//!   (issuer, audience, key, expiry, signature). `CONNECT` tunnels carry no HTTP request
//!   to authenticate.

use crate::snapshot::{Shared, Source};
use bytes::Bytes;
use egress_core::ctx::{Destination, Rejection, RejectionKind, RequestForm};
use egress_core::respond::RefuseOr;
use http::{HeaderValue, Request, Response, StatusCode, header};
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::jwt::{JwksStore, JwtPolicy};

/// Validates JWTs with a swappable [`JwtPolicy`] and the keys of a [`JwksStore`].
#[derive(Clone, Debug)]
pub struct JwtLayer {
    policy: Source<JwtPolicy>,
    store: JwksStore,
}

impl JwtLayer {
    /// A layer over a swappable policy.
    pub fn new(policy: Shared<JwtPolicy>, store: JwksStore) -> Self {
        Self {
            policy: Source::Own(policy),
            store,
        }
    }

    /// A layer reading the rules of each request's [`Policy`](crate::snapshot::Policy).
    pub fn from_snapshot(store: JwksStore) -> Self {
        Self {
            policy: Source::Snapshot(|p| &p.jwt),
            store,
        }
    }
}

impl<S> Layer<S> for JwtLayer {
    type Service = JwtService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtService {
            inner,
            policy: self.policy.clone(),
            store: self.store.clone(),
        }
    }
}

/// The service of [`JwtLayer`].
#[derive(Clone, Debug)]
pub struct JwtService<S> {
    inner: S,
    policy: Source<JwtPolicy>,
    store: JwksStore,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for JwtService<S>
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
        let Some(policy) = self.policy.load(&req) else {
            return RefuseOr::refused(crate::snapshot::missing());
        };
        if policy.is_empty() {
            return RefuseOr::inner(self.inner.call(req));
        }
        let connect = req
            .extensions()
            .get::<Destination>()
            .is_some_and(|d| d.form() == RequestForm::Connect);
        if connect {
            return RefuseOr::inner(self.inner.call(req));
        }
        // Headers the gateway writes from a token are never taken from the client.
        for h in policy.output_headers() {
            req.headers_mut().remove(h);
        }
        match policy.authenticate(req.headers(), req.uri().query(), &self.store) {
            Ok(None) => RefuseOr::inner(self.inner.call(req)),
            Ok(Some(a)) => {
                a.apply(req.headers_mut());
                req.extensions_mut().insert(a.auth);
                RefuseOr::inner(self.inner.call(req))
            }
            Err(f) => {
                let realm = match req.extensions().get::<Destination>() {
                    Some(d) => format!(
                        "{}://{}{}",
                        d.scheme().as_str(),
                        d.host_header().to_str().unwrap_or(""),
                        req.uri().path()
                    ),
                    None => req.uri().path().to_owned(),
                };
                let realm: String = realm.chars().filter(|c| *c != '"' && *c != '\\').collect();
                let mut rsp: Response<RspB> = Rejection::new(RejectionKind::JwtInvalid).respond(
                    f.status,
                    false,
                    format!("{}\n", f.message),
                );
                if f.status == StatusCode::UNAUTHORIZED
                    && let Ok(v) = HeaderValue::from_str(&format!(
                        "Bearer realm=\"{realm}\", error=\"invalid_token\""
                    ))
                {
                    rsp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                RefuseOr::refused(rsp)
            }
        }
    }
}
