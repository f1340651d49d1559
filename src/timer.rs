//! A one-shot timer with nanosecond precision (Linux's `timerfd`), for the
//! manager thread's sub-millisecond waits: `epoll_wait`, and so `mio`,
//! rounds its timeout up to whole milliseconds, which would make a
//! `grow_after` of 250 µs a millisecond. Elsewhere there is none:
//! kqueue (macOS, the BSDs) takes mio's timeout to the nanosecond. On
//! Windows mio rounds a timeout up to whole milliseconds, and the system
//! timer's tick (about 15.6 ms by default) may make it longer: a
//! `grow_after` below that is not honoured there.

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use linux::FineTimer;

/// Where no fine timer is needed: none is ever made.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[derive(Debug)]
pub(crate) enum FineTimer {}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl FineTimer {
    /// None: the poll's own timeout is fine enough here.
    pub(crate) fn new() -> std::io::Result<Option<FineTimer>> {
        Ok(None)
    }

    pub(crate) fn register(
        &self,
        _registry: &mio::Registry,
        _token: mio::Token,
    ) -> std::io::Result<()> {
        match *self {}
    }

    pub(crate) fn deregister(&self, _registry: &mio::Registry) -> std::io::Result<()> {
        match *self {}
    }

    pub(crate) fn arm(&mut self, _after: std::time::Duration) -> std::io::Result<()> {
        match *self {}
    }

    pub(crate) fn disarm(&mut self) -> std::io::Result<()> {
        match *self {}
    }

    pub(crate) fn clear(&self) {
        match *self {}
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
    use std::time::Duration;

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create,
        timerfd_settime,
    };

    /// A `timerfd` that becomes readable when armed time runs out.
    #[derive(Debug)]
    pub(crate) struct FineTimer {
        fd: OwnedFd,
        armed: bool,
    }

    impl FineTimer {
        /// A disarmed timer (always one, here).
        pub(crate) fn new() -> io::Result<Option<FineTimer>> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            Ok(Some(FineTimer { fd, armed: false }))
        }

        /// Registers it in `registry` (readable at each expiry), under
        /// `token`.
        pub(crate) fn register(
            &self,
            registry: &mio::Registry,
            token: mio::Token,
        ) -> io::Result<()> {
            let fd: RawFd = self.fd.as_raw_fd();
            registry.register(
                &mut mio::unix::SourceFd(&fd),
                token,
                mio::Interest::READABLE,
            )
        }

        /// Leaves `registry`.
        pub(crate) fn deregister(&self, registry: &mio::Registry) -> io::Result<()> {
            let fd: RawFd = self.fd.as_raw_fd();
            registry.deregister(&mut mio::unix::SourceFd(&fd))
        }

        /// Fires once, `after` from now (a zero `after` fires at once).
        pub(crate) fn arm(&mut self, after: Duration) -> io::Result<()> {
            // A zero `it_value` would disarm: the least wait is a nanosecond.
            let after = after.max(Duration::from_nanos(1));
            self.set(after)?;
            self.armed = true;
            Ok(())
        }

        /// Stops it, if armed, and clears an expiry not yet read.
        pub(crate) fn disarm(&mut self) -> io::Result<()> {
            if self.armed {
                self.set(Duration::ZERO)?;
                self.armed = false;
                self.clear();
            }
            Ok(())
        }

        fn set(&self, value: Duration) -> io::Result<()> {
            let spec = Itimerspec {
                it_interval: rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: rustix::time::Timespec {
                    tv_sec: value.as_secs() as i64,
                    tv_nsec: i64::from(value.subsec_nanos()),
                },
            };
            timerfd_settime(self.fd.as_fd(), TimerfdTimerFlags::empty(), &spec)?;
            Ok(())
        }

        /// Reads the expiry count, so that the descriptor is readable again
        /// only at the next expiry.
        pub(crate) fn clear(&self) {
            let mut buf = [0u8; 8];
            // Nothing to read (`EAGAIN`) is fine.
            let _ = rustix::io::read(self.fd.as_fd(), &mut buf);
        }
    }
}
