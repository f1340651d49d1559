//! The rules of a valid configuration, one by one.

use super::*;

#[test]
fn default_is_valid() {
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn each_rule_is_checked() {
    let base = Config::default();
    let cases = [
        (
            Config {
                max_workers: 0,
                min_workers: 0,
                ..base.clone()
            },
            ConfigError::ZeroMaxWorkers,
        ),
        (
            Config {
                max_workers: MAX_WORKERS + 1,
                ..base.clone()
            },
            ConfigError::TooManyWorkers {
                max: MAX_WORKERS + 1,
                limit: MAX_WORKERS,
            },
        ),
        (
            Config {
                min_workers: 3,
                max_workers: 2,
                ..base.clone()
            },
            ConfigError::MinAboveMax { min: 3, max: 2 },
        ),
        (
            Config {
                queue_capacity: MAX_QUEUE_CAPACITY + 1,
                ..base.clone()
            },
            ConfigError::QueueTooLarge {
                capacity: MAX_QUEUE_CAPACITY + 1,
                limit: MAX_QUEUE_CAPACITY,
            },
        ),
        (
            Config {
                buffer_size: MIN_BUFFER_SIZE - 1,
                ..base.clone()
            },
            ConfigError::BufferSize {
                size: MIN_BUFFER_SIZE - 1,
                min: MIN_BUFFER_SIZE,
                max: MAX_BUFFER_SIZE,
            },
        ),
        (
            Config {
                buffer_size: MAX_BUFFER_SIZE + 1,
                ..base.clone()
            },
            ConfigError::BufferSize {
                size: MAX_BUFFER_SIZE + 1,
                min: MIN_BUFFER_SIZE,
                max: MAX_BUFFER_SIZE,
            },
        ),
        (
            Config {
                read_deadline: Some(Duration::ZERO),
                ..base.clone()
            },
            ConfigError::ZeroDuration {
                field: "read_deadline",
            },
        ),
        (
            Config {
                write_deadline: Some(Duration::ZERO),
                ..base.clone()
            },
            ConfigError::ZeroDuration {
                field: "write_deadline",
            },
        ),
        (
            Config {
                queue_timeout: Duration::ZERO,
                ..base.clone()
            },
            ConfigError::ZeroDuration {
                field: "queue_timeout",
            },
        ),
        (
            Config {
                worker_idle_timeout: Duration::ZERO,
                ..base.clone()
            },
            ConfigError::ZeroDuration {
                field: "worker_idle_timeout",
            },
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(config.validate(), Err(expected));
    }
}

#[test]
fn socket_options_are_checked() {
    let base = Config::default();
    let bad = [
        (
            Config {
                backlog: 0,
                ..base.clone()
            },
            ConfigError::Backlog {
                backlog: 0,
                max: MAX_BACKLOG,
            },
        ),
        (
            Config {
                backlog: MAX_BACKLOG + 1,
                ..base.clone()
            },
            ConfigError::Backlog {
                backlog: MAX_BACKLOG + 1,
                max: MAX_BACKLOG,
            },
        ),
        (
            Config {
                send_buffer_size: Some(0),
                ..base.clone()
            },
            ConfigError::ZeroSize {
                field: "send_buffer_size",
            },
        ),
        (
            Config {
                recv_buffer_size: Some(0),
                ..base.clone()
            },
            ConfigError::ZeroSize {
                field: "recv_buffer_size",
            },
        ),
        (
            Config {
                keepalive: Some(Duration::ZERO),
                ..base.clone()
            },
            ConfigError::ZeroDuration { field: "keepalive" },
        ),
    ];
    for (config, expected) in bad {
        assert_eq!(config.validate(), Err(expected));
    }
}

#[test]
fn parking_and_defences_are_checked() {
    let base = Config::default();
    let rate = MinReadRate {
        bytes_per_sec: 10,
        window: Duration::from_secs(1),
    };
    let bad = [
        (
            Config {
                grow_after: Duration::ZERO,
                ..base.clone()
            },
            ConfigError::ZeroDuration {
                field: "grow_after",
            },
        ),
        (
            Config {
                pollers: 0,
                ..base.clone()
            },
            ConfigError::Pollers {
                pollers: 0,
                limit: MAX_WORKERS,
            },
        ),
        (
            Config {
                first_byte_deadline: Some(Duration::ZERO),
                ..base.clone()
            },
            ConfigError::ZeroDuration {
                field: "first_byte_deadline",
            },
        ),
        (
            Config {
                max_connection_lifetime: Some(Duration::ZERO),
                ..base.clone()
            },
            ConfigError::ZeroDuration {
                field: "max_connection_lifetime",
            },
        ),
        (
            Config {
                min_read_rate: Some(MinReadRate {
                    bytes_per_sec: 0,
                    ..rate
                }),
                ..base.clone()
            },
            ConfigError::ZeroSize {
                field: "min_read_rate.bytes_per_sec",
            },
        ),
        (
            Config {
                min_read_rate: Some(MinReadRate {
                    window: Duration::ZERO,
                    ..rate
                }),
                ..base.clone()
            },
            ConfigError::ZeroDuration {
                field: "min_read_rate.window",
            },
        ),
    ];
    for (config, expected) in bad {
        assert_eq!(config.validate(), Err(expected));
    }
    let good = Config {
        park_after: Some(Duration::from_millis(1)),
        min_read_rate: Some(rate),
        ..base
    };
    assert_eq!(good.validate(), Ok(()));
}

#[test]
fn bytes_per_window_rounds_up_and_saturates() {
    let rate = |bytes_per_sec, ms| MinReadRate {
        bytes_per_sec,
        window: Duration::from_millis(ms),
    };
    assert_eq!(rate(3, 500).bytes_per_window(), 2);
    assert_eq!(rate(1, 1).bytes_per_window(), 1);
    assert_eq!(rate(u64::MAX, 10_000).bytes_per_window(), u64::MAX);
}

#[test]
fn none_deadlines_and_bounds_are_valid() {
    let config = Config {
        min_workers: MAX_WORKERS,
        max_workers: MAX_WORKERS,
        buffer_size: MIN_BUFFER_SIZE,
        read_deadline: None,
        write_deadline: None,
        queue_capacity: MAX_QUEUE_CAPACITY,
        ..Config::default()
    };
    assert_eq!(config.validate(), Ok(()));
}

/// Every field has its `with_*` method: `other` is written without `..`,
/// so a new field must be added to it, and then the chain below must set
/// it for the two to be equal.
#[test]
fn a_with_method_sets_each_field() {
    let secs = Duration::from_secs;
    let rate = MinReadRate::new(7, secs(2));
    let proxy = ProxyProtocol::new(["10.0.0.0/8".parse().unwrap()]);
    // The tests' certificate (equal: the same `Arc`).
    #[cfg(feature = "tls")]
    let tls = crate::tls::TlsConfig::from_pem(
        include_bytes!("../../tests/fixtures/tls/a.cert.pem"),
        include_bytes!("../../tests/fixtures/tls/a.key.pem"),
    )
    .unwrap();
    let other = Config {
        min_workers: 1,
        max_workers: 2,
        queue_capacity: 3,
        queue_timeout: secs(4),
        buffer_size: 5,
        read_deadline: Some(secs(6)),
        write_deadline: None,
        max_outbound_bytes: 8,
        max_frame_bytes: 9,
        max_buffered_bytes: None,
        worker_idle_timeout: secs(11),
        busy_reply: b"busy".to_vec(),
        backlog: 13,
        reuse_address: false,
        reuse_port: true,
        nodelay: false,
        keepalive: Some(secs(17)),
        send_buffer_size: Some(18),
        recv_buffer_size: Some(19),
        max_connections: Some(20),
        max_connections_per_ip: Some(21),
        proxy_protocol: Some(proxy.clone()),
        park_after: Some(secs(23)),
        first_byte_deadline: Some(secs(24)),
        min_read_rate: Some(rate),
        max_connection_lifetime: Some(secs(26)),
        pollers: 27,
        grow_after: secs(28),
        #[cfg(feature = "tls")]
        tls: Some(tls.clone()),
        #[cfg(feature = "tls")]
        tls_handshake_deadline: Some(secs(30)),
        #[cfg(feature = "metrics")]
        metrics_interval: Some(secs(31)),
        #[cfg(feature = "metrics")]
        metrics_labels: vec![("pool".into(), "32".into())],
    };
    let built = Config::default()
        .with_min_workers(1)
        .with_max_workers(2)
        .with_queue_capacity(3)
        .with_queue_timeout(secs(4))
        .with_buffer_size(5)
        .with_read_deadline(Some(secs(6)))
        .with_write_deadline(None)
        .with_max_outbound_bytes(8)
        .with_max_frame_bytes(9)
        .with_max_buffered_bytes(None)
        .with_worker_idle_timeout(secs(11))
        .with_busy_reply(b"busy".to_vec())
        .with_backlog(13)
        .with_reuse_address(false)
        .with_reuse_port(true)
        .with_nodelay(false)
        .with_keepalive(Some(secs(17)))
        .with_send_buffer_size(Some(18))
        .with_recv_buffer_size(Some(19))
        .with_max_connections(Some(20))
        .with_max_connections_per_ip(Some(21))
        .with_proxy_protocol(Some(proxy))
        .with_park_after(Some(secs(23)))
        .with_first_byte_deadline(Some(secs(24)))
        .with_min_read_rate(Some(rate))
        .with_max_connection_lifetime(Some(secs(26)))
        .with_pollers(27)
        .with_grow_after(secs(28));
    #[cfg(feature = "tls")]
    let built = built
        .with_tls(Some(tls))
        .with_tls_handshake_deadline(Some(secs(30)));
    #[cfg(feature = "metrics")]
    let built = built
        .with_metrics_interval(Some(secs(31)))
        .with_metrics_labels(vec![("pool".into(), "32".into())]);
    assert_eq!(built, other);
    assert_ne!(built, Config::default());
}

#[test]
fn proxy_protocol_with_methods_set_each_field() {
    let net: ipnet::IpNet = "::1/128".parse().unwrap();
    let built = ProxyProtocol::new([])
        .with_trusted(vec![net])
        .with_untrusted(crate::proxy::Untrusted::Direct)
        .with_header_deadline(Duration::from_secs(1))
        .with_max_header_size(300);
    let other = ProxyProtocol {
        trusted: vec![net],
        untrusted: crate::proxy::Untrusted::Direct,
        header_deadline: Duration::from_secs(1),
        max_header_size: 300,
    };
    assert_eq!(built, other);
    assert_eq!(ProxyProtocol::new([net]).trusted, vec![net]);
}
