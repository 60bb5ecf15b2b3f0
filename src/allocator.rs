//! How the binary's allocator (mimalloc, the default `mimalloc` feature)
//! is set up: memory goes back to the OS off the request workers, and a
//! worker's heap stays small enough to walk inside a request.
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
//! [`init`] also bounds how many pages a request worker takes back into
//! its heap. Every 10,000 slow-path allocations mimalloc walks every page
//! of the thread's heap that is not full, inside whichever allocation is
//! due. mimalloc (v3) hands a full page to its arena, and by default a
//! thread that frees a block into such a page of its own takes it back,
//! however many it already holds: at a million entries, with entries
//! replaced and freed across threads, the workers' heaps held so many
//! pages that the walk took 20–60 ms, in the middle of a request, about
//! every 100 ms under load, and up to 125 ms while a `clear` was swept:
//! the "hit delayed" outliers of the scale probe (`examples/scale.rs`). A
//! thread now takes back at most [`PAGES_TAKEN_BACK`] pages per size
//! class (`page_max_reclaim`; mimalloc's own limit across threads is 32);
//! the others stay with the arena, where any thread allocating a fresh
//! page finds them, and the walk stays short.
//!
//! Without the `mimalloc` feature (glibc's malloc) [`init`] does nothing.

use std::time::Duration;

/// How often the purger runs: well under mimalloc's purge delay (1 s), so a
/// request worker rarely finds a purge due.
pub const PURGE_EVERY: Duration = Duration::from_millis(100);

/// How many pages of a size class a thread may hold before it stops
/// taking its own pages back from the arena on a free.
pub const PAGES_TAKEN_BACK: i64 = 16;

/// mimalloc's `mi_option_page_max_reclaim` (`mimalloc.h`, v3): not in
/// libmimalloc-sys's list of option constants.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PAGE_MAX_RECLAIM: libmimalloc_sys::mi_option_t = 41;

/// mimalloc's default for it (unlimited), which [`init`] checks it is
/// changing: a value set from the environment (`MIMALLOC_PAGE_MAX_RECLAIM`)
/// is kept, and a mimalloc whose option list moved is left alone.
#[cfg(feature = "mimalloc")]
const PAGE_MAX_RECLAIM_DEFAULT: std::ffi::c_long = -1;

/// Sets the allocator up for the process: bounds the pages a thread takes
/// back and starts the purger thread. A purger that cannot start is
/// logged; mimalloc then purges as it would on its own.
pub fn init() {
    #[cfg(feature = "mimalloc")]
    {
        // SAFETY: reading and setting an option, before the workers start.
        unsafe {
            if libmimalloc_sys::mi_option_get(MI_OPTION_PAGE_MAX_RECLAIM)
                == PAGE_MAX_RECLAIM_DEFAULT
            {
                libmimalloc_sys::mi_option_set(
                    MI_OPTION_PAGE_MAX_RECLAIM,
                    PAGES_TAKEN_BACK as std::ffi::c_long,
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
    fn init_bounds_the_pages_a_thread_takes_back_in_the_linked_mimalloc() {
        // The option index is mimalloc's, not libmimalloc-sys's: `init`
        // changes it only from its documented default, so this fails if
        // the index names another option.
        init();
        // SAFETY: reading an option.
        let pages = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PAGE_MAX_RECLAIM) };
        assert_eq!(pages as i64, PAGES_TAKEN_BACK);
    }
}
