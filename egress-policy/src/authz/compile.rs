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
            if let Err(why) = identity.applies(&p.scope, &p.meta.namespace) {
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
            let compiled = compile_policy(p);
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

fn compile_policy(p: &AccessPolicy) -> CPolicy {
    CPolicy {
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
