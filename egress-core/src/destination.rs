//! `DestinationLayer`: the one parser of where a request is going.
//!
//! It reads the absolute-form URI (forward proxy), the `Host` header or HTTP/2 `:authority`
//! (egress gateway behind sidecars) and the `CONNECT` authority, normalises them once, and
//! inserts a [`Destination`] that every later layer and the transport use as is. Anything two
//! parsers could read differently is refused with **400**, `x-egress-denied: malformed` and
//! `Connection: close`: several or comma-joined `Host` headers, a `Host` that disagrees with
//! the URI, userinfo, odd ports, numeric hosts that are not dotted quads.
//!
//! - Reads: the request line and `Host`. Inserts: [`Destination`].
//! - Refuses: [`RejectionKind::Malformed`] (400), [`RejectionKind::Unsupported`] (400).

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::ctx::{Destination, Host, Rejection, RejectionKind, RequestForm, Scheme};
use crate::framing::AmbiguousFraming;
use crate::host::{HostError, parse_authority};
use crate::respond::RefuseOr;

/// Why no destination could be taken from a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// More than one `Host` header.
    #[error("more than one Host header")]
    DuplicateHost,
    /// A `Host` header that holds several values.
    #[error("comma-joined Host header")]
    CommaHost,
    /// A `Host` header with bytes that are not visible ASCII.
    #[error("Host header is not visible ASCII")]
    HostNotAscii,
    /// HTTP/1.1 without `Host` (RFC 9112 section 3.2), or no destination at all.
    #[error("missing Host header")]
    MissingHost,
    /// The `Host` header names another destination than the request target.
    #[error("Host header {host:?} disagrees with the request target {target:?}")]
    HostMismatch {
        /// The `Host` header.
        host: String,
        /// The authority of the request target.
        target: String,
    },
    /// The authority or `Host` is invalid.
    #[error("invalid {what} {value:?}: {error}")]
    BadAuthority {
        /// `request target` or `Host header`.
        what: &'static str,
        /// The offending text.
        value: String,
        /// What is wrong with it.
        error: HostError,
    },
    /// A scheme other than `http` or `https`.
    #[error("unsupported scheme {0:?} (only http and https)")]
    UnsupportedScheme(String),
    /// `OPTIONS *` and other asterisk-form requests have no destination to check.
    #[error("asterisk-form requests are not proxied")]
    AsteriskForm,
    /// `CONNECT` whose target is not `host:port`.
    #[error("CONNECT needs a host:port target")]
    BadConnect,
    /// `CONNECT` with content (RFC 9110 section 9.3.6): its bytes would be read as tunnel
    /// bytes by one side and as a body by the other.
    #[error("CONNECT with a body (Content-Length or Transfer-Encoding)")]
    ConnectWithBody,
    /// Both `Content-Length` and `Transfer-Encoding` ([`AmbiguousFraming`]).
    #[error("both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
    /// A method with lower-case letters: methods are case-sensitive, yet some origins
    /// upper-case them, so `delete` could be checked as one method and run as another.
    #[error("method {0:?} is not upper case")]
    MethodCase(String),
    /// A header name with `_`, which CGI-style origins read as `-` (`x_user` as `x-user`),
    /// so it could stand in for a header a policy checks or the gateway writes.
    #[error("header name {0:?} has an underscore (see --headers-with-underscores)")]
    Underscore(String),
}

/// What to do with request header names that contain `_` (Envoy's
/// `headers_with_underscores_action`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Underscores {
    /// Forward them as they are (Envoy's default).
    Allow,
    /// Remove them from the request.
    Drop,
    /// Refuse the request: 400 and close (this gateway's default).
    #[default]
    Reject,
}

/// Takes the destination from a request received by a server; see the module docs.
pub fn destination_of<B>(req: &Request<B>) -> Result<Destination, DestinationError> {
    destination_with(req, true)
}

