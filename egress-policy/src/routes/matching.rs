//! How the model's matchers read a request: string matches over text and over header
//! bytes, and SNI matches of TLS routes.

use crate::model::{StringMatch, TlsMatch};

impl StringMatch {
    /// Whether `value` matches; `ignore_case` applies to exact and prefix.
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatch::Exact(e) if ignore_case => value.eq_ignore_ascii_case(e),
            StringMatch::Exact(e) => value == e,
            StringMatch::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::PathPrefix(p) => {
                segment_prefix(value.as_bytes(), p.as_bytes(), ignore_case)
            }
            StringMatch::Regex(r) => r.is_match(value),
            StringMatch::Present => true,
        }
    }

    /// Whether the bytes `value` match; `None` when this matcher cannot evaluate them (a
    /// regex over bytes that are not UTF-8), which callers treat as a refusal to match.
    pub fn matches_bytes(&self, value: &[u8], ignore_case: bool) -> Option<bool> {
        Some(match self {
            StringMatch::Exact(e) if ignore_case => value.eq_ignore_ascii_case(e.as_bytes()),
            StringMatch::Exact(e) => value == e.as_bytes(),
            StringMatch::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
            StringMatch::Prefix(p) => value.starts_with(p.as_bytes()),
            StringMatch::PathPrefix(p) => segment_prefix(value, p.as_bytes(), ignore_case),
            StringMatch::Regex(r) => r.is_match(std::str::from_utf8(value).ok()?),
            StringMatch::Present => true,
        })
    }
}

/// `value` is `prefix`, or `prefix` followed by `/` (a prefix of `/` matches every path).
fn segment_prefix(value: &[u8], prefix: &[u8], ignore_case: bool) -> bool {
    let Some(head) = value.get(..prefix.len()) else {
        return false;
    };
    let same = if ignore_case {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same && (prefix.ends_with(b"/") || matches!(value.get(prefix.len()), None | Some(b'/')))
}

impl TlsMatch {
    /// Whether an SNI is among `sniHosts` (`*.suffix` matches any depth below the suffix).
    pub fn sni_matches(&self, sni: &str) -> bool {
        self.sni_hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => {
                sni.len() > suffix.len() + 1
                    && sni.ends_with(suffix)
                    && sni.as_bytes()[sni.len() - suffix.len() - 1] == b'.'
            }
            None => h == "*" || h == sni,
        })
    }
}
