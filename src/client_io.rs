//! A client connection's byte stream, as hyper reads and writes it: the
//! request framing followed in place (`framing.rs`), and the deadlines of a
//! request head, a request body, and an answer the client does not read.
//!
//! [`ClientIo`] keeps them on the same bytes, without copying them:
//!
//! - `header_read_timeout` (HTTP/1): once an HTTP/1 connection has no
//!   request in flight, the next head must be complete within that time, or
//!   the read fails with [`HeadTimeout`] and hyper closes the connection
//!   without an answer. It also ends an idle keep-alive connection. hyper
//!   has this timer itself, but arms a new one for every request (an
//!   allocation, a timer-wheel insert and removal, and a shared reference
//!   count per request); here one timer per connection is armed once and
//!   moved only when it fires before the head it guards is due, so a busy
//!   connection pays one clock read per request.
//! - `body_read_timeout` and `body_min_rate`: once the proxy waits for body
//!   bytes, the client may not keep it waiting longer than
//!   `body_read_timeout` between two reads, and the body must arrive within
//!   `body_read_timeout` plus one second per `body_min_rate` bytes received
//!   (Apache's `mod_reqtimeout` rule), so a body trickled a byte at a time
//!   cannot hold a connection slot. Past either, the read fails with
//!   [`BodyReadTimeout`], which the pipeline answers 408 and hyper follows by
//!   closing the connection.
//! - `send_timeout`: a write (or flush) that cannot make progress for that
//!   long fails with [`SendTimeout`] and hyper drops the connection: a client
//!   that never reads its answer cannot pin the answer's memory.
//!
//! The body and send timers exist only while the proxy is actually waiting
//! on the client. The head timer is the connection's one timer between
//! requests: a connection with no hyper connection waits on it too
//! ([`ClientIo::poll_idle_deadline`], `keep_alive.rs`).
//!
//! For the parking of idle HTTP/1 connections (`keep_alive.rs`),
//! [`ConnectionWatch`] also learns, at the cost of a few relaxed stores per
//! read or write, whether the connection is at rest: hyper's last call was a
//! read that found nothing, between two requests, every answer finished and
//! no write waiting. Bytes that were read before a hyper connection ended
//! (or by the HTTP/2 detection) are handed to the next reader first
//! ([`ClientIo::replay`]) without being followed twice.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::framing::{FramingScanner, Phase};

/// The client-side deadlines of one listener (from `config::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDeadlines {
    pub max_header_bytes: usize,
    pub body_read_timeout: Duration,
    /// Bytes per second a body must average past its first
    /// `body_read_timeout`; 0 turns the rate off (the gap still applies).
    pub body_min_rate: u64,
    pub send_timeout: Duration,
    /// How long an HTTP/1 connection may wait for a complete request head
    /// while no request is in flight (see [`ClientIo::time_request_heads`]).
    pub header_read_timeout: Duration,
}

/// Which client deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// The request body (`body_read_timeout`, `body_min_rate`).
    Body,
    /// Writing the answer (`send_timeout`).
    Send,
}

impl Stall {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Send => "send",
        }
    }
}

/// Called once per stall (for the counter and the log line).
pub type OnStall = Arc<dyn Fn(Stall) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("request body too slow: {received} bytes in {waited:?} (body_read_timeout {timeout:?}, body_min_rate {rate} bytes/s)")]
pub struct BodyReadTimeout {
    received: u64,
    waited: Duration,
    timeout: Duration,
    rate: u64,
}

impl BodyReadTimeout {
    /// `received` bytes in `waited`, under these rules (`body_deadline.rs`
    /// raises it for HTTP/2 bodies).
    pub fn new(received: u64, waited: Duration, timeout: Duration, rate: u64) -> Self {
        Self {
            received,
            waited,
            timeout,
            rate,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("client did not read the answer for {0:?} (send_timeout)")]
pub struct SendTimeout(Duration);

#[derive(Debug, thiserror::Error)]
#[error("no complete request head within {0:?} (header_read_timeout)")]
pub struct HeadTimeout(Duration);

/// True when `err`'s chain holds a [`BodyReadTimeout`]. `io::Error` hides
/// the error it wraps from `source()`, so each one is opened by hand.
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<BodyReadTimeout>() {
            return true;
        }
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|e| e.get_ref()) {
            if inner.is::<BodyReadTimeout>() {
                return true;
            }
        }
        cause = err.source();
    }
    false
}

