//! Who is who: this gateway's identity (which security resources apply to it) and the
//! identity a validated token gives a request. Shared by authorization and JWT validation,
//! which depend on it and not on each other.

#[cfg(feature = "serde")]
use serde::Serialize;
use std::sync::Arc;

use crate::model::{Binding, Gateway, Scope};

/// Who this gateway is, for deciding which security resources apply to it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Its namespace (from `--gateway-name ns/name`).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// The mesh root namespace (`istio-system`): resources there apply to every proxy.
    pub root_namespace: String,
    /// The `Gateway` resources that select it.
    pub selected: Vec<String>,
}

impl Identity {
    /// From `ns/name`, labels and the Gateway binding.
    pub fn new(gateway: &str, labels: &[(String, String)], binding: &Binding) -> Self {
        let (namespace, name) = gateway.split_once('/').unwrap_or(("istio-system", gateway));
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: labels.to_vec(),
            root_namespace: "istio-system".to_owned(),
            selected: binding.selected.clone(),
        }
    }

    /// Whether a resource with this scope, in this namespace, applies to this gateway; the
    /// reason when it does not.
    pub fn applies(&self, scope: &Scope, namespace: &str) -> Result<(), String> {
        if !scope.target_refs.is_empty() {
            let hit = scope.target_refs.iter().any(|t| {
                let ns = t.namespace.as_deref().unwrap_or(namespace);
                (t.name == self.name && ns == self.namespace)
                    || (t.kind == "Gateway" && self.selected.contains(&format!("{ns}/{}", t.name)))
            });
            return if hit {
                Ok(())
            } else {
                Err(format!(
                    "its targetRefs name neither this gateway ({}/{}) nor a Gateway selecting it",
                    self.namespace, self.name
                ))
            };
        }
        if scope.namespace_given && namespace != self.root_namespace && namespace != self.namespace
        {
            return Err(format!(
                "it is in namespace {namespace:?}, and this gateway is in {:?} (root namespace {:?})",
                self.namespace, self.root_namespace
            ));
        }
        if let Some(sel) = &scope.selector
            && !sel.iter().all(|l| self.labels.contains(l))
        {
            return Err(format!(
                "its selector {sel:?} does not match this gateway's labels {:?}",
                self.labels
            ));
        }
        Ok(())
    }
}

/// The identity a validated JWT gives a request.
///
/// - Inserted by: [`JwtLayer`](crate::layers::JwtLayer). - Read by: authorization (`requestPrincipals`,
///   `request.auth.*`), telemetry.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: Arc<str>,
    /// `aud` (a string or a list in the token).
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// Every claim.
    pub claims: serde_json::Value,
}

impl RequestAuth {
    /// The values of a claim (`path` walks nested objects): a string, the strings of a
    /// list, or a number or boolean as text.
    pub fn claim_strings(&self, path: &[String]) -> Vec<String> {
        let mut v = &self.claims;
        for p in path {
            match v.get(p) {
                Some(x) => v = x,
                None => return Vec::new(),
            }
        }
        fn text(v: &serde_json::Value) -> Option<String> {
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        }
        match v {
            serde_json::Value::Array(items) => items.iter().filter_map(text).collect(),
            other => text(other).into_iter().collect(),
        }
    }
}

/// The label Istio sets on the proxies of a Gateway API `Gateway`: its name.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The older spelling of [`GATEWAY_NAME_LABEL`].
pub const ISTIO_GATEWAY_NAME_LABEL: &str = "istio.io/gateway-name";

impl Gateway {
    /// Whether a proxy with these labels is selected (every selector label present).
    /// A Gateway API `Gateway` has no selector: it is selected by the labels Istio puts on
    /// the proxies it deploys for it (`gateway.networking.k8s.io/gateway-name: NAME`).
    pub fn selects(&self, labels: &[(String, String)]) -> bool {
        match &self.class {
            None => self.selector.iter().all(|l| labels.contains(l)),
            Some(_) => labels.iter().any(|(k, v)| {
                (k == GATEWAY_NAME_LABEL || k == ISTIO_GATEWAY_NAME_LABEL) && *v == self.meta.name
            }),
        }
    }
}

impl Binding {
    /// Selects the Gateways of `gateways` that these labels satisfy.
    ///
    /// When none does and the configuration has exactly one Gateway API `Gateway` of
    /// class `istio`, this proxy is that Gateway's: a gateway started on a task's manifests
    /// serves its Gateway as Istio's deployment for it would, with no labels to set.
    pub fn new(gateways: &[Gateway], labels: &[(String, String)]) -> Self {
        let mut selected: Vec<String> = gateways
            .iter()
            .filter(|g| g.selects(labels))
            .map(|g| g.meta.id())
            .collect();
        if selected.is_empty() {
            let mut api = gateways
                .iter()
                .filter(|g| g.class.as_deref() == Some(crate::gateway_api::CLASS));
            if let (Some(only), None) = (api.next(), api.next()) {
                selected.push(only.meta.id());
            }
        }
        Self { selected }
    }

    /// Whether this proxy acts for the mesh (no Gateway selects it).
    pub fn is_mesh(&self) -> bool {
        self.selected.is_empty()
    }

    /// Whether a list of gateway references (from a `VirtualService` in `namespace`) names
    /// this proxy. An empty list means `mesh`.
    pub fn applies(&self, refs: &[String], namespace: &str) -> bool {
        if refs.is_empty() {
            return self.is_mesh();
        }
        refs.iter().any(|g| {
            if g == "mesh" {
                return self.is_mesh();
            }
            let full = if g.contains('/') {
                g.clone()
            } else {
                format!("{namespace}/{g}")
            };
            self.selected.contains(&full)
        })
    }
}
