//! How the binary's allocator (mimalloc, the default `mimalloc` feature)
//! is set up: memory goes back to the OS off the request workers, and no
//! request waits for a walk of a worker's whole heap.
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
//! [`init`] starts one thread that every [`PURGE_EVERY`] runs a
//! collection, which purges the pages whose delay has passed, so they go
//! back within about 1.1 s of being freed whether traffic continues or not,
//! and a worker rarely finds a purge due before this thread has done it.
//! The collection is not forced: a forced one also purges pages freed a
//! moment ago, which the workers then fault in again (846 page faults per
//! 400,000 hits instead of 169).
//!
//! [`init`] also spaces out the collection mimalloc runs inside an
//! allocation: every 10,000 slow-path allocations a thread visits every
//! page of its heap that is not full. At a million entries that walk took
//! 20–60 ms, on a request worker, in the middle of whichever request
//! allocated, about every 100 ms under load, and up to 100 ms while a
//! `clear` is swept (the pages are full of other threads' frees): the
//! "hit delayed" outliers of the scale probe (`examples/scale.rs`). It now
//! runs every 1,000,000 (mimalloc's largest setting). Pages still come
//! back without it: retired pages every 1,000 slow-path allocations, a page
//! as its thread next allocates from it, a page its thread gave up when
//! full by whichever thread frees its last block, and the arenas' purge by
//! the purge thread.
//!
//! Without the `mimalloc` feature (glibc's malloc) [`init`] does nothing.

use std::time::Duration;

/// How often the purger runs: well under mimalloc's purge delay (1 s), so a
/// request worker rarely finds a purge due.
pub const PURGE_EVERY: Duration = Duration::from_millis(100);

/// How many slow-path allocations a thread makes between two collections
/// of its whole heap (mimalloc's `generic_collect`, default 10,000; this is
/// the largest value it takes).
pub const HEAP_COLLECT_EVERY: i64 = 1_000_000;

/// mimalloc's `mi_option_generic_collect` (`mimalloc.h`, v3): not in
/// libmimalloc-sys's list of option constants.
#[cfg(feature = "mimalloc")]
const MI_OPTION_GENERIC_COLLECT: libmimalloc_sys::mi_option_t = 34;

/// mimalloc's default for it, which [`init`] checks it is changing: an
/// option set from the environment (`MIMALLOC_GENERIC_COLLECT`) is kept,
/// and a mimalloc whose option list moved is left alone.
#[cfg(feature = "mimalloc")]
const GENERIC_COLLECT_DEFAULT: std::ffi::c_long = 10_000;

/// Sets the allocator up for the process: spaces out the heap collections
/// inside allocations and starts the purger thread. A thread that cannot
/// start is logged; mimalloc then purges as it would on its own.
pub fn init() {
    #[cfg(feature = "mimalloc")]
    {
        // SAFETY: reading and setting an option, before the workers start.
        unsafe {
            if libmimalloc_sys::mi_option_get(MI_OPTION_GENERIC_COLLECT) == GENERIC_COLLECT_DEFAULT
            {
                libmimalloc_sys::mi_option_set(
                    MI_OPTION_GENERIC_COLLECT,
                    HEAP_COLLECT_EVERY as std::ffi::c_long,
                );
            }
        }
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

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    #[test]
    fn init_spaces_out_the_heap_collections_of_the_linked_mimalloc() {
        // The option index is mimalloc's, not libmimalloc-sys's: `init`
        // changes it only from its documented default, so this fails if
        // the index names another option.
        init();
        // SAFETY: reading an option.
        let every = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_GENERIC_COLLECT) };
        assert_eq!(every as i64, HEAP_COLLECT_EVERY);
    }
}
