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
        Config::default().with_min_workers(5).with_max_workers(2),
        echo,
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::MinAboveMax { min: 5, max: 2 });
    assert_eq!(err.to_string(), "min_workers (5) is above max_workers (2)");
}

#[test]
fn an_invalid_config_changes_nothing() {
    let manager = echo_manager(Config::default().with_min_workers(1).with_max_workers(2));
    let before = manager.config();
    let bad = before
        .clone()
        // would spawn, if it were applied
        .with_min_workers(8)
        .with_max_workers(4)
        .with_buffer_size(1);
    assert!(manager.set_config(bad).is_err());
    assert_eq!(manager.config(), before);
    assert_eq!(manager.stats().workers, 1);
}

#[test]
fn raising_min_spawns_at_once() {
    let manager = echo_manager(Config::default().with_min_workers(0).with_max_workers(8));
    assert_eq!(manager.stats().workers, 0);
    manager
        .set_config(manager.config().with_min_workers(5))
        .unwrap();
    let s = manager.stats();
    assert_eq!((s.workers, s.idle), (5, 5));
}

#[test]
fn a_new_read_deadline_applies_from_the_next_read() {
    let manager = echo_manager(Config::default().with_read_deadline(Some(Duration::from_secs(60))));
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"a", b"a");
    manager
        .set_config(
            manager
                .config()
                .with_read_deadline(Some(Duration::from_millis(200))),
        )
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
        Config::default().with_buffer_size(4096),
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
        .set_config(manager.config().with_buffer_size(16))
        .unwrap();
    // The read already waiting still has the old buffer; from the one after
    // it, reads are at most 16 bytes.
    roundtrip(&mut c, &msg, &msg);
    roundtrip(&mut c, &msg, &msg);
    assert!(largest.load(Ordering::SeqCst) <= 16);
}

#[test]
fn huge_durations_mean_never_and_do_not_overflow() {
    let manager = echo_manager(
        Config::default()
            .with_read_deadline(Some(Duration::MAX))
            .with_write_deadline(Some(Duration::MAX))
            .with_worker_idle_timeout(Duration::MAX)
            .with_queue_timeout(Duration::MAX)
            .with_queue_capacity(1)
            .with_max_workers(1),
    );
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

// Fuzzing (issue 14): random configurations, out-of-range values, zeros,
// huge durations, min above max, through `validate`, `Manager::new` and
// `set_config`, against the documented rules restated here.

#[allow(dead_code)] // only its proptest configuration is used here
#[path = "../examples/common/fuzz.rs"]
mod harness;

#[path = "config/rules.rs"]
mod rules;
#[path = "config/strategies.rs"]
mod strategies;

use proptest::prelude::*;
use rules::broken;
use std::io::ErrorKind;
use strategies::{any_config, any_live_config};

/// Failures found are kept here, and replayed first.
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/config.txt"
);

/// Panics on the pool's own threads (`pool-*`) so far, counted by a hook
/// set on the first call (the echo handler never panics, so any is the
/// pool's).
fn pool_panics() -> usize {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().map(str::to_string);
            if name.is_some_and(|n| n.starts_with("pool-")) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// What a client saw of a line it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The line came back.
    Echoed,
    /// The connection closed (after a busy reply, or none), or was reset.
    Closed,
    /// Neither, within half a second.
    Waiting,
}

/// The line a client sends, and expects back.
const LINE: &[u8] = b"ping\r\n";

/// Sends [`LINE`] on `c` and reads what comes back for half a second.
fn ping(c: &mut std::net::TcpStream) -> Seen {
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    if c.write_all(LINE).is_err() {
        return Seen::Closed;
    }
    let mut got = Vec::new();
    let mut buf = [0; 64];
    loop {
        match std::io::Read::read(c, &mut buf) {
            Ok(0) => return Seen::Closed,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got == LINE {
                    return Seen::Echoed;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Seen::Waiting;
            }
            Err(_) => return Seen::Closed,
        }
    }
}

