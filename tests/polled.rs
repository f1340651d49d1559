//! Polled mode, the default: workers wait for ready connections in a shared
//! poller and serve them themselves. A handler that blocks holds its own
//! connection only; the pool grows while ready work waits and shrinks
//! after; a connection is never served by two workers at once; a stop
//! accounts for connections in every state.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pool_manager::{Config, Conn, Manager};
use util::*;

/// A started echo manager whose handler sleeps `sleep` first when a read
/// starts with `!`; `sleeping` counts the handlers asleep.
fn sleepy_manager(config: Config, sleep: Duration, sleeping: &Arc<AtomicUsize>) -> Arc<Manager> {
    init_log();
    let sleeping = Arc::clone(sleeping);
    let manager = Manager::new(config, move |conn: &mut Conn<'_>, data: &[u8]| {
        if data.first() == Some(&b'!') {
            sleeping.fetch_add(1, SeqCst);
            thread::sleep(sleep);
            sleeping.fetch_sub(1, SeqCst);
        }
        conn.write_all(data)
    })
    .expect("valid config");
    manager.start().expect("start");
    Arc::new(manager)
}

/// Each client, in turn, gets its echo within `limit`.
fn each_answered_within(clients: &mut [TcpStream], limit: Duration) {
    for (i, c) in clients.iter_mut().enumerate() {
        let asked = Instant::now();
        roundtrip(c, b"hello", b"hello");
        let took = asked.elapsed();
        assert!(took < limit, "client {i} answered in {took:?}");
    }
}

#[test]
fn the_default_is_polled_mode() {
    assert_eq!(Config::default().park_after, Some(Duration::ZERO));
}

#[test]
fn a_handler_sleeping_two_seconds_does_not_delay_twenty_other_clients() {
    let sleeping = Arc::new(AtomicUsize::new(0));
    let manager = sleepy_manager(Config::default(), Duration::from_secs(2), &sleeping);
    let lo = Loopback::new();
    let mut others: Vec<TcpStream> = (0..20).map(|_| lo.put(&manager)).collect();
    let mut sleeper = lo.put(&manager);
    sleeper.write_all(b"!").unwrap();
    wait_for("the handler to sleep", || sleeping.load(SeqCst) == 1);
    let started = Instant::now();
    each_answered_within(&mut others, Duration::from_millis(100));
    assert_eq!(sleeping.load(SeqCst), 1, "all answered while it slept");
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut reply = [0; 1];
    sleeper.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"!");
}

#[test]
fn the_pool_grows_while_ready_work_waits_and_shrinks_after() {
    let sleeping = Arc::new(AtomicUsize::new(0));
    let idle = Duration::from_millis(300);
    let manager = sleepy_manager(
        Config::default()
            .with_max_workers(8)
            .with_pollers(1)
            .with_worker_idle_timeout(idle),
        Duration::from_millis(400),
        &sleeping,
    );
    let lo = Loopback::new();
    let mut clients: Vec<TcpStream> = (0..4).map(|_| lo.put(&manager)).collect();
    assert!(manager.stats().workers <= 1, "one poller to begin with");
    for c in &mut clients {
        c.write_all(b"!").unwrap();
    }
    // Each sleeping handler's place goes to another worker, so all four
    // sleep at once.
    wait_for("four handlers asleep at once", || {
        sleeping.load(SeqCst) == 4
    });
    let grown = manager.stats();
    assert!((4..=8).contains(&grown.workers), "{grown:?}");
    // Sleepers' poller roles were handed on: the first two (the second
    // within 100 ms of the first opens the spare pollers' window, and the
    // pollers may then take the last clients at once); at most one per
    // sleeper. Never through the queue.
    assert!((2..=4).contains(&grown.poller_handoffs), "{grown:?}");
    assert_eq!(grown.overflowed, 0, "{grown:?}");
    for c in &mut clients {
        let mut reply = [0; 1];
        c.read_exact(&mut reply).unwrap();
    }
    // Idle for `worker_idle_timeout`: back to `min_workers` (0; on Windows
    // the last poller stays while connections are parked).
    let stats = wait_stats(&manager, "the pool to shrink", |s| {
        s.workers == IDLE_WORKERS_WHILE_PARKED
    });
    assert_eq!(
        stats.workers_retired + IDLE_WORKERS_WHILE_PARKED as u64,
        stats.workers_spawned
    );
    assert_eq!(stats.parked, 4, "the clients stay connected");
    // With no worker left, a parked client that sends is still served:
    // the manager thread starts a poller for it.
    roundtrip(&mut clients[0], b"again", b"again");
    assert!(manager.stats().workers >= 1);
    assert_eq!(manager.stats().closed.total(), 0);
}

