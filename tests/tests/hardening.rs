//! The gateway as a boundary, tried from outside with bytes curl would not send: framing
//! errors close the connection, header conditions read bytes and every line, tunnels are
//! capped, and what is checked is what goes upstream (HTTP/1.1 and h2).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::{Gateway, Origin, curl_async, raw_exchange_async, service_entry};
use std::io::{Read, Write};
use std::time::Duration;

fn registry(origin: &Origin) -> String {
    let port = origin.port();
    service_entry("api", "api.test", port, "HTTP", "  resolution: DNS\n")
        + &service_entry("db", "db.test", port, "TCP", "  resolution: DNS\n")
}

fn start(origin: &Origin, extra_yaml: &str, args: &[&str]) -> Gateway {
    let port = origin.port();
    let a = format!("--resolve=api.test:{port}:127.0.0.1");
    let b = format!("--resolve=db.test:{port}:127.0.0.1");
    let mut all = vec![a.as_str(), b.as_str()];
    all.extend_from_slice(args);
    Gateway::start(&(registry(origin) + extra_yaml), &all)
}

fn status(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_are_refused_and_close_the_connection() {
    let origin = Origin::start().await;
    let gw = start(&origin, "", &[]);
    let p = origin.port();
    let head = |extra: &str| {
        format!("POST http://api.test:{p}/upload HTTP/1.1\r\nHost: api.test:{p}\r\n{extra}\r\n")
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "two Content-Lengths",
            head("Content-Length: 5\r\nContent-Length: 6\r\n") + "hello!",
        ),
        (
            "invalid Content-Length",
            head("Content-Length: 5x\r\n") + "hello",
        ),
        ("negative Content-Length", head("Content-Length: -1\r\n")),
        (
            "Transfer-Encoding without chunked last",
            head("Transfer-Encoding: chunked, gzip\r\n") + "5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "unknown Transfer-Encoding",
            head("Transfer-Encoding: identity\r\n") + "hello",
        ),
        (
            "ftp scheme",
            format!("GET ftp://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\n\r\n"),
        ),
        (
            "https absolute-form",
            format!("GET https://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\n\r\n"),
        ),
        (
            "CONNECT with Content-Length",
            format!(
                "CONNECT db.test:{p} HTTP/1.1\r\nHost: db.test:{p}\r\nContent-Length: 4\r\n\r\nPING"
            ),
        ),
        (
            "CONNECT with Transfer-Encoding",
            format!(
                "CONNECT db.test:{p} HTTP/1.1\r\nHost: db.test:{p}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nPING\r\n0\r\n\r\n"
            ),
        ),
        (
            "two Hosts",
            format!("GET / HTTP/1.1\r\nHost: api.test:{p}\r\nHost: db.test:{p}\r\n\r\n"),
        ),
    ];
    for (what, bytes) in cases {
        // A second request after the bad one: if the connection stayed open it would be
        // answered too.
        let follow =
            format!("GET http://api.test:{p}/second HTTP/1.1\r\nHost: api.test:{p}\r\n\r\n");
        let (reply, closed) = raw_exchange_async(gw.proxy, (bytes + &follow).as_bytes()).await;
        assert_eq!(status(&reply), 400, "{what}: {reply}\n{}", gw.log());
        assert!(closed, "{what}: connection left open: {reply}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{what}: {reply}");
    }
    assert_eq!(origin.count(), 0, "{:?}", origin.requests());
}

