//! `EgressConnector`: a hyper-util connector for plain and TLS upstream connections.
//!
//! `http://IP:PORT` URIs are dialled as they are (the Upstream put a validated address
//! there). `https://SNI:PORT` URIs are dialled at the addresses the Upstream recorded for
//! that key in the [`DialTable`], then TLS is negotiated with the SNI and the rustls client
//! configuration built from the [`TlsSettings`] (built once per distinct settings value and
//! kept, so sessions resume across connections).

use egress_core::BoxError;
use egress_core::ctx::TlsSettings;
use egress_core::error::{UpstreamError, UpstreamErrorKind};
use egress_core::transport::{DialTable, UpstreamStream};
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::client_config;

/// Upstream connections the pool holds open, and how many were ever made.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Plain connections open now.
    pub plain_open: std::sync::atomic::AtomicU64,
    /// TLS connections open now.
    pub tls_open: std::sync::atomic::AtomicU64,
    /// Connections made.
    pub opened: std::sync::atomic::AtomicU64,
}

/// Counts a connection as open for as long as it lives.
#[derive(Debug)]
struct OpenGuard {
    stats: Arc<ConnStats>,
    tls: bool,
}

impl OpenGuard {
    fn new(stats: &Arc<ConnStats>, tls: bool) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        stats.opened.fetch_add(1, Relaxed);
        if tls {
            stats.tls_open.fetch_add(1, Relaxed);
        } else {
            stats.plain_open.fetch_add(1, Relaxed);
        }
        Self {
            stats: stats.clone(),
            tls,
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.tls {
            self.stats.tls_open.fetch_sub(1, Relaxed);
        } else {
            self.stats.plain_open.fetch_sub(1, Relaxed);
        }
    }
}

/// Dials plain and TLS upstream connections; see the module docs.
#[derive(Clone, Debug)]
pub struct EgressConnector {
    table: DialTable,
    connect_timeout: Duration,
    source: Option<IpAddr>,
    stats: Arc<ConnStats>,
    // Held only to look up or insert a built configuration, never across an await.
    configs: Arc<Mutex<HashMap<Arc<TlsSettings>, Arc<ClientConfig>>>>,
}

impl EgressConnector {
    /// A connector reading `table`, with this TCP connect timeout (also bounding the TLS
    /// handshake) and optional fixed source address.
    pub fn new(table: DialTable, connect_timeout: Duration, source: Option<IpAddr>) -> Self {
        Self {
            table,
            connect_timeout,
            source,
            stats: Arc::default(),
            configs: Arc::default(),
        }
    }

    /// Counts connections into `stats` (shared by every connector of a gateway).
    pub fn with_stats(mut self, stats: Arc<ConnStats>) -> Self {
        self.stats = stats;
        self
    }

    fn config(&self, settings: &Arc<TlsSettings>) -> Result<Arc<ClientConfig>, UpstreamError> {
        if let Some(c) = self
            .configs
            .lock()
            .ok()
            .and_then(|m| m.get(settings).cloned())
        {
            return Ok(c);
        }
        let built = client_config(settings).map_err(|e| {
            UpstreamError::new(
                UpstreamErrorKind::TlsHandshake,
                format!("TLS settings of {}: {e}", settings.origin),
            )
        })?;
        let built = Arc::new(built);
        if let Ok(mut m) = self.configs.lock() {
            m.insert(settings.clone(), built.clone());
        }
        Ok(built)
    }

    async fn handshake(
        &self,
        host: &str,
        settings: &Arc<TlsSettings>,
        tcp: UpstreamStream,
        t: Duration,
    ) -> Result<Conn, BoxError> {
        let config = self.config(settings)?;
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| {
            UpstreamError::new(
                UpstreamErrorKind::TlsHandshake,
                format!("invalid SNI {host:?}: {e}"),
            )
        })?;
        let peer = tcp
            .peer_addr()
            .map_or_else(|| "the upstream proxy".to_owned(), |a| a.to_string());
        let tls = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(t, tls.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(Conn::tls(stream, &self.stats)),
            Ok(Err(e)) => Err(UpstreamError::new(
                UpstreamErrorKind::TlsHandshake,
                format!(
                    "TLS handshake with {host} at {peer} failed ({})",
                    settings.origin
                ),
            )
            .with_source(e)
            .into()),
            Err(_) => Err(UpstreamError::new(
                UpstreamErrorKind::TlsHandshake,
                format!("TLS handshake with {host} at {peer} took longer than {t:?}"),
            )
            .into()),
        }
    }

    async fn tcp(&self, addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
        egress_core::transport::tcp_connect(addr, source).await
    }
}

