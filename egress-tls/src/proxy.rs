//! TLS to an `https://` upstream proxy, and to the gateway's other TLS peers (an OTLP
//! collector).

use egress_core::ctx::TlsSettings;
use egress_core::transport::{Io, ProxyTls};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpStream;

use crate::config::client_config;

/// The TLS client the gateway uses to reach an `https://` upstream proxy: the proxy's
/// certificate is verified against `ca` (else `SSL_CERT_FILE`, else the webpki roots) for the
/// host name in the proxy URL, and HTTP/1.1 is the only protocol offered (a `CONNECT` is
/// HTTP/1.1).
#[derive(Debug)]
pub struct ProxyTlsClient {
    config: Arc<ClientConfig>,
}

impl ProxyTlsClient {
    /// Builds the client; `ca` is a PEM file of roots trusted for the proxy.
    pub fn new(ca: Option<PathBuf>) -> Result<Self, String> {
        Self::with_alpn(ca, vec![b"http/1.1".to_vec()])
    }

    /// The same client for another TLS peer of the gateway's own (an OTLP collector),
    /// offering these ALPN protocols (`h2` for gRPC).
    pub fn with_alpn(ca: Option<PathBuf>, alpn: Vec<Vec<u8>>) -> Result<Self, String> {
        let settings = TlsSettings {
            ca_certificates: ca,
            ..TlsSettings::default_trust("upstream proxy")
        };
        let mut config = client_config(&settings)?;
        config.alpn_protocols = alpn;
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl ProxyTls for ProxyTlsClient {
    fn handshake(
        &self,
        tcp: TcpStream,
        server_name: &str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send>> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
        Box::pin(async move {
            let tls = connector.connect(name?, tcp).await?;
            Ok(Box::new(tls) as Box<dyn Io>)
        })
    }
}
