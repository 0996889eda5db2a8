//! `AuthorizationPolicy` resources of a configuration compiled into [`AuthzPolicies`]: the
//! ones that apply to this gateway, each rule checked once.

use super::*;

impl AuthzPolicies {
    /// Compiles the policies of `config` that apply to `identity`; the ones that do not are
    /// reported as warnings. A CUSTOM policy must name one of MeshConfig's
    /// `extensionProviders`.
    pub fn compile(
        config: &Config,
        identity: &Identity,
    ) -> Result<(Self, Diagnostics), Diagnostics> {
        let mut set = AuthzPolicies::default();
        if let Some(mesh) = &config.mesh {
            set.providers = mesh
                .extension_providers
                .iter()
                .map(|p| (Arc::from(p.name.as_str()), Arc::new(p.http.clone())))
                .collect();
        }
        let providers: Vec<&str> = set.providers.iter().map(|(n, _)| &**n).collect();
        let providers = providers.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut diags = Diagnostics::default();
        let mut errors = Diagnostics::default();
        for p in &config.access_policies {
            let id = p.meta.id();
            let diag = |severity, message: String| Diagnostic {
                severity,
                file: p.meta.file.clone(),
                line: p.meta.line,
                col: 1,
                resource: Some(format!("AuthorizationPolicy {id}").into()),
                field: String::new(),
                message,
            };
            let (services, applies) = scope_of(config, identity, p, &mut diags);
            if let Err(why) = applies {
                diags.push(diag(
                    Severity::Warning,
                    format!("does not apply to this gateway: {why}"),
                ));
                set.summary.push(PolicySummary {
                    name: id,
                    action: p.action,
                    applies: Err(why),
                    dry_run: p.dry_run,
                });
                continue;
            }
            if p.action == AuthzAction::Custom
                && let Some(name) = &p.provider
                && !providers.contains(name)
            {
                let mut d = diag(
                    Severity::Error,
                    format!(
                        "provider {name:?} is not among meshConfig.extensionProviders (known: {providers:?})"
                    ),
                );
                d.field = "spec.provider.name".into();
                errors.push(d);
                continue;
            }
            let compiled = compile_policy(p, services);
            set.summary.push(PolicySummary {
                name: id,
                action: p.action,
                applies: Ok(compiled.rules.len()),
                dry_run: p.dry_run,
            });
            if p.action == AuthzAction::Custom
                && let Some(provider) = p.provider.as_deref().and_then(|n| set.provider(n))
            {
                let mut headers = set.authorizer_headers.to_vec();
                for h in &provider.headers_to_upstream_on_allow {
                    let pattern = Pattern::new(&h.to_ascii_lowercase());
                    if !headers.contains(&pattern) {
                        headers.push(pattern);
                    }
                }
                set.authorizer_headers = headers.into();
            }
            match p.action {
                AuthzAction::Deny if p.dry_run => set.dry_deny.push(compiled),
                AuthzAction::Allow if p.dry_run => set.dry_allow.push(compiled),
                AuthzAction::Custom => set.custom.push(compiled),
                AuthzAction::Deny => set.deny.push(compiled),
                AuthzAction::Allow => set.allow.push(compiled),
                AuthzAction::Audit => set.audit.push(compiled),
            }
        }
        if errors.has_errors() {
            return Err(errors);
        }
        Ok((set, diags))
    }
}

/// Whether a policy applies here and, when it is attached to services only, to which: the
/// services of its `targetRefs` (then it applies whatever the other refs say), or every
/// request when a ref or its selector names this gateway.
fn scope_of(
    config: &Config,
    identity: &Identity,
    p: &AccessPolicy,
    diags: &mut Diagnostics,
) -> (Option<Arc<[ServiceScope]>>, Result<(), String>) {
    let (services, others) = attached_services(config, p, diags);
    let applies = match (&services, others) {
        // Attached to services only: applies here, to requests for them.
        (Some(_), None) => Ok(()),
        (_, Some(scope)) => identity.applies(&scope, &p.meta.namespace),
        (None, None) => identity.applies(&p.scope, &p.meta.namespace),
    };
    // Also attached to this gateway: every request.
    let services = match (&applies, services) {
        (Ok(()), Some(s)) if p.scope.target_refs.len() > s.refs => None,
        (_, s) => s.map(|s| s.scopes),
    };
    let applies = match (applies, &services) {
        (Err(_), Some(_)) => Ok(()),
        (a, _) => a,
    };
    (services, applies)
}

/// The services of `targetRefs` of kind `ServiceEntry` (group `networking.istio.io`) and
/// `Service` (core), and how many refs named them; the scope left with the other refs
/// (`None` when there are none). A ServiceEntry not in the configuration is a warning.
struct Attached {
    scopes: Arc<[ServiceScope]>,
    refs: usize,
}

fn attached_services(
    config: &Config,
    p: &AccessPolicy,
    diags: &mut Diagnostics,
) -> (Option<Attached>, Option<crate::model::Scope>) {
    let refs = &p.scope.target_refs;
    let is_service = |t: &crate::model::TargetRef| {
        (t.kind == "ServiceEntry" && t.group == "networking.istio.io")
            || (t.kind == "Service" && t.group.is_empty())
    };
    let count = refs.iter().filter(|t| is_service(t)).count();
    if count == 0 {
        return (None, None);
    }
    let mut scopes = Vec::new();
    for (i, t) in refs.iter().enumerate().filter(|(_, t)| is_service(t)) {
        let ns = t.namespace.as_deref().unwrap_or(&p.meta.namespace);
        if t.kind == "Service" {
            scopes.push(ServiceScope {
                hosts: vec![Pattern::new(&format!("{}.{ns}.svc.cluster.local", t.name))],
                ports: Vec::new(),
            });
            continue;
        }
        match config
            .services
            .iter()
            .find(|s| s.meta.name == t.name && s.meta.namespace == ns)
        {
            Some(se) => scopes.push(ServiceScope {
                hosts: se.hosts.iter().map(|h| Pattern::new(h)).collect(),
                ports: se.ports.iter().map(|p| p.number).collect(),
            }),
            None => diags.push(Diagnostic {
                severity: Severity::Warning,
                file: p.meta.file.clone(),
                line: p.meta.line,
                col: 1,
                resource: Some(format!("AuthorizationPolicy {}", p.meta.id()).into()),
                field: format!("spec.targetRefs[{i}]"),
                message: format!(
                    "ServiceEntry {ns}/{} is not in the configuration: no request is for it",
                    t.name
                ),
            }),
        }
    }
    let others = (count < refs.len()).then(|| {
        let mut scope = p.scope.clone();
        scope.target_refs.retain(|t| !is_service(t));
        scope
    });
    let attached = Attached {
        scopes: scopes.into(),
        refs: count,
    };
    (Some(attached), others)
}

fn compile_policy(p: &AccessPolicy, services: Option<Arc<[ServiceScope]>>) -> CPolicy {
    CPolicy {
        services,
        name: p.meta.id().into(),
        provider: p.provider.as_deref().map(Arc::from),
        // `rules` absent: nothing matches.
        rules: p
            .rules
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(CRule::new)
            .collect(),
    }
}
