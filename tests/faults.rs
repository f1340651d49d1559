//! Fault injection over real sockets (issue 14, part 2): clients that
//! reset, half-close or never read; a silent peer behind a firewall rule;
//! thread creation failing; descriptors running out; a storm of
//! configuration changes under load. Each fault must be counted under its
//! own reason, and nothing may hang.

mod util;

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use pool_manager::{Config, ConfigError, Conn, Server};
use socket2::{Domain, SockRef, Socket, Type};
use util::process::{cpu_ticks_over, open_fds};
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

/// Whether this run is a child of one of the tests (which then does
/// nothing but the child's part).
fn in_child() -> bool {
    std::env::var_os(CHILD).is_some() || std::env::var_os(NETNS_CHILD).is_some()
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
    if in_child() {
        return;
    }
    for mode in ["dedicated", "polled"] {
        let cgroup = match PidsCgroup::new("faults") {
            Ok(cgroup) => cgroup,
            Err(why) => {
                eprintln!("SKIPPED: thread creation failing needs a pids cgroup: {why}");
                return;
            }
        };
        let mut child = Child::start(&format!("mode={mode}"));
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
        // Limited again with a worker alive: it serves on, one client at a
        // time; nothing is refused.
        child.wait_stats("the worker to be free", |s| {
            s["workers"] >= 1 && s["busy"] == 0
        });
        cgroup.limit("1");
        for i in 2..=N + 1 {
            assert_eq!(one_request(child.addr), b"x", "{mode}: request {i}");
            child.wait_stats("the close, and the worker free", |s| {
                s["closes"] == i && s["busy"] == 0
            });
        }
        let s = child.stats();
        assert_eq!((s["full"], s["eof"]), (N, N + 1), "{mode}: {s:?}");
        cgroup.limit("max");
        child.finish();
    }
}

// ---------------------------------------------------------------------
// A silent peer: packets dropped by a firewall rule after the handshake,
// in a network namespace of the test's own.

/// Set in the environment of the run inside the namespace.
const NETNS_CHILD: &str = "POOL_MANAGER_FAULTS_NETNS";

/// Whether `program` is on the `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs `program` with `args`, bounded; its output if it succeeded.
fn command(program: &str, args: &[&str]) -> Result<String, String> {
    if !on_path(program) {
        return Err(format!("{program} is not installed"));
    }
    let out = util::process::run(std::process::Command::new(program).args(args), WAIT);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        ))
    }
}

/// Drops every packet to and from `port` (both directions of loopback
/// traffic pass `INPUT`), or (`add` false) lets them through again.
fn black_hole(port: u16, add: bool) {
    let port = port.to_string();
    for direction in ["--dport", "--sport"] {
        let op = if add { "-A" } else { "-D" };
        command(
            "iptables",
            &[op, "INPUT", "-p", "tcp", direction, &port, "-j", "DROP"],
        )
        .unwrap();
    }
}

