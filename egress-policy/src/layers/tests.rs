//! Each layer over a policy built in code, with real requests through a tower stack: the
//! snapshot layer, the one destination parser, the layer under test, and an inner service
//! that reports what reached it (path, chosen plan, passthrough mark, headers).

#![allow(clippy::unwrap_used, reason = "tests")]

use base64::Engine as _;
use bytes::Bytes;
use egress_core::ctx::{Passthrough, UpstreamPlan};
use egress_core::destination::DestinationLayer;
use egress_core::{BoxBody, BoxError, respond};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};

use super::{AuthzLayer, JwtLayer, PathNormalizeLayer, RegistryOnlyLayer, RouteLayer};
use crate::compile::{Settings, compile};
use crate::jwt::JwksStore;
use crate::model::{
    AccessPolicy, AuthzAction, Config, DestinationPolicy, Endpoint, HttpMatch, HttpRoute,
    JwtAuthentication, JwtProvider, Meta, Normalization, Operation, OutboundPolicy, Port, Protocol,
    Resolution, Rule, Service as Svc, StringMatch, Subset, VirtualHost, WeightedDestination,
};
use crate::snapshot::{PolicyStore, SnapshotLayer};

/// `api.example.com:80` with endpoints of two versions, `tls.example.com:443` for tunnels.
fn config() -> Config {
    let mut config = Config::default();
    let mut api = Svc::new(
        Meta::new("api", "default"),
        ["api.example.com"],
        [Port::new(80, Protocol::Http, "http")],
        Resolution::Static,
    );
    for (ip, v) in [("10.0.0.1", "v1"), ("10.0.0.2", "v2")] {
        let mut e = Endpoint::new(ip);
        e.labels.push(("version".into(), v.into()));
        api.endpoints.push(e);
    }
    config.services.push(api);
    config.services.push(Svc::new(
        Meta::new("tls", "default"),
        ["tls.example.com"],
        [Port::new(443, Protocol::Tls, "tls")],
        Resolution::Dns,
    ));
    config
}

/// What the inner service saw, as response headers.
async fn inner(req: Request<Full<Bytes>>) -> Result<Response<BoxBody>, BoxError> {
    let mut rsp = Response::new(BoxBody::empty());
    let h = rsp.headers_mut();
    h.insert("x-path", req.uri().path().parse().unwrap());
    let plan = req.extensions().get::<UpstreamPlan>();
    let service = plan.and_then(|p| p.service.as_deref()).unwrap_or("-");
    h.insert("x-service", service.parse().unwrap());
    let targets = plan.map_or(0, |p| p.targets.len());
    h.insert("x-targets", targets.to_string().parse().unwrap());
    if req.extensions().get::<Passthrough>().is_some() {
        h.insert("x-passthrough", "1".parse().unwrap());
    }
    for name in ["x-user", "authorization"] {
        if let Some(v) = req.headers().get(name) {
            h.insert(name, v.clone());
        }
    }
    Ok(rsp)
}

/// The snapshot and destination layers, `layer`, and [`inner`] (a macro: each layer's
/// service type is its own).
macro_rules! call {
    ($config:expr, $settings:expr, $layer:expr, $req:expr $(,)?) => {{
        let policy = compile($config, $settings).unwrap().policy;
        ServiceBuilder::new()
            .layer(SnapshotLayer::new(PolicyStore::new(policy)))
            .map_result(respond::into_response)
            .layer(DestinationLayer::new())
            .layer($layer)
            .service(tower::service_fn(inner))
            .oneshot($req)
            .await
            .unwrap()
    }};
}

/// A request as a forward-proxy client writes it: absolute-form, with its `Host`.
fn get(uri: &str) -> Request<Full<Bytes>> {
    request(http::Method::GET, uri)
}

fn request(method: http::Method, uri: &str) -> Request<Full<Bytes>> {
    let uri: http::Uri = uri.parse().unwrap();
    let host = uri.authority().unwrap().to_string();
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .body(Full::default())
        .unwrap()
}

fn header<'a>(rsp: &'a Response<BoxBody>, name: &str) -> &'a str {
    rsp.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

