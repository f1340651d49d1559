//! [`Conn`]: what a handler sees of the connection it is serving.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use crate::handle::Handle;
use crate::outbound::{self, Outbound, send_now};
use crate::session::LinkSlot;
use crate::stats::ByteCounters;
use crate::tls::TlsConn;

/// The connection a handler is serving, lent to it for one call.
///
/// - write to it with [`std::io::Write`]: a write never waits for the
///   client. What the socket takes goes at once; the rest waits in the
///   connection's outbound buffer and is written by the pool as the client
///   reads, after which the bytes are counted in
///   [`Stats::bytes_out`](crate::Stats) (see
///   [`max_outbound_bytes`](crate::Config::max_outbound_bytes) and
///   [`write_deadline`](crate::Config::write_deadline));
/// - get a [`Handle`] to write to it or close it later, from any thread;
/// - [`close`](Conn::close) it once the call returns;
/// - [`keep`](Conn::keep) the unconsumed end of `data` for the next call;
/// - reach the per-connection [`state`](Conn::state) (see
///   [`with_state`](crate::with_state)).
///
/// ```
/// use std::io::Write;
/// use pool_manager::Conn;
///
/// // A line protocol: answer each complete line, keep a partial one.
/// fn lines(conn: &mut Conn<'_>, data: &[u8]) -> std::io::Result<()> {
///     let mut rest = data;
///     while let Some(end) = rest.iter().position(|&b| b == b'\n') {
///         let line = &rest[..end];
///         if line == b"QUIT" {
///             conn.close();
///             return Ok(());
///         }
///         conn.write_all(b"OK\n")?;
///         rest = &rest[end + 1..];
///     }
///     conn.keep(rest.len());
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Conn<'a, S = ()> {
    stream: &'a TcpStream,
    tls: Option<&'a mut TlsConn>,
    /// The client a PROXY header named.
    peer: Option<SocketAddr>,
    state: &'a mut S,
    bytes: &'a ByteCounters,
    out: &'a mut Outbound,
    link: &'a mut LinkSlot,
    /// `max_outbound_bytes` in force, for a new handle's bound.
    max_outbound: usize,
    /// The pool's count of bytes waiting for sockets, this connection's
    /// share of it when the call began, and `max_buffered_bytes`.
    buffered: (&'a AtomicUsize, usize, Option<usize>),
    /// Its writes went on past both bounds: it is evicted.
    evicted: bool,
    keep: usize,
    /// New bytes wanted before the next call.
    need: usize,
    close: bool,
    /// Some byte reached the socket during this call.
    progress: bool,
    /// A write failed: the connection is broken, and how.
    broken: Option<io::ErrorKind>,
}

/// What a [`Conn`] is made of: the parts of the session and the worker it
/// borrows for one handler call.
pub(crate) struct Parts<'a> {
    pub(crate) stream: &'a TcpStream,
    pub(crate) tls: Option<&'a mut TlsConn>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) bytes: &'a ByteCounters,
    pub(crate) out: &'a mut Outbound,
    pub(crate) link: &'a mut LinkSlot,
    pub(crate) max_outbound: usize,
    pub(crate) buffered: (&'a AtomicUsize, usize, Option<usize>),
}

impl<'a, S> Conn<'a, S> {
    pub(crate) fn new(parts: Parts<'a>, state: &'a mut S) -> Self {
        Conn {
            stream: parts.stream,
            tls: parts.tls,
            peer: parts.peer,
            state,
            bytes: parts.bytes,
            out: parts.out,
            link: parts.link,
            max_outbound: parts.max_outbound,
            buffered: parts.buffered,
            evicted: false,
            keep: 0,
            need: 0,
            close: false,
            progress: false,
            broken: None,
        }
    }

    /// The per-connection state, created when the connection was handed to a
    /// worker and dropped when it closes.
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// The socket, for what `Conn` does not offer itself (socket options,
    /// `local_addr`, …). Its `peer_addr` is the socket's peer, the balancer
    /// behind a PROXY protocol one: the client is
    /// [`peer_addr`](Self::peer_addr). Reading from it directly bypasses the pool's buffer
    /// and deadlines; on a TLS connection, reading or writing it directly
    /// breaks the TLS stream. It is blocking while the handler runs (on
    /// Windows the pool makes it non-blocking for each of its own reads and
    /// writes, and blocking again after).
    pub fn stream(&self) -> &TcpStream {
        self.stream
    }

