//! Support for the end-to-end tests: the gateway binary on ephemeral ports, recording origin
//! servers, curl and raw-socket clients. Everything listens on 127.0.0.1 and every wait is
//! bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "test support: a failed setup should fail the test loudly"
)]

pub mod jwt;
pub mod tls;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The gateway binary, built by `cargo test --workspace` (egress-gateway has integration
/// tests, so cargo builds its binary before any test runs).
pub fn gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(format!("egress-gateway{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p egress-gateway` first)",
        bin.display()
    );
    bin
}

/// A running gateway process; killed on drop.
pub struct Gateway {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway with `yaml` as its only config file plus `args`.
    pub fn start(yaml: &str, args: &[&str]) -> Gateway {
        Self::start_with_env(yaml, args, &[])
    }

    /// [`start`](Self::start), with these environment variables set for the process.
    pub fn start_with_env(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut all = vec!["--config".to_owned(), path.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        Self::start_inner(&all, dir, env)
    }

    /// Starts the gateway with exactly these arguments (plus ephemeral listeners).
    pub fn start_raw(args: &[String], dir: tempfile::TempDir) -> Gateway {
        Self::start_inner(args, dir, &[])
    }

    fn start_inner(args: &[String], dir: tempfile::TempDir, env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(gateway_bin());
        cmd.envs(env.iter().copied());
        if !args.iter().any(|a| a.starts_with("--listen")) {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.iter().any(|a| a.starts_with("--admin")) {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn egress-gateway");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let json = line.contains("\"proxy\":\"");
                    if line.contains("listening") && (line.contains("proxy=") || json) {
                        let _ = tx.send(line.clone());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start:\n{}", log.lock().unwrap());
            }
        };
        // Text logs write `proxy=ADDR`, JSON logs `"proxy":"ADDR"`.
        let field = |name: &str| -> SocketAddr {
            let (key, end_char) = if line.contains(&format!("\"{name}\":\"")) {
                (format!("\"{name}\":\""), '"')
            } else {
                (format!("{name}="), ' ')
            };
            let start = line.find(&key).unwrap() + key.len();
            let rest = &line[start..];
            let end = rest.find(end_char).unwrap_or(rest.len());
            rest[..end].parse().unwrap()
        };
        Gateway {
            proxy: field("proxy"),
            admin: field("admin"),
            child,
            log,
            _dir: dir,
        }
    }

    /// Waits up to `t` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, t: Duration) -> Option<i32> {
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the config file written by [`Gateway::start`].
    pub fn config_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// `http://127.0.0.1:PORT`, for `curl -x`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to 5 s for the log to contain `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub peer: SocketAddr,
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A recording HTTP/1.1 origin on 127.0.0.1:0.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
}

impl Origin {
    /// An origin that answers `200 hello from origin` to everything.
    pub async fn start() -> Origin {
        Self::start_with(Duration::ZERO).await
    }

    /// An origin that waits `delay` before answering.
    pub async fn start_with(delay: Duration) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = Origin {
            addr,
            seen: Arc::default(),
            connections: Arc::default(),
        };
        let o = origin.clone();
        tokio::spawn(async move {
            while let Ok((io, peer)) = listener.accept().await {
                o.connections.fetch_add(1, Ordering::SeqCst);
                let seen = o.seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            seen.lock().unwrap().push(Seen {
                                peer,
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let fail_first = parts.uri.path().starts_with("/fail-first")
                                && seen
                                    .lock()
                                    .unwrap()
                                    .iter()
                                    .filter(|s| s.uri == parts.uri.to_string())
                                    .count()
                                    <= 1;
                            if fail_first {
                                // 503 to the first request for this URI, 200 after.
                                let mut rsp = Response::new(http_body_util::Either::Left(
                                    Full::new(Bytes::from_static(b"try again")),
                                ));
                                *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                return Ok(rsp);
                            }
                            if parts.uri.path() == "/stall" {
                                // Headers and a first chunk, then silence for 30 s.
                                let (mut tx, rx) = http_body_util::channel::Channel::<
                                    Bytes,
                                    std::convert::Infallible,
                                >::new(1);
                                tokio::spawn(async move {
                                    let _ = tx.send_data(Bytes::from_static(b"partial")).await;
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                });
                                return Ok(Response::new(http_body_util::Either::Right(rx)));
                            }
                            let mut rsp = Response::new(http_body_util::Either::Left(Full::new(
                                Bytes::from_static(b"hello from origin"),
                            )));
                            rsp.headers_mut()
                                .insert("x-origin", http::HeaderValue::from_static("1"));
                            rsp.headers_mut()
                                .insert("connection", http::HeaderValue::from_static("x-hop"));
                            rsp.headers_mut()
                                .insert("x-hop", http::HeaderValue::from_static("secret"));
                            Ok::<_, std::convert::Infallible>(rsp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        origin
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// The result of one curl run.
#[derive(Debug)]
pub struct CurlOutput {
    pub status: u16,
    pub headers: String,
    pub body: String,
    pub stderr: String,
    pub exit: i32,
}

impl CurlOutput {
    /// A response header (case-insensitive), first occurrence.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Runs curl with these arguments (bounded to 10 s), capturing status, headers and body.
pub fn curl(args: &[&str]) -> CurlOutput {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_connect}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    // A refused CONNECT leaves http_code at 000; its status is in http_connect.
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut codes = codes
        .split_whitespace()
        .map(|c| c.parse::<u16>().unwrap_or(0));
    let (code, connect) = (codes.next().unwrap_or(0), codes.next().unwrap_or(0));
    CurlOutput {
        status: if code == 0 { connect } else { code },
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code().unwrap_or(-1),
    }
}

/// Like [`curl`], from a blocking thread so the test's runtime keeps serving origins.
pub async fn curl_async(args: &[&str]) -> CurlOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    })
    .await
    .unwrap()
}

/// Sends raw bytes and reads until the server closes or 5 s pass. Returns what was read
/// and whether the server closed the connection.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Async wrapper of [`raw_exchange`].
pub async fn raw_exchange_async(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || raw_exchange(addr, &bytes))
        .await
        .unwrap()
}

/// One `ServiceEntry` document.
pub fn service_entry(name: &str, host: &str, port: u16, protocol: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [\"{host}\"]\n  ports:\n  - number: {port}\n    name: p{port}\n    protocol: {protocol}\n{extra}"
    )
}
