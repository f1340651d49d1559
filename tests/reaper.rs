//! The reaper retires idle workers down to `min_workers`, on time.

mod util;

use std::time::{Duration, Instant};

use pool_manager::Config;
use util::*;

#[test]
fn idle_workers_are_retired_down_to_min_and_no_further() {
    let gate = Gate::default();
    let manager = gated_manager(
        Config::default()
            .with_min_workers(1)
            .with_max_workers(4)
            .with_worker_idle_timeout(Duration::from_millis(200)),
        &gate,
    );
    let lo = Loopback::new();
    let clients = lo.hold(&manager, &gate, 4);
    assert_eq!(manager.stats().workers, 4);
    gate.open();
    drop(clients);
    let all_idle = Instant::now();
    wait_stats(&manager, "all idle", |s| s.idle == 4);
    let s = wait_stats(&manager, "reaping to min", |s| s.workers == 1);
    let took = all_idle.elapsed();
    assert!(took >= Duration::from_millis(150), "reaped early: {took:?}");
    assert!(took < Duration::from_secs(2), "reaped late: {took:?}");
    assert_eq!(s.workers_retired, 3);
    // Well past another timeout, min is kept.
    std::thread::sleep(Duration::from_millis(400));
    let s = manager.stats();
    assert_eq!((s.workers, s.workers_retired), (1, 3));
}

#[test]
fn workers_started_with_the_pool_and_never_used_are_reaped_too() {
    let manager = echo_manager(
        Config::default()
            .with_min_workers(3)
            .with_max_workers(3)
            .with_worker_idle_timeout(Duration::from_millis(100)),
    );
    assert_eq!(manager.stats().workers, 3);
    // Lowering min lets the reaper retire the never-used workers.
    manager
        .set_config(manager.config().with_min_workers(0))
        .unwrap();
    let s = wait_stats(&manager, "reaping to 0", |s| s.workers == 0);
    assert_eq!(s.workers_retired, 3);
    // An empty pool still serves: it grows again.
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"hi", b"hi");
}

#[test]
fn a_shorter_idle_timeout_applies_to_workers_already_idle() {
    let manager =
        echo_manager(Config::default().with_worker_idle_timeout(Duration::from_secs(3600)));
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"x", b"x");
    drop(c);
    // Every worker idle (a second poller may have been started while the
    // first one's turn was slow, on a busy machine).
    wait_stats(&manager, "idle", |s| s.idle >= 1 && s.busy == 0);
    manager
        .set_config(
            manager
                .config()
                .with_worker_idle_timeout(Duration::from_millis(50)),
        )
        .unwrap();
    wait_stats(&manager, "the reaper to re-plan", |s| s.workers == 0);
}
