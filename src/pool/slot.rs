//! The part of each worker that other threads reach: its [`Slot`] (the
//! connection it serves, its turn counter, its counters), its place on the
//! idle stack, and what its thread starts with.

use std::net::Shutdown;
use std::sync::Arc;
use std::time::Instant;

use crate::epoll::Bell;
use crate::stats::ByteCounters;
use crate::sync::channel::{Receiver, Sender};
use crate::sync::{AtomicBool, AtomicI32, AtomicU64, Mutex};

use super::{Job, PollerHandle, Shared};

/// The part of a worker the manager can reach while it serves.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) conn: Mutex<Serving>,
    /// Turns this worker has begun and ended as a poller: odd while one
    /// runs. The manager thread reads it to find turns that run long.
    pub(crate) turn: AtomicU64,
    /// Set by the manager thread when it took the poller role away from
    /// this worker during a long turn.
    pub(crate) released: AtomicBool,
    /// Whether it counts among the pollers taking from the ready list
    /// ([`PollerHandle::draining`]); the manager thread takes it off
    /// during a long turn (see [`PollerHandle::stop_draining`]).
    pub(crate) draining: AtomicBool,
    /// The worker thread's id in the kernel (0 until it runs), so that the
    /// manager thread can tell a turn blocked in the kernel from one that
    /// computes or waits for a CPU.
    pub(crate) tid: AtomicI32,
    /// When it last began to wait for work as a poller, in milliseconds since
    /// `Shared::epoch`: the reaper retires pollers idle for too long.
    pub(crate) idle_since_ms: AtomicU64,
    /// Bytes this worker has moved; only this worker adds to them.
    pub(crate) bytes: ByteCounters,
}

/// The connection a worker is serving.
#[derive(Debug, Default)]
pub(crate) struct Serving {
    /// So that `stop` can shut it down and wake a worker blocked in a read.
    pub(crate) stream: Option<Arc<crate::stream::Stream>>,
    /// Whether a stop has counted it among the connections it drains.
    pub(crate) counted: bool,
    /// The worker's bell, rung by `stop` too: a worker waiting only for
    /// room in the socket is not woken by the shutdown of its reading side,
    /// and looks again (it reads the end of file once it may read).
    pub(crate) bell: Option<Arc<Bell>>,
}

impl Slot {
    /// Shuts the served connection down, if there is one; `true` if there
    /// was. A stop that does so counts it (`count`).
    pub(crate) fn shutdown(&self, how: Shutdown, count: bool) -> bool {
        let mut serving = self.conn.lock();
        let Some(stream) = &serving.stream else {
            return false;
        };
        let _ = stream.shutdown(how);
        if let Some(bell) = &serving.bell {
            bell.ring();
        }
        serving.counted |= count;
        true
    }

    /// Whether a connection is being served.
    pub(crate) fn is_serving(&self) -> bool {
        self.conn.lock().stream.is_some()
    }
}

/// An idle worker, on the manager's idle stack.
pub(crate) struct Idle {
    pub(crate) id: u64,
    pub(crate) tx: Sender<Job>,
    pub(crate) since: Instant,
}

/// Everything a worker thread starts with.
pub(crate) struct WorkerStart {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    /// The manager run ([`State::run`](crate::pool::State::run)) this worker belongs to.
    pub(crate) run: u64,
    pub(crate) slot: Arc<Slot>,
    pub(crate) tx: Sender<Job>,
    pub(crate) rx: Receiver<Job>,
    /// The run's shared poller and the manager thread's waker: the same
    /// for the worker's whole life.
    pub(crate) poller: Option<Arc<PollerHandle>>,
}
