//! A guided tour: one command, no arguments, over in well under 30 s.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! It serves a tiny line protocol on loopback and drives real clients at it,
//! narrating what the pool does. Sections 1-7 run in dedicated mode (a
//! worker per connection, where the pool's bookkeeping is easiest to see):
//! growing to `max_workers`, refusing overload with a busy reply, closing an
//! idle client at the read deadline, resizing with `set_config`, shrinking
//! back through the reaper, surviving a handler panic, stopping gracefully.
//! Section 8 shows the built-in acceptor waiting at `max_connections`, and
//! section 9 the default, polled mode: 2,000 connections on a few workers, a
//! handler that sleeps without delaying anyone else, and a slowloris closed
//! by the minimum read rate.
//!
//! The protocol, one command per line: `sleep <ms>` holds the worker that
//! long then answers `slept`; `panic` panics the handler; anything else is
//! echoed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use pool_manager::{Config, Conn, Manager, MinReadRate, Server, Stats};

const BUSY: &[u8] = b"ERROR_SERVER_BUSY\n";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    // Keep the output readable: one line instead of the default panic
    // report (the library catches the panic either way).
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .unwrap_or("a panic");
        println!("          (a handler panicked: \"{msg}\")");
    }));

    let t0 = Instant::now();
    let say = |text: &str| println!("[{:5.2}s] {text}", t0.elapsed().as_secs_f64());

    let config = Config::default()
        .with_min_workers(1)
        .with_max_workers(4)
        .with_read_deadline(Some(Duration::from_secs(1)))
        .with_worker_idle_timeout(Duration::from_millis(1500))
        .with_busy_reply(BUSY.to_vec())
        // Dedicated mode: each connection keeps its worker.
        .with_park_after(None);
    let manager = Arc::new(Manager::new(config, line_protocol)?);
    manager.start()?;
    let server = AcceptLoop::start(Arc::clone(&manager))?;
    let addr = server.addr;

    println!(
        "pool-manager demo: a line protocol on {addr}, dedicated mode (a worker per connection), min 1 / max 4 workers, read deadline 1 s, idle workers retire after 1.5 s\n"
    );
    say(&format!("started          {}", gauges(&manager.stats())));

    // 1. Growth.
    println!("\n== 1. The pool grows on demand, up to max_workers");
    let mut slow = Vec::new();
    for i in 1..=4 {
        let mut c = client(addr)?;
        writeln!(c, "sleep 1500")?;
        wait(|| manager.stats().busy == i);
        say(&format!(
            "client {i} holds a worker   {}",
            gauges(&manager.stats())
        ));
        slow.push(c);
    }

    // 2. Overload.
    println!("\n== 2. Overload is refused with a reply, never dropped silently");
    let mut extra = client(addr)?;
    writeln!(extra, "hello?")?;
    let answer = read_line(&mut extra)?;
    say(&format!(
        "client 5 got {answer:?} and was closed; rejected (full) = {}",
        manager.stats().rejected.full
    ));
    for c in &mut slow {
        read_line(c)?;
    }
    drop(slow);
    wait(|| manager.stats().idle == 4);
    say(&format!(
        "the 4 slow clients got their answers   {}",
        gauges(&manager.stats())
    ));

    // 3. Read deadline.
    println!("\n== 3. The read deadline closes a client that goes quiet");
    let mut quiet = client(addr)?;
    writeln!(quiet, "one line, then silence")?;
    read_line(&mut quiet)?;
    let since = Instant::now();
    let mut rest = Vec::new();
    quiet.read_to_end(&mut rest)?;
    say(&format!(
        "server closed the quiet client after {:.2}s; closed by deadline = {}",
        since.elapsed().as_secs_f64(),
        manager.stats().closed.read_deadline
    ));

    // 4. set_config.
    println!("\n== 4. set_config changes any knob while serving");
    manager.set_config(manager.config().with_min_workers(6).with_max_workers(8))?;
    say(&format!(
        "min 1 -> 6, max 4 -> 8 (spawned at once)   {}",
        gauges(&manager.stats())
    ));
    manager.set_config(manager.config().with_min_workers(1))?;
    say("min back to 1: the reaper may now retire idle workers");

    // 5. The reaper.
    println!("\n== 5. The reaper retires idle workers down to min_workers");
    let mut last = manager.stats().workers;
    let deadline = Instant::now() + Duration::from_secs(10);
    while last > 1 && Instant::now() < deadline {
        wait_up_to(Duration::from_secs(3), || manager.stats().workers != last);
        let now = manager.stats().workers;
        if now != last {
            say(&format!("reaped: {last} -> {now} workers"));
            last = now;
        }
    }
    say(&format!("settled   {}", gauges(&manager.stats())));

    // 6. Panic.
    println!("\n== 6. A panicking handler costs its connection, not a worker");
    let before = manager.stats().workers;
    let mut bad = client(addr)?;
    writeln!(bad, "panic")?;
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    wait(|| manager.stats().closed.panic == 1);
    let mut good = client(addr)?;
    writeln!(good, "still here?")?;
    let echoed = read_line(&mut good)?;
    drop(good);
    say(&format!(
        "panics = {}, workers {} -> {}, next client echoed {echoed:?}",
        manager.stats().closed.panic,
        before,
        manager.stats().workers
    ));

    // 7. Graceful stop.
    println!("\n== 7. Graceful stop: idle connections close at once, running handlers finish");
    let mut idle = client(addr)?;
    writeln!(idle, "hi")?;
    read_line(&mut idle)?;
    let mut busy = client(addr)?;
    writeln!(busy, "sleep 500")?;
    wait(|| manager.stats().busy == 2);
    server.stop();
    let report = manager.stop()?;
    let reply = read_line(&mut busy)?;
    say(&format!(
        "stopped in {:.2}s: {} drained, {} forced; the busy client still got {reply:?}",
        report.elapsed.as_secs_f64(),
        report.drained,
        report.forced
    ));

    // 8. The built-in acceptor at max_connections.
    println!("\n== 8. The built-in acceptor: at max_connections new clients wait in the backlog");
    let limited = Server::bind(
        Manager::new(
            Config::default()
                .with_max_connections(Some(2))
                .with_read_deadline(None),
            line_protocol,
        )?,
        "127.0.0.1:0",
    )?;
    limited.start()?;
    let addr = limited.local_addrs()[0];
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = client(addr)?;
        writeln!(c, "hi")?;
        read_line(&mut c)?;
        open.push(c);
    }
    let mut third = client(addr)?;
    writeln!(third, "my turn?")?;
    third.set_read_timeout(Some(Duration::from_millis(300)))?;
    let waited = BufReader::new(&mut third)
        .read_line(&mut String::new())
        .is_err();
    say(&format!(
        "2 connections open (the limit): a third client connected but is not accepted yet ({}), refused: {}",
        if waited {
            "no answer after 300 ms"
        } else {
            "answered?!"
        },
        limited.manager().stats().rejected.total()
    ));
    third.set_read_timeout(Some(Duration::from_secs(5)))?;
    let freed = Instant::now();
    drop(open.pop());
    let answer = read_line(&mut third)?;
    say(&format!(
        "one client left: the waiting one was accepted and answered {answer:?} {:.1?} later",
        freed.elapsed()
    ));
    drop((open, third));
    limited.stop()?;

    parked_mode(&say)?;

    // Summary.
    let s = manager.stats();
    println!("\n== Summary (the pool of sections 1-7)");
    println!("connections served   {}", s.connections);
    println!("bytes in / out       {} / {}", s.bytes_in, s.bytes_out);
    println!(
        "rejected             {} (pool full {}, queue timeout {}, while stopped {})",
        s.rejected.total(),
        s.rejected.full,
        s.rejected.queue_timeout,
        s.rejected.stopped
    );
    println!(
        "closed               {} (eof {}, read deadline {}, handler {}, panic {}, stop {}, error {})",
        s.closed.total(),
        s.closed.eof,
        s.closed.read_deadline,
        s.closed.handler,
        s.closed.panic,
        s.closed.stop,
        s.closed.error
    );
    println!(
        "workers              spawned {}, retired {}, alive {}",
        s.workers_spawned, s.workers_retired, s.workers
    );
    println!("total time           {:.2}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Section 9: polled mode, the default: thousands of connections on a
/// handful of workers, and a handler that blocks without holding anyone up.
fn parked_mode(say: &dyn Fn(&str)) -> Result<(), Box<dyn std::error::Error>> {
    const CLIENTS: usize = 2000;
    println!(
        "\n== 9. Polled mode (the default): {CLIENTS} connections on a few workers; a blocking handler holds only its own client"
    );
    // Each connection is two descriptors here (client and server side).
    #[cfg(unix)]
    rlimit::increase_nofile_limit(u64::MAX)?;
    let server = Server::bind(
        Manager::new(
            Config::default()
                .with_max_workers(8)
                .with_read_deadline(None)
                // A line must come at 20 bytes a second at least, judged
                // over 300 ms windows, once it has begun.
                .with_min_read_rate(Some(MinReadRate::new(20, Duration::from_millis(300)))),
            line_protocol,
        )?,
        "127.0.0.1:0",
    )?;
    server.start()?;
    let addr = server.local_addrs()[0];
    let manager = server.manager();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(client(addr)?);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        writeln!(c, "hello from {i}")?;
    }
    for c in &mut clients {
        read_line(c)?;
    }
    wait(|| manager.stats().parked == CLIENTS);
    let s = manager.stats();
    say(&format!(
        "{CLIENTS} clients connected, sent a line each and were answered in {:.2?}: {} waiting in the poller, {} workers, {} threads in this process",
        started.elapsed(),
        s.parked,
        s.workers,
        threads_of_this_process()
    ));
    // One client's request blocks its handler for a second; everyone else
    // is answered meanwhile.
    let mut sleeper = client(addr)?;
    writeln!(sleeper, "sleep 1000")?;
    wait(|| manager.stats().busy == 1);
    let round = Instant::now();
    for c in &mut clients {
        writeln!(c, "again")?;
    }
    for c in &mut clients {
        read_line(c)?;
    }
    let all = round.elapsed();
    let s = manager.stats();
    say(&format!(
        "a handler sleeps 1 s; meanwhile all {CLIENTS} others sent a line and were answered in {all:.2?} ({} workers now: the sleeping one gave its place to another)",
        s.workers
    ));
    say(&format!(
        "the sleeper got {:?} after {:.2?}; {} parks and {} wakes so far",
        read_line(&mut sleeper)?,
        round.elapsed(),
        s.parks,
        s.wakes
    ));
    drop(sleeper);

    let mut slow = client(addr)?;
    let trickled = Instant::now();
    let mut sent = 0;
    // One byte every 100 ms, never a whole line: a slowloris.
    while slow.write_all(b"z").is_ok() && trickled.elapsed() < Duration::from_secs(3) {
        sent += 1;
        slow.set_read_timeout(Some(Duration::from_millis(100)))?;
        if matches!(slow.read(&mut [0; 16]), Ok(0)) {
            break;
        }
    }
    wait(|| manager.stats().closed.slow_read == 1);
    say(&format!(
        "a client trickling a line a byte per 100 ms was closed after {sent} bytes, {:.2?} (closed as slow_read: {})",
        trickled.elapsed(),
        manager.stats().closed.slow_read
    ));
    let report = server.stop()?;
    say(&format!(
        "stop with {CLIENTS} waiting connections: {} drained, {} forced, in {:.1?}",
        report.drained, report.forced, report.elapsed
    ));
    Ok(())
}

