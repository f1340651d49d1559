//! The built-in acceptor: binding, socket options, overload replies,
//! pause/resume, stop from another thread, restart.

mod util;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use pool_manager::{Config, Conn, Manager, Server};
use util::*;

fn gated_server(config: Config, gate: &Gate) -> Arc<Server> {
    init_log();
    let gate = gate.clone();
    let manager = Manager::new(config, move |conn: &mut Conn<'_>, data: &[u8]| {
        gate.wait();
        conn.write_all(data)
    })
    .unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    Arc::new(server)
}

#[test]
fn serves_every_bound_address() {
    init_log();
    let manager = Manager::new(Config::default(), echo).unwrap();
    let addrs: [SocketAddr; 2] = [
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    ];
    let server = Server::bind(manager, &addrs[..]).unwrap();
    server.start().unwrap();
    assert_eq!(server.local_addrs().len(), 2);
    for &addr in server.local_addrs() {
        let mut c = client(addr);
        roundtrip(&mut c, b"hello", b"hello");
    }
    assert_eq!(server.manager().stats().connections, 2);
}

#[test]
fn serves_a_listener_made_elsewhere() {
    init_log();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let manager = Manager::new(Config::default(), echo).unwrap();
    let server = Server::from_listeners(manager, [listener]).unwrap();
    assert_eq!(server.local_addrs(), &[addr]);
    server.start().unwrap();
    let mut c = client(addr);
    roundtrip(&mut c, b"x", b"x");
}

#[test]
fn no_listener_is_an_error() {
    let manager = Manager::new(Config::default(), echo).unwrap();
    let err = Server::from_listeners(manager, []).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn accepted_streams_get_the_configured_options() {
    init_log();
    for nodelay in [true, false] {
        let manager = Manager::new(
            Config::default().with_nodelay(nodelay),
            |conn: &mut Conn<'_>, _: &[u8]| {
                let on = conn.stream().nodelay()?;
                conn.write_all(if on { b"1" } else { b"0" })
            },
        )
        .unwrap();
        let server = Server::bind(manager, "127.0.0.1:0").unwrap();
        server.start().unwrap();
        let mut c = client(server.local_addrs()[0]);
        roundtrip(&mut c, b"?", if nodelay { b"1" } else { b"0" });
    }
}

/// A keep-alive time past what the system takes is clamped to 32,767 s,
/// and the options after it are set all the same (they were skipped when
/// the kernel refused the keep-alive time).
#[cfg(target_os = "linux")]
#[test]
fn a_keepalive_past_the_system_limit_is_clamped_and_the_rest_still_set() {
    init_log();
    let manager = Manager::new(
        Config::default()
            .with_keepalive(Some(Duration::from_secs(1 << 40)))
            .with_recv_buffer_size(Some(64 << 10)),
        |conn: &mut Conn<'_>, _: &[u8]| {
            let socket = socket2::SockRef::from(conn.stream());
            let reply = format!(
                "{} {} {}",
                socket.keepalive()?,
                socket.tcp_keepalive_time()?.as_secs(),
                // Linux doubles the size asked for.
                socket.recv_buffer_size()? >= 64 << 10,
            );
            conn.write_all(reply.as_bytes())
        },
    )
    .unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    let mut c = client(server.local_addrs()[0]);
    roundtrip(&mut c, b"?", b"true 32767 true");
}

#[test]
fn a_full_pool_answers_with_the_busy_reply_and_counts_it() {
    let gate = Gate::default();
    let server = gated_server(
        dedicated()
            .with_max_workers(1)
            .with_busy_reply(b"ERROR_SERVER_BUSY\n".to_vec()),
        &gate,
    );
    let addr = server.local_addrs()[0];
    let mut held = client(addr);
    held.write_all(b"a").unwrap();
    wait_for("the handler", || gate.entered() == 1);
    let mut refused = client(addr);
    assert_eq!(read_to_close(&mut refused).unwrap(), b"ERROR_SERVER_BUSY\n");
    assert_eq!(server.manager().stats().rejected.full, 1);
    gate.open();
    held.read_exact(&mut [0; 1]).unwrap();
}

