//! Test PKI (rcgen) and a recording TLS origin.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// A certificate authority made for one test, with its PEM on disk.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub pem_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// A certificate and key signed by a [`TestCa`], as PEM files and rustls types.
pub struct Leaf {
    pub serial: u64,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "egress test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, issuer.pem()).unwrap();
        TestCa {
            issuer,
            pem_path,
            _dir: dir,
        }
    }

    /// A leaf certificate for these DNS names.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, None)
    }

    /// A leaf certificate for these DNS names and, optionally, a URI SAN (`spiffe://…`).
    pub fn leaf_with(&self, names: &[&str], uri: Option<&str>) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        static NEXT: AtomicUsize = AtomicUsize::new(1000);
        let serial = NEXT.fetch_add(1, Ordering::SeqCst) as u64;
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let dir = self._dir.path();
        let cert_path = dir.join(format!("{}.pem", names[0]));
        let key_path = dir.join(format!("{}.key", names[0]));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            serial,
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            cert_path,
            key_path,
        }
    }
}

impl TestCa {
    /// A PEM file with a CRL, signed by this CA, that revokes `leaf`.
    pub fn crl_revoking(&self, leaf: &Leaf) -> PathBuf {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(leaf.serial),
                revocation_time: now - time::Duration::minutes(5),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).unwrap();
        let path = self
            ._dir
            .path()
            .join(format!("revoked-{}.crl.pem", leaf.serial));
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS origin on 127.0.0.1:0 that records the SNI of each handshake and the client
/// certificates it was shown.
#[derive(Clone)]
pub struct TlsOrigin {
    pub addr: SocketAddr,
    pub handshakes: Arc<Mutex<Vec<Option<String>>>>,
    pub client_certs: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    /// The HTTP version of each request served.
    pub versions: Arc<Mutex<Vec<http::Version>>>,
}

impl TlsOrigin {
    /// Serves `leaf`; with `client_ca`, requires client certificates signed by it.
    pub async fn start(leaf: &Leaf, client_ca: Option<&TestCa>) -> TlsOrigin {
        Self::start_alpn(leaf, client_ca, &[b"http/1.1"]).await
    }

    /// An origin that also offers HTTP/2 in ALPN (and prefers it).
    pub async fn start_h2(leaf: &Leaf) -> TlsOrigin {
        Self::start_alpn(leaf, None, &[b"h2", b"http/1.1"]).await
    }

    async fn start_alpn(leaf: &Leaf, client_ca: Option<&TestCa>, alpn: &[&[u8]]) -> TlsOrigin {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_file(&ca.pem_path).unwrap())
                    .unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = TlsOrigin {
            addr: listener.local_addr().unwrap(),
            handshakes: Arc::default(),
            client_certs: Arc::default(),
            requests: Arc::default(),
            versions: Arc::default(),
        };
        let o = origin.clone();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let o = o.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(io).await else {
                        o.handshakes.lock().unwrap().push(None);
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    o.handshakes
                        .lock()
                        .unwrap()
                        .push(Some(conn.server_name().unwrap_or("").to_owned()));
                    if conn.peer_certificates().is_some_and(|c| !c.is_empty()) {
                        o.client_certs.fetch_add(1, Ordering::SeqCst);
                    }
                    let requests = o.requests.clone();
                    let versions = o.versions.clone();
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        versions.lock().unwrap().push(req.version());
                        async {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"hello over tls"),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        origin
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The SNI of every successful handshake (`None` for failed ones).
    pub fn snis(&self) -> Vec<Option<String>> {
        self.handshakes.lock().unwrap().clone()
    }
}
