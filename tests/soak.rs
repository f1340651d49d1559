//! Soak without leaks (issue 14, part 4): 100,000 connections of mixed
//! kinds through one server, after which its open descriptors and threads
//! are back to their baseline (±2), its RSS within a bound of it, and its
//! stats add up with what the clients saw (the equations of
//! `accounting/mod.rs`).
//!
//! The server runs in a child process (this test binary again, with
//! `POOL_MANAGER_SOAK_CHILD` set), so that its descriptors, threads and
//! RSS (`/proc/PID/fd`, `/proc/PID/status`) are its own; it answers
//! `stats` on its standard input with its ledger, and stops on `stop` or
//! when its standard input closes (so it never outlives the test).
//!
//! The kinds, in every twenty connections:
//!
//! | kind | share | what the client does | what it should see |
//! |---|---:|---|---|
//! | short | 10 | one `q` request: echoed, then closed by the handler | its echo, then the close |
//! | long | 3 | eight requests, one at a time, then closes | its echoes (it leaves) |
//! | parked | 3 | a request, silent for 30 ms (parked in the poller), another, then closes | its echoes (it leaves) |
//! | idle | 2 | nothing | closed at `first_byte_deadline` (100 ms) |
//! | reset | 1 | a request, then an abortive close (`SO_LINGER` 0: a reset) | its echo (it leaves) |
//! | refused | 1 | connects from 127.0.0.2, which holds its `max_connections_per_ip` | the busy reply |
//!
//! Eight "holders" keep 127.0.0.2 at its limit through the whole run (and
//! are part of the baseline). Ports: the clients that close first (long
//! and parked, 30,000 of the 100,000) leave their side in TIME_WAIT for
//! 60 s, more than the 28,000 ephemeral ports of one source address. So
//! the clients connect from 250 source addresses (127.0.1.1–127.0.1.250,
//! bound before connecting): about 400 connections each in the run. The
//! server closes the short, idle and refused ones first, so their TIME_WAIT
//! is on its side (it takes no port of the clients'), and the resets leave
//! none.
//!
//! `POOL_SOAK_CONNECTIONS` sets the number (default 100,000) for a longer
//! run; the clients stop by themselves at `connections / 500` seconds (at
//! least 120) whatever they got through, and the test then fails.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod accounting;
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use accounting::*;
use pool_manager::{Config, Manager, Server};
use util::init_log;

const CHILD: &str = "POOL_MANAGER_SOAK_CHILD";
/// The per-IP limit, and how many holders keep 127.0.0.2 at it.
const PER_IP: usize = 8;
const REFUSED_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const FIRST_BYTE: Duration = Duration::from_millis(100);
/// How long a parked client is silent between its two requests.
const THINK: Duration = Duration::from_millis(30);
/// Requests of a long connection.
const LONG: usize = 8;
/// Client threads, each with one connection at a time.
const CLIENTS: usize = 48;
/// Connections of the warm-up, before the baseline is taken.
const WARM_UP: usize = 4_000;
/// How much the server's RSS may grow from the baseline (taken after the
/// warm-up) to the end of the soak: 256 KiB, 2.6 bytes per connection of
/// the default run. `benches/soak.sh` prints the growth of each run:
/// 20–48 KiB after 100,000 connections (eight runs on 2026-12-06, four
/// of them under two CPU hogs, two of those debug builds), so the
/// allocator's noise is a fifth of it, while a small leak on a few connections
/// crosses it: 64 bytes leaked by each refusal alone (5 % of the
/// connections; `benches/mutants.sh --only soak-leak`) grew it by 432 KiB.
/// (The bound was 2 MiB until then: that leak passed it.) It does not
/// scale with `POOL_SOAK_CONNECTIONS`: a longer run is a finer test per
/// connection.
const RSS_BOUND_KIB: u64 = 256;
/// How long the server may take to be quiescent again.
const SETTLE: Duration = Duration::from_secs(20);

/// The child's side: the server, answering `stats` on stdin, until `stop`
/// or the end of stdin.
#[test]
#[ignore = "a child process's part: run by the soak below, not on its own"]
fn soak_child_server() {
    if std::env::var_os(CHILD).is_none() {
        return; // only meaningful as the child of the soak below
    }
    init_log();
    let config = Config::default()
        // The holders stay silent for the whole run.
        .with_read_deadline(None)
        .with_first_byte_deadline(Some(FIRST_BYTE))
        .with_max_connections_per_ip(Some(PER_IP))
        .with_worker_idle_timeout(Duration::from_millis(500))
        .with_busy_reply(BUSY.to_vec());
    let server = Server::bind(
        Manager::new(config, line_echo(None)).unwrap(),
        "127.0.0.1:0",
    )
    .unwrap();
    server.start().unwrap();
    println!("ADDR {}", server.local_addrs()[0]);
    let ledger = || ServerLedger::of(&server.manager().stats()).to_line();
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("stats") => println!("STATS {}", ledger()),
            _ => break,
        }
    }
    let report = server.stop().unwrap();
    println!(
        "STOPPED drained={} forced={} queued={}",
        report.drained, report.forced, report.queued
    );
    println!("STATS {}", ledger());
    println!("DEBUG {:?}", server.manager().stats());
}