/// `Content-Length` beside `Transfer-Encoding`, in either order, alone or after good
/// requests on the same connection (HTTP/1.1 and through a TLS-terminating server alike,
/// which share the guard): 400, closed, and nothing reaches the origin, although hyper
/// drops the length before any layer sees the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_beside_transfer_encoding_is_refused() {
    let origin = Origin::start().await;
    let gw = start(&origin, "", &[]);
    let p = origin.port();
    let good = format!(
        "POST http://api.test:{p}/good HTTP/1.1\r\nHost: api.test:{p}\r\nContent-Length: 5\r\n\r\nhello"
    );
    let chunked = format!(
        "POST http://api.test:{p}/good HTTP/1.1\r\nHost: api.test:{p}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    for (before, order) in [
        ("", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
        ("", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
        (
            good.as_str(),
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            chunked.as_str(),
            "transfer-encoding: chunked\r\ncontent-length: 0\r\n",
        ),
    ] {
        let smuggled =
            format!("GET http://api.test:{p}/smuggled HTTP/1.1\r\nHost: api.test:{p}\r\n\r\n");
        let req = format!(
            "{before}POST http://api.test:{p}/upload HTTP/1.1\r\nHost: api.test:{p}\r\n{order}\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
        );
        let (reply, closed) = raw_exchange_async(gw.proxy, req.as_bytes()).await;
        assert!(closed, "{order}: {reply}");
        let answers: Vec<u16> = reply
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| status(&reply[i..]))
            .collect();
        let want: &[u16] = if before.is_empty() {
            &[400]
        } else {
            &[200, 400]
        };
        assert_eq!(answers, want, "{before:?} {order}: {reply}");
        assert!(
            reply.contains("both Content-Length and Transfer-Encoding"),
            "{reply}"
        );
    }
    let uris: Vec<String> = origin.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/good", "/good"], "{uris:?}");
}

/// A body that breaks after the upstream request started: the client gets 400 (its body,
/// not the upstream, failed), its connection closes, and the half-sent upstream connection
/// is never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_body_discards_the_upstream_connection() {
    let origin = Origin::start().await;
    let gw = start(&origin, "", &[]);
    let p = origin.port();
    let url = format!("http://api.test:{p}/first");
    let r = curl_async(&["-x", &gw.proxy_url(), &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    for bad_chunk in [
        "zz\r\nhello\r\n",
        "5\nhello\r\n",
        "5\r\nhelloXX",
        "fffffffffffffffffff\r\n",
    ] {
        let req = format!(
            "POST http://api.test:{p}/upload HTTP/1.1\r\nHost: api.test:{p}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n{bad_chunk}"
        );
        let (reply, closed) = raw_exchange_async(gw.proxy, req.as_bytes()).await;
        // The client's framing broke, not the upstream: 400 malformed, and closed.
        assert_eq!(status(&reply), 400, "{bad_chunk:?}: {reply}");
        assert!(
            reply.contains("x-egress-denied: malformed"),
            "{bad_chunk:?}: {reply}"
        );
        assert!(
            reply.contains("connection: close"),
            "{bad_chunk:?}: {reply}"
        );
        assert!(closed, "{bad_chunk:?}: connection left open: {reply}");
    }
    for _ in 0..3 {
        let r = curl_async(&["-x", &gw.proxy_url(), &format!("http://api.test:{p}/after")]).await;
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    }
    // The origin saw each request with the gateway's connection as its peer: no request
    // after a broken upload came over that upload's connection.
    let seen = origin.requests();
    let broken: Vec<_> = seen
        .iter()
        .filter(|s| s.uri == "/upload")
        .map(|s| s.peer)
        .collect();
    let after: Vec<_> = seen
        .iter()
        .filter(|s| s.uri == "/after")
        .map(|s| s.peer)
        .collect();
    assert_eq!(after.len(), 3);
    assert!(
        !after.iter().any(|a| broken.contains(a)),
        "a broken upload's connection was reused: {broken:?} then {after:?}"
    );
    assert!(
        !broken.is_empty(),
        "no broken upload reached the origin: {seen:?}"
    );
}

const HEADER_POLICIES: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[X-User]", values: ["evil*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-blue, namespace: istio-system}
spec:
  action: ALLOW
  rules:
  - when: [{key: "request.headers[x-team]", values: ["blue"]}]
  - to: [{operation: {methods: [CONNECT]}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_conditions_compare_bytes_and_every_line() {
    let origin = Origin::start().await;
    let p = origin.port();
    let route = format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.test]
  http:
  - match: [{{headers: {{x-route: {{exact: special}}}}}}]
    directResponse: {{status: 200, body: {{string: "special route"}}}}
  - match: [{{headers: {{x-ver: {{regex: "v[0-9]+"}}}}}}]
    directResponse: {{status: 200, body: {{string: "versioned"}}}}
  - route: [{{destination: {{host: api.test, port: {{number: {p}}}}}}}]
"#
    );
    let gw = start(&origin, &(HEADER_POLICIES.to_owned() + &route), &[]);
    let send = |headers: &'static [u8]| {
        let mut req =
            format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\n").into_bytes();
        req.extend_from_slice(headers);
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        req
    };
    let cases: &[(&str, &[u8], u16)] = &[
        ("allowed", b"x-team: blue\r\n", 200),
        (
            "names are case-insensitive, values trimmed",
            b"X-TEAM:   blue  \r\n",
            200,
        ),
        ("no team", b"", 403),
        (
            "obs-text still has a prefix",
            b"x-team: blue\r\nx-user: evil\xff\r\n",
            403,
        ),
        (
            "obs-text is not the exact value",
            b"x-team: blue\xff\r\n",
            403,
        ),
        (
            "ALLOW needs every line",
            b"x-team: blue\r\nx-team: red\r\n",
            403,
        ),
        (
            "DENY fires on any line",
            b"x-team: blue\r\nx-user: ok\r\nx-user: evil\r\n",
            403,
        ),
        (
            "route by exact bytes",
            b"x-team: blue\r\nx-route: special\r\n",
            200,
        ),
        (
            "regex over obs-text never matches",
            b"x-team: blue\r\nx-ver: v1\xff\r\n",
            200,
        ),
    ];
    for (what, headers, want) in cases {
        let (reply, _) = raw_exchange_async(gw.proxy, &send(headers)).await;
        assert_eq!(status(&reply), *want, "{what}: {reply}\n{}", gw.log());
    }
    let bodies: Vec<String> = {
        let mut out = Vec::new();
        for h in [
            &b"x-team: blue\r\nx-route: special\r\n"[..],
            b"x-team: blue\r\nx-ver: v1\xff\r\n",
        ] {
            out.push(raw_exchange_async(gw.proxy, &send(h)).await.0);
        }
        out
    };
    assert!(bodies[0].ends_with("special route"), "{}", bodies[0]);
    assert!(bodies[1].ends_with("hello from origin"), "{}", bodies[1]);

    // Lines that a route reads differently: ambiguous, 400 and closed.
    let (reply, closed) = raw_exchange_async(
        gw.proxy,
        &send(b"x-team: blue\r\nx-route: special\r\nx-route: other\r\n"),
    )
    .await;
    assert_eq!(status(&reply), 400, "{reply}");
    assert!(reply.contains("x-egress-denied: malformed"), "{reply}");
    assert!(closed);
    // Lines that agree are not ambiguous.
    let (reply, _) = raw_exchange_async(
        gw.proxy,
        &send(b"x-team: blue\r\nx-route: special\r\nx-route: special\r\n"),
    )
    .await;
    assert!(reply.ends_with("special route"), "{reply}");
}

