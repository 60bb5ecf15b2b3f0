//! Counters that every thread adds to on a cache line of its own.
//!
//! A hit bumps a handful of counters (its route's count, total time and
//! latency bucket, the last hour's latency sketch, the upstream time it
//! saved, the volatile-field sampler's request count). As one set of
//! atomics shared by every worker, each of those additions is a locked
//! instruction on a line the other worker wrote a moment before: the line
//! moves between cores on every hit of a busy route. Here each thread owns
//! its own copy (`thread_local::ThreadLocal`, one per live thread, padded
//! to its own lines), adds to it with a plain load and store, and readers
//! (stats, scrapes, the history sampler) sum the copies. A thread that ends
//! leaves its copy behind for the next thread given its id, so nothing
//! counted is ever lost.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use thread_local::ThreadLocal;

/// One `T` per thread that writes to it.
pub struct PerThread<T: Send> {
    cells: ThreadLocal<Line<T>>,
}

/// Two cache lines: adjacent-line prefetch pairs lines, so one is not
/// enough to keep two threads' cells apart.
#[derive(Default)]
#[repr(align(128))]
struct Line<T>(T);

impl<T: Send + Default> PerThread<T> {
    /// The calling thread's cell, created on its first use.
    pub fn local(&self) -> &T {
        &self.cells.get_or_default().0
    }
}

impl<T: Send + Sync> PerThread<T> {
    /// Every thread's cell.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.cells.iter().map(|line| &line.0)
    }
}

impl<T: Send> Default for PerThread<T> {
    fn default() -> Self {
        Self {
            cells: ThreadLocal::new(),
        }
    }
}

impl<T: Send + Sync> fmt::Debug for PerThread<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerThread")
            .field("threads", &self.cells.iter().count())
            .finish()
    }
}

/// Adds `n` to a counter in the calling thread's own cell. Only that
/// thread ever writes it, so a relaxed load and store cannot lose an
/// addition, and no locked instruction is needed; other threads only read.
pub fn add(own: &AtomicU64, n: u64) {
    own.store(
        own.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A count that every thread adds to on its own line; reading sums them.
#[derive(Debug, Default)]
pub struct Counter(PerThread<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        add(self.0.local(), n);
    }

    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|cell| cell.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_counter_sums_what_every_thread_added() {
        let counter = Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        counter.add(1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        counter.add(5);
        assert_eq!(counter.get(), 40_005);
    }

    #[test]
    fn each_thread_has_a_cell_of_its_own() {
        let cells = Arc::new(PerThread::<AtomicU64>::default());
        add(cells.local(), 1);
        let other = cells.clone();
        std::thread::spawn(move || add(other.local(), 2))
            .join()
            .unwrap();
        let mut seen: Vec<u64> = cells.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        seen.sort_unstable();
        assert_eq!(seen, [1, 2]);
    }
}
