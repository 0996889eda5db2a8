//! TLS origination through the real binary: plain HTTP in, TLS to the origin, as Istio's
//! "Egress TLS Origination" task configures it (port 80 with targetPort 443, port-level
//! DestinationRule tls SIMPLE). Certificates are made in the test (rcgen).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::tls::{TestCa, TlsOrigin};
use egress_tests::{Gateway, curl_async};

fn config(ca: &std::path::Path, tls_extra: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [secure.test]
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: 443
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls}}
spec:
  host: secure.test
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls:
        mode: SIMPLE
        caCertificates: {ca}
{tls_extra}"#,
        ca = ca.display()
    )
}

fn resolve(origin: &TlsOrigin) -> String {
    format!("--resolve=secure.test:443:127.0.0.1:{}", origin.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_in_tls_out_with_pooling() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["secure.test"]), None).await;
    let gw = Gateway::start(&config(&ca.pem_path, ""), &[&resolve(&origin)]);
    for _ in 0..5 {
        let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/data"]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello over tls"),
            "{r:?}\n{}",
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert_eq!(
        origin.snis(),
        [Some("secure.test".to_owned())],
        "one pooled TLS connection with SNI"
    );
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
    let m = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert!(
        m.contains("egress_upstream_connections{tls=\"true\"} 1\n")
            && m.contains("egress_upstream_connections_opened_total 1\n"),
        "{m}"
    );
}

/// ALPN offers h2 and http/1.1: an origin that picks h2 gets HTTP/2, and concurrent
/// requests share one multiplexed connection; an HTTP/1.1-only origin (the test above) keeps
/// HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_that_pick_h2_get_one_multiplexed_connection() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start_h2(&ca.leaf(&["secure.test"])).await;
    let gw = Gateway::start(&config(&ca.pem_path, ""), &[&resolve(&origin)]);
    let first = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/warm"]).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "hello over tls"),
        "{first:?}\n{}",
        gw.log()
    );
    let proxy = gw.proxy_url();
    let mut all = Vec::new();
    for i in 0..8 {
        let proxy = proxy.clone();
        all.push(tokio::spawn(async move {
            curl_async(&["-x", &proxy, &format!("http://secure.test/n{i}")]).await
        }));
    }
    for r in all {
        let r = r.await.unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello over tls"),
            "{r:?}"
        );
    }
    assert_eq!(
        origin.snis(),
        [Some("secure.test".to_owned())],
        "one connection"
    );
    let versions = origin.versions.lock().unwrap().clone();
    assert_eq!(versions.len(), 9);
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_fail_clearly_unless_verification_is_off() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["secure.test"]), None).await;
    let gw = Gateway::start(&config(&other.pem_path, ""), &[&resolve(&origin)]);
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("x-egress-error").as_deref(),
        Some("tls-handshake-failed")
    );
    assert!(
        r.body.contains("secure.test") && r.body.to_lowercase().contains("certificate"),
        "{}",
        r.body
    );
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    let gw = Gateway::start(
        &config(&other.pem_path, "        insecureSkipVerify: true\n"),
        &[&resolve(&origin)],
    );
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());

    // A certificate for another name fails the default SAN check (the SNI)...
    let wrong = TlsOrigin::start(&ca.leaf(&["elsewhere.test"]), None).await;
    let gw = Gateway::start(&config(&ca.pem_path, ""), &[&resolve(&wrong)]);
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(
        r.header("x-egress-error").as_deref(),
        Some("tls-handshake-failed"),
        "{r:?}"
    );
    // ...and passes when subjectAltNames names it.
    let gw = Gateway::start(
        &config(&ca.pem_path, "        subjectAltNames: [elsewhere.test]\n"),
        &[&resolve(&wrong)],
    );
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_configured_client_certificate() {
    let ca = TestCa::new();
    let client_ca = TestCa::new();
    let client = client_ca.leaf(&["client.egress.test"]);
    let origin = TlsOrigin::start(&ca.leaf(&["secure.test"]), Some(&client_ca)).await;
    let mutual = config(&ca.pem_path, "").replace("mode: SIMPLE", "mode: MUTUAL")
        + &format!(
            "        clientCertificate: {}\n        privateKey: {}\n",
            client.cert_path.display(),
            client.key_path.display()
        );
    let gw = Gateway::start(&mutual, &[&resolve(&origin)]);
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(
        origin
            .client_certs
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // Without the client certificate the origin refuses; the gateway reports a 502.
    let gw = Gateway::start(&config(&ca.pem_path, ""), &[&resolve(&origin)]);
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.header("x-egress-error").is_some(), "{r:?}");
}

