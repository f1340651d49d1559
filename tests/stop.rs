//! Start, graceful stop, stop with a timeout, restart, drop.

mod util;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pool_manager::{Config, Conn, Error, Manager};
use util::*;

#[test]
fn start_twice_and_stop_twice_are_errors_not_hangs() {
    init_log();
    let manager = Manager::new(Config::default(), echo).unwrap();
    assert!(matches!(manager.stop(), Err(Error::NotRunning)));
    manager.start().unwrap();
    assert!(matches!(manager.start(), Err(Error::AlreadyRunning)));
    manager.stop().unwrap();
    assert!(matches!(manager.stop(), Err(Error::NotRunning)));
    assert!(!manager.is_running());
}

#[test]
fn stop_closes_idle_connections_at_once_even_without_a_read_deadline() {
    let manager = echo_manager(Config::default().with_read_deadline(None));
    let lo = Loopback::new();
    let mut clients: Vec<_> = (0..8).map(|_| lo.put(&manager)).collect();
    for c in &mut clients {
        roundtrip(c, b"x", b"x");
    }
    let report = manager.stop().unwrap();
    assert_eq!((report.drained, report.forced), (8, 0));
    assert!(report.elapsed < Duration::from_secs(1), "{report:?}");
    for c in &mut clients {
        assert_eq!(read_to_close(c).unwrap(), b"");
    }
    let s = manager.stats();
    assert_eq!((s.closed.stop, s.workers, s.running), (8, 0, false));
    let (_c, server) = lo.pair();
    assert!(manager.put(server).unwrap_err().is_stopped());
}

#[test]
fn stop_lets_running_handlers_finish_their_reply() {
    let gate = Gate::default();
    let manager = gated_manager(Config::default(), &gate);
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    c.write_all(b"reply-me").unwrap();
    wait_for("the handler", || gate.entered() == 1);

    let m = Arc::clone(&manager);
    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || tx.send(m.stop()).unwrap());
    wait_for("the stop to begin", || !manager.is_running());
    assert!(rx.try_recv().is_err(), "stop waits for the running handler");
    gate.open();
    let mut reply = [0; 8];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"reply-me");
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    let report = rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!((report.drained, report.forced), (1, 0));
    stopper.join().unwrap();
}

