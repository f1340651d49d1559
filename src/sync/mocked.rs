//! The model checker's stand-ins for `parking_lot` and `crossbeam-channel`,
//! built on `loom`'s own primitives, with the API the pool uses.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Instant;

/// `parking_lot::Mutex` over loom's.
#[derive(Default)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

/// `parking_lot::MutexGuard`: a guard that a condition variable can
/// release and take again through `&mut`.
pub(crate) struct MutexGuard<'a, T> {
    guard: Option<loom::sync::MutexGuard<'a, T>>,
    lock: &'a loom::sync::Mutex<T>,
}

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            guard: Some(self.0.lock().unwrap()),
            lock: &self.0,
        }
    }
}

impl<T> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mutex")
    }
}

impl<'a, T> MutexGuard<'a, T> {
    /// `parking_lot::MutexGuard::unlocked`.
    pub(crate) fn unlocked<U>(this: &mut Self, f: impl FnOnce() -> U) -> U {
        drop(this.guard.take());
        let out = f();
        this.guard = Some(this.lock.lock().unwrap());
        out
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held")
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held")
    }
}

/// `parking_lot::WaitTimeoutResult`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    pub(crate) fn timed_out(self) -> bool {
        self.0
    }
}

/// `parking_lot::Condvar` over loom's.
#[derive(Default)]
pub(crate) struct Condvar(loom::sync::Condvar);

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(loom::sync::Condvar::new())
    }

    pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        let held = guard.guard.take().expect("held");
        guard.guard = Some(self.0.wait(held).unwrap());
    }

    /// Never times out (loom's rule): a model makes its deadlines events.
    pub(crate) fn wait_until<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        _deadline: Instant,
    ) -> WaitTimeoutResult {
        self.wait(guard);
        WaitTimeoutResult(false)
    }

    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Condvar")
    }
}

/// `crossbeam-channel`'s channels, as a queue behind a loom lock.
pub(crate) mod channel {
    use std::collections::VecDeque;
    use std::sync::Arc;

    pub(crate) use crossbeam_channel::{RecvError, SendError, TryRecvError};

    struct Chan<T> {
        queue: VecDeque<T>,
        cap: usize,
        senders: usize,
        receivers: usize,
    }

    struct Inner<T> {
        chan: loom::sync::Mutex<Chan<T>>,
        changed: loom::sync::Condvar,
    }

    pub(crate) struct Sender<T>(Arc<Inner<T>>);

    pub(crate) struct Receiver<T>(Arc<Inner<T>>);

    pub(crate) fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
        let inner = Arc::new(Inner {
            chan: loom::sync::Mutex::new(Chan {
                queue: VecDeque::new(),
                cap,
                senders: 1,
                receivers: 1,
            }),
            changed: loom::sync::Condvar::new(),
        });
        (Sender(Arc::clone(&inner)), Receiver(inner))
    }

    impl<T> Sender<T> {
        pub(crate) fn send(&self, value: T) -> Result<(), SendError<T>> {
            let mut chan = self.0.chan.lock().unwrap();
            loop {
                if chan.receivers == 0 {
                    return Err(SendError(value));
                }
                if chan.queue.len() < chan.cap {
                    chan.queue.push_back(value);
                    self.0.changed.notify_all();
                    return Ok(());
                }
                chan = self.0.changed.wait(chan).unwrap();
            }
        }
    }

    impl<T> Receiver<T> {
        pub(crate) fn recv(&self) -> Result<T, RecvError> {
            let mut chan = self.0.chan.lock().unwrap();
            loop {
                if let Some(value) = chan.queue.pop_front() {
                    self.0.changed.notify_all();
                    return Ok(value);
                }
                if chan.senders == 0 {
                    return Err(RecvError);
                }
                chan = self.0.changed.wait(chan).unwrap();
            }
        }

        pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
            let mut chan = self.0.chan.lock().unwrap();
            match chan.queue.pop_front() {
                Some(value) => {
                    self.0.changed.notify_all();
                    Ok(value)
                }
                None if chan.senders == 0 => Err(TryRecvError::Disconnected),
                None => Err(TryRecvError::Empty),
            }
        }
    }

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            self.0.chan.lock().unwrap().senders += 1;
            Sender(Arc::clone(&self.0))
        }
    }

    impl<T> Clone for Receiver<T> {
        fn clone(&self) -> Self {
            self.0.chan.lock().unwrap().receivers += 1;
            Receiver(Arc::clone(&self.0))
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            self.0.chan.lock().unwrap().senders -= 1;
            self.0.changed.notify_all();
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            self.0.chan.lock().unwrap().receivers -= 1;
            self.0.changed.notify_all();
        }
    }
}
