//! The PROXY protocol (v1 and v2) on real sockets: the handler sees the
//! client the header names, in every serving mode; bytes after the header
//! reach it untouched; `LOCAL` is the balancer's own connection; broken,
//! late, oversized headers and untrusted peers are closed and counted; the
//! per-IP limit counts the clients the headers name; TLS behind a header.

mod util;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use pool_manager::{Config, Conn, Manager, ProxyProtocol, PutError, Server, Untrusted};
use ppp::v2::{Builder, Command, Protocol, Version};
use util::*;

/// Replies `<peer as the handler sees it> <line>` to each whole line; a
/// partial line waits for the rest.
fn who(conn: &mut Conn<'_>, data: &[u8]) -> io::Result<()> {
    let peer = conn.peer_addr()?;
    let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    conn.keep(data.len() - end);
    for line in data[..end].split_inclusive(|&b| b == b'\n') {
        write!(conn, "{peer} ")?;
        conn.write_all(line)?;
    }
    Ok(())
}

fn trusting(nets: &[&str]) -> ProxyProtocol {
    ProxyProtocol::new(nets.iter().map(|n| n.parse().unwrap()))
}

fn proxy_config(base: Config) -> Config {
    base.with_proxy_protocol(Some(trusting(&["127.0.0.0/8"])))
}

fn server(config: Config) -> Server {
    init_log();
    let manager = Manager::new(config, who).expect("valid config");
    let server = Server::bind(manager, "127.0.0.1:0").expect("bind");
    server.start().expect("start");
    server
}

fn v1(client: &str) -> Vec<u8> {
    let c: SocketAddr = client.parse().unwrap();
    let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
    let server = if c.is_ipv4() {
        "192.0.2.1"
    } else {
        "2001:db8::1"
    };
    format!("PROXY {family} {} {server} {} 443\r\n", c.ip(), c.port()).into_bytes()
}

fn v2(command: Command, client: &str) -> Vec<u8> {
    let c: SocketAddr = client.parse().unwrap();
    let s: SocketAddr = if c.is_ipv4() {
        "192.0.2.1:443".parse().unwrap()
    } else {
        "[2001:db8::1]:443".parse().unwrap()
    };
    Builder::with_addresses(Version::Two | command, Protocol::Stream, (c, s))
        .build()
        .unwrap()
}

/// Sends `header` then `msg` as `pieces` writes, and reads `expect` back.
fn send_in_pieces(client: &mut std::net::TcpStream, bytes: &[u8], pieces: usize, expect: &str) {
    let step = bytes.len().div_ceil(pieces);
    for chunk in bytes.chunks(step) {
        client.write_all(chunk).unwrap();
        client.flush().unwrap();
    }
    let mut got = vec![0; expect.len()];
    client.read_exact(&mut got).expect("the reply");
    assert_eq!(String::from_utf8_lossy(&got), expect);
}

#[test]
fn the_handler_sees_the_client_the_header_names_in_every_mode() {
    for park_after in [Some(Duration::ZERO), Some(Duration::from_millis(50)), None] {
        let server = server(proxy_config(Config::default().with_park_after(park_after)));
        let addr = server.local_addrs()[0];
        let cases = [
            (v1("203.0.113.7:4000"), "203.0.113.7:4000"),
            (v1("[2001:db8::7]:4001"), "[2001:db8::7]:4001"),
            (v2(Command::Proxy, "203.0.113.8:4002"), "203.0.113.8:4002"),
            (
                v2(Command::Proxy, "[2001:db8::8]:4003"),
                "[2001:db8::8]:4003",
            ),
        ];
        for (pieces, (header, peer)) in [1, 3, 7, 2].into_iter().zip(cases) {
            let mut c = client(addr);
            // The header and the first request in one read, or split.
            let mut bytes = header.clone();
            bytes.extend_from_slice(b"hello\n");
            send_in_pieces(&mut c, &bytes, pieces, &format!("{peer} hello\n"));
            // Later reads see the same client.
            roundtrip(&mut c, b"again\n", format!("{peer} again\n").as_bytes());
        }
        let stats = server.manager().stats();
        assert_eq!(stats.proxy.headers, 4, "{park_after:?}");
        assert_eq!(stats.closed.proxy_header, 0);
    }
}

#[test]
fn local_is_the_balancer_itself_and_no_error() {
    let server = server(proxy_config(Config::default()));
    let addr = server.local_addrs()[0];
    for header in [
        v2(Command::Local, "203.0.113.9:1"),
        b"PROXY UNKNOWN\r\n".to_vec(),
    ] {
        let mut c = client(addr);
        let me = c.local_addr().unwrap();
        c.write_all(&header).unwrap();
        roundtrip(&mut c, b"ping\n", format!("{me} ping\n").as_bytes());
    }
    // A health check that connects, sends LOCAL and leaves.
    let mut check = client(addr);
    check
        .write_all(&v2(Command::Local, "203.0.113.9:1"))
        .unwrap();
    drop(check);
    let stats = wait_stats(server.manager(), "three LOCAL headers", |s| {
        s.proxy.local == 3
    });
    assert_eq!(stats.proxy.headers, 0);
    let stats = wait_stats(server.manager(), "the check closed", |s| s.closed.eof >= 1);
    assert_eq!(
        stats.closed.proxy_header + stats.closed.error,
        0,
        "{stats:?}"
    );
}

