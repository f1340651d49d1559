//! TLS, behind the `tls` cargo feature: [`TlsConfig`] (the certificate and
//! rustls's server configuration) and [`TlsConn`], one connection's rustls
//! state between and during reads.
//!
//! Without the feature `TlsConn` is an empty enum: every `Option<TlsConn>`
//! is `None`, and the code that serves TLS compiles to nothing.

#[cfg(feature = "tls")]
mod config;
#[cfg(feature = "tls")]
mod conn;
#[cfg(not(feature = "tls"))]
mod off;

#[cfg(feature = "tls")]
pub use config::TlsConfig;
#[cfg(feature = "tls")]
pub(crate) use conn::TlsConn;
#[cfg(not(feature = "tls"))]
pub(crate) use off::TlsConn;

use std::io;

use crate::stats::{CloseReason, Failure};

/// What one read of a TLS connection brought.
#[derive(Debug)]
pub(crate) enum Got {
    /// This many plaintext bytes, at the start of the buffer.
    Data(usize),
    /// Bytes that advanced the handshake or a record, no plaintext yet.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Progress,
    /// The client closed its side (its `close_notify`, or the socket's end
    /// of file after the handshake).
    Eof,
}

/// Why a read of a TLS connection failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket's: a timeout (`WouldBlock`) is the caller's to judge.
    Io(io::Error),
    /// The handshake failed (the alert sent): close as
    /// [`CloseReason::Handshake`] and count the cause, unless a stop
    /// explains it. `None`: it timed out (writing its replies).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Handshake(Option<Failure>),
    /// TLS failed after the handshake (a bad record, a reply that could not
    /// be sent): close with this reason.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Failed(CloseReason),
}