/// Whether a client that saw nothing in half a second is accounted for:
/// some client is not taken yet (`max_connections`, its backlog), is
/// queued for a worker, or a worker is in a turn (a poller lingering on a
/// connection for `park_after` keeps the poller role until the sysmon's
/// next look, a `grow_after` away, and these go up to seconds). An idle
/// pool that leaves a line unread fails. `clients`: how many have
/// connected so far.
fn waits_legitimately(stats: &pool_manager::Stats, clients: u64) -> bool {
    stats.connections + stats.rejected.total() < clients || stats.queued > 0 || stats.busy > 0
}

proptest! {
    #![proptest_config(harness::config(32, REGRESSIONS))]

    /// A server started with any valid configuration, changed while it
    /// serves to any other, then stopped: no panic on its threads, the
    /// change taken, the stop in time; every line sent echoed, or its
    /// connection closed, or waiting for a reason the stats show; every
    /// connection taken counted closed.
    #[test]
    fn any_valid_config_serves_changes_and_stops(
        first in any_live_config(),
        second in any_live_config(),
    ) {
        let panics = pool_panics();
        let manager = Manager::new(first, echo).expect("a valid config");
        let server = pool_manager::Server::bind(manager, "127.0.0.1:0").expect("bind");
        server.start().expect("start");
        let addr = server.local_addrs()[0];
        let mut seen = Vec::new();
        // A line on `c`, `clients` having connected: echoed, closed, or
        // waiting for a reason the stats show.
        let mut exchange = |c: &mut std::net::TcpStream, clients: u64| {
            let now = ping(c);
            let stats = server.manager().stats();
            seen.push(now);
            prop_assert!(
                now != Seen::Waiting || waits_legitimately(&stats, clients),
                "{seen:?} {stats:?}"
            );
            Ok(())
        };
        let mut old = client(addr);
        exchange(&mut old, 1)?;
        prop_assert_eq!(server.manager().set_config(second.clone()), Ok(()));
        prop_assert_eq!(server.manager().config(), second);
        let mut new = client(addr);
        exchange(&mut old, 2)?;
        exchange(&mut new, 2)?;
        prop_assert!(server.stop_timeout(Duration::from_secs(5)).is_ok());
        prop_assert_eq!(pool_panics(), panics);
        // Every connection taken is counted closed once stopped; each
        // echo was counted as written.
        let stats = server.manager().stats();
        prop_assert!(stats.connections + stats.rejected.total() <= 2, "{stats:?}");
        prop_assert_eq!(stats.closed.total(), stats.connections, "{:?}", stats);
        let echoed = seen.iter().filter(|s| **s == Seen::Echoed).count() as u64;
        prop_assert!(stats.bytes_out >= LINE.len() as u64 * echoed, "{seen:?} {stats:?}");
    }
}

proptest! {
    #![proptest_config(harness::config(512, REGRESSIONS))]

    /// `validate`, `Manager::new` and `set_config` agree with the rules:
    /// a configuration that breaks none is accepted, one that breaks some
    /// is refused with one of them; a refused one changes nothing.
    #[test]
    fn every_config_is_judged_by_the_documented_rules(config in any_config()) {
        let broken = broken(&config);
        let verdict = config.validate();
        match &verdict {
            Ok(()) => prop_assert!(broken.is_empty(), "accepted, but breaks {broken:?}"),
            Err(e) => prop_assert!(broken.contains(e), "refused with {e:?}, breaks {broken:?}"),
        }
        let new = Manager::new(config.clone(), echo);
        prop_assert_eq!(new.as_ref().map(|_| ()).map_err(Clone::clone), verdict.clone());
        let manager = Manager::new(Config::default(), echo).expect("the default is valid");
        let before = manager.config();
        prop_assert_eq!(manager.set_config(config.clone()), verdict.clone());
        let now = if verdict.is_ok() { config } else { before };
        prop_assert_eq!(manager.config(), now);
    }
}
