//! The workers' shared poller: one [`mio::Poll`] (epoll on Linux, kqueue
//! on macOS and the BSDs) that every connection waiting for its client is
//! registered in, and that the polling workers take turns waiting in.
//!
//! - Connections are registered once, edge-triggered for reading (mio's
//!   only mode): each arrival of bytes after the last report is reported
//!   once, to one worker (on Windows, until the next re-arm: every park
//!   re-arms there). The parked table's state word (`park.rs`) keeps a
//!   connection on one worker at a time; a re-arm (a re-registration, under
//!   a new token or the same) reports bytes already waiting at once.
//! - One worker at a time waits in the instance (the searcher, holding it
//!   behind a lock) and takes up to [`BATCH`] events per wait; the pool
//!   shares the ones it does not serve at once with the other workers (see
//!   `PollerHandle::ready`), so a handler that blocks holds its own
//!   connection and nothing else.
//! - One [`mio::Waker`] wakes the searcher: a nudge, or the stop, which is
//!   a flag that every later wait sees before it waits.
//! - Below the poller: a worker's blocking [`wait_socket`] (for its
//!   socket or its [`Bell`]), and the reads and writes that do not wait on
//!   a blocking socket.

// Under the model checker the real instance is left out (see `mocked`).
#![cfg_attr(all(test, loom), allow(dead_code, unused_imports))]

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags, Timespec, poll};

pub(crate) use crate::bell::Bell;
use crate::stream::Stream;

/// The waker's token (a nudge, or the stop if [`Epoll::stopped`] is up):
/// connections' tokens stay below a quarter of the range (`park.rs`).
pub(crate) const WAKER: mio::Token = mio::Token(usize::MAX);
/// Set in a token taken from an event that reported the peer's shutdown,
/// a hang-up or an error: the connection must be read until it ends, for
/// no later event will announce the end of file behind its last bytes.
/// Connections' tokens stay below it.
pub(crate) const HUP: u64 = 1 << 62;

/// Events a poller takes per wait: the first it serves, the rest go to the
/// pollers' shared ready list (`PollerHandle::ready`), where any poller
/// takes them. More per wait means fewer system calls.
pub(crate) const BATCH: usize = 16;

/// The signals one batch brought besides connections.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Signals {
    /// The stop signal is up.
    pub(crate) stop: bool,
    /// A nudge: one waiter is asked to look at the pool's state.
    pub(crate) nudge: bool,
}

/// How [`Epoll::arm`] treats a connection's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arm {
    /// Not registered yet (`EPOLL_CTL_ADD` on Linux).
    Add,
    /// Registered before (`EPOLL_CTL_MOD`, which re-arms the edge), or
    /// disarmed since (registered again).
    Rearm,
}

/// What an armed connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Bytes to read (and its end).
    Read,
    /// Writability too: bytes wait for its socket.
    ReadWrite,
}

// Under the model checker, a poller whose readiness the model drives (a
// real wait would block loom's one OS thread).
#[cfg(all(test, loom))]
mod mocked;
#[cfg(all(test, loom))]
pub(crate) use mocked::Epoll;

/// The shared poller: a [`mio::Poll`] (epoll on Linux, kqueue on the
/// BSDs and macOS) that the searcher holds while it waits, its registry
/// (shared: any thread arms and disarms), and one waker for the nudge and
/// the stop.
#[cfg(not(all(test, loom)))]
#[derive(Debug)]
pub(crate) struct Epoll {
    /// The instance and its events: held by the one poller that waits in
    /// it (the searcher), and for a moment by the sysmon's
    /// [`take_ready`](Self::take_ready).
    poll: Mutex<Instance>,
    registry: mio::Registry,
    waker: mio::Waker,
    /// The stop signal: once up, every wait returns at once.
    stopped: AtomicBool,
}

/// What the poller lock holds.
#[cfg(not(all(test, loom)))]
#[derive(Debug)]
struct Instance {
    poll: mio::Poll,
    events: mio::Events,
    /// Windows: what [`Epoll::has_ready`] took to see whether anything was
    /// ready (an IOCP cannot be looked at without taking from it), served
    /// by the next wait or take; whether it took a nudge.
    #[cfg(windows)]
    peeked: (Vec<u64>, bool),
}

