//! gRPC through the real binary: a `GRPCRoute` bound to a `ServiceEntry` of protocol `GRPC`
//! routes calls by service, method and header, and the gateway speaks HTTP/2 with prior
//! knowledge (h2c) to the plain gRPC upstream, trailers (`grpc-status`) included. The
//! upstream is a tonic server for Envoy's `Authorization` service, the client tonic's.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::Gateway;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc::Status;
use std::sync::{Arc, Mutex};

/// Records each call's metadata; answers with status code 42 so the client can tell the
/// answer came from here.
#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<tonic::metadata::MetadataMap>>>,
}

#[tonic::async_trait]
impl Authorization for Upstream {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.seen.lock().unwrap().push(request.metadata().clone());
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status {
                code: 42,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

async fn upstream() -> (Upstream, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = Upstream::default();
    let server = AuthorizationServer::new(up.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (up, port)
}

const CONFIG: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: authz-ext, namespace: default}
spec:
  hosts: [authz.example.com]
  ports: [{number: 50051, name: grpc, protocol: GRPC}]
  resolution: DNS
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: authz, namespace: default}
spec:
  parentRefs: [{kind: ServiceEntry, group: networking.istio.io, name: authz-ext}]
  hostnames: [authz.example.com]
  rules:
  - matches:
    - method: {service: envoy.service.auth.v3.Authorization, method: Check}
      headers: [{name: x-tenant, value: a}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: grpc}]}
    backendRefs: [{kind: Hostname, group: networking.istio.io, name: authz.example.com, port: 50051}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_to_a_plain_grpc_upstream() {
    let (up, port) = upstream().await;
    let gw = Gateway::start(
        CONFIG,
        &[
            &format!("--resolve=authz.example.com:50051:127.0.0.1:{port}"),
            "--access-log=on",
        ],
    );
    let channel = tonic::transport::Endpoint::from_shared(gw.proxy_url())
        .unwrap()
        .origin("http://authz.example.com:50051".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = AuthorizationClient::new(channel);
    let mut call = tonic::Request::new(CheckRequest::default());
    call.metadata_mut().insert("x-tenant", "a".parse().unwrap());
    let rsp = client.check(call).await;
    let rsp = rsp.unwrap_or_else(|e| panic!("{e:?}\n{}", gw.log()));
    assert_eq!(rsp.into_inner().status.unwrap().code, 42);
    {
        let seen = up.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].get("x-route").unwrap(), "grpc");
        assert_eq!(seen[0].get("x-tenant").unwrap(), "a");
    }
    assert!(gw.wait_log("route=\"default.authz.0\""), "{}", gw.log());
    // No rule matches another tenant: the route answers 404, which gRPC reads as
    // UNIMPLEMENTED, and nothing reaches the upstream.
    let mut call = tonic::Request::new(CheckRequest::default());
    call.metadata_mut().insert("x-tenant", "b".parse().unwrap());
    let err = client.check(call).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert_eq!(err.message(), "egress gateway: no-route (HTTP 404)");
    assert_eq!(err.metadata().get("x-egress-denied").unwrap(), "no-route");
    assert_eq!(up.seen.lock().unwrap().len(), 1);
    // The access log keeps the decided HTTP status.
    assert!(gw.wait_log("status=404"), "{}", gw.log());
    // An unregistered service under REGISTRY_ONLY: UNAVAILABLE, as Envoy maps 502.
    let channel = tonic::transport::Endpoint::from_shared(gw.proxy_url())
        .unwrap()
        .origin("http://other.example.com:50051".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let err = AuthorizationClient::new(channel)
        .check(CheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(
        err.metadata().get("x-egress-denied").unwrap(),
        "registry-only"
    );
}
