//! `Upstream`: the service at the bottom of the stack that sends a request to its destination.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version, header};
use http_body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

use crate::BoxBody;
use crate::body::IdleTimeout;
use crate::ctx::{Balance, ClientAddr, Destination, UpstreamPlan};
use crate::error::{BoxError, UpstreamError, UpstreamErrorKind};
use crate::transport::{DialEntry, DialTable, Dialer};

/// Settings of the [`Upstream`] service and its connection pool.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    request_timeout: Option<Duration>,
    body_idle_timeout: Option<Duration>,
    dial_table: Option<DialTable>,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            request_timeout: Some(Duration::from_secs(60)),
            body_idle_timeout: Some(Duration::from_secs(300)),
            dial_table: None,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
        }
    }
}

impl UpstreamConfig {
    /// How long to wait for the response headers after sending (default 60 s; `None`: no
    /// limit). Expiry gives 504 `upstream-timeout`.
    pub fn with_request_timeout(mut self, t: Option<Duration>) -> Self {
        self.request_timeout = t;
        self
    }

    /// How long a request or response body may go without a byte before the exchange is
    /// aborted (default 5 min, as Envoy's stream idle timeout; `None`: no limit). A stalled
    /// upload or download then releases its connections instead of holding them forever.
    pub fn with_body_idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.body_idle_timeout = t;
        self
    }

    /// The table shared with a TLS-capable connector (see [`DialTable`]); without it,
    /// requests whose plan asks for TLS origination fail with `tls-handshake-failed`.
    pub fn with_dial_table(mut self, table: DialTable) -> Self {
        self.dial_table = Some(table);
        self
    }

    /// How long an idle pooled connection is kept (default 90 s).
    pub fn with_pool_idle_timeout(mut self, t: Duration) -> Self {
        self.pool_idle_timeout = t;
        self
    }

    /// How many idle connections are kept per upstream address (default 256).
    pub fn with_pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }
}

/// Sends requests to the address the [`Dialer`] chose, over pooled keep-alive connections.
///
/// Reads [`Destination`] (required) and [`UpstreamPlan`] (optional) from the request. The
/// request goes out as HTTP/1.1 in origin form, with exactly the `Host` of the destination,
/// to an IP literal: the connector never sees a name to resolve again.
pub struct Upstream<C, B> {
    // One reference count per request instead of cloning the client's several.
    inner: Arc<Inner<C, B>>,
}

struct Inner<C, B> {
    client: Client<C, IdleTimeout<B>>,
    /// HTTP/2 with prior knowledge, for plain connections to `HTTP2`/`GRPC` ports; a pool of
    /// its own, since one connection speaks one protocol.
    h2c: Client<C, IdleTimeout<B>>,
    dialer: Arc<Dialer>,
    request_timeout: Option<Duration>,
    body_idle_timeout: Option<Duration>,
    dial_table: Option<DialTable>,
}

impl<C, B> Clone for Upstream<C, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C, B> std::fmt::Debug for Upstream<C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("dialer", &self.inner.dialer)
            .finish_non_exhaustive()
    }
}

impl<B> Upstream<HttpConnector, B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// An upstream over plain TCP, with the dialer's connect timeout.
    pub fn tcp(dialer: Arc<Dialer>, config: UpstreamConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(dialer.config().connect_timeout()));
        http.enforce_http(true);
        if let Some(source) = dialer.config().source() {
            http.set_local_address(Some(source));
        }
        Self::with_connector(http, dialer, config)
    }
}

impl<C, B> Upstream<C, B>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// An upstream over any hyper-util connector (TLS, an upstream proxy, an in-memory pipe).
    /// The connector is handed `http://IP:PORT` URIs.
    pub fn with_connector(connector: C, dialer: Arc<Dialer>, config: UpstreamConfig) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .set_host(false);
        let client = builder.build(connector.clone());
        let h2c = builder.http2_only(true).build(connector);
        Self {
            inner: Arc::new(Inner {
                client,
                h2c,
                dialer,
                request_timeout: config.request_timeout,
                body_idle_timeout: config.body_idle_timeout,
                dial_table: config.dial_table,
            }),
        }
    }
}

impl<C, B> Service<Request<B>> for Upstream<C, B>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    // Boxed once: the resolve-then-send sequence has no nameable future type.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let Some(dst) = req.extensions().get::<Destination>().cloned() else {
                return Err("upstream: no Destination in the request extensions".into());
            };
            let plan = req.extensions().get::<UpstreamPlan>();
            if let Some(proxy) = inner.dialer.proxy_for(&dst, plan)? {
                let (scheme, authority, proxy_name) = inner.via_proxy(&dst, plan, proxy)?;
                return inner
                    .send(req, &dst, scheme, authority, None, &proxy_name)
                    .await;
            }
            let key = plan.and_then(|p| hash_key(&p.balance, &req));
            let addrs = inner.dialer.addresses_for(&dst, plan, key).await?;
            let addr = addrs[0];
            if let Some(slot) = req.extensions().get::<Arc<crate::ctx::TelemetrySlot>>() {
                slot.set_upstream(addr);
            }
            let _in_flight = inner.dialer.begin(addr);
            let scheme = if plan.is_some_and(|p| p.tls.is_some()) {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            };
            let h2c = plan.is_some_and(|p| p.http2) && scheme == Scheme::HTTP;
            let authority = inner.direct(&dst, plan, addrs, h2c)?;
            inner
                .send(req, &dst, scheme, authority, Some(addr), &addr)
                .await
        })
    }
}

