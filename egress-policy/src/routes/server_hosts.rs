//! `ServerHostsLayer`: a `Gateway` server listener serves only the hosts it declares.
//!
//! - Reads: [`Destination`]. Refuses: **404** `x-egress-denied: no-route` for a host the
//!   server's `hosts` do not list, as Envoy answers for an unknown virtual host.
//! - Writes: [`ListenerPort`], the server's declared port, which a route's `match.port`
//!   is compared with on that listener (Envoy matches the listener, not the `Host` port).

use bytes::Bytes;
use egress_core::ctx::{Destination, Rejection, RejectionKind};
use egress_core::respond::RefuseOr;
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The declared port of the `Gateway` server a request came in on (not the port it is
/// bound to, which `--gateway-port-offset` may move): what `match.port` of its routes means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerPort(pub u16);

/// The hosts of a server: exact names, `*.suffix` wildcards, or `*`.
#[derive(Clone, Debug, Default)]
pub struct ServerHosts {
    exact: Vec<String>,
    suffixes: Vec<String>,
    any: bool,
    port: u16,
}

impl ServerHosts {
    /// From a server's `hosts` (`ns/host` forms accepted: the namespace part is dropped).
    pub fn new<'a>(hosts: impl IntoIterator<Item = &'a str>, port: u16) -> Self {
        let mut out = ServerHosts {
            port,
            ..Default::default()
        };
        for h in hosts {
            let h = h.rsplit('/').next().unwrap_or(h);
            if h == "*" {
                out.any = true;
            } else if let Some(s) = h.strip_prefix('*') {
                out.suffixes.push(s.to_owned());
            } else {
                out.exact.push(h.to_owned());
            }
        }
        out
    }

    /// Whether `host` is served.
    pub fn contains(&self, host: &str) -> bool {
        self.any
            || self.exact.iter().any(|e| e == host)
            || self.suffixes.iter().any(|s| host.ends_with(s.as_str()))
    }
}

/// Refuses requests for hosts a Gateway server does not declare.
#[derive(Clone, Debug)]
pub struct ServerHostsLayer {
    hosts: Arc<ServerHosts>,
}

impl ServerHostsLayer {
    /// The layer.
    pub fn new(hosts: ServerHosts) -> Self {
        Self {
            hosts: Arc::new(hosts),
        }
    }
}

impl<S> Layer<S> for ServerHostsLayer {
    type Service = ServerHostsCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerHostsCheck {
            inner,
            hosts: self.hosts.clone(),
        }
    }
}

/// The service of [`ServerHostsLayer`].
#[derive(Clone, Debug)]
pub struct ServerHostsCheck<S> {
    inner: S,
    hosts: Arc<ServerHosts>,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for ServerHostsCheck<S>
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
        // A client cannot send extensions: this one is only ever the listener's.
        req.extensions_mut().insert(ListenerPort(self.hosts.port));
        let served = req.extensions().get::<Destination>().map(|d| {
            (
                self.hosts.contains(&d.host().to_string()),
                d.host().to_string(),
            )
        });
        match served {
            Some((true, _)) => RefuseOr::inner(self.inner.call(req)),
            Some((false, host)) => {
                let why = format!(
                    "egress: {host} is not among the hosts of the Gateway server on port {}\n",
                    self.hosts.port
                );
                RefuseOr::refused(Rejection::new(RejectionKind::NoRoute).respond(
                    StatusCode::NOT_FOUND,
                    false,
                    why,
                ))
            }
            None => RefuseOr::inner(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let h = ServerHosts::new(["edition.cnn.com", "ns/*.wikipedia.org"], 80);
        assert!(h.contains("edition.cnn.com"));
        assert!(h.contains("en.wikipedia.org"));
        assert!(!h.contains("wikipedia.org"));
        assert!(!h.contains("cnn.com"));
        assert!(ServerHosts::new(["*/*"], 80).contains("anything.example"));
    }
}
