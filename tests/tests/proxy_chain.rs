//! Chaining through an upstream HTTP CONNECT proxy, written here: it checks credentials,
//! records what it was asked for and maps names to local origins itself (the gateway does
//! not resolve them).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::tls::{TestCa, TlsOrigin};
use egress_tests::{Gateway, Origin, curl_async, service_entry};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Proxy {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<(String, Option<String>)>>>,
}

async fn proxy(routes: HashMap<String, SocketAddr>) -> Proxy {
    proxy_with(routes, None).await
}

/// The proxy, behind TLS when `tls` is given (an `https://` proxy).
async fn proxy_with(
    routes: HashMap<String, SocketAddr>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked: Arc<Mutex<Vec<(String, Option<String>)>>> = Arc::default();
    let log = asked.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let routes = routes.clone();
            let log = log.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve(io, routes, log).await,
                    Some(acceptor) => {
                        if let Ok(io) = acceptor.accept(io).await {
                            serve(io, routes, log).await
                        }
                    }
                }
            });
        }
    });
    Proxy { addr, asked }
}

type Asked = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn serve<S>(mut io: S, routes: HashMap<String, SocketAddr>, log: Asked)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    {
        {
            {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if io.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let target = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                let auth = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
                    .map(str::to_owned);
                log.lock().unwrap().push((target.clone(), auth.clone()));
                if auth.as_deref() != Some("Basic dXNlcjpzZWNyZXQ=") {
                    let _ = io
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                        .await;
                    return;
                }
                let Some(upstream) = routes.get(&target) else {
                    let _ = io.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                    return;
                };
                let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                io.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tunnels_and_tls_origination_go_through_the_upstream_proxy() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let tls_origin = TlsOrigin::start(&ca.leaf(&["secure.corp.test"]), None).await;
    let port = origin.port();
    let routes = HashMap::from([
        (format!("api.corp.test:{port}"), origin.addr),
        (format!("db.corp.test:{port}"), origin.addr),
        ("secure.corp.test:443".to_owned(), tls_origin.addr),
    ]);
    let proxy = proxy(routes).await;
    // Names that no resolver here knows: only the proxy can reach them.
    let yaml = service_entry("api", "api.corp.test", port, "HTTP", "  resolution: DNS\n")
        + &service_entry("db", "db.corp.test", port, "TCP", "  resolution: DNS\n")
        + &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: secure}}\nspec:\n  hosts: [secure.corp.test]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure}}\nspec:\n  host: secure.corp.test\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {}}}\n",
            ca.pem_path.display()
        );
    let gw = Gateway::start(
        &yaml,
        &[&format!(
            "--upstream-proxy=http://user:secret@{}",
            proxy.addr
        )],
    );

    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://api.corp.test:{port}/via-proxy"),
    ])
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from origin"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(
        origin.requests()[0].headers["host"],
        format!("api.corp.test:{port}")
    );

    let r = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://db.corp.test:{port}/tunnel"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());

    let r = curl_async(&["-x", &gw.proxy_url(), "http://secure.corp.test/tls"]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over tls"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(
        tls_origin.snis().into_iter().flatten().collect::<Vec<_>>(),
        ["secure.corp.test"]
    );

    let asked: Vec<String> = proxy
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert!(
        asked.contains(&format!("api.corp.test:{port}")),
        "{asked:?}"
    );
    assert!(asked.contains(&format!("db.corp.test:{port}")), "{asked:?}");
    assert!(
        asked.contains(&"secure.corp.test:443".to_owned()),
        "{asked:?}"
    );
    assert!(
        proxy
            .asked
            .lock()
            .unwrap()
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Basic dXNlcjpzZWNyZXQ="))
    );

    // Unregistered destinations are still refused before the proxy is asked.
    let before = proxy.asked.lock().unwrap().len();
    let r = curl_async(&["-x", &gw.proxy_url(), "http://evil.example.net/"]).await;
    assert_eq!(r.status, 502);
    assert_eq!(proxy.asked.lock().unwrap().len(), before);

    // A proxy that refuses: a clear 502.
    let gw = Gateway::start(
        &yaml,
        &[&format!(
            "--upstream-proxy=http://user:wrong@{}",
            proxy.addr
        )],
    );
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://api.corp.test:{port}/"),
    ])
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("407"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_proxy_is_spoken_to_over_verified_tls() {
    let origin = Origin::start().await;
    let port = origin.port();
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let routes = HashMap::from([(format!("api.corp.test:{port}"), origin.addr)]);
    let proxy = proxy_with(routes, Some(acceptor)).await;
    let yaml = service_entry("api", "api.corp.test", port, "HTTP", "  resolution: DNS\n");
    let url = format!(
        "--upstream-proxy=https://user:secret@localhost:{}",
        proxy.addr.port()
    );
    let gw = Gateway::start(
        &yaml,
        &[
            &url,
            &format!("--upstream-proxy-ca={}", ca.pem_path.display()),
        ],
    );
    for path in ["/one", "/two"] {
        let r = curl_async(&[
            "-x",
            &gw.proxy_url(),
            &format!("http://api.corp.test:{port}{path}"),
        ])
        .await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello from origin"),
            "{r:?}\n{}",
            gw.log()
        );
    }
    assert!(
        proxy
            .asked
            .lock()
            .unwrap()
            .iter()
            .all(|(t, a)| t == &format!("api.corp.test:{port}")
                && a.as_deref() == Some("Basic dXNlcjpzZWNyZXQ=")),
        "{:?}",
        proxy.asked.lock().unwrap()
    );
    // The tunnel is pooled like any upstream connection: two requests, one CONNECT.
    assert_eq!(proxy.asked.lock().unwrap().len(), 1);

    // A proxy whose certificate is not trusted is never sent the credentials.
    let before = proxy.asked.lock().unwrap().len();
    let other = TestCa::new();
    let gw = Gateway::start(
        &yaml,
        &[
            &url,
            &format!("--upstream-proxy-ca={}", other.pem_path.display()),
        ],
    );
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://api.corp.test:{port}/"),
    ])
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("TLS handshake"), "{}", r.body);
    assert!(!gw.log().contains("secret"), "{}", gw.log());
    assert_eq!(proxy.asked.lock().unwrap().len(), before);
}
