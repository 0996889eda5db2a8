//! Istio's egress tasks through the real binary, with the tasks' manifests as files under
//! `tests/fixtures/istio-tasks` (only certificate paths are replaced by files made here),
//! and the behaviours where this gateway once differed from Istio.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::tls::{TestCa, TlsOrigin};
use egress_tests::{Gateway, curl_async};
use std::path::Path;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/istio-tasks")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(egress_tests::gateway_bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// "Egress Gateways with TLS Origination", mutual TLS: the sidecar hop arrives over mTLS on
/// the Gateway's 443 server with the application's plain request; the gateway originates
/// mutual TLS to nginx.example.com. Three things the task needs: the `http` route's
/// `port: 443` is the server's port (not the `Host` port), the `tls`-only VirtualService for
/// the same host does not capture its HTTP, and the `ISTIO_MUTUAL` DestinationRule for the
/// gateway's own service is the sidecar's and is not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_mutual_tls_origination_task() {
    // The task's nginx.example.com CA signs the origin's certificate and the gateway's
    // client certificate; the mesh CA signs the gateway's server and the sidecar's client.
    let nginx_ca = TestCa::new();
    let origin = TlsOrigin::start(&nginx_ca.leaf(&["nginx.example.com"]), Some(&nginx_ca)).await;
    let client = nginx_ca.leaf(&["client.nginx.example.com"]);
    let mesh_ca = TestCa::new();
    let server = mesh_ca.leaf(&["nginx.example.com"]);
    let sidecar = mesh_ca.leaf_with(
        &["sleep.default"],
        Some("spiffe://cluster.local/ns/default/sa/sleep"),
    );
    let path = |p: &Path| p.display().to_string();
    let yaml = fixture("egress-gateway-mtls-origination.yaml")
        .replace("/etc/certs/cert-chain.pem", &path(&server.cert_path))
        .replace("/etc/certs/key.pem", &path(&server.key_path))
        .replace("/etc/certs/root-cert.pem", &path(&mesh_ca.pem_path))
        .replace(
            "/etc/istio/nginx-client-certs/tls.crt",
            &path(&client.cert_path),
        )
        .replace(
            "/etc/istio/nginx-client-certs/tls.key",
            &path(&client.key_path),
        )
        .replace(
            "/etc/istio/nginx-ca-certs/ca-chain.cert.pem",
            &path(&nginx_ca.pem_path),
        );
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");

    let listen = free_port();
    let gw = Gateway::start(
        &yaml,
        &[
            &format!(
                "--resolve=my-nginx.mesh-external.svc.cluster.local:443:127.0.0.1:{}",
                origin.port()
            ),
            "--gateway-port-offset",
            &(listen - 443).to_string(),
        ],
    );
    let connect_to = format!("nginx.example.com:443:127.0.0.1:{listen}");
    // The application sent `curl http://nginx.example.com`: its Host, with or without the
    // port, reaches the gateway inside the sidecar's mTLS.
    for host in ["nginx.example.com", "nginx.example.com:80"] {
        let r = curl_async(&[
            "--cacert",
            &path(&mesh_ca.pem_path),
            "--cert",
            &path(&sidecar.cert_path),
            "--key",
            &path(&sidecar.key_path),
            "--connect-to",
            &connect_to,
            "-H",
            &format!("Host: {host}"),
            "https://nginx.example.com/",
        ])
        .await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello over tls"),
            "Host {host}: {r:?}\n{}",
            gw.log()
        );
    }
    assert!(
        origin
            .client_certs
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    assert!(
        origin
            .snis()
            .iter()
            .all(|s| s.as_deref() == Some("nginx.example.com")),
        "{:?}",
        origin.snis()
    );
    // The server is MUTUAL: without the sidecar's certificate there is no request.
    let r = curl_async(&[
        "--cacert",
        &path(&mesh_ca.pem_path),
        "--connect-to",
        &connect_to,
        "https://nginx.example.com/",
    ])
    .await;
    assert_ne!(r.status, 200, "{r:?}");
}

/// A subset without labels is the whole service, and its traffic policy applies: here TLS
/// origination to a DNS host without listed endpoints (once refused by `check` as
/// "selects no endpoints").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_without_labels_takes_every_endpoint_and_its_policy() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["secure.test"]), None).await;
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [secure.test]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS}}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: secure.test
  subsets:
  - name: over-tls
    trafficPolicy:
      tls: {{mode: SIMPLE, caCertificates: {ca}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure}}
