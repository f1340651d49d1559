//! Fault injection over real sockets (issue 14, part 2): clients that
//! reset, half-close or never read; a silent peer behind a firewall rule;
//! thread creation failing; descriptors running out; a storm of
//! configuration changes under load. Each fault must be counted under its
//! own reason, and nothing may hang.

mod util;

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pool_manager::{Config, Conn, Server};
use socket2::{Domain, SockRef, Socket, Type};
use util::*;

const MS: Duration = Duration::from_millis(1);

/// Dedicated mode, then polled mode.
const MODES: [Option<Duration>; 2] = [None, Some(Duration::ZERO)];

fn addr(server: &Server) -> SocketAddr {
    server.local_addrs()[0]
}

/// A handler that answers `big` with `BIG` bytes of `b'z'` (in 64 KiB
/// writes) and echoes anything else.
const BIG: usize = 32 << 20;

fn big_or_echo(conn: &mut Conn<'_>, data: &[u8]) -> io::Result<()> {
    if data.starts_with(b"big") {
        let chunk = [b'z'; 64 << 10];
        for _ in 0..BIG / chunk.len() {
            conn.write_all(&chunk)?;
        }
        return Ok(());
    }
    conn.write_all(data)
}

/// A client whose receive buffer is `rcvbuf` bytes (set before connecting,
/// so that the window it announces is small), with timeouts.
fn small_window_client(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Closes `stream` with a reset (`SO_LINGER` 0) instead of a FIN.
fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

#[test]
fn a_client_that_resets_in_the_middle_of_a_write_is_counted_as_a_reset() {
    for park_after in MODES {
        // One worker: the second client is served only if the reset freed it.
        let server = handler_server(
            Config {
                park_after,
                max_workers: 1,
                write_deadline: Some(Duration::from_secs(30)),
                read_deadline: Some(Duration::from_secs(30)),
                ..Config::default()
            },
            big_or_echo,
        );
        let manager = server.manager();
        let mut c = small_window_client(addr(&server), 4096);
        c.write_all(b"big").unwrap();
        // The reply is coming: the handler is inside its writes.
        let mut head = [0; 1024];
        c.read_exact(&mut head).unwrap();
        assert!(head.iter().all(|&b| b == b'z'));
        let started = Instant::now();
        reset(c);
        let s = wait_stats(manager, "the reset to be counted", |s| {
            s.closed.total() == 1
        });
        assert_eq!(s.closed.reset, 1, "{park_after:?}: {:?}", s.closed);
        assert!(started.elapsed() < Duration::from_secs(2));
        // The only worker serves again.
        let mut c2 = client(addr(&server));
        roundtrip(&mut c2, b"after", b"after");
        drop(c2);
        let s = wait_stats(manager, "the second close", |s| s.closed.total() == 2);
        assert_eq!((s.closed.reset, s.closed.eof), (1, 1), "{:?}", s.closed);
        assert_eq!(s.closed.panic + s.closed.error, 0);
        assert_eq!(s.spawn_failures, 0);
        server.stop().unwrap();
    }
}

#[test]
fn a_half_closed_client_still_reads_its_whole_reply() {
    for park_after in MODES {
        let server = handler_server(
            Config {
                park_after,
                write_deadline: Some(Duration::from_secs(10)),
                ..Config::default()
            },
            big_or_echo,
        );
        let manager = server.manager();
        let mut c = client(addr(&server));
        c.write_all(b"big").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let reply = read_to_close(&mut c).expect("the reply, then EOF");
        assert_eq!(reply.len(), BIG, "{park_after:?}");
        assert!(reply.iter().all(|&b| b == b'z'));
        let s = wait_stats(manager, "the close to be counted", |s| {
            s.closed.total() == 1
        });
        assert_eq!(s.closed.eof, 1, "{park_after:?}: {:?}", s.closed);
        assert_eq!(s.bytes_out, BIG as u64);
        server.stop().unwrap();
    }
}

#[test]
fn a_client_that_never_reads_is_closed_by_the_write_deadline_and_frees_its_worker() {
    for park_after in MODES {
        let deadline = 300 * MS;
        let server = handler_server(
            Config {
                park_after,
                max_workers: 1,
                write_deadline: Some(deadline),
                read_deadline: Some(Duration::from_secs(30)),
                // The second client may wait in the queue meanwhile.
                queue_capacity: 4,
                queue_timeout: Duration::from_secs(30),
                ..Config::default()
            },
            big_or_echo,
        );
        let manager = server.manager();
        let stuck = small_window_client(addr(&server), 4096);
        let started = Instant::now();
        (&stuck).write_all(b"big").unwrap();
        // Another client waits for the only worker.
        let mut other = client(addr(&server));
        other.write_all(b"next").unwrap();
        let mut buf = [0; 4];
        other
            .read_exact(&mut buf)
            .expect("served once the worker is free");
        let took = started.elapsed();
        assert_eq!(&buf, b"next");
        let s = manager.stats();
        assert_eq!(s.closed.write_deadline, 1, "{park_after:?}: {:?}", s.closed);
        assert!(
            took >= deadline && took < deadline + Duration::from_secs(2),
            "{park_after:?}: served after {took:?}"
        );
        // The stuck client sees its connection end.
        let mut stuck = stuck;
        let got = read_to_close(&mut stuck).expect("the end of the connection");
        assert!(got.len() < BIG);
        drop(other);
        let s = wait_stats(manager, "both closes", |s| s.closed.total() == 2);
        assert_eq!((s.closed.write_deadline, s.closed.eof), (1, 1));
        assert_eq!(s.workers, 1);
        server.stop().unwrap();
    }
}

// ---------------------------------------------------------------------
// A server in a child process (this test binary again), for the faults
// that must not touch the test process itself: a pids cgroup, a lowered
// descriptor limit.

/// Set in the child's environment: its configuration, `KEY=VALUE` words
/// (`mode=polled|dedicated`, `nofile=N`).
const CHILD: &str = "POOL_MANAGER_FAULTS_CHILD";

/// The child's side: a server that answers `stats` on standard input with
/// a `STATS key=value …` line, until its standard input closes.
#[test]
fn fault_child_server() {
    let Ok(spec) = std::env::var(CHILD) else {
        return; // only meaningful as the child of the tests below
    };
    let words: Vec<(&str, &str)> = spec
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let get = |key: &str| words.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    if let Some(limit) = get("nofile") {
        let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
        rlimit::Resource::NOFILE
            .set(limit.parse().unwrap(), hard)
            .unwrap();
    }
    let park_after = match get("mode") {
        Some("dedicated") => None,
        _ => Some(Duration::ZERO),
    };
    let server = handler_server(
        Config {
            park_after,
            max_workers: 200,
            read_deadline: None,
            queue_timeout: 300 * MS,
            busy_reply: b"BUSY\n".to_vec(),
            ..Config::default()
        },
        echo,
    );
    println!("ADDR {}", addr(&server));
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lines() {
        match line.as_deref() {
            Ok("stats") => {
                let s = server.manager().stats();
                println!(
                    "STATS workers={} busy={} idle={} parked={} queued={} connections={} \
                     spawned={} spawn_failures={} rejected={} full={} closes={} eof={} \
                     closed_busy={} error={} panic={}",
                    s.workers,
                    s.busy,
                    s.idle,
                    s.parked,
                    s.queued,
                    s.connections,
                    s.workers_spawned,
                    s.spawn_failures,
                    s.rejected.total(),
                    s.rejected.full,
                    s.closed.total(),
                    s.closed.eof,
                    s.closed.busy,
                    s.closed.error,
                    s.closed.panic,
                );
            }
            Ok("stop") => println!("STOP {:?}", server.stop().map(|r| r.forced)),
            Ok("start") => println!("START {:?}", server.start()),
            _ => break, // EOF: the parent is done
        }
        std::io::stdout().flush().unwrap();
    }
    let report = server.stop().unwrap();
    println!("STOPPED forced={}", report.forced);
}

/// The parent's handle on a [`fault_child_server`]; killed when dropped.
struct Child {
    process: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Child {
    fn start(spec: &str) -> Child {
        use std::process::{Command, Stdio};
        let mut process = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fault_child_server", "--nocapture"])
            .env(CHILD, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = process.stdin.take();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = process.stdout.take().unwrap();
        let stderr = process.stderr.take().unwrap();
        for (out, tag) in [
            (Box::new(stdout) as Box<dyn Read + Send>, ""),
            (Box::new(stderr), "STDERR "),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in io::BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(format!("{tag}{line}"));
                }
            });
        }
        let mut child = Child {
            process,
            stdin,
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let line = child.expect_line("ADDR ");
        child.addr = line["ADDR ".len()..].parse().unwrap();
        child
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The next line that starts with `prefix`; fails on a panic message
    /// or past `WAIT`.
    fn expect_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => assert!(!line.contains("panicked"), "the child: {line}"),
                Err(e) => panic!("no line {prefix:?} from the child: {e}"),
            }
        }
    }

    /// Sends `command`; the answer, the line that starts with `answer`.
    fn ask(&mut self, command: &str, answer: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{command}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        self.expect_line(answer)
    }

    /// The child server's stats, by name.
    fn stats(&mut self) -> std::collections::HashMap<String, u64> {
        let line = self.ask("stats", "STATS ");
        line.split_whitespace()
            .skip(1)
            .map(|w| {
                let (k, v) = w.split_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    /// Waits until the stats satisfy `cond`; returns them.
    fn wait_stats(
        &mut self,
        what: &str,
        mut cond: impl FnMut(&std::collections::HashMap<String, u64>) -> bool,
    ) -> std::collections::HashMap<String, u64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.stats();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}"
            );
            std::thread::sleep(5 * MS);
        }
    }

    /// Closes its standard input and waits for a clean exit; fails on a
    /// panic or a forced stop.
    fn finish(mut self) {
        drop(self.stdin.take());
        let line = self.expect_line("STOPPED ");
        assert_eq!(line, "STOPPED forced=0");
        let status = util::process::wait_exit(&mut self.process, WAIT);
        assert!(status.success(), "the child exited with {status}");
        // Whatever it printed after: no panic.
        while let Ok(line) = self.lines.recv_timeout(100 * MS) {
            assert!(!line.contains("panicked"), "the child: {line}");
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A `pids` cgroup (v1) of this test's own, removed when dropped: its
/// processes are moved back to the root first.
struct PidsCgroup {
    dir: std::path::PathBuf,
}

const PIDS_ROOT: &str = "/sys/fs/cgroup/pids";

impl PidsCgroup {
    /// A new cgroup, or why there can be none here.
    fn new(tag: &str) -> Result<Self, String> {
        let root = std::path::Path::new(PIDS_ROOT);
        if !root.join("cgroup.procs").exists() {
            return Err(format!("no cgroup v1 pids hierarchy at {PIDS_ROOT}"));
        }
        let dir = root.join(format!("pool-manager-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(PidsCgroup { dir })
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.dir.join(file), value)
            .unwrap_or_else(|e| panic!("write {value} to {file}: {e}"));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }

    /// `pids.max`: a number, or `max`.
    fn limit(&self, max: &str) {
        self.write("pids.max", max);
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(std::path::Path::new(PIDS_ROOT).join("cgroup.procs"), pid);
        }
        let deadline = Instant::now() + WAIT;
        while let Err(e) = std::fs::remove_dir(&self.dir) {
            if Instant::now() > deadline {
                eprintln!("cannot remove {}: {e}", self.dir.display());
                return;
            }
            std::thread::sleep(10 * MS);
        }
    }
}

/// A client that sends `x` and reads what comes back until the server
/// closes: `x` (served) or `BUSY\n` (turned away).
fn one_request(addr: SocketAddr) -> Vec<u8> {
    let mut c = client(addr);
    c.write_all(b"x").unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 16];
    while got != b"x" {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("client read: {e} (got {got:?})"),
        }
    }
    got
}

