//! Chaining through an upstream HTTP proxy (`CONNECT`), as companies with a mandatory
//! outbound proxy need.
//!
//! When a destination is sent through the proxy, the gateway does not resolve it: the proxy
//! does, and the gateway asks it for `CONNECT host:port` with the validated name. IP-literal
//! destinations still pass the SSRF guard first.
//!
//! An `https://` proxy is spoken to over TLS (the credentials and the `CONNECT` target never
//! cross the network in clear). This crate does no TLS itself: the handshake comes from a
//! [`ProxyTls`] given with [`UpstreamProxy::with_tls`] (`egress-tls` has one).

use base64::Engine as _;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{UpstreamError, UpstreamErrorKind};

/// A byte stream that can sit under an upstream connection.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The TLS client for `https://` upstream proxies.
pub trait ProxyTls: Send + Sync + fmt::Debug {
    /// Negotiates TLS with the proxy named `server_name` over `tcp`.
    fn handshake(
        &self,
        tcp: TcpStream,
        server_name: &str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send>>;
}

/// An upstream byte stream: a direct TCP connection, or a tunnel through a TLS proxy.
pub enum UpstreamStream {
    /// TCP to the destination, or to a plain `http://` proxy.
    Tcp(TcpStream),
    /// A tunnel inside a TLS connection to an `https://` proxy.
    Tunnel(Box<dyn Io>),
}

impl fmt::Debug for UpstreamStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(s) => s.fmt(f),
            Self::Tunnel(_) => f.write_str("UpstreamStream::Tunnel"),
        }
    }
}

