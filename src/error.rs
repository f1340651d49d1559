//! Every error type of the crate.
//!
//! An error that refuses a value gives it back, as crossbeam's `TrySendError`
//! does: a stream that [`Manager::put`](crate::Manager::put) cannot serve comes
//! back inside [`PutError`] so that the caller can reply and close it.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::TcpStream;

/// Why [`Manager::put`](crate::Manager::put) refused a stream; the stream is
/// inside, untouched, for the caller to answer and close.
///
/// ```no_run
/// # use std::io::Write;
/// # use std::net::TcpListener;
/// # use pool_manager::{Config, Conn, Manager, PutError};
/// # let manager = Manager::new(Config::default(), |_: &mut Conn<'_>, _: &[u8]| Ok(())).unwrap();
/// # let listener = TcpListener::bind("127.0.0.1:0").unwrap();
/// for stream in listener.incoming().flatten() {
///     if let Err(refused) = manager.put(stream) {
///         let mut stream = refused.into_inner();
///         let _ = stream.write_all(b"ERROR_SERVER_BUSY\n");
///     }
/// }
/// ```
#[non_exhaustive]
pub enum PutError {
    /// Every worker is busy, the pool is at `max_workers` and the queue (if
    /// any) is full (dedicated mode); in polled mode, the poller refused the
    /// stream. Also when the system refused the thread that would have
    /// served it: in dedicated mode once the queue is full too; in polled
    /// mode whenever no poller could be started below `max_workers`.
    Full(TcpStream),
    /// The manager is not running (never started, stopping, or stopped).
    Stopped(TcpStream),
    /// The PROXY protocol is on and the stream's peer is not a trusted
    /// balancer ([`Untrusted::Refuse`](crate::Untrusted::Refuse)): close
    /// it without a reply.
    Untrusted(TcpStream),
}

impl PutError {
    /// The refused stream.
    pub fn into_inner(self) -> TcpStream {
        match self {
            PutError::Full(s) | PutError::Stopped(s) | PutError::Untrusted(s) => s,
        }
    }

    /// Whether the pool was full (as opposed to stopped).
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }

    /// Whether the manager was not running.
    pub fn is_stopped(&self) -> bool {
        matches!(self, PutError::Stopped(_))
    }

    /// Whether the stream came from a peer the PROXY protocol settings do
    /// not trust, and were set to refuse
    /// ([`Untrusted::Refuse`](crate::Untrusted::Refuse)).
    pub fn is_untrusted(&self) -> bool {
        matches!(self, PutError::Untrusted(_))
    }
}

impl fmt::Debug for PutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Stopped(_) => f.write_str("Stopped(..)"),
            PutError::Untrusted(_) => f.write_str("Untrusted(..)"),
        }
    }
}

impl fmt::Display for PutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("can't put: the pool is busy"),
            PutError::Stopped(_) => f.write_str("can't put: the manager is not running"),
            PutError::Untrusted(_) => {
                f.write_str("can't put: the peer is not a trusted PROXY protocol balancer")
            }
        }
    }
}

impl StdError for PutError {}

/// Why [`Handle::send`](crate::Handle::send) refused bytes; they are given
/// back.
///
/// ```
/// use pool_manager::SendError;
///
/// let refused: SendError<Vec<u8>> = SendError::Full(b"tick".to_vec());
/// assert!(refused.is_full());
/// assert_eq!(refused.into_inner(), b"tick");
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<T> {
    /// The connection has closed, or a close was asked for: nothing more
    /// will be written to it.
    Closed(T),
    /// The bytes waiting for the connection would pass
    /// [`Config::max_outbound_bytes`](crate::Config::max_outbound_bytes):
    /// its client reads slower than it is sent to.
    Full(T),
}

impl<T> SendError<T> {
    /// The refused bytes.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Closed(t) | SendError::Full(t) => t,
        }
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, SendError::Closed(_))
    }

    /// Whether the connection's outbound bound was reached.
    pub fn is_full(&self) -> bool {
        matches!(self, SendError::Full(_))
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed(_) => f.write_str("Closed(..)"),
            SendError::Full(_) => f.write_str("Full(..)"),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed(_) => f.write_str("can't send: the connection is closed"),
            SendError::Full(_) => {
                f.write_str("can't send: the connection's outbound bytes are at their bound")
            }
        }
    }
}

impl<T> StdError for SendError<T> {}

