//! Istio's `MeshConfig`, from where Istio users already keep it: the `istio` `ConfigMap`
//! (`data.mesh`, a YAML text) or an `IstioOperator`'s `spec.meshConfig`.
//!
//! Read: `extensionProviders[].envoyExtAuthzHttp` (the CUSTOM authorizers),
//! `extensionProviders[].opentelemetry` with `defaultProviders.tracing` (where traces go),
//! `outboundTrafficPolicy.mode`, `pathNormalization.normalization` and `rootNamespace`.
//! The many other MeshConfig fields configure other parts of a mesh and are left alone.

use std::time::Duration;

pub use super::model::{
    BodyInCheck, ExtAuthzHttp, ExtensionProvider, MeshConfig, Meta, OtelProvider, OutboundPolicy,
};
use super::reader::{Fields, Reader};
use crate::model::Normalization;
use crate::yaml::{Node, Value};

/// Reads the `data` of a `ConfigMap` named `istio`: `data.mesh` is MeshConfig YAML.
pub(crate) fn read_config_map(r: &mut Reader<'_>, meta: Meta, data: &Node) -> Option<MeshConfig> {
    let mut f = r.map(data, "data")?;
    let mesh = f.take("mesh");
    f.ignore_rest();
    let mesh = mesh?;
    let text = r.string(mesh, "data.mesh")?;
    let docs = match crate::yaml::parse_documents(&text) {
        Ok(d) => d,
        Err(e) => {
            r.push(
                crate::diag::Severity::Error,
                mesh.line + e.line,
                e.col,
                "data.mesh",
                format!("invalid YAML: {}", e.message),
            );
            return None;
        }
    };
    let empty = Node {
        value: Value::Null,
        line: mesh.line,
        col: mesh.col,
    };
    // A block scalar's text starts on the line after its indicator.
    let mut doc = docs.into_iter().next().unwrap_or(empty);
    shift(&mut doc, mesh.line);
    read_mesh(r, meta, &doc, "data.mesh")
}

/// Moves the positions of a tree parsed from an embedded text to the enclosing file's.
fn shift(node: &mut Node, by: u32) {
    node.line += by;
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| shift(n, by)),
        Value::Map(entries) => entries.iter_mut().for_each(|e| {
            e.line += by;
            shift(&mut e.value, by)
        }),
        _ => {}
    }
}

/// Reads a MeshConfig mapping at `path`.
pub(crate) fn read_mesh(
    r: &mut Reader<'_>,
    meta: Meta,
    node: &Node,
    path: &str,
) -> Option<MeshConfig> {
    let mut f = r.map(node, path)?;
    let errors_before = r.diags.errors().count();
    let mut mesh = MeshConfig {
        meta,
        outbound: None,
        extension_providers: Vec::new(),
        otel_providers: Vec::new(),
        default_tracing: Vec::new(),
        path_normalization: None,
        root_namespace: None,
    };
    if let Some(otp) = f.take("outboundTrafficPolicy") {
        let p = format!("{path}.outboundTrafficPolicy");
        if let Some(mut of) = r.map(otp, &p) {
            if let Some(mode) = of.take("mode") {
                mesh.outbound =
                    match r.one_of(mode, &format!("{p}.mode"), &["ALLOW_ANY", "REGISTRY_ONLY"]) {
                        Some("ALLOW_ANY") => Some(OutboundPolicy::AllowAny),
                        Some(_) => Some(OutboundPolicy::RegistryOnly),
                        None => None,
                    };
            }
            of.finish(r, &["egressProxy"]);
        }
    }
    if let Some(pn) = f.take("pathNormalization") {
        let p = format!("{path}.pathNormalization");
        if let Some(mut pf) = r.map(pn, &p) {
            if let Some(n) = pf.take("normalization") {
                mesh.path_normalization = r
                    .one_of(
                        n,
                        &format!("{p}.normalization"),
                        &[
                            "DEFAULT",
                            "NONE",
                            "BASE",
                            "MERGE_SLASHES",
                            "DECODE_AND_MERGE_SLASHES",
                        ],
                    )
                    .map(Normalization::from_istio);
            }
            pf.finish(r, &[]);
        }
    }
    if let Some(n) = f.take("rootNamespace") {
        mesh.root_namespace = r.string(n, &format!("{path}.rootNamespace"));
    }
    if let Some(n) = f.take("extensionProviders") {
        let p = format!("{path}.extensionProviders");
        for (i, item) in r.list(n, &p).unwrap_or(&[]).iter().enumerate() {
            let Some(provider) = read_provider(r, item, &format!("{p}[{i}]")) else {
                continue;
            };
            let name = match &provider {
                Provider::ExtAuthz(x) => &x.name,
                Provider::Otel(x) => &x.name,
            };
            let taken = mesh.extension_providers.iter().any(|x| &x.name == name)
                || mesh.otel_providers.iter().any(|x| &x.name == name);
            if taken {
                r.error(
                    item,
                    format!("{p}[{i}].name"),
                    format!("provider {name:?} is declared twice"),
                );
            }
            match provider {
                Provider::ExtAuthz(x) => mesh.extension_providers.push(x),
                Provider::Otel(x) => mesh.otel_providers.push(x),
            }
        }
    }
    if let Some(n) = f.take("defaultProviders") {
        let p = format!("{path}.defaultProviders");
        if let Some(mut df) = r.map(n, &p) {
            if let Some(t) = df.take("tracing") {
                mesh.default_tracing = r.strings(t, &format!("{p}.tracing"));
            }
            // Metrics and access logging providers configure other parts of a mesh.
            df.ignore_rest();
        }
    }
    // The rest of MeshConfig configures other parts of a mesh.
    f.ignore_rest();
    (r.diags.errors().count() == errors_before).then_some(mesh)
}