/// Inside the namespace: for each mode, a client silent after its first
/// request and a client that stops acknowledging a large reply; each must
/// be closed by its own deadline, in time, and the pool must serve on.
#[test]
fn silent_peer_in_namespace() {
    if std::env::var_os(NETNS_CHILD).is_none() {
        return; // run by the test below, inside a network namespace
    }
    command("ip", &["link", "set", "lo", "up"]).unwrap();
    let deadline = 500 * MS;
    for park_after in MODES {
        let gate = Gate::default();
        let held = gate.clone();
        let server = handler_server(
            Config {
                park_after,
                read_deadline: Some(deadline),
                write_deadline: Some(deadline),
                ..Config::default()
            },
            move |conn: &mut Conn<'_>, data: &[u8]| {
                if data.starts_with(b"big") {
                    held.wait(); // until the peer has gone silent
                }
                big_or_echo(conn, data)
            },
        );
        let manager = server.manager();
        let port = addr(&server).port();
        // The reader: one request answered, then silence (its next bytes
        // are dropped).
        let mut reader = client(addr(&server));
        let read_started = Instant::now();
        roundtrip(&mut reader, b"hello", b"hello");
        // The writer: asks for a large reply, held until the rule is in.
        let writer = client(addr(&server));
        (&writer).write_all(b"big").unwrap();
        wait_for("the large reply to be asked for", || gate.entered() == 1);
        black_hole(port, true);
        reader.write_all(b"lost").unwrap();
        let write_started = Instant::now();
        gate.open();
        // Each close counted under its reason, when its deadline passed.
        let (mut read_closed, mut write_closed) = (None, None);
        let limit = Instant::now() + WAIT;
        while read_closed.is_none() || write_closed.is_none() {
            assert!(
                Instant::now() < limit,
                "{park_after:?}: {:?}",
                manager.stats()
            );
            let s = manager.stats();
            if s.closed.read_deadline == 1 {
                read_closed.get_or_insert_with(|| read_started.elapsed());
            }
            if s.closed.write_deadline == 1 {
                write_closed.get_or_insert_with(|| write_started.elapsed());
            }
            std::thread::sleep(2 * MS);
        }
        let (read_closed, write_closed) = (read_closed.unwrap(), write_closed.unwrap());
        let late = deadline + Duration::from_secs(2);
        println!(
            "NETNS {park_after:?}: read deadline after {read_closed:?}, write deadline after {write_closed:?}"
        );
        assert!(
            read_closed >= deadline && read_closed < late,
            "{read_closed:?}"
        );
        assert!(
            write_closed >= deadline && write_closed < late,
            "{write_closed:?}"
        );
        let s = manager.stats();
        assert_eq!(s.closed.total(), 2, "{park_after:?}: {:?}", s.closed);
        assert!(s.bytes_out < BIG as u64, "{}", s.bytes_out);
        // The peer speaks again: the pool serves on.
        black_hole(port, false);
        let mut again = client(addr(&server));
        roundtrip(&mut again, b"again", b"again");
        drop((reader, writer, again));
        let s = wait_stats(manager, "the last close", |s| s.closed.total() == 3);
        assert_eq!(s.closed.eof, 1, "{:?}", s.closed);
        server.stop().unwrap();
    }
    println!("NETNS done");
}

