//! Where log lines go: a shared buffer that a thread of its own writes out
//! to stderr every [`FLUSH_INTERVAL`], or sooner when [`FLUSH_BYTES`] have
//! piled up.
//!
//! A request never waits for stderr (a slow pipe or terminal stalls only
//! the writer thread), and, unlike a channel with a writer that sleeps
//! until each line arrives, a line costs a request worker a copy under an
//! uncontended lock: no thread is woken per line. With one access line per
//! request, that wake-up (a futex call, and a context switch on the other
//! core) was most of what logging cost a hit.
//!
//! Lines are whole: the `fmt` layer hands each event over in one write.
//! When the writer cannot keep up and [`MAX_PENDING_BYTES`] are waiting,
//! further lines are dropped and counted; the count is reported on stderr
//! once the writer catches up.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Pending bytes that wake the writer before its interval is up.
pub const FLUSH_BYTES: usize = 256 * 1024;

/// Pending bytes past which lines are dropped (the writer is stuck).
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when `pending` passes [`FLUSH_BYTES`] or at shutdown.
    wake: Condvar,
    closing: AtomicBool,
    dropped: AtomicU64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves only bytes behind.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `MakeWriter` the log subscriber writes through (cheap to clone).
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes what is pending and stops the writer thread when dropped: keep
/// it alive for as long as the process logs.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer for `out`, and the guard that flushes it at exit.
pub fn batch_writer<W: Write + Send + 'static>(out: W) -> io::Result<(BatchWriter, FlushGuard)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
        wake: Condvar::new(),
        closing: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("dashcache-log".into())
            .spawn(move || write_out(&shared, out))?
    };
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The writer thread: swaps the pending buffer for an empty one and writes
/// it, until the guard is dropped.
fn write_out<W: Write>(shared: &Shared, mut out: W) {
    let mut spare = Vec::with_capacity(FLUSH_BYTES);
    loop {
        let closing = {
            let pending = shared.pending();
            let (mut pending, _) = shared
                .wake
                .wait_timeout_while(pending, FLUSH_INTERVAL, |pending| {
                    pending.len() < FLUSH_BYTES && !shared.closing.load(Ordering::Acquire)
                })
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::swap(&mut *pending, &mut spare);
            shared.closing.load(Ordering::Acquire)
        };
        if !spare.is_empty() {
            // Nowhere to report a failed write to stderr; the lines are lost.
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
            if spare.capacity() > 4 * FLUSH_BYTES {
                spare.shrink_to(FLUSH_BYTES);
            }
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "dashcache: {dropped} log lines dropped: stderr did not keep up"
            );
        }
        if closing {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's line, appended to the pending buffer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut pending = self.shared.pending();
        if pending.len() + line.len() > MAX_PENDING_BYTES {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        pending.extend_from_slice(line);
        let full = pending.len() >= FLUSH_BYTES;
        drop(pending);
        if full {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that hands what it got to the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_come_out_whole_and_in_order_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (writer, guard) = batch_writer(sink.clone()).unwrap();
        for n in 0..1000 {
            writer
                .make_writer()
                .write_all(format!("line {n}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[0], "line 0");
        assert_eq!(lines[999], "line 999");
    }

    #[test]
    fn a_line_is_written_within_the_interval_without_more_traffic() {
        let sink = Sink::default();
        let (writer, _guard) = batch_writer(sink.clone()).unwrap();
        writer.make_writer().write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"alone\n");
    }

    /// A `Write` that blocks until told to go on.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>);

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let (open, turn) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = turn.wait(open).unwrap();
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stderr_costs_bounded_memory_and_never_blocks_a_line() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (writer, guard) = batch_writer(Stuck(gate.clone())).unwrap();
        let line = vec![b'x'; 1024];
        // Far more than the bound; every write returns at once.
        for _ in 0..(3 * MAX_PENDING_BYTES / line.len()) {
            writer.make_writer().write_all(&line).unwrap();
        }
        assert!(writer.shared.pending().len() <= MAX_PENDING_BYTES);
        assert!(writer.shared.dropped.load(Ordering::Relaxed) > 0);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
    }
}
