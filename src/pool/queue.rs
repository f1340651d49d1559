//! Work on its way to a worker: new streams and woken connections, the
//! FIFO queue where they wait when no worker is free, what a worker's
//! channel carries, and what the pool closes without serving.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::config::Config;
use crate::limits::Ticket;
use crate::session::Session;
use crate::socket::refuse;
use crate::stats::{CloseReason, RejectReason};
use crate::sync::AtomicUsize;

use super::Shared;

/// Work for a worker.
pub(crate) enum Work {
    /// A stream the pool has just taken.
    New(Incoming),
    /// A parked connection whose client sent again.
    Resumed(Box<Session>),
}

/// What a worker's channel carries.
pub(crate) enum Job {
    /// Serve this.
    Serve(Work),
    /// Become a poller.
    Poll,
    /// Return: the worker has been retired (it is idle).
    Exit,
}

/// A stream on its way through the pool, with the [`Ticket`] that holds
/// its place under a [`Server`](crate::Server)'s connection limits (released
/// when the stream is dropped, wherever that happens).
pub(crate) struct Incoming {
    pub(crate) stream: TcpStream,
    pub(crate) ticket: Option<Ticket>,
    /// Accepted by a server's acceptor as a blocking socket with no
    /// timeouts set: the worker skips the system calls that would set what
    /// is already so. Streams from `put` may be anything.
    pub(crate) fresh: bool,
    /// When the pool took it: the first-byte deadline and the lifetime
    /// count from here.
    pub(crate) accepted: Instant,
    /// While the PROXY protocol is on: whether the peer is a trusted
    /// balancer, whose header comes first. The acceptor judges it as it
    /// accepts; `put` does for the streams it is given.
    pub(crate) trusted: Option<bool>,
}

/// Work waiting in the queue for a worker.
pub(crate) struct Queued {
    pub(crate) work: Work,
    pub(crate) since: Instant,
}

/// The FIFO queue of work waiting for a worker, with its length mirrored in
/// an atomic so that a worker can see, without the lock, that others wait.
pub(crate) struct Queue {
    items: VecDeque<Queued>,
    len: Arc<AtomicUsize>,
}

impl Queue {
    pub(super) fn new(len: Arc<AtomicUsize>) -> Self {
        Queue {
            items: VecDeque::new(),
            len,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    pub(crate) fn push_back(&mut self, queued: Queued) {
        self.items.push_back(queued);
        self.len.store(self.items.len(), Relaxed);
    }

    pub(crate) fn push_front(&mut self, queued: Queued) {
        self.items.push_front(queued);
        self.len.store(self.items.len(), Relaxed);
    }

    pub(crate) fn pop_front(&mut self) -> Option<Queued> {
        let queued = self.items.pop_front();
        self.len.store(self.items.len(), Relaxed);
        queued
    }

    pub(super) fn drain(&mut self) -> Vec<Queued> {
        let all = self.items.drain(..).collect();
        self.len.store(0, Relaxed);
        all
    }
}

/// Work the manager turns away or closes without a worker (queued too
/// long, queued at stop, parked at stop): each is counted, sent the busy
/// reply where one is due, and closed — outside the lock.
pub(crate) struct Unserved {
    /// New streams, never served: rejections.
    pub(crate) streams: Vec<Incoming>,
    /// Connections already taken by the pool: closes.
    pub(crate) sessions: Vec<Box<Session>>,
    reply: Vec<u8>,
    /// Whether new streams may be sent `reply` in plaintext (TLS is off).
    plain: bool,
    reject: RejectReason,
    close: CloseReason,
}

impl Unserved {
    pub(crate) fn new(reject: RejectReason, close: CloseReason) -> Self {
        Unserved {
            streams: Vec::new(),
            sessions: Vec::new(),
            reply: Vec::new(),
            plain: true,
            reject,
            close,
        }
    }

    /// Answers with `config`'s busy reply.
    pub(crate) fn reply_from(&mut self, config: &Config) {
        self.reply = config.busy_reply.clone();
        self.plain = !config.tls_on();
    }

    pub(crate) fn push(&mut self, work: Work) {
        match work {
            Work::New(incoming) => self.streams.push(incoming),
            Work::Resumed(session) => self.sessions.push(session),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.sessions.is_empty()
    }

    /// Counts, then answers and closes.
    pub(crate) fn close(self, shared: &Shared) {
        for incoming in self.streams {
            shared.reject(self.reject);
            refuse(&incoming.stream, if self.plain { &self.reply } else { &[] });
        }
        for session in self.sessions {
            shared
                .service
                .close(session, self.close, &self.reply, &shared.counters);
        }
    }
}