/// Threads of this process, from /proc (Linux).
fn threads_of_this_process() -> String {
    std::fs::read_dir("/proc/self/task").map_or_else(|_| "?".into(), |d| d.count().to_string())
}

/// The demo's handler: `sleep <ms>`, `panic`, or echo, one command per line.
fn line_protocol(conn: &mut Conn<'_>, data: &[u8]) -> io::Result<()> {
    let mut rest = data;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end + 1..];
        if let Some(ms) = line.strip_prefix("sleep ") {
            thread::sleep(Duration::from_millis(ms.trim().parse().unwrap_or(0)));
            conn.write_all(b"slept\n")?;
        } else if line == "panic" {
            panic!("asked to panic");
        } else {
            writeln!(conn, "{line}")?;
        }
    }
    conn.keep(rest.len());
    Ok(())
}

/// The user's own accept loop: `put` every stream, answer refused ones.
struct AcceptLoop {
    addr: SocketAddr,
    done: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl AcceptLoop {
    fn start(manager: Arc<Manager>) -> io::Result<AcceptLoop> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                if let Err(refused) = manager.put(stream) {
                    let mut stream = refused.into_inner();
                    let _ = stream.write_all(BUSY);
                }
            }
        });
        Ok(AcceptLoop {
            addr,
            done,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        self.done.store(true, Ordering::SeqCst);
        // Wake the blocked accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client(addr: SocketAddr) -> io::Result<TcpStream> {
    let c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_nodelay(true)?;
    Ok(c)
}

fn read_line(c: &mut TcpStream) -> io::Result<String> {
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

fn gauges(s: &Stats) -> String {
    format!(
        "[workers {} = busy {} + idle {}]",
        s.workers, s.busy, s.idle
    )
}

/// Waits (bounded) for a condition on the pool.
fn wait(cond: impl FnMut() -> bool) {
    wait_up_to(Duration::from_secs(5), cond);
}

fn wait_up_to(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}
