//! The ledger of a server's connections, kept from both sides: what each
//! client saw, and what `Stats` counted. Shared by `tests/ledger.rs` (10×
//! overload) and `tests/soak.rs` (100,000 connections).
//!
//! # What the library promises
//!
//! For a [`Server`](pool_manager::Server) whose pool takes streams only
//! from its own acceptor, once it is quiescent (or stopped):
//!
//! ```text
//! accepted    = stats.connections + stats.rejected.total()
//! connections = stats.closed.total() + open          (open = 0 once stopped)
//! ```
//!
//! `Stats` has no count of accepted connections of its own: the clients'
//! count of connections that reached the server stands for it. Every
//! counted outcome is visible to a client as one of four things:
//!
//! | the client saw | counted as |
//! |---|---|
//! | its replies, then the server closed (`Echo`) | `closed.handler` |
//! | `busy_reply`, then a close (`Busy`) | `rejected.{full, stopped, queue_timeout, queue_stopped, per_ip_limit}` + `closed.{busy, per_ip_limit}` |
//! | a close with nothing (more) (`Bare`) | `rejected.untrusted` + `closed.{read_deadline, write_deadline, overflow, panic, stop, first_byte_deadline, slow_read, lifetime, handshake, proxy_header}` |
//! | it closed first itself (`Left`) | `closed.{eof, reset, error}` |
//!
//! Two counters do not say which of these the client saw:
//!
//! - `closed.stop` is a bare close, except for a connection that had
//!   woken up (its client sent) and waited in the queue when the stop
//!   began: it is sent `busy_reply` (polled mode; `docs/design.md`, "Stop").
//!   After a stop with such connections, `Busy` is between the busy counts
//!   and the busy counts plus `closed.stop`, and `Busy` + `Bare` is exact.
//! - `closed.error` is also a handler's own error (the handlers here
//!   return none); and a client that closed first is counted
//!   `closed.busy` if its end of file waited in the queue past
//!   `queue_timeout` (it is gone; the reply is lost). So `Busy` + `Left` is
//!   checked exactly, and `Busy` alone as at most the busy counts.
#![allow(dead_code)] // each test file uses a part

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use pool_manager::{Conn, Stats};

/// The busy reply of the servers under test.
pub const BUSY: &[u8] = b"BUSY\n";

/// The longest any one client socket operation may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A line echo: every complete line is echoed (a partial one is kept for
/// the next read); after a line that starts with `q` the handler closes the
/// connection. `sleep`: a blocking handler, asleep that long before it
/// answers.
pub fn line_echo(
    sleep: Option<Duration>,
) -> impl Fn(&mut Conn<'_>, &[u8]) -> io::Result<()> + Send + Sync + 'static {
    move |conn: &mut Conn<'_>, data: &[u8]| {
        let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        conn.keep(data.len() - end);
        if end == 0 {
            return Ok(());
        }
        if let Some(sleep) = sleep {
            std::thread::sleep(sleep);
        }
        conn.write_all(&data[..end])?;
        if data[..end]
            .split(|&b| b == b'\n')
            .any(|l| l.first() == Some(&b'q'))
        {
            conn.close();
        }
        Ok(())
    }
}

/// What one client connection saw, in the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Its replies, then the server closed it.
    Echo,
    /// The busy reply (after any replies), then a close.
    Busy,
    /// A close with nothing more: no reply, or none after its replies.
    Bare,
    /// It had all its replies and closed first itself.
    Left,
    /// Anything else: a timeout, bytes that are neither, a connect that
    /// failed. Unaccounted: a test failure.
    Failed(String),
}

/// Connects from `source` (any 127.0.0.0/8 address is local; `None`: the
/// system's choice), with `CLIENT_TIMEOUT` on the connect and on every
/// read and write.
pub fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&addr.into(), CLIENT_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads into `out` until the server closes (an end of file or a reset) or
/// `out` holds `want` bytes, never more; `Err` on a timeout or another
/// error.
fn read_until(stream: &mut TcpStream, out: &mut Vec<u8>, want: usize) -> Result<(), String> {
    let mut buf = [0; 512];
    while out.len() < want {
        let room = buf.len().min(want - out.len());
        match stream.read(&mut buf[..room]) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if ended(&e) => return Ok(()),
            Err(e) => {
                let got = String::from_utf8_lossy(out);
                return Err(format!("read after {got:?}: {e}"));
            }
        }
    }
    Ok(())
}