/// What the connection's service and its I/O learn about each other. Both
/// run on the connection's task, except a response body that hyper may
/// finish from the same task too, so relaxed atomics suffice.
#[derive(Debug)]
pub struct ConnectionWatch {
    /// When the connection started; `last_activity` counts from it.
    epoch: Instant,
    /// Requests handed to the service so far.
    requests: AtomicU64,
    /// 1-based number of the request whose head carried both
    /// `Content-Length` and `Transfer-Encoding`; 0 for none.
    conflict: AtomicU64,
    /// HTTP/2 requests whose answer is not finished yet.
    open_streams: AtomicU64,
    /// Milliseconds from `epoch` to the last HTTP/2 request start or answer end.
    last_activity: AtomicU64,
    /// Whether the connection speaks HTTP/2 (known at its first request).
    http2: AtomicBool,
    /// HTTP/1 answers whose body has ended (or was dropped).
    answered: AtomicU64,
    /// Reads and writes that moved bytes; the park check compares two
    /// samples instead of keeping a timer per request.
    io_events: AtomicU64,
    /// The last I/O call was a read that found nothing, between two
    /// requests, with no write waiting.
    resting: AtomicBool,
    /// Nanoseconds from `epoch` to the connection's last write: once it is
    /// at rest, the end of the last answer, from which the next head's
    /// `header_read_timeout` runs.
    rested_at: AtomicU64,
}

impl Default for ConnectionWatch {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            requests: AtomicU64::new(0),
            conflict: AtomicU64::new(0),
            open_streams: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            io_events: AtomicU64::new(0),
            resting: AtomicBool::new(false),
            rested_at: AtomicU64::new(0),
        }
    }
}

