//! TLS (the `tls` feature): the handler sees plaintext in every serving
//! mode; handshakes are bounded by a deadline and failures counted by
//! cause; a parked TLS connection keeps its state; the certificate can be
//! swapped while clients stay connected; a stop closes TLS connections in
//! every state.
#![cfg(feature = "tls")]

mod util;

use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use pool_manager::{Config, Conn, HandshakeFailures, Manager, Server, TlsConfig, TlsError};
use util::tls::*;
use util::*;

/// A started server of `handler` on 127.0.0.1 with `config`.
fn server<F>(config: Config, handler: F) -> Server
where
    F: Fn(&mut Conn<'_>, &[u8]) -> io::Result<()> + Send + Sync + 'static,
{
    init_log();
    let manager = Manager::new(config, handler).expect("valid config");
    let server = Server::bind(manager, "127.0.0.1:0").expect("bind");
    server.start().expect("start");
    server
}

fn tls_config(cert: &TestCert) -> Config {
    Config::default().with_tls(Some(cert.server()))
}

/// A started TLS echo server in the mode `park_after` says.
fn tls_echo(cert: &TestCert, park_after: Option<Duration>) -> Server {
    server(tls_config(cert).with_park_after(park_after), echo)
}

/// Polled mode (parked between reads), a lingering worker, dedicated mode.
fn modes() -> [(&'static str, Option<Duration>); 3] {
    [
        ("polled", Some(Duration::ZERO)),
        ("lingering", Some(Duration::from_millis(50))),
        ("dedicated", None),
    ]
}

#[test]
fn echo_round_trips_in_every_mode() {
    let cert = TestCert::new();
    for (mode, park_after) in modes() {
        let server = tls_echo(&cert, park_after);
        let addr = server.local_addrs()[0];
        let mut client = tls_client(addr, &cert.client());
        for i in 0..20 {
            let msg = format!("{mode} message {i}");
            tls_roundtrip(&mut client, msg.as_bytes(), msg.as_bytes());
        }
        // A reply larger than one TLS record (16 KiB) and the read buffer.
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        tls_roundtrip(&mut client, &big, &big);
        let stats = wait_stats(server.manager(), "one TLS connection", |s| {
            s.tls.current == 1 && s.tls.handshakes == 1
        });
        assert_eq!(stats.tls.failed, HandshakeFailures::default(), "{mode}");
        drop(client);
        let stats = wait_stats(server.manager(), "the close", |s| {
            s.closed.total() == 1 && s.tls.current == 0
        });
        assert_eq!(stats.closed.eof, 1, "{mode}: {stats:?}");
        server.stop().expect("stop");
    }
}

#[test]
fn a_frame_split_across_records_and_reads_is_kept_whole() {
    let cert = TestCert::new();
    let server = server(tls_config(&cert), |conn: &mut Conn<'_>, data: &[u8]| {
        // A line protocol: answer complete lines, keep the rest.
        let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        conn.keep(data.len() - end);
        if end > 0 {
            conn.write_all(&data[..end])?;
        }
        Ok(())
    });
    let mut client = tls_client(server.local_addrs()[0], &cert.client());
    handshake(&mut client).expect("handshake");
    // One line in three records, each record sent in pieces.
    let mut wire = Vec::new();
    for part in [&b"hel"[..], b"lo wor", b"ld\n"] {
        client.conn.writer().write_all(part).unwrap();
        client.conn.write_tls(&mut wire).unwrap();
    }
    for piece in wire.chunks(7) {
        client.sock.write_all(piece).unwrap();
        client.sock.flush().unwrap();
    }
    let mut buf = [0; 12];
    client.read_exact(&mut buf).expect("the line back");
    assert_eq!(&buf, b"hello world\n");
    server.stop().expect("stop");
}

#[test]
fn silent_and_trickling_handshakes_are_closed_at_the_deadline() {
    let cert = TestCert::new();
    for (mode, park_after) in modes() {
        let server = server(
            tls_config(&cert)
                .with_park_after(park_after)
                .with_tls_handshake_deadline(Some(Duration::from_millis(300)))
                .with_first_byte_deadline(Some(Duration::from_millis(600))),
            echo,
        );
        let addr = server.local_addrs()[0];
        // Connects and sends nothing.
        let mut silent = client(addr);
        // Sends the first half of its ClientHello.
        let mut trickle = client(addr);
        let mut hello = Vec::new();
        let name = "localhost".try_into().unwrap();
        let mut conn = pool_manager::rustls::ClientConnection::new(cert.client(), name).unwrap();
        conn.write_tls(&mut hello).unwrap();
        trickle.write_all(&hello[..hello.len() / 2]).unwrap();
        // Completes its handshake, then says nothing: the first-byte
        // deadline's, not the handshake's.
        let mut quiet = tls_client(addr, &cert.client());
        handshake(&mut quiet).expect("handshake");

        for c in [&mut silent, &mut trickle] {
            let got = read_to_close(c).expect("closed within the client's timeout");
            assert!(got.len() < 10, "{mode}: at most an alert, got {got:?}");
        }
        let stats = wait_stats(server.manager(), "three closes", |s| {
            s.closed.total() == 3 && s.tls.current == 0
        });
        assert_eq!(stats.closed.handshake, 2, "{mode}: {stats:?}");
        assert_eq!(stats.closed.first_byte_deadline, 1, "{mode}: {stats:?}");
        assert_eq!(stats.tls.failed.timeout, 2, "{mode}: {stats:?}");
        assert_eq!(stats.tls.handshakes, 1, "{mode}");
        server.stop().expect("stop");
    }
}

#[test]
fn garbage_instead_of_a_client_hello_is_counted_and_closed() {
    let cert = TestCert::new();
    let server = server(tls_config(&cert), echo);
    let addr = server.local_addrs()[0];
    let mut plain = client(addr);
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_to_close(&mut plain).expect("closed");
    assert!(
        !got.windows(3).any(|w| w == b"GET"),
        "nothing echoed in plaintext"
    );
    // A client that does not trust the certificate: it ends the handshake
    // with an alert.
    let stranger = TestCert::other();
    let mut distrustful = tls_client(addr, &stranger.client());
    assert!(handshake(&mut distrustful).is_err());
    let stats = wait_stats(server.manager(), "two failed handshakes", |s| {
        s.closed.handshake == 2
    });
    assert_eq!(stats.tls.failed.protocol, 1, "{stats:?}");
    assert_eq!(stats.tls.failed.alert, 1, "{stats:?}");
    assert_eq!(stats.tls.failed.total(), 2);
    assert_eq!(stats.tls.handshakes, 0);
    server.stop().expect("stop");
}

#[test]
fn the_handler_sees_alpn_and_sni_and_close_sends_close_notify() {
    let cert = TestCert::new();
    let mut rustls_config = pool_manager::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            pool_manager::rustls::pki_types::PrivateKeyDer::try_from(key_der(&cert.key_pem))
                .unwrap(),
        )
        .unwrap();
    rustls_config.alpn_protocols = vec![b"pm/1".to_vec()];
    let config = Config::default().with_tls(Some(TlsConfig::from(rustls_config)));
    let server = server(config, |conn: &mut Conn<'_>, _data: &[u8]| {
        let tls = conn.tls().expect("a TLS connection");
        let reply = format!(
            "{} {}\n",
            String::from_utf8_lossy(tls.alpn_protocol().unwrap_or(b"-")),
            tls.server_name().unwrap_or("-")
        );
        conn.write_all(reply.as_bytes())?;
        conn.close();
        Ok(())
    });
    let alpn = cert.client_with_alpn(vec![b"pm/1".to_vec()]);
    let mut client = tls_client(server.local_addrs()[0], &alpn);
    client.write_all(b"who?").unwrap();
    let mut got = String::new();
    // A clean end (close_notify) reads as Ok(0); without it rustls's client
    // reports an unexpected end of file.
    client.read_to_string(&mut got).expect("a clean close");
    assert_eq!(got, "pm/1 localhost\n");
    wait_stats(server.manager(), "the close", |s| {
        s.closed.handler == 1 && s.tls.current == 0
    });
    server.stop().expect("stop");
}