/// The token an event names (a connection's), marked with [`HUP`] if it
/// reported an end.
#[cfg(not(all(test, loom)))]
fn token_of(event: &mio::event::Event) -> u64 {
    let token = event.token().0 as u64;
    if event.is_read_closed() || event.is_error() {
        token | HUP
    } else {
        token
    }
}

#[cfg(not(all(test, loom)))]
impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(&registry, WAKER)?;
        Ok(Epoll {
            poll: Mutex::new(Instance {
                poll,
                events: mio::Events::with_capacity(BATCH),
                #[cfg(windows)]
                peeked: (Vec::new(), false),
            }),
            registry,
            waker,
            stopped: AtomicBool::new(false),
        })
    }

    /// Registers `stream` for readable events reported under `token`, or
    /// re-arms it: either reports bytes already waiting. With
    /// [`Interest::ReadWrite`], writability too: reported at once if its
    /// socket has room, and again whenever room frees up after a write
    /// found none. Edge-triggered: each arrival after the last report is
    /// reported once — on Windows, only the first after each arm (the pool
    /// re-arms at each park there: `pool/parking.rs`).
    pub(crate) fn arm(
        &self,
        stream: &Stream,
        token: u64,
        arm: Arm,
        interest: Interest,
    ) -> io::Result<()> {
        let token = mio::Token(token as usize);
        let interest = match interest {
            Interest::Read => mio::Interest::READABLE,
            Interest::ReadWrite => mio::Interest::READABLE | mio::Interest::WRITABLE,
        };
        stream.with_source(|source| match arm {
            Arm::Add => self.registry.register(source, token, interest),
            // A disarmed connection left the instance (`disarm`).
            Arm::Rearm => match self.registry.reregister(source, token, interest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.registry.register(source, token, interest)
                }
                done => done,
            },
        })
    }

    /// Stops reporting `stream`'s bytes (a worker is about to wait for
    /// them in a blocking read): it leaves the instance, and the next
    /// [`arm`](Self::arm) registers it again.
    pub(crate) fn disarm(&self, stream: &Stream) -> io::Result<()> {
        stream.with_source(|source| self.registry.deregister(source))
    }

    /// Waits (`None`: without a timeout) for events, and appends the tokens
    /// of up to [`BATCH`] ready connections to `tokens`. One thread at a
    /// time waits in the instance (the searcher); another that calls it
    /// meanwhile waits for the first to return.
    pub(crate) fn wait_batch(
        &self,
        timeout: Option<Duration>,
        tokens: &mut Vec<u64>,
    ) -> io::Result<Signals> {
        let mut signals = Signals::default();
        let mut guard = self.poll.lock();
        // Under the lock: a stop raised while another thread waited woke
        // that one only.
        if self.stopped.load(SeqCst) {
            signals.stop = true;
            return Ok(signals);
        }
        #[cfg(windows)]
        if guard.take_peeked(tokens, &mut signals) {
            return Ok(signals);
        }
        let Instance { poll, events, .. } = &mut *guard;
        match poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == WAKER {
                signals.nudge = true;
            } else {
                tokens.push(token_of(event));
            }
        }
        signals.stop = self.stopped.load(SeqCst);
        Ok(signals)
    }

    /// Takes, without waiting, up to `max` ready connections' tokens; none
    /// while a poller waits in the instance (that one takes them).
    pub(crate) fn take_ready(&self, max: usize) -> io::Result<Vec<u64>> {
        let Some(mut guard) = self.poll.try_lock() else {
            return Ok(Vec::new());
        };
        // A nudge taken here is dropped, as the sysmon moves the work it
        // announced to the queue; the stop is a flag, and stays up.
        let mut tokens = Vec::new();
        #[cfg(windows)]
        guard.take_peeked(&mut tokens, &mut Signals::default());
        let mut events = mio::Events::with_capacity(max);
        match guard.poll.poll(&mut events, Some(Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(tokens),
            Err(e) => return Err(e),
        }
        drop(guard);
        tokens.extend(
            events
                .iter()
                .filter(|event| event.token() != WAKER)
                .map(token_of),
        );
        Ok(tokens)
    }

    /// Whether events wait that no worker has taken (the instance's
    /// descriptor is readable), without taking any.
    #[cfg(unix)]
    pub(crate) fn has_ready(&self) -> bool {
        readable_now(&self.registry)
    }

    /// Whether events wait that no worker has taken. An IOCP cannot be
    /// looked at without taking from it: what it has is taken, and kept for
    /// the next wait or take. While a poller waits in the instance, false
    /// (that poller takes them). A registration's readiness arrives a
    /// moment after it is armed (its poll request completes), so an event
    /// may show only at the next look.
    #[cfg(windows)]
    pub(crate) fn has_ready(&self) -> bool {
        let Some(mut guard) = self.poll.try_lock() else {
            return false;
        };
        let instance = &mut *guard;
        if instance.peeked.0.is_empty() {
            match instance
                .poll
                .poll(&mut instance.events, Some(Duration::ZERO))
            {
                Ok(()) => {}
                Err(e) => {
                    log::warn!("cannot look at the shared poller: {e}");
                    return false;
                }
            }
            for event in instance.events.iter() {
                if event.token() == WAKER {
                    instance.peeked.1 = true;
                } else {
                    instance.peeked.0.push(token_of(event));
                }
            }
        }
        !instance.peeked.0.is_empty()
    }

    /// Raises the stop signal: every waiter wakes, now and later.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, SeqCst);
        if let Err(e) = self.waker.wake() {
            log::error!("cannot signal the polling workers: {e}");
        }
    }

    /// Wakes the searcher, or the next poller to wait in the instance
    /// (nudges before it looks count as one).
    pub(crate) fn nudge(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot nudge the polling workers: {e}");
        }
    }

    /// The instance's descriptor, for the manager thread to watch when no
    /// worker polls (Unix: an IOCP cannot be watched from another poller).
    #[cfg(unix)]
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.registry.as_fd()
    }
}