impl ConnectionWatch {
    /// Counts a request handed to the service; true when its head had both
    /// framing fields.
    pub fn next_request_conflicts(&self) -> bool {
        let number = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.conflict.load(Ordering::Relaxed) == number
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// An HTTP/2 request started; [`ConnectionWatch::stream_done`] ends it.
    pub fn stream_opened(&self) {
        self.http2.store(true, Ordering::Relaxed);
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    pub fn stream_done(&self) {
        self.touch();
        self.open_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Since when no HTTP/2 request has been open; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.open_streams.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let ms = self.last_activity.load(Ordering::Relaxed);
        Some(self.epoch + Duration::from_millis(ms))
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_activity.store(ms, Ordering::Relaxed);
    }

    /// An HTTP/1 answer's body ended (or was dropped).
    pub fn answer_done(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP/1 requests handed to the service whose answer has not ended.
    pub fn answers_pending(&self) -> u64 {
        self.requests
            .load(Ordering::Relaxed)
            .wrapping_sub(self.answered.load(Ordering::Relaxed))
    }

    /// Reads and writes that moved bytes so far; unchanged between two
    /// samples means the connection was quiet in between.
    pub fn io_events(&self) -> u64 {
        self.io_events.load(Ordering::Relaxed)
    }

    /// Whether an HTTP/1 connection is between requests with nothing in
    /// flight: hyper waits for the next head, has read nothing of it, every
    /// request has its answer finished and no write is waiting. Only then
    /// may hyper's connection be ended without the client seeing it.
    pub fn is_at_rest(&self) -> bool {
        self.resting.load(Ordering::Relaxed)
            && self.answered.load(Ordering::Relaxed) == self.requests.load(Ordering::Relaxed)
    }

    /// When the connection last wrote: once at rest, the end of its last
    /// answer (the connection's start before any).
    pub fn rested_at(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.rested_at.load(Ordering::Relaxed))
    }

    /// One bump by the only writer (the connection's I/O): no atomic
    /// read-modify-write needed.
    fn bump_io(&self) {
        let events = self.io_events.load(Ordering::Relaxed);
        self.io_events
            .store(events.wrapping_add(1), Ordering::Relaxed);
    }
}

/// Since when the proxy has been waiting on the current request body.
#[derive(Debug, Clone, Copy)]
struct BodyClock {
    started: Instant,
    last: Instant,
    received: u64,
}

/// A client connection read and written through the deadlines above.
pub struct ClientIo<IO> {
    inner: IO,
    scanner: FramingScanner,
    deadlines: ClientDeadlines,
    watch: Arc<ConnectionWatch>,
    on_stall: OnStall,
    body: Option<BodyClock>,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Whether request heads are timed (HTTP/1 only).
    time_heads: bool,
    /// Since when the connection has waited for the current head, with no
    /// request in flight; `None` while a request is in flight.
    head_since: Option<Instant>,
    /// Armed at some head's deadline, at or before the current one's.
    head_timer: Option<Pin<Box<Sleep>>>,
    /// Heads seen complete so far; each one completed stops the clock.
    heads_seen: u64,
    /// Bytes already read (and followed) that the next reader gets first.
    replay: Option<Bytes>,
}

impl<IO> ClientIo<IO> {
    pub fn new(
        inner: IO,
        deadlines: ClientDeadlines,
        watch: Arc<ConnectionWatch>,
        on_stall: OnStall,
    ) -> Self {
        Self {
            inner,
            scanner: FramingScanner::new(deadlines.max_header_bytes),
            deadlines,
            watch,
            on_stall,
            body: None,
            read_timer: None,
            write_timer: None,
            time_heads: false,
            head_since: None,
            head_timer: None,
            heads_seen: 0,
            replay: None,
        }
    }

    /// Hands `bytes`, already read from this connection, to the next reads
    /// before anything new. They were followed when first read, so they are
    /// not followed again.
    pub fn replay(&mut self, bytes: Bytes) {
        debug_assert!(self.replay.is_none(), "one replay at a time");
        if !bytes.is_empty() {
            self.replay = Some(bytes);
        }
    }

    /// Reads what has arrived as a read by the connection's reader does, but
    /// without following it: for the express lane (`express.rs`), which
    /// parses the head itself. What the lane answers, it then counts with
    /// [`ClientIo::count_unfollowed_request`]; what it does not, it hands
    /// to hyper with [`ClientIo::replay_unfollowed`], which follows it
    /// then. Only while nothing waits to be replayed, and with the framing
    /// at a boundary.
    pub fn poll_read_unfollowed(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>
    where
        IO: AsyncRead + Unpin,
    {
        debug_assert!(self.replay.is_none() && self.scanner.at_boundary());
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() > before {
                self.watch.bump_io();
            }
            self.watch.resting.store(false, Ordering::Relaxed);
        }
        // Pending: the lane hands the connection on at once, and whoever
        // waits next (`keep_alive.rs` or hyper) watches the head's deadline.
        polled
    }

    /// Counts one request read by [`ClientIo::poll_read_unfollowed`] and
    /// answered: a whole head with no `Transfer-Encoding`, its
    /// `Content-Length` body if any, and nothing after it. Following those
    /// bytes would have left the connection exactly so.
    pub fn count_unfollowed_request(&mut self) {
        self.scanner.count_plain_request();
        self.followed(0);
    }

    /// Hands bytes read by [`ClientIo::poll_read_unfollowed`] to the next
    /// reads, following them now.
    pub fn replay_unfollowed(&mut self, bytes: Bytes) {
        self.observe(&bytes);
        self.replay(bytes);
    }

    /// Fails once the next request head has been waited for
    /// `header_read_timeout` since the last answer: the wait of a
    /// connection no reader is polling (`keep_alive.rs`), on the head timer
    /// its reads use.
    pub fn poll_idle_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_head_deadline(cx)
    }

    /// Whether bytes wait to be read again.
    pub fn has_replay(&self) -> bool {
        self.replay.is_some()
    }

    /// Bounds every request head by `header_read_timeout` from here on:
    /// for an HTTP/1 connection, whose requests come one after another.
    pub fn time_request_heads(&mut self) {
        self.time_heads = true;
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.inner
    }

    pub fn watch(&self) -> &Arc<ConnectionWatch> {
        &self.watch
    }

    /// A read found nothing: at rest when that is between two requests
    /// with no write waiting.
    fn read_pending(&mut self) {
        let resting = self.scanner.at_boundary() && self.write_timer.is_none();
        self.watch.resting.store(resting, Ordering::Relaxed);
    }

    fn observe(&mut self, bytes: &[u8]) {
        let body_bytes = self.scanner.observe(bytes);
        self.followed(body_bytes);
    }

    /// Brings the deadlines and the watch up to where the scanner now is,
    /// `body_bytes` of body having just arrived.
    fn followed(&mut self, body_bytes: u64) {
        if self.scanner.heads() != self.heads_seen {
            // The head waited for is complete; the next one gets a clock
            // of its own at its first wait.
            self.heads_seen = self.scanner.heads();
            self.head_since = None;
        }
        if let Some(clock) = &mut self.body {
            if body_bytes > 0 {
                clock.last = Instant::now();
                clock.received += body_bytes;
            }
        }
        if self.scanner.phase() != Phase::Body {
            self.body = None;
            self.read_timer = None;
        }
        if let Some(number) = self.scanner.conflict() {
            self.watch.conflict.store(number, Ordering::Relaxed);
        }
    }

    /// When the body being waited for is too late.
    fn body_deadline(&mut self) -> Instant {
        let clock = *self.body.get_or_insert_with(|| {
            let now = Instant::now();
            BodyClock {
                started: now,
                last: now,
                received: 0,
            }
        });
        let ClientDeadlines {
            body_read_timeout: timeout,
            body_min_rate: rate,
            ..
        } = self.deadlines;
        let gap = clock.last + timeout;
        if rate == 0 {
            return gap;
        }
        let earned = Duration::from_secs_f64(clock.received as f64 / rate as f64);
        gap.min(clock.started + timeout + earned)
    }

    fn poll_body_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = self.body_deadline();
        let timer = self
            .read_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let clock = self.body.take().expect("set by body_deadline");
        self.read_timer = None;
        (self.on_stall)(Stall::Body);
        // Not `TimedOut`: on a streamed request the error surfaces from the
        // upstream client, which would take that kind for its own timeout.
        Poll::Ready(Err(io::Error::other(BodyReadTimeout {
            received: clock.received,
            waited: clock.started.elapsed(),
            timeout: self.deadlines.body_read_timeout,
            rate: self.deadlines.body_min_rate,
        })))
    }

