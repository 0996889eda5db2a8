//! The response body type used by the gateway stack.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

use crate::BoxError;

/// A type-erased body: upstream responses stream through it, refusals are one `Bytes` chunk.
///
/// It is a newtype (not an alias) so that it can implement `From<Bytes>`, which is all a policy
/// layer needs to answer on its own.
pub struct BoxBody(UnsyncBoxBody<Bytes, BoxError>);

impl BoxBody {
    /// Wraps any body whose errors can be boxed.
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self(body.map_err(Into::into).boxed_unsync())
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::new(http_body_util::Empty::<Bytes>::new())
    }
}

impl Default for BoxBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for BoxBody {
    fn from(bytes: Bytes) -> Self {
        Self::new(Full::new(bytes))
    }
}

impl From<String> for BoxBody {
    fn from(s: String) -> Self {
        Self::from(Bytes::from(s))
    }
}

impl From<&'static str> for BoxBody {
    fn from(s: &'static str) -> Self {
        Self::from(Bytes::from_static(s.as_bytes()))
    }
}

impl std::fmt::Debug for BoxBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxBody").finish_non_exhaustive()
    }
}

impl Body for BoxBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A body that fails when it goes `timeout` without producing a frame.
///
/// Unlike tower-http's `TimeoutBody` it is `Unpin` (the hyper client needs that) and arms a
/// timer only when a poll actually has to wait, so bodies that are empty or already buffered
/// cost no timer and no allocation.
#[derive(Debug)]
pub struct IdleTimeout<B> {
    inner: B,
    timeout: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// A client's request body: its errors are the client's ([`ClientBodyError`]).
    client: bool,
}

/// A request body from the client failed (a malformed chunk, a reset, a stall) while it
/// was being sent upstream: the client's fault, reported as such rather than as the
/// upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

impl ClientBodyError {
    /// Whether the body stalled for longer than the idle timeout (rather than being broken).
    pub fn is_timeout(&self) -> bool {
        crate::error::cause_ref::<BodyIdleTimeout>(&*self.0).is_some()
            || self.0.is::<BodyIdleTimeout>()
    }
}

/// The error of an [`IdleTimeout`] body that waited too long.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct BodyIdleTimeout(pub Duration);

impl<B> IdleTimeout<B> {
    /// Wraps `inner`; `None` never times out.
    pub fn new(inner: B, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
            client: false,
        }
    }

    /// Wraps a client's request body: its errors become [`ClientBodyError`]s.
    pub fn for_request(inner: B, timeout: Option<Duration>) -> Self {
        Self {
            client: true,
            ..Self::new(inner, timeout)
        }
    }

    fn error(&self, e: BoxError) -> BoxError {
        if self.client {
            Box::new(ClientBodyError(e))
        } else {
            e
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        while let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            // A client's trailers are headers no policy saw (and that some origins merge
            // into the headers): they are never forwarded.
            if this.client && matches!(&frame, Some(Ok(f)) if f.is_trailers()) {
                continue;
            }
            return Poll::Ready(frame.map(|f| f.map_err(|e| this.error(e.into()))));
        }
        let Some(timeout) = this.timeout else {
            return Poll::Pending;
        };
        if !this.armed {
            let deadline = Instant::now() + timeout;
            match &mut this.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            this.armed = true;
        }
        let expired = match &mut this.sleep {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if expired {
            return Poll::Ready(Some(Err(this.error(BodyIdleTimeout(timeout).into()))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_clients_trailers_are_never_forwarded() {
        let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from_static(b"data")).await;
            let mut t = http::HeaderMap::new();
            t.insert(
                "x-forwarded-client-cert",
                http::HeaderValue::from_static("forged"),
            );
            let _ = tx.send_trailers(t).await;
        });
        let collected = IdleTimeout::for_request(rx, None).collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"data"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_bodies_fail_and_busy_ones_do_not() {
        let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let mut body = IdleTimeout::new(rx, Some(Duration::from_secs(5)));
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let _ = tx.send_data(Bytes::from_static(b"x")).await;
            }
            tokio::time::sleep(Duration::from_secs(6)).await;
            drop(tx);
        });
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("idle"), "{err}");

        let full = IdleTimeout::new(
            Full::new(Bytes::from_static(b"ok")),
            Some(Duration::from_secs(1)),
        );
        assert_eq!(full.collect().await.unwrap().to_bytes(), "ok");
    }
}
