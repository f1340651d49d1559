//! A connection between two reads: everything about it that outlives the
//! worker serving it, so that it can be parked and taken up again by any
//! worker — the socket, the handler's state, bytes the handler kept, and the
//! clocks of the slow-client defences.

use std::any::Any;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::handle::Link;
use crate::limits::Ticket;
use crate::outbound::{self, Outbound};
use crate::proxy::ProxyProtocol;
use crate::socket::refuse;
use crate::stats::CloseReason;
use crate::stream::Stream;
use crate::timing::Timing;
use crate::tls::TlsConn;

/// A connection taken by the pool: on a worker, parked (waiting in the
/// workers' shared poller), or queued after waking.
pub(crate) struct Session {
    /// Shared with the serving worker's `Slot` while on a worker, so that
    /// stop can shut it down; the only owner while parked.
    pub(crate) stream: Arc<Stream>,
    /// Its place under a server's connection limits, given back on drop.
    pub(crate) ticket: Option<Ticket>,
    /// The handler's state, type-erased; `None` until `Handler::open` ran on
    /// the first worker that took the connection.
    pub(crate) state: Option<Box<dyn Any + Send>>,
    /// Bytes the handler kept ([`Conn::keep`](crate::Conn::keep)) while the
    /// connection is parked or queued. Empty on a worker: they are in its
    /// buffer then. A parked connection holds no read buffer.
    pub(crate) kept: Vec<u8>,
    pub(crate) timing: Timing,
    /// The socket's `SO_RCVTIMEO` and `SO_SNDTIMEO` as last set by us;
    /// `None` while unknown (a stream from `put` may come with any).
    pub(crate) read_timeout: Option<Option<Duration>>,
    pub(crate) write_timeout: Option<Option<Duration>>,
    /// Whether a worker has made the socket blocking (a stream from `put`
    /// may be non-blocking; the acceptor's are blocking already).
    pub(crate) blocking: bool,
    /// Whether the socket is registered in the workers' shared poller. It
    /// stays registered (edge-triggered) while a worker serves it, so that
    /// parking it again takes no system call, or one `epoll_ctl` (a re-arm)
    /// if it left its entry in the parked table.
    pub(crate) registered: bool,
    /// Reported readable by the poller: a worker's first read of it does
    /// not wait (a readiness can be spurious).
    pub(crate) ready: bool,
    /// The poller reported the peer's shutdown, a hang-up or an error: it
    /// is read until it ends (or has nothing more), since no later event
    /// announces the end of file behind its last bytes.
    pub(crate) hup: bool,
    /// Disarmed in the poller while a worker waited for it in a blocking
    /// read: parking it re-arms it.
    pub(crate) disarmed: bool,
    /// When the manager thread took it, readable, out of the poller into
    /// the queue (no worker was free): its deadlines are judged at that
    /// instant, not when a worker got to it.
    pub(crate) woken_at: Option<Instant>,
    /// A TLS connection's rustls state (`None`: plaintext).
    pub(crate) tls: Option<TlsConn>,
    /// The client a PROXY protocol header named (`None`: the socket's
    /// peer is the client).
    pub(crate) peer: Option<SocketAddr>,
    /// Bytes read with the PROXY header that came after it: the next reads
    /// take them before the socket's.
    pub(crate) early: Vec<u8>,
    /// The longest PROXY header accepted, while one is awaited.
    pub(crate) header_max: usize,
    /// Bytes written to it (by its handler, or its handles) that its socket
    /// has not taken yet. Empty, and holding no memory, while nothing waits.
    pub(crate) out: Outbound,
    /// What its handles share with it, once the handler asked for one.
    pub(crate) link: LinkSlot,
    /// It is to close, for this reason, once the bytes in `out` are written:
    /// the handler or a handle closed it, or its client's end of file came
    /// while a reply was still waiting.
    pub(crate) closing: Option<CloseReason>,
    /// Whether its registration in the shared poller reports writability
    /// (needed while bytes wait in `out`).
    pub(crate) armed_out: bool,
    /// Its share of the bytes waiting in every session's `out` and
    /// `frame`.
    pub(crate) held: Held,
    /// A frame larger than the worker's buffer, gathered as it arrives
    /// (see `serve/input.rs`). Empty, and holding no memory, otherwise.
    pub(crate) frame: Vec<u8>,
    /// New bytes the handler wants before it is called again
    /// ([`Conn::need`](crate::Conn::need)); 0 or 1: any.
    pub(crate) want: usize,
}

