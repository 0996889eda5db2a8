//! The gRPC authorizer (`envoyExtAuthzGrpc`): Envoy's `envoy.service.auth.v3.Authorization`
//! `Check`, unary over HTTP/2 (prior knowledge, as Envoy dials a plain gRPC cluster).
//!
//! The messages are the fields of Envoy's `external_auth.proto` and
//! `attribute_context.proto` that the check needs, with their field numbers, written with
//! `prost` (already the gateway's protobuf codec for OTLP): the full Envoy API crates
//! would bring thousands of generated types for these few. The tests talk to a tonic
//! server built from Envoy's own generated types, so the two are checked against each other.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::Answer;

/// The method's path.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Protobuf messages of the check, named as in Envoy's API.
#[allow(
    missing_docs,
    reason = "fields mirror Envoy's proto; see its documentation"
)]
pub mod proto {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckRequest {
        #[prost(message, optional, tag = "1")]
        pub attributes: Option<AttributeContext>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeContext {
        #[prost(message, optional, tag = "1")]
        pub source: Option<Peer>,
        #[prost(message, optional, tag = "2")]
        pub destination: Option<Peer>,
        #[prost(message, optional, tag = "4")]
        pub request: Option<AttributeRequest>,
        #[prost(map = "string, string", tag = "10")]
        pub context_extensions: HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Peer {
        #[prost(message, optional, tag = "1")]
        pub address: Option<Address>,
        #[prost(string, tag = "2")]
        pub service: String,
        #[prost(string, tag = "4")]
        pub principal: String,
    }

    /// `config.core.v3.Address` with its `socket_address` (field 1 of its oneof).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Address {
        #[prost(message, optional, tag = "1")]
        pub socket_address: Option<SocketAddress>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SocketAddress {
        #[prost(string, tag = "2")]
        pub address: String,
        #[prost(uint32, tag = "3")]
        pub port_value: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeRequest {
        #[prost(message, optional, tag = "1")]
        pub time: Option<Timestamp>,
        #[prost(message, optional, tag = "2")]
        pub http: Option<HttpRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HttpRequest {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub method: String,
        #[prost(map = "string, string", tag = "3")]
        pub headers: HashMap<String, String>,
        #[prost(string, tag = "4")]
        pub path: String,
        #[prost(string, tag = "5")]
        pub host: String,
        #[prost(string, tag = "6")]
        pub scheme: String,
        #[prost(int64, tag = "9")]
        pub size: i64,
        #[prost(string, tag = "10")]
        pub protocol: String,
        #[prost(string, tag = "11")]
        pub body: String,
        #[prost(bytes = "bytes", tag = "12")]
        pub raw_body: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<RpcStatus>,
        #[prost(message, optional, tag = "2")]
        pub denied_response: Option<DeniedHttpResponse>,
        #[prost(message, optional, tag = "3")]
        pub ok_response: Option<OkHttpResponse>,
    }

    /// `google.rpc.Status`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RpcStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeniedHttpResponse {
        /// `type.v3.HttpStatus`.
        #[prost(message, optional, tag = "1")]
        pub status: Option<HttpStatus>,
        #[prost(message, repeated, tag = "2")]
        pub headers: Vec<HeaderValueOption>,
        #[prost(string, tag = "3")]
        pub body: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HttpStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OkHttpResponse {
        #[prost(message, repeated, tag = "2")]
        pub headers: Vec<HeaderValueOption>,
        #[prost(string, repeated, tag = "5")]
        pub headers_to_remove: Vec<String>,
        #[prost(message, repeated, tag = "6")]
        pub response_headers_to_add: Vec<HeaderValueOption>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderValueOption {
        #[prost(message, optional, tag = "1")]
        pub header: Option<HeaderValue>,
        /// `google.protobuf.BoolValue`.
        #[prost(message, optional, tag = "2")]
        pub append: Option<BoolValue>,
        #[prost(int32, tag = "3")]
        pub append_action: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
        #[prost(bytes = "bytes", tag = "3")]
        pub raw_value: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BoolValue {
        #[prost(bool, tag = "1")]
        pub value: bool,
    }
}

/// What an allowing gRPC authorizer asks of the request and the response.
#[derive(Debug, Default)]
pub(super) struct OkChanges {
    /// Set (or with `true` appended) on the request upstream.
    pub(super) upstream: Vec<(HeaderName, HeaderValue, bool)>,
    /// Removed from the request upstream.
    pub(super) remove: Vec<HeaderName>,
    /// Added to the response.
    pub(super) downstream: Vec<(HeaderName, HeaderValue)>,
}

/// The check for a request: its method, path, host, scheme, every header (merged per
/// name, as Envoy sends them), the body when the provider wants it, the peer.
pub(super) fn check_request(
    parts: &http::request::Parts,
    (body, _partial): (Bytes, bool),
    peer: Option<std::net::SocketAddr>,
    principal: Option<&str>,
) -> proto::CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    headers.insert(":authority".into(), host.clone());
    headers.insert(":method".into(), parts.method.as_str().into());
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    headers.insert(":path".into(), path.clone());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let http = proto::HttpRequest {
        id: headers.get("x-request-id").cloned().unwrap_or_default(),
        method: parts.method.as_str().into(),
        headers,
        path,
        host,
        scheme: parts.uri.scheme_str().unwrap_or("http").into(),
        size: body.len() as i64,
        protocol: format!("{:?}", parts.version),
        body: std::str::from_utf8(&body)
            .map(str::to_owned)
            .unwrap_or_default(),
        raw_body: body,
    };
    let source = proto::Peer {
        address: peer.map(|p| proto::Address {
            socket_address: Some(proto::SocketAddress {
                address: p.ip().to_string(),
                port_value: u32::from(p.port()),
            }),
        }),
        principal: principal
            .map(|p| format!("spiffe://{p}"))
            .unwrap_or_default(),
        ..Default::default()
    };
    proto::CheckRequest {
        attributes: Some(proto::AttributeContext {
            source: Some(source),
            request: Some(proto::AttributeRequest {
                time: Some(proto::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}

/// One unary call, bounded by `timeout` for the whole exchange.
pub(super) async fn call(
    client: &super::Client<super::HttpConnector, Full<Bytes>>,
    target: &str,
    check: proto::CheckRequest,
    timeout: Duration,
) -> Result<proto::CheckResponse, String> {
    let mut frame = BytesMut::with_capacity(5 + check.encoded_len());
    frame.put_u8(0);
    frame.put_u32(check.encoded_len() as u32);
    check
        .encode(&mut frame)
        .map_err(|e| format!("encoding the check: {e}"))?;
    let mut req = Request::new(Full::new(frame.freeze()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{target}{CHECK_PATH}")
        .parse()
        .map_err(|e| format!("authorizer address {target:?}: {e}"))?;
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Ok(v) = HeaderValue::from_str(&format!("{}m", timeout.as_millis().max(1))) {
        h.insert("grpc-timeout", v);
    }
    let exchange = async {
        let rsp = client.request(req).await.map_err(|e| format!("{e}"))?;
        let (parts, body) = rsp.into_parts();
        if parts.status != StatusCode::OK {
            return Err(format!("the authorizer answered HTTP {}", parts.status));
        }
        let collected = Limited::new(body, 64 * 1024)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        grpc_status(&parts.headers, &trailers)?;
        decode(collected.to_bytes())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// `grpc-status` 0, from the trailers or (trailers-only answers) the headers.
fn grpc_status(headers: &HeaderMap, trailers: &HeaderMap) -> Result<(), String> {
    let status = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok());
    match status {
        Some("0") => Ok(()),
        Some(code) => {
            let message = trailers
                .get("grpc-message")
                .or_else(|| headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Err(format!(
                "the authorizer answered gRPC status {code} {message}"
            ))
        }
        None => Err("the authorizer's answer has no grpc-status".into()),
    }
}

/// Exactly one uncompressed message frame.
fn decode(mut body: Bytes) -> Result<proto::CheckResponse, String> {
    if body.len() < 5 {
        return Err("the authorizer's answer has no message".into());
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err("the authorizer's answer is compressed, which was not asked for".into());
    }
    if body.len() != len {
        return Err(format!(
            "the authorizer's answer frame says {len} bytes and carries {}",
            body.len()
        ));
    }
    proto::CheckResponse::decode(body).map_err(|e| format!("decoding the answer: {e}"))
}

/// The answer as the HTTP authorizer's would read: status 200 with the changes to make
/// when allowed; the denied status (403 unless given), headers and body otherwise.
pub(super) fn answer(rsp: proto::CheckResponse) -> Answer {
    let code = rsp.status.as_ref().map_or(0, |s| s.code);
    let mut headers = HeaderMap::new();
    if code == 0 {
        let ok = rsp.ok_response.unwrap_or_default();
        let mut changes = OkChanges::default();
        for (name, value, append) in options(&ok.headers) {
            changes.upstream.push((name, value, append));
        }
        for name in &ok.headers_to_remove {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                changes.remove.push(n);
            }
        }
        for (name, value, _) in options(&ok.response_headers_to_add) {
            changes.downstream.push((name, value));
        }
        return Answer {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
            grpc: Some(changes),
            from_grpc: true,
        };
    }
    let denied = rsp.denied_response.unwrap_or_default();
    let status = denied
        .status
        .and_then(|s| u16::try_from(s.code).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| !s.is_informational() && *s != StatusCode::OK)
        .unwrap_or(StatusCode::FORBIDDEN);
    for (name, value, _) in options(&denied.headers) {
        headers.append(name, value);
    }
    Answer {
        status,
        headers,
        body: Bytes::from(denied.body),
        grpc: None,
        from_grpc: true,
    }
}

/// Valid header options: name, value and whether to append (Envoy's `append`, else its
/// `append_action`; unset means overwrite, as the ext_authz messages document).
fn options(list: &[proto::HeaderValueOption]) -> Vec<(HeaderName, HeaderValue, bool)> {
    list.iter()
        .filter_map(|o| {
            let h = o.header.as_ref()?;
            let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
            let raw = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            let value = HeaderValue::from_bytes(raw).ok()?;
            // `append` when given; otherwise every `append_action` but appending
            // (APPEND_IF_EXISTS_OR_ADD, 0) replaces, and for 0 the messages document
            // "append defaults to false": a client's copy never survives beside it.
            let append = o.append.as_ref().is_some_and(|b| b.value);
            Some((name, value, append))
        })
        .collect()
}