#[test]
fn a_paused_server_leaves_clients_in_the_backlog_and_serves_them_on_resume() {
    let server = echo_server(Config::default());
    let addr = server.local_addrs()[0];
    server.pause();
    assert!(server.is_paused());
    // The kernel completes the handshake; nobody accepts.
    let mut waiting = client(addr);
    waiting.write_all(b"patience").unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = waiting.read(&mut [0; 8]).unwrap_err();
    assert!(matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ));
    assert_eq!(server.manager().stats().connections, 0);

    server.resume();
    waiting.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0; 8];
    waiting.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"patience");
    assert_eq!(server.manager().stats().rejected.total(), 0);
}

#[test]
fn stop_from_another_thread_lets_requests_in_flight_finish() {
    let gate = Gate::default();
    let server = gated_server(Config::default(), &gate);
    let addr = server.local_addrs()[0];
    let mut clients: Vec<_> = (0..4).map(|_| client(addr)).collect();
    for c in &mut clients {
        c.write_all(b"mid-request").unwrap();
    }
    wait_for("4 handlers", || gate.entered() == 4);
    let s = Arc::clone(&server);
    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || tx.send(s.stop()).unwrap());
    wait_for("the stop to begin", || !server.manager().is_running());
    gate.open();
    for c in &mut clients {
        let mut reply = [0; 11];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"mid-request");
        assert_eq!(read_to_close(c).unwrap(), b"");
    }
    let report = rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!((report.drained, report.forced), (4, 0));
    stopper.join().unwrap();
}

#[test]
fn a_stopped_server_starts_again_on_the_same_addresses() {
    let server = echo_server(Config::default());
    let addr = server.local_addrs()[0];
    for round in 0..3u8 {
        if round > 0 {
            server.start().unwrap();
        }
        let mut c = client(addr);
        roundtrip(&mut c, &[round], &[round]);
        server.stop().unwrap();
        assert!(server.stop().is_err(), "stop while stopped is an error");
    }
}

#[test]
fn dropping_a_running_server_stops_it() {
    let server = echo_server(Config::default().with_read_deadline(None));
    let mut c = client(server.local_addrs()[0]);
    roundtrip(&mut c, b"x", b"x");
    drop(server);
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
}

/// A client connecting from `source` (any 127.0.0.0/8 address is local).
fn client_from(source: &str, addr: SocketAddr) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Whether the server answers `c` (true) or refuses it with the busy reply.
fn served(c: &mut std::net::TcpStream) -> bool {
    c.write_all(b"ping").unwrap();
    let mut reply = [0; 4];
    c.read_exact(&mut reply).unwrap();
    match &reply {
        b"ping" => true,
        b"BUSY" => false,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn the_per_ip_limit_refuses_only_the_client_over_it() {
    let server = echo_server(
        Config::default()
            .with_max_connections_per_ip(Some(2))
            .with_busy_reply(b"BUSY".to_vec())
            .with_read_deadline(None),
    );
    let addr = server.local_addrs()[0];
    let mut a: Vec<_> = (0..2).map(|_| client_from("127.0.0.1", addr)).collect();
    for c in &mut a {
        assert!(served(c));
    }
    let mut third = client_from("127.0.0.1", addr);
    assert!(
        !served(&mut third),
        "a third from the same address is refused"
    );
    assert_eq!(read_to_close(&mut third).unwrap(), b"");
    let mut b: Vec<_> = (0..2).map(|_| client_from("127.0.0.2", addr)).collect();
    for c in &mut b {
        assert!(served(c), "another address has its own count");
    }
    assert_eq!(server.manager().stats().rejected.per_ip_limit, 1);

    // One closes: its address may connect again once the server has let go.
    drop(a.pop());
    wait_for("a slot for 127.0.0.1 again", || {
        let mut c = client_from("127.0.0.1", addr);
        served(&mut c) && {
            a.push(c);
            true
        }
    });
}

#[test]
fn at_max_connections_clients_wait_in_the_backlog_and_are_served_when_a_slot_frees() {
    let server = echo_server(
        Config::default()
            .with_max_connections(Some(2))
            .with_read_deadline(None),
    );
    let addr = server.local_addrs()[0];
    let mut open: Vec<_> = (0..2).map(|_| client(addr)).collect();
    for c in &mut open {
        roundtrip(c, b"x", b"x");
    }
    let mut waiting = client(addr);
    waiting.write_all(b"wait").unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = waiting.read(&mut [0; 4]).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "not refused, just waiting: {err}"
    );
    assert_eq!(server.manager().stats().rejected.total(), 0);

    drop(open.pop());
    waiting.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0; 4];
    waiting.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"wait");
    assert_eq!(server.manager().stats().rejected.total(), 0);
}