#[test]
fn a_silent_peer_is_closed_by_the_read_and_write_deadlines() {
    if in_child() {
        return;
    }
    if let Err(why) = command("unshare", &["-n", "true"]) {
        eprintln!("SKIPPED: a silent peer needs a network namespace of its own: {why}");
        return;
    }
    if util::process::tool("iptables").is_none() {
        return; // said why; under CI, failed
    }
    let exe = std::env::current_exe().unwrap();
    let out = util::process::run(
        std::process::Command::new("unshare")
            .args(["-n", "--"])
            .arg(exe)
            .args(["--exact", "silent_peer_in_namespace", "--nocapture"])
            .env(NETNS_CHILD, "1"),
        4 * WAIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "in the namespace:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("NETNS done"), "{stdout}\n{stderr}");
}

// ---------------------------------------------------------------------
// Out of file descriptors with connections parked in the poller.

#[test]
fn out_of_descriptors_parked_connections_are_served_and_every_stream_is_counted() {
    if in_child() {
        return;
    }
    const LIMIT: u64 = 64;
    const PARKED: usize = 16;
    const FLOOD: usize = 2 * LIMIT as usize;
    let mut child = Child::start(&format!("mode=polled nofile={LIMIT}"));
    let pid = child.pid();
    // Connections served once, then parked in the poller.
    let mut parked: Vec<TcpStream> = (0..PARKED).map(|_| client(child.addr)).collect();
    for c in &mut parked {
        roundtrip(c, b"p", b"p");
    }
    child.wait_stats("the connections to park", |s| s["parked"] == PARKED as u64);
    // More clients than descriptors: the child accepts until EMFILE, the
    // rest wait in the backlog.
    let flood: Vec<TcpStream> = (0..FLOOD).map(|_| client(child.addr)).collect();
    wait_for("the child to run out of descriptors", || {
        open_fds(pid) as u64 >= LIMIT - 1
    });
    let s = child.wait_stats("the accepted ones to park", |s| {
        s["parked"] == s["connections"]
    });
    let accepted = s["connections"];
    assert!(
        accepted > PARKED as u64 && accepted < (PARKED + FLOOD) as u64,
        "{s:?}"
    );
    // Parked connections need no new descriptor: all served at EMFILE.
    for c in &mut parked {
        roundtrip(c, b"q", b"q");
    }
    // And the acceptor backs off rather than spinning.
    let used = cpu_ticks_over(pid, Duration::from_secs(1), "at EMFILE, connections parked");
    assert!(used <= 15, "the child used {used} ticks in 1 s at EMFILE");
    let s = child.stats();
    assert_eq!((s["rejected"], s["closes"]), (0, 0), "{s:?}");
    // The flood leaves: the clients that waited in the backlog are
    // accepted once descriptors free up, and every close is counted.
    drop(flood);
    let all = (PARKED + FLOOD) as u64;
    let s = child.wait_stats("every flood connection taken and closed", |s| {
        s["connections"] == all && s["closes"] == FLOOD as u64
    });
    assert_eq!((s["eof"], s["rejected"]), (FLOOD as u64, 0), "{s:?}");
    // Served as before, old and new.
    roundtrip(&mut parked[0], b"r", b"r");
    let mut fresh = client(child.addr);
    roundtrip(&mut fresh, b"new", b"new");
    drop(parked);
    drop(fresh);
    let s = child.wait_stats("every close", |s| s["closes"] == all + 1);
    assert_eq!(
        (s["eof"], s["connections"], s["error"]),
        (all + 1, all + 1, 0),
        "{s:?}"
    );
    child.finish();
}

// ---------------------------------------------------------------------
// A storm of set_config calls under load.

/// xorshift64*: a small reproducible generator (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)].clone()
    }
}

/// A random valid configuration: every knob that matters to the pool's
/// shape (sizes, modes, timers) moves; the busy reply stays.
fn random_valid(rng: &mut Rng, base: &Config) -> Config {
    let max_workers = rng.range(1, 48);
    let secs = Duration::from_secs;
    let park_after = rng.pick(&[None, Some(Duration::ZERO), Some(MS), Some(5 * MS)]);
    // A dedicated worker waits in `read` under the deadline of the config
    // it began with, and sees a new mode (or a lowered `max_workers`) only
    // when that read returns (see `Manager::set_config`): without a
    // deadline, a worker whose client is silent would hold its place for
    // good, and the pool could start no poller under a lower
    // `max_workers`. Dedicated configs bound their reads.
    let read_deadline = match park_after {
        None => rng.pick(&[Some(secs(1)), Some(secs(2))]),
        Some(_) => rng.pick(&[None, Some(secs(2)), Some(secs(30))]),
    };
    let config = Config {
        min_workers: rng.range(0, max_workers.min(4)),
        max_workers,
        queue_capacity: rng.pick(&[0, 1, 16, 1000]),
        queue_timeout: rng.pick(&[50 * MS, 300 * MS, secs(1)]),
        buffer_size: rng.pick(&[16, 64, 5120, 65536]),
        read_deadline,
        write_deadline: rng.pick(&[None, Some(secs(1)), Some(secs(3))]),
        worker_idle_timeout: rng.pick(&[MS, 50 * MS, secs(10)]),
        backlog: rng.pick(&[512, 1024]),
        nodelay: rng.pick(&[true, false]),
        keepalive: rng.pick(&[None, Some(secs(1))]),
        send_buffer_size: rng.pick(&[None, Some(4096)]),
        recv_buffer_size: rng.pick(&[None, Some(4096)]),
        max_connections: rng.pick(&[None, Some(50), Some(300)]),
        park_after,
        first_byte_deadline: rng.pick(&[None, Some(secs(2))]),
        pollers: rng.range(1, 4),
        grow_after: rng.pick(&[Duration::from_micros(100), MS, 10 * MS]),
        ..base.clone()
    };
    assert_eq!(config.validate(), Ok(()), "{config:?}");
    config
}

