//! Lifecycle figures of the core pool, over loopback: OS threads while
//! growing and after reaping, how long `stop()` takes with idle and busy
//! connections, and the CPU an idle pool uses.
//!
//! ```text
//! cargo bench -p pool-manager-bench --bench lifecycle
//! ```
//!
//! Prints one line per figure; stop times are medians of several rounds.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pool_manager::{Config, Conn, Manager, Server};

const ROUNDS: usize = 5;

/// Threads of this process whose name starts with `prefix`, with their CPU
/// time in clock ticks (1/100 s).
fn threads(prefix: &str) -> (usize, u64) {
    let (mut count, mut ticks) = (0, 0);
    for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            fs::read_to_string(path.join("comm")),
            fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        if name.trim().starts_with(prefix) {
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            count += 1;
            ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    (count, ticks)
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// A handler that holds each connection's first read until released.
#[derive(Clone, Default)]
struct Hold(Arc<(Mutex<bool>, Condvar)>);

impl Hold {
    fn wait(&self) {
        let (lock, cv) = &*self.0;
        let mut open = lock.lock();
        while !*open {
            cv.wait_for(&mut open, Duration::from_secs(10));
        }
    }
    fn release(&self) {
        *self.0.0.lock() = true;
        self.0.1.notify_all();
    }
}

fn connect_and_put(listener: &TcpListener, manager: &Manager, n: usize) -> Vec<TcpStream> {
    let addr = listener.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let (s, _) = listener.accept().unwrap();
            manager.put(s).expect("put");
            c
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn growth_and_reaping() {
    let hold = Hold::default();
    let h = hold.clone();
    let manager = Manager::new(
        Config::default()
            .with_min_workers(2)
            .with_max_workers(64)
            .with_worker_idle_timeout(Duration::from_millis(500))
            // A worker per busy client: the threads follow the clients.
            .with_park_after(None),
        move |conn: &mut Conn<'_>, data: &[u8]| {
            h.wait();
            conn.write_all(data)
        },
    )
    .unwrap();
    manager.start().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    wait_until(Duration::from_secs(5), || threads("pool-worker-").0 == 2);
    println!(
        "threads at start (min 2):        {}",
        threads("pool-worker-").0
    );
    let mut clients = connect_and_put(&listener, &manager, 64);
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    wait_until(Duration::from_secs(5), || manager.stats().busy == 64);
    println!(
        "threads with 64 busy clients:    {} (stats: {} workers)",
        threads("pool-worker-").0,
        manager.stats().workers
    );
    hold.release();
    for c in &mut clients {
        let _ = c.read(&mut [0; 1]);
    }
    drop(clients);
    let idle_at = Instant::now();
    wait_until(Duration::from_secs(10), || threads("pool-worker-").0 == 2);
    println!(
        "threads after reaping:           {} ({:.2?} after the clients left; idle timeout 500 ms)",
        threads("pool-worker-").0,
        idle_at.elapsed()
    );
    manager.stop().unwrap();
}

fn stop_times() {
    let hold = Hold::default();
    let h = hold.clone();
    let manager = Manager::new(
        Config::default()
            .with_max_workers(128)
            .with_read_deadline(None),
        move |conn: &mut Conn<'_>, data: &[u8]| {
            if data == b"busy" {
                h.wait();
            }
            conn.write_all(data)
        },
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();

    let mut idle_times = Vec::new();
    for _ in 0..ROUNDS {
        manager.start().unwrap();
        let mut clients = connect_and_put(&listener, &manager, 100);
        for c in &mut clients {
            c.write_all(b"i").unwrap();
            c.read_exact(&mut [0; 1]).unwrap();
        }
        let report = manager.stop().unwrap();
        assert_eq!(report.drained, 100);
        idle_times.push(report.elapsed);
    }
    println!(
        "stop() with 100 idle connections: median {:.2?} over {ROUNDS} rounds",
        median(idle_times)
    );

    let mut busy_times = Vec::new();
    for _ in 0..ROUNDS {
        *hold.0.0.lock() = false;
        manager.start().unwrap();
        let mut clients = connect_and_put(&listener, &manager, 100);
        for (i, c) in clients.iter_mut().enumerate() {
            if i < 10 {
                c.write_all(b"busy").unwrap();
            } else {
                c.write_all(b"i").unwrap();
                c.read_exact(&mut [0; 1]).unwrap();
            }
        }
        wait_until(Duration::from_secs(5), || manager.stats().bytes_in >= 130);
        let release = {
            let hold = hold.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                hold.release();
            })
        };
        let report = manager.stop().unwrap();
        release.join().unwrap();
        assert_eq!(report.drained, 100);
        busy_times.push(report.elapsed);
    }
    println!(
        "stop() with 90 idle + 10 handlers released 200 ms later: median {:.2?} over {ROUNDS} rounds",
        median(busy_times)
    );
}

fn idle_cpu() {
    let manager = Manager::new(
        Config::default().with_min_workers(8),
        |conn: &mut Conn<'_>, data: &[u8]| conn.write_all(data),
    )
    .unwrap();
    manager.start().unwrap();
    wait_until(Duration::from_secs(5), || threads("pool-").0 == 9);
    let (count, before) = threads("pool-");
    std::thread::sleep(Duration::from_secs(10));
    let (_, after) = threads("pool-");
    println!(
        "idle pool ({count} threads: 8 workers + the manager thread) over 10 s: {} ms of CPU",
        (after - before) * 10
    );
    manager.stop().unwrap();
}

/// The built-in acceptor: time from a freed slot (at `max_connections`) to
/// the waiting client's answer, and `Server::stop` with 100 open
/// connections.
fn server_figures() {
    let manager = Manager::new(
        Config::default()
            .with_max_workers(128)
            .with_max_connections(Some(100))
            .with_read_deadline(None),
        |conn: &mut Conn<'_>, data: &[u8]| conn.write_all(data),
    )
    .unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    let addr = server.local_addrs()[0];
    let connect = || {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.set_nodelay(true).unwrap();
        c
    };
    let (mut resume_times, mut stop_times) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        server.start().unwrap();
        let mut open: Vec<TcpStream> = (0..100).map(|_| connect()).collect();
        for c in &mut open {
            c.write_all(b"i").unwrap();
            c.read_exact(&mut [0; 1]).unwrap();
        }
        let mut waiting = connect();
        waiting.write_all(b"w").unwrap();
        std::thread::sleep(Duration::from_millis(50)); // it is in the backlog
        let freed = Instant::now();
        drop(open.pop());
        waiting.read_exact(&mut [0; 1]).unwrap();
        resume_times.push(freed.elapsed());
        open.push(waiting);
        let report = server.stop().unwrap();
        assert_eq!(report.drained, 100);
        stop_times.push(report.elapsed);
    }
    println!(
        "freed slot at max_connections -> waiting client answered: median {:.2?} over {ROUNDS} rounds",
        median(resume_times)
    );
    println!(
        "Server::stop() with 100 open connections: median {:.2?} over {ROUNDS} rounds",
        median(stop_times)
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass
    // nothing: run only when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    growth_and_reaping();
    stop_times();
    server_figures();
    idle_cpu();
}