async fn body(rsp: Response<BoxBody>) -> String {
    String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn registry_only_admits_registered_ports_and_marks_the_rest() {
    let strict = Settings::default();
    let rsp = call!(
        &config(),
        &strict,
        RegistryOnlyLayer::from_snapshot(),
        get("http://api.example.com/x"),
    );
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(header(&rsp, "x-service"), "default/api");
    assert_eq!(header(&rsp, "x-targets"), "2");

    let rsp = call!(
        &config(),
        &strict,
        RegistryOnlyLayer::from_snapshot(),
        get("http://other.example.com/"),
    );
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(header(&rsp, "x-egress-denied"), "registry-only");
    assert!(body(rsp).await.contains("not in the service registry"));

    // A tunnel to a port declared HTTP is refused: its requests must come unencrypted.
    let connect = Request::connect("api.example.com:80")
        .body(Full::default())
        .unwrap();
    let rsp = call!(
        &config(),
        &strict,
        RegistryOnlyLayer::from_snapshot(),
        connect,
    );
    assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&rsp, "x-egress-denied"), "tunnel-not-allowed");
    assert_eq!(header(&rsp, "connection"), "close");
    let connect = Request::connect("tls.example.com:443")
        .body(Full::default())
        .unwrap();
    let rsp = call!(
        &config(),
        &strict,
        RegistryOnlyLayer::from_snapshot(),
        connect,
    );
    assert_eq!(
        (rsp.status(), header(&rsp, "x-service")),
        (StatusCode::OK, "default/tls")
    );

    let open = Settings {
        outbound: Some(OutboundPolicy::AllowAny),
        ..Settings::default()
    };
    let rsp = call!(
        &config(),
        &open,
        RegistryOnlyLayer::from_snapshot(),
        get("http://other.example.com/"),
    );
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        (header(&rsp, "x-passthrough"), header(&rsp, "x-service")),
        ("1", "-")
    );
}

/// A prefix route to subset v2, nothing else routed for the host: the plan is the subset's
/// one endpoint; another path is Envoy's `NR`.
#[tokio::test]
async fn routes_choose_the_subset_and_refuse_unmatched_paths() {
    let mut config = config();
    let mut dr = DestinationPolicy::new(Meta::new("api", "default"), "api.example.com");
    dr.subsets.push(Subset {
        name: "v2".into(),
        labels: vec![("version".into(), "v2".into())],
        lb: None,
        tls: None,
    });
    config.destination_policies.push(dr);
    let v2 = HttpRoute {
        matches: vec![HttpMatch {
            uri: Some(StringMatch::Prefix("/v2".into())),
            ..HttpMatch::default()
        }],
        route: vec![WeightedDestination::to("api.example.com", Some("v2"), 100)],
        ..HttpRoute::default()
    };
    config.virtual_hosts.push(VirtualHost::new(
        Meta::new("api", "default"),
        ["api.example.com"],
        vec![v2],
    ));
    let s = Settings::default();
    let rsp = call!(
        &config,
        &s,
        RouteLayer::from_snapshot(),
        get("http://api.example.com/v2/items"),
    );
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        (header(&rsp, "x-service"), header(&rsp, "x-targets")),
        ("default/api", "1")
    );
    let rsp = call!(
        &config,
        &s,
        RouteLayer::from_snapshot(),
        get("http://api.example.com/v1"),
    );
    assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&rsp, "x-egress-denied"), "no-route");
    // A host without routes is left to the registry.
    let rsp = call!(
        &config,
        &s,
        RouteLayer::from_snapshot(),
        get("http://tls.example.com/"),
    );
    assert_eq!(
        (rsp.status(), header(&rsp, "x-service")),
        (StatusCode::OK, "-")
    );
}

#[tokio::test]
async fn authz_denies_before_anything_is_forwarded() {
    let mut config = config();
    config.access_policies.push(AccessPolicy::new(
        Meta::new("no-admin", "istio-system"),
        AuthzAction::Deny,
        vec![Rule {
            to: vec![Operation {
                paths: vec!["/admin*".into()],
                ..Operation::default()
            }],
            ..Rule::default()
        }],
    ));
    let s = Settings::default();
    let rsp = call!(
        &config,
        &s,
        AuthzLayer::from_snapshot(0),
        get("http://api.example.com/admin/x"),
    );
    assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&rsp, "x-egress-denied"), "rbac-denied");
    assert_eq!(body(rsp).await.trim(), "RBAC: access denied");
    let rsp = call!(
        &config,
        &s,
        AuthzLayer::from_snapshot(0),
        get("http://api.example.com/public"),
    );
    assert_eq!(rsp.status(), StatusCode::OK);
}

