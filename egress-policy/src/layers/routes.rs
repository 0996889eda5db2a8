//! `RouteLayer`: applies `VirtualService` HTTP routes.
//!
//! - Reads: [`Destination`]. Inserts: [`RouteDecision`] and the chosen destination's
//!   [`UpstreamPlan`](egress_core::ctx::UpstreamPlan) (which the registry check then accepts as decided), and replaces the
//!   upstream `Host` when the route rewrites the authority.
//! - Answers on its own: `directResponse`, `redirect`, and **404** `x-egress-denied:
//!   no-route` when a `VirtualService` covers the host but no route matches.
//! - Applies `rewrite`, `headers` (request and response, route and destination level) and
//!   `timeout` (**504** `x-egress-error: upstream-timeout`).
//! - `CONNECT` requests pass untouched: HTTP routes do not apply to tunnels.

use crate::snapshot::{Shared, Source};
use bytes::Bytes;
use egress_core::ctx::{
    Destination, MirrorTarget, Mirrors, Rejection, RejectionKind, RequestForm, RouteDecision,
    TelemetrySlot,
};
use egress_core::error::{BoxError, UpstreamError, UpstreamErrorKind};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, header};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::model::{HeaderOps, Redirect};
use crate::routes::{Action, CompiledRoute, RouteTable};

/// Routes requests with a [`RouteTable`] that can be swapped at run time.
#[derive(Clone, Debug)]
pub struct RouteLayer {
    table: Source<RouteTable>,
}

impl RouteLayer {
    /// A layer over a swappable table.
    pub fn from_shared(table: Shared<RouteTable>) -> Self {
        Self {
            table: Source::Own(table),
        }
    }

