//! The access log file: lines formatted straight into a reused buffer and appended to a
//! shared one that a thread of its own writes out every 50 ms.
//!
//! The `tracing` path (stderr) formats each event through its visitor machinery and moves
//! an owned line through a channel; at tens of thousands of requests per second that costs
//! more than the rest of the request. Here a line is one `write!` into a thread-local
//! `String` and one short critical section. The shared buffer is capped: when the writer
//! falls behind by more than [`MAX_PENDING`] bytes, lines are dropped and counted rather
//! than letting memory grow.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Bytes waiting for the writer at most.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

/// One access log line's fields.
pub struct Entry<'a> {
    /// Request method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Authority.
    pub authority: &'a str,
    /// Response status.
    pub status: u16,
    /// Envoy response flags.
    pub flags: &'a str,
    /// The gateway's reason token, or `-`.
    pub reason: &'a str,
    /// Time to response headers, in milliseconds.
    pub duration_ms: f64,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes, when known from `Content-Length`.
    pub bytes_sent: Option<u64>,
    /// `outbound|port|subset|host`.
    pub cluster: &'a dyn std::fmt::Display,
    /// The route, or `-`.
    pub route: &'a str,
    /// The upstream address dialled.
    pub upstream_host: Option<std::net::SocketAddr>,
    /// What dry-run authorization policies would have decided (the field is left out of
    /// the line when no policy is in dry-run).
    pub dry_run: Option<&'a crate::ctx::DryRun>,
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The writer of an access log file.
#[derive(Debug)]
pub struct AccessLogFile {
    pending: Mutex<Vec<u8>>,
    file: Mutex<std::fs::File>,
    json: bool,
    dropped: AtomicU64,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl AccessLogFile {
    /// Opens `path` for appending and starts the writer thread.
    pub fn open(path: &std::path::Path, json: bool) -> std::io::Result<Arc<Self>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let this = Arc::new(Self {
            pending: Mutex::new(Vec::with_capacity(256 * 1024)),
            file: Mutex::new(file),
            json,
            dropped: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut spare = Vec::with_capacity(256 * 1024);
                loop {
                    std::thread::sleep(Duration::from_millis(50));
                    let Some(log) = weak.upgrade() else { return };
                    log.write_out(&mut spare);
                }
            })?;
        Ok(this)
    }

    /// Swaps the pending lines out and writes them (outside the append lock).
    fn write_out(&self, spare: &mut Vec<u8>) {
        let Ok(mut file) = self.file.lock() else {
            return;
        };
        if let Ok(mut p) = self.pending.lock() {
            std::mem::swap(&mut *p, spare);
        }
        if !spare.is_empty() {
            if let Err(e) = file.write_all(spare) {
                eprintln!("access log write failed: {e}");
            }
            spare.clear();
        }
    }

