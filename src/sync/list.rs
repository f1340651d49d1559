//! [`List`]: a first-in first-out list that any thread pushes to and takes
//! from, and that takers may wait on — what the pollers' ready list is.
//!
//! A `VecDeque` behind a lock, with its length mirrored in an atomic so
//! that a look at an empty list takes no lock, and a condition variable for
//! the threads that wait. It replaced `crossbeam-channel`'s unbounded list
//! for the ready list: a batch goes on under one lock, and an entry costs
//! some 50 instructions on and off against some 220 for the channel's
//! `send` and `try_recv` (`benches/callgrind.sh`). The lock is held only to
//! move entries, never across a wait or a call out (tokio's inject queue
//! is a locked list too).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering::SeqCst;

use super::{AtomicUsize, Condvar, Mutex};

/// A FIFO list shared by threads (see the module's doc).
pub(crate) struct List<T> {
    inner: Mutex<Inner<T>>,
    /// How many entries `inner` holds: written under its lock (`SeqCst`,
    /// so that a flag stored by one thread and this length, read after it,
    /// order as they do with atomics alone), read without it.
    len: AtomicUsize,
    /// Signalled for a waiter when an entry comes.
    filled: Condvar,
}

struct Inner<T> {
    entries: VecDeque<T>,
    /// Threads waiting in [`List::wait_pop`].
    waiting: usize,
}

impl<T> List<T> {
    pub(crate) fn new() -> Self {
        List {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                waiting: 0,
            }),
            len: AtomicUsize::new(0),
            filled: Condvar::new(),
        }
    }

    /// Puts `entry` at the back, and wakes a waiter if any.
    pub(crate) fn push(&self, entry: T) {
        self.extend(std::iter::once(entry));
    }

    /// Puts `entries` at the back in order, under one lock, and wakes as
    /// many waiters as entries came (at most).
    pub(crate) fn extend(&self, entries: impl IntoIterator<Item = T>) {
        let mut inner = self.inner.lock();
        let before = inner.entries.len();
        inner.entries.extend(entries);
        let came = inner.entries.len() - before;
        self.len.store(inner.entries.len(), SeqCst);
        for _ in 0..came.min(inner.waiting) {
            self.filled.notify_one();
        }
    }

    /// The entry at the front, if any.
    pub(crate) fn try_pop(&self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let mut inner = self.inner.lock();
        self.pop_locked(&mut inner)
    }

    /// The entry at the front, once there is one. Spins, then yields,
    /// for a while before it sleeps (`crossbeam-channel`'s `recv` does the
    /// same): a poller whose next entry comes within microseconds, as it
    /// does under load, takes it without a sleep and a wake-up (without
    /// the spin: twice the context switches a request, `benches/compare.sh`
    /// `small` and `idle`).
    pub(crate) fn wait_pop(&self) -> T {
        // Not under the model checker: a spin is only a delay there, and
        // each look would multiply the interleavings it explores.
        #[cfg(not(all(test, loom)))]
        {
            let backoff = crossbeam_utils::Backoff::new();
            while !backoff.is_completed() {
                if let Some(entry) = self.try_pop() {
                    return entry;
                }
                backoff.snooze();
            }
        }
        let mut inner = self.inner.lock();
        loop {
            if let Some(entry) = self.pop_locked(&mut inner) {
                return entry;
            }
            inner.waiting += 1;
            self.filled.wait(&mut inner);
            inner.waiting -= 1;
        }
    }

    fn pop_locked(&self, inner: &mut Inner<T>) -> Option<T> {
        let entry = inner.entries.pop_front()?;
        self.len.store(inner.entries.len(), SeqCst);
        Some(entry)
    }

    /// Whether the list is empty (it may fill or empty at once after).
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(SeqCst) == 0
    }
}

impl<T> fmt::Debug for List<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("List")
            .field("len", &self.len.load(SeqCst))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn entries_come_off_in_the_order_they_went_on() {
        let list = List::new();
        assert!(list.is_empty());
        assert_eq!(list.try_pop(), None::<u32>);
        list.push(1);
        list.extend([2, 3]);
        assert!(!list.is_empty());
        assert_eq!(list.try_pop(), Some(1));
        assert_eq!(list.wait_pop(), 2);
        assert_eq!(list.try_pop(), Some(3));
        assert!(list.is_empty());
        assert_eq!(list.try_pop(), None);
    }

    /// Every waiter gets an entry of a batch as large as the waiters: none
    /// is left waiting while an entry waits for it.
    #[test]
    fn a_batch_wakes_as_many_waiters_as_it_brings() {
        const WAITERS: usize = 4;
        let list = Arc::new(List::new());
        let (done, finished) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..WAITERS)
            .map(|_| {
                let (list, done) = (Arc::clone(&list), done.clone());
                std::thread::spawn(move || done.send(list.wait_pop()).unwrap())
            })
            .collect();
        // Every waiter is waiting before the batch comes (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(10);
        while list.inner.lock().waiting < WAITERS {
            assert!(Instant::now() < deadline, "the waiters never waited");
            std::thread::yield_now();
        }
        list.extend(0..WAITERS);
        let mut got: Vec<usize> = (0..WAITERS)
            .map(|_| finished.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..WAITERS).collect::<Vec<_>>());
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(list.is_empty());
    }

    /// Pushed by several threads, taken by several: each entry exactly once.
    #[test]
    fn each_entry_is_taken_once() {
        const PER: usize = 10_000;
        let list = Arc::new(List::new());
        let pushers: Vec<_> = (0..2)
            .map(|p| {
                let list = Arc::clone(&list);
                std::thread::spawn(move || {
                    for i in 0..PER {
                        if i % 7 == 0 {
                            list.extend([p * PER + i]);
                        } else {
                            list.push(p * PER + i);
                        }
                    }
                })
            })
            .collect();
        let takers: Vec<_> = (0..2)
            .map(|t| {
                let list = Arc::clone(&list);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for _ in 0..PER {
                        got.push(if t == 0 {
                            list.wait_pop()
                        } else {
                            loop {
                                match list.try_pop() {
                                    Some(entry) => break entry,
                                    None => std::thread::yield_now(),
                                }
                            }
                        });
                    }
                    got
                })
            })
            .collect();
        for pusher in pushers {
            pusher.join().unwrap();
        }
        let mut all: Vec<usize> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..2 * PER).collect::<Vec<_>>());
    }
}
