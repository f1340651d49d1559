//! The `metrics` feature: the stats published through the `metrics` facade,
//! here to the Prometheus exporter (`metrics-exporter-prometheus`, without
//! its HTTP listener), by the manager thread every `metrics_interval` and
//! on demand.
#![cfg(feature = "metrics")]

mod util;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pool_manager::{Closes, Config, Manager, Server};
use util::*;

/// The process's recorder (one per process).
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder")
    })
}

fn server(pool: &str, interval: Option<Duration>) -> Server {
    init_log();
    let config = Config::default()
        .with_metrics_interval(interval)
        .with_metrics_labels(vec![("pool".into(), pool.into())]);
    let manager = Manager::new(config, echo).unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    server
}

/// The value of the series `name{pool="…",…}` in `text`, if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn the_manager_thread_publishes_every_interval() {
    let handle = prometheus();
    let server = server("periodic", Some(Duration::from_millis(50)));
    for _ in 0..3 {
        let mut c = client(server.local_addrs()[0]);
        roundtrip(&mut c, b"ping", b"ping");
    }
    wait_stats(server.manager(), "three closed", |s| s.closed.eof == 3);
    let mut text = String::new();
    // A render may fall inside the first publication, before its last
    // series exist: wait for one that holds every close reason.
    let reasons = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with(r#"pool_manager_closed_total{pool="periodic""#))
            .count()
    };
    wait_for("the published closes, one series per reason", || {
        text = handle.render();
        value(
            &text,
            r#"pool_manager_closed_total{pool="periodic",reason="eof"}"#,
        ) == Some(3.0)
            && reasons(&text) == Closes::default().iter().len()
    });
    let expect = [
        (r#"pool_manager_connections_total{pool="periodic"}"#, 3.0),
        (
            r#"pool_manager_received_bytes_total{pool="periodic"}"#,
            12.0,
        ),
        (r#"pool_manager_sent_bytes_total{pool="periodic"}"#, 12.0),
        (r#"pool_manager_running{pool="periodic"}"#, 1.0),
        (
            r#"pool_manager_rejected_total{pool="periodic",reason="full"}"#,
            0.0,
        ),
        (
            r#"pool_manager_closed_total{pool="periodic",reason="reset"}"#,
            0.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    // Every close reason is a series: their sum is the total.
    let stats = server.manager().stats();
    let closed: f64 = text
        .lines()
        .filter(|l| l.starts_with(r#"pool_manager_closed_total{pool="periodic""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(closed, stats.closed.total() as f64);
    // The manager thread's last publication, at the stop.
    server.stop().unwrap();
    assert_eq!(
        value(&handle.render(), r#"pool_manager_running{pool="periodic"}"#),
        Some(0.0)
    );
}

#[test]
fn publish_metrics_publishes_on_demand() {
    let handle = prometheus();
    let server = server("on-demand", None);
    let mut c = client(server.local_addrs()[0]);
    roundtrip(&mut c, b"x", b"x");
    let series = r#"pool_manager_connections_total{pool="on-demand"}"#;
    assert_eq!(value(&handle.render(), series), None, "not published yet");
    server.manager().publish_metrics();
    assert_eq!(value(&handle.render(), series), Some(1.0));
}
