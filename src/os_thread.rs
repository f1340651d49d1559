//! What the sysmon asks of the operating system about a worker thread: its
//! id, and how long it has been awake — on a CPU or waiting for one, as
//! opposed to asleep in the kernel (a blocking call, a sleep, a lock).
//! Linux answers from `/proc/self/task/TID/schedstat` (the clock) and
//! `/proc/self/task/TID/stat` (the state now); elsewhere there is no such
//! answer, and a worker in a long turn counts as blocked (the
//! turn's length alone, as Go's sysmon judges).

use std::time::Duration;

/// The calling thread's id, for [`Clock::of`]: the kernel's thread id on
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

/// Whether this OS tells a thread asleep from one computing or waiting
/// for a CPU ([`Clock`]); elsewhere the sysmon judges a
/// turn by its length alone.
pub(crate) const TELLS_ASLEEP: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// A thread's scheduler clock: the time it has spent awake (running, or
/// runnable and waiting for a CPU) since it started. Read with one
/// `pread` of a file kept open (well under a microsecond; the sysmon
/// reads it once a look for each poller in a turn).
///
/// Behind for a thread awake: Linux adds a running thread's time at each
/// scheduler tick (or when it stops running) and a waiting one's when it
/// gets a CPU. So the difference of two readings moves time between
/// intervals: it can say "asleep" of a thread that ran or waited all
/// along (the sysmon takes an "asleep" verdict only when [`Clock::asleep_now`]
/// agrees), and "awake" of one that ran up to the first reading and slept
/// since (its last tick's worth lands after that reading: the sysmon's
/// verdict then comes one look later).
#[derive(Debug, Default)]
pub(crate) struct Clock {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    file: Option<std::fs::File>,
    /// `/proc/self/task/TID/stat`, for [`Clock::asleep_now`].
    #[cfg(any(target_os = "linux", target_os = "android"))]
    stat: Option<std::fs::File>,
}

impl Clock {
    /// Thread `id`'s clock (of this process): `None` if it cannot be
    /// opened now (`id` unknown, 0; no descriptor free), so that the
    /// caller tries again later. Its `stat` is needed; its `schedstat` is
    /// not (a kernel without `CONFIG_SCHED_INFO` has none: the clock then
    /// never reads, and the thread's state alone tells). Where the OS does
    /// not say, a clock that never reads.
    pub(crate) fn of(id: i32) -> Option<Self> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            if id == 0 {
                return None;
            }
            let task = format!("/proc/self/task/{id}");
            let stat = std::fs::File::open(format!("{task}/stat")).ok()?;
            Some(Self {
                file: std::fs::File::open(format!("{task}/schedstat")).ok(),
                stat: Some(stat),
            })
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = id;
            Some(Self {})
        }
    }

    /// The time the thread has been awake in all; `None` where the OS does
    /// not say (or the thread has exited).
    pub(crate) fn awake(&self) -> Option<Duration> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let mut buf = [0; 96];
            let n = rustix::io::pread(self.file.as_ref()?, &mut buf, 0).ok()?;
            // "RUN_NS WAIT_NS TIMESLICES\n": time on a CPU, time waiting
            // on a run queue.
            let text = std::str::from_utf8(&buf[..n]).ok()?;
            let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
            let (Some(Ok(run)), Some(Ok(wait))) = (fields.next(), fields.next()) else {
                return None;
            };
            Some(Duration::from_nanos(run.saturating_add(wait)))
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            None
        }
    }

    /// Whether the thread is asleep in the kernel now (a blocking system
    /// call, a sleep, a lock), as `/proc/self/task/TID/stat` says: not
    /// running or waiting for a CPU. Unknown counts as asleep: always,
    /// where there is no `/proc`. One `pread` of the file kept open
    /// (opening it each time was about 14 µs here, paid at every long
    /// turn the sysmon looked at).
    pub(crate) fn asleep_now(&self) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // `pid (comm) S ...`: the name is at most 15 bytes, and may
            // hold spaces and parentheses; nothing after it does.
            let mut buf = [0; 128];
            let Some(Ok(n)) = self
                .stat
                .as_ref()
                .map(|f| rustix::io::pread(f, &mut buf, 0))
            else {
                return true;
            };
            let stat = &buf[..n];
            let state = stat.iter().rposition(|&b| b == b')').and_then(|i| {
                stat[i + 1..]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .copied()
            });
            state != Some(b'R')
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            true
        }
    }
}

