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

use pool_manager::{
    MAX_BACKLOG, MAX_BUFFER_SIZE, MAX_PROXY_HEADER, MAX_QUEUE_CAPACITY, MAX_WORKERS,
    MIN_BUFFER_SIZE, MIN_PROXY_HEADER, MinReadRate, ProxyProtocol, Untrusted,
};
use proptest::prelude::*;
use std::io::ErrorKind;

/// Failures found are kept here, and replayed first.
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/config.txt"
);

/// Every rule of the documentation of `Config` (and of `ProxyProtocol`,
/// `MinReadRate`) that `config` breaks, as the error that names it.
fn broken(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut check = |ok: bool, e: ConfigError| {
        if !ok {
            errors.push(e);
        }
    };
    // "Must be at least 1 and at least `min_workers`"; at most MAX_WORKERS.
    check(c.max_workers >= 1, ConfigError::ZeroMaxWorkers);
    check(
        c.max_workers <= MAX_WORKERS,
        ConfigError::TooManyWorkers {
            max: c.max_workers,
            limit: MAX_WORKERS,
        },
    );
    check(
        c.min_workers <= c.max_workers,
        ConfigError::MinAboveMax {
            min: c.min_workers,
            max: c.max_workers,
        },
    );
    check(
        c.queue_capacity <= MAX_QUEUE_CAPACITY,
        ConfigError::QueueTooLarge {
            capacity: c.queue_capacity,
            limit: MAX_QUEUE_CAPACITY,
        },
    );
    check(
        c.buffer_size >= MIN_BUFFER_SIZE && c.buffer_size <= MAX_BUFFER_SIZE,
        ConfigError::BufferSize {
            size: c.buffer_size,
            min: MIN_BUFFER_SIZE,
            max: MAX_BUFFER_SIZE,
        },
    );
    check(
        c.backlog >= 1 && c.backlog <= MAX_BACKLOG,
        ConfigError::Backlog {
            backlog: c.backlog,
            max: MAX_BACKLOG,
        },
    );
    // "`Some(0)` is invalid."
    for (field, size) in [
        ("send_buffer_size", c.send_buffer_size),
        ("recv_buffer_size", c.recv_buffer_size),
        ("max_connections", c.max_connections),
        ("max_connections_per_ip", c.max_connections_per_ip),
        ("max_buffered_bytes", c.max_buffered_bytes),
    ] {
        check(size != Some(0), ConfigError::ZeroSize { field });
    }
    check(
        c.pollers >= 1 && c.pollers <= MAX_WORKERS,
        ConfigError::Pollers {
            pollers: c.pollers,
            limit: MAX_WORKERS,
        },
    );
    // "Polled mode (`Some`) is refused on platforms other than Linux."
    check(
        cfg!(target_os = "linux") || c.park_after.is_none(),
        ConfigError::Unsupported {
            field: "park_after",
        },
    );
    if let Some(rate) = c.min_read_rate {
        // "Bytes per second, at least 1"; the window "Non-zero".
        check(
            rate.bytes_per_sec >= 1,
            ConfigError::ZeroSize {
                field: "min_read_rate.bytes_per_sec",
            },
        );
        check(
            !rate.window.is_zero(),
            ConfigError::ZeroDuration {
                field: "min_read_rate.window",
            },
        );
    }
    // "Must be non-zero", and "`Some(0)` is invalid".
    let durations = [
        ("queue_timeout", Some(c.queue_timeout)),
        ("worker_idle_timeout", Some(c.worker_idle_timeout)),
        ("grow_after", Some(c.grow_after)),
        ("read_deadline", c.read_deadline),
        ("write_deadline", c.write_deadline),
        ("keepalive", c.keepalive),
        ("first_byte_deadline", c.first_byte_deadline),
        ("max_connection_lifetime", c.max_connection_lifetime),
        #[cfg(feature = "tls")]
        ("tls_handshake_deadline", c.tls_handshake_deadline),
        #[cfg(feature = "metrics")]
        ("metrics_interval", c.metrics_interval),
    ];
    for (field, duration) in durations {
        check(
            duration != Some(Duration::ZERO),
            ConfigError::ZeroDuration { field },
        );
    }
    if let Some(proxy) = &c.proxy_protocol {
        // "Must not be empty"; the deadline non-zero; the header size in
        // MIN_PROXY_HEADER..=MAX_PROXY_HEADER, "and at most buffer_size".
        check(!proxy.trusted.is_empty(), ConfigError::ProxyNoTrusted);
        check(
            !proxy.header_deadline.is_zero(),
            ConfigError::ZeroDuration {
                field: "proxy_protocol.header_deadline",
            },
        );
        let max = MAX_PROXY_HEADER.min(c.buffer_size);
        check(
            proxy.max_header_size >= MIN_PROXY_HEADER && proxy.max_header_size <= max,
            ConfigError::ProxyHeaderSize {
                size: proxy.max_header_size,
                min: MIN_PROXY_HEADER,
                max,
            },
        );
    }
    // "0-RTT early data ... Not supported."
    #[cfg(feature = "tls")]
    if let Some(tls) = &c.tls {
        check(
            tls.server_config().max_early_data_size == 0,
            ConfigError::TlsEarlyData,
        );
    }
    errors
}