impl<C, B> Inner<C, B>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Through the upstream proxy: it resolves; the connector asks it for a tunnel to the
    /// validated name, keyed like TLS by name and port. The scheme, the pool authority and
    /// the proxy's name for errors.
    fn via_proxy(
        &self,
        dst: &Destination,
        plan: Option<&UpstreamPlan>,
        proxy: Arc<crate::transport::UpstreamProxy>,
    ) -> Result<(Scheme, Authority, String), BoxError> {
        let Some(table) = &self.dial_table else {
            return Err(format!(
                "{dst}: an upstream proxy is configured but this transport has no connector for it"
            )
            .into());
        };
        let port = plan.and_then(|p| p.port).unwrap_or(dst.port());
        let tls = plan.and_then(|p| p.tls.clone());
        let sni = match tls.as_ref().and_then(|t| t.sni.as_deref()) {
            Some(sni) => sni.to_owned(),
            None => dst.host().to_string(),
        };
        let scheme = if tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let proxy_name = format!("upstream proxy {}", proxy.address());
        table.set(
            &sni,
            port,
            DialEntry {
                addrs: Vec::new(),
                tls,
                proxy: Some(proxy),
                source: plan.and_then(|p| p.source),
                sni: None,
            },
        );
        let authority = pool_authority(&sni, port, scheme == Scheme::HTTPS)?;
        Ok((scheme, authority, proxy_name))
    }

    /// The pool authority for the validated addresses: the address itself, or, for TLS
    /// origination or a fixed source address, a key under which the connector dials exactly
    /// these addresses. TLS pools per SNI and port; a fixed source gets keys of its own, so
    /// that no connection made from another address is reused.
    fn direct(
        &self,
        dst: &Destination,
        plan: Option<&UpstreamPlan>,
        addrs: Vec<SocketAddr>,
        h2c: bool,
    ) -> Result<Authority, BoxError> {
        let tls = plan.and_then(|p| p.tls.clone());
        let source = plan.and_then(|p| p.source);
        // HTTP/2 sends the pool authority as `:authority`: it must be the host's name, so
        // h2c goes by the table too (the connector dials the validated addresses).
        if tls.is_none() && source.is_none() && !(h2c && self.dial_table.is_some()) {
            return Ok(authority_of(addrs[0])?);
        }
        let Some(table) = &self.dial_table else {
            return Err(UpstreamError::new(
                UpstreamErrorKind::TlsHandshake,
                format!("{dst}: TLS origination or a fixed source address is configured but this transport has no connector for it"),
            )
            .into());
        };
        let name = match tls.as_ref().and_then(|t| t.sni.as_ref()) {
            Some(s) => s.to_string(),
            None => dst.host().to_string(),
        };
        let port = addrs[0].port();
        let is_tls = tls.is_some();
        let key = match source {
            None => name.clone(),
            Some(src) => source_key(&name, src),
        };
        table.set(
            &key,
            port,
            DialEntry {
                addrs,
                tls,
                proxy: None,
                source,
                sni: source.map(|_| Arc::from(name.as_str())),
            },
        );
        Ok(pool_authority(&key, port, is_tls)?)
    }

    /// Writes the request for the pool and waits for the response head within the request
    /// timeout; both bodies get the idle timeout. `addr` and `peer` name the other end in
    /// errors.
    async fn send(
        &self,
        req: Request<B>,
        dst: &Destination,
        scheme: Scheme,
        authority: Authority,
        addr: Option<SocketAddr>,
        peer: &(dyn std::fmt::Display + Sync),
    ) -> Result<Response<BoxBody>, BoxError> {
        let idle = self.body_idle_timeout;
        let h2c = scheme == Scheme::HTTP
            && req
                .extensions()
                .get::<UpstreamPlan>()
                .is_some_and(|p| p.http2);
        let req =
            prepare(req, dst, scheme, authority, h2c)?.map(|b| IdleTimeout::for_request(b, idle));
        let send = if h2c {
            self.h2c.request(req)
        } else {
            self.client.request(req)
        };
        let result = match self.request_timeout {
            Some(t) => tokio::time::timeout(t, send).await.map_err(|_| {
                let from = addr.map(|a| format!(" from {a}")).unwrap_or_default();
                UpstreamError::new(
                    UpstreamErrorKind::ResponseTimeout,
                    format!("{dst}: no response{from} within {t:?}"),
                )
            })?,
            None => send.await,
        };
        match result {
            Ok(rsp) => Ok(rsp.map(|b| BoxBody::new(IdleTimeout::new(b, idle)))),
            Err(e) => Err(classify(dst, peer, e).into()),
        }
    }
}

