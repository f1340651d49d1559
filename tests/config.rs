//! `set_config`: validated as a whole, applied atomically, every field live.

mod util;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pool_manager::{Config, ConfigError, Conn, Manager};
use util::*;

#[test]
fn new_refuses_an_invalid_config() {
    let err = Manager::new(
        Config {
            min_workers: 5,
            max_workers: 2,
            ..Config::default()
        },
        echo,
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::MinAboveMax { min: 5, max: 2 });
    assert_eq!(err.to_string(), "min_workers (5) is above max_workers (2)");
}

#[test]
fn an_invalid_config_changes_nothing() {
    let manager = echo_manager(Config {
        min_workers: 1,
        max_workers: 2,
        ..Config::default()
    });
    let before = manager.config();
    let bad = Config {
        min_workers: 8, // would spawn, if it were applied
        max_workers: 4,
        buffer_size: 1,
        ..before.clone()
    };
    assert!(manager.set_config(bad).is_err());
    assert_eq!(manager.config(), before);
    assert_eq!(manager.stats().workers, 1);
}

#[test]
fn raising_min_spawns_at_once() {
    let manager = echo_manager(Config {
        min_workers: 0,
        max_workers: 8,
        ..Config::default()
    });
    assert_eq!(manager.stats().workers, 0);
    manager
        .set_config(Config {
            min_workers: 5,
            ..manager.config()
        })
        .unwrap();
    let s = manager.stats();
    assert_eq!((s.workers, s.idle), (5, 5));
}

#[test]
fn a_new_read_deadline_applies_from_the_next_read() {
    let manager = echo_manager(Config {
        read_deadline: Some(Duration::from_secs(60)),
        ..Config::default()
    });
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"a", b"a");
    manager
        .set_config(Config {
            read_deadline: Some(Duration::from_millis(200)),
            ..manager.config()
        })
        .unwrap();
    // The worker is blocked in a read under the old deadline; the next read
    // uses the new one.
    roundtrip(&mut c, b"b", b"b");
    let since = Instant::now();
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    assert!(since.elapsed() < Duration::from_secs(2));
    let s = wait_stats(&manager, "the deadline close", |s| s.closed.total() == 1);
    assert_eq!(s.closed.read_deadline, 1);
}

#[test]
fn a_new_buffer_size_applies_from_the_next_read() {
    init_log();
    let largest = Arc::new(AtomicUsize::new(0));
    let l = Arc::clone(&largest);
    let manager = Manager::new(
        Config {
            buffer_size: 4096,
            ..Config::default()
        },
        move |conn: &mut Conn<'_>, data: &[u8]| {
            l.store(data.len(), Ordering::SeqCst);
            conn.write_all(data)
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    let msg = [1u8; 100];
    roundtrip(&mut c, &msg, &msg);
    manager
        .set_config(Config {
            buffer_size: 16,
            ..manager.config()
        })
        .unwrap();
    // The read already waiting still has the old buffer; from the one after
    // it, reads are at most 16 bytes.
    roundtrip(&mut c, &msg, &msg);
    roundtrip(&mut c, &msg, &msg);
    assert!(largest.load(Ordering::SeqCst) <= 16);
}

#[test]
fn huge_durations_mean_never_and_do_not_overflow() {
    let manager = echo_manager(Config {
        read_deadline: Some(Duration::MAX),
        write_deadline: Some(Duration::MAX),
        worker_idle_timeout: Duration::MAX,
        queue_timeout: Duration::MAX,
        queue_capacity: 1,
        max_workers: 1,
        ..Config::default()
    });
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"x", b"x");
    let _queued = lo.put(&manager); // the reaper plans around it
    drop(c);
    wait_stats(&manager, "the queued stream to be served", |s| {
        s.queued == 0 && s.connections == 2
    });
    let report = manager.stop_timeout(Duration::MAX).unwrap();
    assert_eq!(report.forced, 0);
}
