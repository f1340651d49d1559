//! [`Conn`]: what a handler sees of the connection it is serving.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::error::write_deadline_error;
use crate::socket::is_timeout;
use crate::stats::ByteCounters;
use crate::tls::TlsConn;

/// The connection a handler is serving, lent to it for one call.
///
/// - write to it with [`std::io::Write`] (`write_all` honours
///   [`write_deadline`](crate::Config::write_deadline) as a deadline for the
///   whole call, and the bytes are counted in [`Stats::bytes_out`](crate::Stats));
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
    write_deadline: Option<Duration>,
    keep: usize,
    close: bool,
    write_timed_out: bool,
    /// A write failed because the client had reset the connection.
    write_reset: bool,
}

impl<'a, S> Conn<'a, S> {
    pub(crate) fn new(
        stream: &'a TcpStream,
        tls: Option<&'a mut TlsConn>,
        peer: Option<SocketAddr>,
        state: &'a mut S,
        bytes: &'a ByteCounters,
        write_deadline: Option<Duration>,
    ) -> Self {
        Conn {
            stream,
            tls,
            peer,
            state,
            bytes,
            write_deadline,
            keep: 0,
            close: false,
            write_timed_out: false,
            write_reset: false,
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
    /// breaks the TLS stream.
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
    /// written are sent first; a TLS connection sends `close_notify`.
    pub fn close(&mut self) {
        self.close = true;
    }

    /// Keeps the last `n` bytes of this call's `data` unconsumed: the next
    /// call gets them again, followed by the newly read bytes. Use it for a
    /// frame split across reads. Without a call nothing is kept. `n` larger
    /// than `data` keeps all of it.
    ///
    /// Kept and new bytes share the worker's buffer of
    /// [`buffer_size`](crate::Config::buffer_size) bytes: a handler that keeps
    /// a whole buffer is asking for a frame larger than the buffer, and the
    /// connection is closed with
    /// [`CloseReason::Overflow`](crate::CloseReason::Overflow).
    pub fn keep(&mut self, n: usize) {
        self.keep = n;
    }

    pub(crate) fn kept(&self) -> usize {
        self.keep
    }

    pub(crate) fn close_requested(&self) -> bool {
        self.close
    }

    pub(crate) fn write_timed_out(&self) -> bool {
        self.write_timed_out
    }

    /// Whether a write failed because the client reset the connection
    /// (`ECONNRESET`, or `EPIPE` once the reset was reported).
    pub(crate) fn write_reset(&self) -> bool {
        self.write_reset
    }

    /// One write of `buf`: to the socket, or (TLS) encrypted and flushed
    /// whole. Bounded by `budget`.
    fn write_within(&mut self, buf: &[u8], budget: &mut Budget) -> io::Result<usize> {
        let stream = self.stream;
        let n = match self.tls.as_deref_mut() {
            None => budget.call(|| (&*stream).write(buf))?,
            Some(tls) => {
                let n = tls.buffer(buf);
                while tls.wants_write() {
                    if budget.call(|| tls.write_tls(stream))? == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    if tls.wants_write() {
                        budget.shrink(stream)?;
                    }
                }
                n
            }
        };
        self.bytes.bytes_out.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// Runs `f` with a fresh write budget, then restores the socket's
    /// write timeout if the budget shortened it.
    fn with_budget<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut Budget) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut budget = Budget::new(self.write_deadline);
        let result = f(self, &mut budget);
        self.write_timed_out |= budget.timed_out;
        self.write_reset |= result.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
        });
        if budget.shortened {
            self.stream.set_write_timeout(self.write_deadline)?;
        }
        result
    }
}

impl<S> Write for Conn<'_, S> {
    /// One write to the socket, bounded by `write_deadline` (on TLS: the
    /// bytes taken, encrypted and sent).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with_budget(|conn, budget| conn.write_within(buf, budget))
    }

    /// Writes all of `buf` within `write_deadline` for the whole call, not per
    /// system call, so a client that reads a byte now and then cannot stretch
    /// it.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with_budget(|conn, budget| {
            let mut buf = buf;
            while !buf.is_empty() {
                match conn.write_within(buf, budget)? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => buf = &buf[n..],
                }
                if !buf.is_empty() {
                    budget.shrink(conn.stream)?;
                }
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The write deadline of one `write` or `write_all`. The socket's
/// `SO_SNDTIMEO` bounds each system call; after a partial write it is
/// shrunk to what is left of the deadline.
struct Budget {
    started: Option<(Instant, Duration)>,
    shortened: bool,
    timed_out: bool,
}

impl Budget {
    fn new(deadline: Option<Duration>) -> Self {
        Budget {
            started: deadline.map(|d| (Instant::now(), d)),
            shortened: false,
            timed_out: false,
        }
    }

    /// One system call: retried if interrupted; a timeout becomes the
    /// write-deadline error.
    fn call(&mut self, mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
        loop {
            match f() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(self.expired()),
                result => return result,
            }
        }
    }

    /// Sets the socket's timeout to what is left of the deadline.
    fn shrink(&mut self, stream: &TcpStream) -> io::Result<()> {
        let Some((start, deadline)) = self.started else {
            return Ok(());
        };
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(self.expired());
        }
        stream.set_write_timeout(Some(left))?;
        self.shortened = true;
        Ok(())
    }

    fn expired(&mut self) -> io::Error {
        self.timed_out = true;
        write_deadline_error(self.started.map_or(Duration::ZERO, |(_, d)| d))
    }
}
