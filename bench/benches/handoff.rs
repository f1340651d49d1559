//! The hand-off from `put` to the handler, with criterion: how long after
//! `Manager::put` a worker calls the handler's `open` (dedicated mode),
//! - `idle_worker`: an idle worker is waiting on its channel;
//! - `spawn`: no worker exists, so `put` starts a thread;
//! - `queue`: the only worker is busy; the stream is queued, the busy
//!   connection is released right after `put`, and the worker takes the
//!   queued stream.
//!
//! And from a client's byte to the handler's `data`, for a connection that
//! waits on its own worker (`read/dedicated`) and for one waiting in the
//! workers' shared poller (`read/polled`, the default mode).
//!
//! Streams are accepted over loopback before the clock starts; only `put`
//! → `open` is timed.
//!
//! ```text
//! cargo bench -p pool-manager-bench --bench handoff
//! ```

use std::io;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use crossbeam_channel::{Receiver, Sender};
use pool_manager::{Config, Conn, Handler, Manager, Stats};

/// Reports every `open`; with a gate, `open` then waits for a release.
struct Signal {
    started: Sender<()>,
    gate: Option<Receiver<()>>,
}

impl Handler for Signal {
    type State = ();

    fn open(&self, _conn: &mut Conn<'_>) {
        let _ = self.started.send(());
        if let Some(gate) = &self.gate {
            let _ = gate.recv_timeout(Duration::from_secs(5));
        }
    }

    fn data(&self, _conn: &mut Conn<'_>, _data: &[u8]) -> io::Result<()> {
        let _ = self.started.send(());
        Ok(())
    }
}

/// A connected pair: (client, server side).
fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// Waits, bounded, until `done` holds.
fn wait(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn manager(config: Config, gate: Option<Receiver<()>>) -> (Manager, Receiver<()>) {
    let (started, started_rx) = crossbeam_channel::unbounded();
    let config = config.with_read_deadline(Some(Duration::from_secs(5)));
    let manager = Manager::with_handler(config, Signal { started, gate }).unwrap();
    manager.start().unwrap();
    (manager, started_rx)
}

/// `iters` times: accept a stream, wait until the pool is `ready`, then time
/// `put` → `open`. The client then leaves, so the worker frees itself.
fn timed_puts(
    iters: u64,
    listener: &TcpListener,
    manager: &Manager,
    started: &Receiver<()>,
    what: &str,
    ready: impl Fn(&Stats) -> bool,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (client, server) = pair(listener);
        wait(what, || ready(&manager.stats()));
        let t0 = Instant::now();
        manager.put(server).unwrap();
        started.recv().unwrap();
        total += t0.elapsed();
        drop(client);
    }
    total
}

fn idle_worker(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = Config::default()
        .with_min_workers(1)
        .with_max_workers(1)
        // dedicated: `put` hands the stream to a worker
        .with_park_after(None);
    let (manager, started) = manager(config, None);
    c.bench_function("handoff/idle_worker", |b| {
        b.iter_custom(|iters| {
            timed_puts(
                iters,
                &listener,
                &manager,
                &started,
                "an idle worker",
                |s| s.idle == 1,
            )
        });
    });
    manager.stop().unwrap();
}

fn spawn(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = Config::default()
        .with_min_workers(0)
        .with_max_workers(4)
        // The reaper retires the worker soon after each connection.
        .with_worker_idle_timeout(Duration::from_millis(1))
        .with_park_after(None);
    let (manager, started) = manager(config, None);
    c.bench_function("handoff/spawn", |b| {
        b.iter_custom(|iters| {
            timed_puts(iters, &listener, &manager, &started, "no worker", |s| {
                s.workers == 0
            })
        });
    });
    manager.stop().unwrap();
}

fn queue(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (release, gate) = crossbeam_channel::unbounded();
    let config = Config::default()
        .with_min_workers(1)
        .with_max_workers(1)
        .with_queue_capacity(1)
        .with_park_after(None);
    let (manager, started) = manager(config, Some(gate));
    // The connection that keeps the only worker busy; each iteration's
    // stream becomes the next one's blocker.
    let (mut blocker, server) = pair(&listener);
    manager.put(server).unwrap();
    started.recv().unwrap();
    c.bench_function("handoff/queue", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (client, server) = pair(&listener);
                // The blocker's client is gone: once released, its worker
                // reads EOF at once and takes the queued stream.
                drop(std::mem::replace(&mut blocker, client));
                let t0 = Instant::now();
                manager.put(server).unwrap();
                release.send(()).unwrap();
                started.recv().unwrap();
                total += t0.elapsed();
            }
            total
        });
    });
    release.send(()).unwrap();
    drop(blocker);
    manager.stop().unwrap();
}

/// A byte from the client → `data`, for a connection waiting on its worker
/// (`park_after` None) or waiting in the shared poller (`park_after` Some).
fn read(c: &mut Criterion, name: &str, park_after: Option<Duration>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = Config::default()
        .with_min_workers(1)
        .with_max_workers(1)
        .with_park_after(park_after);
    let (manager, started) = manager(config, None);
    let (mut client, server) = pair(&listener);
    client.set_nodelay(true).unwrap();
    manager.put(server).unwrap();
    let waiting = |s: &Stats| match park_after {
        Some(_) => s.parked == 1 && s.idle == 1,
        None => s.busy == 1,
    };
    if park_after.is_some() {
        // Polled: `open` runs when the first byte arrives.
        io::Write::write_all(&mut client, b"x").unwrap();
        started.recv().unwrap(); // open
    }
    started.recv().unwrap(); // open (dedicated), or the first byte's data
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                wait("the connection waiting", || waiting(&manager.stats()));
                let t0 = Instant::now();
                io::Write::write_all(&mut client, b"x").unwrap();
                started.recv().unwrap();
                total += t0.elapsed();
            }
            total
        });
    });
    drop(client);
    manager.stop().unwrap();
}

fn read_dedicated(c: &mut Criterion) {
    read(c, "read/dedicated", None);
}

fn read_polled(c: &mut Criterion) {
    read(c, "read/polled", Some(Duration::ZERO));
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = handoff;
    config = config();
    targets = idle_worker, spawn, queue, read_dedicated, read_polled
}
criterion_main!(handoff);