#[test]
fn mesh_only_tls_settings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (tls, want) in [
        (
            "mode: ISTIO_MUTUAL",
            "ISTIO_MUTUAL is not supported outside a mesh",
        ),
        (
            "mode: SIMPLE\n        credentialName: my-secret",
            "\"my-secret\" names a Kubernetes Secret: give --credentials DIR",
        ),
        (
            "mode: SIMPLE\n        caCertificates: /nonexistent/ca.pem",
            "caCertificates: cannot read",
        ),
        (
            "mode: MUTUAL",
            "MUTUAL needs clientCertificate and privateKey",
        ),
    ] {
        let path = dir.path().join("dr.yaml");
        std::fs::write(
            &path,
            format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: t}}\nspec:\n  host: a.test\n  trafficPolicy:\n    tls:\n        {tls}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(egress_tests::gateway_bin())
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tls}: {err}");
        assert!(
            err.contains(want) && err.contains("spec.trafficPolicy.tls"),
            "{tls}: {err}"
        );
    }
}

/// A mounted Kubernetes Secret for `credentialName`: `DIR/NAME/{tls.crt,tls.key,ca.crt}`.
fn secret(dir: &std::path::Path, name: &str, files: &[(&str, &std::path::Path)]) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (key, from) in files {
        std::fs::copy(from, d.join(key)).unwrap();
    }
}

