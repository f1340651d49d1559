//! The examples as production runs them: SIGTERM with a grace period then a
//! drain; systemd's readiness notifications and socket activation; a
//! restart that hands the listening sockets to a successor under load
//! without a client error; two processes sharing a port with SO_REUSEPORT.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use util::process::*;
use util::*;

#[test]
fn sigterm_keeps_accepting_for_the_grace_period_then_drains() {
    let server = Example::start("echo", &["--accept-grace-ms", "1500"]);
    let mut before = client(server.addr);
    roundtrip(&mut before, b"one\n", b"one\n");
    server.signal(Signal::SIGTERM);
    server.expect_line("accepting for 1500 ms more");
    // Within the grace period a new client is still served.
    let mut during = client(server.addr);
    roundtrip(&mut during, b"two\n", b"two\n");
    // A second SIGTERM cuts the grace short.
    server.signal(Signal::SIGTERM);
    let (status, lines) = server.wait_exit();
    assert!(status.success(), "{lines:?}");
    let last = lines.iter().find(|l| l.contains("stopped in")).unwrap();
    assert_eq!(number_before(last, "forced"), 0, "{last}");
    assert_eq!(number_before(last, "connections in all"), 2, "{last}");
}

#[test]
fn systemd_hears_ready_and_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.0.join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(["--addr", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .stderr(Stdio::null());
    let server = Example::start_cmd("echo", &mut cmd);
    let mut buf = [0; 256];
    let n = systemd.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1\n");
    server.signal(Signal::SIGTERM);
    let n = systemd.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    let (status, _) = server.wait_exit();
    assert!(status.success());
}

#[test]
fn systemd_socket_activate_hands_its_socket_to_the_example() {
    let Some(activate) = tool("systemd-socket-activate") else {
        return;
    };
    // A port free a moment ago (it cannot take 0) may be taken by the
    // time it binds: then it exits, and another port is tried.
    let mut started = None;
    for _ in 0..3 {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(&activate)
            .args(["-l", &addr])
            .arg(example_bin("echo"))
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // It listens at once and starts the example at the first
        // connection; the client waits in the backlog meanwhile.
        let (mut c, mut exited) = (None, false);
        wait_for("systemd-socket-activate to listen", || {
            exited = child.try_wait().unwrap().is_some();
            c = std::net::TcpStream::connect(&addr).ok();
            exited || c.is_some()
        });
        if !exited {
            started = Some((child, c, addr));
            break;
        }
    }
    let (mut child, c, addr) = started.expect("systemd-socket-activate did not start");
    let mut c = c.unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    roundtrip(&mut c, b"activated\n", b"activated\n");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("(socket activation)"), "{first}");
    assert!(first.contains(&addr), "{first}");
    // systemd-socket-activate became the example (exec): it drains.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut child, WAIT);
    // It has exited: the rest of its output is there to read.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "{rest}");
    assert!(rest.contains("1 connections in all"), "{rest}");
}

/// 8 echo clients against `addr` for `ms`, a new connection per request,
/// in the background; their report when they end.
fn load_in_background(
    addr: std::net::SocketAddr,
    ms: u64,
) -> std::thread::JoinHandle<util::load::Report> {
    util::load::echo_in_background(addr, 8, Duration::from_millis(ms), Duration::from_secs(2))
}

#[test]
fn a_restart_hands_the_sockets_over_under_load_without_a_client_error() {
    let dir = TempDir::new("handover");
    let path = dir.0.join("handover.sock");
    let path = path.to_str().unwrap();
    let old = Example::start("echo", &["--handover", path, "--stats-every-ms", "50"]);
    let addr = old.addr;
    let load = load_in_background(addr, 2500);
    // Under load: the old process has served some connections.
    wait_for("the load to run", || {
        old.lines
            .recv_timeout(WAIT)
            .is_ok_and(|l| l.contains("| conns ") && number_before(&l, "| in") > 50)
    });
    // The successor takes the sockets; the old one drains and exits 0.
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(["--addr", "127.0.0.1:1", "--handover", path])
        .stderr(Stdio::null());
    let new = Example::start_cmd("echo", &mut cmd);
    assert_eq!(new.addr, addr, "the same socket");
    let (status, lines) = old.wait_exit();
    assert!(status.success(), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("a successor took over")),
        "{lines:?}"
    );
    let stopped = lines.iter().find(|l| l.contains("stopped in")).unwrap();
    assert_eq!(number_before(stopped, "forced"), 0, "{stopped}");
    // And the successor hands over in its turn.
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(["--addr", "127.0.0.1:1", "--handover", path])
        .stderr(Stdio::null());
    let third = Example::start_cmd("echo", &mut cmd);
    let (status, lines) = new.wait_exit();
    assert!(status.success(), "{lines:?}");
    let served_by_new = number_before(
        lines.iter().find(|l| l.contains("stopped in")).unwrap(),
        "connections in all",
    );
    let report = load.join().unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.requests > 100, "{report:?}");
    assert!(served_by_new > 0, "{lines:?}");
    let (status, _) = third.sigterm();
    assert!(status.success());
}

#[test]
fn two_processes_share_a_port_with_so_reuseport() {
    let a = Example::start("echo", &["--reuseport"]);
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(["--addr", &a.addr.to_string(), "--reuseport"])
        .stderr(Stdio::null());
    let b = Example::start_cmd("echo", &mut cmd);
    for i in 0..200 {
        let mut c = client(a.addr);
        let msg = format!("{i}\n");
        roundtrip(&mut c, msg.as_bytes(), msg.as_bytes());
    }
    let mut served = Vec::new();
    for server in [a, b] {
        let (status, lines) = server.sigterm();
        assert!(status.success());
        let last = lines.iter().find(|l| l.contains("stopped in")).unwrap();
        served.push(number_before(last, "connections in all"));
    }
    assert_eq!(served.iter().sum::<u64>(), 200, "{served:?}");
    // The kernel spreads connections by a hash: each gets a share.
    assert!(served.iter().all(|&n| n > 20), "{served:?}");
}
