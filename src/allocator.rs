//! How the binary's allocator (mimalloc, the default `mimalloc` feature)
//! gives memory back to the OS, off the request workers.
//!
//! mimalloc keeps a freed page for reuse and returns it to the OS
//! (`madvise`) once a purge delay (1 s) has passed, from whichever thread
//! next runs its collection: in practice one that allocates a fresh page,
//! which on this proxy is a request worker. So the purge of what a sweep
//! freed ran inside some request, and when the proxy went quiet after a
//! burst nothing ran a collection at all: the 80 MiB of answers a `clear`
//! freed stayed resident until the next allocation (ten seconds later,
//! the history sampler's), and after 10,000 keep-alive connections closed
//! 58–108 MB stayed resident (docs/performance.md, "Idle connections").
//!
//! [`start_purger`] starts one thread that every [`PURGE_EVERY`] runs a
//! collection, which purges the pages whose delay has passed, so they go
//! back within about 1.1 s of being freed whether traffic continues or not,
//! and a worker rarely finds a purge due before this thread has done it.
//! The collection is not forced: a forced one also purges pages freed a
//! moment ago, which the workers then fault in again (846 page faults per
//! 400,000 hits instead of 169). Without the `mimalloc` feature (glibc's
//! malloc) it starts nothing.

use std::time::Duration;

/// How often the purger runs: well under mimalloc's purge delay (1 s), so a
/// request worker rarely finds a purge due.
pub const PURGE_EVERY: Duration = Duration::from_millis(100);

/// Starts the purger thread, for the process's life. A thread that cannot
/// start is logged; mimalloc then purges as it would on its own.
pub fn start_purger() {
    #[cfg(feature = "mimalloc")]
    {
        let started = std::thread::Builder::new()
            .name("dashcache-purge".into())
            .spawn(|| {
                // mimalloc's collection returns at once on a thread that
                // never allocated: give this one its heap.
                drop(std::hint::black_box(Box::new(0u64)));
                loop {
                    std::thread::sleep(PURGE_EVERY);
                    // SAFETY: a normal collection of this thread's (empty)
                    // heap, which purges the pages freed program-wide whose
                    // delay has passed.
                    unsafe { libmimalloc_sys::mi_collect(false) };
                }
            });
        if let Err(err) = started {
            tracing::warn!(error = %err, "could not start the allocator's purge thread");
        }
    }
}
