//! What authorization knows of a request ([`RequestFacts`]) and the original client
//! address behind trusted proxies ([`remote_ip`]), shared by the CUSTOM and DENY/ALLOW
//! layers.

use bytes::Bytes;
use egress_core::ctx::{
    ClientAddr, Destination, Host, Rejection, RejectionKind, RequestForm, SourcePrincipal,
};
use http::{Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;

use super::{Attributes, HttpAttributes};
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
    pub(crate) host: String,
    pub(crate) port: u16,
    destination_ip: Option<IpAddr>,
    source_ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
    principal: Option<Arc<str>>,
    pub(crate) http: bool,
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
