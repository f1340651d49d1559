//! A worker's bell: what a [`Handle`](crate::Handle) rings to wake the
//! worker waiting for its connection in a blocking wait
//! ([`wait_socket`](crate::epoll::wait_socket)): dedicated mode, or a
//! polled worker that lingers. A descriptor that becomes readable when
//! rung: an eventfd where there is one (Linux, FreeBSD: one descriptor per
//! worker, which dedicated mode has per connection), else a pipe (macOS,
//! the other BSDs), and on Windows, where `WSAPoll` waits for sockets only,
//! a UDP socket on the loopback interface that sends to itself. All are
//! non-blocking: a ring that finds the bell full finds it rung already.

use std::io;
#[cfg(unix)]
use std::io::{Read, Write};

use rustix::fd::{AsFd, BorrowedFd};

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub(crate) use self::EventBell as Bell;
#[cfg(all(
    unix,
    not(any(target_os = "linux", target_os = "android", target_os = "freebsd"))
))]
pub(crate) use self::PipeBell as Bell;
#[cfg(windows)]
pub(crate) use self::UdpBell as Bell;

/// An eventfd: rings add to its count, a read takes the count.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[derive(Debug)]
pub(crate) struct EventBell {
    fd: std::os::fd::OwnedFd,
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
impl EventBell {
    pub(crate) fn new() -> io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(EventBell { fd })
    }

    /// Rings it: the next (or current) wait returns.
    pub(crate) fn ring(&self) {
        if let Err(e) = rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            log::error!("cannot ring a worker's bell: {e}");
        }
    }

    /// Silences it (before the worker looks at what rang it).
    pub(crate) fn clear(&self) {
        let mut buf = [0; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }

    /// The descriptor to wait on: readable once rung.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How many rings wait, taken (the tests' view of it).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn rings_for_tests(&self) -> usize {
        let mut buf = [0; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(_) => u64::from_ne_bytes(buf) as usize,
            Err(_) => 0,
        }
    }
}

/// A pipe: each ring writes a byte, a clear reads them all.
#[cfg(unix)]
#[derive(Debug)]
#[cfg_attr(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    allow(dead_code)
)]
pub(crate) struct PipeBell {
    rx: mio::unix::pipe::Receiver,
    tx: mio::unix::pipe::Sender,
}

#[cfg(unix)]
#[cfg_attr(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    allow(dead_code)
)]
impl PipeBell {
    pub(crate) fn new() -> io::Result<Self> {
        let (tx, rx) = mio::unix::pipe::new()?;
        Ok(PipeBell { rx, tx })
    }

    /// Rings it: the next (or current) wait returns.
    pub(crate) fn ring(&self) {
        match (&self.tx).write(&[1]) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => log::error!("cannot ring a worker's bell: {e}"),
        }
    }

    /// Silences it (before the worker looks at what rang it).
    pub(crate) fn clear(&self) {
        let mut buf = [0; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n == buf.len()) {}
    }

    /// The descriptor to wait on: readable once rung.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }

    /// How many rings wait, taken (the tests' view of it).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn rings_for_tests(&self) -> usize {
        let mut buf = [0; 64];
        (&self.rx).read(&mut buf).unwrap_or(0)
    }
}

/// A UDP socket bound to the loopback interface and connected to itself:
/// each ring sends it a datagram, a clear takes them all.
#[cfg(windows)]
#[derive(Debug)]
pub(crate) struct UdpBell {
    socket: std::net::UdpSocket,
}

#[cfg(windows)]
impl UdpBell {
    pub(crate) fn new() -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        socket.connect(socket.local_addr()?)?;
        socket.set_nonblocking(true)?;
        Ok(UdpBell { socket })
    }

    /// Rings it: the next (or current) wait returns.
    pub(crate) fn ring(&self) {
        match self.socket.send(&[1]) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => log::error!("cannot ring a worker's bell: {e}"),
        }
    }

    /// Silences it (before the worker looks at what rang it).
    pub(crate) fn clear(&self) {
        let mut buf = [0; 8];
        while self.socket.recv(&mut buf).is_ok() {}
    }

    /// The socket to wait on: readable once rung.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// How many rings wait, taken (the tests' view of it).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn rings_for_tests(&self) -> usize {
        let mut buf = [0; 8];
        std::iter::from_fn(|| self.socket.recv(&mut buf).ok()).count()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::epoll::readable_now as rung;

    /// Both kinds, whichever this platform uses: silent until rung, rung
    /// until cleared, and a clear takes any number of rings.
    macro_rules! bell_tests {
        ($name:ident, $bell:ty) => {
            #[test]
            fn $name() {
                let bell = <$bell>::new().unwrap();
                assert!(!rung(bell.fd()));
                bell.ring();
                assert!(rung(bell.fd()));
                assert!(rung(bell.fd()), "still rung until cleared");
                for _ in 0..100 {
                    bell.ring();
                }
                bell.clear();
                assert!(!rung(bell.fd()));
                bell.ring();
                assert_eq!(bell.rings_for_tests(), 1);
                assert!(!rung(bell.fd()));
            }
        };
    }

    #[cfg(unix)]
    bell_tests!(a_pipe_bell_rings_until_cleared, PipeBell);
    #[cfg(windows)]
    bell_tests!(a_udp_bell_rings_until_cleared, UdpBell);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    bell_tests!(an_eventfd_bell_rings_until_cleared, EventBell);
}