/// A session's share of the pool's count of bytes waiting for sockets
/// (`Counters::buffered`), given back when the session is dropped.
#[derive(Debug, Default)]
pub(crate) struct Held {
    total: Option<Arc<AtomicUsize>>,
    mine: usize,
}

impl Held {
    /// The bytes counted for this session.
    pub(crate) fn mine(&self) -> usize {
        self.mine
    }

    /// The session now holds `now` bytes: the pool's new total, or `None`
    /// if nothing changed.
    pub(crate) fn set(&mut self, total: &Arc<AtomicUsize>, now: usize) -> Option<usize> {
        if now == self.mine {
            return None;
        }
        let total = self.total.get_or_insert_with(|| Arc::clone(total));
        let new = if now > self.mine {
            total.fetch_add(now - self.mine, Relaxed) + (now - self.mine)
        } else {
            total.fetch_sub(self.mine - now, Relaxed) - (self.mine - now)
        };
        self.mine = now;
        Some(new)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(total) = &self.total {
            total.fetch_sub(self.mine, Relaxed);
        }
    }
}

/// A session's [`Link`]: closed when the session ends, however it ends, so
/// that its handles refuse further sends.
#[derive(Default)]
pub(crate) struct LinkSlot(Option<Arc<Link>>);

impl std::fmt::Debug for LinkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "LinkSlot(linked)"
        } else {
            "LinkSlot(none)"
        })
    }
}

impl LinkSlot {
    pub(crate) fn get(&self) -> Option<&Arc<Link>> {
        self.0.as_ref()
    }

    /// The link, made on first use with `limit` bytes of bound.
    pub(crate) fn get_or_make(&mut self, limit: usize) -> &Arc<Link> {
        self.0.get_or_insert_with(|| Link::new(limit))
    }
}

impl Drop for LinkSlot {
    fn drop(&mut self) {
        if let Some(link) = &self.0 {
            link.close();
        }
    }
}

impl Session {
    /// A new connection, taken by the pool at `opened`. `fresh`: accepted
    /// by the acceptor, so blocking and without timeouts.
    pub(crate) fn new(
        stream: TcpStream,
        ticket: Option<Ticket>,
        fresh: bool,
        opened: Instant,
        tls: Option<TlsConn>,
    ) -> Box<Self> {
        let known = fresh.then_some(None);
        let mut timing = Timing::new(opened);
        timing.set_handshaking(tls.is_some());
        Box::new(Session {
            stream: Arc::new(Stream::new(stream)),
            ticket,
            state: None,
            kept: Vec::new(),
            timing,
            read_timeout: known,
            write_timeout: known,
            blocking: fresh,
            registered: false,
            ready: false,
            hup: false,
            disarmed: false,
            woken_at: None,
            tls,
            peer: None,
            early: Vec::new(),
            header_max: 0,
            out: Outbound::default(),
            link: LinkSlot::default(),
            closing: None,
            armed_out: false,
            held: Held::default(),
            frame: Vec::new(),
            want: 0,
        })
    }

    /// The connection comes from a trusted balancer: its PROXY header is
    /// read first, under `proxy`'s limits (those in force when the pool
    /// took it, whatever `set_config` does later).
    pub(crate) fn expect_header(&mut self, proxy: &ProxyProtocol) {
        self.timing.expect_header(proxy.header_deadline);
        self.header_max = proxy.max_header_size;
    }

    /// Writes `reply` without blocking (encrypted on a TLS connection whose
    /// handshake completed; on TLS also `close_notify`), whatever the
    /// socket buffer takes, and shuts the socket down.
    pub(crate) fn end(&mut self, reply: &[u8]) {
        if let Some(link) = self.link.get() {
            link.close();
        }
        if !self.out.is_empty() {
            // What the socket takes at once of what waits (a stop, say).
            let _ = outbound::flush(&self.stream, self.tls.as_mut(), &mut self.out);
        }
        match &mut self.tls {
            Some(tls) => tls.end(&self.stream, reply),
            None => refuse(&self.stream, reply),
        }
    }
}