#[cfg(all(windows, not(all(test, loom))))]
impl Instance {
    /// Moves what [`Epoll::has_ready`] took into `tokens` and `signals`;
    /// whether there was any.
    fn take_peeked(&mut self, tokens: &mut Vec<u64>, signals: &mut Signals) -> bool {
        let (peeked, nudged) = &mut self.peeked;
        if peeked.is_empty() && !*nudged {
            return false;
        }
        tokens.append(peeked);
        signals.nudge |= std::mem::take(nudged);
        true
    }
}

/// Whether `fd` (a socket on Windows) is readable now (`poll(2)`,
/// `WSAPoll`, without waiting).
#[cfg(any(unix, test))]
pub(crate) fn readable_now(fd: impl rustix::fd::AsFd) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&timespec(Duration::ZERO))), Ok(n) if n > 0)
}

#[allow(
    clippy::unnecessary_fallible_conversions,
    reason = "tv_nsec is an i64 on Unix, an i32 on Windows"
)]
fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().try_into().unwrap_or(0),
    }
}

/// What [`wait_socket`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Woke {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    pub(crate) rung: bool,
}

/// Waits until `stream` is readable (if `read`; its end and errors count
/// as readable), writable (if `write`), or `bell` rings, at most `timeout`
/// (`None`: without one).
pub(crate) fn wait_socket(
    stream: &TcpStream,
    read: bool,
    write: bool,
    bell: Option<&Bell>,
    timeout: Option<Duration>,
) -> io::Result<Woke> {
    let mut flags = PollFlags::empty();
    if read {
        flags |= PollFlags::IN;
        // The peer's shutdown as such (elsewhere it shows as `IN`: a read
        // returns its end).
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            flags |= PollFlags::RDHUP;
        }
    }
    if write {
        flags |= PollFlags::OUT;
    }
    let mut fds = vec![PollFd::new(stream, flags)];
    if let Some(bell) = bell {
        fds.push(PollFd::from_borrowed_fd(bell.fd(), PollFlags::IN));
    }
    // `WSAPoll` takes an `i32` of milliseconds: a longer wait (24.8 days)
    // would fail; one that ends early is judged "not due" by the caller.
    #[cfg(windows)]
    let timeout = timeout.map(|t| t.min(Duration::from_millis(i32::MAX as u64)));
    let timeout = timeout.map(timespec);
    match poll(&mut fds, timeout.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    let got = fds[0].revents();
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let ended = PollFlags::HUP | PollFlags::ERR | PollFlags::RDHUP;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let ended = PollFlags::HUP | PollFlags::ERR;
    Ok(Woke {
        readable: read && got.intersects(PollFlags::IN | ended),
        writable: write && got.intersects(PollFlags::OUT | PollFlags::HUP | PollFlags::ERR),
        rung: fds.get(1).is_some_and(|bell| !bell.revents().is_empty()),
    })
}

