//! The documented rules of a valid configuration, restated for the fuzzer:
//! each one `broken` finds is the error `validate` must return.

use std::time::Duration;

use pool_manager::{
    Config, ConfigError, MAX_BACKLOG, MAX_BUFFER_SIZE, MAX_PROXY_HEADER, MAX_QUEUE_CAPACITY,
    MAX_WORKERS, MIN_BUFFER_SIZE, MIN_PROXY_HEADER,
};

/// Every rule of the documentation of `Config` (and of `ProxyProtocol`,
/// `MinReadRate`) that `config` breaks, as the error that names it.
pub fn broken(c: &Config) -> Vec<ConfigError> {
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
    // `reuse_port`: "Unix only: `true` elsewhere is
    // [`ConfigError::Unsupported`]."
    check(
        cfg!(unix) || !c.reuse_port,
        ConfigError::Unsupported {
            field: "reuse_port",
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