spec:
  hosts: [secure.test]
  http:
  - route:
    - destination: {{host: secure.test, subset: over-tls, port: {{number: 443}}}}
"#,
        ca = ca.pem_path.display()
    );
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    let gw = Gateway::start(
        &yaml,
        &[&format!(
            "--resolve=secure.test:443:127.0.0.1:{}",
            origin.port()
        )],
    );
    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.test/"]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(origin.snis(), [Some("secure.test".to_owned())]);
}

/// "Egress Gateways", HTTP, Gateway API tab: the gateway started on the task's manifests
/// (no labels to set) is the `cnn-egress-gateway` Gateway, opens its port-80 listener, and
/// forwards by the HTTPRoute bound to it; the ServiceEntry-bound route is the sidecars'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_http_task_gateway_api() {
    let origin = egress_tests::Origin::start().await;
    let yaml = fixture("egress-gateway-http.gateway-api.yaml");
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("HTTPRoute default/forward-cnn-from-egress-gateway -> Gateway default/cnn-egress-gateway: Accepted"),
        "{out}"
    );
    let listen = free_port();
    let gw = Gateway::start(
        &yaml,
        &[
            &format!("--resolve=edition.cnn.com:80:127.0.0.1:{}", origin.port()),
            "--gateway-port-offset",
            &(listen - 80).to_string(),
            "--access-log=on",
        ],
    );
    // As the sidecar sends it to the Gateway's listener, and as a forward-proxy client.
    let server = format!("http://127.0.0.1:{listen}/politics");
    let r = curl_async(&["-H", "Host: edition.cnn.com", &server]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let r = curl_async(&["-x", &gw.proxy_url(), "http://edition.cnn.com/sport"]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let seen: Vec<String> = origin.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(seen, ["/politics", "/sport"]);
    // The listener serves its hostname only.
    let r = curl_async(&["-H", "Host: other.example.com", &server]).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        gw.wait_log("route=\"default.forward-cnn-from-egress-gateway.0\""),
        "{}",
        gw.log()
    );
}

/// "Egress Gateways", HTTPS, Gateway API tab: TLS passthrough on the Gateway's 443
/// listener, routed by the TLSRoute to edition.cnn.com, never terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_https_task_gateway_api() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["edition.cnn.com"]), None).await;
    let yaml = fixture("egress-gateway-https.gateway-api.yaml");
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    let listen = free_port();
    let gw = Gateway::start(
        &yaml,
        &[
            &format!("--resolve=edition.cnn.com:443:127.0.0.1:{}", origin.port()),
            "--gateway-port-offset",
            &(listen - 443).to_string(),
        ],
    );
    let r = curl_async(&[
        "--cacert",
        &ca.pem_path.display().to_string(),
        "--connect-to",
        &format!("edition.cnn.com:443:127.0.0.1:{listen}"),
        "https://edition.cnn.com/politics",
    ])
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(origin.snis(), [Some("edition.cnn.com".to_owned())]);
    // Another name on that listener is not passed through.
    let r = curl_async(&[
        "-k",
        "--connect-to",
        &format!("other.example.com:443:127.0.0.1:{listen}"),
        "https://other.example.com/",
    ])
    .await;
    assert_ne!(r.status, 200, "{r:?}");
    assert_eq!(origin.snis().len(), 1);
}

/// "Egress using Wildcard Hosts", single hosting server, Gateway API tab: the `*.wikipedia.org`
/// TLS listener passes every Wikipedia name through to www.wikipedia.org (the one server that
/// hosts them all), without terminating; names outside the wildcard are not passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_egress_hosts_task_gateway_api() {
    let yaml = fixture("wildcard-egress-hosts.gateway-api.yaml");
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("TLSRoute default/forward-wikipedia-from-egress-gateway -> Gateway default/wikipedia-egress-gateway: Accepted"),
        "{out}"
    );
    wildcard_task(&yaml).await;
}

/// The same task, Istio APIs tab: a PASSTHROUGH Gateway server and a VirtualService whose
/// `tls` match for the gateway sends every `*.wikipedia.org` SNI to www.wikipedia.org.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_egress_hosts_task() {
    let yaml = fixture("wildcard-egress-hosts.yaml");
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("VirtualService default/direct-wikipedia-through-egress-gateway: hosts [*.wikipedia.org] 2 tls route(s)"),
        "{out}"
    );
    wildcard_task(&yaml).await;
}

