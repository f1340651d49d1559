//! The model checker's epoll instance: the same API as the real one, its
//! readiness driven by the model. A client's bytes are [`Epoll::send`]: an
//! event if the connection is armed, and bytes that a re-arm reports until
//! the handler reads them ([`Epoll::read`]) — edge-triggered, as the pool
//! registers connections. The stop stays up once raised; each nudge wakes
//! one waiter.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{BATCH, Signals};

#[derive(Default)]
struct Inner {
    /// Armed connections' tokens, by descriptor.
    armed: BTreeMap<RawFd, u64>,
    /// Bytes sent and not read yet, by descriptor.
    unread: BTreeMap<RawFd, usize>,
    /// Events reported and not taken: each token at most once.
    ready: VecDeque<u64>,
    stop: bool,
    nudges: usize,
}

pub(crate) struct Epoll {
    inner: loom::sync::Mutex<Inner>,
    changed: loom::sync::Condvar,
    /// A real descriptor for `fd()` (the manager thread's watch, which the
    /// models do not run).
    fd: OwnedFd,
}

impl std::fmt::Debug for Epoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Epoll(model)")
    }
}

impl Inner {
    fn report(&mut self, token: u64) {
        if !self.ready.contains(&token) {
            self.ready.push_back(token);
        }
    }
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        Ok(Epoll {
            inner: loom::sync::Mutex::new(Inner::default()),
            changed: loom::sync::Condvar::new(),
            fd,
        })
    }

    /// The model: the client of the connection on descriptor `fd` sends
    /// bytes.
    pub(crate) fn send(&self, fd: RawFd) {
        let mut inner = self.inner.lock().unwrap();
        *inner.unread.entry(fd).or_default() += 1;
        if let Some(&token) = inner.armed.get(&fd) {
            inner.report(token);
            self.changed.notify_all();
        }
    }

    /// The model's handler reads what `stream`'s client sent: how many
    /// sends.
    pub(crate) fn read(&self, stream: &TcpStream) -> usize {
        let fd = stream.as_raw_fd();
        self.inner.lock().unwrap().unread.remove(&fd).unwrap_or(0)
    }

    pub(crate) fn arm(
        &self,
        stream: &TcpStream,
        token: u64,
        _arm: super::Arm,
        _interest: super::Interest,
    ) -> io::Result<()> {
        let fd = stream.as_raw_fd();
        let mut inner = self.inner.lock().unwrap();
        inner.armed.insert(fd, token);
        // Arming reports bytes already waiting.
        if inner.unread.get(&fd).is_some_and(|&n| n > 0) {
            inner.report(token);
            self.changed.notify_all();
        }
        Ok(())
    }

    pub(crate) fn disarm(&self, stream: &TcpStream) -> io::Result<()> {
        self.inner.lock().unwrap().armed.remove(&stream.as_raw_fd());
        Ok(())
    }

    /// Waits for events; with a timeout, only looks (the pollers' only
    /// timeout is zero: a look without waiting).
    pub(crate) fn wait_batch(
        &self,
        timeout: Option<Duration>,
        tokens: &mut Vec<u64>,
    ) -> io::Result<Signals> {
        let mut inner = self.inner.lock().unwrap();
        loop {
            let mut signals = Signals {
                stop: inner.stop,
                nudge: false,
            };
            if inner.nudges > 0 {
                inner.nudges -= 1;
                signals.nudge = true;
            }
            let n = inner.ready.len().min(BATCH);
            tokens.extend(inner.ready.drain(..n));
            if signals.stop || signals.nudge || n > 0 || timeout.is_some() {
                return Ok(signals);
            }
            inner = self.changed.wait(inner).unwrap();
        }
    }

    pub(crate) fn take_ready(&self, max: usize) -> io::Result<Vec<u64>> {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.ready.len().min(max);
        Ok(inner.ready.drain(..n).collect())
    }

    pub(crate) fn has_ready(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.stop || inner.nudges > 0 || !inner.ready.is_empty()
    }

    pub(crate) fn stop(&self) {
        self.inner.lock().unwrap().stop = true;
        self.changed.notify_all();
    }

    pub(crate) fn nudge(&self) {
        self.inner.lock().unwrap().nudges += 1;
        self.changed.notify_all();
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