/// Connections parked by workers that have since retired are still served.
/// Each of sixteen handlers sleeps, so the pool grows to serve them all at
/// once; each worker parks its connection as it wakes (re-arming it in the
/// shared poller from its own thread), then idles out. On Windows mio asks
/// the AFD driver for a socket's readiness from the thread that
/// (re)registers it or polls next: a poll lost with its thread would leave
/// the connection deaf (a hypothesis for a rare failure of
/// `tests/storm.rs` under Wine, `docs/performance.md`). Three rounds. (On
/// Linux a connection parks back into its epoll entry with no system
/// call, so there the test only checks the pool's shrinking.)
#[test]
fn connections_parked_by_retired_workers_are_still_served() {
    let sleeping = Arc::new(AtomicUsize::new(0));
    let config = Config::default()
        .with_max_workers(16)
        .with_pollers(2)
        .with_worker_idle_timeout(Duration::from_millis(100));
    // Long enough for the sysmon to hand every sleeper on (each after one
    // to two looks, the first one up to 8 `grow_after`s late after a
    // quiet spell) before the first wakes.
    let manager = sleepy_manager(config, Duration::from_millis(200), &sleeping);
    let lo = Loopback::new();
    let mut clients: Vec<TcpStream> = (0..16).map(|_| lo.put(&manager)).collect();
    for round in 0..3 {
        let before = manager.stats().workers_spawned;
        for c in &mut clients {
            c.write_all(b"!").unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let mut reply = [0; 1];
            c.read_exact(&mut reply)
                .unwrap_or_else(|e| panic!("round {round}: client {i}, the sleeper: {e}"));
        }
        // Most sleepers were handed to a worker of their own.
        let grown = manager.stats().workers_spawned - before;
        assert!(grown >= 8, "round {round}: {grown} workers started");
        // Down to one idle worker at most (on Windows the last poller
        // stays while connections are parked).
        wait_stats(&manager, "the pool to shrink", |s| {
            s.workers <= 1 && s.idle == s.workers
        });
        // Every connection, parked by a worker now gone, answers.
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(b"x").unwrap();
            let mut reply = [0; 1];
            c.read_exact(&mut reply).unwrap_or_else(|e| {
                panic!(
                    "round {round}: client {i}, parked: {e} ({:?})",
                    manager.stats()
                )
            });
            assert_eq!(&reply, b"x");
        }
    }
    let stats = manager.stats();
    assert_eq!(stats.closed.total(), 0, "{stats:?}");
}

/// One poller, and handlers that sleep `sleep` on `!`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn one_poller_and_a_sleeper(sleep: Duration) -> (Arc<Manager>, Arc<AtomicUsize>, Loopback) {
    let sleeping = Arc::new(AtomicUsize::new(0));
    let config = Config::default().with_max_workers(8).with_pollers(1);
    let manager = sleepy_manager(config, sleep, &sleeping);
    (manager, sleeping, Loopback::new())
}

