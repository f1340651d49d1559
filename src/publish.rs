//! The `metrics` feature: a [`Stats`] snapshot published through the
//! [`metrics`] facade, so that whatever recorder the
//! application installed (Prometheus, StatsD, OpenTelemetry…) exports it.
//! Without a recorder each call is a no-op of the facade.
//!
//! Names follow Prometheus' conventions: counters end in `_total`, and a
//! breakdown is a label (`reason`, `cause`, `command`). Counters are
//! published as absolute values, so publishing twice counts nothing twice.

use ::metrics::{Label, counter, gauge};

use crate::stats::Stats;

/// Publishes `s` with `labels` on every series.
pub(crate) fn publish(s: &Stats, labels: &[(String, String)]) {
    let base: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(k.clone(), v.clone()))
        .collect();
    let with = |key: &'static str, value: &'static str| {
        let mut l = base.clone();
        l.push(Label::new(key, value));
        l
    };
    let gauges = [
        ("pool_manager_running", u64::from(s.running)),
        ("pool_manager_workers", s.workers as u64),
        ("pool_manager_workers_busy", s.busy as u64),
        ("pool_manager_workers_idle", s.idle as u64),
        ("pool_manager_queued", s.queued as u64),
        ("pool_manager_parked", s.parked as u64),
        ("pool_manager_tls_connections", s.tls.current),
        ("pool_manager_buffered_bytes", s.buffered_bytes as u64),
    ];
    for (name, value) in gauges {
        gauge!(name, base.clone()).set(value as f64);
    }
    let counters = [
        ("pool_manager_connections_total", s.connections),
        ("pool_manager_parks_total", s.parks),
        ("pool_manager_wakes_total", s.wakes),
        ("pool_manager_received_bytes_total", s.bytes_in),
        ("pool_manager_sent_bytes_total", s.bytes_out),
        ("pool_manager_workers_spawned_total", s.workers_spawned),
        ("pool_manager_workers_retired_total", s.workers_retired),
        ("pool_manager_spawn_failures_total", s.spawn_failures),
        ("pool_manager_poller_handoffs_total", s.poller_handoffs),
        ("pool_manager_overflowed_total", s.overflowed),
        ("pool_manager_tls_handshakes_total", s.tls.handshakes),
    ];
    for (name, value) in counters {
        counter!(name, base.clone()).absolute(value);
    }
    for (reason, value) in s.rejected.iter() {
        counter!("pool_manager_rejected_total", with("reason", reason)).absolute(value);
    }
    for (reason, value) in s.closed.iter() {
        counter!("pool_manager_closed_total", with("reason", reason)).absolute(value);
    }
    let f = &s.tls.failed;
    let failed = [
        ("timeout", f.timeout),
        ("closed", f.closed),
        ("protocol", f.protocol),
        ("incompatible", f.incompatible),
        ("certificate", f.certificate),
        ("alert", f.alert),
        ("other", f.other),
    ];
    for (cause, value) in failed {
        counter!(
            "pool_manager_tls_handshake_failures_total",
            with("cause", cause)
        )
        .absolute(value);
    }
    for (command, value) in [("proxy", s.proxy.headers), ("local", s.proxy.local)] {
        counter!("pool_manager_proxy_headers_total", with("command", command)).absolute(value);
    }
}