#[test]
fn broken_late_and_oversized_headers_are_closed_and_counted() {
    let proxy = trusting(&["127.0.0.0/8"])
        .with_header_deadline(Duration::from_millis(300))
        .with_max_header_size(256);
    for park_after in [Some(Duration::ZERO), None] {
        let server = server(
            Config::default()
                .with_proxy_protocol(Some(proxy.clone()))
                .with_park_after(park_after),
        );
        let addr = server.local_addrs()[0];
        let mut long_v2 = v2(Command::Proxy, "203.0.113.1:1")[..16].to_vec();
        long_v2[14..16].copy_from_slice(&1000u16.to_be_bytes()); // 1,016 bytes
        long_v2.resize(300, 0);
        let mut long_v1 = b"PROXY TCP4 ".to_vec();
        long_v1.resize(200, b'1');
        let cases: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", // not behind a balancer
            b"PROXY TCP4 203.0.113.1 192.0.2.1 70000 443\r\n",
            &long_v1,
            &long_v2,
            b"PROXY TCP4 203.0.113.1", // then the end of the connection
            b"",                       // silent: the header deadline
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let mut c = client(addr);
            c.write_all(bytes).unwrap();
            if i == 4 {
                c.shutdown(std::net::Shutdown::Write).unwrap();
            }
            // Closed with no reply: the handler never saw it.
            assert_eq!(read_to_close(&mut c).unwrap(), b"", "case {i}");
        }
        let stats = wait_stats(server.manager(), "six failed headers", |s| {
            s.closed.proxy_header == 6
        });
        assert_eq!(stats.proxy.headers + stats.proxy.local, 0);
        assert_eq!(stats.closed.total(), 6, "{park_after:?} {stats:?}");
    }
}

#[test]
fn untrusted_peers_are_refused_or_served_direct_as_configured() {
    init_log();
    // Only 10.0.0.0/8 may send headers: the loopback client may not.
    let refuse = Config::default().with_proxy_protocol(Some(trusting(&["10.0.0.0/8", "fd00::/8"])));
    let refusing = server(refuse.clone());
    let mut c = client(refusing.local_addrs()[0]);
    let _ = c.write_all(&v1("203.0.113.5:5"));
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    let stats = wait_stats(refusing.manager(), "the refusal", |s| {
        s.rejected.untrusted == 1
    });
    assert_eq!(stats.connections, 0);

    // `put` hands the stream back.
    let manager = Manager::new(refuse.clone(), who).unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let (_c, s) = lo.pair();
    let refused = manager.put(s).unwrap_err();
    assert!(matches!(refused, PutError::Untrusted(_)) && refused.is_untrusted());
    assert_eq!(manager.stats().rejected.untrusted, 1);

    // Direct: served as a client of its own, a header is only data.
    let direct = server(Config::default().with_proxy_protocol(Some(
        trusting(&["10.0.0.0/8"]).with_untrusted(Untrusted::Direct),
    )));
    let mut c = client(direct.local_addrs()[0]);
    let me = c.local_addr().unwrap();
    roundtrip(
        &mut c,
        b"PROXY UNKNOWN\r\n",
        format!("{me} PROXY UNKNOWN\r\n").as_bytes(),
    );
    assert_eq!(direct.manager().stats().proxy.local, 0);
}

#[test]
fn the_per_ip_limit_counts_the_clients_headers_name() {
    let server = server(proxy_config(
        Config::default()
            .with_max_connections_per_ip(Some(2))
            .with_busy_reply(b"BUSY\n".to_vec()),
    ));
    let addr = server.local_addrs()[0];
    let connect = |client_addr: &str| {
        let mut c = client(addr);
        c.write_all(&v2(Command::Proxy, client_addr)).unwrap();
        c
    };
    // Every connection comes from 127.0.0.1, the "balancer".
    let mut a1 = connect("198.51.100.1:1");
    let mut a2 = connect("198.51.100.1:2");
    roundtrip(&mut a1, b"1\n", b"198.51.100.1:1 1\n");
    roundtrip(&mut a2, b"2\n", b"198.51.100.1:2 2\n");
    let mut a3 = connect("198.51.100.1:3");
    assert_eq!(read_to_close(&mut a3).unwrap(), b"BUSY\n");
    let mut b1 = connect("198.51.100.2:1");
    roundtrip(&mut b1, b"b\n", b"198.51.100.2:1 b\n");
    let stats = server.manager().stats();
    assert_eq!(stats.closed.per_ip_limit, 1, "{stats:?}");
    // One closes: its place is free again (once its worker has dropped
    // it, just after counting the close).
    drop(a1);
    wait_stats(server.manager(), "a1 closed", |s| s.closed.eof == 1);
    let mut reply = Vec::new();
    wait_for("a place for 198.51.100.1", || {
        let mut a4 = connect("198.51.100.1:4");
        a4.write_all(b"4\n").unwrap();
        reply = vec![0; b"198.51.100.1:4 4\n".len()];
        a4.read_exact(&mut reply).is_ok() && reply != b"BUSY\n"[..]
    });
    assert_eq!(reply, b"198.51.100.1:4 4\n");
}

