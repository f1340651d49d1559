//! Fault injection at the limits of the system (issue 14, part 2): thread
//! creation refused by a `pids` cgroup around the server's process, and
//! descriptors running out with parked connections. Every stream must be
//! counted, nothing may panic or spin, and the pool must recover when the
//! limit lifts. The server runs in a child process (this binary, as
//! [`fault_child_server`]), so that the limits bind it alone.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pool_manager::{Config, Server};
use util::process::{cpu_ticks_over, open_fds};
use util::*;

const MS: Duration = Duration::from_millis(1);

fn addr(server: &Server) -> SocketAddr {
    server.local_addrs()[0]
}

/// Set in the child's environment: its configuration, `KEY=VALUE` words
/// (`mode=polled|dedicated`, `nofile=N`).
const CHILD: &str = "POOL_MANAGER_FAULTS_CHILD";

/// The child's side: a server that answers `stats` on standard input with
/// a `STATS key=value …` line, until its standard input closes.
#[test]
#[ignore = "a child process's part: run by the tests below, not on its own"]
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
        Config::default()
            .with_park_after(park_after)
            .with_max_workers(200)
            .with_read_deadline(None)
            .with_queue_timeout(300 * MS)
            .with_busy_reply(b"BUSY\n".to_vec()),
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
    std::env::var_os(CHILD).is_some()
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
            .args(["--exact", "fault_child_server", "--ignored", "--nocapture"])
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

// ---------------------------------------------------------------------
// Thread creation refused by a `pids` cgroup around the child.

/// A `pids` cgroup of this test's own, removed when dropped: its
/// processes are moved back to the root first.
struct PidsCgroup {
    root: std::path::PathBuf,
    dir: std::path::PathBuf,
}

/// Where the `pids` controller is: its cgroup v1 hierarchy, else the
/// unified (v2) hierarchy, mounted on its own or beside v1 (hybrid).
const PIDS_V1: &str = "/sys/fs/cgroup/pids";
const UNIFIED: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

impl PidsCgroup {
    /// A new cgroup, or why there can be none here.
    fn new(tag: &str) -> Result<Self, String> {
        let root = Self::root()?;
        let dir = root.join(format!("pool-manager-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(PidsCgroup { root, dir })
    }

    /// The root of a hierarchy whose new cgroups have `pids.max`. On v2
    /// the controller must be listed in the root's `cgroup.controllers`
    /// (not bound to v1) and enabled for its children (`+pids` in
    /// `cgroup.subtree_control`; most hosts have it already).
    fn root() -> Result<std::path::PathBuf, String> {
        let v1 = std::path::Path::new(PIDS_V1);
        if v1.join("cgroup.procs").exists() {
            return Ok(v1.to_path_buf());
        }
        let listed = |path: &std::path::Path| {
            std::fs::read_to_string(path).is_ok_and(|s| s.split_whitespace().any(|c| c == "pids"))
        };
        for unified in UNIFIED.map(std::path::Path::new) {
            if !listed(&unified.join("cgroup.controllers")) {
                continue;
            }
            let control = unified.join("cgroup.subtree_control");
            if !listed(&control) {
                std::fs::write(&control, "+pids")
                    .map_err(|e| format!("cannot enable pids in {}: {e}", control.display()))?;
            }
            return Ok(unified.to_path_buf());
        }
        Err(format!(
            "no pids controller: no v1 hierarchy at {PIDS_V1}, none listed in {UNIFIED:?}"
        ))
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
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
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
                skip("thread creation refused (it needs a pids cgroup)", why);
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
        // The `max N` line (newer kernels may add others).
        let refused: u64 = events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .unwrap_or_else(|| panic!("pids.events: {events}"))
            .parse()
            .unwrap();
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