/// Takes the destination; `wire` says the request was parsed from a client connection, where
/// HTTP/1.1 requires `Host` (RFC 9112 section 3.2). Requests an application builds for its own
/// client (`Request::get("http://...")`) carry the authority in the URI only.
fn destination_with<B>(req: &Request<B>, wire: bool) -> Result<Destination, DestinationError> {
    if req.extensions().get::<AmbiguousFraming>().is_some() {
        return Err(DestinationError::AmbiguousFraming);
    }
    let host_header = single_host(req)?;
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        let headers = req.headers();
        if headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .any(|v| v.as_bytes() != b"0")
        {
            return Err(DestinationError::ConnectWithBody);
        }
        let target = uri.authority().ok_or(DestinationError::BadConnect)?;
        if uri.scheme().is_some() {
            return Err(DestinationError::BadConnect);
        }
        let (host, port) = parse(target.as_str(), "request target")?;
        let port = port.ok_or(DestinationError::BadAuthority {
            what: "request target",
            value: target.as_str().to_owned(),
            error: HostError::MissingPort,
        })?;
        if let Some((h, _)) = host_header {
            let (hh, hp) = parse(h, "Host header")?;
            if hh != host || hp.is_some_and(|p| p != port) {
                return Err(mismatch(h, target.as_str()));
            }
        }
        return Ok(Destination::new(
            host,
            port,
            Scheme::Https,
            RequestForm::Connect,
        ));
    }
    if let Some(target) = uri.authority() {
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => return Err(DestinationError::UnsupportedScheme(other.to_owned())),
            None => return Err(DestinationError::BadConnect),
        };
        let (host, port) = parse(target.as_str(), "request target")?;
        let port = port.unwrap_or(scheme.default_port());
        match host_header {
            Some((h, raw)) => {
                let (hh, hp) = parse(h, "Host header")?;
                if hh != host || hp.unwrap_or(scheme.default_port()) != port {
                    return Err(mismatch(h, target.as_str()));
                }
                let form = if req.version() >= Version::HTTP_2 {
                    RequestForm::Origin
                } else {
                    RequestForm::Absolute
                };
                return Ok(Destination::with_raw_host(host, port, scheme, form, raw));
            }
            None if wire && req.version() == Version::HTTP_11 => {
                return Err(DestinationError::MissingHost);
            }
            None => {}
        }
        let form = if req.version() >= Version::HTTP_2 {
            RequestForm::Origin
        } else {
            RequestForm::Absolute
        };
        return Ok(Destination::new(host, port, scheme, form));
    }
    if uri.path() == "*" {
        return Err(DestinationError::AsteriskForm);
    }
    let (h, raw) = host_header.ok_or(DestinationError::MissingHost)?;
    let (host, port) = parse(h, "Host header")?;
    Ok(Destination::with_raw_host(
        host,
        port.unwrap_or(80),
        Scheme::Http,
        RequestForm::Origin,
        raw,
    ))
}

fn single_host<B>(req: &Request<B>) -> Result<Option<(&str, &HeaderValue)>, DestinationError> {
    let mut all = req.headers().get_all(header::HOST).iter();
    let Some(raw) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(DestinationError::DuplicateHost);
    }
    let value = raw.to_str().map_err(|_| DestinationError::HostNotAscii)?;
    if value.contains(',') {
        return Err(DestinationError::CommaHost);
    }
    Ok(Some((value, raw)))
}

fn parse(value: &str, what: &'static str) -> Result<(Host, Option<u16>), DestinationError> {
    parse_authority(value).map_err(|error| DestinationError::BadAuthority {
        what,
        value: value.to_owned(),
        error,
    })
}

fn mismatch(host: &str, target: &str) -> DestinationError {
    DestinationError::HostMismatch {
        host: host.to_owned(),
        target: target.to_owned(),
    }
}

/// Inserts the request's [`Destination`], or answers 400 and closes the connection.
#[derive(Clone, Debug)]
pub struct DestinationLayer {
    wire: bool,
    underscores: Underscores,
}

impl Default for DestinationLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl DestinationLayer {
    /// The layer for a server: requests come from the wire and HTTP/1.1 needs `Host`.
    pub fn new() -> Self {
        Self {
            wire: true,
            underscores: Underscores::default(),
        }
    }

    /// What to do with header names that contain `_` (default: refuse the request).
    pub fn with_underscores(mut self, underscores: Underscores) -> Self {
        self.underscores = underscores;
        self
    }