impl tower::Service<Uri> for EgressConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("connector: URI without a host")?;
            let https = uri.scheme_str() == Some("https");
            let port = match uri.port_u16() {
                Some(p) => p,
                None if https => 443,
                None => return Err("connector: URI without a port".into()),
            };
            let t = this.connect_timeout;
            let entry = this.table.get(host, port);
            let source = entry.as_ref().and_then(|e| e.source).or(this.source);
            // A key made distinct by a fixed source names the real server in the entry.
            let sni: String = entry
                .as_ref()
                .and_then(|e| e.sni.as_deref())
                .unwrap_or(host)
                .to_owned();
            if let Some(proxy) = entry.as_ref().and_then(|e| e.proxy.clone()) {
                let target = format!("{sni}:{port}");
                let tcp = proxy.connect(&target, t, source).await?;
                let Some(tls) = entry.and_then(|e| e.tls) else {
                    return Ok(Conn::plain(tcp, &this.stats));
                };
                return this.handshake(&sni, &tls, tcp, t).await;
            }
            let direct_ip = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok();
            if !https && let Some(ip) = direct_ip {
                let addr = SocketAddr::new(ip, port);
                let tcp = tokio::time::timeout(t, this.tcp(addr, source))
                    .await
                    .map_err(|_| timeout(addr, t))??;
                return Ok(Conn::plain(UpstreamStream::Tcp(tcp), &this.stats));
            }
            let entry = entry
                .ok_or_else(|| format!("connector: no validated address for {host}:{port}"))?;
            let settings = entry.tls.clone();
            if https && settings.is_none() {
                return Err(format!("connector: no TLS settings for {host}:{port}").into());
            }
            let mut last: Option<BoxError> = None;
            for addr in entry.addrs {
                let tcp = match tokio::time::timeout(t, this.tcp(addr, source)).await {
                    Ok(Ok(tcp)) => tcp,
                    Ok(Err(e)) => {
                        last = Some(e.into());
                        continue;
                    }
                    Err(_) => {
                        last = Some(timeout(addr, t).into());
                        continue;
                    }
                };
                return match &settings {
                    Some(s) => this.handshake(&sni, s, UpstreamStream::Tcp(tcp), t).await,
                    None => Ok(Conn::plain(UpstreamStream::Tcp(tcp), &this.stats)),
                };
            }
            Err(last.unwrap_or_else(|| "connector: no address".into()))
        })
    }
}

fn timeout(addr: SocketAddr, t: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("connecting to {addr} took longer than {t:?}"),
    )
}

/// A connection made by [`EgressConnector`].
#[derive(Debug)]
pub struct Conn(
    TokioIo<Stream>,
    #[allow(dead_code, reason = "counts while alive")] OpenGuard,
);

impl Conn {
    fn plain(tcp: UpstreamStream, stats: &Arc<ConnStats>) -> Self {
        Conn(
            TokioIo::new(Stream::Plain(tcp)),
            OpenGuard::new(stats, false),
        )
    }

    fn tls(tls: TlsStream<UpstreamStream>, stats: &Arc<ConnStats>) -> Self {
        Conn(
            TokioIo::new(Stream::Tls(Box::new(tls))),
            OpenGuard::new(stats, true),
        )
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        // The origin picked HTTP/2 in ALPN: the pool then multiplexes requests over this one
        // connection instead of opening one per request in flight.
        match self.0.inner() {
            Stream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The byte stream under a [`Conn`].
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP (directly, or a tunnel through an upstream proxy).
    Plain(UpstreamStream),
    /// TLS over TCP (directly, or through an upstream proxy's tunnel).
    Tls(Box<TlsStream<UpstreamStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
