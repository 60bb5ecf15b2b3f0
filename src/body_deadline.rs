//! The deadline of an HTTP/2 request body, kept on its frames.
//!
//! On HTTP/1 the connection's bytes are the request's bytes, so
//! `client_io.rs` enforces `body_read_timeout` and `body_min_rate` there.
//! An HTTP/2 connection carries many streams and its frames keep flowing
//! while one stream's body stalls, so that rule cannot see a stream that is
//! trickled or never finished. [`DeadlineBody`] applies the same two rules
//! to one request body: once the pipeline waits for it, no gap between two
//! frames may exceed `body_read_timeout`, and the body must arrive within
//! `body_read_timeout` plus one second per `body_min_rate` bytes received.
//! Past either, the next poll fails with [`BodyReadTimeout`] (answered 408;
//! hyper then resets the stream), once, after reporting the stall.
//!
//! HTTP/1 bodies pass through untimed: their deadline already ran on the
//! connection, and one stall must give one 408 and one count.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::client_io::{BodyReadTimeout, OnStall, Stall};
use crate::error::BoxError;

/// The two body rules of a listener (from `config::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRules {
    pub body_read_timeout: Duration,
    /// Bytes per second past the first `body_read_timeout`; 0 turns it off.
    pub body_min_rate: u64,
}

impl BodyRules {
    /// When a body started at `started`, last heard from at `last`, with
    /// `received` bytes so far, is too late.
    pub fn deadline(self, started: Instant, last: Instant, received: u64) -> Instant {
        let gap = last + self.body_read_timeout;
        if self.body_min_rate == 0 {
            return gap;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.body_min_rate as f64);
        gap.min(started + self.body_read_timeout + earned)
    }
}

#[derive(Debug, Clone, Copy)]
struct Clock {
    started: Instant,
    last: Instant,
    received: u64,
}

/// A request body whose frames must arrive in time (see the module docs).
pub struct DeadlineBody<B> {
    inner: B,
    /// `None`: no deadline (an HTTP/1 body, timed on its connection).
    rules: Option<(BodyRules, OnStall)>,
    clock: Option<Clock>,
    timer: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl<B> DeadlineBody<B> {
    /// A body held to `rules`, calling `on_stall` once if it runs out.
    pub fn timed(inner: B, rules: BodyRules, on_stall: OnStall) -> Self {
        Self {
            inner,
            rules: Some((rules, on_stall)),
            clock: None,
            timer: None,
            expired: false,
        }
    }

    /// A body read without a deadline of its own.
    pub fn untimed(inner: B) -> Self {
        Self {
            inner,
            rules: None,
            clock: None,
            timer: None,
            expired: false,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some((rules, on_stall)) = &this.rules else {
            return polled.map(|frame| frame.map(|f| f.map_err(Into::into)));
        };
        let now = Instant::now();
        let clock = this.clock.get_or_insert(Clock {
            started: now,
            last: now,
            received: 0,
        });
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                clock.last = now;
                if let Some(data) = frame.data_ref() {
                    clock.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.timer = None;
                Poll::Ready(other.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = rules.deadline(clock.started, clock.last, clock.received);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.expired = true;
                this.timer = None;
                on_stall(Stall::Body);
                Poll::Ready(Some(Err(Box::new(BodyReadTimeout::new(
                    clock.received,
                    clock.started.elapsed(),
                    rules.body_read_timeout,
                    rules.body_min_rate,
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    /// A body fed by a channel, so a test decides when each frame comes.
    struct Receiver(mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>);

    impl Body for Receiver {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.get_mut().0.poll_recv(cx)
        }
    }

    const RULES: BodyRules = BodyRules {
        body_read_timeout: Duration::from_secs(10),
        body_min_rate: 100,
    };

    fn counted() -> (OnStall, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        let on_stall: OnStall = Arc::new(move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        (on_stall, count)
    }

    #[test]
    fn the_deadline_is_the_gap_when_the_rate_is_off() {
        let start = Instant::now();
        let rules = BodyRules {
            body_min_rate: 0,
            ..RULES
        };
        let last = start + Duration::from_secs(30);
        assert_eq!(
            rules.deadline(start, last, 0),
            last + Duration::from_secs(10)
        );
    }

    #[test]
    fn the_deadline_grows_by_one_second_per_rate_bytes_but_never_past_the_gap() {
        let start = Instant::now();
        let late = start + Duration::from_secs(20);
        assert_eq!(
            RULES.deadline(start, late, 500),
            start + Duration::from_secs(15)
        );
        let early = start + Duration::from_secs(1);
        assert_eq!(
            RULES.deadline(start, early, 10_000),
            early + Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_once_with_a_body_timeout() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (on_stall, count) = counted();
        let mut body = DeadlineBody::timed(Receiver(rx), RULES, on_stall);
        tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "x");
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(crate::client_io::is_body_timeout(&*err), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(body.frame().await.is_none());
        assert_eq!(count.load(Ordering::Relaxed), 1);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_whose_frames_come_in_time_is_read_whole() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (on_stall, count) = counted();
        let body = DeadlineBody::timed(Receiver(rx), RULES, on_stall);
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 1000]))))
                    .unwrap();
            }
        });
        let whole = body.collect().await.unwrap().to_bytes();
        assert_eq!(whole.len(), 3000);
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_untimed_body_waits_as_long_as_it_takes() {
        let (tx, rx) = mpsc::unbounded_channel();
        let body = DeadlineBody::untimed(Receiver(rx));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
                .unwrap();
        });
        assert_eq!(body.collect().await.unwrap().to_bytes(), "late");
    }
}
