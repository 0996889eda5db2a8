//! The policies of one action, indexed by the hosts their rules name.

use super::{Attributes, AuthzAction, CPolicy, Pattern};

type RuleRef = (u32, u32);

/// The policies of one action, with an index by destination host so that a request is
/// matched only against rules that could name its host: rules whose every operation lists
/// exact hosts or `*.suffix` hosts are filed under those; the others are always tried.
/// The first match in (policy, rule) order is the same as with a plain scan.
#[derive(Clone, Debug, Default)]
pub(super) struct PolicyList {
    pub(super) policies: Vec<CPolicy>,
    exact: foldhash::HashMap<Box<str>, Vec<RuleRef>>,
    /// By the suffix after `*`, which starts with a dot.
    suffix: foldhash::HashMap<Box<str>, Vec<RuleRef>>,
    always: Vec<RuleRef>,
    /// Whether a policy applies to every request (one not attached to services).
    global: bool,
}

impl PolicyList {
    pub(super) fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether some policy of the list applies to this request.
    pub(super) fn any_covers(&self, a: &Attributes<'_>) -> bool {
        self.global || self.policies.iter().any(|p| p.covers(a))
    }

    pub(super) fn push(&mut self, policy: CPolicy) {
        let p = self.policies.len() as u32;
        self.global |= policy.services.is_none();
        for (r, rule) in policy.rules.iter().enumerate() {
            let at = (p, r as u32);
            let indexable = !rule.to.is_empty()
                && rule.to.iter().all(|o| {
                    !o.hosts.is_empty()
                        && o.hosts.iter().all(|h| match &h.host {
                            Pattern::Exact(_) => true,
                            Pattern::Suffix(s) => s.starts_with('.'),
                            _ => false,
                        })
                });
            if !indexable {
                self.always.push(at);
                continue;
            }
            for o in &rule.to {
                for h in &o.hosts {
                    let (map, key) = match &h.host {
                        Pattern::Exact(e) => (&mut self.exact, e.clone()),
                        Pattern::Suffix(s) => (&mut self.suffix, s.clone()),
                        _ => continue,
                    };
                    let list = map.entry(key).or_default();
                    if list.last() != Some(&at) {
                        list.push(at);
                    }
                }
            }
        }
        self.policies.push(policy);
    }

    /// The first matching rule of `list` at or after nothing, below `best`.
    fn scan(
        &self,
        list: &[RuleRef],
        a: &Attributes<'_>,
        action: AuthzAction,
        best: &mut Option<RuleRef>,
    ) {
        for &(p, r) in list {
            if best.is_some_and(|b| (p, r) >= b) {
                return;
            }
            let policy = &self.policies[p as usize];
            if policy.rules[r as usize].matches(a, action) && policy.covers(a) {
                *best = Some((p, r));
                return;
            }
        }
    }

    /// The first matching (policy, rule), in declaration order.
    pub(super) fn first_match(
        &self,
        a: &Attributes<'_>,
        action: AuthzAction,
    ) -> Option<(&CPolicy, usize)> {
        let mut best = None;
        if let Some(list) = self.exact.get(a.host) {
            self.scan(list, a, action, &mut best);
        }
        if !self.suffix.is_empty() {
            for (i, b) in a.host.bytes().enumerate() {
                if b == b'.'
                    && let Some(list) = self.suffix.get(&a.host[i..])
                {
                    self.scan(list, a, action, &mut best);
                }
            }
        }
        self.scan(&self.always, a, action, &mut best);
        best.map(|(p, r)| (&self.policies[p as usize], r as usize))
    }
}
