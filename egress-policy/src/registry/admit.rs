//! The registry's one decision for a destination, asked alike by HTTP requests, `CONNECT`
//! tunnels and TLS passthrough connections.

use egress_core::ctx::{Destination, Refusal, RejectionKind, RequestForm};
use http::StatusCode;
use std::sync::Arc;

use super::{RegisteredPort, Registry};
use crate::model::OutboundPolicy;

/// What the registry lets through.
#[derive(Clone, Copy, Debug)]
pub enum Admission<'a> {
    /// A registered port of a service: its plan says how it is reached.
    Registered(&'a Arc<RegisteredPort>),
    /// Not registered, let through under `ALLOW_ANY` (Istio's `PassthroughCluster`).
    Passthrough,
}

impl Registry {
    /// Admits `dst` or says why not. Under `REGISTRY_ONLY` an unregistered destination is
    /// refused (502 for a request, 403 and close for a tunnel), and so is a tunnel
    /// (`CONNECT`, passthrough) to a port declared as HTTP: its requests must come as plain
    /// HTTP so that they can be checked.
    pub fn admit(&self, dst: &Destination) -> Result<Admission<'_>, Refusal> {
        let tunnel = dst.form() == RequestForm::Connect;
        match self.lookup(dst) {
            Some(found)
                if tunnel
                    && self.policy() == OutboundPolicy::RegistryOnly
                    && !found.port.protocol.allows_tunnel() =>
            {
                Err(Refusal::new(
                    RejectionKind::TunnelNotAllowed,
                    StatusCode::FORBIDDEN,
                    true,
                    format!(
                        "egress: CONNECT to {dst} refused: port {} of ServiceEntry {} is declared {:?}, \
                         which must be sent as plain HTTP requests (not a tunnel) so that they can be checked\n",
                        found.port.number,
                        found.service.meta.id(),
                        found.port.protocol
                    ),
                ))
            }
            Some(found) => Ok(Admission::Registered(found)),
            None if self.policy() == OutboundPolicy::AllowAny => Ok(Admission::Passthrough),
            None => {
                let (status, what) = if tunnel {
                    (StatusCode::FORBIDDEN, "CONNECT to ")
                } else {
                    (StatusCode::BAD_GATEWAY, "")
                };
                Err(Refusal::new(
                    RejectionKind::NotInRegistry,
                    status,
                    tunnel,
                    format!(
                        "egress: {what}{dst} refused: not in the service registry \
                         (outbound traffic policy is REGISTRY_ONLY; add a ServiceEntry for this host and port)\n"
                    ),
                ))
            }
        }
    }
}
