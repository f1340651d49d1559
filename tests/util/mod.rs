//! Helpers shared by the integration tests: loopback pairs, clients with
//! timeouts, and bounded waits for a condition.
#![allow(dead_code)] // each test file uses a part

pub mod load;
#[cfg(unix)]
pub mod process;
#[cfg(feature = "tls")]
pub mod tls;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_manager::{Config, Conn, Manager, Stats};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// The workers an idle pool keeps while connections are parked: none (the
/// manager thread watches the shared poller), or on Windows, where an IOCP
/// cannot be watched from another poller, the last poller.
pub const IDLE_WORKERS_WHILE_PARKED: usize = if cfg!(windows) { 1 } else { 0 };

/// The default config in dedicated mode (a worker keeps its connection):
/// for tests of what that mode alone does — a worker per open connection,
/// new streams queued or refused when every worker is busy.
pub fn dedicated() -> Config {
    Config::default().with_park_after(None)
}

/// Says that a test did not run, and why. Outside CI it prints one line
/// (`SKIPPED: what: why`) and the caller returns; under CI (`CI` set, as
/// `.ci/run` does), which installs every tool and has every capability the
/// suite needs, a skip fails the test instead.
///
/// # Panics
///
/// Under CI, always.
pub fn skip(what: &str, why: impl std::fmt::Display) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} did not run under CI: {why}"
    );
    eprintln!("SKIPPED: {what}: {why}");
}

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A loopback listener on a free port.
pub struct Loopback {
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

impl Loopback {
    pub fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        Loopback { listener, addr }
    }

    /// A connected pair: the client side (with read/write timeouts) and the
    /// accepted server side.
    pub fn pair(&self) -> (TcpStream, TcpStream) {
        let client = client(self.addr);
        let (server, _) = self.listener.accept().expect("accept");
        (client, server)
    }

    /// Connects a client and puts the accepted stream into `manager`.
    pub fn put(&self, manager: &Manager) -> TcpStream {
        let (client, server) = self.pair();
        manager.put(server).expect("put");
        client
    }
}

impl Loopback {
    /// Puts `n` clients into a manager built with `gated_manager` and has
    /// each send a byte; returns once all `n` handlers hold their worker.
    pub fn hold(&self, manager: &Manager, gate: &Gate, n: usize) -> Vec<TcpStream> {
        let before = gate.entered();
        let mut clients: Vec<_> = (0..n).map(|_| self.put(manager)).collect();
        for c in &mut clients {
            c.write_all(b"x").expect("client write");
        }
        wait_for("the handlers to hold their workers", || {
            gate.entered() == before + n
        });
        clients
    }
}

/// A client with read and write timeouts, so that no test can hang on it.
pub fn client(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A client whose receive buffer is `rcvbuf` bytes (set before connecting,
/// so that the window it announces is small: replies pile up on the
/// server's side), with timeouts.
pub fn small_window_client(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("a socket");
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Writes `msg` and reads exactly `expect.len()` bytes back.
pub fn roundtrip(client: &mut TcpStream, msg: &[u8], expect: &[u8]) {
    client.write_all(msg).expect("client write");
    let mut buf = vec![0; expect.len()];
    client.read_exact(&mut buf).expect("client read");
    assert_eq!(buf, expect);
}

/// Reads until EOF (bounded by the client's read timeout); the bytes read.
/// A reset also counts as the end.
pub fn read_to_close(client: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// Waits until `cond` holds, polling, for at most `WAIT`; panics with `what`
/// otherwise.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the manager's stats satisfy `cond`; returns them. Panics
/// with `what` and the last stats seen if they do not within `WAIT`.
pub fn wait_stats(manager: &Manager, what: &str, mut cond: impl FnMut(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = manager.stats();
        if cond(&last) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An echo handler.
pub fn echo(conn: &mut Conn<'_>, data: &[u8]) -> io::Result<()> {
    conn.write_all(data)
}

/// A started echo server on 127.0.0.1 (the crate's acceptor).
pub fn echo_server(config: Config) -> Arc<pool_manager::Server> {
    handler_server(config, echo)
}

/// A started server of `handler` on 127.0.0.1 (the crate's acceptor).
pub fn handler_server<F>(config: Config, handler: F) -> Arc<pool_manager::Server>
where
    F: Fn(&mut Conn<'_>, &[u8]) -> io::Result<()> + Send + Sync + 'static,
{
    init_log();
    let manager = Manager::new(config, handler).expect("valid config");
    let server = pool_manager::Server::bind(manager, "127.0.0.1:0").expect("bind");
    server.start().expect("start");
    Arc::new(server)
}

/// A started echo manager.
pub fn echo_manager(config: Config) -> Arc<Manager> {
    init_log();
    let manager = Manager::new(config, echo).expect("valid config");
    manager.start().expect("start");
    Arc::new(manager)
}

/// A handler that holds its worker until the test lets it go: each read
/// waits on the gate, then echoes.
#[derive(Clone, Default)]
pub struct Gate {
    open: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
    pub entered: Arc<std::sync::atomic::AtomicUsize>,
}

impl Gate {
    pub fn wait(&self) {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (lock, cv) = &*self.open;
        let mut open = lock.lock();
        let deadline = Instant::now() + WAIT;
        while !*open {
            if cv.wait_until(&mut open, deadline).timed_out() {
                break;
            }
        }
    }

    pub fn open(&self) {
        let (lock, cv) = &*self.open;
        *lock.lock() = true;
        cv.notify_all();
    }

    pub fn entered(&self) -> usize {
        self.entered.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A started manager whose handler waits on `gate` and then echoes.
pub fn gated_manager(config: Config, gate: &Gate) -> Arc<Manager> {
    init_log();
    let gate = gate.clone();
    let manager = Manager::new(config, move |conn: &mut Conn<'_>, data: &[u8]| {
        gate.wait();
        conn.write_all(data)
    })
    .expect("valid config");
    manager.start().expect("start");
    Arc::new(manager)
}

/// An example binary that `cargo test` built next to the test's binary.
pub fn example_bin(name: &str) -> PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop(); // the test binary
    path.pop(); // deps/
    path.push("examples");
    path.push(name);
    assert!(
        path.exists(),
        "build the examples first (`cargo test` does): {}",
        path.display()
    );
    path
}

/// A line protocol: answers every complete line with `N:line\n` (N counts
/// the connection's lines: per-connection state) and keeps a partial line
/// for the next read.
pub fn lines() -> impl pool_manager::Handler {
    pool_manager::with_state(
        |_conn| 0u64,
        |conn: &mut Conn<'_, u64>, data: &[u8]| {
            let mut rest = data;
            while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                *conn.state() += 1;
                let n = *conn.state();
                conn.write_all(format!("{n}:").as_bytes())?;
                conn.write_all(&rest[..=end])?;
                rest = &rest[end + 1..];
            }
            conn.keep(rest.len());
            Ok(())
        },
    )
}

/// A started manager serving [`lines`].
pub fn line_manager(config: Config) -> Arc<Manager> {
    init_log();
    let manager = Manager::with_handler(config, lines()).expect("valid config");
    manager.start().expect("start");
    Arc::new(manager)
}
