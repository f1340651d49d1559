//! A storm of configuration changes under load (issue 14, part 2):
//! hundreds of random valid and invalid configs a second while 200
//! connections run. Every invalid config is refused with its error and
//! changes nothing; the pool stays within the bounds of the configs it
//! was given; no deadlock; every stream and close is counted.

mod util;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use pool_manager::{Config, ConfigError, Server};
use util::*;

const MS: Duration = Duration::from_millis(1);

fn addr(server: &Server) -> SocketAddr {
    server.local_addrs()[0]
}

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
    let config = base
        .clone()
        .with_min_workers(rng.range(0, max_workers.min(4)))
        .with_max_workers(max_workers)
        .with_queue_capacity(rng.pick(&[0, 1, 16, 1000]))
        .with_queue_timeout(rng.pick(&[50 * MS, 300 * MS, secs(1)]))
        .with_buffer_size(rng.pick(&[16, 64, 5120, 65536]))
        .with_read_deadline(read_deadline)
        .with_write_deadline(rng.pick(&[None, Some(secs(1)), Some(secs(3))]))
        .with_worker_idle_timeout(rng.pick(&[MS, 50 * MS, secs(10)]))
        .with_backlog(rng.pick(&[512, 1024]))
        .with_nodelay(rng.pick(&[true, false]))
        .with_keepalive(rng.pick(&[None, Some(secs(1))]))
        .with_send_buffer_size(rng.pick(&[None, Some(4096)]))
        .with_recv_buffer_size(rng.pick(&[None, Some(4096)]))
        .with_max_connections(rng.pick(&[None, Some(50), Some(300)]))
        .with_park_after(park_after)
        .with_first_byte_deadline(rng.pick(&[None, Some(secs(2))]))
        .with_pollers(rng.range(1, 4))
        .with_grow_after(rng.pick(&[Duration::from_micros(100), MS, 10 * MS]));
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
            c.min_read_rate = Some(pool_manager::MinReadRate::new(0, MS));
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
    let base = Config::default().with_busy_reply(b"BUSY\n".to_vec());
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
            let mut max_pollers = base.pollers;
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
                let s = manager.stats();
                assert!(s.running);
                assert_eq!(s.busy + s.idle, s.workers, "{s:?}");
                assert!(
                    s.workers >= config.min_workers,
                    "{} workers under min_workers {}",
                    s.workers,
                    config.min_workers
                );
                // Lowered, `max_workers` retires the idle workers over it
                // at once, busy ones as their connections close and
                // pollers after their next event: above it, the only idle
                // workers are pollers between turns, never more than the
                // most pollers ever asked for, plus the spares kept while
                // handlers block often (two per poller at most).
                max_pollers = max_pollers.max(config.pollers);
                assert!(
                    s.workers <= config.max_workers
                        || s.idle <= max_pollers + 2 * max_pollers.max(1),
                    "{} workers over max_workers {} with {} idle (pollers at most {max_pollers})",
                    s.workers,
                    config.max_workers,
                    s.idle
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
    let last = base
        .clone()
        .with_min_workers(2)
        .with_max_workers(16)
        .with_read_deadline(Some(Duration::from_secs(30)))
        .with_queue_timeout(Duration::from_secs(5));
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
            && (last.min_workers..=last.max_workers).contains(&s.workers)
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