/// Mostly `valid` values, sometimes one of `edges` (the values at and past
/// the limits, which a random value would hardly ever hit): so that most
/// configurations break one rule or none.
fn edgy<T: Clone + std::fmt::Debug + 'static>(
    valid: impl Strategy<Value = T> + 'static,
    edges: Vec<T>,
) -> BoxedStrategy<T> {
    prop_oneof![19 => valid, 1 => prop::sample::select(edges)].boxed()
}

/// A size that must be within `min..=limit`.
fn size(min: usize, limit: usize) -> BoxedStrategy<usize> {
    let edges = vec![0, min.saturating_sub(1), min, limit, limit + 1, usize::MAX];
    edgy(min..=limit.min(min + 64), edges)
}

/// An optional size that must not be zero.
fn some_size() -> BoxedStrategy<Option<usize>> {
    edgy(
        prop::option::of(1..1usize << 20),
        vec![Some(0), Some(1), Some(usize::MAX)],
    )
}

/// A duration that must not be zero: a nanosecond, the longest there is,
/// or anything.
fn duration() -> BoxedStrategy<Duration> {
    let valid = prop_oneof![
        (0..10_000u64).prop_map(|ms| Duration::from_millis(ms + 1)),
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n.max(1))),
    ];
    let edges = vec![Duration::ZERO, Duration::from_nanos(1), Duration::MAX];
    edgy(valid, edges)
}

fn some_duration() -> impl Strategy<Value = Option<Duration>> {
    prop::option::of(duration())
}

fn proxy() -> impl Strategy<Value = Option<ProxyProtocol>> {
    let all = vec!["10.0.0.0/8", "::1/128", "0.0.0.0/0"];
    let nets = edgy(prop::sample::subsequence(all, 1..=2), vec![Vec::new()]);
    let untrusted = prop_oneof![Just(Untrusted::Refuse), Just(Untrusted::Direct)];
    let header = size(MIN_PROXY_HEADER, MAX_PROXY_HEADER);
    prop::option::of((nets, untrusted, duration(), header).prop_map(
        |(nets, untrusted, header_deadline, max_header_size)| {
            ProxyProtocol::new(nets.iter().map(|n| n.parse().expect("a network")))
                .with_untrusted(untrusted)
                .with_header_deadline(header_deadline)
                .with_max_header_size(max_header_size)
        },
    ))
}

/// A TLS configuration, with 0-RTT early data or without; made once.
#[cfg(feature = "tls")]
fn tls(early_data: bool) -> pool_manager::TlsConfig {
    static TLS: std::sync::OnceLock<[pool_manager::TlsConfig; 2]> = std::sync::OnceLock::new();
    let [plain, early] = TLS.get_or_init(|| {
        let plain = util::tls::TestCert::new().server();
        let mut early = (**plain.server_config()).clone();
        early.max_early_data_size = 1024;
        [plain, pool_manager::TlsConfig::new(Arc::new(early))]
    });
    if early_data {
        early.clone()
    } else {
        plain.clone()
    }
}

