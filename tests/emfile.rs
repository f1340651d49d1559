//! Out of file descriptors: the acceptor must neither spin nor lose its
//! listener, and must serve again by itself once descriptors free up.
//!
//! The server runs in a child process (this test binary again, with an
//! environment variable set) whose `RLIMIT_NOFILE` is lowered, so that the
//! parent can saturate it without running out itself.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pool_manager::{Config, Manager, Server};
use util::process::{cpu_ticks_over, open_fds};
use util::*;

const CHILD: &str = "POOL_MANAGER_EMFILE_CHILD";
const FD_LIMIT: u64 = 48;

/// The child's side: a server with few descriptors, until stdin closes.
#[test]
#[ignore = "a child process's part: run by the test below, not on its own"]
fn emfile_child_server() {
    if std::env::var_os(CHILD).is_none() {
        return; // only meaningful as the child of the test below
    }
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(FD_LIMIT, hard).unwrap();
    init_log();
    let manager = Manager::new(
        Config::default()
            .with_max_workers(200)
            .with_read_deadline(None),
        echo,
    )
    .unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    println!("ADDR {}", server.local_addrs()[0]);
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line); // EOF when the parent is done
    server.stop().unwrap();
}

#[test]
fn at_emfile_the_acceptor_backs_off_without_spinning_and_recovers() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "emfile_child_server", "--ignored", "--nocapture"])
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("ADDR ") {
                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(WAIT).expect("the child server's address");

    // Many more clients than the child has descriptors: it accepts until
    // EMFILE, the rest wait in the backlog.
    let mut clients: Vec<TcpStream> = (0..2 * FD_LIMIT).map(|_| client(addr)).collect();
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    wait_for("the child to run out of descriptors", || {
        open_fds(pid) as u64 >= FD_LIMIT - 1
    });

    // Saturated: CPU over 2 s must stay near zero (a spinning accept loop
    // would use ~200 ticks).
    let used = cpu_ticks_over(pid, Duration::from_secs(2), "while stuck at EMFILE");
    assert!(used <= 20, "the child used {used} ticks in 2 s at EMFILE");

    // Clients leave; service comes back by itself.
    drop(clients);
    let mut c = client(addr);
    roundtrip(&mut c, b"back", b"back");

    drop(child.stdin.take());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "child exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child server did not stop");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
