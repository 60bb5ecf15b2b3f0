//! An HTTP/2 connection's writes, gathered over one poll of its task and
//! sent with one system call when the poll ends.
//!
//! The h2 crate writes a DATA frame of 256 bytes or more with a write of
//! its own: it chains the payload behind the frame head to avoid a copy,
//! and must flush before it can take the next frame. So a 20 KB answer was
//! two `writev`s (the client's 16 KB frame size), and ten answers on one
//! connection twenty; on loopback each write wakes the client, which costs
//! more than the copy it saves (h2load `-m10`: 2.0 `writev`s per answer,
//! docs/performance.md). nginx's event loop instead writes a connection's
//! queued frames once per event.
//!
//! [`gather`] splits a stream in two: [`BatchedIo`], which hyper reads and
//! writes (a write is copied into the batch and accepted at once; a flush
//! leaves it there), and [`FlushAfterPoll`], which wraps the connection's
//! future and writes the batch out after each poll of it, then flushes the
//! stream (TLS). By then h2 has written every frame the poll produced, and
//! the answers of all the streams that finished meanwhile go out together.
//!
//! Bounds: a batch over [`HIGH_WATER`] is written out from inside the
//! write that filled it, and that write waits (Pending) while the client
//! does not read, so a connection never holds more than `HIGH_WATER` plus
//! one frame. The stream's own deadlines (`ClientIo`'s `send_timeout`) run
//! on these writes as before: a write that fails is reported to hyper by
//! the next operation on [`BatchedIo`], and the task is woken for it. The
//! batch's memory is released whenever it is written out, so an idle
//! connection holds none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A batch this large is written out at once rather than at the end of the
/// poll: ten 20 KB answers fit.
pub const HIGH_WATER: usize = 256 * 1024;

/// Splits `io` into the stream hyper serves and the hook that writes what
/// it wrote after each poll ([`Batch::flush_after_each_poll`]).
pub fn gather<IO>(io: IO) -> (BatchedIo<IO>, Batch<IO>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        out: Vec::new(),
        written: 0,
        unflushed: false,
        failed: None,
    }));
    (BatchedIo(shared.clone()), Batch(shared))
}

struct Shared<IO> {
    io: IO,
    /// Bytes accepted and not yet written; `out[..written]` are written.
    out: Vec<u8>,
    written: usize,
    /// Bytes were written out and the stream not flushed since (TLS).
    unflushed: bool,
    /// Why the last write out failed, until an operation of hyper's reports
    /// it (then every later one fails with `BrokenPipe`).
    failed: Option<Failure>,
}

enum Failure {
    Unreported(io::Error),
    Reported,
}