    /// The layer for an application's own HTTP client, whose requests carry their authority
    /// in an absolute URI and need no `Host` header (the same checks apply when one is set).
    pub fn for_client() -> Self {
        Self {
            wire: false,
            underscores: Underscores::Allow,
        }
    }
}

impl<S> Layer<S> for DestinationLayer {
    type Service = ExtractDestination<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ExtractDestination {
            inner,
            wire: self.wire,
            underscores: self.underscores,
        }
    }
}

/// The service of [`DestinationLayer`].
#[derive(Clone, Debug)]
pub struct ExtractDestination<S> {
    inner: S,
    wire: bool,
    underscores: Underscores,
}

/// The checks of a request head that are not about its destination: method case and
/// header names with underscores.
fn check_head<B>(req: &mut Request<B>, underscores: Underscores) -> Result<(), DestinationError> {
    let method = req.method().as_str();
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(DestinationError::MethodCase(method.to_owned()));
    }
    if underscores == Underscores::Allow {
        return Ok(());
    }
    let headers = req.headers_mut();
    if !headers.keys().any(|n| n.as_str().contains('_')) {
        return Ok(());
    }
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    if underscores == Underscores::Reject {
        return Err(DestinationError::Underscore(names[0].as_str().to_owned()));
    }
    for n in names {
        headers.remove(n);
    }
    Ok(())
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for ExtractDestination<S>
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
        let checked =
            check_head(&mut req, self.underscores).and_then(|()| destination_with(&req, self.wire));
        match checked {
            Ok(dst) => {
                req.extensions_mut().insert(dst);
                RefuseOr::inner(self.inner.call(req))
            }
            Err(error) => {
                let kind = match error {
                    DestinationError::UnsupportedScheme(_) | DestinationError::AsteriskForm => {
                        RejectionKind::Unsupported
                    }
                    _ => RejectionKind::Malformed,
                };
                let why = format!("egress: malformed request: {error}\n");
                RefuseOr::refused(Rejection::new(kind).respond(StatusCode::BAD_REQUEST, true, why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    fn ok(r: Request<()>) -> (String, RequestForm, Scheme, String) {
        let d = destination_of(&r).unwrap();
        (
            d.to_string(),
            d.form(),
            d.scheme(),
            d.host_header().to_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn forms() {
        use RequestForm::*;
        let v11 = Version::HTTP_11;
        assert_eq!(
            ok(req("GET", "http://Example.com/x", v11, &["example.com"])),
            (
                "example.com:80".into(),
                Absolute,
                Scheme::Http,
                "example.com".into()
            )
        );
        assert_eq!(
            ok(req(
                "GET",
                "http://example.com:8080/x",
                v11,
                &["example.com:8080"]
            )),
            (
                "example.com:8080".into(),
                Absolute,
                Scheme::Http,
                "example.com:8080".into()
            )
        );
        assert_eq!(
            ok(req("GET", "/x", v11, &["api.example.com."])),
            (
                "api.example.com:80".into(),
                Origin,
                Scheme::Http,
                "api.example.com".into()
            )
        );
        assert_eq!(
            ok(req("CONNECT", "example.com:443", v11, &["example.com:443"])),
            (
                "example.com:443".into(),
                Connect,
                Scheme::Https,
                "example.com:443".into()
            )
        );
        assert_eq!(
            ok(req("GET", "https://[::1]/", Version::HTTP_2, &[])),
            ("[::1]:443".into(), Origin, Scheme::Https, "[::1]".into())
        );
        // HTTP/1.0 may omit Host in absolute form.
        assert_eq!(
            ok(req("GET", "http://example.com/", Version::HTTP_10, &[])).0,
            "example.com:80"
        );
        // Host with the default port spelled out agrees with a target without it, and the
        // Host written upstream is the canonical one, whatever the client spelled.
        assert_eq!(
            ok(req("GET", "http://example.com/", v11, &["example.com:80"])),
            (
                "example.com:80".into(),
                Absolute,
                Scheme::Http,
                "example.com".into()
            )
        );
        assert_eq!(ok(req("GET", "/", v11, &["A.com:8080"])).3, "a.com:8080");
        assert_eq!(ok(req("GET", "/", v11, &["a.com.:8080"])).3, "a.com:8080");
        assert_eq!(ok(req("GET", "/", v11, &["a.com:8080"])).3, "a.com:8080");
        assert_eq!(ok(req("GET", "/", v11, &["a.com"])).3, "a.com");
        assert_eq!(ok(req("GET", "/", v11, &["10.0.0.1:80"])).3, "10.0.0.1");
        assert_eq!(
            ok(req("CONNECT", "a.com:443", v11, &["a.com"])).3,
            "a.com:443"
        );
    }

    #[test]
    fn ambiguity_is_refused() {
        let v11 = Version::HTTP_11;
        let cases: Vec<(Request<()>, &str)> = vec![
            (
                req("GET", "/", v11, &["a.com", "b.com"]),
                "more than one Host",
            ),
            (req("GET", "/", v11, &["a.com, b.com"]), "comma-joined"),
            (req("GET", "/", v11, &[]), "missing Host"),
            (req("GET", "http://a.com/", v11, &[]), "missing Host"),
            (req("GET", "http://a.com/", v11, &["b.com"]), "disagrees"),
            (req("GET", "http://a.com:81/", v11, &["a.com"]), "disagrees"),
            (req("GET", "http://u:p@a.com/", v11, &["a.com"]), "userinfo"),
            (req("GET", "/", v11, &["2130706433"]), "ambiguous numeric"),
            (req("GET", "/", v11, &["0x7f.1"]), "ambiguous numeric"),
            (req("GET", "/", v11, &["0177.0.0.1"]), "ambiguous numeric"),
            (req("GET", "/", v11, &["a.com:0"]), "invalid port"),
            (req("GET", "/", v11, &["a.com:08"]), "invalid port"),
            (
                req("GET", "ftp://a.com/", v11, &["a.com"]),
                "unsupported scheme",
            ),
            (
                req("CONNECT", "a.com:443", v11, &["b.com:443"]),
                "disagrees",
            ),
            (
                req("CONNECT", "a.com:443", v11, &["a.com:444"]),
                "disagrees",
            ),
            (req("OPTIONS", "*", v11, &["a.com"]), "asterisk"),
        ];
        for (name, value) in [("content-length", "5"), ("transfer-encoding", "chunked")] {
            let mut r = req("CONNECT", "a.com:443", v11, &["a.com:443"]);
            r.headers_mut()
                .insert(name, http::HeaderValue::from_static(value));
            assert_eq!(destination_of(&r), Err(DestinationError::ConnectWithBody));
        }
        let mut r = req("CONNECT", "a.com:443", v11, &["a.com:443"]);
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from_static("0"));
        assert!(destination_of(&r).is_ok());
        for (r, want) in cases {
            let uri = r.uri().clone();
            let err = destination_of(&r).unwrap_err().to_string();
            assert!(err.contains(want), "{uri}: {err} should contain {want:?}");
        }
        let mut r = req("GET", "/", v11, &[]);
        r.headers_mut().insert(
            header::HOST,
            http::HeaderValue::from_bytes(b"a\xffb").unwrap(),
        );
        assert_eq!(destination_of(&r), Err(DestinationError::HostNotAscii));
    }

    #[tokio::test]
    async fn layer_inserts_or_refuses() {
        use tower::{ServiceExt, service_fn};
        let svc = DestinationLayer::new().layer(service_fn(|r: Request<()>| async move {
            let d = r.extensions().get::<Destination>().cloned();
            Ok::<_, std::convert::Infallible>(Response::new(Bytes::from(
                d.map(|d| d.to_string()).unwrap_or_default(),
            )))
        }));
        let rsp = svc
            .clone()
            .oneshot(req("GET", "/", Version::HTTP_11, &["X.org"]))
            .await
            .unwrap();
        assert_eq!(rsp.into_body(), Bytes::from("x.org:80"));
        let rsp = svc
            .oneshot(req("GET", "/", Version::HTTP_11, &["a.com", "b.com"]))
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rsp.headers()[crate::ctx::DENIED_HEADER], "malformed");
        assert_eq!(rsp.headers()[header::CONNECTION], "close");
        assert_eq!(
            rsp.extensions().get::<Rejection>().map(Rejection::kind),
            Some(RejectionKind::Malformed)
        );
    }
}
