//! How a client connection is served once accepted: which HTTP server (hyper's HTTP/1.1
//! server, or hyper-util's `auto` one for HTTP/2), the deadline for its first bytes, and its
//! part in the drain.

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;

use crate::cli::RunArgs;

/// The client-facing HTTP/1.1 and h2 servers: header read timeout and size, streams,
/// keep-alive pings.
///
/// A plain connection whose first bytes are not the HTTP/2 preface is served by hyper's
/// HTTP/1.1 server alone; the others (h2 prior knowledge, TLS) by hyper-util's `auto`
/// server, which tells the two apart itself. The split is for memory: an `auto` connection is
/// sized for its HTTP/2 state even when the client speaks HTTP/1.1, and an idle keep-alive
/// connection keeps that size for its whole life.
pub(crate) struct HttpServers {
    pub(crate) auto: auto::Builder<TokioExecutor>,
    pub(crate) http1: hyper::server::conn::http1::Builder,
    /// How long a new connection may take to send its first bytes.
    pub(crate) first_bytes: std::time::Duration,
}

pub(crate) fn http_builder(args: &RunArgs) -> HttpServers {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_buf = args.max_header_bytes.max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(args.header_read_timeout)
        .max_buf_size(max_buf)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(args.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(args.header_read_timeout)
        .max_buf_size(max_buf)
        .keep_alive(true);
    HttpServers {
        auto: builder,
        http1,
        first_bytes: args.header_read_timeout,
    }
}

/// The drain of client connections: hyper-util's graceful shutdown for the connections it
/// can watch, and a signal for the plain HTTP/1.1 ones (hyper's upgradeable HTTP/1.1
/// connection, which CONNECT needs, is not among them). Those hold a watcher without
/// watching, so the shutdown still waits for them. Connections take watchers, never the
/// shutdown handle: the drain must be able to take that back.
pub(crate) struct Drain {
    pub(crate) graceful: GracefulShutdown,
    pub(crate) started: tokio::sync::watch::Sender<bool>,
}

impl Drain {
    pub(crate) fn new() -> Self {
        Self {
            graceful: GracefulShutdown::new(),
            started: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Connections not yet closed.
    pub(crate) fn count(&self) -> usize {
        self.graceful.count()
    }

    /// Asks every connection to finish its in-flight requests and close; resolves when
    /// they have.
    pub(crate) async fn shutdown(self) {
        self.started.send_replace(true);
        self.graceful.shutdown().await;
    }
}

/// Serves a plain HTTP/1.1 connection until it closes, or until the drain starts and its
/// in-flight request is done.
pub(crate) async fn serve_http1<C>(
    conn: C,
    mut started: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>> + GracefulHttp1,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = async {
            if started.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => {
            conn.as_mut().shutdown_gracefully();
            conn.await
        }
    }
}

/// The graceful shutdown of hyper's upgradeable HTTP/1.1 connection.
pub(crate) trait GracefulHttp1 {
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> GracefulHttp1 for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Marks when the client's first bytes have been read.
pub(crate) struct FirstBytes<IO> {
    io: IO,
    seen: Arc<std::sync::atomic::AtomicBool>,
}

impl<IO> FirstBytes<IO> {
    pub(crate) fn new(io: IO) -> (Self, Arc<std::sync::atomic::AtomicBool>) {
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (
            Self {
                io,
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytes<IO> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Resolves when `wait` has passed without the client's first bytes; never after them.
pub(crate) async fn silent_for(wait: std::time::Duration, seen: &std::sync::atomic::AtomicBool) {
    tokio::time::sleep(wait).await;
    if seen.load(std::sync::atomic::Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection is HTTP/1.1 (`Ok(false)`: it sent the whole HTTP/2 preface),
/// from its first bytes, peeked, not consumed; `Err` when it closed first, or did not say
/// within the time allowed: a silent connection, or one that stalls inside the preface, is
/// dropped instead of being held by a server that would wait for it without a deadline.
pub(crate) async fn speaks_http1(
    io: &tokio::net::TcpStream,
    wait: std::time::Duration,
) -> Result<bool, Silent> {
    let decide = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let n = io.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if !H2_PREFACE.starts_with(&buf[..n]) {
                return Some(true);
            }
            if n == buf.len() {
                return Some(false);
            }
            // Part of the preface: peek returns at once while bytes are queued, so wait
            // for more with a growing pause rather than spinning.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
        }
    };
    match tokio::time::timeout(wait, decide).await {
        Ok(Some(http1)) => Ok(http1),
        Ok(None) => Err(Silent::Closed),
        Err(_) => Err(Silent::TimedOut),
    }
}

/// Why a connection was not served: it sent nothing before it closed, or before the deadline.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Silent {
    Closed,
    TimedOut,
}