/// Whether a socket error says the server closed the connection.
fn ended(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// What the bytes a server sent before its close, after the replies, say.
fn classify(rest: &[u8]) -> Seen {
    match rest {
        [] => Seen::Bare,
        BUSY => Seen::Busy,
        other => Seen::Failed(format!(
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(other)
        )),
    }
}

/// Reads to the server's close (at most 64 KiB); what it said.
pub fn await_close(stream: &mut TcpStream) -> Seen {
    let mut rest = Vec::new();
    match read_until(stream, &mut rest, 64 << 10) {
        Ok(()) => classify(&rest),
        Err(e) => Seen::Failed(e),
    }
}

/// Sends `request` and reads its echo. `Err`: the connection ended
/// instead, as the client saw it.
pub fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<(), Seen> {
    // A failed write means the server closed already: what it sent before
    // is still there to read.
    if let Err(e) = stream.write_all(request) {
        if !ended(&e) {
            return Err(Seen::Failed(format!("write: {e}")));
        }
    }
    let mut got = Vec::new();
    read_until(stream, &mut got, request.len()).map_err(Seen::Failed)?;
    if got == request {
        return Ok(());
    }
    Err(match read_until(stream, &mut got, 64 << 10) {
        Ok(()) => classify(&got),
        Err(e) => Seen::Failed(e),
    })
}

/// A request that the line echo answers and then closes: `Echo` if it did.
pub fn last_request(stream: &mut TcpStream, request: &[u8]) -> Seen {
    debug_assert!(request.starts_with(b"q"));
    match exchange(stream, request) {
        Err(seen) => seen,
        Ok(()) => match await_close(stream) {
            Seen::Bare => Seen::Echo,
            Seen::Busy => Seen::Failed("the busy reply after the echo".into()),
            other => other,
        },
    }
}

/// What the clients saw, counted.
#[derive(Default)]
pub struct Tally {
    /// Connections that reached the server (the connect succeeded).
    pub connected: AtomicU64,
    pub echo: AtomicU64,
    pub busy: AtomicU64,
    pub bare: AtomicU64,
    pub left: AtomicU64,
    pub failed: AtomicU64,
    /// The first few failures, for the message.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    pub fn record(&self, seen: Seen) {
        let counter = match seen {
            Seen::Echo => &self.echo,
            Seen::Busy => &self.busy,
            Seen::Bare => &self.bare,
            Seen::Left => &self.left,
            Seen::Failed(why) => {
                let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                if failures.len() < 10 {
                    failures.push(why);
                }
                &self.failed
            }
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn counts(&self) -> ClientCounts {
        let f = |c: &AtomicU64| c.load(Relaxed);
        ClientCounts {
            connected: f(&self.connected),
            echo: f(&self.echo),
            busy: f(&self.busy),
            bare: f(&self.bare),
            left: f(&self.left),
            failed: f(&self.failed),
            failures: self
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A snapshot of a [`Tally`].
#[derive(Debug, Clone)]
pub struct ClientCounts {
    pub connected: u64,
    pub echo: u64,
    pub busy: u64,
    pub bare: u64,
    pub left: u64,
    pub failed: u64,
    pub failures: Vec<String>,
}

impl ClientCounts {
    /// The sum of two snapshots.
    pub fn plus(mut self, other: &ClientCounts) -> ClientCounts {
        self.connected += other.connected;
        self.echo += other.echo;
        self.busy += other.busy;
        self.bare += other.bare;
        self.left += other.left;
        self.failed += other.failed;
        self.failures.extend(other.failures.iter().cloned());
        self
    }
}

/// The server's side, grouped by what a client sees (see the module's
/// documentation), with the gauges that say whether it is quiescent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerLedger {
    pub connections: u64,
    pub rejected: u64,
    pub closed: u64,
    /// `closed.handler`: answered, then closed by the handler.
    pub handler: u64,
    /// Refusals and closes that send `busy_reply`.
    pub busy_replies: u64,
    /// Refusals and closes by the server that send nothing.
    pub silent: u64,
    /// `closed.{eof, reset, error}`: the client ended it.
    pub client_ended: u64,
    /// `closed.stop` (counted in `silent` too).
    pub stop: u64,
    pub workers: u64,
    pub parked: u64,
    pub queued: u64,
}

impl ServerLedger {
    pub fn of(s: &Stats) -> Self {
        let (r, c) = (&s.rejected, &s.closed);
        ServerLedger {
            connections: s.connections,
            rejected: r.total(),
            closed: c.total(),
            handler: c.handler,
            busy_replies: r.full
                + r.stopped
                + r.queue_timeout
                + r.queue_stopped
                + r.per_ip_limit
                + c.busy
                + c.per_ip_limit,
            silent: r.untrusted
                + c.read_deadline
                + c.write_deadline
                + c.overflow
                + c.panic
                + c.stop
                + c.first_byte_deadline
                + c.slow_read
                + c.lifetime
                + c.handshake
                + c.proxy_header,
            client_ended: c.eof + c.reset + c.error,
            stop: c.stop,
            workers: s.workers as u64,
            parked: s.parked as u64,
            queued: s.queued as u64,
        }
    }

    /// The counters alone (the gauges zeroed).
    pub fn counters(self) -> Self {
        ServerLedger {
            workers: 0,
            parked: 0,
            queued: 0,
            ..self
        }
    }

    /// One line (JSON), for a server in another process.
    pub fn to_line(self) -> String {
        serde_json::to_string(&self).unwrap()
    }

    /// The inverse of [`to_line`](Self::to_line).
    pub fn from_line(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

/// Both sides of a ledger, checked against each other: `open` is how many
/// connections the clients still hold open on purpose; `stopped_queue`:
/// a stop may have found woken connections in the queue (and sent them
/// the busy reply, counted `closed.stop`).
pub struct Ledger<'a> {
    pub clients: &'a ClientCounts,
    pub server: &'a ServerLedger,
    pub open: u64,
    pub stopped_queue: bool,
}

impl Ledger<'_> {
    /// Asserts every equation of the module's documentation, exactly.
    pub fn assert_adds_up(&self) {
        let (c, s) = (self.clients, self.server);
        let msg = || format!("{self}");
        assert_eq!(c.failed, 0, "unaccounted on the client side: {}", msg());
        assert_eq!(
            s.connections,
            s.closed + self.open,
            "connections = closed + open: {}",
            msg()
        );
        assert_eq!(
            c.connected,
            s.connections + s.rejected,
            "accepted = connections + rejected: {}",
            msg()
        );
        assert_eq!(
            c.echo,
            s.handler,
            "clients that saw their echo = closed.handler: {}",
            msg()
        );
        // The stop closes that sent the busy reply, seen as `Busy`: none,
        // unless a stop found woken connections in the queue.
        let replied_at_stop = if self.stopped_queue {
            s.silent.saturating_sub(c.bare)
        } else {
            0
        };
        assert!(
            replied_at_stop <= s.stop,
            "busy replies at the stop: {}",
            msg()
        );
        assert_eq!(
            c.bare + replied_at_stop,
            s.silent,
            "clients that saw a bare close = silent closes and refusals: {}",
            msg()
        );
        assert_eq!(
            c.busy + c.left,
            s.busy_replies + replied_at_stop + s.client_ended,
            "clients that saw busy or left = busy replies + closes by the client: {}",
            msg()
        );
        assert!(
            c.busy <= s.busy_replies + replied_at_stop,
            "every busy reply seen is counted: {}",
            msg()
        );
        assert_eq!(
            c.connected,
            c.echo + c.busy + c.bare + c.left + self.open,
            "every client saw one end: {}",
            msg()
        );
    }
}

impl fmt::Display for Ledger<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, s) = (self.clients, self.server);
        write!(
            f,
            "clients: {} connected = {} echo + {} busy + {} bare + {} left (+{} open); {} failed {:?}; \
             server: {} connections + {} rejected = {} handler + {} busy replies + {} silent ({} at stop) + {} by the client (+{} open); {} closed",
            c.connected,
            c.echo,
            c.busy,
            c.bare,
            c.left,
            self.open,
            c.failed,
            c.failures,
            s.connections,
            s.rejected,
            s.handler,
            s.busy_replies,
            s.silent,
            s.stop,
            s.client_ended,
            s.connections - s.closed.min(s.connections),
            s.closed,
        )
    }
}