async fn wildcard_task(yaml: &str) {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["*.wikipedia.org"]), None).await;
    let listen = free_port();
    let gw = Gateway::start(
        yaml,
        &[
            &format!(
                "--resolve=www.wikipedia.org:443:127.0.0.1:{}",
                origin.port()
            ),
            "--gateway-port-offset",
            &(listen - 443).to_string(),
        ],
    );
    let cacert = ca.pem_path.display().to_string();
    for (host, path) in [
        ("en.wikipedia.org", "/wiki/Main_Page"),
        ("de.wikipedia.org", "/wiki/Wikipedia:Hauptseite"),
    ] {
        let r = curl_async(&[
            "--cacert",
            &cacert,
            "--connect-to",
            &format!("{host}:443:127.0.0.1:{listen}"),
            &format!("https://{host}{path}"),
        ])
        .await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello over tls"),
            "{host}: {r:?}\n{}",
            gw.log()
        );
    }
    // The client's own handshakes reached the server: passthrough, never terminated.
    assert_eq!(
        origin.snis(),
        [
            Some("en.wikipedia.org".to_owned()),
            Some("de.wikipedia.org".to_owned())
        ]
    );
    // A wildcard is a suffix of whole labels (Gateway API and Istio: `*.wikipedia.org` takes
    // en.m.wikipedia.org too), never the bare domain or a look-alike.
    for host in [
        "wikipedia.org",
        "en.wikipedia.org.evil.test",
        "enwikipedia.org",
    ] {
        let r = curl_async(&[
            "-k",
            "--connect-to",
            &format!("{host}:443:127.0.0.1:{listen}"),
            &format!("https://{host}/"),
        ])
        .await;
        assert_ne!(r.status, 200, "{host}: {r:?}");
    }
    assert_eq!(origin.snis().len(), 2, "{}", gw.log());
    // As a sidecar would send it: the ServiceEntry-bound TLSRoute names this gateway, whose
    // listener route then forwards to www.wikipedia.org.
    let r = curl_async(&[
        "--cacert",
        &cacert,
        "-x",
        &gw.proxy_url(),
        "https://fr.wikipedia.org/wiki/Accueil",
    ])
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(origin.snis().len(), 3, "{}", gw.log());
    // The route matched the CONNECT host; a ClientHello for another name is refused.
    let r = curl_async(&[
        "-k",
        "-x",
        &gw.proxy_url(),
        "--connect-to",
        "fr.wikipedia.org:443:de.wikipedia.org:443",
        "https://fr.wikipedia.org/",
    ])
    .await;
    assert!(r.exit != 0 && r.body.is_empty(), "{r:?}");
    assert!(gw.wait_log("sni-mismatch"), "{}", gw.log());
    // The upstream was dialled, but no handshake reached it.
    assert_eq!(
        origin.snis().iter().flatten().count(),
        3,
        "{:?}",
        origin.snis()
    );
}

/// "Accessing External Services", route timeout, Gateway API tab: under REGISTRY_ONLY the
/// registered httpbin.org is reached, and the HTTPRoute bound to its ServiceEntry (the mesh
/// binding) cuts a 5 s answer at 3 s with 504; an unregistered host is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_control_route_timeout_task_gateway_api() {
    let yaml = fixture("egress-control-timeout.gateway-api.yaml");
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("HTTPRoute default/httpbin-ext -> ServiceEntry default/httpbin-ext: Accepted"),
        "{out}"
    );
    route_timeout_task(&yaml, "default.httpbin-ext.0").await;
}

/// The same task, Istio APIs tab: the VirtualService's `timeout: 3s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_control_route_timeout_task() {
    let yaml = fixture("egress-control-timeout.yaml");
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    route_timeout_task(&yaml, "default/httpbin-ext#0").await;
}

async fn route_timeout_task(yaml: &str, route: &str) {
    let slow = egress_tests::Origin::start_with(std::time::Duration::from_secs(5)).await;
    let gw = Gateway::start(
        yaml,
        &[
            &format!("--resolve=httpbin.org:80:127.0.0.1:{}", slow.port()),
            "--access-log=on",
        ],
    );
    let started = std::time::Instant::now();
    let r = curl_async(&["-x", &gw.proxy_url(), "http://httpbin.org/delay/5"]).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}\n{}", gw.log());
    assert!(
        took >= std::time::Duration::from_millis(2900)
            && took < std::time::Duration::from_millis(4900),
        "answered after {took:?}"
    );
    assert_eq!(slow.requests()[0].uri, "/delay/5");
    assert!(gw.wait_log(&format!("route=\"{route}\"")), "{}", gw.log());
    let r = curl_async(&["-x", &gw.proxy_url(), "http://www.google.com/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("x-egress-denied").as_deref(),
        Some("registry-only")
    );
}

