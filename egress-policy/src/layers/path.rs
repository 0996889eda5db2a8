//! `PathNormalizeLayer`: one path for everything below it (see [`crate::authz::path`]);
//! what is authorised is what goes upstream.

use bytes::Bytes;
use egress_core::ctx::{Rejection, RejectionKind};
use egress_core::respond::RefuseOr;
use http::{Method, Request, Response, StatusCode, Uri};
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::authz::path::{Normalization, normalize_with};
use crate::snapshot::{Shared, Source};

/// Normalises each request's path before anything reads it; refuses, with **400** and a
/// closed connection, a path that cannot be normalised unambiguously.
#[derive(Clone, Debug, Default)]
pub struct PathNormalizeLayer {
    mode: Source<Normalization>,
    params: bool,
}

impl PathNormalizeLayer {
    /// A layer normalising with `mode`.
    pub fn new(mode: Normalization) -> Self {
        Self::from_shared(Shared::new(mode))
    }

    /// A layer whose mode can be swapped at run time (a reload of MeshConfig).
    pub fn from_shared(mode: Shared<Normalization>) -> Self {
        Self {
            mode: Source::Own(mode),
            params: false,
        }
    }

    /// A layer normalising with the mode of each request's
    /// [`Policy`](crate::snapshot::Policy).
    pub fn from_snapshot() -> Self {
        Self {
            mode: Source::Snapshot(|p| &p.normalization),
            params: false,
        }
    }

    /// Lets paths with parameters (`/a;v=1/b`) through, for origins that use them: the
    /// policy then sees the `;` and what follows it as part of the segment.
    pub fn allow_path_parameters(mut self, allow: bool) -> Self {
        self.params = allow;
        self
    }
}

impl<S> Layer<S> for PathNormalizeLayer {
    type Service = PathNormalize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PathNormalize {
            inner,
            mode: self.mode.clone(),
            params: self.params,
        }
    }
}

/// The service of [`PathNormalizeLayer`].
#[derive(Clone, Debug)]
pub struct PathNormalize<S> {
    inner: S,
    mode: Source<Normalization>,
    params: bool,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for PathNormalize<S>
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
        if req.method() == Method::CONNECT {
            return RefuseOr::inner(self.inner.call(req));
        }
        let Some(mode) = self.mode.load(&req) else {
            return RefuseOr::refused(crate::snapshot::missing());
        };
        let mode = *mode;
        match normalize_with(req.uri().path(), mode, self.params) {
            Ok(None) => RefuseOr::inner(self.inner.call(req)),
            Ok(Some(path)) => {
                let pq = match req.uri().query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                let mut parts = req.uri().clone().into_parts();
                match pq.parse() {
                    Ok(pq) => parts.path_and_query = Some(pq),
                    Err(_) => {
                        return RefuseOr::refused(refuse(
                            "the normalised path is not a valid URI path",
                        ));
                    }
                }
                match Uri::from_parts(parts) {
                    Ok(uri) => *req.uri_mut() = uri,
                    Err(_) => {
                        return RefuseOr::refused(refuse(
                            "the normalised path is not a valid URI path",
                        ));
                    }
                }
                RefuseOr::inner(self.inner.call(req))
            }
            Err(e) => RefuseOr::refused(refuse(e.0)),
        }
    }
}

fn refuse<RspB: From<Bytes>>(why: &str) -> Response<RspB> {
    Rejection::new(RejectionKind::Malformed).respond(
        StatusCode::BAD_REQUEST,
        true,
        format!("egress: {why}\n"),
    )
}
