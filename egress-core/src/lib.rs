//! Mechanisms for controlling outbound (egress) HTTP traffic as composable `tower` layers.
//!
//! `egress-core` holds the pieces that carry no policy of their own: the normalised
//! [`Destination`](ctx::Destination) of a request, the upstream transport (resolver, SSRF guard,
//! pooled connector) and the mapping of errors to responses. Policy decisions (which destinations
//! are registered, who may call them) live in `egress-policy` and speak to these pieces only
//! through the typed facts in [`ctx`].
//!
//! A gateway stack, outermost first (the first layer sees the request first):
//!
//! ```text
//!  request ──► map_result(respond::into_response)   errors -> 502/504 with a reason
//!              DestinationLayer                       the only URI / Host / CONNECT parser (400)
//!              RegistryOnlyLayer (egress-policy)      502 / 403 for unregistered destinations
//!              ProxyHeadersLayer                      hop-by-hop headers, Via, loop detection
//!              Upstream (transport)                   resolve once, SSRF guard, pooled dial
//! ```
//!
//! Each layer reads the facts that earlier layers inserted into the request extensions and
//! refuses with a precise [`Rejection`](ctx::Rejection) when one is missing, never with a panic.
//!
//! ```
//! use egress_core::ctx::Destination;
//! use egress_core::destination::DestinationLayer;
//! use egress_core::{BoxBody, BoxError, respond};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let svc = ServiceBuilder::new()
//!     .map_result(respond::into_response)
//!     .layer(DestinationLayer::new())
//!     .service_fn(|req: http::Request<BoxBody>| async move {
//!         // The one parse of where the request goes, for every later layer.
//!         let dst = req.extensions().get::<Destination>().expect("parsed");
//!         Ok::<_, BoxError>(http::Response::new(BoxBody::from(dst.to_string())))
//!     });
//! let req = http::Request::get("http://API.example.com./v1")
//!     .header("host", "api.example.com")
//!     .body(BoxBody::empty())
//!     .unwrap();
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let rsp = rt.block_on(svc.oneshot(req)).unwrap();
//! assert_eq!(rsp.status(), 200);
//! ```

pub mod access_log;
pub mod body;
pub mod ctx;
pub mod destination;
pub mod error;
pub mod framing;
pub mod gateway_headers;
pub mod grpc_reply;
pub mod headers;
pub mod host;
pub mod ip;
pub mod mirror;
pub mod proxy_headers;
pub mod respond;
pub mod retry;
pub mod telemetry;
pub mod trace;
pub mod transport;

pub use body::BoxBody;
pub use error::BoxError;