    /// The connection's TLS state, on a TLS connection: the negotiated
    /// ALPN protocol (`alpn_protocol()`), the name the client asked for
    /// (`server_name()`), its certificates (`peer_certificates()`), the
    /// protocol version and cipher suite. `None` on a plaintext
    /// connection.
    ///
    /// ```
    /// use std::io::Write;
    /// use pool_manager::Conn;
    ///
    /// // Greets each client by the name it asked for.
    /// fn hello(conn: &mut Conn<'_>, _data: &[u8]) -> std::io::Result<()> {
    ///     let name = conn.tls().and_then(|tls| tls.server_name()).unwrap_or("stranger");
    ///     let reply = format!("hello, {name}\n");
    ///     conn.write_all(reply.as_bytes())
    /// }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&rustls::ServerConnection> {
        self.tls.as_deref().and_then(TlsConn::connection)
    }

    /// The client's address: the one its balancer's PROXY protocol header
    /// named (see [`Config::proxy_protocol`](crate::Config::proxy_protocol)),
    /// else the socket's peer. (`stream().peer_addr()` is always the
    /// socket's: the balancer, behind one.)
    ///
    /// # Errors
    ///
    /// As [`TcpStream::peer_addr`], e.g. when the client has already gone;
    /// never for an address from a PROXY header.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.peer {
            Some(peer) => Ok(peer),
            None => self.stream.peer_addr(),
        }
    }

    /// Closes the connection when the handler returns (counted as
    /// [`CloseReason::Handler`](crate::CloseReason::Handler)). Bytes already
    /// written are sent first (within
    /// [`write_deadline`](crate::Config::write_deadline) of no progress),
    /// holding no worker while they go; a TLS connection then sends
    /// `close_notify`. Nothing more is read, and its handles refuse
    /// further sends.
    pub fn close(&mut self) {
        self.close = true;
    }

    /// A [`Handle`] to this connection, for any thread: to send it bytes
    /// or close it later (a reply computed elsewhere, a broadcast, a
    /// heartbeat). Every call returns a handle to the same connection (the
    /// same [`id`](Handle::id)).
    ///
    /// ```
    /// use std::io::Write;
    /// use std::time::Duration;
    /// use pool_manager::Conn;
    ///
    /// // Answers at once, then again a second later from another thread.
    /// fn later(conn: &mut Conn<'_>, _data: &[u8]) -> std::io::Result<()> {
    ///     conn.write_all(b"working on it\n")?;
    ///     let handle = conn.handle();
    ///     std::thread::spawn(move || {
    ///         std::thread::sleep(Duration::from_secs(1));
    ///         let _ = handle.send(b"done\n");
    ///     });
    ///     Ok(())
    /// }
    /// ```
    pub fn handle(&mut self) -> Handle {
        Handle::new(std::sync::Arc::clone(
            self.link.get_or_make(self.max_outbound),
        ))
    }

    /// Keeps the last `n` bytes of this call's `data` unconsumed: the next
    /// call gets them again, followed by the newly read bytes. Use it for a
    /// frame split across reads. Without a call nothing is kept. `n` larger
    /// than `data` keeps all of it.
    ///
    /// A frame may be larger than the worker's
    /// [`buffer_size`](crate::Config::buffer_size): kept bytes that fill
    /// the buffer are gathered, with the bytes that follow, in a buffer of
    /// the connection's own that grows as they arrive, up to
    /// [`max_frame_bytes`](crate::Config::max_frame_bytes) (past it the
    /// connection is closed with
    /// [`CloseReason::Overflow`](crate::CloseReason::Overflow)). While bytes
    /// are kept, the frame is incomplete and
    /// [`min_read_rate`](crate::Config::min_read_rate) applies.
    pub fn keep(&mut self, n: usize) {
        self.keep = n;
    }

    /// Asks to be called again only once at least `more` new bytes have
    /// arrived behind the kept ones: for a frame whose length is known
    /// before its end (a length prefix, a bulk string's `$len`). However
    /// many reads it takes, and however much larger than `buffer_size` it
    /// is (see [`keep`](Self::keep)), the next call gets the whole of it
    /// at once. Without a call, any new byte calls the handler.
    ///
    /// ```
    /// use pool_manager::Conn;
    ///
    /// // Frames of a 4-byte big-endian length and a body.
    /// fn frames(conn: &mut Conn<'_>, data: &[u8]) -> std::io::Result<()> {
    ///     let mut rest = data;
    ///     while rest.len() >= 4 {
    ///         let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
    ///         if rest.len() < 4 + len {
    ///             conn.keep(rest.len());
    ///             conn.need(4 + len - rest.len());
    ///             return Ok(());
    ///         }
    ///         // ... the frame is &rest[4..4 + len] ...
    ///         rest = &rest[4 + len..];
    ///     }
    ///     conn.keep(rest.len());
    ///     Ok(())
    /// }
    /// ```
    pub fn need(&mut self, more: usize) {
        self.need = more;
    }

    pub(crate) fn needed(&self) -> usize {
        self.need
    }

    pub(crate) fn kept(&self) -> usize {
        self.keep
    }

    pub(crate) fn close_requested(&self) -> bool {
        self.close
    }

    /// Whether a write failed because the client reset the connection
    /// (`ECONNRESET`, or `EPIPE` once the reset was reported).
    pub(crate) fn write_reset(&self) -> bool {
        matches!(
            self.broken,
            Some(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
        )
    }

    /// Whether a write failed: nothing more can be written.
    pub(crate) fn write_failed(&self) -> bool {
        self.broken.is_some()
    }

    /// Whether its writes went past `max_outbound_bytes` while the pool's
    /// total was past `max_buffered_bytes`.
    pub(crate) fn evicted(&self) -> bool {
        self.evicted
    }

    /// Whether some byte reached the socket during this call.
    pub(crate) fn progress(&self) -> bool {
        self.progress
    }

    /// Sends what the socket takes of `buf` now, and queues the rest.
    fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        if outbound::pending(self.out, self.tls.as_deref()) {
            // Behind what waits already.
            self.out.push(buf);
            if self.out.len() > self.max_outbound {
                // A handler that writes on and on: the socket may have
                // room again, or be broken (the client gone, a stop's
                // force), which this finds.
                self.flush_out()?;
                let (total, counted, max) = self.buffered;
                let total = total.load(Relaxed).saturating_sub(counted) + self.out.len();
                if max.is_some_and(|max| total > max) && self.out.len() > self.max_outbound {
                    self.evicted = true;
                    return Err(io::Error::other(
                        "evicted: max_buffered_bytes passed while its writes went past max_outbound_bytes",
                    ));
                }
            }
            return Ok(());
        }
        let taken = match self.tls.as_deref_mut() {
            None => {
                let n = send_now(self.stream, buf)?;
                self.progress |= n > 0;
                self.out.push(&buf[n..]);
                n
            }
            Some(tls) => {
                let n = tls.buffer(buf);
                self.out.push(&buf[n..]);
                n
            }
        };
        self.bytes.bytes_out.fetch_add(taken as u64, Relaxed);
        if self.tls.is_some() {
            // rustls took it: its records go to the socket.
            self.flush_out()?;
        }
        Ok(())
    }

    /// Writes what waits (in `out`, and in rustls) as far as the socket
    /// takes it, counting what it took.
    fn flush_out(&mut self) -> io::Result<()> {
        let flushed = outbound::flush(self.stream, self.tls.as_deref_mut(), self.out)?;
        self.progress |= flushed.progress;
        self.bytes
            .bytes_out
            .fetch_add(flushed.taken as u64, Relaxed);
        Ok(())
    }
}

impl<S> Write for Conn<'_, S> {
    /// Takes all of `buf`, without waiting for the client: what the socket
    /// does not take at once waits in the connection's outbound buffer.
    ///
    /// # Errors
    ///
    /// The connection is broken (reset by the client, say): this and every
    /// later write fail, and the connection closes when the handler
    /// returns.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(kind) = self.broken {
            return Err(kind.into());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        match self.send(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.broken = Some(e.kind());
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.broken {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }
}
