//! The `load` example, as `benches/compare.sh` runs it: one JSON line, every
//! request counted, every failure counted rather than fatal.

// The library's test helpers, shared.
#[path = "../../tests/util/mod.rs"]
mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use pool_manager::{Config, Conn, Manager, Server};
use rustix::time::{ClockId, clock_gettime};
use serde_json::Value;
use util::process::{Example, cpu_ticks};
use util::*;

/// Runs `load` against `addr` with short timings and parses its line.
fn load(addr: SocketAddr, extra: &[&str]) -> Value {
    load_for(addr, 300, extra)
}

/// Runs `load` against `addr` for `duration_ms` and parses its line.
fn load_for(addr: SocketAddr, duration_ms: u64, extra: &[&str]) -> Value {
    let started = Instant::now();
    let out = Command::new(example_bin("load"))
        .args(["--addr", &addr.to_string()])
        .args(["--duration-ms", &duration_ms.to_string()])
        .args(["--warmup-ms", "50", "--timeout-ms", "500"])
        .args(extra)
        .output()
        .unwrap();
    // The load, then each client ends within one request timeout.
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

fn real(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
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
    let server = echo_server(Config::default().with_max_workers(16));
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
    let server = echo_server(
        dedicated()
            .with_max_workers(1)
            .with_busy_reply(b"BUSY\n".to_vec())
            .with_read_deadline(Some(Duration::from_secs(2))),
    );
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

/// Over TLS: the load tool completes its handshakes (idle connections
/// included) against a TLS echo server in a process of its own, and a
/// burst of 50 handshakes does not grow the pool. aws-lc's one-time set-up
/// used to run inside the first handshake, every other worker waiting for
/// it, and the pool took them for blocked: 16 workers where 2 serve.
#[test]
fn a_burst_of_tls_handshakes_is_served_by_the_pollers() {
    let files = util::tls::TestCert::new().files();
    let server = start_child("tls");
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
    // The test harness's main thread and the test's own, the manager
    // thread, the acceptor, one poller per CPU, and one spare.
    let threads = count(&report["server"], "max_threads");
    assert!(threads <= 4 + cpus + 1, "{threads} threads: {report}");
    // Dropping `server` kills the child.
}

/// Set in the environment of [`child_server`]: the server it runs,
/// `burn` or `tls`.
const CHILD: &str = "POOL_MANAGER_LOAD_TOOL_CHILD";
/// The CPU time the child's handler spends on each request.
const BURN: Duration = Duration::from_millis(2);

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The child's side, until it is killed: `burn`, an echo server whose
/// handler spends [`BURN`] of CPU time and sleeps once (one voluntary
/// context switch) per request; `tls`, a TLS echo server of up to 16
/// workers.
#[test]
#[ignore = "a child process's part: run by the tests that start it, not on its own"]
fn child_server() {
    let Ok(kind) = std::env::var(CHILD) else {
        return;
    };
    let manager = match kind.as_str() {
        "burn" => {
            let handler = |conn: &mut Conn<'_>, data: &[u8]| {
                let start = thread_cpu();
                while thread_cpu() - start < BURN {}
                std::thread::sleep(Duration::from_micros(1));
                conn.write_all(data)
            };
            Manager::new(dedicated().with_read_deadline(None), handler)
        }
        "tls" => {
            let config = Config::default()
                .with_max_workers(16)
                .with_read_deadline(None)
                .with_tls(Some(util::tls::TestCert::new().server()));
            Manager::new(config, echo)
        }
        other => panic!("{CHILD}={other}: no such server"),
    };
    let server = Server::bind(manager.unwrap(), "127.0.0.1:0").unwrap();
    server.start().unwrap();
    println!("{kind}: listening on {}", server.local_addrs()[0]);
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park(); // until the parent kills it
    }
}

/// Starts this test binary's [`child_server`] `kind` and waits until it
/// listens.
fn start_child(kind: &str) -> Example {
    let exe = std::env::current_exe().unwrap();
    Example::start_cmd(
        kind,
        Command::new(exe)
            .args(["--exact", "child_server", "--ignored", "--nocapture"])
            .env(CHILD, kind),
    )
}

/// Voluntary context switches of every thread of `pid`.
fn voluntary_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            let line = status
                .lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// The figures every performance table rests on, against a server whose
/// cost per request is known: CPU time per request is the handler's burn
/// plus the pool's small share, context switches per request at least the
/// handler's one sleep, and the totals agree with the per-request figures
/// and with this test's own reading of `/proc` around the run.
#[test]
fn its_cpu_and_context_switches_per_request_add_up() {
    let server = start_child("burn");
    let pid = server.child.id();
    let (ticks, switches) = (cpu_ticks(pid), voluntary_switches(pid));
    let report = load_for(
        server.addr,
        1000,
        &["--connections", "1", "--server-pid", &pid.to_string()],
    );
    let (ticks, switches) = (cpu_ticks(pid) - ticks, voluntary_switches(pid) - switches);
    assert_eq!(count(&report["errors"], "total"), 0, "{report}");
    let requests = count(&report, "requests");
    assert!(requests >= 50, "{report}");
    let usage = &report["server"];
    let n = requests as f64;
    // The arithmetic: totals over the window, divided by the requests.
    let cpu_s = real(usage, "cpu_s");
    let per_request = real(usage, "cpu_us_per_request");
    assert!(
        (per_request - cpu_s * 1e6 / n).abs() < 1e-6 * per_request,
        "{report}"
    );
    let (voluntary, involuntary) = (count(usage, "voluntary_cs"), count(usage, "involuntary_cs"));
    let close = |key: &str, total: u64| (real(usage, key) - total as f64 / n).abs() < 1e-9;
    assert!(close("vol_cs_per_req", voluntary), "{report}");
    assert!(close("invol_cs_per_req", involuntary), "{report}");
    assert!(close("cs_per_req", voluntary + involuntary), "{report}");
    // Against what the server really did: its burn per request, plus the
    // pool's share (well under half of it, even in a debug build); one
    // sleep per request, plus a read that waits for the next request.
    let burn_us = BURN.as_secs_f64() * 1e6;
    let voluntary_per_request = voluntary as f64 / n;
    println!(
        "{requests} requests: {per_request:.0} µs, {voluntary_per_request:.2} voluntary switches each"
    );
    assert!(
        per_request >= 0.95 * burn_us && per_request <= 1.5 * burn_us,
        "{per_request} µs a request for a {burn_us} µs burn: {report}"
    );
    assert!(
        (1.0..=4.0).contains(&voluntary_per_request),
        "{voluntary_per_request} voluntary switches a request: {report}"
    );
    // The window is inside this test's reading (clock ticks of 10 ms).
    assert!(
        cpu_s <= ticks as f64 / 100.0 + 0.02,
        "{ticks} ticks: {report}"
    );
    assert!(voluntary <= switches, "{switches} switches: {report}");
}
