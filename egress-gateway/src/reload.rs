//! Hot reload: re-read the configuration on SIGHUP or when its files change, and swap it in
//! only when it compiles without errors; a bad configuration leaves the old one serving.

use egress_policy::snapshot::PolicyStore;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::cli::ConfigArgs;
use crate::config;

/// What the last reload did, for `/config_dump`.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ReloadStatus {
    /// `success` or `failure`; empty before the first reload.
    pub(crate) outcome: String,
    /// Seconds since the Unix epoch.
    pub(crate) at: u64,
    /// The errors of a failed reload.
    pub(crate) errors: Vec<String>,
}

/// Reloads the configuration into the live registry and routes.
pub(crate) struct Reloader {
    args: ConfigArgs,
    policy: PolicyStore,
    pub(crate) successes: AtomicU64,
    pub(crate) failures: AtomicU64,
    // Held only to copy or replace the status, never across an await.
    pub(crate) status: Mutex<ReloadStatus>,
}

impl Reloader {
    pub(crate) fn new(args: ConfigArgs, policy: PolicyStore) -> Self {
        Self {
            args,
            policy,
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            status: Mutex::default(),
        }
    }

    /// Loads and compiles on a blocking thread; swaps on success.
    pub(crate) async fn reload(self: &Arc<Self>, why: &str) {
        let this = self.clone();
        let started = std::time::Instant::now();
        // A thread of its own, below the workers' priority: at 4000 rps a 100k-host reload
        // moves p99 by 1.1x instead of 2.8x; on a saturated core it then takes 3 s instead
        // of 0.6 s (benches/README.md).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("egress-reload".into())
            .spawn(move || {
                lower_priority();
                let _ = tx.send(config::load(&this.args));
            });
        let result = match spawned {
            Ok(_) => rx
                .await
                .map_err(|_| "the reload thread ended without an answer".to_owned()),
            Err(e) => Err(format!("cannot start the reload thread: {e}")),
        };
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let status = match result {
            Ok(Ok(loaded)) => {
                for w in loaded.diagnostics.warnings() {
                    tracing::warn!("{w}");
                }
                let services = loaded.policy.registry.services().len();
                let (policy, _, _) = loaded.into_policy();
                // One store of one compiled whole (registry, routes, security, and the
                // resources the dump shows): a request or a dump sees the old
                // configuration or the new one, never parts of both.
                let old = self.policy.swap(policy);
                free_when_unused(old);
                self.successes.fetch_add(1, Ordering::Relaxed);
                let took_ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(trigger = why, services, took_ms, "configuration reloaded");
                ReloadStatus {
                    outcome: "success".into(),
                    at,
                    errors: Vec::new(),
                }
            }
            Ok(Err(e)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    trigger = why,
                    "configuration reload rejected, the previous configuration keeps serving: {e}"
                );
                let errors = match &e {
                    config::LoadError::Invalid(d) => d.errors().map(|x| x.to_string()).collect(),
                    other => vec![other.to_string()],
                };
                ReloadStatus {
                    outcome: "failure".into(),
                    at,
                    errors,
                }
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(e, "configuration reload task failed");
                ReloadStatus {
                    outcome: "failure".into(),
                    at,
                    errors: vec![e.to_string()],
                }
            }
        };
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    /// Reloads on SIGHUP, and when the files under `--config` change (checked every
    /// `interval`; zero disables watching). Runs until the process ends.
    pub(crate) async fn run(self: Arc<Self>, interval: Duration) {
        let mut hup = hangups();
        let watching = !interval.is_zero() && !self.args.config.is_empty();
        let mut seen = fingerprint(&self.args.config);
        let mut tick = tokio::time::interval(if watching {
            interval
        } else {
            Duration::from_secs(3600)
        });
        tick.tick().await;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    seen = fingerprint(&self.args.config);
                    self.reload("SIGHUP").await;
                }
                _ = tick.tick(), if watching => {
                    let now = fingerprint(&self.args.config);
                    if now != seen {
                        seen = settled(&self.args.config, now).await;
                        self.reload("files changed").await;
                    }
                }
            }
        }
    }
}

/// Waits until the files stop changing (the same fingerprint 100 ms apart, for at most two
/// seconds), so that a file caught half-written is not compiled: a truncated file can be a
/// valid, smaller configuration that would drop registrations for a moment.
async fn settled(
    paths: &[PathBuf],
    mut now: Vec<(PathBuf, Option<SystemTime>, u64)>,
) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again = fingerprint(paths);
        if again == now {
            break;
        }
        now = again;
    }
    now
}

/// A receiver of SIGHUP that never fires where there is none.
fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut s) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let _ = tx.try_send(());
                }
            });
            return rx;
        }
    }
    // Keep the sender alive so that `recv` waits instead of ending.
    std::mem::forget(tx);
    rx
}

/// Path, modification time and size of every configuration file, sorted.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    for p in paths {
        collect(p, &mut out);
    }
    out.sort();
    out
}

fn collect(path: &Path, out: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
    let Ok(meta) = std::fs::metadata(path) else {
        out.push((path.to_owned(), None, 0));
        return;
    };
    if meta.is_file() {
        out.push((path.to_owned(), meta.modified().ok(), meta.len()));
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        let yaml = p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| x == "yaml" || x == "yml");
        if !hidden && (p.is_dir() || yaml) {
            collect(&p, out);
        }
    }
}

/// Lowers the calling thread's scheduling priority (nice +10 on Linux, where each thread has
/// its own): a reload still finishes under load, and requests come first meanwhile.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    #[allow(
        unsafe_code,
        reason = "gettid and setpriority have no safe wrapper in std"
    )]
    // SAFETY: both calls take plain integers and touch only this thread's scheduling.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Frees the replaced configuration on a thread of its own once the requests that started
/// with it are done: freeing a large one takes milliseconds, which would otherwise stall
/// the worker of the request that let it go last. Waits at most ten minutes (a request
/// that outlives that frees it itself).
fn free_when_unused(old: std::sync::Arc<egress_policy::snapshot::Policy>) {
    let _ = std::thread::Builder::new()
        .name("egress-free".into())
        .spawn(move || {
            lower_priority();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
            while std::sync::Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(old);
        });
}
