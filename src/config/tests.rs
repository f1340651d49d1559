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
