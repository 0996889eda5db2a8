//! The keys behind `jwksUri`s: fetched by the gateway itself, cached, refreshed in the
//! background; the last good set is kept when a refresh fails.

use crate::shared::Shared;
use arc_swap::ArcSwap;
#[cfg(feature = "serde")]
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{JwtPolicy, Keys, parse_jwks};

/// How the store fetches a URI: the body of a `200`, or why not. The gateway's
/// implementation goes through its own TLS client.
pub trait FetchJwks: Send + Sync + 'static {
    /// Fetches `uri` within `timeout`.
    fn fetch(
        &self,
        uri: &str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
}

/// The state of one URI, for `/config_dump`.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct JwksStatus {
    /// Usable keys in the current set.
    pub keys: usize,
    /// When the current set was fetched (seconds since the epoch).
    pub fetched_at: Option<u64>,
    /// The last failure, when the last attempt failed.
    pub last_error: Option<String>,
}

/// The key prefix of issuers whose keys are found by OpenID discovery.
pub(crate) const DISCOVERY: &str = "oidc-discovery:";

/// The keys behind `uri`: a JWKS URL, or `oidc-discovery:ISSUER`, whose
/// `/.well-known/openid-configuration` names the JWKS URL.
async fn fetch_keys(uri: &str, timeout: Duration, fetcher: &dyn FetchJwks) -> Result<Keys, String> {
    let jwks_uri = match uri.strip_prefix(DISCOVERY) {
        None => uri.to_owned(),
        Some(issuer) => {
            let config = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let doc = fetcher.fetch(&config, timeout).await?;
            let doc: serde_json::Value =
                serde_json::from_str(&doc).map_err(|e| format!("{config}: not JSON: {e}"))?;
            let found = doc
                .get("jwks_uri")
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("{config}: no jwks_uri"))?;
            if !(found.starts_with("https://") || found.starts_with("http://")) {
                return Err(format!(
                    "{config}: jwks_uri {found:?} is not an http(s) URL"
                ));
            }
            found.to_owned()
        }
    };
    let body = fetcher.fetch(&jwks_uri, timeout).await?;
    parse_jwks(&body).map_err(|e| format!("invalid JWKS from {jwks_uri}: {e}"))
}

#[derive(Default)]
struct Schedule {
    next: HashMap<Arc<str>, (Instant, Duration)>,
}

/// Key sets by URI, shared by every `JwtPolicy` built across reloads.
#[derive(Clone, Default)]
pub struct JwksStore {
    keys: Arc<ArcSwap<HashMap<Arc<str>, Arc<Keys>>>>,
    status: Arc<Mutex<HashMap<Arc<str>, JwksStatus>>>,
    schedule: Arc<Mutex<Schedule>>,
}

impl std::fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksStore")
            .field("uris", &self.keys.load().len())
            .finish()
    }
}

impl JwksStore {
    /// The current keys of `uri`.
    pub fn keys(&self, uri: &str) -> Option<Arc<Keys>> {
        self.keys.load().get(uri).cloned()
    }

    /// Every URI's state.
    pub fn status(&self) -> HashMap<String, JwksStatus> {
        self.status
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Fetches every URI of `policy` that has no keys yet, now (used at start and reload,
    /// so that a new issuer works as soon as its keys can be had).
    pub async fn prime(&self, policy: &JwtPolicy, fetcher: &dyn FetchJwks) {
        let missing: Vec<_> = policy
            .uris()
            .into_iter()
            .filter(|(u, _)| self.keys(u).is_none())
            .collect();
        for (uri, timeout) in missing {
            self.refresh(&uri, timeout, fetcher).await;
        }
    }

    /// One fetch of `uri`; on success the set is replaced, on failure the old one stays.
    pub async fn refresh(
        &self,
        uri: &Arc<str>,
        timeout: Duration,
        fetcher: &dyn FetchJwks,
    ) -> bool {
        let result = match tokio::time::timeout(timeout, fetch_keys(uri, timeout, fetcher)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let ok = result.is_ok();
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.keys.rcu(|m| {
                    let mut m = HashMap::clone(m);
                    m.insert(uri.clone(), Arc::new(keys.clone()));
                    m
                });
                if let Ok(mut s) = self.status.lock() {
                    s.insert(
                        uri.clone(),
                        JwksStatus {
                            keys: n,
                            fetched_at: SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .ok()
                                .map(|d| d.as_secs()),
                            last_error: None,
                        },
                    );
                }
                tracing::info!(%uri, keys = n, "JWKS fetched");
            }
            Err(error) => {
                let kept = self.keys(uri).map_or(0, |k| k.len());
                if let Ok(mut s) = self.status.lock() {
                    let e = s.entry(uri.clone()).or_default();
                    e.last_error = Some(error.clone());
                }
                tracing::warn!(%uri, %error, kept_keys = kept, "JWKS fetch failed; keeping the last good set");
            }
        }
        ok
    }

    /// Refreshes every URI of the current policy: each `interval` after a success, and
    /// after a failure again soon (1 s, doubling up to a minute). Runs until dropped.
    pub async fn run(
        self,
        policy: Shared<JwtPolicy>,
        fetcher: Arc<dyn FetchJwks>,
        interval: Duration,
    ) {
        self.run_with(move || policy.load().uris(), fetcher, interval)
            .await
    }

    /// [`JwksStore::run`] for the URIs `uris` names each time it looks (the current
    /// snapshot's, say).
    pub async fn run_with(
        self,
        uris: impl Fn() -> Vec<(Arc<str>, Duration)> + Send,
        fetcher: Arc<dyn FetchJwks>,
        interval: Duration,
    ) {
        loop {
            let now = Instant::now();
            let uris = uris();
            let due: Vec<(Arc<str>, Duration)> = {
                let Ok(mut sched) = self.schedule.lock() else {
                    return;
                };
                sched.next.retain(|u, _| uris.iter().any(|(x, _)| x == u));
                uris.into_iter()
                    .filter(|(u, _)| sched.next.get(u).is_none_or(|(at, _)| *at <= now))
                    .collect()
            };
            for (uri, timeout) in due {
                let ok = self.refresh(&uri, timeout, fetcher.as_ref()).await;
                if let Ok(mut sched) = self.schedule.lock() {
                    let backoff = sched
                        .next
                        .get(&uri)
                        .map_or(Duration::from_secs(1), |(_, b)| *b);
                    let (wait, next_backoff) = if ok {
                        (interval, Duration::from_secs(1))
                    } else {
                        (backoff, (backoff * 2).min(Duration::from_secs(60)))
                    };
                    sched
                        .next
                        .insert(uri, (Instant::now() + wait, next_backoff));
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
