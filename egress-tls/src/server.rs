//! TLS termination for `Gateway` servers with `tls.mode` `SIMPLE` or `MUTUAL`.

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The server configuration: this certificate and key; with `client_ca`, clients must show
/// a certificate it signed (`MUTUAL`). ALPN offers HTTP/2 and HTTP/1.1.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("serverCertificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("serverCertificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "serverCertificate {}: no certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("privateKey {}: {e}", key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("caCertificates {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("caCertificates {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("caCertificates {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("caCertificates {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The principal a client certificate proves: its URI SAN (`spiffe://…`), else its first
/// DNS SAN.
pub fn certificate_principal(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let names = &san.value.general_names;
    names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .or_else(|| {
            names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        })
}

/// The `x-forwarded-client-cert` element Envoy writes for a verified client certificate
/// (`SANITIZE_SET` with Istio's `subject`, `uri` and `dns` details): `Hash` (SHA-256 of the
/// DER, hex), `Subject` (quoted), then each `URI` and `DNS` SAN. Values with `,`, `;`, `=` or
/// `"` are quoted and escaped, so a certificate cannot add elements or keys of its own.
pub fn forwarded_client_cert(cert: &CertificateDer<'_>) -> String {
    use std::fmt::Write;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = String::with_capacity(160);
    out.push_str("Hash=");
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return out;
    };
    out.push_str(";Subject=");
    quoted(&mut out, &parsed.subject().to_string());
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            let (key, v) = match n {
                GeneralName::URI(u) => ("URI", *u),
                GeneralName::DNSName(d) => ("DNS", *d),
                _ => continue,
            };
            out.push(';');
            out.push_str(key);
            out.push('=');
            if v.bytes()
                .any(|b| matches!(b, b',' | b';' | b'=' | b'"' | b'\\'))
            {
                quoted(&mut out, v);
            } else {
                out.push_str(v);
            }
        }
    }
    out
}

fn quoted(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // A header value is visible ASCII: control characters are dropped, others
            // that are not ASCII shown as `?` (the Hash identifies the certificate exactly).
            c if c.is_control() => {}
            c if !c.is_ascii() => out.push('?'),
            c => out.push(c),
        }
    }
    out.push('"');
}
