//! The admin listener: readiness and the effective configuration.

use bytes::Bytes;
use egress_core::BoxBody;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the admin endpoints show.
pub(crate) struct AdminState {
    pub(crate) ready: AtomicBool,
    pub(crate) mirror_stats: Arc<egress_core::mirror::MirrorStats>,
    pub(crate) metrics: Arc<egress_core::telemetry::Metrics>,
    pub(crate) reloader: Arc<crate::reload::Reloader>,
    pub(crate) policy: egress_policy::snapshot::PolicyStore,
    pub(crate) security: crate::stack::Security,
    pub(crate) tracer: Option<Arc<egress_core::trace::Tracer>>,
    pub(crate) conn_stats: Arc<egress_tls::ConnStats>,
    pub(crate) dump: StaticDump,
}

/// The effective security configuration.
#[derive(Serialize)]
struct AuthzDump {
    /// Every AuthorizationPolicy, with the number of rules in force or why it does not apply.
    policies: Vec<PolicyDump>,
    /// The JWT issuers in force.
    #[serde(rename = "jwtIssuers")]
    jwt_issuers: Vec<String>,
    /// Each jwksUri: keys in force, when fetched, the last error.
    jwks: std::collections::HashMap<String, egress_policy::jwt::JwksStatus>,
    #[serde(rename = "pathNormalization")]
    path_normalization: egress_policy::authz::path::Normalization,
}

#[derive(Serialize)]
struct PolicyDump {
    name: String,
    action: &'static str,
    rules: Option<usize>,
    #[serde(rename = "dryRun")]
    dry_run: bool,
    #[serde(rename = "notApplied", skip_serializing_if = "Option::is_none")]
    not_applied: Option<String>,
}

/// The parts of `/config_dump` that do not change while running.
#[derive(Serialize)]
pub(crate) struct StaticDump {
    pub(crate) listeners: Listeners,
    pub(crate) resolve: Vec<ResolveDump>,
    pub(crate) gateway: GatewayDump,
}

#[derive(Serialize)]
pub(crate) struct Listeners {
    pub(crate) proxy: SocketAddr,
    pub(crate) admin: SocketAddr,
    #[serde(rename = "gatewayServers")]
    pub(crate) gateway_servers: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct GatewayDump {
    pub(crate) name: String,
    pub(crate) labels: Vec<String>,
    #[serde(rename = "selectedBy")]
    pub(crate) selected_by: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct ResolveDump {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) addresses: Vec<String>,
}

/// The resources of the configuration in force; its services are kept (once) by the
/// registry.
#[derive(Serialize)]
struct Resources<'a> {
    service_entries: &'a [Arc<egress_policy::model::Service>],
    #[serde(flatten)]
    config: &'a egress_policy::istio::ConfigSet,
}

#[derive(Serialize)]
struct Dump<'a> {
    #[serde(flatten)]
    registry: egress_policy::registry::RegistrySummary<'a>,
    routes: egress_policy::routes::RouteSummary,
    #[serde(rename = "lastReload")]
    last_reload: crate::reload::ReloadStatus,
    /// The files of the configuration in force.
    sources: &'a [String],
    /// Every resource read, as parsed (VirtualServices, DestinationRules, Gateways, ...).
    resources: Resources<'a>,
    /// Documents of kinds this gateway does not read.
    ignored: &'a [String],
    /// The warnings of the configuration in force.
    warnings: &'a [String],
    authorization: AuthzDump,
    #[serde(flatten)]
    fixed: &'a StaticDump,
}

