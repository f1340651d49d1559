//! A connection's outbound path: the bytes written to it that its socket
//! has not taken yet, and the writes that never wait for the socket.
//!
//! A handler's writes (and a [`Handle`](crate::Handle)'s sends, moved here
//! by the worker that serves the connection) go to the socket at once,
//! without waiting, while the socket takes them; the rest waits in the
//! connection's [`Outbound`], and is written when the poller says the
//! socket is writable again. So a client that reads slowly holds bytes,
//! never a worker. A connection with nothing pending holds no buffer.

use std::io;
use std::net::TcpStream;

use crate::tls::TlsConn;

/// Bytes waiting for the socket, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    bytes: Vec<u8>,
    /// How much of `bytes` was written already.
    start: usize,
}

impl Outbound {
    /// Bytes waiting.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `buf`, behind what waits.
    pub(crate) fn push(&mut self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            // Most of it is written: move the rest to the front once
            // rather than let the buffer grow with what was sent.
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(buf);
    }

    /// Moves `other`'s bytes behind what waits.
    pub(crate) fn append_outbound(&mut self, other: Outbound) {
        if self.is_empty() {
            *self = other;
        } else {
            self.push(other.pending());
        }
    }

    /// The bytes waiting.
    fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// `n` bytes were written. An empty buffer is freed.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.bytes.len() {
            *self = Outbound::default();
        }
    }
}

/// What a [`flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flushed {
    /// Plaintext bytes the socket (or rustls) took: counted in `bytes_out`.
    pub(crate) taken: usize,
    /// Whether any byte reached the socket: the no-progress write deadline
    /// counts from the last such write.
    pub(crate) progress: bool,
}

/// Writes what waits in `out` (through rustls on a TLS connection) without
/// waiting, until the socket's buffer is full or nothing is left.
///
/// # Errors
///
/// The socket's, other than "would block" (the connection is broken: a
/// reset, a broken pipe).
pub(crate) fn flush(
    stream: &TcpStream,
    tls: Option<&mut TlsConn>,
    out: &mut Outbound,
) -> io::Result<Flushed> {
    let mut flushed = Flushed::default();
    match tls {
        None => {
            while !out.is_empty() {
                let n = send_now(stream, out.pending())?;
                if n == 0 {
                    break;
                }
                out.consume(n);
                flushed.taken += n;
                flushed.progress = true;
            }
        }
        Some(tls) => loop {
            // Records rustls holds go first; then it takes more plaintext.
            while tls.wants_write() {
                match tls.write_tls_now(stream) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => flushed.progress = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(flushed),
                    Err(e) => return Err(e),
                }
            }
            if out.is_empty() {
                break;
            }
            let n = tls.buffer(out.pending());
            if n == 0 {
                // Not past the handshake: nothing can be sent yet.
                break;
            }
            out.consume(n);
            flushed.taken += n;
        },
    }
    Ok(flushed)
}

/// Whether bytes wait for the socket: in `out`, or encrypted in rustls.
pub(crate) fn pending(out: &Outbound, tls: Option<&TlsConn>) -> bool {
    !out.is_empty() || tls.is_some_and(TlsConn::wants_write)
}

/// One write that does not wait for room in the socket's buffer: the bytes
/// it took (0 when the buffer is full).
///
/// # Errors
///
/// The socket's, other than "would block"; an interrupted call is retried.
pub(crate) fn send_now(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        match crate::epoll::write_now(stream, buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn bytes_leave_in_order_and_an_empty_buffer_is_freed() {
        let mut out = Outbound::default();
        out.push(b"hello ");
        out.push(b"world");
        assert_eq!(out.len(), 11);
        out.consume(6);
        assert_eq!(out.pending(), b"world");
        out.push(b"!");
        assert_eq!(out.pending(), b"world!");
        out.consume(6);
        assert!(out.is_empty());
        assert_eq!(out.bytes.capacity(), 0);
    }

    #[test]
    fn a_flush_writes_what_the_socket_takes_and_keeps_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let server = listener.accept().unwrap().0;
        // Far more than the socket buffers hold while the client reads
        // nothing.
        let big = vec![7u8; 32 << 20];
        let mut out = Outbound::default();
        out.push(&big);
        let first = flush(&server, None, &mut out).unwrap();
        assert!(first.progress);
        assert!(first.taken > 0 && first.taken < big.len());
        assert_eq!(out.len(), big.len() - first.taken);
        // Full: nothing more is taken, and nothing waits.
        assert_eq!(flush(&server, None, &mut out).unwrap(), Flushed::default());
        // The client reads it all as the rest is flushed.
        let mut got = 0;
        let mut buf = vec![0; 1 << 20];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        while got < big.len() {
            got += client.read(&mut buf).unwrap();
            flush(&server, None, &mut out).unwrap();
        }
        assert_eq!(got, big.len());
        assert!(out.is_empty());
    }
}
