//! Thread priority for background walks of the store: a walk that only
//! returns memory (the sweep after `clear`) must not take CPU from request
//! workers on a machine with few cores.

/// The nice value background walks run at: below every request worker,
/// above nothing that matters.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`BACKGROUND_NICE`].
/// Call it only on a thread of its own (never on a pooled one, which would
/// keep the lower priority for later work). Best effort: a refusal is
/// logged and the walk runs at normal priority.
pub fn lower_this_thread() {
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
}
