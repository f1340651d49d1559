//! Growth, reuse, the queue and overload in dedicated mode: where a stream
//! goes in `put` when a worker keeps its connection.

mod util;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use pool_manager::{Config, PutError};
use util::*;

#[test]
fn start_spawns_min_workers_and_put_grows_to_max() {
    let gate = Gate::default();
    let config = dedicated().with_min_workers(2).with_max_workers(4);
    let manager = gated_manager(config, &gate);
    let s = manager.stats();
    assert_eq!((s.workers, s.idle, s.busy), (2, 2, 0));

    let lo = Loopback::new();
    let mut clients = lo.hold(&manager, &gate, 4);
    let s = manager.stats();
    assert_eq!((s.workers, s.busy, s.idle, s.workers_spawned), (4, 4, 0, 4));

    // At max, no queue: the fifth is handed back.
    let (mut refused_client, server) = lo.pair();
    match manager.put(server) {
        Err(PutError::Full(mut stream)) => {
            stream.write_all(b"BUSY").unwrap();
        }
        other => panic!("expected Full, got {other:?}"),
    }
    let mut busy = [0; 4];
    refused_client.read_exact(&mut busy).unwrap();
    assert_eq!(&busy, b"BUSY");
    assert_eq!(manager.stats().rejected.full, 1);

    gate.open();
    for c in &mut clients {
        let mut b = [0; 1];
        c.read_exact(&mut b).unwrap();
    }
}

#[test]
fn idle_worker_is_reused_before_spawning() {
    let manager = echo_manager(dedicated().with_max_workers(4));
    let lo = Loopback::new();
    for i in 0..5u8 {
        let mut c = lo.put(&manager);
        roundtrip(&mut c, &[i], &[i]);
        drop(c);
        wait_stats(&manager, "the worker to be idle again", |s| s.idle == 1);
    }
    let s = manager.stats();
    assert_eq!(s.workers_spawned, 1, "one worker serves sequential clients");
    assert_eq!(s.connections, 5);
}

#[test]
fn queue_holds_streams_until_a_worker_frees() {
    let gate = Gate::default();
    let manager = gated_manager(
        dedicated()
            .with_max_workers(1)
            .with_queue_capacity(1)
            .with_queue_timeout(Duration::from_secs(30)),
        &gate,
    );
    let lo = Loopback::new();
    let mut first = lo.hold(&manager, &gate, 1).remove(0);

    let mut queued = lo.put(&manager);
    assert_eq!(manager.stats().queued, 1);
    queued.write_all(b"b").unwrap();

    // Queue full: handed back.
    let (_c, server) = lo.pair();
    assert!(manager.put(server).unwrap_err().is_full());

    gate.open();
    let mut b = [0; 1];
    first.read_exact(&mut b).unwrap();
    drop(first);
    queued.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
    let s = manager.stats();
    assert_eq!((s.queued, s.workers_spawned, s.rejected.full), (0, 1, 1));
}

#[test]
fn queued_stream_that_waits_too_long_gets_the_busy_reply_and_is_counted() {
    let gate = Gate::default();
    let manager = gated_manager(
        dedicated()
            .with_max_workers(1)
            .with_queue_capacity(4)
            .with_queue_timeout(Duration::from_millis(100))
            .with_busy_reply(b"ERROR_SERVER_BUSY".to_vec()),
        &gate,
    );
    let lo = Loopback::new();
    let _first = lo.hold(&manager, &gate, 1);

    let started = Instant::now();
    let mut queued = lo.put(&manager);
    // The reaper expires it while the only worker is still held.
    let reply = read_to_close(&mut queued).unwrap();
    let waited = started.elapsed();
    assert_eq!(reply, b"ERROR_SERVER_BUSY");
    assert!(
        waited >= Duration::from_millis(100),
        "expired early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "expired late: {waited:?}");
    let s = manager.stats();
    assert_eq!((s.queued, s.rejected.queue_timeout), (0, 1));
    gate.open();
}

#[test]
fn lowering_max_retires_busy_surplus_when_it_frees() {
    let gate = Gate::default();
    let manager = gated_manager(dedicated().with_max_workers(3), &gate);
    let lo = Loopback::new();
    let mut clients = lo.hold(&manager, &gate, 3);
    manager
        .set_config(manager.config().with_max_workers(1))
        .unwrap();
    assert_eq!(
        manager.stats().workers,
        3,
        "busy workers are not interrupted"
    );
    gate.open();
    for c in &mut clients {
        let mut b = [0; 1];
        c.read_exact(&mut b).unwrap();
    }
    drop(clients);
    let s = wait_stats(&manager, "surplus workers to retire", |s| s.workers == 1);
    assert_eq!(s.workers_retired, 2);
}

#[test]
fn raising_max_gives_queued_streams_workers_at_once() {
    let gate = Gate::default();
    let manager = gated_manager(
        dedicated()
            .with_max_workers(1)
            .with_queue_capacity(2)
            .with_queue_timeout(Duration::from_secs(30)),
        &gate,
    );
    let lo = Loopback::new();
    let mut clients: Vec<_> = (0..3).map(|_| lo.put(&manager)).collect();
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    assert_eq!(manager.stats().queued, 2);
    manager
        .set_config(manager.config().with_max_workers(3))
        .unwrap();
    wait_for("3 handlers", || gate.entered() == 3);
    let s = manager.stats();
    assert_eq!((s.workers, s.queued), (3, 0));
    gate.open();
}

#[test]
fn put_on_a_manager_never_started_hands_the_stream_back() {
    init_log();
    let manager = pool_manager::Manager::new(Config::default(), echo).unwrap();
    let lo = Loopback::new();
    let (_client, server) = lo.pair();
    let err = manager.put(server).unwrap_err();
    assert!(err.is_stopped());
    let stream = err.into_inner();
    assert!(stream.peer_addr().is_ok(), "the stream comes back open");
    assert_eq!(manager.stats().rejected.stopped, 1);
}