fn connect(gw: &Gateway, p: u16) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "CONNECT db.test:{p} HTTP/1.1\r\nHost: db.test:{p}\r\n\r\n"
    )
    .unwrap();
    s
}

fn read_head(s: &mut std::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_are_capped_and_a_closed_tunnel_frees_its_slot() {
    let origin = Origin::start().await;
    let gw = start(&origin, "", &["--max-tunnels", "1"]);
    let p = origin.port();
    let gw2 = &gw;
    let (first, second) = tokio::task::block_in_place(|| {
        let mut first = connect(gw2, p);
        let head = read_head(&mut first);
        let mut second = connect(gw2, p);
        let mut rest = String::new();
        let _ = second.read_to_string(&mut rest);
        ((first, head), rest)
    });
    assert!(first.1.starts_with("HTTP/1.1 200"), "{}", first.1);
    assert_eq!(status(&second), 429, "{second}");
    assert!(
        second.to_ascii_lowercase().contains("retry-after: 1"),
        "{second}"
    );
    assert!(second.contains("x-egress-denied: tunnel-limit"), "{second}");
    // The first tunnel still works: an HTTP request through it reaches the origin.
    let mut t = first.0;
    tokio::task::block_in_place(|| {
        write!(
            t,
            "GET /through HTTP/1.1\r\nHost: db.test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        let _ = t.read_to_string(&mut reply);
        assert!(reply.ends_with("hello from origin"), "{reply}");
    });
    drop(t);
    let mut ok = false;
    for _ in 0..50 {
        let head = tokio::task::block_in_place(|| read_head(&mut connect(&gw, p)));
        if head.starts_with("HTTP/1.1 200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the closed tunnel's slot was never freed\n{}", gw.log());
    let m = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert!(
        m.lines()
            .any(|l| l.contains("tunnel-limit") || l.contains("max_tunnels")),
        "{m}"
    );
}

/// h2 (prior knowledge, as sidecars speak it): the `:path` that goes upstream is the
/// normalised one the policies checked, the query unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_paths_are_normalised_before_they_are_checked_and_forwarded() {
    let origin = Origin::start().await;
    let deny = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"#;
    let gw = start(&origin, deny, &[]);
    let p = origin.port();
    let to = format!("api.test:{p}:{}:{}", gw.proxy.ip(), gw.proxy.port());
    let get = |path: &str| {
        let url = format!("http://api.test:{p}{path}");
        let to = to.clone();
        async move {
            curl_async(&[
                "--http2-prior-knowledge",
                "--path-as-is",
                "--connect-to",
                &to,
                &url,
            ])
            .await
        }
    };
    let r = get("/pub/..//admin").await;
    assert_eq!(r.status, 403, "{r:?}\n{}", gw.log());
    let r = get("/pub/x/..//y%2F.%2Fz?a=/../b").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(origin.requests().pop().unwrap().uri, "/pub/y/z?a=/../b");
    let r = get("/pub;x=1").await;
    assert_eq!(r.status, 400, "{r:?}");
}

/// `check` warns when a normalisation weaker than the default meets rules on paths, and
/// says nothing of the default.
#[test]
fn check_warns_of_weak_path_normalisation_beside_path_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/admin*\"]}}]\n";
    std::fs::write(&path, policy).unwrap();
    let check = |args: &[&str]| {
        let out = std::process::Command::new(egress_tests::gateway_bin())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let warned = check(&["--path-normalization", "BASE"]);
    assert!(
        warned.contains("policy.yaml:1:1: warning: AuthorizationPolicy istio-system/deny-admin")
            && warned.contains("path normalisation is BASE, weaker than"),
        "{warned}"
    );
    let quiet = check(&[]);
    assert!(!quiet.contains("weaker than"), "{quiet}");
}

/// Two readings of one header or method: `x_user` is `x-user` to CGI-style origins (PHP,
/// WSGI: `HTTP_X_USER`), and some origins upper-case methods. Refused by default; a header
/// with `_` can be dropped or allowed instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_headers_and_lower_case_methods() {
    let origin = Origin::start().await;
    let p = origin.port();
    let req = |method: &str, header: &str| {
        format!(
            "{method} http://api.test:{p}/x HTTP/1.1\r\nHost: api.test:{p}\r\n{header}Connection: close\r\n\r\n"
        )
    };
    let gw = start(&origin, "", &[]);
    for (what, bytes) in [
        (
            "underscore",
            req("GET", "x_forwarded_client_cert: URI=spiffe://x\r\n"),
        ),
        ("lower-case method", req("delete", "")),
        ("mixed-case method", req("Get", "")),
    ] {
        let (reply, closed) = raw_exchange_async(gw.proxy, bytes.as_bytes()).await;
        assert_eq!(status(&reply), 400, "{what}: {reply}");
        assert!(
            reply.contains("x-egress-denied: malformed"),
            "{what}: {reply}"
        );
        assert!(closed, "{what}");
    }
    assert_eq!(origin.count(), 0);
    drop(gw);
    for (action, forwarded) in [("drop", false), ("allow", true)] {
        let gw = start(&origin, "", &["--headers-with-underscores", action]);
        let (reply, _) =
            raw_exchange_async(gw.proxy, req("GET", "x_user: admin\r\n").as_bytes()).await;
        assert_eq!(status(&reply), 200, "{action}: {reply}");
        let seen = origin.requests().pop().unwrap();
        assert_eq!(
            seen.headers.contains_key("x_user"),
            forwarded,
            "{action}: {seen:?}"
        );
    }
}