/// In polled mode a header that comes in pieces parks the connection
/// between them, its bytes so far kept in the session.
#[test]
fn a_header_in_pieces_parks_between_them() {
    let server = server(proxy_config(Config::default()));
    let manager = server.manager();
    let mut c = client(server.local_addrs()[0]);
    let mut parks = wait_stats(manager, "the new connection parked", |s| s.parks >= 1).parks;
    let header = v2(Command::Proxy, "[2001:db8::42]:4242");
    for piece in header.chunks(9) {
        c.write_all(piece).unwrap();
        if manager.stats().proxy.headers == 0 {
            parks = wait_stats(manager, "parked again", |s| {
                s.parks > parks || s.proxy.headers == 1
            })
            .parks;
        }
    }
    roundtrip(&mut c, b"after\n", b"[2001:db8::42]:4242 after\n");
    let stats = manager.stats();
    assert!(
        stats.parks >= 1 + header.len().div_ceil(9) as u64 - 1,
        "{stats:?}"
    );
    assert_eq!(stats.proxy.headers, 1);
}

/// The header is read under the limits in force when the connection was
/// taken, even if `set_config` turns the PROXY protocol off meanwhile.
#[test]
fn a_pending_header_keeps_the_config_it_was_taken_with() {
    for park_after in [Some(Duration::ZERO), None] {
        let server = server(proxy_config(Config::default().with_park_after(park_after)));
        let manager = server.manager();
        let mut c = client(server.local_addrs()[0]);
        let header = v1("198.51.100.9:9999");
        c.write_all(&header[..10]).unwrap();
        wait_stats(manager, "taken", |s| s.connections == 1);
        manager
            .set_config(manager.config().with_proxy_protocol(None))
            .unwrap();
        c.write_all(&header[10..]).unwrap();
        roundtrip(&mut c, b"x\n", b"198.51.100.9:9999 x\n");
        // A new connection is direct now.
        let mut d = client(server.local_addrs()[0]);
        let me = d.local_addr().unwrap();
        roundtrip(&mut d, b"y\n", format!("{me} y\n").as_bytes());
    }
}

#[test]
fn stop_during_a_header_counts_as_stop() {
    let server = server(proxy_config(Config::default().with_park_after(None)));
    let mut c = client(server.local_addrs()[0]);
    c.write_all(b"PROXY TCP4 203.0.113.1").unwrap();
    wait_stats(server.manager(), "a worker on it", |s| s.busy == 1);
    let report = server.stop().unwrap();
    let stats = server.manager().stats();
    assert_eq!(stats.closed.stop, 1, "{stats:?} {report:?}");
    assert_eq!(stats.closed.proxy_header, 0);
}

#[cfg(feature = "tls")]
#[test]
fn tls_follows_the_header() {
    use util::tls::*;
    let cert = TestCert::new();
    for park_after in [Some(Duration::ZERO), None] {
        let server = server(proxy_config(
            Config::default()
                .with_tls(Some(cert.server()))
                .with_park_after(park_after),
        ));
        // The header alone, then the handshake; and the header with the
        // ClientHello in one write, which rustls must read first.
        for together in [false, true] {
            let mut c = client(server.local_addrs()[0]);
            let name = pool_manager::rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut conn =
                pool_manager::rustls::ClientConnection::new(cert.client(), name).unwrap();
            let mut first = v1("203.0.113.77:7777");
            if together {
                conn.write_tls(&mut first).unwrap(); // the ClientHello
            }
            c.write_all(&first).unwrap();
            let mut tls = pool_manager::rustls::StreamOwned::new(conn, c);
            tls_roundtrip(&mut tls, b"hi\n", b"203.0.113.77:7777 hi\n");
        }
        let stats = server.manager().stats();
        assert_eq!((stats.tls.handshakes, stats.proxy.headers), (2, 2));
    }
}

/// An untrusted peer is refused as untrusted, without a reply, whatever
/// the per-IP limit says.
#[test]
fn untrusted_peers_are_not_counted_per_ip() {
    let server = server(
        Config::default()
            .with_proxy_protocol(Some(trusting(&["10.0.0.0/8"])))
            .with_max_connections_per_ip(Some(1))
            .with_busy_reply(b"BUSY\n".to_vec()),
    );
    let held: Vec<_> = (0..3)
        .map(|_| {
            let mut c = client(server.local_addrs()[0]);
            assert_eq!(read_to_close(&mut c).unwrap(), b"");
            c
        })
        .collect();
    let stats = wait_stats(server.manager(), "three refusals", |s| {
        s.rejected.untrusted == 3
    });
    assert_eq!(stats.rejected.per_ip_limit, 0, "{stats:?}");
    drop(held);
}