/// One write to `stream` that does not wait for room in its buffer
/// (`MSG_DONTWAIT` on a blocking socket), and raises no `SIGPIPE` if the
/// peer reset it (`MSG_NOSIGNAL`; on Apple's systems the socket's
/// `SO_NOSIGPIPE`, set by `socket::make_blocking`).
#[cfg(unix)]
pub(crate) fn write_now(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    #[cfg(not(target_vendor = "apple"))]
    let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
    #[cfg(target_vendor = "apple")]
    let flags = rustix::net::SendFlags::DONTWAIT;
    match rustix::net::send(stream, buf, flags) {
        Ok(n) => Ok(n),
        Err(e) => Err(e.into()),
    }
}

/// Reads what is there without waiting (`MSG_DONTWAIT` on a blocking
/// socket).
#[cfg(unix)]
pub(crate) fn read_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    match rustix::net::recv(stream, buf, rustix::net::RecvFlags::DONTWAIT) {
        Ok((n, _)) => Ok(n),
        Err(e) => Err(e.into()),
    }
}

/// One write to `stream` that does not wait for room in its buffer.
/// Windows has no `MSG_DONTWAIT`: the socket is non-blocking for the call
/// (one worker at a time does a connection's I/O, so no blocking call of
/// its own sees the switch).
#[cfg(windows)]
pub(crate) fn write_now(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    use std::io::Write;
    without_waiting(stream, |mut stream| stream.write(buf))
}

/// Reads what is there without waiting (see [`write_now`] on Windows).
#[cfg(windows)]
pub(crate) fn read_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    without_waiting(stream, |mut stream| stream.read(buf))
}