#[test]
fn when_no_thread_can_be_started_streams_are_refused_and_counted_and_the_pool_recovers() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    for mode in ["dedicated", "polled"] {
        let mut child = Child::start(&format!("mode={mode}"));
        let cgroup = match PidsCgroup::new("faults") {
            Ok(cgroup) => cgroup,
            Err(why) => {
                eprintln!("SKIPPED: thread creation failing needs a pids cgroup: {why}");
                return;
            }
        };
        cgroup.add(child.pid());
        // No new task in the child: every thread it tries to start fails.
        cgroup.limit("1");
        let before = child.stats();
        assert_eq!(before["workers"], 0, "{before:?}");
        const N: u64 = 5;
        for i in 0..N {
            let got = one_request(child.addr);
            assert_eq!(got, b"BUSY\n", "{mode}: request {i}");
        }
        let s = child.stats();
        assert_eq!(s["workers"], 0, "{mode}: {s:?}");
        assert!(s["spawn_failures"] >= N, "{mode}: {s:?}");
        assert_eq!((s["full"], s["rejected"]), (N, N), "{mode}: {s:?}");
        assert_eq!((s["connections"], s["closes"]), (0, 0), "{mode}: {s:?}");
        // The kernel did refuse them.
        let events = cgroup.read("pids.events");
        let refused: u64 = events.trim_start_matches("max ").parse().unwrap();
        assert!(refused >= N, "{mode}: pids.events {events}");
        // A restart needs a thread too: refused, no panic.
        assert_eq!(child.ask("stop", "STOP "), "STOP Ok(0)");
        let start = child.ask("start", "START ");
        assert!(start.starts_with("START Err(Spawn("), "{mode}: {start}");
        // The limit lifts: it starts and serves again.
        cgroup.limit("max");
        assert_eq!(child.ask("start", "START "), "START Ok(())");
        assert_eq!(one_request(child.addr), b"x", "{mode}: after the limit");
        let s = child.wait_stats("the close", |s| s["closes"] == 1);
        assert_eq!(
            (s["eof"], s["full"], s["connections"]),
            (1, N, 1),
            "{mode}: {s:?}"
        );
        assert!(s["spawned"] >= 1, "{mode}: {s:?}");
        child.finish();
        drop(cgroup);
    }
}