/// The DER of a PEM private key, through the crate's own loader's parser.
fn key_der(pem: &str) -> Vec<u8> {
    use pool_manager::rustls::pki_types::PrivateKeyDer;
    use pool_manager::rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .secret_der()
        .to_vec()
}

#[test]
fn a_swapped_certificate_serves_new_clients_and_spares_old_ones() {
    let (old, new) = (TestCert::new(), TestCert::other());
    let server = server(tls_config(&old), echo);
    let addr = server.local_addrs()[0];
    let mut early = tls_client(addr, &old.client());
    tls_roundtrip(&mut early, b"before", b"before");

    let manager = server.manager();
    manager
        .set_config(manager.config().with_tls(Some(new.server())))
        .expect("swap the certificate");
    tls_roundtrip(&mut early, b"after", b"after");
    let mut late = tls_client(addr, &new.client());
    tls_roundtrip(&mut late, b"new", b"new");
    let mut stale = tls_client(addr, &old.client());
    assert!(
        handshake(&mut stale).is_err(),
        "a client trusting only the old certificate is refused"
    );
    tls_roundtrip(&mut early, b"still", b"still");
    let stats = manager.stats();
    assert_eq!(stats.tls.handshakes, 2, "{stats:?}");
    server.stop().expect("stop");
}

