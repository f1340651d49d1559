//! A connection's socket as the pool holds it: the [`TcpStream`] handlers
//! see (through `Deref`), and on Windows also its registration in the
//! workers' shared poller.
//!
//! On Unix a registration names the descriptor itself (mio's `SourceFd`),
//! so a [`Stream`] is the `TcpStream` and nothing more. Windows has no such
//! thing: mio registers only its own socket types there (AFD polling, one
//! poll request per socket). So the first time a connection is armed, its
//! `Stream` duplicates the socket handle into a `mio::net::TcpStream` that
//! serves only as the registration: every read and write goes through the
//! `TcpStream`, and the duplicate closes with it. One more handle per
//! polled connection is the cost, on Windows only.

use std::io;
use std::net::TcpStream;
use std::ops::Deref;

/// A connection's socket: a `TcpStream`, plus its shared poller
/// registration on Windows (see the module's documentation).
#[derive(Debug)]
pub(crate) struct Stream {
    std: TcpStream,
    /// The duplicate registered in the shared poller, made at the first
    /// arm; a lock because any thread may arm a parked connection.
    #[cfg(windows)]
    registration: parking_lot::Mutex<Option<mio::net::TcpStream>>,
}

impl Stream {
    pub(crate) fn new(std: TcpStream) -> Self {
        Stream {
            std,
            #[cfg(windows)]
            registration: parking_lot::Mutex::new(None),
        }
    }

    /// The `TcpStream` back (the registration, if any, is dropped: its
    /// handle closes, the socket stays open).
    pub(crate) fn into_std(self) -> TcpStream {
        self.std
    }

    /// Runs `f` on the registration source, made on first use (Windows).
    ///
    /// # Errors
    ///
    /// The socket handle cannot be duplicated, or `f`'s.
    #[cfg(windows)]
    pub(crate) fn with_source<R>(
        &self,
        f: impl FnOnce(&mut mio::net::TcpStream) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut registration = self.registration.lock();
        let source = match &mut *registration {
            Some(source) => source,
            None => registration.insert(mio::net::TcpStream::from_std(self.std.try_clone()?)),
        };
        f(source)
    }

    /// Runs `f` on the registration source: the descriptor itself (Unix).
    ///
    /// # Errors
    ///
    /// `f`'s.
    #[cfg(unix)]
    #[cfg_attr(all(test, loom), allow(dead_code))] // the models' poller is a stand-in
    pub(crate) fn with_source<R>(
        &self,
        f: impl FnOnce(&mut mio::unix::SourceFd<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        use std::os::fd::AsRawFd;
        let fd = self.std.as_raw_fd();
        f(&mut mio::unix::SourceFd(&fd))
    }
}

impl Deref for Stream {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.std
    }
}

/// A number that tells sockets apart while they are open (their descriptor,
/// or handle on Windows), to spread connections over shards.
pub(crate) fn key(stream: &TcpStream) -> usize {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        usize::try_from(stream.as_raw_fd()).unwrap_or(0)
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawSocket;
        // Handles are multiples of 4.
        (stream.as_raw_socket() >> 2) as usize
    }
}