/// Runs `f` with `stream` non-blocking, then makes it blocking again.
#[cfg(windows)]
fn without_waiting<R>(
    stream: &TcpStream,
    f: impl FnOnce(&TcpStream) -> io::Result<R>,
) -> io::Result<R> {
    stream.set_nonblocking(true)?;
    let done = f(stream);
    stream.set_nonblocking(false)?;
    done
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A client and the server's end, blocking as workers hold them.
    fn pair() -> (TcpStream, Stream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let server = listener.accept().unwrap().0;
        server.set_nonblocking(false).unwrap();
        (client, Stream::new(server))
    }

    /// One wait: its tokens and signals.
    fn wait(epoll: &Epoll, timeout: Option<Duration>) -> (Vec<u64>, Signals) {
        let mut tokens = Vec::new();
        let signals = epoll.wait_batch(timeout, &mut tokens).unwrap();
        (tokens, signals)
    }

    const SHORT: Option<Duration> = Some(Duration::from_millis(10));

    #[test]
    fn one_event_per_arrival() {
        let epoll = Epoll::new().unwrap();
        let (mut client, server) = pair();
        epoll.arm(&server, 7, Arm::Add, Interest::Read).unwrap();
        assert_eq!(wait(&epoll, SHORT).0, Vec::<u64>::new());
        client.write_all(b"x").unwrap();
        assert_eq!(wait(&epoll, None).0, vec![7]);
        // Edge-triggered: the unread byte is not reported again...
        assert!(!epoll.has_ready());
        client.write_all(b"y").unwrap();
        // ...but more bytes are, though the first is still unread (on
        // Windows, once re-armed: the pool re-arms at each park)...
        #[cfg(unix)]
        assert_eq!(wait(&epoll, None).0, vec![7]);
        // ...and a re-arm reports what waits at once (on Windows, as soon
        // as the new poll request completes).
        epoll.arm(&server, 8, Arm::Rearm, Interest::Read).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !epoll.has_ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "no event after a re-arm"
            );
            std::thread::yield_now();
        }
        assert_eq!(epoll.take_ready(4).unwrap(), vec![8]);
        let mut buf = [0; 4];
        assert_eq!(read_now(&server, &mut buf).unwrap(), 2);
        let e = read_now(&server, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // A close is reported as an arrival, marked as an end.
        #[cfg(windows)]
        epoll.arm(&server, 8, Arm::Rearm, Interest::Read).unwrap();
        drop(client);
        assert_eq!(wait(&epoll, None).0, vec![8 | HUP]);
        assert_eq!(read_now(&server, &mut buf).unwrap(), 0);
    }

    #[test]
    fn a_disarmed_connection_is_not_reported_until_re_armed() {
        let epoll = Epoll::new().unwrap();
        let (mut client, server) = pair();
        epoll.arm(&server, 7, Arm::Add, Interest::Read).unwrap();
        epoll.disarm(&server).unwrap();
        client.write_all(b"x").unwrap();
        assert_eq!(wait(&epoll, SHORT).0, Vec::<u64>::new());
        epoll.arm(&server, 7, Arm::Rearm, Interest::Read).unwrap();
        assert_eq!(wait(&epoll, None).0, vec![7]);
    }

    #[test]
    fn a_batch_takes_several_ready_connections() {
        let epoll = Epoll::new().unwrap();
        let pairs: Vec<_> = (0..3).map(|_| pair()).collect();
        for (i, (client, server)) in pairs.iter().enumerate() {
            epoll
                .arm(server, i as u64, Arm::Add, Interest::Read)
                .unwrap();
            (&*client).write_all(b"x").unwrap();
        }
        let (mut tokens, signals) = wait(&epoll, None);
        while tokens.len() < 3 {
            tokens.extend(wait(&epoll, SHORT).0);
        }
        tokens.sort_unstable();
        assert_eq!(tokens, vec![0, 1, 2]);
        assert_eq!(signals, Signals::default());
    }

    #[test]
    fn writability_is_reported_when_armed_for_it() {
        let epoll = Epoll::new().unwrap();
        let (_client, server) = pair();
        // Registered with writability: reported at once (room in its
        // buffer), then not again while nothing happens.
        epoll
            .arm(&server, 7, Arm::Add, Interest::ReadWrite)
            .unwrap();
        assert_eq!(wait(&epoll, None).0, vec![7]);
        assert_eq!(wait(&epoll, SHORT).0, Vec::<u64>::new());
    }

    #[test]
    fn a_bell_ends_a_socket_wait() {
        let (mut client, server) = pair();
        let bell = Bell::new().unwrap();
        let woke = wait_socket(&server, true, false, Some(&bell), SHORT).unwrap();
        assert_eq!(woke, Woke::default());
        bell.ring();
        let woke = wait_socket(&server, true, false, Some(&bell), None).unwrap();
        assert!(woke.rung && !woke.readable);
        bell.clear();
        client.write_all(b"x").unwrap();
        let woke = wait_socket(&server, true, true, Some(&bell), None).unwrap();
        assert_eq!(
            woke,
            Woke {
                readable: true,
                writable: true,
                rung: false
            }
        );
    }

    #[test]
    fn a_nudge_wakes_one_waiter() {
        let epoll = Epoll::new().unwrap();
        epoll.nudge();
        assert!(wait(&epoll, None).1.nudge);
        // Edge-triggered: reported once.
        assert_eq!(wait(&epoll, SHORT).1, Signals::default());
        epoll.nudge();
        assert!(wait(&epoll, None).1.nudge);
    }

    #[test]
    fn stop_wakes_every_waiter_and_stays_up() {
        let epoll = std::sync::Arc::new(Epoll::new().unwrap());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let epoll = std::sync::Arc::clone(&epoll);
                std::thread::spawn(move || wait(&epoll, Some(Duration::from_secs(10))).1.stop)
            })
            .collect();
        epoll.stop();
        for w in waiters {
            assert!(w.join().unwrap());
        }
        assert!(wait(&epoll, None).1.stop);
    }
}
