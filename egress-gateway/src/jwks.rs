//! Fetching `jwksUri`s: the gateway's own HTTP(S) client (rustls, trust from
//! `SSL_CERT_FILE` or the webpki roots), one short-lived connection per fetch.

use bytes::Bytes;
use egress_core::ctx::TlsSettings;
use egress_policy::jwt::FetchJwks;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The largest key set read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Fetches key sets over HTTP or HTTPS.
pub(crate) struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
}

impl Fetcher {
    pub(crate) fn new() -> Result<Self, String> {
        let settings = TlsSettings::default_trust("jwksUri");
        let mut config = egress_tls::client_config(&settings)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: Arc::new(config),
        })
    }
}

async fn get(tls: Arc<rustls::ClientConfig>, uri: Uri) -> Result<String, String> {
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let req = Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let rsp = if https {
        let name = ServerName::try_from(bare).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        send(TokioIo::new(stream), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    if rsp.status() != StatusCode::OK {
        return Err(format!("answered {}", rsp.status()));
    }
    let body = Limited::new(rsp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_owned())
}

async fn send<T>(
    io: T,
    req: Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

impl FetchJwks for Fetcher {
    fn fetch(
        &self,
        uri: &str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        let tls = self.tls.clone();
        let uri: Result<Uri, _> = uri.parse();
        Box::pin(async move {
            let uri = uri.map_err(|e| format!("invalid URI: {e}"))?;
            match tokio::time::timeout(timeout, get(tls, uri)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        })
    }
}