#[test]
fn raising_max_connections_while_at_the_limit_accepts_at_once() {
    let server = echo_server(
        Config::default()
            .with_max_connections(Some(1))
            .with_read_deadline(None),
    );
    let addr = server.local_addrs()[0];
    let mut first = client(addr);
    roundtrip(&mut first, b"1", b"1");
    let mut second = client(addr);
    second.write_all(b"2").unwrap();
    wait_for("the acceptor to reach the limit", || {
        server.manager().stats().connections == 1
    });
    let manager = server.manager();
    manager
        .set_config(manager.config().with_max_connections(Some(2)))
        .unwrap();
    let mut reply = [0; 1];
    second.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"2");
}

#[test]
fn the_per_ip_limit_counts_ipv6_clients_too() {
    init_log();
    let manager = Manager::new(
        Config::default()
            .with_max_connections_per_ip(Some(1))
            .with_busy_reply(b"BUSY".to_vec())
            .with_read_deadline(None),
        echo,
    )
    .unwrap();
    let server = match Server::bind(manager, "[::1]:0") {
        Ok(server) => server,
        Err(e) => {
            util::skip(
                "the per-IP limit over IPv6",
                format!("no IPv6 loopback ({e})"),
            );
            return;
        }
    };
    server.start().unwrap();
    let addr = server.local_addrs()[0];
    let mut first = client(addr);
    assert!(served(&mut first));
    let mut second = client(addr);
    assert!(!served(&mut second));
    assert_eq!(server.manager().stats().rejected.per_ip_limit, 1);
}

#[test]
fn accepted_streams_get_the_configured_deadlines_and_no_others() {
    // Streams from the acceptor skip the system calls that would set what
    // is already so; the configured deadlines must still apply.
    let server = echo_server(
        Config::default()
            .with_read_deadline(Some(Duration::from_millis(150)))
            .with_write_deadline(None),
    );
    let addr = server.local_addrs()[0];
    let mut silent = client(addr);
    let mut talker = client(addr);
    roundtrip(&mut talker, b"one", b"one");
    let started = std::time::Instant::now();
    assert!(read_to_close(&mut silent).unwrap().is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "closed after {waited:?}"
    );
    let stats = wait_stats(server.manager(), "two deadline closes", |s| {
        s.closed.read_deadline == 2
    });
    assert_eq!(stats.closed.total(), 2, "{stats:?}");

    // Without a read deadline nothing closes an idle client.
    server
        .manager()
        .set_config(server.manager().config().with_read_deadline(None))
        .unwrap();
    let mut idle = client(addr);
    roundtrip(&mut idle, b"two", b"two");
    idle.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = idle.read(&mut [0; 1]).unwrap_err();
    assert!(matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ));
    roundtrip(&mut idle, b"three", b"three");
}
