//! The `load` example, as `benches/compare.sh` runs it: one JSON line, every
//! request counted, every failure counted rather than fatal.

mod util;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use pool_manager::{Config, Manager, Server};
use serde_json::Value;
use util::*;

/// Runs `load` against `addr` with short timings and parses its line.
fn load(addr: SocketAddr, extra: &[&str]) -> Value {
    let started = Instant::now();
    let out = Command::new(example_bin("load"))
        .args(["--addr", &addr.to_string()])
        .args([
            "--duration-ms",
            "300",
            "--warmup-ms",
            "50",
            "--timeout-ms",
            "500",
        ])
        .args(extra)
        .output()
        .unwrap();
    // 300 ms of load, then each client ends within one request timeout.
    assert!(
        started.elapsed() < WAIT,
        "load took {:?}",
        started.elapsed()
    );
    assert!(out.status.success(), "load failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    serde_json::from_str(&stdout).unwrap()
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn echo_server(config: Config) -> Server {
    let manager = Manager::new(config, echo).unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    server
}

#[test]
fn measures_an_echo_server_and_its_usage() {
    // Room for every connection: 4 active and 5 idle.
    let server = echo_server(Config {
        max_workers: 16,
        ..Config::default()
    });
    let pid = std::process::id().to_string();
    let report = load(
        server.local_addrs()[0],
        &["--connections", "4", "--idle", "5", "--server-pid", &pid],
    );
    let requests = count(&report, "requests");
    assert!(requests > 0, "{report}");
    assert_eq!(count(&report["errors"], "total"), 0, "{report}");
    assert_eq!(count(&report, "idle_opened"), 5);
    assert_eq!(count(&report, "idle_still_open"), 5);
    assert!(count(&report, "p50_us") <= count(&report, "p99_us"));
    assert!(count(&report, "p99_us") <= count(&report, "max_us"));
    // This test process is the server: its threads include the pool's.
    let usage = &report["server"];
    assert!(count(usage, "max_threads") >= 4, "{report}");
    assert!(count(usage, "peak_rss_kib") > 0, "{report}");
    // The server saw at least the requests measured (warm-up adds more).
    let stats = server.manager().stats();
    assert!(stats.bytes_in >= requests * 64, "{stats:?} {report}");
    server.stop().unwrap();
}

#[test]
fn opens_a_connection_per_request_when_asked() {
    let server = echo_server(Config::default());
    let report = load(
        server.local_addrs()[0],
        &["--connections", "2", "--connect-per-request"],
    );
    let requests = count(&report, "requests");
    assert!(requests > 0, "{report}");
    assert_eq!(count(&report["errors"], "total"), 0, "{report}");
    let connections = server.manager().stats().connections;
    assert!(connections >= requests, "{connections} < {requests}");
    server.stop().unwrap();
}

#[test]
fn counts_refused_connects_instead_of_failing() {
    // A port that was free a moment ago: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let report = load(addr, &["--connections", "2"]);
    assert_eq!(count(&report, "requests"), 0);
    assert!(count(&report["errors"], "connect") > 0, "{report}");
}

#[test]
fn counts_busy_replies_as_errors() {
    // One worker, no queue: the other clients get the busy reply.
    let server = echo_server(Config {
        max_workers: 1,
        busy_reply: b"BUSY\n".to_vec(),
        read_deadline: Some(Duration::from_secs(2)),
        ..dedicated()
    });
    let report = load(server.local_addrs()[0], &["--connections", "3"]);
    let errors = &report["errors"];
    assert!(
        count(errors, "closed") + count(errors, "mismatch") > 0,
        "{report}"
    );
    assert!(count(&report, "requests") > 0, "{report}");
    assert!(server.manager().stats().rejected.full > 0);
    server.stop().unwrap();
}

/// Over TLS (the `tls` feature): the load tool completes its handshakes
/// (idle connections included) against the echo example, and a burst of
/// 50 handshakes does not grow the pool. aws-lc's one-time set-up used to
/// run inside the first handshake, every other worker waiting for it, and
/// the pool took them for blocked: 16 workers where 2 serve.
#[cfg(feature = "tls")]
#[test]
fn a_burst_of_tls_handshakes_is_served_by_the_pollers() {
    let cert = util::tls::TestCert::new();
    let files = cert.files();
    let mut flags = vec!["--max-workers", "16", "--read-deadline-ms", "0"];
    flags.extend_from_slice(&files.flags());
    let server = util::process::Example::start("echo", &flags);
    let pid = server.child.id().to_string();
    let report = load(
        server.addr,
        &[
            "--connections",
            "50",
            "--idle",
            "20",
            "--tls-ca",
            &files.cert,
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(count(&report["errors"], "total"), 0, "{report}");
    assert_eq!(count(&report, "idle_opened"), 20, "{report}");
    assert!(count(&report, "requests") > 0, "{report}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // The main thread, the example's signal thread, the manager thread,
    // the acceptor, one poller per CPU, and one spare.
    let threads = count(&report["server"], "max_threads");
    assert!(threads <= 4 + cpus + 1, "{threads} threads: {report}");
    let (status, _) = server.sigterm();
    assert!(status.success());
}