#[test]
fn stop_timeout_forces_what_remains_and_reports_it() {
    init_log();
    // A handler that writes forever, straight to its socket (bypassing the
    // pool's outbound buffer), to a client that never reads, with no write
    // deadline: blocked in `write`, only force can end it.
    let manager = Manager::new(
        dedicated().with_write_deadline(None),
        |conn: &mut Conn<'_>, _: &[u8]| {
            let chunk = [0u8; 64 << 10];
            loop {
                conn.stream().write_all(&chunk)?;
            }
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut stuck = lo.put(&manager);
    stuck.write_all(b"go").unwrap();
    let mut idle = lo.put(&manager);
    wait_stats(&manager, "both busy", |s| s.busy == 2);
    // The handler writes (its first bytes arrive).
    stuck.read_exact(&mut [0]).unwrap();

    let report = manager.stop_timeout(Duration::from_millis(300)).unwrap();
    // On Windows a shutdown does not end a blocking call on the socket: the
    // handler blocked in its own `write` is abandoned (its thread left
    // behind), as any handler that does not return.
    let abandoned = usize::from(cfg!(windows));
    assert_eq!(
        (report.drained, report.forced, report.abandoned),
        (1, 1, abandoned)
    );
    assert!(
        report.elapsed >= Duration::from_millis(300) && report.elapsed < Duration::from_secs(2),
        "{report:?}"
    );
    assert_eq!(read_to_close(&mut idle).unwrap(), b"");
    drop(stuck);
    // Both counted: the forced one as the stop's. On Windows it was
    // abandoned, and is counted when its handler returns: once the
    // client's close ends its write, with that write's error.
    let s = wait_stats(&manager, "both closes counted", |s| {
        (s.closed.total(), s.workers) == (2, 0)
    });
    let (stop, error) = if cfg!(windows) { (1, 1) } else { (2, 0) };
    assert_eq!((s.closed.stop, s.closed.error), (stop, error), "{s:?}");
}

#[test]
fn stop_timeout_abandons_a_handler_that_never_returns_and_restart_still_works() {
    init_log();
    let release = Arc::new(parking_lot::Mutex::new(()));
    let held = release.lock();
    let r = Arc::clone(&release);
    let manager = Manager::new(
        Config::default(),
        move |conn: &mut Conn<'_>, data: &[u8]| {
            if data == b"hang" {
                // Ignores the socket entirely, so force cannot reach it.
                drop(r.lock());
            }
            conn.write_all(data)
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    c.write_all(b"hang").unwrap();
    wait_stats(&manager, "busy", |s| s.busy == 1 && s.bytes_in == 4);
    let report = manager.stop_timeout(Duration::from_millis(100)).unwrap();
    assert_eq!((report.forced, report.abandoned), (1, 1));
    assert_eq!(manager.stats().workers, 0);

    // The abandoned thread cannot disturb a new run.
    manager.start().unwrap();
    let mut c2 = lo.put(&manager);
    roundtrip(&mut c2, b"ok", b"ok");
    drop(held);
    drop(c2);
    // Only the new run's workers count (one, or two if a second poller
    // started while the first was busy), all idle: the abandoned thread is
    // in neither figure.
    let s = wait_stats(&manager, "the new run's workers idle", |s| {
        s.idle >= 1 && s.busy == 0
    });
    assert!((1..=2).contains(&s.workers), "{s:?}");
    assert_eq!(s.workers, s.idle);
    manager.stop().unwrap();
}

#[test]
fn queued_streams_are_answered_closed_and_counted_at_stop() {
    let gate = Gate::default();
    let manager = gated_manager(
        dedicated()
            .with_max_workers(1)
            .with_queue_capacity(2)
            .with_queue_timeout(Duration::from_secs(60))
            .with_busy_reply(b"BYE".to_vec()),
        &gate,
    );
    let lo = Loopback::new();
    let _first = lo.hold(&manager, &gate, 1);
    let mut queued: Vec<_> = (0..2).map(|_| lo.put(&manager)).collect();
    gate.open();
    let report = manager.stop().unwrap();
    assert_eq!(report.queued, 2);
    for q in &mut queued {
        assert_eq!(read_to_close(q).unwrap(), b"BYE");
    }
    assert_eq!(manager.stats().rejected.queue_stopped, 2);
}

#[test]
fn restart_after_stop_serves_again() {
    let manager = echo_manager(Config::default().with_min_workers(2));
    let lo = Loopback::new();
    for round in 0..3u8 {
        if round > 0 {
            manager.start().unwrap();
        }
        assert_eq!(manager.stats().workers, 2);
        let mut c = lo.put(&manager);
        roundtrip(&mut c, &[round], &[round]);
        manager.stop().unwrap();
        assert_eq!(manager.stats().workers, 0);
    }
    // Two per start. Where the sysmon cannot tell a slow turn from a
    // blocked one (without `/proc`: os_thread.rs), a slow turn may start
    // one more.
    let spawned = manager.stats().workers_spawned;
    if cfg!(any(target_os = "linux", target_os = "android")) {
        assert_eq!(spawned, 6);
    } else {
        assert!(spawned >= 6, "{spawned}");
    }
}

#[test]
fn dropping_a_running_manager_stops_it() {
    let manager = echo_manager(Config::default().with_read_deadline(None));
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"x", b"x");
    let started = Instant::now();
    drop(manager);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
}

#[test]
fn stop_from_a_handler_is_refused() {
    init_log();
    let (tx, rx) = mpsc::channel();
    let tx = parking_lot::Mutex::new(tx);
    let slot: Arc<parking_lot::Mutex<Option<std::sync::Weak<Manager>>>> = Arc::default();
    let s = Arc::clone(&slot);
    let manager = Arc::new(
        Manager::new(Config::default(), move |_: &mut Conn<'_>, _: &[u8]| {
            if let Some(m) = s.lock().as_ref().and_then(std::sync::Weak::upgrade) {
                let _ = tx
                    .lock()
                    .send(matches!(m.stop(), Err(Error::StopFromWorker)));
            }
            Ok(())
        })
        .unwrap(),
    );
    *slot.lock() = Some(Arc::downgrade(&manager));
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    c.write_all(b"stop").unwrap();
    assert!(rx.recv_timeout(WAIT).unwrap());
    assert!(manager.is_running());
}