enum Provider {
    ExtAuthz(ExtensionProvider),
    Otel(OtelProvider),
}

fn read_provider(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Provider> {
    let mut f = r.map(node, path)?;
    let name = f.string(r, "name").unwrap_or_default();
    if name.is_empty() {
        r.error(
            node,
            format!("{path}.name"),
            "an extension provider needs a name",
        );
    }
    let http = match (f.take("envoyExtAuthzHttp"), f.take("envoyExtAuthzGrpc")) {
        (Some(n), None) => read_ext_authz_http(r, n, &format!("{path}.envoyExtAuthzHttp"), false),
        (None, Some(n)) => read_ext_authz_http(r, n, &format!("{path}.envoyExtAuthzGrpc"), true),
        (Some(_), Some(_)) => {
            r.error(
                node,
                path,
                "a provider is envoyExtAuthzHttp or envoyExtAuthzGrpc, not both",
            );
            None
        }
        (None, None) => None,
    };
    if let Some(n) = f.take("opentelemetry") {
        let p = format!("{path}.opentelemetry");
        let mut of = r.map(n, &p)?;
        let service = of.string(r, "service").unwrap_or_default();
        let service = service
            .split_once('/')
            .map_or(service.as_str(), |(_, h)| h)
            .to_ascii_lowercase();
        let port = of
            .take("port")
            .and_then(|n| r.uint(n, &format!("{p}.port"), 1, 65535).map(|p| p as u16));
        let http_path = of.take("http").map(|h| {
            let hp = format!("{p}.http");
            let mut hf = r.map(h, &hp);
            let path = hf.as_mut().and_then(|hf| hf.take("path"));
            let path = path.and_then(|n| r.string(n, &format!("{hp}.path")));
            if let Some(hf) = hf {
                hf.finish(r, &["timeout", "headers"]);
            }
            path.unwrap_or_else(|| "/v1/traces".to_owned())
        });
        of.finish(
            r,
            &[
                "grpc",
                "maxTagLength",
                "resourceDetectors",
                "dynatraceSampler",
            ],
        );
        if service.is_empty() {
            r.error(
                n,
                format!("{p}.service"),
                "an OpenTelemetry provider needs a service",
            );
            return None;
        }
        let Some(port) = port else {
            r.error(
                n,
                format!("{p}.port"),
                "an OpenTelemetry provider needs a port",
            );
            return None;
        };
        f.ignore_rest();
        return Some(Provider::Otel(OtelProvider {
            name,
            service,
            port,
            http_path,
        }));
    }
    // Tracing, logging and metrics providers are for other parts of the mesh.
    f.ignore_rest();
    Some(Provider::ExtAuthz(ExtensionProvider { name, http: http? }))
}

fn patterns(r: &mut Reader<'_>, f: &mut Fields<'_>, key: &str) -> Vec<String> {
    match f.take(key) {
        None => Vec::new(),
        Some(n) => r
            .strings(n, &f.path(key))
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
    }
}

/// `envoyExtAuthzHttp`, or with `grpc` `envoyExtAuthzGrpc` (the same fields but those that
/// shape an HTTP check: the gRPC check carries every header).
fn read_ext_authz_http(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    grpc: bool,
) -> Option<ExtAuthzHttp> {
    let mut f = r.map(node, path)?;
    let (service, port) = authorizer_address(r, &mut f, node, path);
    let timeout = match f.take("timeout") {
        None => Some(Duration::from_secs(10)),
        Some(n) => r.positive_duration(n, &f.path("timeout")),
    };
    let path_prefix = if grpc {
        String::new()
    } else {
        f.string(r, "pathPrefix").unwrap_or_default()
    };
    if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
        r.error(
            node,
            format!("{path}.pathPrefix"),
            "pathPrefix must start with '/'",
        );
    }
    let fail_open = f.boolean(r, "failOpen").unwrap_or(false);
    let status_on_error = status_on_error(r, &mut f, path);
    let (include_request_headers_in_check, include_additional_headers_in_check) = if grpc {
        (Vec::new(), Vec::new())
    } else {
        (
            patterns(r, &mut f, "includeRequestHeadersInCheck"),
            additional_headers(r, &mut f, node),
        )
    };
    let include_request_body_in_check = match f.take("includeRequestBodyInCheck") {
        None => None,
        Some(n) => Some(read_body_in_check(
            r,
            n,
            &f.path("includeRequestBodyInCheck"),
        )?),
    };
    let mut header_patterns = |key| {
        if grpc {
            Vec::new()
        } else {
            patterns(r, &mut f, key)
        }
    };
    let headers_to_upstream_on_allow = header_patterns("headersToUpstreamOnAllow");
    let headers_to_downstream_on_deny = header_patterns("headersToDownstreamOnDeny");
    let headers_to_downstream_on_allow = header_patterns("headersToDownstreamOnAllow");
    if grpc {
        // Envoy's route cache: there is none to clear here.
        let _clear_route_cache = f.take("clearRouteCache");
    }
    f.finish(r, &[]);
    Some(ExtAuthzHttp {
        service,
        port: port?,
        timeout: timeout?,
        path_prefix,
        fail_open,
        status_on_error: status_on_error?,
        include_request_headers_in_check,
        include_additional_headers_in_check,
        include_request_body_in_check,
        headers_to_upstream_on_allow,
        headers_to_downstream_on_deny,
        headers_to_downstream_on_allow,
        grpc,
    })
}