/// `valid` with one rule broken, and the error that rule gives.
fn break_one_rule(rng: &mut Rng, valid: &Config) -> (Config, ConfigError) {
    use pool_manager::{MAX_BACKLOG, MAX_BUFFER_SIZE, MAX_QUEUE_CAPACITY, MAX_WORKERS};
    let mut c = valid.clone();
    let zero_duration = |field| ConfigError::ZeroDuration { field };
    let error = match rng.range(0, 15) {
        0 => {
            c.max_workers = 0;
            ConfigError::ZeroMaxWorkers
        }
        1 => {
            c.max_workers = MAX_WORKERS + 1;
            ConfigError::TooManyWorkers {
                max: MAX_WORKERS + 1,
                limit: MAX_WORKERS,
            }
        }
        2 => {
            c.min_workers = c.max_workers + 1;
            ConfigError::MinAboveMax {
                min: c.min_workers,
                max: c.max_workers,
            }
        }
        3 => {
            c.queue_capacity = MAX_QUEUE_CAPACITY + 1;
            ConfigError::QueueTooLarge {
                capacity: MAX_QUEUE_CAPACITY + 1,
                limit: MAX_QUEUE_CAPACITY,
            }
        }
        4 => {
            c.buffer_size = rng.pick(&[0, 15, MAX_BUFFER_SIZE + 1]);
            ConfigError::BufferSize {
                size: c.buffer_size,
                min: 16,
                max: MAX_BUFFER_SIZE,
            }
        }
        5 => {
            c.backlog = rng.pick(&[0, MAX_BACKLOG + 1]);
            ConfigError::Backlog {
                backlog: c.backlog,
                max: MAX_BACKLOG,
            }
        }
        6 => {
            c.recv_buffer_size = Some(0);
            ConfigError::ZeroSize {
                field: "recv_buffer_size",
            }
        }
        7 => {
            c.max_connections = Some(0);
            ConfigError::ZeroSize {
                field: "max_connections",
            }
        }
        8 => {
            c.pollers = rng.pick(&[0, MAX_WORKERS + 1]);
            ConfigError::Pollers {
                pollers: c.pollers,
                limit: MAX_WORKERS,
            }
        }
        9 => {
            c.min_read_rate = Some(pool_manager::MinReadRate {
                bytes_per_sec: 0,
                window: MS,
            });
            ConfigError::ZeroSize {
                field: "min_read_rate.bytes_per_sec",
            }
        }
        10 => {
            c.read_deadline = Some(Duration::ZERO);
            zero_duration("read_deadline")
        }
        11 => {
            c.queue_timeout = Duration::ZERO;
            zero_duration("queue_timeout")
        }
        12 => {
            c.grow_after = Duration::ZERO;
            zero_duration("grow_after")
        }
        13 => {
            c.worker_idle_timeout = Duration::ZERO;
            zero_duration("worker_idle_timeout")
        }
        14 => {
            c.max_connections_per_ip = Some(0);
            ConfigError::ZeroSize {
                field: "max_connections_per_ip",
            }
        }
        _ => {
            c.proxy_protocol = Some(pool_manager::ProxyProtocol::default());
            ConfigError::ProxyNoTrusted
        }
    };
    (c, error)
}

/// What one client thread saw.
#[derive(Debug, Default)]
struct Seen {
    connects: u64,
    replies: u64,
    /// Answered `busy_reply`, then closed.
    busy: u64,
    /// Closed (or reset) without a reply.
    closed: u64,
    /// The longest wait for an answer or a close.
    slowest: Duration,
}