/// A rule of a valid [`Config`](crate::Config) that a configuration breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_workers` is 0: nothing could ever be served.
    ZeroMaxWorkers,
    /// `max_workers` is above [`MAX_WORKERS`](crate::MAX_WORKERS).
    TooManyWorkers {
        /// The value given.
        max: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// `min_workers` is above `max_workers`.
    MinAboveMax {
        /// `min_workers` given.
        min: usize,
        /// `max_workers` given.
        max: usize,
    },
    /// `queue_capacity` is above [`MAX_QUEUE_CAPACITY`](crate::MAX_QUEUE_CAPACITY).
    QueueTooLarge {
        /// The value given.
        capacity: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// `buffer_size` is outside [`MIN_BUFFER_SIZE`](crate::MIN_BUFFER_SIZE)
    /// ..= [`MAX_BUFFER_SIZE`](crate::MAX_BUFFER_SIZE).
    BufferSize {
        /// The value given.
        size: usize,
        /// The smallest accepted.
        min: usize,
        /// The largest accepted.
        max: usize,
    },
    /// `backlog` is 0 or above [`MAX_BACKLOG`](crate::MAX_BACKLOG).
    Backlog {
        /// The value given.
        backlog: u32,
        /// The largest accepted.
        max: u32,
    },
    /// A size that must be non-zero is zero.
    ZeroSize {
        /// The field's name.
        field: &'static str,
    },
    /// A duration that must be non-zero is zero.
    ZeroDuration {
        /// The field's name.
        field: &'static str,
    },
    /// `pollers` is 0 or above [`MAX_WORKERS`](crate::MAX_WORKERS).
    Pollers {
        /// The value given.
        pollers: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// A field that this platform does not support is set.
    Unsupported {
        /// The field's name.
        field: &'static str,
    },
    /// The TLS configuration accepts 0-RTT early data
    /// (`rustls::ServerConfig::max_early_data_size` > 0): rustls would
    /// acknowledge requests the handler never sees. Not supported.
    TlsEarlyData,
    /// [`ProxyProtocol::trusted`](crate::ProxyProtocol::trusted) is empty:
    /// every connection would be refused (or none would send a header).
    ProxyNoTrusted,
    /// [`ProxyProtocol::max_header_size`](crate::ProxyProtocol::max_header_size)
    /// is outside `min..=max` (`max`: the smaller of
    /// [`MAX_PROXY_HEADER`](crate::MAX_PROXY_HEADER) and `buffer_size`).
    ProxyHeaderSize {
        /// The value given.
        size: usize,
        /// The smallest accepted.
        min: usize,
        /// The largest accepted.
        max: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroMaxWorkers => f.write_str("max_workers must be at least 1"),
            ConfigError::TooManyWorkers { max, limit } => {
                write!(f, "max_workers is {max}, above the limit of {limit}")
            }
            ConfigError::MinAboveMax { min, max } => {
                write!(f, "min_workers ({min}) is above max_workers ({max})")
            }
            ConfigError::QueueTooLarge { capacity, limit } => {
                write!(
                    f,
                    "queue_capacity is {capacity}, above the limit of {limit}"
                )
            }
            ConfigError::BufferSize { size, min, max } => {
                write!(f, "buffer_size is {size}, outside {min}..={max} bytes")
            }
            ConfigError::Backlog { backlog, max } => {
                write!(f, "backlog is {backlog}, outside 1..={max}")
            }
            ConfigError::ZeroSize { field } | ConfigError::ZeroDuration { field } => {
                write!(f, "{field} must not be zero")
            }
            ConfigError::Pollers { pollers, limit } => {
                write!(f, "pollers is {pollers}, outside 1..={limit}")
            }
            ConfigError::Unsupported { field } => {
                write!(f, "{field} is not supported on this platform")
            }
            ConfigError::TlsEarlyData => f.write_str(
                "tls: the rustls ServerConfig accepts early data (max_early_data_size > 0), \
                 which the pool never reads: set it to 0",
            ),
            ConfigError::ProxyNoTrusted => {
                f.write_str("proxy_protocol.trusted is empty: name the networks of the balancers")
            }
            ConfigError::ProxyHeaderSize { size, min, max } => write!(
                f,
                "proxy_protocol.max_header_size is {size}, outside {min}..={max} \
                 (at most buffer_size)"
            ),
        }
    }
}

impl StdError for ConfigError {}

/// Why a [`TlsConfig`](crate::TlsConfig) could not be made from PEM.
#[cfg(feature = "tls")]
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not valid PEM.
    Pem {
        /// The file, if the PEM came from one.
        path: Option<std::path::PathBuf>,
        /// What it should hold: `"certificate"` or `"private key"`.
        what: &'static str,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate chain holds no certificate.
    NoCertificates {
        /// The file, if the PEM came from one.
        path: Option<std::path::PathBuf>,
    },
    /// The key file holds no private key.
    NoKey {
        /// The file, if the PEM came from one.
        path: Option<std::path::PathBuf>,
    },
    /// The private key is not the key of the chain's first certificate.
    KeyMismatch {
        /// The certificate file, if the PEM came from one.
        cert: Option<std::path::PathBuf>,
    },
    /// rustls refused the certificate or key (an unsupported key type, …).
    Rustls(rustls::Error),
}

#[cfg(feature = "tls")]
impl TlsError {
    /// Names the files an error about PEM text came from.
    pub(crate) fn at(self, cert: &std::path::Path, key: &std::path::Path) -> Self {
        match self {
            TlsError::Pem { what, source, .. } => TlsError::Pem {
                path: Some(if what == "certificate" { cert } else { key }.to_path_buf()),
                what,
                source,
            },
            TlsError::NoCertificates { .. } => TlsError::NoCertificates {
                path: Some(cert.to_path_buf()),
            },
            TlsError::NoKey { .. } => TlsError::NoKey {
                path: Some(key.to_path_buf()),
            },
            TlsError::KeyMismatch { .. } => TlsError::KeyMismatch {
                cert: Some(cert.to_path_buf()),
            },
            e => e,
        }
    }
}

#[cfg(feature = "tls")]
impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = |path: &Option<std::path::PathBuf>| match path {
            Some(p) => format!(" in {}", p.display()),
            None => String::new(),
        };
        match self {
            // The causes of these two are their `source()`.
            TlsError::Read { path, .. } => write!(f, "cannot read {}", path.display()),
            TlsError::Pem { path, what, source } => {
                write!(f, "bad PEM{} (expected a {what}): {source}", file(path))
            }
            TlsError::NoCertificates { path } => {
                write!(f, "no certificate found{}", file(path))
            }
            TlsError::NoKey { path } => write!(f, "no private key found{}", file(path)),
            TlsError::KeyMismatch { cert } => write!(
                f,
                "the private key does not match the certificate{}",
                file(cert)
            ),
            TlsError::Rustls(_) => f.write_str("rustls refused the certificate or key"),
        }
    }
}