/// The consistent-hash key of a request, for the plan's balancer.
fn hash_key<B>(balance: &Balance, req: &Request<B>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match balance {
        Balance::HashHeader(name) => req.headers().get(name)?.as_bytes().hash(&mut h),
        Balance::HashSourceIp => req.extensions().get::<ClientAddr>()?.0.ip().hash(&mut h),
        _ => return None,
    }
    Some(h.finish())
}

/// Rewrites the request for the chosen address: origin-form path, the destination's `Host`.
fn prepare<B>(
    mut req: Request<B>,
    dst: &Destination,
    scheme: Scheme,
    authority: Authority,
    http2: bool,
) -> Result<Request<B>, BoxError> {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from_parts({
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path);
        parts
    })?;
    if http2 {
        // `:authority` (the name and port dialled) stands for `Host`, which HTTP/2 peers
        // may refuse beside it when the two differ.
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(header::HOST);
    } else {
        *req.version_mut() = Version::HTTP_11;
        req.headers_mut()
            .insert(header::HOST, dst.host_header().clone());
    }
    Ok(req)
}

/// A pool key of its own for connections from `src`: `name.src-10-0-0-5`. Only the
/// connector reads it (it dials the entry's addresses, with the entry's SNI); the request
/// carries the destination's own `Host`.
fn source_key(name: &str, src: std::net::IpAddr) -> String {
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .replace([':', '.'], "-");
    let src = src.to_string().replace([':', '.'], "-");
    format!("{name}.src-{src}")
}

/// The pool key of a named upstream: `sni:port`, with 443 left implicit for TLS so that an
/// HTTP/2 connection's `:authority` is the name itself, as the `Host` header usually is
/// (RFC 9113 section 8.3.1 wants the two equal).
fn pool_authority(sni: &str, port: u16, tls: bool) -> Result<Authority, http::uri::InvalidUri> {
    if tls && port == 443 {
        Authority::try_from(sni)
    } else {
        Authority::try_from(format!("{sni}:{port}"))
    }
}

/// `IP:PORT` as a URI authority, without the formatting machinery for the common IPv4 case.
fn authority_of(addr: SocketAddr) -> Result<Authority, http::uri::InvalidUri> {
    let SocketAddr::V4(v4) = addr else {
        return Authority::try_from(addr.to_string());
    };
    let mut buf = [0u8; 21];
    let mut len = 0;
    let push_num = |n: u16, buf: &mut [u8; 21], len: &mut usize| {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let d = &digits[i..];
        buf[*len..*len + d.len()].copy_from_slice(d);
        *len += d.len();
    };
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        push_num(u16::from(octet), &mut buf, &mut len);
    }
    buf[len] = b':';
    len += 1;
    push_num(v4.port(), &mut buf, &mut len);
    Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(&buf[..len]))
}

fn classify(
    dst: &Destination,
    addr: &dyn std::fmt::Display,
    e: hyper_util::client::legacy::Error,
) -> UpstreamError {
    if let Some(inner) = crate::error::cause_ref::<UpstreamError>(&e) {
        // The connector already said what failed (a TLS handshake, say).
        return UpstreamError::new(inner.kind(), inner.to_string());
    }
    if let Some(body) = crate::error::cause_ref::<crate::body::ClientBodyError>(&e) {
        let (kind, what) = if body.is_timeout() {
            (UpstreamErrorKind::ClientBodyTimeout, "stalled")
        } else {
            (UpstreamErrorKind::ClientBodyMalformed, "is malformed")
        };
        return UpstreamError::new(
            kind,
            format!("{dst}: the request body {what}; the upstream request to {addr} was aborted"),
        )
        .with_source(e);
    }
    if e.is_connect() {
        let timed_out = crate::error::cause_ref::<std::io::Error>(&e)
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        if timed_out {
            return UpstreamError::new(
                UpstreamErrorKind::ConnectTimeout,
                format!("{dst}: connecting to {addr} timed out"),
            )
            .with_source(e);
        }
        return UpstreamError::new(
            UpstreamErrorKind::ConnectFailed,
            format!("{dst}: connecting to {addr} failed"),
        )
        .with_source(e);
    }
    UpstreamError::new(
        UpstreamErrorKind::Protocol,
        format!("{dst}: upstream {addr} failed"),
    )
    .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_of_addresses() {
        for a in [
            "127.0.0.1:80",
            "255.255.255.255:65535",
            "0.0.0.0:1",
            "10.20.30.40:8080",
            "[::1]:443",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(authority_of(addr).unwrap().as_str(), a);
        }
    }
}