/// The server process, as the test sees it.
struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pid: u32,
    addr: SocketAddr,
}

/// A process's open descriptors, threads and resident memory.
#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

impl ServerProcess {
    fn spawn() -> ServerProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "soak_child_server", "--ignored", "--nocapture"])
            .env(CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        let pid = child.id();
        let mut server = ServerProcess {
            child,
            stdin,
            lines,
            pid,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let addr = server.expect("ADDR ");
        server.addr = addr.parse().unwrap();
        server
    }

    /// The rest of the child's next line that starts with `prefix`.
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + util::WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(e) => panic!("the server printed no {prefix:?} line: {e}"),
            }
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("the server's stdin");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    fn ledger(&mut self) -> ServerLedger {
        self.send("stats");
        ServerLedger::from_line(&self.expect("STATS ")).expect("a ledger line")
    }

    fn usage(&self) -> Usage {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count();
        Usage {
            fds,
            threads: field("Threads:") as usize,
            rss_kib: field("VmRSS:"),
        }
    }

    /// Waits until the server has no worker, serves no one and holds only
    /// the `open` connections the clients keep; its ledger then.
    fn settle(&mut self, open: u64) -> ServerLedger {
        let deadline = Instant::now() + SETTLE;
        loop {
            let l = self.ledger();
            if l.workers == 0
                && l.queued == 0
                && l.parked == open
                && l.closed + open == l.connections
            {
                return l;
            }
            assert!(Instant::now() < deadline, "the server never settled: {l:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the child stops at the end of its stdin
        let deadline = Instant::now() + util::WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kinds of connection, in the order of the table above.
const KINDS: [&str; 6] = ["short", "long", "parked", "idle", "reset", "refused"];

fn kind_of(i: usize) -> usize {
    match i % 20 {
        0..10 => 0,
        10..13 => 1,
        13..16 => 2,
        16..18 => 3,
        18 => 4,
        _ => 5,
    }
}

/// Connection `i`, of its kind, from its source address; what it saw.
fn one(addr: SocketAddr, i: usize, tally: &Tally) -> Seen {
    let kind = kind_of(i);
    let source = if KINDS[kind] == "refused" {
        REFUSED_FROM
    } else {
        Ipv4Addr::new(127, 0, 1, 1 + (i % 250) as u8)
    };
    let mut s = match connect(addr, Some(IpAddr::V4(source))) {
        Ok(s) => s,
        Err(e) => return Seen::Failed(format!("connect from {source}: {e}")),
    };
    tally.connected.fetch_add(1, Relaxed);
    let requests = |s: &mut TcpStream, tag: &str, n: usize| -> Result<(), Seen> {
        (0..n).try_for_each(|k| exchange(s, format!("{tag}{i}.{k}\n").as_bytes()))
    };
    let done = match KINDS[kind] {
        "short" => return last_request(&mut s, format!("q{i}\n").as_bytes()),
        "idle" => return await_close(&mut s),
        "long" => requests(&mut s, "l", LONG),
        "parked" => requests(&mut s, "p", 1).and_then(|()| {
            think(&mut s)?;
            requests(&mut s, "p", 1)
        }),
        "reset" => requests(&mut s, "r", 1).map(|()| {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }),
        _ => requests(&mut s, "x", 1), // refused: expected to end with Busy
    };
    match done {
        Ok(()) => Seen::Left, // dropped here: a close (or a reset) of its own
        Err(seen) => seen,
    }
}

/// A parked client's silence: `THINK` without a byte from the server (a
/// read that times out), else the connection's end as the client saw it.
fn think(s: &mut TcpStream) -> Result<(), Seen> {
    s.set_read_timeout(Some(THINK)).unwrap();
    let mut byte = [0; 1];
    let read = s.read(&mut byte);
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    match read {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        Ok(0) => Err(Seen::Bare),
        Err(e) => Err(Seen::Failed(format!("while parked: {e}"))),
        Ok(_) => Err(Seen::Failed(format!("a byte while parked: {byte:?}"))),
    }
}

/// Runs `n` connections (numbered from `first`) over `CLIENTS` threads,
/// stopping at `limit` whatever is left; what each kind saw, and the time.
fn run(addr: SocketAddr, first: usize, n: usize, limit: Duration) -> (Vec<Arc<Tally>>, Duration) {
    let tallies: Vec<Arc<Tally>> = KINDS.iter().map(|_| Arc::default()).collect();
    let next = Arc::new(AtomicUsize::new(first));
    let started = Instant::now();
    let until = started + limit;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, tallies) = (Arc::clone(&next), tallies.clone());
            thread::spawn(move || {
                while Instant::now() < until {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= first + n {
                        break;
                    }
                    let tally = &tallies[kind_of(i)];
                    tally.record(one(addr, i, tally));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (tallies, started.elapsed())
}

/// The sum of the kinds' tallies, plus `extra`.
fn total(tallies: &[Arc<Tally>], extra: &Tally) -> ClientCounts {
    tallies
        .iter()
        .fold(extra.counts(), |sum, t| sum.plus(&t.counts()))
}

fn connections() -> usize {
    std::env::var("POOL_SOAK_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn a_hundred_thousand_mixed_connections_leave_no_descriptor_thread_or_memory_behind() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let n = connections();
    let limit = Duration::from_secs((n as u64 / 500).max(120));
    let mut server = ServerProcess::spawn();
    let addr = server.addr;

    // The holders: 127.0.0.2 at its per-IP limit for the whole run.
    let holders_tally = Tally::default();
    let mut holders: Vec<TcpStream> = (0..PER_IP)
        .map(|h| {
            let mut s = connect(addr, Some(IpAddr::V4(REFUSED_FROM))).unwrap();
            holders_tally.connected.fetch_add(1, Relaxed);
            exchange(&mut s, format!("h{h}\n").as_bytes()).expect("a holder is served");
            s
        })
        .collect();
    let open = PER_IP as u64;

    // Warm-up: every kind, so that the pool, its tables and the allocator
    // have grown to the run's size; then the baseline.
    let (warm, _) = run(addr, 0, WARM_UP, limit);
    let warm = total(&warm, &Tally::default());
    assert_eq!(warm.failed, 0, "warm-up: {:?}", warm.failures);
    server.settle(open);
    let before = server.usage();

    let (tallies, elapsed) = run(addr, WARM_UP, n, limit);
    let soak = total(&tallies, &Tally::default());
    let rate = soak.connected as f64 / elapsed.as_secs_f64();
    println!(
        "soak: {} connections in {:.1} s ({rate:.0}/s) from {CLIENTS} client threads",
        soak.connected,
        elapsed.as_secs_f64()
    );
    for (kind, t) in KINDS.iter().zip(&tallies) {
        let c = t.counts();
        println!(
            "  {kind:8} {:6} connected: {} echo, {} busy, {} bare, {} left, {} failed",
            c.connected, c.echo, c.busy, c.bare, c.left, c.failed
        );
    }

    let settled = server.settle(open);
    // Descriptors and threads come back within moments of the last
    // close; wait for them, bounded.
    let deadline = Instant::now() + util::WAIT;
    let mut after = server.usage();
    while (after.fds > before.fds + 2 || after.threads > before.threads + 2)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
        after = server.usage();
    }
    println!("usage: before {before:?}, after {after:?}");

    // Every connection of the warm-up and the soak, and the holders, still
    // open.
    let clients = total(&tallies, &holders_tally).plus(&warm);
    Ledger {
        clients: &clients,
        server: &settled,
        open,
        stopped_queue: false,
    }
    .assert_adds_up();
    assert_eq!(
        soak.connected, n as u64,
        "the soak did not get through in {limit:?}"
    );

    // The holders leave too: nothing open, the ledger closes.
    for h in holders.drain(..) {
        drop(h);
        holders_tally.record(Seen::Left);
    }
    let server_end = server.settle(0);
    let clients = total(&tallies, &holders_tally).plus(&warm);
    let ledger = Ledger {
        clients: &clients,
        server: &server_end,
        open: 0,
        stopped_queue: false,
    };
    ledger.assert_adds_up();
    println!("ledger: {ledger}");

    server.send("stop");
    let stopped = server.expect("STOPPED ");
    assert_eq!(stopped, "drained=0 forced=0 queued=0");
    let stopped_ledger = ServerLedger::from_line(&server.expect("STATS ")).unwrap();
    assert_eq!(stopped_ledger.counters(), server_end.counters());
    println!("{}", server.expect("DEBUG "));

    assert!(
        after.fds.abs_diff(before.fds) <= 2,
        "descriptors: {before:?} → {after:?}"
    );
    assert!(
        after.threads.abs_diff(before.threads) <= 2,
        "threads: {before:?} → {after:?}"
    );
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    println!("RSS grew {grown} KiB over {n} connections");
    assert!(
        grown <= RSS_BOUND_KIB,
        "RSS grew {grown} KiB over {n} connections: {before:?} → {after:?}"
    );
}
