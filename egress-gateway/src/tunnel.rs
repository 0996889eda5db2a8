//! Splicing a `CONNECT` tunnel, with an idle timeout so that no tunnel is held forever.

use egress_core::ctx::Destination;
use egress_core::ctx::RejectionKind;
use egress_core::transport::UpstreamStream;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Copies bytes both ways until both sides have closed, or until neither has sent anything
/// for `idle`.
pub(crate) async fn splice<C>(
    client: C,
    mut upstream: UpstreamStream,
    initial: Vec<u8>,
    idle: Duration,
    dst: &Destination,
) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    // Bytes read from the client to inspect its ClientHello go upstream first, unchanged.
    if !initial.is_empty()
        && tokio::time::timeout(idle, upstream.write_all(&initial))
            .await
            .is_err()
    {
        return (0, 0);
    }
    let (cr, cw) = tokio::io::split(client);
    let (sent, received) = match upstream {
        UpstreamStream::Tcp(tcp) => {
            let (ur, uw) = tcp.into_split();
            both_ways(cr, cw, ur, uw, idle, dst).await
        }
        UpstreamStream::Tunnel(io) => {
            let (ur, uw) = tokio::io::split(io);
            both_ways(cr, cw, ur, uw, idle, dst).await
        }
    };
    (sent + initial.len() as u64, received)
}

async fn both_ways<CR, CW, UR, UW>(
    cr: CR,
    cw: CW,
    ur: UR,
    uw: UW,
    idle: Duration,
    dst: &Destination,
) -> (u64, u64)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let up = pipe(cr, uw, idle, start, &last, &sent);
    let down = pipe(ur, cw, idle, start, &last, &received);
    match tokio::try_join!(up, down) {
        Ok(_) => tracing::debug!(%dst, "tunnel closed"),
        Err(error) => tracing::debug!(%dst, %error, "tunnel ended"),
    }
    (sent.into_inner(), received.into_inner())
}

/// Checks the `ClientHello` of a tunnel to a TLS port: present, TLS, and naming the
/// `CONNECT` host in its SNI (no domain fronting). Returns the bytes to forward, or why the
/// tunnel is refused (a stable reason and a message).
pub(crate) async fn inspect(
    client: &mut TokioIo<Upgraded>,
    host: &egress_core::ctx::Host,
) -> Result<Vec<u8>, (RejectionKind, String)> {
    use egress_tls::sni::{HelloError, read_client_hello};
    let (bytes, sni) = read_client_hello(client, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            HelloError::NotTls(_) => (RejectionKind::NotTls, e.to_string()),
            _ => (RejectionKind::NoClientHello, e.to_string()),
        })?;
    let Some(sni) = sni else {
        return Err((
            RejectionKind::SniMissing,
            "the ClientHello carries no server name".into(),
        ));
    };
    let want = host.to_string();
    let got = sni.trim_end_matches('.');
    if !got.eq_ignore_ascii_case(&want) {
        return Err((
            RejectionKind::SniMismatch,
            format!("the ClientHello names {sni:?}, the tunnel was opened to {want:?}"),
        ));
    }
    Ok(bytes)
}

async fn pipe<R, W>(
    mut r: R,
    mut w: W,
    idle: Duration,
    start: Instant,
    last: &AtomicU64,
    bytes: &AtomicU64,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(n) => n?,
            Err(_) => {
                // This direction was quiet; the tunnel is idle only if the other was too.
                let quiet = start.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
                if quiet >= idle.as_millis() as u64 {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "tunnel idle timeout",
                    ));
                }
                continue;
            }
        };
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(total);
        }
        match tokio::time::timeout(idle, w.write_all(&buf[..n])).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tunnel peer not reading",
                ));
            }
        }
        total += n as u64;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