    /// Writes every pending line now (at shutdown).
    pub fn flush(&self) {
        self.write_out(&mut Vec::new());
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends one line.
    pub fn log(&self, e: &Entry<'_>) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            if self.json {
                line.push_str("{\"time\":\"");
                timestamp(&mut line, SystemTime::now());
                line.push_str("\",\"method\":");
                json_str(&mut line, e.method);
                line.push_str(",\"path\":");
                json_str(&mut line, e.path);
                line.push_str(",\"authority\":");
                json_str(&mut line, e.authority);
                let _ = write!(
                    line,
                    ",\"status\":{},\"flags\":\"{}\",\"reason\":\"{}\",\"duration_ms\":{},\"bytes_received\":{},\"bytes_sent\":",
                    e.status, e.flags, e.reason, Millis(e.duration_ms), e.bytes_received
                );
                match e.bytes_sent {
                    Some(n) => {
                        let _ = write!(line, "{n}");
                    }
                    None => line.push_str("null"),
                }
                line.push_str(",\"upstream_cluster\":");
                let start = line.len();
                let _ = write!(line, "{}", e.cluster);
                let raw = line.split_off(start);
                json_str(&mut line, &raw);
                line.push_str(",\"route\":");
                json_str(&mut line, e.route);
                match e.upstream_host {
                    Some(a) => {
                        let _ = write!(line, ",\"upstream_host\":\"{a}\"");
                    }
                    None => line.push_str(",\"upstream_host\":null"),
                }
                if let Some(d) = e.dry_run {
                    line.push_str(",\"dry_run\":");
                    json_str(&mut line, &d.to_string());
                }
                line.push_str("}\n");
            } else {
                timestamp(&mut line, SystemTime::now());
                let _ = write!(
                    line,
                    " \"{} {}\" authority=\"{}\" status={} flags={} reason={} duration_ms={} bytes_received={} bytes_sent=",
                    e.method,
                    Escaped(e.path),
                    Escaped(e.authority),
                    e.status,
                    e.flags,
                    e.reason,
                    Millis(e.duration_ms),
                    e.bytes_received
                );
                match e.bytes_sent {
                    Some(n) => {
                        let _ = write!(line, "{n}");
                    }
                    None => line.push('-'),
                }
                let _ = write!(
                    line,
                    " upstream_cluster={} route={} upstream_host=",
                    e.cluster,
                    Escaped(e.route)
                );
                match e.upstream_host {
                    Some(a) => {
                        let _ = write!(line, "{a}");
                    }
                    None => line.push('-'),
                }
                if let Some(d) = e.dry_run {
                    let _ = write!(line, " dry_run=\"{}\"", Escaped(&d.to_string()));
                }
                line.push('\n');
            }
            match self.pending.lock() {
                Ok(mut p) if p.len() + line.len() <= MAX_PENDING => {
                    p.extend_from_slice(line.as_bytes())
                }
                _ => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Milliseconds with three decimals, through integer formatting (cheaper than `{:.3}`).
struct Millis(f64);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = (self.0 * 1000.0).round().max(0.0) as u64;
        write!(f, "{}.{:03}", us / 1000, us % 1000)
    }
}

/// Text form: control characters and quotes of client-supplied strings escaped, so a line
/// cannot be forged by a request.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

thread_local! {
    /// The last second formatted, and its text up to the seconds.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 UTC with milliseconds; the date and time of day are formatted once a second.
fn timestamp(out: &mut String, now: SystemTime) {
    let d = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with(|s| {
        let mut s = s.borrow_mut();
        if s.0 != d.as_secs() {
            let mut full = String::with_capacity(24);
            timestamp_full(&mut full, now);
            full.truncate(full.len() - 5);
            *s = (d.as_secs(), full);
        }
        out.push_str(&s.1);
    });
    let _ = write!(out, ".{:03}Z", d.subsec_millis());
}

/// RFC 3339 UTC with milliseconds, computed in full.
fn timestamp_full(out: &mut String, now: SystemTime) {
    let d = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn timestamps() {
        let mut s = String::new();
        timestamp(
            &mut s,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_788_123_456),
        );
        assert_eq!(s, "2026-11-27T14:02:03.456Z");
        s.clear();
        timestamp(
            &mut s,
            SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400),
        );
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_cannot_be_forged() {
        let dir = std::env::temp_dir().join(format!("egress-al-{}", std::process::id()));
        let log = AccessLogFile::open(&dir, false).unwrap();
        let e = Entry {
            method: "GET",
            path: "/a\"\n{\"time\"",
            authority: "h",
            status: 200,
            flags: "-",
            reason: "-",
            duration_ms: 1.0,
            bytes_received: 0,
            bytes_sent: Some(3),
            cluster: &"outbound|80||h",
            route: "-",
            upstream_host: None,
            dry_run: None,
        };
        log.log(&e);
        let pending = log.pending.lock().unwrap().clone();
        let text = String::from_utf8(pending).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("/a\\\"\\x0a{\\\"time\\\""), "{text}");
        let _ = std::fs::remove_file(&dir);
    }
}
