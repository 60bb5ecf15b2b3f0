//! Background walks of the store that remove entries (the sweep after
//! `clear`, `invalidate`, the expiry purge) run on threads of their own, at a
//! lower scheduling priority than the request workers: on a machine with
//! few cores a walk of a million entries must not take CPU from hits.
//! They never run on a request worker, and never on tokio's blocking pool,
//! whose threads would keep the lower priority for later work.

use std::future::Future;

/// Runs `work` on a new thread named `name`, at low priority; resolves to
/// its result, or `None` when the thread could not start or panicked
/// (logged).
pub fn run<T, F>(name: &str, work: F) -> impl Future<Output = Option<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(format!("dashcache-{name}"))
        .spawn(move || {
            lower_this_thread();
            let _ = done.send(work());
        });
    // Said at once: the caller may not await (the sweep after `clear`).
    if let Err(err) = &started {
        tracing::warn!(error = %err, walk = name, "could not start a background walk");
    }
    let name = name.to_owned();
    async move {
        started.ok()?;
        match result.await {
            Ok(output) => Some(output),
            Err(_) => {
                tracing::warn!(walk = %name, "background walk did not complete");
                None
            }
        }
    }
}

/// The nice value background walks run at: below every request worker,
/// above nothing that matters.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`BACKGROUND_NICE`].
/// Call it only on a thread of its own (never on a pooled one, which would
/// keep the lower priority for later work). Best effort: a refusal is
/// logged and the walk runs at normal priority.
fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // On Linux a nice value belongs to a thread: PRIO_PROCESS with a
        // thread id sets that thread's alone.
        // SAFETY: plain system calls on the calling thread's own id.
        let result = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE)
        };
        if result != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower a background thread's priority"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let nice = |tid: libc::pid_t| {
            // SAFETY: reads a thread's nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
        };
        // SAFETY: the calling thread's own id.
        let main = unsafe { libc::gettid() };
        let before = nice(main);
        let lowered = std::thread::spawn(move || {
            lower_this_thread();
            // SAFETY: as above.
            nice(unsafe { libc::gettid() })
        })
        .join()
        .unwrap();
        assert_eq!(lowered, BACKGROUND_NICE.max(before));
        assert_eq!(nice(main), before, "the caller's thread keeps its priority");
    }

    #[tokio::test]
    async fn a_walk_hands_back_its_result() {
        assert_eq!(run("test", || 6 * 7).await, Some(42));
    }

    #[tokio::test]
    async fn a_walk_that_panics_resolves_to_none() {
        let walk: Option<()> = run("test-panic", || panic!("walk failed")).await;
        assert_eq!(walk, None);
    }
}
