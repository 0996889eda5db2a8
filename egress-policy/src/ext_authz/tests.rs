//! The layer against a real authorizer on loopback, over a policy built in code: allowed
//! requests go on with the headers the authorizer adds, denials carry its status and
//! chosen headers, and an authorizer that cannot be reached fails closed.

#![allow(clippy::unwrap_used, reason = "tests")]

use bytes::Bytes;
use egress_core::destination::DestinationLayer;
use egress_core::transport::Overrides;
use egress_core::{BoxBody, BoxError, respond};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

use super::{CheckedBody, ExtAuthzLayer};
use crate::compile::{Settings, compile};
use crate::model::{
    AccessPolicy, AuthzAction, Config, ExtensionProvider, HttpAuthorizer, MeshSettings, Meta, Port,
    Protocol, Resolution, Rule, Service,
};
use crate::snapshot::{PolicyStore, SnapshotLayer};

/// An authorizer that denies paths containing `deny` (403, with `x-reason`) and allows the
/// rest, naming the user in `x-authz-user`; it counts the checks it answers.
async fn authorizer() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let checks = Arc::new(AtomicUsize::new(0));
    let seen = checks.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let deny = req.uri().path().contains("deny");
                    async move {
                        let rsp = if deny {
                            Response::builder()
                                .status(403)
                                .header("x-reason", "test says no")
                                .header("x-internal", "never shown")
                                .body(Full::new(Bytes::from_static(b"denied by test")))
                        } else {
                            Response::builder()
                                .header("x-authz-user", "bob")
                                .body(Full::default())
                        };
                        Ok::<_, std::convert::Infallible>(rsp.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (port, checks)
}

/// A CUSTOM policy on every request, asking `authz.test:port`.
fn config(port: u16) -> Config {
    let mut config = Config::default();
    config.services.push(Service::new(
        Meta::new("api", "default"),
        ["api.example.com"],
        [Port::new(80, Protocol::Http, "http")],
        Resolution::Dns,
    ));
    let mut http = HttpAuthorizer::new("authz.test", port);
    http.headers_to_upstream_on_allow
        .push("x-authz-user".into());
    http.headers_to_downstream_on_deny.push("x-reason".into());
    let mut mesh = MeshSettings::new(Meta::new("istio", "istio-system"));
    mesh.extension_providers.push(ExtensionProvider {
        name: "test-authz".into(),
        http,
    });
    config.mesh = Some(mesh);
    let mut policy = AccessPolicy::new(
        Meta::new("ext", "istio-system"),
        AuthzAction::Custom,
        vec![Rule::default()],
    );
    policy.provider = Some("test-authz".into());
    config.access_policies.push(policy);
    config
}

/// What reached the upstream side.
async fn inner(req: Request<CheckedBody<Full<Bytes>>>) -> Result<Response<BoxBody>, BoxError> {
    let user = req.headers().get("x-authz-user").cloned();
    let mut rsp = Response::new(BoxBody::empty());
    if let Some(user) = user {
        rsp.headers_mut().insert("x-seen-user", user);
    }
    Ok(rsp)
}

async fn send(port: u16, path: &str) -> Response<BoxBody> {
    let policy = compile(&config(port), &Settings::default()).unwrap().policy;
    let mut overrides = Overrides::new();
    overrides
        .add(&format!("authz.test:{port}:127.0.0.1"))
        .unwrap();
    let req = Request::get(format!("http://api.example.com{path}"))
        .header("host", "api.example.com")
        .header("x-authz-user", "forged by the client")
        .body(Full::default())
        .unwrap();
    ServiceBuilder::new()
        .layer(SnapshotLayer::new(PolicyStore::new(policy)))
        .map_result(respond::into_response)
        .layer(DestinationLayer::new())
        .layer(ExtAuthzLayer::from_snapshot(16, 0).with_overrides(overrides))
        .service(tower::service_fn(inner))
        .oneshot(req)
        .await
        .unwrap()
}

#[tokio::test]
async fn allowed_requests_carry_the_authorizers_headers_only() {
    let (port, checks) = authorizer().await;
    let rsp = send(port, "/items").await;
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["x-seen-user"], "bob");
    assert_eq!(checks.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn denials_keep_the_authorizers_status_and_chosen_headers() {
    let (port, _) = authorizer().await;
    let rsp = send(port, "/deny/me").await;
    assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
    assert_eq!(rsp.headers()["x-reason"], "test says no");
    assert!(rsp.headers().get("x-internal").is_none());
    assert!(rsp.headers().get("x-seen-user").is_none());
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"denied by test");
}

#[tokio::test]
async fn an_unreachable_authorizer_fails_closed() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let rsp = send(port, "/items").await;
    assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
    assert_eq!(rsp.headers()["x-egress-denied"], "ext-authz-error");
    assert!(rsp.headers().get("x-seen-user").is_none());
}