/// `credentialName` reads the Secret from `--credentials`: a MUTUAL DestinationRule
/// presents its tls.crt/tls.key and verifies the origin with its ca.crt (or a `-cacert`
/// Secret); a Gateway server terminates with its Secret; a Secret that is not there is an
/// error naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_names_read_mounted_secrets() {
    let ca = TestCa::new();
    let client_ca = TestCa::new();
    let client = client_ca.leaf(&["client.egress.test"]);
    let origin = TlsOrigin::start(&ca.leaf(&["secure.test"]), Some(&client_ca)).await;
    let creds = tempfile::tempdir().unwrap();
    secret(
        creds.path(),
        "client-credential",
        &[
            ("tls.crt", &client.cert_path),
            ("tls.key", &client.key_path),
            ("ca.crt", &ca.pem_path),
        ],
    );
    // The CA of the second Secret is its own `-cacert` Secret, with Istio's key names.
    secret(
        creds.path(),
        "split",
        &[("cert", &client.cert_path), ("key", &client.key_path)],
    );
    secret(creds.path(), "split-cacert", &[("cacert", &ca.pem_path)]);
    let creds_arg = creds.path().display().to_string();
    for name in ["client-credential", "split"] {
        let yaml = config(&ca.pem_path, "").replace(
            &format!(
                "mode: SIMPLE\n        caCertificates: {}",
                ca.pem_path.display()
            ),
            &format!("mode: MUTUAL\n        credentialName: {name}"),
        );
        assert!(yaml.contains("credentialName"), "{yaml}");
        let gw = Gateway::start(&yaml, &[&resolve(&origin), "--credentials", &creds_arg]);
        let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
        assert_eq!(r.status, 200, "{name}: {r:?}\n{}", gw.log());
    }
    assert_eq!(
        origin
            .client_certs
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    // A Gateway server's credentialName: its certificate is served.
    let server = ca.leaf(&["gw.egress.test"]);
    secret(
        creds.path(),
        "gw-cert",
        &[
            ("tls.crt", &server.cert_path),
            ("tls.key", &server.key_path),
        ],
    );
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw_yaml = config(&ca.pem_path, "")
        + "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: egressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [secure.test]\n    tls: {mode: SIMPLE, credentialName: gw-cert}\n";
    let gw = Gateway::start(
        &gw_yaml,
        &[
            &resolve(&origin),
            "--credentials",
            &creds_arg,
            "--gateway-port-offset",
            &(listen - 443).to_string(),
        ],
    );
    let r = curl_async(&[
        "--cacert",
        &ca.pem_path.display().to_string(),
        "--connect-to",
        &format!("gw.egress.test:443:127.0.0.1:{listen}"),
        "-H",
        "Host: secure.test",
        "https://gw.egress.test/",
    ])
    .await;
    // The origin wants a client certificate this DestinationRule does not give: the
    // listener's TLS worked, the upstream hop is refused.
    assert_eq!(r.status, 502, "{r:?}\n{}", gw.log());
    // A Secret that is not mounted.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, gw_yaml.replace("gw-cert", "missing")).unwrap();
    let out = std::process::Command::new(egress_tests::gateway_bin())
        .args([
            "check",
            "--credentials",
            &creds_arg,
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("spec.servers[0].tls.credentialName: no Secret \"missing\""),
        "{err}"
    );
}

/// CONNECT to a port declared TLS: the ClientHello must name the CONNECT host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_to_tls_ports_check_the_sni() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["secure.test", "other.test"]), None).await;
    let port = origin.port();
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: secure}}\nspec:\n  hosts: [secure.test]\n  ports: [{{number: {port}, name: tls, protocol: TLS}}]\n  resolution: DNS\n"
    );
    let gw = Gateway::start(&se, &[&format!("--resolve=secure.test:{port}:127.0.0.1")]);

    // A real client: curl through the tunnel, verifying the origin with the test CA.
    let ca_path = ca.pem_path.display().to_string();
    let r = curl_async(&[
        "--cacert",
        &ca_path,
        "-x",
        &gw.proxy_url(),
        &format!("https://secure.test:{port}/"),
    ])
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );

    // Open a tunnel by hand, then speak TLS (or not) inside it.
    async fn tunnel(gw: &Gateway, port: u16) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        s.write_all(
            format!("CONNECT secure.test:{port} HTTP/1.1\r\nHost: secure.test:{port}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        s
    }
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::pem::PemObject::from_pem_file(&ca.pem_path).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    // Domain fronting: a tunnel to secure.test carrying a hello for other.test.
    let s = tunnel(&gw, port).await;
    let fronted = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        connector.connect("other.test".try_into().unwrap(), s),
    )
    .await
    .unwrap();
    assert!(fronted.is_err(), "a fronted handshake went through");
    assert!(gw.wait_log("reason=\"sni-mismatch\""), "{}", gw.log());

    // Plain bytes in a TLS tunnel.
    let mut s = tunnel(&gw, port).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        rest.is_empty(),
        "plain bytes got an answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(gw.wait_log("reason=\"not-tls\""), "{}", gw.log());

    // Only curl's request reached the origin, with its own SNI.
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let snis: Vec<_> = origin.snis().into_iter().flatten().collect();
    assert_eq!(snis, ["secure.test"]);
    let metrics = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert!(
        metrics.contains("egress_refusals_total{reason=\"sni-mismatch\"} 1"),
        "{metrics}"
    );
}

/// Istio's "Egress using Wildcard Hosts" task (single-host variant): a PASSTHROUGH Gateway
/// server for `*.wikipedia.org` and a `tls` route sending every such SNI to the registered
/// `www.wikipedia.org`, which a local TLS origin stands in for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_listener_routes_by_sni() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["*.wikipedia.org"]), None).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: www-wikipedia
spec:
  hosts:
  - www.wikipedia.org
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - "*.wikipedia.org"
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-wikipedia-through-egress-gateway
spec:
  hosts:
  - "*.wikipedia.org"
  gateways:
  - mesh
  - istio-egressgateway
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - "*.wikipedia.org"
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: wikipedia
        port:
          number: 443
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - "*.wikipedia.org"
    route:
    - destination:
        host: www.wikipedia.org
        port:
          number: 443
      weight: 100
