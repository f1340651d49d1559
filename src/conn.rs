//! [`Conn`]: what a handler sees of the connection it is serving.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::error::write_deadline_error;
use crate::stats::ByteCounters;

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
    state: &'a mut S,
    bytes: &'a ByteCounters,
    write_deadline: Option<Duration>,
    keep: usize,
    close: bool,
    write_timed_out: bool,
}

impl<'a, S> Conn<'a, S> {
    pub(crate) fn new(
        stream: &'a TcpStream,
        state: &'a mut S,
        bytes: &'a ByteCounters,
        write_deadline: Option<Duration>,
    ) -> Self {
        Conn {
            stream,
            state,
            bytes,
            write_deadline,
            keep: 0,
            close: false,
            write_timed_out: false,
        }
    }

    /// The per-connection state, created when the connection was handed to a
    /// worker and dropped when it closes.
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// The socket, for what `Conn` does not offer itself (socket options,
    /// `local_addr`, …). Reading from it directly bypasses the pool's buffer
    /// and deadlines.
    pub fn stream(&self) -> &TcpStream {
        self.stream
    }

    /// The client's address.
    ///
    /// # Errors
    ///
    /// As [`TcpStream::peer_addr`], e.g. when the client has already gone.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Closes the connection when the handler returns (counted as
    /// [`CloseReason::Handler`](crate::CloseReason::Handler)). Bytes already
    /// written are sent first.
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

    fn write_once(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.stream.write(buf) {
                Ok(n) => {
                    self.bytes.bytes_out.fetch_add(n as u64, Relaxed);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    self.write_timed_out = true;
                    let deadline = self.write_deadline.unwrap_or_default();
                    return Err(write_deadline_error(deadline));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S> Write for Conn<'_, S> {
    /// One write to the socket, bounded by `write_deadline`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_once(buf)
    }

    /// Writes all of `buf` within `write_deadline` for the whole call, not per
    /// system call, so a client that reads a byte now and then cannot stretch
    /// it.
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let started = self.write_deadline.map(|d| (Instant::now(), d));
        let mut shortened = false;
        let result = loop {
            if buf.is_empty() {
                break Ok(());
            }
            match self.write_once(buf) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) => break Err(e),
            }
            // A partial write: the socket's timeout is per call, so shrink it
            // to what is left of the deadline.
            if let (Some((start, deadline)), false) = (started, buf.is_empty()) {
                let left = deadline.saturating_sub(start.elapsed());
                if left.is_zero() {
                    self.write_timed_out = true;
                    break Err(write_deadline_error(deadline));
                }
                if let Err(e) = self.stream.set_write_timeout(Some(left)) {
                    break Err(e);
                }
                shortened = true;
            }
        };
        if shortened {
            self.stream.set_write_timeout(self.write_deadline)?;
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a blocking socket call failed because its `SO_RCVTIMEO` /
/// `SO_SNDTIMEO` expired (`WouldBlock` on Unix, `TimedOut` on Windows).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Writes `reply` without blocking (whatever the socket buffer takes) and
/// closes `stream`: for streams the manager turns away itself.
pub(crate) fn refuse(stream: &TcpStream, reply: &[u8]) {
    if !reply.is_empty() && stream.set_nonblocking(true).is_ok() {
        let mut stream = stream;
        let _ = stream.write(reply);
    }
    let _ = stream.shutdown(Shutdown::Both);
}