/// `service` (a `namespace/host` is the host) and `port` of an authorizer, both required.
fn authorizer_address(
    r: &mut Reader<'_>,
    f: &mut Fields<'_>,
    node: &Node,
    path: &str,
) -> (String, Option<u16>) {
    let service = f.string(r, "service").unwrap_or_default();
    if service.is_empty() {
        r.error(
            node,
            format!("{path}.service"),
            "the authorizer's service is required",
        );
    }
    let service = service
        .rsplit('/')
        .next()
        .unwrap_or(&service)
        .to_ascii_lowercase();
    let port = match f.take("port") {
        Some(n) => r
            .uint(n, &format!("{path}.port"), 1, 65535)
            .map(|p| p as u16),
        None => {
            r.error(
                node,
                format!("{path}.port"),
                "the authorizer's port is required",
            );
            None
        }
    };
    (service, port)
}

/// `statusOnError`: an HTTP status as a string, 403 when absent.
fn status_on_error(r: &mut Reader<'_>, f: &mut Fields<'_>, path: &str) -> Option<u16> {
    match f.take("statusOnError") {
        None => Some(403),
        Some(n) => {
            r.string(n, &format!("{path}.statusOnError"))
                .and_then(|s| match s.parse::<u16>() {
                    Ok(c) if (200..600).contains(&c) => Some(c),
                    _ => {
                        r.error(
                            n,
                            format!("{path}.statusOnError"),
                            format!("{s:?} is not an HTTP status code"),
                        );
                        None
                    }
                })
        }
    }
}

/// `includeAdditionalHeadersInCheck`: names lowercased, each pair a valid header.
fn additional_headers(
    r: &mut Reader<'_>,
    f: &mut Fields<'_>,
    node: &Node,
) -> Vec<(String, String)> {
    let key = "includeAdditionalHeadersInCheck";
    let headers: Vec<(String, String)> = f
        .string_map(r, key)
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    for (k, v) in &headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            r.error(node, format!("{}.{k}", f.path(key)), "not a valid header");
        }
    }
    headers
}

/// `includeRequestBodyInCheck`: how much of the body the authorizer sees.
fn read_body_in_check(r: &mut Reader<'_>, n: &Node, path: &str) -> Option<BodyInCheck> {
    let mut bf = r.map(n, path)?;
    let max = bf
        .uint(r, "maxRequestBytes", 1, 64 * 1024 * 1024)
        .unwrap_or(8192) as u32;
    let partial = bf.boolean(r, "allowPartialMessage").unwrap_or(false);
    bf.finish(r, &["packAsBytes"]);
    Some(BodyInCheck {
        max_request_bytes: max,
        allow_partial_message: partial,
    })
}