/// Whether a thread was blocked over an interval of `wall` in which it
/// was awake for `awake` (the difference of two [`Clock::awake`]
/// readings): asleep for more than half of it. Unknown (`None`) counts as
/// blocked: where the OS does not say, the turn's length alone decides.
pub(crate) fn slept_through(awake: Option<Duration>, wall: Duration) -> bool {
    awake.is_none_or(|awake| awake < wall / 2)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A thread that sleeps (`spin` false) or spins until told to stop:
    /// its id, and the sender that stops it.
    fn thread(spin: bool) -> (i32, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let join = std::thread::spawn(move || {
            tx.send(current_id()).unwrap();
            if spin {
                while stop_rx.try_recv().is_err() {
                    std::hint::spin_loop();
                }
            } else {
                let _ = stop_rx.recv();
            }
        });
        (rx.recv().unwrap(), stop_tx, join)
    }

    /// The clock's advance over at least `wall`, and that wall time.
    fn over(clock: &Clock, wall: Duration) -> (Option<Duration>, Duration) {
        let (before, began) = (clock.awake(), Instant::now());
        std::thread::sleep(wall);
        let (after, took) = (clock.awake(), began.elapsed());
        (after.zip(before).map(|(a, b)| a.saturating_sub(b)), took)
    }

    #[test]
    fn a_thread_asleep_slept_through_and_is_asleep_now() {
        let (id, stop, join) = thread(false);
        // Asleep in `recv` (or about to be): asleep, on every platform.
        let deadline = Instant::now() + Duration::from_secs(5);
        let clock = Clock::of(id);
        let asleep_now = || clock.as_ref().is_none_or(Clock::asleep_now);
        while !asleep_now() {
            assert!(Instant::now() < deadline, "never looked asleep");
            std::thread::yield_now();
        }
        if let Some(clock) = &clock {
            let (awake, wall) = over(clock, Duration::from_millis(50));
            assert!(slept_through(awake, wall), "{awake:?} of {wall:?}");
        }
        stop.send(()).unwrap();
        join.join().unwrap();
    }

    #[test]
    fn a_thread_spinning_is_awake() {
        let (id, stop, join) = thread(true);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // Running or waiting for a CPU (on a machine with its cores
            // busy): "R" now, and its clock moves (by ticks) where the
            // kernel keeps one (`schedstat` may be missing, or all zeros).
            assert!(!Clock::of(id).expect("the spinner's files").asleep_now());
            let kept = Clock::of(current_id())
                .and_then(|c| c.awake())
                .is_some_and(|a| a > Duration::ZERO);
            if kept {
                let clock = Clock::of(id).expect("the spinner's clock");
                let (awake, wall) = over(&clock, Duration::from_millis(200));
                assert!(
                    awake.is_some_and(|a| a > Duration::ZERO),
                    "{awake:?} of {wall:?}"
                );
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            assert!(Clock::of(id).is_none_or(|c| c.asleep_now()));
            assert_eq!(Clock::of(id).and_then(|c| c.awake()), None);
        }
        // The calling thread is running.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert!(!Clock::of(current_id()).expect("own files").asleep_now());
        stop.send(()).unwrap();
        join.join().unwrap();
    }

    #[test]
    fn an_unknown_thread_has_no_clock() {
        assert_eq!(Clock::of(0).and_then(|c| c.awake()), None);
        assert!(slept_through(None, Duration::from_millis(1)));
        assert!(!slept_through(
            Some(Duration::from_micros(600)),
            Duration::from_millis(1)
        ));
    }
}