/// Linux only, as the spare poller: elsewhere the replacement's own turns
/// may read as blocked by their length, and be replaced in turn.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn a_handler_that_blocks_once_brings_only_its_replacement() {
    let (manager, sleeping, lo) = one_poller_and_a_sleeper(Duration::from_millis(500));
    let mut sleeper = lo.put(&manager);
    let mut other = lo.put(&manager);
    sleeper.write_all(b"!").unwrap();
    wait_for("the handler to sleep", || sleeping.load(SeqCst) == 1);
    // A ready connection while the only poller sleeps: its role goes on.
    roundtrip(&mut other, b"hello", b"hello");
    // The replacement, and a spare if there were one, started in the look
    // that released the sleeper, before `other` was answered.
    let mut most = manager.stats().workers;
    while sleeping.load(SeqCst) == 1 {
        let s = manager.stats();
        most = most.max(s.workers);
        roundtrip(&mut other, b"again", b"again");
    }
    let stats = manager.stats();
    assert_eq!(stats.poller_handoffs, 1, "{stats:?}");
    // The sleeper and one poller: no spare for a single block.
    assert_eq!(most, 2, "{stats:?}");
    let mut reply = [0; 1];
    sleeper.read_exact(&mut reply).unwrap();
}

/// Linux only: elsewhere the sysmon cannot tell a blocked turn from a long
/// one that computes, and keeps no spare (`pool/sysmon.rs`).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn handlers_that_block_often_get_a_spare_poller() {
    let (manager, sleeping, lo) = one_poller_and_a_sleeper(Duration::from_secs(2));
    let mut other = lo.put(&manager);
    let mut sleepers = Vec::new();
    // Blocks in a row, each released as a connection is ready. One within
    // 100 ms of the last brings the spare, in the look that releases it:
    // the sleepers, their replacement and the spare. Up to four tries, in
    // case a loaded machine stalls the test between two releases for
    // longer than that.
    let mut spare = None;
    for n in 1..=4 {
        let mut sleeper = lo.put(&manager);
        sleeper.write_all(b"!").unwrap();
        wait_for("the handler to sleep", || sleeping.load(SeqCst) == n);
        roundtrip(&mut other, b"hello", b"hello");
        sleepers.push(sleeper);
        let stats = manager.stats();
        if stats.workers > n + 1 {
            spare = Some((n, stats));
            break;
        }
    }
    // Without a spare the pool is the sleepers and one poller.
    let (n, stats) = spare.expect("a spare poller after blocks in a row");
    assert!(n >= 2, "not after a single block: {stats:?}");
    assert_eq!(stats.workers, n + 2, "{stats:?}");
    assert_eq!(stats.poller_handoffs, n as u64, "{stats:?}");
    for s in &mut sleepers {
        let mut reply = [0; 1];
        s.read_exact(&mut reply).unwrap();
    }
}

#[test]
fn a_connection_is_never_served_by_two_workers_at_once() {
    init_log();
    // Per connection (by its client's address): handlers inside now, and
    // the most ever seen inside at once.
    type Inside = Arc<Mutex<HashMap<std::net::SocketAddr, (usize, usize)>>>;
    let inside: Inside = Arc::default();
    let seen = Arc::clone(&inside);
    let manager = Manager::new(
        Config::default().with_max_workers(8).with_pollers(4),
        move |conn: &mut Conn<'_>, data: &[u8]| {
            let fd = conn.peer_addr().unwrap();
            {
                let mut map = seen.lock();
                let entry = map.entry(fd).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(entry.0);
            }
            // Long enough for more bytes to arrive while inside.
            thread::yield_now();
            let result = conn.write_all(data);
            seen.lock().get_mut(&fd).unwrap().0 -= 1;
            result
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let clients: Vec<TcpStream> = (0..8).map(|_| lo.put(&manager)).collect();
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            thread::spawn(move || {
                // A storm of small writes, each its own event, echoed in order.
                let mut reader = c.try_clone().unwrap();
                let expect: Vec<u8> = (0..2000u32).map(|n| (n as u8) ^ (i as u8)).collect();
                let check = {
                    let expect = expect.clone();
                    thread::spawn(move || {
                        let mut got = vec![0; expect.len()];
                        reader.read_exact(&mut got).unwrap();
                        got == expect
                    })
                };
                for chunk in expect.chunks(7) {
                    c.write_all(chunk).unwrap();
                }
                check.join().unwrap()
            })
        })
        .collect();
    for w in writers {
        assert!(w.join().unwrap(), "echoed in order");
    }
    let max = inside.lock().values().map(|&(_, max)| max).max();
    assert_eq!(
        max,
        Some(1),
        "a connection's handler never ran twice at once"
    );
    // The clients are gone: every close is theirs.
    let stats = wait_stats(&manager, "8 closes", |s| s.closed.total() == 8);
    assert_eq!(stats.closed.eof, 8, "{stats:?}");
}