impl<IO> Shared<IO> {
    fn failure(&mut self) -> Option<io::Error> {
        self.failed.as_ref()?;
        match self.failed.replace(Failure::Reported) {
            Some(Failure::Unreported(err)) => Some(err),
            _ => Some(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Shared<IO> {
    /// Writes the batch out and flushes the stream; Pending while the stream
    /// cannot take more (the task is woken when it can).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.out.is_empty() {
            // Released, not kept: an idle connection holds no batch.
            self.out = Vec::new();
            self.written = 0;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the batch out at the end of a poll. An error is kept for
    /// hyper's next operation, and returned only the first time (the caller
    /// then polls hyper again); after one there is nothing left to write.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        let polled = self.poll_write_out(cx);
        if let Poll::Ready(Err(err)) = polled {
            self.failed = Some(Failure::Unreported(err));
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        polled
    }
}

fn lock<IO>(shared: &Mutex<Shared<IO>>) -> MutexGuard<'_, Shared<IO>> {
    // Nothing in `Shared` is left half-updated by a panic that matters more
    // than the connection it belongs to.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stream as hyper sees it: reads pass through; writes go to the batch.
pub struct BatchedIo<IO>(Arc<Mutex<Shared<IO>>>);

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for BatchedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        if let Some(err) = shared.failure() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut shared.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> BatchedIo<IO> {
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0);
        if let Some(err) = shared.failure() {
            return Poll::Ready(Err(err));
        }
        if shared.out.len() >= HIGH_WATER {
            if let Err(err) = ready!(shared.poll_write_out(cx)) {
                shared.failed = Some(Failure::Reported);
                return Poll::Ready(Err(err));
            }
        }
        if shared.out.capacity() == 0 {
            // Room for what a batch may take before it is written out,
            // rather than doubling (and copying) its way up from the first
            // frame: h2load -m10, 15.3 -> 13.8 µs of CPU per answer. Only
            // the pages written to become resident.
            shared.out.reserve(HIGH_WATER);
        }
        Poll::Ready(Ok(take(&mut shared.out)))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for BatchedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_accept(cx, |out| {
            out.extend_from_slice(data);
            data.len()
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_accept(cx, |out| {
            let len = bufs.iter().map(|b| b.len()).sum();
            out.reserve(len);
            for buf in bufs {
                out.extend_from_slice(buf);
            }
            len
        })
    }

    fn is_write_vectored(&self) -> bool {
        // Every slice is taken whole, so h2 chains its frames (no copy of
        // its own) and hands them over in one call.
        true
    }

    /// Leaves the batch for the end of the poll ([`FlushAfterPoll`]).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.0).failure() {
            Some(err) => Poll::Ready(Err(err)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        if let Some(err) = shared.failure() {
            return Poll::Ready(Err(err));
        }
        if let Err(err) = ready!(shared.poll_write_out(cx)) {
            shared.failed = Some(Failure::Reported);
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

/// The other half of [`gather`]: what writes the batch out.
pub struct Batch<IO>(Arc<Mutex<Shared<IO>>>);

impl<IO: AsyncWrite + Unpin> Batch<IO> {
    /// Runs `served` (the connection), writing the batch out after each poll.
    pub fn flush_after_each_poll<F: Future>(self, served: Pin<Box<F>>) -> FlushAfterPoll<IO, F> {
        FlushAfterPoll {
            batch: self,
            served,
            output: None,
        }
    }
}

/// A connection's future that writes its batch out after each poll, and
/// before it completes.
pub struct FlushAfterPoll<IO, F: Future> {
    batch: Batch<IO>,
    served: Pin<Box<F>>,
    output: Option<F::Output>,
}

impl<IO: AsyncWrite + Unpin, F: Future> Future for FlushAfterPoll<IO, F>
where
    F::Output: Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if this.output.is_none() {
            if let Poll::Ready(output) = this.served.as_mut().poll(cx) {
                this.output = Some(output);
            }
        }
        let drained = lock(&this.batch.0).poll_drain(cx);
        match drained {
            // The stream cannot take more: it wakes the task when it can (or
            // when its send deadline runs out).
            Poll::Pending => Poll::Pending,
            // The connection ended; what it wrote last has gone out (or
            // cannot).
            Poll::Ready(_) if this.output.is_some() => Poll::Ready(this.output.take().unwrap()),
            Poll::Ready(Ok(())) => Poll::Pending,
            // hyper learns of the failure at its next operation on the
            // stream: poll it again.
            Poll::Ready(Err(_)) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use tokio::io::AsyncWriteExt;

    #[derive(Debug, PartialEq)]
    enum Event {
        Write(Vec<u8>),
        Flush,
        Shutdown,
    }

    /// A stream that records what reaches it; it can be made to wait
    /// (`blocked`) or fail.
    #[derive(Default)]
    struct Wire {
        events: Vec<Event>,
        blocked: bool,
        fail: Option<io::ErrorKind>,
        waiting: Option<Waker>,
    }

    #[derive(Clone, Default)]
    struct Mock(Arc<Mutex<Wire>>);

    impl Mock {
        fn writes(&self) -> Vec<Vec<u8>> {
            let wire = self.0.lock().unwrap();
            let writes = wire.events.iter().filter_map(|e| match e {
                Event::Write(bytes) => Some(bytes.clone()),
                _ => None,
            });
            writes.collect()
        }

        fn unblock(&self) {
            let mut wire = self.0.lock().unwrap();
            wire.blocked = false;
            if let Some(waker) = wire.waiting.take() {
                waker.wake();
            }
        }
    }

    impl AsyncRead for Mock {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Mock {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut wire = self.0.lock().unwrap();
            if let Some(kind) = wire.fail {
                return Poll::Ready(Err(kind.into()));
            }
            if wire.blocked {
                wire.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            wire.events.push(Event::Write(data.to_vec()));
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.lock().unwrap().events.push(Event::Flush);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.lock().unwrap().events.push(Event::Shutdown);
            Poll::Ready(Ok(()))
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<F: Future>(future: &mut FlushAfterPoll<Mock, F>, wakes: &Arc<Wakes>) -> Poll<F::Output>
    where
        F::Output: Unpin,
    {
        let waker = Waker::from(wakes.clone());
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    fn held(future: &FlushAfterPoll<Mock, impl Future>) -> (usize, usize) {
        let shared = lock(&future.batch.0);
        (shared.out.len() - shared.written, shared.out.capacity())
    }

    #[test]
    fn the_writes_and_flushes_of_one_poll_go_out_in_one_write() {
        let mock = Mock::default();
        let (mut io, batch) = gather(mock.clone());
        let (go_on, resumed) = tokio::sync::oneshot::channel::<()>();
        let mut served = batch.flush_after_each_poll(Box::pin(async move {
            // What h2 does for one 20 KB answer: the HEADERS frame, then a
            // DATA frame it flushes before the next.
            io.write_all(b"HEADERS").await.unwrap();
            let slices = [io::IoSlice::new(b"DATA-1 "), io::IoSlice::new(b"payload")];
            let taken = io.write_vectored(&slices).await.unwrap();
            assert_eq!(taken, 14, "every slice is taken whole");
            io.flush().await.unwrap();
            io.write_all(b"DATA-2").await.unwrap();
            io.flush().await.unwrap();
            resumed.await.unwrap();
            io.write_all(b"NEXT").await.unwrap();
            io.flush().await.unwrap();
            std::future::pending::<()>().await;
        }));
        let wakes = Arc::new(Wakes::default());

        assert!(poll(&mut served, &wakes).is_pending());
        assert_eq!(mock.writes(), vec![b"HEADERSDATA-1 payloadDATA-2".to_vec()]);
        assert_eq!(mock.0.lock().unwrap().events.last(), Some(&Event::Flush));
        assert_eq!(held(&served), (0, 0), "no batch kept between polls");

        go_on.send(()).unwrap();
        assert!(poll(&mut served, &wakes).is_pending());
        assert_eq!(mock.writes().len(), 2);
        assert_eq!(mock.writes()[1], b"NEXT");

        // A poll that wrote nothing writes and flushes nothing.
        let events = mock.0.lock().unwrap().events.len();
        assert!(poll(&mut served, &wakes).is_pending());
        assert_eq!(mock.0.lock().unwrap().events.len(), events);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "only by the channel");
    }

    #[test]
    fn a_batch_at_high_water_is_written_by_the_next_write_which_waits_for_the_stream() {
        let mock = Mock::default();
        mock.0.lock().unwrap().blocked = true;
        let (mut io, batch) = gather(mock.clone());
        let mut served = batch.flush_after_each_poll(Box::pin(async move {
            io.write_all(&vec![b'a'; HIGH_WATER]).await.unwrap();
            io.write_all(b"more").await.unwrap();
            std::future::pending::<()>().await;
        }));
        let wakes = Arc::new(Wakes::default());

        assert!(poll(&mut served, &wakes).is_pending());
        assert_eq!(mock.writes().len(), 0, "the client reads nothing");
        assert_eq!(held(&served).0, HIGH_WATER, "the second write waits");

        mock.unblock();
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the stream woke the task"
        );
        assert!(poll(&mut served, &wakes).is_pending());
        assert_eq!(
            mock.writes(),
            vec![vec![b'a'; HIGH_WATER], b"more".to_vec()]
        );
        assert_eq!(held(&served), (0, 0));
    }

    #[test]
    fn a_failed_write_out_reaches_the_connection_at_its_next_operation() {
        let mock = Mock::default();
        mock.0.lock().unwrap().fail = Some(io::ErrorKind::ConnectionReset);
        let (mut io, batch) = gather(mock.clone());
        let (go_on, resumed) = tokio::sync::oneshot::channel::<()>();
        let mut served = batch.flush_after_each_poll(Box::pin(async move {
            io.write_all(b"answer").await.unwrap();
            resumed.await.unwrap();
            let first = io.write_all(b"next").await.unwrap_err().kind();
            let then = io.flush().await.unwrap_err().kind();
            (first, then)
        }));
        let wakes = Arc::new(Wakes::default());

        assert!(poll(&mut served, &wakes).is_pending());
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "woken, so the connection learns of it"
        );
        go_on.send(()).unwrap();
        assert_eq!(
            poll(&mut served, &wakes),
            Poll::Ready((io::ErrorKind::ConnectionReset, io::ErrorKind::BrokenPipe))
        );
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            2,
            "by the failure once and by the channel, not in a loop"
        );
    }

    #[test]
    fn a_connection_ends_only_once_its_last_writes_are_out() {
        let mock = Mock::default();
        mock.0.lock().unwrap().blocked = true;
        let (mut io, batch) = gather(mock.clone());
        let mut served = batch.flush_after_each_poll(Box::pin(async move {
            io.write_all(b"GOAWAY").await.unwrap();
            7
        }));
        let wakes = Arc::new(Wakes::default());

        assert!(poll(&mut served, &wakes).is_pending());
        mock.unblock();
        assert_eq!(poll(&mut served, &wakes), Poll::Ready(7));
        assert_eq!(mock.writes(), vec![b"GOAWAY".to_vec()]);
    }

    #[test]
    fn shutdown_writes_the_batch_out_and_flushes_first() {
        let mock = Mock::default();
        let (mut io, batch) = gather(mock.clone());
        let mut served = batch.flush_after_each_poll(Box::pin(async move {
            io.write_all(b"last").await.unwrap();
            io.shutdown().await.unwrap();
        }));
        let wakes = Arc::new(Wakes::default());

        assert_eq!(poll(&mut served, &wakes), Poll::Ready(()));
        assert_eq!(
            mock.0.lock().unwrap().events,
            vec![
                Event::Write(b"last".to_vec()),
                Event::Flush,
                Event::Shutdown
            ]
        );
    }
}
