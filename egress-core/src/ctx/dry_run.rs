//! The would-be decisions of dry-run (shadow) authorization policies, reported by the
//! authorization layer and read by telemetry: logged, counted and put in the access log,
//! never enforced.

use std::fmt;
use std::sync::Arc;

/// What one shadow engine would have decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowResult {
    /// Whether the request would have been allowed.
    pub allowed: bool,
    /// The dry-run policy that decided (`ns/name`); `None` when none matched.
    pub policy: Option<Arc<str>>,
    /// The index of its matching rule.
    pub rule: Option<usize>,
}

impl ShadowResult {
    /// `allowed` or `denied`, as the metric and the access log spell it.
    pub fn decision(&self) -> &'static str {
        if self.allowed { "allowed" } else { "denied" }
    }
}

/// The two shadow engines Istio runs for dry-run policies: the DENY policies' and the
/// ALLOW policies', each present only when such policies exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DryRun {
    /// The dry-run DENY policies: denied when one matches.
    pub deny: Option<ShadowResult>,
    /// The dry-run ALLOW policies: allowed when one matches, else denied.
    pub allow: Option<ShadowResult>,
}

impl DryRun {
    /// Each engine that ran, with its name (`deny`, `allow`).
    pub fn results(&self) -> impl Iterator<Item = (&'static str, &ShadowResult)> {
        [("deny", self.deny.as_ref()), ("allow", self.allow.as_ref())]
            .into_iter()
            .filter_map(|(engine, r)| r.map(|r| (engine, r)))
    }
}

/// `deny:denied:ns/name allow:allowed:-`: the access log's `dry_run` field.
impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (engine, r) in self.results() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            let policy = r.policy.as_deref().unwrap_or("-");
            write!(f, "{engine}:{}:{policy}", r.decision())?;
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}