#[test]
fn stop_accounts_for_connections_in_every_state() {
    let sleeping = Arc::new(AtomicUsize::new(0));
    let manager = sleepy_manager(
        Config::default()
            .with_max_workers(1)
            .with_busy_reply(b"BUSY".to_vec())
            .with_queue_timeout(Duration::from_secs(5)),
        Duration::from_millis(500),
        &sleeping,
    );
    let lo = Loopback::new();
    // Polled: idle, waiting in the poller (opened while the worker was
    // free: a new connection needs a worker for `Handler::open`).
    let mut polled: Vec<TcpStream> = (0..2).map(|_| lo.put(&manager)).collect();
    wait_stats(&manager, "two opened and parked", |s| {
        s.wakes == 2 && s.parked == 2 && s.busy == 0
    });
    // Running: its handler sleeps on the only worker.
    let mut running = lo.put(&manager);
    running.write_all(b"!").unwrap();
    wait_for("the handler to sleep", || sleeping.load(SeqCst) == 1);
    // Ready while no worker can poll: taken out of the poller into the
    // queue by the manager thread.
    let mut ready: Vec<TcpStream> = (0..2).map(|_| lo.put(&manager)).collect();
    for c in &mut ready {
        c.write_all(b"x").unwrap();
    }
    wait_stats(&manager, "two queued, two parked", |s| {
        s.queued == 2 && s.parked == 2
    });

    let report = manager.stop_timeout(Duration::from_secs(3)).unwrap();
    assert_eq!(
        (
            report.drained,
            report.forced,
            report.queued,
            report.abandoned
        ),
        (5, 0, 0, 0),
        "{report:?}"
    );
    assert!(report.elapsed < Duration::from_secs(2), "{report:?}");
    // The running handler finished its reply; queued ones got the busy
    // reply; polled ones were closed.
    assert_eq!(read_to_close(&mut running).unwrap(), b"!");
    for c in &mut ready {
        assert_eq!(read_to_close(c).unwrap(), b"BUSY");
    }
    for c in &mut polled {
        assert_eq!(read_to_close(c).unwrap(), b"");
    }
    let stats = manager.stats();
    assert_eq!((stats.connections, stats.closed.stop), (5, 5), "{stats:?}");
    assert_eq!((stats.workers, stats.parked, stats.queued), (0, 0, 0));
}