/// The normalised path is what the next layer (and upstream) sees; a path two parsers could
/// read differently is refused and the connection closed.
#[tokio::test]
async fn path_normalisation_rewrites_or_refuses() {
    let s = Settings {
        normalization: Some(Normalization::MergeSlashes),
        ..Settings::default()
    };
    let rsp = call!(
        &config(),
        &s,
        PathNormalizeLayer::from_snapshot(),
        get("http://api.example.com/a//b/../c/%7Euser"),
    );
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(header(&rsp, "x-path"), "/a/c/~user");
    let rsp = call!(
        &config(),
        &s,
        PathNormalizeLayer::from_snapshot(),
        get("http://api.example.com/a%zz"),
    );
    assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&rsp, "x-egress-denied"), "malformed");
    assert_eq!(header(&rsp, "connection"), "close");
}

/// A token signed by the configured issuer's key passes with its claim copied to a header
/// (a client's own copy of that header removed); a token signed by another key is 401.
#[tokio::test]
async fn jwt_validates_tokens_and_owns_its_output_headers() {
    let key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let raw = key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..])}]});
    let mut config = config();
    let mut provider = JwtProvider::new("https://issuer.example");
    provider.jwks = Some(jwks.to_string());
    provider
        .output_claim_to_headers
        .push(crate::model::ClaimToHeader {
            header: "x-user".into(),
            claim: "sub".into(),
        });
    config.jwt_authentications.push(JwtAuthentication::new(
        Meta::new("jwt", "istio-system"),
        vec![provider],
    ));
    let sign = |k: &rcgen::KeyPair| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("k1".into());
        let claims = serde_json::json!({"iss": "https://issuer.example", "sub": "alice",
            "exp": 4_000_000_000u64});
        let key = jsonwebtoken::EncodingKey::from_ec_der(&k.serialize_der());
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    };
    let s = Settings::default();
    let with = |token: &str| {
        Request::get("http://api.example.com/")
            .header("host", "api.example.com")
            .header("authorization", format!("Bearer {token}"))
            .header("x-user", "mallory")
            .body(Full::default())
            .unwrap()
    };
    let layer = || JwtLayer::from_snapshot(JwksStore::default());
    let rsp = call!(&config, &s, layer(), with(&sign(&key)));
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(header(&rsp, "x-user"), "alice");
    let rsp = call!(&config, &s, layer(), with(&sign(&other)));
    assert_eq!(rsp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&rsp, "x-egress-denied"), "jwt-invalid");
    // Without a token, RequestAuthentication alone lets the request through.
    let rsp = call!(&config, &s, layer(), get("http://api.example.com/"));
    assert_eq!(rsp.status(), StatusCode::OK);
}

/// A Gateway API `ReplacePrefixMatch` replaces whole segments: `/v1` -> `/` turns
/// `/v1/items` into `/items` (not `//items`) and `/v1` into `/`.
#[tokio::test]
async fn path_prefix_rewrites_replace_whole_segments() {
    let mut config = config();
    let route = HttpRoute {
        matches: vec![HttpMatch {
            uri: Some(StringMatch::PathPrefix("/v1".into())),
            ..HttpMatch::default()
        }],
        route: vec![WeightedDestination::to("api.example.com", None, 100)],
        rewrite: Some(crate::model::Rewrite {
            uri: Some("/".into()),
            authority: None,
            uri_regex: None,
        }),
        ..HttpRoute::default()
    };
    config.virtual_hosts.push(VirtualHost::new(
        Meta::new("api", "default"),
        ["api.example.com"],
        vec![route],
    ));
    let s = Settings::default();
    for (path, want) in [("/v1/items", "/items"), ("/v1", "/"), ("/v1/", "/")] {
        let rsp = call!(
            &config,
            &s,
            RouteLayer::from_snapshot(),
            get(&format!("http://api.example.com{path}")),
        );
        assert_eq!(header(&rsp, "x-path"), want, "{path}");
    }
    let rsp = call!(
        &config,
        &s,
        RouteLayer::from_snapshot(),
        get("http://api.example.com/v1x"),
    );
    assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
}
