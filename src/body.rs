//! Body types: what the proxy answers with, and the upstream body wrapper
//! that guards against a stalled upstream.
//!
//! [`ProxyBody`] is either a complete in-memory body (hits share the entry's
//! `Bytes`, so nothing is copied) or an upstream stream passed through.
//! [`UpstreamBody`] fails when the upstream sends nothing for the idle
//! timeout, so neither a fill nor a streamed answer can hang forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::BoxError;

pub type ProxyBody = Either<Full<Bytes>, UpstreamBody>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Either::Left(Full::new(bytes.into()))
}

pub fn empty() -> ProxyBody {
    Either::Left(Full::new(Bytes::new()))
}

#[derive(Debug, thiserror::Error)]
#[error("upstream sent no data for {0:?}")]
pub struct UpstreamStalled(Duration);

/// An upstream response body, optionally behind bytes already read from it.
pub struct UpstreamBody {
    prefix: Option<Bytes>,
    inner: Incoming,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            prefix: None,
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.prefix = (!prefix.is_empty()).then_some(prefix);
        self
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let idle = self.idle;
                self.deadline.as_mut().reset(Instant::now() + idle);
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(UpstreamStalled(self.idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(prefix) = &self.prefix {
            let extra = prefix.len() as u64;
            hint.set_lower(hint.lower() + extra);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + extra);
            }
        }
        hint
    }
}

/// What reading an upstream body up to a limit produced.
pub enum Collected {
    Complete(Bytes),
    /// Past the limit: the bytes read so far, put back in front of the rest.
    TooLarge(UpstreamBody),
}

/// Reads `body` whole if it fits in `limit` bytes. Trailers are dropped.
pub async fn collect_limited(mut body: UpstreamBody, limit: u64) -> Result<Collected, BoxError> {
    let expected = body.size_hint().exact();
    if expected.is_some_and(|len| len > limit) {
        return Ok(Collected::TooLarge(body));
    }
    let mut buf = BytesMut::with_capacity(expected.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() as u64 > limit {
                return Ok(Collected::TooLarge(body.with_prefix(buf.freeze())));
            }
        }
    }
    Ok(Collected::Complete(buf.freeze()))
}