#[test]
fn a_handler_that_computes_for_long_does_not_delay_other_clients() {
    init_log();
    // A handler that spins (a computation: its thread stays runnable, so
    // its poller role is not taken away); another poller must search
    // meanwhile: a second poller waiting on the ready list is called by the
    // manager thread, or, if there is none yet, one is started.
    let spinning = Arc::new(AtomicUsize::new(0));
    let inside = Arc::clone(&spinning);
    let manager = Manager::new(
        Config::default().with_max_workers(2).with_pollers(2),
        move |conn: &mut Conn<'_>, data: &[u8]| {
            if data.first() == Some(&b'!') {
                inside.fetch_add(1, SeqCst);
                let until = Instant::now() + Duration::from_millis(700);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                inside.fetch_sub(1, SeqCst);
            }
            conn.write_all(data)
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut others: Vec<TcpStream> = (0..10).map(|_| lo.put(&manager)).collect();
    // Warm up: the pool starts its pollers as the traffic asks.
    for c in &mut others {
        roundtrip(c, b"warm", b"warm");
    }
    let mut spinner = lo.put(&manager);
    spinner.write_all(b"!").unwrap();
    wait_for("the handler to spin", || spinning.load(SeqCst) == 1);
    each_answered_within(&mut others, Duration::from_millis(300));
    assert_eq!(spinning.load(SeqCst), 1, "all answered while it computed");
    // Linux tells a computing thread from a sleeping one: the spinner
    // keeps its role, and nothing goes through the queue. (Elsewhere the
    // turn's length alone decides: `Stats::poller_handoffs`.)
    #[cfg(target_os = "linux")]
    {
        let stats = manager.stats();
        assert_eq!(stats.poller_handoffs, 0, "{stats:?}");
        assert_eq!(stats.overflowed, 0, "{stats:?}");
    }
    let mut reply = [0; 1];
    spinner.read_exact(&mut reply).unwrap();
}

#[test]
fn with_every_worker_asleep_ready_connections_wait_in_the_queue_and_are_counted() {
    init_log();
    // The handler of `!` sleeps until the test opens the gate (5 s at
    // most): as long as the sysmon needs, however slow the machine.
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let sleeping = Arc::new(AtomicUsize::new(0));
    let inside = Arc::clone(&sleeping);
    let manager = Manager::new(
        Config::default().with_max_workers(1).with_pollers(1),
        move |conn: &mut Conn<'_>, data: &[u8]| {
            if data.first() == Some(&b'!') {
                inside.fetch_add(1, SeqCst);
                let _ = gate.lock().recv_timeout(Duration::from_secs(5));
                inside.fetch_sub(1, SeqCst);
            }
            conn.write_all(data)
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut sleeper = lo.put(&manager);
    let mut other = lo.put(&manager);
    sleeper.write_all(b"!").unwrap();
    wait_for("the handler to sleep", || sleeping.load(SeqCst) == 1);
    other.write_all(b"hello").unwrap();
    // The only worker sleeps and none can start: its poller role is
    // handed on to no one, and the ready connection goes to the queue.
    let stats = wait_stats(&manager, "the ready connection queued", |s| {
        s.overflowed >= 1
    });
    assert!(stats.poller_handoffs >= 1, "{stats:?}");
    assert_eq!(stats.workers, 1, "{stats:?}");
    assert_eq!(sleeping.load(SeqCst), 1, "queued while the handler slept");
    open.send(()).unwrap();
    // Served once the sleeper's handler returns.
    let mut reply = [0; 5];
    other.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"hello");
    sleeper.read_exact(&mut reply[..1]).unwrap();
    assert_eq!(manager.stats().closed.total(), 0);
}

/// Sends `msg` and shuts its side down at once (an HTTP/1.0 client, `nc -N`):
/// its echo and the end of the connection must come without a deadline.
fn send_and_shut(client: &mut TcpStream, msg: &[u8]) {
    client.write_all(msg).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
}

#[test]
fn an_end_of_file_behind_the_last_bytes_is_seen() {
    // No read deadline: only the end of file can close these connections.
    let sleeping = Arc::new(AtomicUsize::new(0));
    let manager = sleepy_manager(
        Config::default().with_read_deadline(None),
        Duration::from_millis(30),
        &sleeping,
    );
    let lo = Loopback::new();
    let rounds = 20;
    for i in 0..rounds {
        // Bytes and end of file arrive together while it waits in the poller.
        let mut c = lo.put(&manager);
        wait_stats(&manager, "parked", |s| s.parked >= 1);
        send_and_shut(&mut c, b"bye");
        assert_eq!(read_to_close(&mut c).unwrap(), b"bye", "round {i}");
        // ...and while a worker serves it: the bytes, then the end, reach
        // the poller during the handler's sleep.
        let mut c = lo.put(&manager);
        c.write_all(b"!").unwrap();
        wait_for("a handler asleep", || sleeping.load(SeqCst) == 1);
        send_and_shut(&mut c, b"more");
        assert_eq!(read_to_close(&mut c).unwrap(), b"!more", "round {i}");
    }
    let stats = wait_stats(&manager, "every close", |s| s.closed.total() == 2 * rounds);
    assert_eq!(stats.closed.eof, 2 * rounds, "{stats:?}");
}
