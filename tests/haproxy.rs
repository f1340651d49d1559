//! Behind the real HAProxy (`mode tcp`, `send-proxy-v2`, health checks):
//! two echo backends see the clients' own addresses, the per-IP limit
//! counts them, HAProxy's checks are served as `LOCAL`, and killing one
//! backend under load moves the traffic to the other.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use socket2::{Domain, Socket, Type};
use util::process::*;
use util::*;

/// An echo backend behind the PROXY protocol, its debug log in `log`.
fn backend(log: &PathBuf, extra: &[&str]) -> Example {
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(["--addr", "127.0.0.1:0", "--read-deadline-ms", "0"])
        .args(["--proxy-protocol", "--stats-every-ms", "100"])
        .args(extra)
        .env("RUST_LOG", "pool_manager=debug")
        .stderr(File::create(log).unwrap());
    Example::start_cmd("echo", &mut cmd)
}

/// HAProxy in front of `backends`, with `balance`; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    fn start(dir: &TempDir, balance: &str, backends: &[SocketAddr]) -> Option<Haproxy> {
        let haproxy = tool("haproxy")?;
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, a)| {
                format!("    server s{i} {a} send-proxy-v2 check inter 100ms fall 1 rise 1\n")
            })
            .collect();
        // A port free a moment ago may be taken by the time HAProxy binds
        // it: then it exits, and another port is tried.
        for _ in 0..3 {
            let port = free_port();
            let config = format!(
                "global\n    maxconn 2000\n\
                 defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 10s\n    \
                 timeout server 10s\n    retries 3\n    option redispatch\n\
                 frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\
                 backend be\n    balance {balance}\n{servers}"
            );
            let path = dir.0.join("haproxy.cfg");
            std::fs::write(&path, config).unwrap();
            let mut child = Command::new(&haproxy)
                .args(["-db", "-q", "-f"])
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut exited = false;
            wait_for("haproxy to listen", || {
                exited = child.try_wait().unwrap().is_some();
                exited || TcpStream::connect(addr).is_ok()
            });
            if !exited {
                return Some(Haproxy { child, addr });
            }
        }
        panic!("haproxy did not start");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of `to` whose own address is `from` (127.0.0.2, 127.0.0.3…).
fn client_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream
}

fn read_log(path: &PathBuf) -> String {
    let mut s = String::new();
    File::open(path).unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn backends_see_the_clients_and_limit_each_address() {
    let dir = TempDir::new("haproxy-addr");
    let logs = [dir.0.join("a.log"), dir.0.join("b.log")];
    let a = backend(&logs[0], &["--max-per-ip", "2"]);
    let b = backend(&logs[1], &["--max-per-ip", "2"]);
    // By source: one client address, one backend, so the limit is one
    // process's to apply.
    let Some(haproxy) = Haproxy::start(&dir, "source", &[a.addr, b.addr]) else {
        return;
    };
    // HAProxy's health checks arrive as LOCAL headers, served, no error.
    let mut checked = String::new();
    wait_for("health checks as LOCAL", || {
        checked = a.lines.recv_timeout(WAIT).unwrap_or_default();
        checked.contains(" local ") && number_after(&checked, " local ") >= 2
    });
    // Each check ends with a reset (HAProxy's way): not an error.
    assert_eq!(number_after(&checked, " error "), 0, "{checked}");
    assert_eq!(number_after(&checked, "proxy header "), 0, "{checked}");
    assert!(number_after(&checked, " reset ") >= 1, "{checked}");
    let mut two: Vec<_> = (0..2)
        .map(|_| client_from("127.0.0.2", haproxy.addr))
        .collect();
    for (i, c) in two.iter_mut().enumerate() {
        let msg = format!("from .2 #{i}\n");
        roundtrip(c, msg.as_bytes(), msg.as_bytes());
    }
    // The third from 127.0.0.2 is over the limit…
    let mut third = client_from("127.0.0.2", haproxy.addr);
    let _ = std::io::Write::write_all(&mut third, b"one too many\n");
    assert_eq!(read_to_close(&mut third).unwrap(), b"ERROR_SERVER_BUSY\n");
    // …while 127.0.0.3 is served.
    let mut other = client_from("127.0.0.3", haproxy.addr);
    roundtrip(&mut other, b"from .3\n", b"from .3\n");
    drop((two, other));
    let mut lines = Vec::new();
    for server in [a, b] {
        let (status, out) = server.sigterm();
        assert!(status.success());
        lines.extend(out);
    }
    let log = read_log(&logs[0]) + &read_log(&logs[1]);
    assert!(log.contains("client 127.0.0.2:"), "{log}");
    assert!(log.contains("client 127.0.0.3:"), "{log}");
    assert!(!log.contains("PROXY protocol header refused"), "{log}");
    let total: u64 = lines
        .iter()
        .filter(|l| l.contains("stopped in"))
        .map(|l| number_before(l, "connections in all"))
        .sum();
    assert!(total >= 4, "{lines:?}");
}

#[test]
fn killing_a_backend_under_load_moves_the_traffic_to_the_other() {
    let dir = TempDir::new("haproxy-kill");
    let logs = [dir.0.join("a.log"), dir.0.join("b.log")];
    let a = backend(&logs[0], &[]);
    let b = backend(&logs[1], &[]);
    let Some(haproxy) = Haproxy::start(&dir, "roundrobin", &[a.addr, b.addr]) else {
        return;
    };
    let connections = 8;
    let load = util::load::echo_in_background(
        haproxy.addr,
        connections,
        Duration::from_secs(2),
        Duration::from_secs(2),
    );
    // Each backend's stats lines, until both have taken more than 50
    // connections.
    let served = |lines: &std::sync::mpsc::Receiver<String>| {
        lines
            .try_iter()
            .any(|l| l.contains("| in") && number_before(&l, "| in") > 50)
    };
    let (mut a_served, mut b_served) = (false, false);
    wait_for("both backends to serve", || {
        a_served = a_served || served(&a.lines);
        b_served = b_served || served(&b.lines);
        a_served && b_served
    });
    a.signal(Signal::SIGKILL);
    let report = load.join().unwrap();
    let (status, lines) = b.sigterm();
    assert!(status.success());
    let served_by_b = number_before(
        lines.iter().find(|l| l.contains("stopped in")).unwrap(),
        "connections in all",
    );
    let errors = report.errors;
    eprintln!(
        "killed one of two backends under load: {} requests, {errors} client errors ({:?})",
        report.requests, report.first_errors
    );
    // On a quiet machine only the requests in flight on the killed backend
    // fail (at most `connections`); HAProxy sends the rest to the other.
    // Starved of CPU (a suite run under hogs) HAProxy also failed some
    // connects (56 of 4,276): the bound is a share of the requests.
    let requests = report.requests;
    assert!(requests > 200, "{report:?}");
    assert!(
        errors <= (connections as u64).max(requests / 20),
        "{errors} errors: {report:?}"
    );
    assert!(served_by_b > 100, "{served_by_b}");
}
