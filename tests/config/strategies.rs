//! The fuzzer's configurations: every field, its edges and past them.

use std::time::Duration;

use pool_manager::{
    Config, MAX_BACKLOG, MAX_BUFFER_SIZE, MAX_PROXY_HEADER, MAX_QUEUE_CAPACITY, MAX_WORKERS,
    MIN_BUFFER_SIZE, MIN_PROXY_HEADER, MinReadRate, ProxyProtocol, Untrusted,
};
use proptest::prelude::*;

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
        let plain = crate::util::tls::TestCert::new().server();
        let mut early = (**plain.server_config()).clone();
        early.max_early_data_size = 1024;
        [
            plain,
            pool_manager::TlsConfig::new(std::sync::Arc::new(early)),
        ]
    });
    if early_data {
        early.clone()
    } else {
        plain.clone()
    }
}

/// Any configuration: every field, its edges and past them.
pub fn any_config() -> impl Strategy<Value = Config> {
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

/// A valid configuration of at most four workers (it is started), and
/// otherwise anything: huge and tiny durations, socket options at their
/// edges, the PROXY protocol, TLS.
pub fn any_live_config() -> impl Strategy<Value = Config> {
    any_config().prop_filter_map("invalid", |mut config| {
        config.min_workers = config.min_workers.min(2);
        config.max_workers = config.max_workers.clamp(1, 4);
        config.pollers = config.pollers.min(2);
        config.queue_capacity = config.queue_capacity.min(4);
        config.validate().ok().map(|()| config)
    })
}