/// One request on `slot` (connecting first if it is empty): `Ok(true)`
/// answered, `Ok(false)` turned away or closed (the slot is emptied);
/// `Err` only for a hang (no answer and no close within the client's
/// timeout).
fn storm_request(
    addr: SocketAddr,
    slot: &mut Option<TcpStream>,
    n: u64,
    seen: &mut Seen,
) -> Result<bool, String> {
    if slot.is_none() {
        let stream =
            TcpStream::connect_timeout(&addr, WAIT).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(2 * WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        seen.connects += 1;
        *slot = Some(stream);
    }
    let stream = slot.as_mut().unwrap();
    let msg = format!("{:08}", n % 100_000_000);
    let asked = Instant::now();
    let mut got = Vec::new();
    if stream.write_all(msg.as_bytes()).is_ok() {
        let mut buf = [0; 16];
        while got.len() < msg.len() {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if is_gone(&e) => break,
                Err(e) => return Err(format!("no answer to {msg} ({got:?}): {e}")),
            }
        }
    }
    seen.slowest = seen.slowest.max(asked.elapsed());
    if got == msg.as_bytes() {
        seen.replies += 1;
        return Ok(true);
    }
    if got.starts_with(b"BUSY") {
        seen.busy += 1;
    } else {
        assert!(got.is_empty(), "a wrong answer to {msg}: {got:?}");
        seen.closed += 1;
    }
    *slot = None;
    Ok(false)
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Sets `flag` when dropped (a test that fails stops its helpers).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

#[test]
fn a_set_config_storm_under_200_clients_keeps_the_pool_consistent() {
    if in_child() {
        return;
    }
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50;
    const STORM: Duration = Duration::from_secs(2);
    let seed = std::env::var("POOL_MANAGER_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed} (POOL_MANAGER_STORM_SEED reproduces it)");
    let base = Config {
        busy_reply: b"BUSY\n".to_vec(),
        ..Config::default()
    };
    let server = handler_server(base.clone(), echo);
    let addr = addr(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_failure = SetOnDrop(Arc::clone(&stop));
    let (done_tx, done_rx) = std::sync::mpsc::channel();

    // The clients: each thread keeps 50 connections busy, one request at
    // a time, reconnecting when one is turned away or closed. Once told
    // to stop, every connection must be served once more.
    for t in 0..THREADS {
        let (stop, done) = (Arc::clone(&stop), done_tx.clone());
        std::thread::spawn(move || {
            let run = || -> Result<Seen, String> {
                let mut seen = Seen::default();
                let mut slots: Vec<Option<TcpStream>> = (0..PER_THREAD).map(|_| None).collect();
                let mut n = (t as u64) << 40;
                while !stop.load(SeqCst) {
                    for slot in &mut slots {
                        n += 1;
                        storm_request(addr, slot, n, &mut seen)?;
                    }
                }
                for (i, slot) in slots.iter_mut().enumerate() {
                    n += 1;
                    // At most one close noticed late, then a new connection.
                    if !storm_request(addr, slot, n, &mut seen)? {
                        n += 1;
                        if !storm_request(addr, slot, n, &mut seen)? {
                            return Err(format!("client {t}/{i} not served after the storm"));
                        }
                    }
                }
                Ok(seen)
            };
            let _ = done.send(Some(run()));
        });
    }

    // The storm, on a thread of its own (a deadlock in `set_config` fails
    // the test instead of hanging it): after each valid config, the
    // invariants that hold at once; each invalid one refused with its
    // error, and changing nothing.
    let storm = {
        let (server, base) = (Arc::clone(&server), base.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let manager = server.manager();
            let mut rng = Rng(seed);
            let (mut valid, mut invalid) = (0u64, 0u64);
            let mut current = base.clone();
            let mut max_ever = base.max_workers;
            let started = Instant::now();
            while started.elapsed() < STORM {
                // Hundreds a second: back to back, or a millisecond or
                // two apart (long enough for a mode to be served in).
                let pause = rng.range(0, 2) as u32;
                if pause > 0 {
                    std::thread::sleep(pause * MS);
                }
                if rng.range(0, 3) == 0 {
                    let (broken, error) = break_one_rule(&mut rng, &current);
                    assert_eq!(manager.set_config(broken), Err(error));
                    assert!(
                        manager.config() == current,
                        "a refused config changed something"
                    );
                    invalid += 1;
                    continue;
                }
                let config = random_valid(&mut rng, &base);
                manager.set_config(config.clone()).unwrap();
                max_ever = max_ever.max(config.max_workers);
                let s = manager.stats();
                assert!(s.running);
                assert_eq!(s.busy + s.idle, s.workers, "{s:?}");
                assert!(
                    s.workers >= config.min_workers,
                    "{} workers under min_workers {}",
                    s.workers,
                    config.min_workers
                );
                assert!(
                    s.workers <= max_ever,
                    "{} workers, max_workers never above {max_ever}",
                    s.workers
                );
                assert!(s.closed.total() <= s.connections, "{s:?}");
                assert_eq!(s.spawn_failures, 0);
                current = config;
                valid += 1;
            }
            let _ = tx.send((valid, invalid, started.elapsed()));
        });
        rx
    };
    let (valid, invalid, took) = storm
        .recv_timeout(STORM + 2 * WAIT)
        .expect("the storm is stuck (a deadlock in set_config?), or failed");
    let manager = server.manager();
    println!(
        "{} configs in {took:.1?} ({:.0}/s): {valid} valid, {invalid} refused",
        valid + invalid,
        (valid + invalid) as f64 / took.as_secs_f64()
    );
    assert!(valid + invalid >= 200, "only {} configs", valid + invalid);

    // Calm: a sane config, every client served once more, then gone.
    let last = Config {
        min_workers: 2,
        max_workers: 16,
        read_deadline: Some(Duration::from_secs(30)),
        queue_timeout: Duration::from_secs(5),
        ..base.clone()
    };
    manager.set_config(last.clone()).unwrap();
    stop.store(true, SeqCst);
    let calm = Instant::now();
    let mut total = Seen::default();
    for _ in 0..THREADS {
        let seen = done_rx
            .recv_timeout(6 * WAIT)
            .expect("a client thread is stuck")
            .expect("sent")
            .unwrap_or_else(|e| panic!("{e} ({:?})", manager.stats()));
        total.connects += seen.connects;
        total.replies += seen.replies;
        total.busy += seen.busy;
        total.closed += seen.closed;
        total.slowest = total.slowest.max(seen.slowest);
    }
    println!("clients done {:.1?} after the storm", calm.elapsed());
    println!("clients: {total:?}");
    assert!(total.replies >= (THREADS * PER_THREAD) as u64);

    // Every stream the clients opened was taken or turned away, and every
    // one taken was closed, each counted once.
    let s = wait_stats(manager, "every stream accounted for", |s| {
        s.connections + s.rejected.total() == total.connects
            && s.closed.total() == s.connections
            && s.parked == 0
            && s.queued == 0
    });
    println!("{s:?}");
    // Each client saw what was counted: the busy reply of each stream
    // turned away and of each connection closed as busy, a plain close
    // for every other close but its own 200 at the end.
    let clients = (THREADS * PER_THREAD) as u64;
    assert_eq!(s.closed.eof, clients, "{:?}", s.closed);
    assert_eq!(s.rejected.total() + s.closed.busy, total.busy, "{s:?}");
    assert_eq!(
        s.closed.total() - clients - s.closed.busy,
        total.closed,
        "{s:?}"
    );
    assert_eq!(
        s.closed.panic + s.closed.error + s.closed.overflow,
        0,
        "{:?}",
        s.closed
    );
    // And the pool settles inside the last config.
    let s = wait_stats(manager, "the pool to settle", |s| {
        s.workers >= last.min_workers && s.workers <= last.max_workers && s.busy == 0
    });
    assert_eq!(s.busy + s.idle, s.workers);
    server.stop().unwrap();
}