#[cfg(feature = "tls")]
impl StdError for TlsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::Rustls(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a lifecycle call ([`start`](crate::Manager::start),
/// [`stop`](crate::Manager::stop)) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// [`start`](crate::Manager::start) on a running manager.
    AlreadyRunning,
    /// [`stop`](crate::Manager::stop) on a manager that is not running.
    NotRunning,
    /// [`start`](crate::Manager::start) or [`stop`](crate::Manager::stop)
    /// while another thread's stop is under way.
    Stopping,
    /// [`stop`](crate::Manager::stop) from one of this manager's own worker
    /// threads (a handler), which would wait for itself forever.
    StopFromWorker,
    /// The operating system refused to start a thread.
    Spawn(io::Error),
    /// Another system call failed (e.g. setting up a server's poller).
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyRunning => f.write_str("the manager is already running"),
            Error::NotRunning => f.write_str("the manager is not running"),
            Error::Stopping => f.write_str("the manager is stopping"),
            Error::StopFromWorker => {
                f.write_str("stop called from one of the manager's own workers")
            }
            // The cause is the `source()`: an error chain prints it once.
            Error::Spawn(_) => f.write_str("could not start a thread"),
            Error::Io(_) => f.write_str("a system call failed"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Spawn(e) | Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error chain prints each cause once: `Display` names what failed,
    /// `source()` gives the cause.
    #[test]
    fn io_errors_are_a_source_not_part_of_the_message() {
        for error in [
            Error::Spawn(io::Error::from(io::ErrorKind::OutOfMemory)),
            Error::Io(io::Error::from(io::ErrorKind::PermissionDenied)),
        ] {
            let cause = error.source().expect("a source").to_string();
            assert!(!error.to_string().contains(&cause), "{error}: {cause}");
        }
        assert!(Error::NotRunning.source().is_none());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_file_that_cannot_be_read_is_named_and_its_cause_is_the_source() {
        let error = TlsError::Read {
            path: "cert.pem".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let cause = error.source().expect("a source").to_string();
        assert_eq!(error.to_string(), "cannot read cert.pem");
        assert!(!cause.is_empty());
    }
}
