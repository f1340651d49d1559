//! What the sysmon asks of the operating system about a worker thread: its
//! id, and whether it is asleep in the kernel. Linux answers from
//! `/proc/self/task`; elsewhere there is no such answer, and a worker in a
//! long turn counts as blocked (the turn's length alone, as Go's sysmon
//! judges).

/// The calling thread's id, for [`blocked`]: the kernel's thread id on
/// Linux, 0 elsewhere.
pub(crate) fn current_id() -> i32 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::thread::gettid().as_raw_nonzero().get()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        0
    }
}

/// Whether thread `id` of this process is asleep in the kernel (a blocking
/// system call, a sleep, a lock), as `/proc` says — not running or waiting
/// for a CPU. Unknown counts as asleep: always, where there is no `/proc`.
pub(crate) fn blocked(id: i32) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{id}/stat")) else {
            return true;
        };
        // `pid (comm) state ...`: the name may hold spaces and parentheses.
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        state != Some('R')
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = id;
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_thread_asleep_is_blocked_and_one_spinning_is_not() {
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            tx.send(current_id()).unwrap();
            let _ = stop_rx.recv();
        });
        let id = rx.recv().unwrap();
        // Asleep in `recv` (or about to be): blocked, on every platform.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !blocked(id) {
            assert!(
                Instant::now() < deadline,
                "the sleeper never looked blocked"
            );
            std::thread::yield_now();
        }
        stop_tx.send(()).unwrap();
        sleeper.join().unwrap();
        // The calling thread is running.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert!(!blocked(current_id()));
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        assert!(blocked(current_id()));
    }
}
