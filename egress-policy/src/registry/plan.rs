//! What a destination policy means for the transport: the TLS settings and the balancer
//! that apply to a port and subset, in the transport's own types.

use crate::model::{ClientTls, DestinationPolicy, LoadBalancer};

impl DestinationPolicy {
    /// The TLS settings for a port and subset: the subset's, else the port's, else the
    /// rule's.
    pub fn tls_for(&self, port: u16, subset: Option<&str>) -> Option<&ClientTls> {
        subset
            .and_then(|s| self.subsets.iter().find(|x| x.name == s))
            .and_then(|s| s.tls.as_ref())
            .or_else(|| {
                self.port_tls
                    .iter()
                    .find(|(p, _)| *p == port)
                    .map(|(_, t)| t)
            })
            .or(self.tls.as_ref())
    }

    /// The balancer for a port and subset: the subset's, else the port's, else the rule's.
    pub fn balance_for(&self, port: u16, subset: Option<&str>) -> Option<LoadBalancer> {
        let from_subset = subset
            .and_then(|s| self.subsets.iter().find(|x| x.name == s))
            .and_then(|s| s.lb.clone());
        from_subset
            .or_else(|| {
                self.port_lb
                    .iter()
                    .find(|(p, _)| *p == port)
                    .map(|(_, b)| b.clone())
            })
            .or_else(|| self.lb.clone())
    }
}

impl LoadBalancer {
    /// The transport's policy.
    pub fn to_balance(&self) -> egress_core::ctx::Balance {
        use egress_core::ctx::Balance;
        match self {
            LoadBalancer::RoundRobin => Balance::RoundRobin,
            LoadBalancer::Random => Balance::Random,
            LoadBalancer::LeastRequest => Balance::LeastRequest,
            LoadBalancer::Passthrough => Balance::Passthrough,
            LoadBalancer::HashHeader(h) => http::HeaderName::from_bytes(h.as_bytes())
                .map_or(Balance::RoundRobin, Balance::HashHeader),
            LoadBalancer::HashSourceIp => Balance::HashSourceIp,
        }
    }
}

impl ClientTls {
    /// The transport's settings; `None` for `DISABLE`.
    pub fn to_settings(&self, origin: &str) -> Option<egress_core::ctx::TlsSettings> {
        if self.mode == "DISABLE" {
            return None;
        }
        Some(egress_core::ctx::TlsSettings {
            mutual: self.mode == "MUTUAL",
            ca_certificates: self.ca_certificates.as_ref().map(Into::into),
            ca_crl: self.ca_crl.as_ref().map(Into::into),
            client_certificate: self.client_certificate.as_ref().map(Into::into),
            private_key: self.private_key.as_ref().map(Into::into),
            sni: self.sni.as_deref().map(Into::into),
            subject_alt_names: self.subject_alt_names.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
            origin: origin.into(),
        })
    }
}