/// Any configuration: every field, its edges and past them.
fn any_config() -> impl Strategy<Value = Config> {
    let workers = (
        edgy(
            0..=4usize,
            vec![64, MAX_WORKERS, MAX_WORKERS + 1, usize::MAX],
        ),
        size(1, MAX_WORKERS),
        size(1, MAX_WORKERS),
        size(0, MAX_QUEUE_CAPACITY),
    );
    let buffers = (
        edgy(
            MIN_BUFFER_SIZE..70_000,
            vec![
                0,
                MIN_BUFFER_SIZE - 1,
                MAX_BUFFER_SIZE,
                MAX_BUFFER_SIZE + 1,
                usize::MAX,
            ],
        ),
        some_size(),
        some_size(),
        some_size(),
        some_size(),
        edgy(1..=MAX_BACKLOG, vec![0, MAX_BACKLOG + 1, u32::MAX]),
    );
    let durations = (
        duration(),
        duration(),
        duration(),
        some_duration(),
        some_duration(),
        some_duration(),
        some_duration(),
        some_duration(),
        some_duration(),
    );
    let rate =
        prop::option::of((edgy(1..u64::MAX, vec![0, 1, u64::MAX]), duration())).prop_map(|rate| {
            rate.map(|(bytes_per_sec, window)| MinReadRate::new(bytes_per_sec, window))
        });
    let rest = (
        rate,
        proxy(),
        any::<(bool, bool, bool)>(),
        prop::collection::vec(any::<u8>(), 0..8),
        (
            edgy(0..(4usize << 20), vec![0, usize::MAX]),
            some_size(),
            edgy(0..(4usize << 20), vec![0, usize::MAX]),
            some_duration(),
            prop::option::of(edgy(Just(false), vec![true])),
            some_duration(),
        ),
    );
    (workers, buffers, durations, rest).prop_map(
        |(
            (min_workers, max_workers, pollers, queue_capacity),
            (
                buffer_size,
                send_buffer_size,
                recv_buffer_size,
                max_connections,
                max_connections_per_ip,
                backlog,
            ),
            (
                queue_timeout,
                worker_idle_timeout,
                grow_after,
                read_deadline,
                write_deadline,
                keepalive,
                park_after,
                first_byte_deadline,
                max_connection_lifetime,
            ),
            (
                min_read_rate,
                proxy_protocol,
                (reuse_address, reuse_port, nodelay),
                busy_reply,
                featured,
            ),
        )| {
            #[allow(unused_variables)] // without the `tls` or `metrics` feature
            let (
                max_outbound_bytes,
                max_buffered_bytes,
                max_frame_bytes,
                tls_handshake_deadline,
                tls_early_data,
                metrics_interval,
            ) = featured;
            #[allow(unused_mut)] // without the `tls` and `metrics` features
            let mut config = Config::default()
                .with_min_workers(min_workers)
                .with_max_workers(max_workers)
                .with_queue_capacity(queue_capacity)
                .with_queue_timeout(queue_timeout)
                .with_buffer_size(buffer_size)
                .with_read_deadline(read_deadline)
                .with_write_deadline(write_deadline)
                .with_max_outbound_bytes(max_outbound_bytes)
                .with_max_buffered_bytes(max_buffered_bytes)
                .with_max_frame_bytes(max_frame_bytes)
                .with_worker_idle_timeout(worker_idle_timeout)
                .with_busy_reply(busy_reply)
                .with_backlog(backlog)
                .with_reuse_address(reuse_address)
                .with_reuse_port(reuse_port)
                .with_nodelay(nodelay)
                .with_keepalive(keepalive)
                .with_send_buffer_size(send_buffer_size)
                .with_recv_buffer_size(recv_buffer_size)
                .with_max_connections(max_connections)
                .with_max_connections_per_ip(max_connections_per_ip)
                .with_proxy_protocol(proxy_protocol)
                .with_park_after(park_after)
                .with_first_byte_deadline(first_byte_deadline)
                .with_min_read_rate(min_read_rate)
                .with_max_connection_lifetime(max_connection_lifetime)
                .with_pollers(pollers)
                .with_grow_after(grow_after);
            #[cfg(feature = "tls")]
            {
                config.tls = tls_early_data.map(tls);
                config.tls_handshake_deadline = tls_handshake_deadline;
            }
            #[cfg(feature = "metrics")]
            {
                config.metrics_interval = metrics_interval;
            }
            config
        },
    )
}

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

/// A valid configuration of at most four workers (it is started), and
/// otherwise anything: huge and tiny durations, socket options at their
/// edges, the PROXY protocol, TLS.
fn any_live_config() -> impl Strategy<Value = Config> {
    any_config().prop_filter_map("invalid", |mut config| {
        config.min_workers = config.min_workers.min(2);
        config.max_workers = config.max_workers.clamp(1, 4);
        config.pollers = config.pollers.min(2);
        config.queue_capacity = config.queue_capacity.min(4);
        config.validate().ok().map(|()| config)
    })
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