    /// A layer reading the routes of each request's [`Policy`](crate::snapshot::Policy).
    pub fn from_snapshot() -> Self {
        Self {
            table: Source::Snapshot(|p| &p.routes),
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Routing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Routing {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service of [`RouteLayer`].
#[derive(Clone, Debug)]
pub struct Routing<S> {
    inner: S,
    table: Source<RouteTable>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, RspB> Service<Request<ReqB>> for Routing<S>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RspB: From<Bytes> + Send + 'static,
{
    type Response = Response<RspB>;
    type Error = BoxError;
    // Boxed only for requests a VirtualService handles: their response needs header
    // operations and a timeout around the inner future.
    type Future = RouteFuture<S::Future, RspB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let Some(table) = self.table.load(&req) else {
            return RouteFuture::Ready {
                response: Some(crate::snapshot::missing()),
            };
        };
        let Some(dst) = req.extensions().get::<Destination>() else {
            return RouteFuture::Passthrough {
                future: self.inner.call(req),
            };
        };
        if dst.form() == RequestForm::Connect {
            route_tunnel(&table, &mut req);
            return RouteFuture::Passthrough {
                future: self.inner.call(req),
            };
        }
        if table.is_empty() {
            return RouteFuture::Passthrough {
                future: self.inner.call(req),
            };
        }
        let (route, matched) = match lookup(&table, dst, &req) {
            Ok(Some(found)) => found,
            Ok(None) => {
                return RouteFuture::Passthrough {
                    future: self.inner.call(req),
                };
            }
            Err(rsp) => {
                return RouteFuture::Ready {
                    response: Some(rsp),
                };
            }
        };
        if let Some(rsp) = abort(route, &table) {
            return RouteFuture::Ready {
                response: Some(rsp),
            };
        }
        let delay = route
            .fault
            .delay
            .filter(|(_, pct)| table.sample(*pct))
            .map(|(d, _)| d);
        match &route.action {
            Action::Direct(d) => {
                let mut rsp =
                    Response::new(RspB::from(Bytes::from(d.body.clone().unwrap_or_default())));
                *rsp.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
                rsp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                apply(rsp.headers_mut(), &route.headers.response);
                RouteFuture::Ready {
                    response: Some(rsp),
                }
            }
            Action::Redirect(rd) => {
                let mut rsp = redirect(rd, dst, &req);
                apply(rsp.headers_mut(), &route.headers.response);
                RouteFuture::Ready {
                    response: Some(rsp),
                }
            }
            Action::Route {
                destinations,
                total,
            } => forward(
                &mut self.inner,
                &table,
                req,
                Chosen {
                    route,
                    matched,
                    destinations,
                    total: *total,
                    delay,
                },
            ),
        }
    }
}

/// A tunnel follows the `tcp` route of its host and port, if one exists: the route's
/// destination is dialled, opaque. Else the `tls` route whose `sniHosts` cover the host: the
/// tunnel must then carry a ClientHello naming that host (the name the route matched), and
/// goes to the route's destination.
fn route_tunnel<B>(table: &RouteTable, req: &mut Request<B>) {
    let Some(dst) = req.extensions().get::<Destination>() else {
        return;
    };
    let host = dst.host().to_string();
    let (found, inspection) = match table.tcp_route(&host, dst.port()) {
        Some(found) => (found, egress_core::ctx::TunnelInspection::Opaque),
        None => match table.tls_route(&host, dst.port()) {
            Some(found) => (found, egress_core::ctx::TunnelInspection::Tls),
            None => return,
        },
    };
    let (to_host, port, plan) = found;
    let requested = dst.host().clone();
    let routed = Destination::new(
        egress_core::ctx::Host::Name(to_host),
        port,
        dst.scheme(),
        RequestForm::Connect,
    );
    let ext = req.extensions_mut();
    ext.insert(routed);
    ext.insert(plan);
    ext.insert(inspection);
    if inspection == egress_core::ctx::TunnelInspection::Tls {
        ext.insert(egress_core::ctx::TunnelAuthority(requested));
    }
}

/// The route of a request: `Ok(None)` when no `VirtualService` covers its host, an answer
/// when one does but no route matches (404) or the request is ambiguous to the match (400).
fn lookup<'t, B, RspB: From<Bytes>>(
    table: &'t RouteTable,
    dst: &Destination,
    req: &Request<B>,
) -> Result<Option<(&'t CompiledRoute, Option<usize>)>, Response<RspB>> {
    // Borrowed, not copied: most requests of a gateway with routes are for other hosts.
    let ip_host;
    let host: &str = match dst.host() {
        egress_core::ctx::Host::Name(n) => n,
        egress_core::ctx::Host::Ip(_) => {
            ip_host = dst.host().to_string();
            &ip_host
        }
    };
    let authority = dst.host_header().to_str().unwrap_or("");
    // On a Gateway server, `match.port` is the server's port, whatever `Host` says.
    let port = req
        .extensions()
        .get::<crate::routes::ListenerPort>()
        .map_or(dst.port(), |p| p.0);
    let found = match table.route_checked(host, port, dst.scheme().as_str(), authority, req) {
        Ok(found) => found,
        Err(name) => {
            let why = format!(
                "egress: malformed request: header {name:?} is sent on several lines that a route reads differently\n"
            );
            return Err(Rejection::new(RejectionKind::Malformed).respond(
                StatusCode::BAD_REQUEST,
                true,
                why,
            ));
        }
    };
    let Some(found) = found else {
        return Ok(None);
    };
    let Some((route, matched)) = found else {
        let why = format!(
            "egress: no route of the VirtualService for {host} matches {} {}\n",
            req.method(),
            req.uri().path()
        );
        return Err(Rejection::new(RejectionKind::NoRoute).respond(
            StatusCode::NOT_FOUND,
            false,
            why,
        ));
    };
    Ok(Some((route, matched)))
}

/// The route's fault abort, when this request draws it.
fn abort<RspB: From<Bytes>>(route: &CompiledRoute, table: &RouteTable) -> Option<Response<RspB>> {
    if let Some((status, pct)) = route.fault.abort
        && table.sample(pct)
    {
        let mut rsp = Response::new(RspB::from(Bytes::from_static(b"fault filter abort\n")));
        *rsp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        rsp.headers_mut()
            .insert("x-egress-fault", HeaderValue::from_static("abort"));
        rsp.extensions_mut().insert(egress_core::ctx::FaultInjected);
        return Some(rsp);
    }
    None
}

/// What a request matched: the route, which of its match blocks, and its weighted
/// destinations; `delay` is the fault delay drawn for this request, if any.
struct Chosen<'a> {
    route: &'a CompiledRoute,
    matched: Option<usize>,
    destinations: &'a [crate::routes::CompiledDestination],
    total: u64,
    delay: Option<std::time::Duration>,
}

/// Sends a routed request on: picks the destination by weight, applies rewrites and header
/// operations, sets the plan, the mirrors and the retries, and wraps the answer in the
/// route's timeout and response header operations.
fn forward<S, ReqB, RspB>(
    inner: &mut S,
    table: &RouteTable,
    mut req: Request<ReqB>,
    c: Chosen<'_>,
) -> RouteFuture<S::Future, RspB>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RspB: From<Bytes> + Send + 'static,
{
    let Chosen {
        route,
        matched,
        destinations,
        total,
        delay,
    } = c;
    // The routed destination starts as the request's and takes the route's changes.
    let Some(mut new_dst) = req.extensions().get::<Destination>().cloned() else {
        return RouteFuture::Passthrough {
            future: inner.call(req),
        };
    };
    let Some(chosen) = table.pick(destinations, total) else {
        let why = format!(
            "egress: route {} has no destination with weight\n",
            route.id
        );
        return RouteFuture::Ready {
            response: Some(Rejection::new(RejectionKind::NoRoute).respond(
                StatusCode::SERVICE_UNAVAILABLE,
                false,
                why,
            )),
        };
    };
    let Some((routed_port, plan)) = chosen.plan(new_dst.port()) else {
        let why = format!(
            "egress: route {} sends port {} to {}, which has no such port registered\n",
            route.id,
            new_dst.port(),
            chosen.host
        );
        return RouteFuture::Ready {
            response: Some(Rejection::new(RejectionKind::NotInRegistry).respond(
                StatusCode::BAD_GATEWAY,
                false,
                why,
            )),
        };
    };
    if let Some(rw) = &route.rewrite {
        rewrite_uri(&mut req, route, matched, rw);
        if let Some(a) = &rw.authority
            && let Ok(v) = HeaderValue::from_str(a)
        {
            new_dst = new_dst.with_host_header(v);
        }
    }
    apply(req.headers_mut(), &route.headers.request);
    apply(req.headers_mut(), &chosen.headers.request);
    let decision = RouteDecision {
        route: route.id.clone(),
        destination: chosen.host.clone(),
        subset: chosen.subset.clone(),
    };
    let request_port = new_dst.port();
    let mirrors = mirrors(route, table, request_port);
    if let Some(slot) = req.extensions().get::<Arc<TelemetrySlot>>() {
        slot.set_service(chosen.host.clone(), chosen.host.clone());
        slot.set_cluster(routed_port, chosen.subset.clone());
        slot.set_route(route.id.clone());
    }
    let ext = req.extensions_mut();
    if !mirrors.is_empty() {
        ext.insert(Mirrors(mirrors.into()));
    }
    if let Some(retries) = &route.retries {
        ext.insert(retries.clone());
    }
    ext.insert(new_dst);
    ext.insert(plan);
    ext.insert(decision);
    let response_ops = response_ops(route, chosen);
    let future = inner.call(req);
    routed(future, delay, route.timeout, route.id.clone(), response_ops)
}

/// The mirrors of a route this request draws, with their plans for its port.
fn mirrors(route: &CompiledRoute, table: &RouteTable, request_port: u16) -> Vec<MirrorTarget> {
    route
        .mirrors
        .iter()
        .filter(|(_, pct)| table.sample(*pct))
        .filter_map(|(d, _)| {
            d.plan(request_port).map(|(_, plan)| MirrorTarget {
                host: d.host.clone(),
                plan,
            })
        })
        .collect()
}

/// The response header operations: the route's, then the chosen destination's.
fn response_ops(route: &CompiledRoute, chosen: &crate::routes::CompiledDestination) -> HeaderOps {
    let mut response_ops = route.headers.response.clone();
    response_ops
        .set
        .extend(chosen.headers.response.set.iter().cloned());
    response_ops
        .add
        .extend(chosen.headers.response.add.iter().cloned());
    response_ops
        .remove
        .extend(chosen.headers.response.remove.iter().cloned());
    response_ops
}

/// The routed answer: after the fault delay drawn, within the route's timeout, with the
/// response header operations applied.
fn routed<F, RspB, E>(
    future: F,
    delay: Option<std::time::Duration>,
    timeout: Option<std::time::Duration>,
    id: Arc<str>,
    response_ops: HeaderOps,
) -> RouteFuture<F, RspB>
where
    F: Future<Output = Result<Response<RspB>, E>> + Send + 'static,
    E: Into<BoxError>,
    RspB: Send + 'static,
{
    RouteFuture::Routed {
        future: Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, future).await {
                    Ok(r) => r.map_err(Into::into),
                    Err(_) => Err(UpstreamError::new(
                        UpstreamErrorKind::ResponseTimeout,
                        format!("route {id}: no response within the route timeout {t:?}"),
                    )
                    .into()),
                },
                None => future.await.map_err(Into::into),
            };
            result.map(|mut rsp| {
                apply(rsp.headers_mut(), &response_ops);
                rsp
            })
        }),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Routing`].
    #[project = RouteProj]
    #[allow(missing_docs)]
    pub enum RouteFuture<F, B> {
        Passthrough { #[pin] future: F },
        Ready { response: Option<Response<B>> },
        Routed { future: BoxFuture<Result<Response<B>, BoxError>> },
    }
}

impl<F, B, E> Future for RouteFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouteProj::Passthrough { future } => future.poll(cx).map_err(Into::into),
            RouteProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            RouteProj::Routed { future } => future.as_mut().poll(cx),
        }
    }
}

fn apply(headers: &mut HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for (k, v) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(n, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(n, v);
        }
    }
}

fn rewrite_uri<B>(
    req: &mut Request<B>,
    route: &CompiledRoute,
    matched: Option<usize>,
    rw: &crate::model::Rewrite,
) {
    let path = req.uri().path();
    let new_path = if let Some(new) = &rw.uri {
        let uri = matched
            .and_then(|i| route.matches.get(i))
            .and_then(|m| m.uri.as_ref());
        let segments = matches!(uri, Some(crate::model::StringMatch::PathPrefix(_)));
        match uri.and_then(|u| u.prefix()) {
            // Gateway API replaces whole segments: `/foo` -> `/` turns `/foo/bar` into
            // `/bar`, not `//bar`.
            Some(p) if segments && path.len() >= p.len() => {
                // What follows the matched segments, with its leading `/`.
                let rest = if p == "/" { path } else { &path[p.len()..] };
                match rest.strip_prefix('/') {
                    Some(tail) if new.ends_with('/') => format!("{new}{tail}"),
                    _ => format!("{new}{rest}"),
                }
            }
            Some(p) if path.len() >= p.len() => format!("{new}{}", &path[p.len()..]),
            _ => new.clone(),
        }
    } else if let Some((re, replacement)) = &route.uri_regex {
        re.replace_all(path, replacement.as_str()).into_owned()
    } else {
        return;
    };
    let new_path = if new_path.starts_with('/') {
        new_path
    } else {
        format!("/{new_path}")
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

fn redirect<B, RspB: From<Bytes>>(
    rd: &Redirect,
    dst: &Destination,
    req: &Request<B>,
) -> Response<RspB> {
    let scheme = rd
        .scheme
        .clone()
        .unwrap_or_else(|| dst.scheme().as_str().to_owned());
    let host = rd
        .authority
        .clone()
        .unwrap_or_else(|| dst.host().to_string());
    let port = match (rd.port, rd.derive_port.as_deref()) {
        (Some(p), _) => Some(p),
        (None, Some("FROM_REQUEST_PORT")) => Some(dst.port()),
        (None, Some(_)) => None,
        // Without an authority change the request's own port stays.
        (None, None) if rd.authority.is_none() && dst.port() != dst.scheme().default_port() => {
            Some(dst.port())
        }
        (None, None) => None,
    };
    let default = if scheme == "https" { 443 } else { 80 };
    let authority = match port {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host,
    };
    let path = match &rd.uri {
        Some(u) => match req.uri().query() {
            Some(q) if !u.contains('?') => format!("{u}?{q}"),
            _ => u.clone(),
        },
        None => req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned()),
    };
    let location = format!("{scheme}://{authority}{path}");
    let mut rsp = Response::new(RspB::from(Bytes::new()));
    *rsp.status_mut() =
        StatusCode::from_u16(rd.redirect_code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        rsp.headers_mut().insert(header::LOCATION, v);
    }
    rsp
}