/// A mesh certificate directory as Istio mounts it, for a gateway whose workload
/// certificate (from `mesh_ca`) names `host` and the SPIFFE identity `identity`.
fn mesh_certs(mesh_ca: &TestCa, host: &str, identity: &str) -> tempfile::TempDir {
    let leaf = mesh_ca.leaf_with(&[host], Some(identity));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&leaf.cert_path, dir.path().join("cert-chain.pem")).unwrap();
    std::fs::copy(&leaf.key_path, dir.path().join("key.pem")).unwrap();
    std::fs::copy(&mesh_ca.pem_path, dir.path().join("root-cert.pem")).unwrap();
    dir
}

/// "Egress Gateways with TLS Origination", both tabs: the sidecar's plain request reaches
/// the gateway's port-80 server inside mesh mTLS (`ISTIO_MUTUAL`, with the certificates of
/// `--mesh-certs`), and the gateway originates TLS to edition.cnn.com:443. The
/// `ISTIO_MUTUAL` DestinationRule for the gateway's own service is the sidecar's.
async fn tls_origination_task(yaml: &str, identity: &str, route: &str) {
    let cnn_ca = TestCa::new();
    let origin = TlsOrigin::start(&cnn_ca.leaf(&["edition.cnn.com"]), None).await;
    let mesh_ca = TestCa::new();
    let certs = mesh_certs(&mesh_ca, "edition.cnn.com", identity);
    let sidecar = mesh_ca.leaf_with(
        &["sleep.default"],
        Some("spiffe://cluster.local/ns/default/sa/sleep"),
    );
    let (code, out) = check(yaml);
    assert_eq!(code, Some(1), "without mesh certificates: {out}");
    assert!(out.contains("give --mesh-certs DIR"), "{out}");
    let mesh = certs.path().display().to_string();
    let listen = free_port();
    let path = |p: &Path| p.display().to_string();
    let gw = Gateway::start_with_env(
        yaml,
        &[
            &format!("--resolve=edition.cnn.com:443:127.0.0.1:{}", origin.port()),
            "--mesh-certs",
            &mesh,
            "--gateway-port-offset",
            &(listen - 80).to_string(),
            "--access-log=on",
        ],
        &[("SSL_CERT_FILE", &path(&cnn_ca.pem_path))],
    );
    let sidecar_hop = |cert: bool| {
        let mut args = vec![
            "--cacert".to_owned(),
            path(&mesh_ca.pem_path),
            "--connect-to".to_owned(),
            format!("edition.cnn.com:80:127.0.0.1:{listen}"),
            "-H".to_owned(),
            "Host: edition.cnn.com".to_owned(),
            "https://edition.cnn.com:80/politics".to_owned(),
        ];
        if cert {
            args.extend([
                "--cert".to_owned(),
                path(&sidecar.cert_path),
                "--key".to_owned(),
                path(&sidecar.key_path),
            ]);
        }
        args
    };
    let args = sidecar_hop(true);
    let r = curl_async(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(origin.snis(), [Some("edition.cnn.com".to_owned())]);
    assert!(gw.wait_log(&format!("route=\"{route}\"")), "{}", gw.log());
    // The server is mesh mTLS: a client without a mesh certificate sends nothing.
    let args = sidecar_hop(false);
    let r = curl_async(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_ne!(r.status, 200, "{r:?}");
    assert_eq!(origin.snis().len(), 1);
    // A forward-proxy client's plain request takes the same route.
    let r = curl_async(&["-x", &gw.proxy_url(), "http://edition.cnn.com/politics"]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_tls_origination_task() {
    tls_origination_task(
        &fixture("egress-gateway-tls-origination.yaml"),
        "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account",
        "default/direct-cnn-through-egress-gateway#1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_tls_origination_task_gateway_api() {
    tls_origination_task(
        &fixture("egress-gateway-tls-origination.gateway-api.yaml"),
        "spiffe://cluster.local/ns/default/sa/cnn-egress-gateway-istio",
        "default.forward-cnn-from-egress-gateway.0",
    )
    .await;
}

/// Istio ambient "Egress gateways": a waypoint as the egress gateway. The waypoint Gateway is
/// recognised (its HBONE listener is ztunnel's, not opened here); the AuthorizationPolicy
/// attached to the httpbin.org ServiceEntry by `targetRefs` governs requests for that
/// service only (GET /get allowed, anything else 403) and no other service (example.com
/// takes any method); the DestinationRule originates TLS on the port's targetPort 443.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambient_egress_waypoint_task() {
    let ca = TestCa::new();
    let httpbin = TlsOrigin::start(&ca.leaf(&["httpbin.org"]), None).await;
    let example = egress_tests::Origin::start().await;
    let yaml = fixture("ambient-egress-waypoint.yaml");
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("is a waypoint"), "{out}");
    let gw = Gateway::start_with_env(
        &yaml,
        &[
            &format!("--resolve=httpbin.org:443:127.0.0.1:{}", httpbin.port()),
            &format!("--resolve=example.com:80:127.0.0.1:{}", example.port()),
        ],
        &[("SSL_CERT_FILE", &ca.pem_path.display().to_string())],
    );
    let proxy = gw.proxy_url();
    let r = curl_async(&["-x", &proxy, "http://httpbin.org/get"]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(httpbin.snis(), [Some("httpbin.org".to_owned())]);
    for (method, url) in [
        ("POST", "http://httpbin.org/post"),
        ("GET", "http://httpbin.org/headers"),
    ] {
        let r = curl_async(&["-x", &proxy, "-X", method, url]).await;
        assert_eq!(r.status, 403, "{method} {url}: {r:?}");
        assert_eq!(r.header("x-egress-denied").as_deref(), Some("rbac-denied"));
    }
    // The policy is the httpbin.org service's; example.com has none.
    let r = curl_async(&["-x", &proxy, "-X", "POST", "http://example.com/"]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(example.count(), 1);
    let r = curl_async(&["-x", &proxy, "http://www.google.com/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
}

/// "Egress Gateways with TLS Origination", mutual TLS as the task now writes it, both tabs:
/// the sidecar's request for the Kubernetes Service my-nginx arrives over mesh mTLS on the
/// gateway's 443 server (`ISTIO_MUTUAL`); the gateway originates mutual TLS with the
/// client-credential Secret (`credentialName`, mounted under `--credentials`).
async fn mtls_credential_task(yaml: &str, identity: &str, route: &str) {
    let host = "my-nginx.mesh-external.svc.cluster.local";
    let example_ca = TestCa::new();
    let origin = TlsOrigin::start(&example_ca.leaf(&[host]), Some(&example_ca)).await;
    let client = example_ca.leaf(&["client.example.com"]);
    let creds = tempfile::tempdir().unwrap();
    let secret = creds.path().join("client-credential");
    std::fs::create_dir(&secret).unwrap();
    std::fs::copy(&client.cert_path, secret.join("tls.crt")).unwrap();
    std::fs::copy(&client.key_path, secret.join("tls.key")).unwrap();
    std::fs::copy(&example_ca.pem_path, secret.join("ca.crt")).unwrap();
    let mesh_ca = TestCa::new();
    let certs = mesh_certs(&mesh_ca, host, identity);
    let sidecar = mesh_ca.leaf_with(
        &["sleep.default"],
        Some("spiffe://cluster.local/ns/default/sa/sleep"),
    );
    let path = |p: &Path| p.display().to_string();
    let (creds_arg, mesh_arg) = (path(creds.path()), path(certs.path()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("task.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(egress_tests::gateway_bin())
        .args([
            "check",
            "--credentials",
            &creds_arg,
            "--mesh-certs",
            &mesh_arg,
        ])
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "Service mesh-external/my-nginx: hosts [{host}] ports [443/Http]"
        )),
        "{text}"
    );
    let listen = free_port();
    let gw = Gateway::start(
        yaml,
        &[
            &format!("--resolve={host}:443:127.0.0.1:{}", origin.port()),
            "--credentials",
            &creds_arg,
            "--mesh-certs",
            &mesh_arg,
            "--gateway-port-offset",
            &(listen - 443).to_string(),
            "--access-log=on",
        ],
    );
    let r = curl_async(&[
        "--cacert",
        &path(&mesh_ca.pem_path),
        "--cert",
        &path(&sidecar.cert_path),
        "--key",
        &path(&sidecar.key_path),
        "--connect-to",
        &format!("{host}:443:127.0.0.1:{listen}"),
        "-H",
        &format!("Host: {host}"),
        &format!("https://{host}/"),
    ])
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(origin.snis(), [Some(host.to_owned())]);
    assert_eq!(
        origin
            .client_certs
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(gw.wait_log(&format!("route=\"{route}\"")), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_mutual_tls_origination_with_credential_task() {
    mtls_credential_task(
        &fixture("egress-gateway-mtls-origination-credential.yaml"),
        "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account",
        "default/direct-nginx-through-egress-gateway#1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_mutual_tls_origination_with_credential_task_gateway_api() {
    mtls_credential_task(
        &fixture("egress-gateway-mtls-origination-credential.gateway-api.yaml"),
        "spiffe://cluster.local/ns/default/sa/nginx-egressgateway-istio",
        "default.forward-nginx-from-egress-gateway.0",
    )
    .await;
}

/// "Kubernetes Services for Egress Traffic", ExternalName: the Service my-httpbin is
/// registered under its cluster name and reaches httpbin.org, the `Host` the client sent
/// unchanged; other names stay unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_externalname_service_task() {
    let origin = egress_tests::Origin::start().await;
    let yaml = fixture("egress-kubernetes-services-externalname.yaml");
    let (code, out) = check(&yaml);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Service default/my-httpbin: hosts [my-httpbin.default.svc.cluster.local] ports [80/Http]"),
        "{out}"
    );
    let gw = Gateway::start(
        &yaml,
        &[&format!(
            "--resolve=httpbin.org:80:127.0.0.1:{}",
            origin.port()
        )],
    );
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "http://my-httpbin.default.svc.cluster.local/headers",
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let seen = origin.requests();
    assert_eq!(seen[0].uri, "/headers");
    assert_eq!(
        seen[0].headers["host"],
        "my-httpbin.default.svc.cluster.local"
    );
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "http://other.default.svc.cluster.local/",
    ])
    .await;
    assert_eq!(r.status, 502, "{r:?}");
}

/// "Egress TLS Origination": plain `http://edition.cnn.com` is originated over TLS on 443,
/// `https://` passes through a CONNECT tunnel; then the sidecar-side mutual TLS origination
/// for my-nginx with the client-credential Secret (`http://my-nginx…:443`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_tls_origination_task() {
    let cnn_ca = TestCa::new();
    let cnn = TlsOrigin::start(&cnn_ca.leaf(&["edition.cnn.com"]), None).await;
    let host = "my-nginx.mesh-external.svc.cluster.local";
    let example_ca = TestCa::new();
    let nginx = TlsOrigin::start(&example_ca.leaf(&[host]), Some(&example_ca)).await;
    let client = example_ca.leaf(&["client.example.com"]);
    let creds = tempfile::tempdir().unwrap();
    let secret = creds.path().join("client-credential");
    std::fs::create_dir(&secret).unwrap();
    std::fs::copy(&client.cert_path, secret.join("tls.crt")).unwrap();
    std::fs::copy(&client.key_path, secret.join("tls.key")).unwrap();
    std::fs::copy(&example_ca.pem_path, secret.join("ca.crt")).unwrap();
    let yaml = fixture("egress-tls-origination.yaml");
    let creds_arg = creds.path().display().to_string();
    let gw = Gateway::start_with_env(
        &yaml,
        &[
            &format!("--resolve=edition.cnn.com:443:127.0.0.1:{}", cnn.port()),
            &format!("--resolve={host}:443:127.0.0.1:{}", nginx.port()),
            "--credentials",
            &creds_arg,
        ],
        &[("SSL_CERT_FILE", &cnn_ca.pem_path.display().to_string())],
    );
    let proxy = gw.proxy_url();
    let r = curl_async(&["-x", &proxy, "http://edition.cnn.com/politics"]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    let cacert = cnn_ca.pem_path.display().to_string();
    let r = curl_async(&[
        "--cacert",
        &cacert,
        "-x",
        &proxy,
        "https://edition.cnn.com/politics",
    ])
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(cnn.snis().len(), 2);
    let r = curl_async(&["-x", &proxy, &format!("http://{host}:443")]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(
        nginx.client_certs.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
