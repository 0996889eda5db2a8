//! An application's HTTP client behind the gateway's layers, from the same Istio YAML: only
//! registered destinations, TLS originated where a `DestinationRule` says (the app writes
//! `http://`), and Prometheus metrics of every call, with no gateway process.

use egress_core::destination::DestinationLayer;
use egress_core::telemetry::{Metrics, TelemetryLayer};
use egress_core::transport::{DialTable, Dialer, DialerConfig, Upstream, UpstreamConfig};
use egress_core::{BoxBody, BoxError, respond};
use egress_policy::compile::{Settings, compile};
use egress_policy::istio::ConfigSet;
use egress_policy::layers::RegistryOnlyLayer;
use egress_policy::snapshot::{PolicyStore, SnapshotLayer};
use egress_tls::EgressConnector;
use http::{Request, Response};
use std::sync::Arc;
use tower::{Service, ServiceBuilder};

/// The client and its metrics ([`Metrics::encode`] is Prometheus text).
pub fn client<B>(
    yaml: &str,
) -> Result<
    (
        impl Service<Request<B>, Response = Response<BoxBody>, Error = BoxError> + Clone + use<B>,
        Arc<Metrics>,
    ),
    String,
>
where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + Unpin + 'static,
{
    let config = ConfigSet::load_str("client.yaml", yaml);
    let policy = compile(&config, &Settings::default()).map_err(|d| d.to_string())?;
    let metrics = Metrics::new("my-app", false);
    let dialer = Arc::new(Dialer::new(DialerConfig::default()));
    let table = DialTable::default();
    let tls = EgressConnector::new(table.clone(), dialer.config().connect_timeout(), None);
    let upstream = UpstreamConfig::default().with_dial_table(table);
    let svc = ServiceBuilder::new()
        .layer(TelemetryLayer::new(metrics.clone()))
        .layer(SnapshotLayer::new(PolicyStore::new(policy.policy)))
        .map_result(respond::into_response)
        .layer(DestinationLayer::for_client())
        .layer(RegistryOnlyLayer::from_snapshot())
        .service(Upstream::with_connector(tls, dialer, upstream));
    Ok((svc, metrics))
}