pub(crate) async fn handle(
    state: Arc<AdminState>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let rsp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz/ready") => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/config_dump") => {
            // One snapshot for the whole dump, as for a request.
            let policy = state.policy.load();
            let dump = Dump {
                registry: policy.registry.summary(),
                routes: policy.routes.summary(),
                sources: &policy.config.sources,
                resources: Resources {
                    service_entries: policy.registry.services(),
                    config: &policy.config,
                },
                ignored: &policy.config.ignored,
                warnings: &policy.warnings,
                authorization: {
                    let authz = &policy.authz;
                    AuthzDump {
                        policies: authz
                            .summary()
                            .iter()
                            .map(|p| PolicyDump {
                                name: p.name.clone(),
                                action: p.action.as_str(),
                                rules: p.applies.as_ref().ok().copied(),
                                dry_run: p.dry_run,
                                not_applied: p.applies.as_ref().err().cloned(),
                            })
                            .collect(),
                        jwt_issuers: policy.jwt.issuers(),
                        jwks: state.security.jwks.status(),
                        path_normalization: policy.normalization,
                    }
                },
                last_reload: state
                    .reloader
                    .status
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_default(),
                fixed: &state.dump,
            };
            match serde_json::to_vec_pretty(&dump) {
                Ok(json) => {
                    let mut rsp = Response::new(BoxBody::from(Bytes::from(json)));
                    rsp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    rsp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        (&Method::GET, "/stats" | "/metrics" | "/stats/prometheus") => {
            let body = metrics_text(&state);
            let mut rsp = text(StatusCode::OK, &body);
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            rsp
        }
        (_, "/healthz/ready" | "/config_dump" | "/stats" | "/metrics" | "/stats/prometheus") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz/ready or /config_dump\n",
        ),
    };
    Ok(rsp)
}

/// Counters in Prometheus text format (the full telemetry set comes with metrics).
/// OpenMetrics text: the families of prometheus-client, then ours, then `# EOF` (what
/// `/metrics` serves and the OTLP metrics export reads).
pub(crate) fn metrics_text(state: &AdminState) -> String {
    let encoded = state.metrics.encode();
    encoded
        .strip_suffix("# EOF\n")
        .unwrap_or(&encoded)
        .to_owned()
        + &stats(state)
        + "# EOF\n"
}

fn stats(state: &AdminState) -> String {
    let m = &state.mirror_stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "# HELP egress_mirror_requests Shadow copies of requests, by outcome.\n\
         # TYPE egress_mirror_requests counter\n\
         egress_mirror_requests_total{{outcome=\"sent\"}} {}\n\
         egress_mirror_requests_total{{outcome=\"completed\"}} {}\n\
         egress_mirror_requests_total{{outcome=\"failed\"}} {}\n\
         egress_mirror_requests_total{{outcome=\"dropped_overload\"}} {}\n\
         egress_mirror_requests_total{{outcome=\"dropped_body\"}} {}\n",
        get(&m.sent),
        get(&m.completed),
        get(&m.failed),
        get(&m.dropped_overload),
        get(&m.dropped_body)
    ) + &format!(
        "# HELP egress_config_reloads Configuration reloads, by outcome.\n\
         # TYPE egress_config_reloads counter\n\
         egress_config_reloads_total{{outcome=\"success\"}} {}\n\
         egress_config_reloads_total{{outcome=\"failure\"}} {}\n",
        get(&state.reloader.successes),
        get(&state.reloader.failures)
    ) + &format!(
        "# HELP egress_upstream_connections Upstream connections the pool holds open.\n\
         # TYPE egress_upstream_connections gauge\n\
         egress_upstream_connections{{tls=\"false\"}} {}\n\
         egress_upstream_connections{{tls=\"true\"}} {}\n\
         # HELP egress_upstream_connections_opened Upstream connections made.\n\
         # TYPE egress_upstream_connections_opened counter\n\
         egress_upstream_connections_opened_total {}\n",
        get(&state.conn_stats.plain_open),
        get(&state.conn_stats.tls_open),
        get(&state.conn_stats.opened)
    ) + &match state.metrics.access_file() {
        None => String::new(),
        Some(f) => format!(
            "# HELP egress_access_log_dropped Access log lines dropped because the writer fell behind.\n\
             # TYPE egress_access_log_dropped counter\n\
             egress_access_log_dropped_total {}\n",
            f.dropped()
        ),
    } + &match &state.tracer {
        None => String::new(),
        Some(t) => {
            let s = t.stats();
            format!(
                "# HELP egress_trace_spans Spans by outcome: exported, dropped (queue full), failed (export error).\n\
                 # TYPE egress_trace_spans counter\n\
                 egress_trace_spans_total{{outcome=\"exported\"}} {}\n\
                 egress_trace_spans_total{{outcome=\"dropped\"}} {}\n\
                 egress_trace_spans_total{{outcome=\"failed\"}} {}\n",
                get(&s.exported),
                get(&s.dropped),
                get(&s.failed)
            )
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<BoxBody> {
    let mut rsp = Response::new(BoxBody::from(Bytes::copy_from_slice(body.as_bytes())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