    /// A read found nothing inside or before a head: fails once the head
    /// has been waited for `header_read_timeout` with no request in flight.
    fn poll_head_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let waiting = self.time_heads && self.watch.answers_pending() == 0;
        if !waiting {
            // hyper also reads while it serves a request (to see the client
            // leave): that is not a wait for a head.
            self.head_since = None;
            return Poll::Pending;
        }
        let timeout = self.deadlines.header_read_timeout;
        // As hyper would: from the end of the last answer (hyper may not
        // read again until the client sends), or from now before any.
        let since = *self
            .head_since
            .get_or_insert_with(|| match self.watch.requests() {
                0 => Instant::now(),
                _ => self.watch.rested_at(),
            });
        let deadline = since + timeout;
        let timer = self
            .head_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Left armed from an earlier head, it fires early at most once per
        // head: only then is it moved to this head's deadline.
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                self.head_timer = None;
                self.head_since = None;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    HeadTimeout(timeout),
                )));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// After a write or flush made no progress: fails once `send_timeout`
    /// has passed since the first such attempt.
    fn poll_send_deadline<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.deadlines.send_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.write_timer = None;
        (self.on_stall)(Stall::Send);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            SendTimeout(timeout),
        )))
    }

    fn wrote<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                self.watch.resting.store(false, Ordering::Relaxed);
                self.poll_send_deadline(cx)
            }
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }

    /// A write that moved bytes: the connection is busy.
    fn moved(&mut self) {
        let nanos = self.watch.epoch.elapsed().as_nanos() as u64;
        self.watch.rested_at.store(nanos, Ordering::Relaxed);
        // An answer is going out: the next head's wait starts after it.
        self.head_since = None;
        self.watch.bump_io();
        self.watch.resting.store(false, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ClientIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(replay) = &mut this.replay {
            let n = replay.len().min(buf.remaining());
            buf.put_slice(&replay.split_to(n));
            if replay.is_empty() {
                this.replay = None;
            }
            this.watch.resting.store(false, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // Judged where hyper will parse it: no copy.
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.observe(read);
                    this.watch.bump_io();
                }
                this.watch.resting.store(false, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.scanner.phase() == Phase::Body => this.poll_body_deadline(cx),
            Poll::Pending => {
                this.read_pending();
                this.poll_head_deadline(cx)
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ClientIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.moved();
            }
        }
        this.wrote(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.wrote(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.moved();
            }
        }
        this.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn deadlines() -> ClientDeadlines {
        ClientDeadlines {
            max_header_bytes: 64 * 1024,
            body_read_timeout: Duration::from_secs(10),
            body_min_rate: 100,
            send_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
        }
    }

    fn counting() -> (OnStall, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        (
            Arc::new(move |_| {
                seen.fetch_add(1, Ordering::Relaxed);
            }),
            count,
        )
    }

    /// Sends a byte every `every`, a hundred times, while the peer reads.
    fn trickle<W: AsyncWrite + Unpin + Send + 'static>(
        mut writer: W,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for _ in 0..100 {
                if writer.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Reads until a read fails (every read before it must bring bytes).
    async fn read_until_error<IO: AsyncRead + Unpin>(io: &mut ClientIo<IO>) -> io::Error {
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(n) => assert!(n > 0),
                Err(err) => return err,
            }
        }
    }

    /// A connection whose request heads are timed, as an HTTP/1 one is.
    fn timed_heads(server: tokio::io::DuplexStream) -> ClientIo<tokio::io::DuplexStream> {
        let (on_stall, _) = counting();
        let mut io = ClientIo::new(server, deadlines(), Arc::default(), on_stall);
        io.time_request_heads();
        io
    }

    fn is_head_timeout(err: &io::Error) -> bool {
        err.kind() == io::ErrorKind::TimedOut
            && err.get_ref().is_some_and(|inner| inner.is::<HeadTimeout>())
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_past_header_read_timeout_fails_the_read() {
        let (client, server) = tokio::io::duplex(1024);
        let mut io = timed_heads(server);
        let (_reader, mut writer) = tokio::io::split(client);
        writer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        // A header byte every second: the head never ends.
        let trickle = trickle(writer, Duration::from_secs(1));
        let started = Instant::now();
        let err = read_until_error(&mut io).await;
        assert!(is_head_timeout(&err), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_millis(30_010),
            "{waited:?}"
        );
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn each_head_gets_header_read_timeout_of_its_own_from_the_answer_before() {
        let (client, server) = tokio::io::duplex(1024);
        let mut io = timed_heads(server);
        let watch = io.watch().clone();
        let (mut reader, mut writer) = tokio::io::split(client);
        let mut buf = [0u8; 4096];
        for _ in 0..3 {
            // Each head comes 20 s after the last answer: 60 s in all,
            // twice the timeout, but never 30 s for one head.
            let send = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                writer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
                writer
            });
            let n = io.read(&mut buf).await.expect("within its own deadline");
            assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
            writer = send.await.unwrap();
            // The service takes the request, answers it after 40 s (longer
            // than the timeout: a request in flight is not a wait for a
            // head), and the answer is written.
            watch.next_request_conflicts();
            let answering = {
                let watch = watch.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(40)).await;
                    watch.answer_done();
                })
            };
            let waiting = tokio::time::timeout(Duration::from_secs(40), io.read(&mut buf)).await;
            assert!(waiting.is_err(), "no head and no error while answering");
            answering.await.unwrap();
            io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0);
        }
        // Nothing more: the connection fails 30 s after the last answer.
        let answered = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert!(is_head_timeout(&err), "{err}");
        assert_eq!(answered.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_has_no_head_deadline() {
        let (client, server) = tokio::io::duplex(1024);
        let (on_stall, _) = counting();
        // Not `time_request_heads`: HTTP/2 frames are not HTTP/1 heads.
        let mut io = ClientIo::new(server, deadlines(), Arc::default(), on_stall);
        let (_reader, _writer) = tokio::io::split(client);
        let mut buf = [0u8; 64];
        let waited = tokio::time::timeout(Duration::from_secs(120), io.read(&mut buf)).await;
        assert!(waited.is_err(), "still waiting after 120 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickled_below_the_minimum_rate_times_out() {
        let (client, server) = tokio::io::duplex(1024);
        let (on_stall, stalls) = counting();
        let mut io = ClientIo::new(server, deadlines(), Arc::default(), on_stall);
        let (_reader, mut writer) = tokio::io::split(client);
        writer
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        // A byte every 5 s: never a 10 s gap, far below 100 bytes/s.
        let trickle = trickle(writer, Duration::from_secs(5));
        let started = Instant::now();
        let err = read_until_error(&mut io).await;
        assert!(is_body_timeout(&err), "{err}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(10), "{waited:?}");
        assert!(waited < Duration::from_secs(12), "{waited:?}");
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_is_read_whole() {
        let (client, server) = tokio::io::duplex(1024);
        let (on_stall, stalls) = counting();
        let mut io = ClientIo::new(server, deadlines(), Arc::default(), on_stall);
        let (_reader, mut writer) = tokio::io::split(client);
        let send = tokio::spawn(async move {
            writer
                .write_all(b"POST / HTTP/1.1\r\nContent-Length: 3000\r\n\r\n")
                .await
                .unwrap();
            // 200 bytes/s, twice the minimum, for 15 s.
            for _ in 0..30 {
                writer.write_all(&[b'x'; 100]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            writer
        });
        let mut total = 0;
        let mut buf = [0u8; 4096];
        while total < 3000 + 41 {
            total += io.read(&mut buf).await.expect("no timeout");
        }
        assert_eq!(stalls.load(Ordering::Relaxed), 0);
        drop(send.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_between_requests_has_no_body_deadline() {
        let (client, server) = tokio::io::duplex(1024);
        let (on_stall, stalls) = counting();
        let mut io = ClientIo::new(server, deadlines(), Arc::default(), on_stall);
        let (_reader, mut writer) = tokio::io::split(client);
        writer
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let head = io.read(&mut buf).await.unwrap();
        assert!(head > 0);
        let idle = tokio::time::timeout(Duration::from_secs(600), io.read(&mut buf)).await;
        assert!(idle.is_err(), "still waiting after 10 minutes, no error");
        assert_eq!(stalls.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_never_reads_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let (on_stall, stalls) = counting();
        let mut io = ClientIo::new(server, deadlines(), Arc::default(), on_stall);
        let err = io.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.get_ref().unwrap().is::<SendTimeout>());
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_watch_names_the_conflicting_request_only() {
        let watch = ConnectionWatch::default();
        watch.conflict.store(2, Ordering::Relaxed);
        assert!(!watch.next_request_conflicts());
        assert!(watch.next_request_conflicts());
        assert!(!watch.next_request_conflicts());
        assert_eq!(watch.requests(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_only_with_no_open_stream() {
        let watch = ConnectionWatch::default();
        assert!(!watch.is_http2());
        watch.stream_opened();
        assert!(watch.is_http2());
        assert_eq!(watch.idle_since(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        watch.stream_done();
        let since = watch.idle_since().expect("idle once the answer ended");
        assert_eq!(since, watch.epoch + Duration::from_secs(5));
    }
}
