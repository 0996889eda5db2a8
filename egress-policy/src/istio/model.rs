//! The model's types under the names of the Istio resources they are read from, so each
//! reader speaks Istio while producing [`crate::model`] values.

pub use crate::model::Binding;
pub use crate::model::{
    AccessPolicy as AuthorizationPolicy, AuthzAction, BodyInCheck, ClaimToHeader, ClientTls,
    Condition, DestinationPolicy as DestinationRule, DirectResponse, Endpoint, ExtensionProvider,
    Fault, Gateway, HeaderOps, Headers, HttpAuthorizer as ExtAuthzHttp, HttpMatch, HttpRoute,
    JwtAuthentication as RequestAuthentication, JwtHeader, JwtProvider as JwtRule, LoadBalancer,
    Location, MeshSettings as MeshConfig, Meta, Operation, OtelProvider, OutboundPolicy,
    OutboundSetting as Sidecar, Port, Protocol, Redirect, Resolution, Retries, Rewrite,
    RouteTarget, Rule, Scope, Server, ServerPort, ServerTlsFiles, Service as ServiceEntry, Source,
    StringMatch, Subset, TargetRef, TcpRoute, TlsMatch, TlsRoute, VirtualHost as VirtualService,
    WeightedDestination,
};
