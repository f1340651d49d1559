//! [`TlsConn`]: one connection's rustls state. It lives in the connection's
//! session, so a parked TLS connection keeps its keys and any bytes rustls
//! holds, and no buffer of a worker.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rustls::{IoState, ServerConfig, ServerConnection};

use super::{Got, ReadError};
use crate::config::Config;
use crate::epoll::{read_now, write_now};
use crate::stats::{CloseReason, Failure, TlsCounters};

/// A TLS connection on the server side.
pub(crate) struct TlsConn {
    state: State,
    counters: Arc<TlsCounters>,
    /// The last read of the socket filled the space rustls offered: bytes
    /// may wait there that no poller event will announce.
    unread: bool,
}

enum State {
    /// Taken by the pool, no byte read yet: rustls's state is made by the
    /// first worker that reads, not on the accepting thread.
    Pending(Arc<ServerConfig>),
    Active(Box<ServerConnection>),
}

impl TlsConn {
    /// A TLS connection if `config` serves TLS; counted in `current` until
    /// dropped.
    pub(crate) fn for_config(config: &Config, counters: &Arc<TlsCounters>) -> Option<TlsConn> {
        let tls = config.tls.as_ref()?;
        counters.current.fetch_add(1, Relaxed);
        Some(TlsConn {
            state: State::Pending(Arc::clone(tls.server_config())),
            counters: Arc::clone(counters),
            unread: false,
        })
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Pending(_) => true,
            State::Active(conn) => conn.is_handshaking(),
        }
    }

    /// rustls's connection, once a worker has read from it.
    pub(crate) fn connection(&self) -> Option<&ServerConnection> {
        match &self.state {
            State::Pending(_) => None,
            State::Active(conn) => Some(conn),
        }
    }

    /// Reads plaintext into `buf`: first what rustls decrypted already,
    /// else one read of the socket (waiting for it, up to its
    /// `SO_RCVTIMEO`, if `wait`) fed to rustls, whose handshake replies are
    /// written at once. With what it got, whether to read again without
    /// waiting: rustls holds more plaintext, or the socket read filled the
    /// space rustls offered (the poller is edge-triggered: no event would
    /// announce the rest).
    ///
    /// `early`: bytes that came from the socket before TLS began (behind a
    /// PROXY header); rustls reads them before the socket.
    pub(crate) fn read(
        &mut self,
        stream: &TcpStream,
        buf: &mut [u8],
        wait: bool,
        early: &mut Vec<u8>,
    ) -> Result<(Got, bool), ReadError> {
        let conn = match &mut self.state {
            State::Active(conn) => conn,
            State::Pending(config) => match ServerConnection::new(Arc::clone(config)) {
                Ok(conn) => {
                    self.state = State::Active(Box::new(conn));
                    let State::Active(conn) = &mut self.state else {
                        unreachable!("just set")
                    };
                    conn
                }
                Err(e) => {
                    log::error!("cannot start a TLS connection: {e}");
                    return Err(ReadError::Handshake(Some(Failure::Other)));
                }
            },
        };
        // Plaintext decrypted already (the buffer took only part of it).
        if let Some(got) = conn
            .process_new_packets()
            .ok()
            .and_then(|state| plaintext(conn, buf, &state, self.unread))
        {
            return Ok(got);
        }
        let was_handshaking = conn.is_handshaking();
        let mut socket = Socket {
            stream,
            early,
            wait,
            full: false,
        };
        match conn.read_tls(&mut socket) {
            Ok(0) if was_handshaking => return Err(ReadError::Handshake(Some(Failure::Closed))),
            Ok(0) => return Ok((Got::Eof, false)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // A handshake message over rustls's limit.
                return Err(self.failed(&e, Failure::Protocol, was_handshaking));
            }
            Err(e) if was_handshaking && !is_retry(&e) => {
                return Err(ReadError::Handshake(Some(Failure::Closed)));
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
        self.unread = socket.full;
        let processed = conn.process_new_packets();
        // Handshake replies: sent now, within the socket's write timeout
        // (they are small). Once past the handshake, what rustls holds may
        // be a reply waiting for a slow reader: written as far as the
        // socket takes it, the rest left to the outbound path.
        let flushed = if was_handshaking {
            flush(conn, stream)
        } else {
            flush_now(conn, stream)
        };
        // Judged after processing: the bytes may have completed it.
        let handshaking = conn.is_handshaking();
        if was_handshaking && !handshaking {
            self.counters.handshakes.fetch_add(1, Relaxed);
        }
        let state = match processed {
            Ok(state) => state,
            Err(e) => return Err(self.failed(&e, failure_of(&e), handshaking)),
        };
        if let Err(e) = flushed {
            let timeout = crate::socket::is_timeout(&e);
            return Err(match (handshaking, timeout) {
                (true, true) => ReadError::Handshake(None),
                (true, false) => ReadError::Handshake(Some(Failure::Closed)),
                (false, true) => ReadError::Failed(CloseReason::WriteDeadline),
                (false, false) => ReadError::Failed(CloseReason::Error),
            });
        }
        if let Some(got) = plaintext(conn, buf, &state, socket.full) {
            return Ok(got);
        }
        if state.peer_has_closed() {
            return Ok((Got::Eof, false));
        }
        Ok((Got::Progress, socket.full))
    }

    /// A TLS failure, logged (at most once a minute while handshaking).
    fn failed(&self, e: &dyn std::fmt::Display, failure: Failure, handshaking: bool) -> ReadError {
        if handshaking {
            if let Some(suppressed) = self.counters.log.allow() {
                log::info!("TLS handshake failed: {e} ({suppressed} more not logged)");
            }
            ReadError::Handshake(Some(failure))
        } else {
            log::debug!("TLS connection failed: {e}");
            ReadError::Failed(CloseReason::Error)
        }
    }

    /// Takes as much of `plaintext` as rustls's send buffer allows (all of
    /// it after a flush), encrypted but not sent: see
    /// [`write_tls_now`](Self::write_tls_now).
    pub(crate) fn buffer(&mut self, plaintext: &[u8]) -> usize {
        match &mut self.state {
            State::Active(conn) => conn.writer().write(plaintext).unwrap_or(0),
            // The handler runs after plaintext came, so after the handshake.
            State::Pending(_) => 0,
        }
    }

    /// Whether encrypted bytes wait to be sent.
    pub(crate) fn wants_write(&self) -> bool {
        self.connection().is_some_and(|conn| conn.wants_write())
    }

    /// One write of waiting encrypted bytes to the socket, without waiting
    /// for room in its buffer (`WouldBlock` when there is none).
    pub(crate) fn write_tls_now(&mut self, stream: &TcpStream) -> io::Result<usize> {
        match &mut self.state {
            State::Active(conn) => conn.write_tls(&mut Now(stream)),
            State::Pending(_) => Ok(0),
        }
    }

    /// Ends the connection without blocking: `reply` (encrypted, if the
    /// handshake completed) and `close_notify`, whatever the socket buffer
    /// takes of them, then the socket's shutdown.
    pub(crate) fn end(&mut self, stream: &TcpStream, reply: &[u8]) {
        if let State::Active(conn) = &mut self.state {
            if !conn.is_handshaking() {
                if !reply.is_empty() {
                    let _ = conn.writer().write_all(reply);
                }
                conn.send_close_notify();
            }
            let mut now = Now(stream);
            while conn.wants_write() {
                match conn.write_tls(&mut now) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
    }
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaking", &self.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.counters.current.fetch_sub(1, Relaxed);
    }
}

/// Plaintext rustls holds (`state` is its latest processing), read into
/// `buf`, and whether to read again without waiting: more plaintext,
/// `socket_full`, or the client's `close_notify` behind it (no later event
/// would announce that end).
fn plaintext(
    conn: &mut ServerConnection,
    buf: &mut [u8],
    state: &IoState,
    socket_full: bool,
) -> Option<(Got, bool)> {
    let held = state.plaintext_bytes_to_read();
    if held == 0 {
        return None;
    }
    let n = conn.reader().read(buf).ok()?;
    Some((
        Got::Data(n),
        socket_full || n < held || state.peer_has_closed(),
    ))
}

/// Sends what rustls has to send, each write within the socket's timeout.
fn flush(conn: &mut ServerConnection, mut stream: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends what rustls has to send as far as the socket takes it without
/// waiting.
fn flush_now(conn: &mut ServerConnection, stream: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut Now(stream)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a read error means "try later" rather than a broken socket.
fn is_retry(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted || crate::socket::is_timeout(e)
}

/// The [`HandshakeFailures`](crate::HandshakeFailures) field a rustls error
/// counts in.
fn failure_of(e: &rustls::Error) -> Failure {
    use rustls::Error as E;
    match e {
        E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::InvalidMessage(_)
        | E::PeerMisbehaved(_)
        | E::DecryptError
        | E::PeerSentOversizedRecord
        | E::InvalidEncryptedClientHello(_) => Failure::Protocol,
        E::PeerIncompatible(_) | E::NoApplicationProtocol | E::UnsupportedNameType => {
            Failure::Incompatible
        }
        // rustls's words when no certificate resolves for the client's SNI.
        E::General(message) if message.contains("no server certificate") => Failure::Incompatible,
        E::NoCertificatesPresented | E::InvalidCertificate(_) | E::InvalidCertRevocationList(_) => {
            Failure::Certificate
        }
        E::AlertReceived(_) => Failure::Alert,
        _ => Failure::Other,
    }
}

/// The socket as rustls reads it, after any early bytes: waiting or not,
/// and noting whether a read filled the space offered.
struct Socket<'a> {
    stream: &'a TcpStream,
    /// Read first, without waiting; then the socket is read again.
    early: &'a mut Vec<u8>,
    wait: bool,
    full: bool,
}

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.early.is_empty() {
            let n = buf.len().min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            self.full = true;
            return Ok(n);
        }
        let n = if self.wait {
            self.wait = false; // one wait per read
            (&*self.stream).read(buf)?
        } else {
            read_now(self.stream, buf)?
        };
        self.full = n == buf.len();
        Ok(n)
    }
}

/// The socket written without waiting.
struct Now<'a>(&'a TcpStream);

impl Write for Now<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_now(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_land_in_their_failure() {
        use rustls::{AlertDescription, Error as E, PeerIncompatible};
        let cases = [
            (E::DecryptError, Failure::Protocol),
            (
                E::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
                Failure::Incompatible,
            ),
            (
                E::General("no server certificate chain resolved".into()),
                Failure::Incompatible,
            ),
            (E::NoCertificatesPresented, Failure::Certificate),
            (
                E::AlertReceived(AlertDescription::UnknownCA),
                Failure::Alert,
            ),
            (E::FailedToGetRandomBytes, Failure::Other),
        ];
        for (e, want) in cases {
            assert_eq!(failure_of(&e), want, "{e}");
        }
    }
}