#[test]
fn a_thousand_idle_tls_clients_park_on_a_few_workers() {
    #[cfg(unix)]
    let _ = rlimit::increase_nofile_limit(8192);
    let cert = TestCert::new();
    let config = tls_config(&cert).with_read_deadline(None);
    let pollers = config.pollers;
    let server = server(config, echo);
    let addr = server.local_addrs()[0];
    let client_config = cert.client();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client_config = Arc::clone(&client_config);
            std::thread::spawn(move || {
                (0..250)
                    .map(|i| {
                        let mut c = tls_client(addr, &client_config);
                        let msg = format!("{t}/{i}");
                        tls_roundtrip(&mut c, msg.as_bytes(), msg.as_bytes());
                        c
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut clients: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let stats = wait_stats(server.manager(), "1000 parked", |s| s.parked == 1000);
    assert_eq!(stats.tls.current, 1000);
    assert_eq!(stats.tls.handshakes, 1000);
    // Where the sysmon cannot tell a long handshake (computing) from a
    // blocked turn (without `/proc`: os_thread.rs), handshakes longer than
    // `grow_after` may grow the pool.
    assert!(
        stats.workers <= pollers + 2 || !cfg!(any(target_os = "linux", target_os = "android")),
        "{} workers for 1000 idle TLS clients",
        stats.workers
    );
    // Each still answers.
    for c in clients.iter_mut().step_by(50) {
        tls_roundtrip(c, b"still here", b"still here");
    }
    drop(clients);
    wait_stats(server.manager(), "all closed", |s| s.tls.current == 0);
    server.stop().expect("stop");
}

#[test]
fn a_stop_closes_tls_connections_in_every_state() {
    let cert = TestCert::new();
    let gate = Arc::new(Gate::default());
    let in_handler = Arc::clone(&gate);
    let server = server(
        tls_config(&cert),
        move |conn: &mut Conn<'_>, data: &[u8]| {
            if data.starts_with(b"wait") {
                in_handler.wait();
            }
            conn.write_all(data)
        },
    );
    let addr = server.local_addrs()[0];
    let mut handshaking = client(addr);
    handshaking.write_all(&[0x16, 0x03, 0x01]).unwrap(); // a record begins
    let mut idle = tls_client(addr, &cert.client());
    tls_roundtrip(&mut idle, b"hi", b"hi");
    let mut busy = tls_client(addr, &cert.client());
    busy.write_all(b"wait").unwrap();
    busy.flush().unwrap();
    wait_for("the handler to hold its worker", || gate.entered() == 1);
    wait_stats(server.manager(), "three TLS connections", |s| {
        s.tls.current == 3
    });

    let manager = server.manager();
    let report = std::thread::scope(|scope| {
        scope.spawn(|| {
            // The handler finishes its reply once the stop has begun.
            wait_for("the stop to begin", || !manager.is_running());
            gate.open();
        });
        server.stop_timeout(Duration::from_secs(5)).expect("stop")
    });
    let stats = server.manager().stats();
    assert_eq!(stats.tls.current, 0, "{stats:?} {report:?}");
    assert_eq!(stats.closed.total(), 3, "{stats:?}");
    read_to_close(&mut handshaking).expect("closed");
    // The idle client gets nothing more, the busy one its reply; then
    // both are closed (a time-out would be an error of its own kind).
    for (c, expected) in [(&mut idle, &b""[..]), (&mut busy, b"wait")] {
        let mut rest = Vec::new();
        let end = c.read_to_end(&mut rest);
        let closed = end.as_ref().map_or_else(
            |e| !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            |_| true,
        );
        assert!(closed, "{end:?}");
        assert_eq!(rest, expected, "{end:?}");
    }
}

#[test]
fn bad_certificates_and_keys_are_typed_errors() {
    let cert = TestCert::new();
    let other = TestCert::other();
    let dir = std::env::temp_dir().join(format!("pool-manager-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (cert_file, key_file) = (
        write("cert.pem", &cert.cert_pem),
        write("key.pem", &cert.key_pem),
    );
    let other_key = write("other.pem", &other.key_pem);
    let empty = write("empty.pem", "");
    assert!(TlsConfig::from_pem_files(&cert_file, &key_file).is_ok());
    let missing = dir.join("missing.pem");
    assert!(matches!(
        TlsConfig::from_pem_files(&missing, &key_file),
        Err(TlsError::Read { path, .. }) if path == missing
    ));
    assert!(matches!(
        TlsConfig::from_pem_files(&empty, &key_file),
        Err(TlsError::NoCertificates { path: Some(p) }) if p == empty
    ));
    assert!(matches!(
        TlsConfig::from_pem_files(&cert_file, &empty),
        Err(TlsError::NoKey { path: Some(p) }) if p == empty
    ));
    let mismatch = TlsConfig::from_pem_files(&cert_file, &other_key).unwrap_err();
    assert!(
        matches!(mismatch, TlsError::KeyMismatch { cert: Some(ref p) } if *p == cert_file),
        "{mismatch}"
    );
    assert!(mismatch.to_string().contains("does not match"));
    // The key where the certificate should be: no certificate in it.
    assert!(matches!(
        TlsConfig::from_pem(cert.key_pem.as_bytes(), cert.key_pem.as_bytes()),
        Err(TlsError::NoCertificates { path: None })
    ));
    let zero = Config::default().with_tls_handshake_deadline(Some(Duration::ZERO));
    assert!(zero.validate().is_err());
    // 0-RTT data would be acknowledged by rustls and never reach the
    // handler: refused.
    let mut early = pool_manager::rustls::ServerConfig::clone(cert.server().server_config());
    early.max_early_data_size = 16384;
    let config = Config::default().with_tls(Some(TlsConfig::from(early)));
    assert_eq!(
        config.validate(),
        Err(pool_manager::ConfigError::TlsEarlyData)
    );
    assert!(Manager::new(config, echo).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Dedicated mode: an idle worker still holding the configuration of its
/// last turn must serve a new connection with the one in force — the new
/// certificate, or TLS at all once `set_config` turned it on.
#[test]
fn idle_dedicated_workers_take_up_a_new_tls_configuration() {
    let (old, new) = (TestCert::new(), TestCert::other());
    let dedicated = |tls| {
        Config::default()
            .with_park_after(None)
            .with_min_workers(4)
            .with_tls(tls)
    };
    // A swapped certificate.
    let swapped = server(dedicated(Some(old.server())), echo);
    let manager = swapped.manager();
    manager
        .set_config(manager.config().with_tls(Some(new.server())))
        .expect("swap");
    let mut late = tls_client(swapped.local_addrs()[0], &new.client());
    handshake(&mut late).expect("the new certificate");
    swapped.stop().expect("stop");

    // TLS turned on: never served in plaintext.
    let server = server(dedicated(None), echo);
    let manager = server.manager();
    manager
        .set_config(manager.config().with_tls(Some(new.server())))
        .expect("tls on");
    let mut plain = client(server.local_addrs()[0]);
    plain.write_all(b"secret\n").unwrap();
    let got = read_to_close(&mut plain).expect("closed");
    assert!(!got.windows(6).any(|w| w == b"secret"), "{got:?}");
    let stats = wait_stats(manager, "the failed handshake", |s| s.closed.total() == 1);
    assert_eq!(stats.tls.failed.protocol, 1, "{stats:?}");
    server.stop().expect("stop");
}

/// Polled mode: a request and the client's `close_notify` in one segment,
/// without a FIN. No later event comes, so the connection must not be
/// parked with the `close_notify` inside rustls: it is answered, then
/// closed with our own `close_notify`.
#[test]
fn a_close_notify_behind_the_last_request_is_seen() {
    let cert = TestCert::new();
    let server = server(
        tls_config(&cert).with_read_deadline(Some(Duration::from_secs(30))),
        echo,
    );
    let mut c = tls_client(server.local_addrs()[0], &cert.client());
    tls_roundtrip(&mut c, b"warm", b"warm");
    c.conn.writer().write_all(b"bye").unwrap();
    c.conn.send_close_notify();
    let mut wire = Vec::new();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut wire).unwrap();
    }
    c.sock.write_all(&wire).unwrap();
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    assert!(
        end.is_ok(),
        "{end:?} after {got:?}: {:?}",
        server.manager().stats()
    );
    assert_eq!(got, b"bye");
    let stats = wait_stats(server.manager(), "the close", |s| s.closed.total() == 1);
    assert_eq!(stats.closed.eof, 1, "{stats:?}");
    server.stop().expect("stop");
}

/// A stop while a worker waits in a handshake is a stop, not a failed
/// handshake.
#[test]
fn a_stop_during_a_handshake_counts_as_a_stop() {
    let cert = TestCert::new();
    for (mode, park_after) in modes() {
        let server = tls_echo(&cert, park_after);
        let mut c = client(server.local_addrs()[0]);
        c.write_all(&[0x16, 0x03, 0x01]).unwrap(); // a record begins
        wait_stats(server.manager(), "one TLS connection", |s| {
            s.tls.current == 1
        });
        server.stop().expect("stop");
        let stats = server.manager().stats();
        assert_eq!(
            (
                stats.closed.stop,
                stats.closed.handshake,
                stats.tls.failed.total()
            ),
            (1, 0, 0),
            "{mode}: {stats:?}"
        );
    }
}

/// Whichever deadline ends a handshake — here the read deadline, before
/// the handshake's own — the connection is closed and counted as a
/// handshake timeout.
#[test]
fn any_deadline_that_ends_a_handshake_counts_as_its_timeout() {
    let cert = TestCert::new();
    for (mode, park_after) in modes() {
        let server = server(
            tls_config(&cert)
                .with_park_after(park_after)
                .with_read_deadline(Some(Duration::from_millis(200))),
            echo,
        );
        let mut silent = client(server.local_addrs()[0]);
        read_to_close(&mut silent).expect("closed");
        let stats = wait_stats(server.manager(), "the close", |s| s.closed.total() == 1);
        assert_eq!(
            (
                stats.closed.handshake,
                stats.tls.failed.timeout,
                stats.closed.read_deadline
            ),
            (1, 1, 0),
            "{mode}: {stats:?}"
        );
        server.stop().expect("stop");
    }
}