impl UpstreamStream {
    /// The peer address of a direct connection (`None` through a TLS proxy).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(s) => s.peer_addr().ok(),
            Self::Tunnel(_) => None,
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tunnel(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tunnel(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tunnel(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tunnel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tunnel(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tunnel(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream proxy and the destinations it is used for.
#[derive(Clone, Debug)]
pub struct UpstreamProxy {
    host: String,
    port: u16,
    authorization: Option<String>,
    /// Exact hosts and `*.suffix` wildcards; empty means every destination.
    only: Vec<String>,
    /// `https://`: TLS to the proxy is required.
    https: bool,
    tls: Option<Arc<dyn ProxyTls>>,
}

/// A `--upstream-proxy` value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream proxy {0:?}: {1}")]
pub struct ProxyParseError(String, &'static str);

impl UpstreamProxy {
    /// Parses `http://[user:password@]host:port` or `https://…`; an `https://` proxy needs
    /// a TLS client given with [`with_tls`](Self::with_tls) before it can be used.
    pub fn parse(url: &str) -> Result<Self, ProxyParseError> {
        // Messages never repeat the credentials.
        let shown = match url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        };
        let err = |why| ProxyParseError(shown.clone(), why);
        let (rest, https) = match url.strip_prefix("http://") {
            Some(r) => (r, false),
            None => match url.strip_prefix("https://") {
                Some(r) => (r, true),
                None => return Err(err("expected http:// or https://")),
            },
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (host, port) = hostport.rsplit_once(':').ok_or(err("a port is required"))?;
        let port: u16 = port.parse().map_err(|_| err("invalid port"))?;
        if host.is_empty() {
            return Err(err("empty host"));
        }
        let authorization = auth.map(|a| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        });
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            authorization,
            only: Vec::new(),
            https,
            tls: None,
        })
    }

    /// The TLS client used for an `https://` proxy (ignored for `http://`).
    pub fn with_tls(mut self, tls: Arc<dyn ProxyTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether the proxy is spoken to over TLS.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The proxy's host name, as in its URL (the SNI of an `https://` proxy).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Restricts the proxy to these hosts (`*.suffix` allowed); empty: all.
    pub fn only_for(mut self, hosts: Vec<String>) -> Self {
        self.only = hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
        self
    }

    /// Whether `host` goes through the proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|h| match h.strip_prefix("*.") {
                Some(s) => {
                    host.len() > s.len()
                        && host.ends_with(s)
                        && host.as_bytes()[host.len() - s.len() - 1] == b'.'
                }
                None => h == host,
            })
    }

    /// `scheme://host:port` of the proxy, for messages (never the credentials).
    pub fn address(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// Opens a tunnel to `target` (`host:port`) through the proxy, within `timeout`.
    pub async fn connect(
        &self,
        target: &str,
        timeout: Duration,
        source: Option<std::net::IpAddr>,
    ) -> Result<UpstreamStream, UpstreamError> {
        let work = async {
            let mut stream = self.dial(source).await?;
            self.open_tunnel(&mut stream, target).await?;
            Ok(stream)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(self.fail(
                UpstreamErrorKind::ConnectTimeout,
                format!("no tunnel to {target} within {timeout:?}"),
            )),
        }
    }

    fn fail(&self, kind: UpstreamErrorKind, what: String) -> UpstreamError {
        UpstreamError::new(kind, format!("upstream proxy {}: {what}", self.address()))
    }

    /// A connection to the proxy itself, TLS for an `https://` proxy (verified for its
    /// host before any credential is sent).
    async fn dial(
        &self,
        source: Option<std::net::IpAddr>,
    ) -> Result<UpstreamStream, UpstreamError> {
        // The proxy is operator configuration, not a request's destination: it is resolved
        // here and every address is tried in turn.
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.fail(UpstreamErrorKind::DnsFailed, format!("cannot resolve: {e}")))?
            .collect();
        let mut tcp = Err(self.fail(UpstreamErrorKind::DnsFailed, "no address".into()));
        for addr in addrs {
            match super::tcp_connect(addr, source).await {
                Ok(s) => {
                    tcp = Ok(s);
                    break;
                }
                Err(e) => {
                    tcp = Err(self.fail(
                        UpstreamErrorKind::ConnectFailed,
                        format!("connecting to {addr}: {e}"),
                    ))
                }
            }
        }
        let tcp = tcp?;
        if !self.https {
            return Ok(UpstreamStream::Tcp(tcp));
        }
        let tls = self.tls.as_ref().ok_or_else(|| {
            self.fail(
                UpstreamErrorKind::TlsHandshake,
                "an https:// proxy needs a TLS client and none is configured".into(),
            )
        })?;
        let io = tls.handshake(tcp, &self.host).await.map_err(|e| {
            self.fail(
                UpstreamErrorKind::TlsHandshake,
                format!("TLS handshake: {e}"),
            )
        })?;
        Ok(UpstreamStream::Tunnel(io))
    }

    /// Sends `CONNECT target` and reads the proxy's answer; anything but a 2xx status is
    /// a refusal with the proxy's status line.
    async fn open_tunnel(
        &self,
        stream: &mut UpstreamStream,
        target: &str,
    ) -> Result<(), UpstreamError> {
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(a) = &self.authorization {
            head.push_str("Proxy-Authorization: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| self.fail(UpstreamErrorKind::ConnectFailed, e.to_string()))?;
        // Read the answer's head byte by byte: nothing of the tunnel may be consumed.
        let mut answer = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() > 8192 {
                return Err(self.fail(UpstreamErrorKind::Protocol, "answer head too large".into()));
            }
            let n = stream
                .read(&mut byte)
                .await
                .map_err(|e| self.fail(UpstreamErrorKind::Protocol, e.to_string()))?;
            if n == 0 {
                return Err(self.fail(
                    UpstreamErrorKind::Protocol,
                    "closed before answering CONNECT".into(),
                ));
            }
            answer.push(byte[0]);
        }
        if connect_succeeded(&answer) {
            return Ok(());
        }
        let status_line = String::from_utf8_lossy(&answer);
        let line = status_line.lines().next().unwrap_or("").to_owned();
        Err(self.fail(
            UpstreamErrorKind::ConnectFailed,
            format!("refused CONNECT {target}: {line}"),
        ))
    }
}

/// Whether a proxy's answer head starts `HTTP/1.x 2dd `: decided on the bytes, so that no
/// stray byte or odd status (`2`, `2000`) reads as success.
fn connect_succeeded(head: &[u8]) -> bool {
    let Some(rest) = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))
    else {
        return false;
    };
    matches!(rest, [b'2', a, b, b' ' | b'\r', ..] if a.is_ascii_digit() && b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a well-formed 2xx status line opens the tunnel (a bare `2` or a four-digit
    /// status once counted as success).
    #[test]
    fn connect_answer_is_read_exactly() {
        for ok in [
            &b"HTTP/1.1 200 Connection established\r\n\r\n"[..],
            b"HTTP/1.0 200\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            assert!(connect_succeeded(ok), "{}", String::from_utf8_lossy(ok));
        }
        for refused in [
            &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..],
            b"HTTP/1.1 2 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"xHTTP/1.1 200 OK\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(
                !connect_succeeded(refused),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn parses_and_scopes() {
        let p = UpstreamProxy::parse("http://user:pw@proxy.corp:3128").unwrap();
        assert_eq!(p.address(), "http://proxy.corp:3128");
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpwdw=="));
        assert!(p.applies_to("anything.example"));
        let p = p.only_for(vec!["*.example.com".into(), "api.test".into()]);
        assert!(p.applies_to("a.example.com") && p.applies_to("api.test"));
        assert!(!p.applies_to("example.com") && !p.applies_to("other.test"));
        let p = UpstreamProxy::parse("https://proxy.corp:8443").unwrap();
        assert!(p.is_https());
        assert_eq!(p.address(), "https://proxy.corp:8443");
        let e = UpstreamProxy::parse("http://user:hunter2@proxy").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        for bad in [
            "proxy:3128",
            "http://proxy",
            "https://proxy",
            "socks5://proxy:1080",
            "http://:80",
        ] {
            assert!(UpstreamProxy::parse(bad).is_err(), "{bad}");
        }
    }
}