"#;
    let offset = (free - 443).to_string();
    let gw = Gateway::start(
        yaml,
        &[
            &format!(
                "--resolve=www.wikipedia.org:443:127.0.0.1:{}",
                origin.port()
            ),
            "--gateway-port-offset",
            &offset,
        ],
    );
    let ca_path = ca.pem_path.display().to_string();
    for host in ["en.wikipedia.org", "de.wikipedia.org"] {
        let r = curl_async(&[
            "--cacert",
            &ca_path,
            "--resolve",
            &format!("{host}:{free}:127.0.0.1"),
            &format!("https://{host}:{free}/wiki"),
        ])
        .await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello over tls"),
            "{host}: {r:?}\n{}",
            gw.log()
        );
    }
    // An SNI outside the server's hosts is closed without dialling anything.
    let r = curl_async(&[
        "--cacert",
        &ca_path,
        "--resolve",
        &format!("example.com:{free}:127.0.0.1"),
        &format!("https://example.com:{free}/"),
    ])
    .await;
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        gw.wait_log("TLS passthrough connection closed"),
        "{}",
        gw.log()
    );
    let snis: Vec<_> = origin.snis().into_iter().flatten().collect();
    assert_eq!(snis, ["en.wikipedia.org", "de.wikipedia.org"]);
}

/// Gateway servers that terminate TLS from workloads: SIMPLE, and MUTUAL with client
/// certificates verified against the server's caCertificates.
/// A client that completes the TLS handshake (HTTP/1.1 or h2 by ALPN) and then sends
/// nothing is closed by the header read timeout, not held.
async fn silent_tls_clients_are_closed(port: u16, ca: &TestCa) {
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca.pem_path).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    // An h2 server's SETTINGS and pings may come first.
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "silent TLS client ({alpn:?}) left open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_gateway_servers() {
    let origin = egress_tests::Origin::start().await;
    let server_ca = TestCa::new();
    let server = server_ca.leaf(&["api.test"]);
    let client_ca = TestCa::new();
    let client = client_ca.leaf_with(
        &["client.test"],
        Some("spiffe://cluster.local/ns/apps/sa/client"),
    );
    let (simple_port, mutual_port) = {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        )
    };
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {simple_port}, name: https, protocol: HTTPS}}
    hosts: [api.test]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: {mutual_port}, name: https-mtls, protocol: HTTPS}}
    hosts: [api.test]
    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {client_ca}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.test]
  gateways: [istio-egressgateway]
  http:
  - route: [{{destination: {{host: api.test, port: {{number: 80}}}}}}]
"#,
        cert = server.cert_path.display(),
        key = server.key_path.display(),
        client_ca = client_ca.pem_path.display(),
    );
    let gw = Gateway::start(
        &yaml,
        &[
            &format!("--resolve=api.test:80:127.0.0.1:{}", origin.port()),
            "--header-read-timeout=500ms",
        ],
    );
    let ca = server_ca.pem_path.display().to_string();
    silent_tls_clients_are_closed(simple_port, &server_ca).await;
    let url = |port: u16| format!("https://api.test:{port}/over-tls");
    let resolve = |port: u16| format!("api.test:{port}:127.0.0.1");

    // Identity headers are the gateway's alone: a client's x-forwarded-client-cert is
    // removed (SANITIZE) on a listener that verified no certificate...
    let forged =
        "x-forwarded-client-cert: By=spiffe://x;URI=spiffe://cluster.local/ns/admin/sa/root";
    let r = curl_async(&[
        "--cacert",
        &ca,
        "-H",
        forged,
        "-H",
        "x-egress-denied: none",
        "--resolve",
        &resolve(simple_port),
        &url(simple_port),
    ])
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from origin"),
        "{r:?}\n{}",
        gw.log()
    );
    let seen = origin.requests().pop().unwrap();
    assert!(
        !seen.headers.contains_key("x-forwarded-client-cert"),
        "{seen:?}"
    );
    assert!(!seen.headers.contains_key("x-egress-denied"), "{seen:?}");

    let r = curl_async(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve(mutual_port),
        &url(mutual_port),
    ])
    .await;
    assert_ne!(
        r.status, 200,
        "MUTUAL served a client without a certificate: {r:?}"
    );
    let r = curl_async(&[
        "--cacert",
        &ca,
        "--cert",
        &client.cert_path.display().to_string(),
        "--key",
        &client.key_path.display().to_string(),
        "-H",
        forged,
        // Naming the gateway's header as hop-by-hop does not remove the gateway's value.
        "-H",
        "Connection: x-forwarded-client-cert",
        "--resolve",
        &resolve(mutual_port),
        &url(mutual_port),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(origin.count(), 2);
    // ... and set to the verified certificate (SANITIZE_SET) where one was verified.
    let seen = origin.requests().pop().unwrap();
    let xfcc: Vec<&str> = seen
        .headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    let hash = xfcc[0]
        .strip_prefix("Hash=")
        .and_then(|r| r.split(';').next())
        .unwrap();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{xfcc:?}"
    );
    assert!(
        xfcc[0].contains(";URI=spiffe://cluster.local/ns/apps/sa/client")
            && xfcc[0].contains(";DNS=client.test")
            && !xfcc[0].contains("ns/admin"),
        "{xfcc:?}"
    );
    // The client certificate's identity labels Istio's metrics.
    let m = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/apps/sa/client\"")),
        "{m}"
    );
    assert!(
        gw.wait_log("TLS handshake with a client failed"),
        "{}",
        gw.log()
    );
}

#[test]
fn client_certificate_principal_is_the_uri_san() {
    let ca = TestCa::new();
    let with_uri = ca.leaf_with(
        &["client.test"],
        Some("spiffe://cluster.local/ns/apps/sa/client"),
    );
    assert_eq!(
        egress_tls::certificate_principal(&with_uri.chain[0]).as_deref(),
        Some("spiffe://cluster.local/ns/apps/sa/client")
    );
    let dns_only = ca.leaf(&["client.test"]);
    assert_eq!(
        egress_tls::certificate_principal(&dns_only.chain[0]).as_deref(),
        Some("client.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_server_certificates_are_refused_with_ca_crl() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["secure.test"]);
    let crl = ca.crl_revoking(&leaf);
    let origin = TlsOrigin::start(&leaf, None).await;
    let gw = Gateway::start(
        &config(&ca.pem_path, &format!("        caCrl: {}\n", crl.display())),
        &[&resolve(&origin)],
    );
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(r.status, 502, "{r:?}\n{}", gw.log());
    assert_eq!(
        r.header("x-egress-error").as_deref(),
        Some("tls-handshake-failed")
    );
    assert!(r.body.to_lowercase().contains("revoked"), "{}", r.body);
    // The same certificate without the CRL is accepted.
    let gw = Gateway::start(&config(&ca.pem_path, ""), &[&resolve(&origin)]);
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// ASM's `ASMEgressTrafficPolicy` with `httpsUpgrade`: plain HTTP on port 80 leaves the
/// gateway as TLS to port 443, verified against the trust store (`SSL_CERT_FILE` here, as
/// the policy names no CA); a destination without the upgrade stays plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asm_egress_traffic_policy_https_upgrade() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["www.httpbin.test"]), None).await;
    let plain = egress_tests::Origin::start().await;
    let yaml = format!(
        r#"apiVersion: istio.alibabacloud.com/v1beta1
kind: ASMEgressTrafficPolicy
metadata:
  name: egressgateway-a
  namespace: istio-egress
spec:
  byEgressGateway:
    name: egressgateway-a
  egressRules:
  - from:
    - namespace: mytest
      workloadSelector:
        app: sleep-a
    to:
    - name: httpbin-service-http
      hosts:
      - www.httpbin.test
      port:
        name: http
        number: 80
        protocol: HTTP
      byEgressGateway:
        port: 80
      httpsUpgrade:
        enabled: true
        port: 443
    - name: plain-http
      hosts: [plain.test]
      port: {{name: http, number: {port}, protocol: HTTP}}
      byEgressGateway: {{port: 8080}}
"#,
        port = plain.port()
    );
    let ca_file = ca.pem_path.display().to_string();
    let gw = Gateway::start_with_env(
        &yaml,
        &[
            &format!("--resolve=www.httpbin.test:443:127.0.0.1:{}", origin.port()),
            &format!("--resolve=plain.test:{}:127.0.0.1", plain.port()),
        ],
        &[("SSL_CERT_FILE", &ca_file)],
    );
    let r = curl_async(&["-x", &gw.proxy_url(), "http://www.httpbin.test/get"]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(origin.snis(), [Some("www.httpbin.test".to_owned())]);
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://plain.test:{}/x", plain.port()),
    ])
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from origin"),
        "{r:?}"
    );
    // Anything the policy does not name is refused (REGISTRY_ONLY).
    let r = curl_async(&["-x", &gw.proxy_url(), "http://other.test/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    // `from` cannot be enforced here, and the gateway says so.
    assert!(
        gw.log().contains("sources are not enforced"),
        "{}",
        gw.log()
    );
}
