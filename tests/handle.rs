//! Handles: writing to a connection and closing it from any thread, in
//! every serving mode and over TLS, racing the connection's own replies,
//! its close, its client's end, a deadline and a stop.

mod util;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pool_manager::{Config, Conn, Handle, SendError, Server};
use util::*;

const MS: Duration = Duration::from_millis(1);

/// The handles of every connection that said `hi\n`, in arrival order.
#[derive(Clone, Default)]
struct Registry(Arc<Mutex<Vec<Handle>>>);

impl Registry {
    fn handles(&self) -> Vec<Handle> {
        self.0.lock().unwrap().clone()
    }

    fn wait_for(&self, n: usize) -> Vec<Handle> {
        wait_for("the connections to register", || {
            self.0.lock().unwrap().len() >= n
        });
        self.handles()
    }
}

/// A server that registers each connection's handle at `hi\n` (answering
/// `ok\n`) and answers `big\n` with a reply of many writes: `[` , 40
/// writes of 100 `r`, `]\n`.
fn registry_server(config: Config) -> (Arc<Server>, Registry) {
    let registry = Registry::default();
    let r = registry.clone();
    let server = handler_server(config, move |conn: &mut Conn<'_>, data: &[u8]| {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            match &rest[..end] {
                b"hi" => {
                    r.0.lock().unwrap().push(conn.handle());
                    conn.write_all(b"ok\n")?;
                }
                b"big" => {
                    conn.write_all(b"[")?;
                    for _ in 0..40 {
                        conn.write_all(&[b'r'; 100])?;
                    }
                    conn.write_all(b"]\n")?;
                }
                b"quit" => conn.close(),
                _ => conn.write_all(b"?\n")?,
            }
            rest = &rest[end + 1..];
        }
        conn.keep(rest.len());
        Ok(())
    });
    (server, registry)
}

fn addr(server: &Server) -> SocketAddr {
    server.local_addrs()[0]
}

/// A client that registered: its `ok` read.
fn registered(addr: SocketAddr) -> BufReader<std::net::TcpStream> {
    let mut c = client(addr);
    c.write_all(b"hi\n").unwrap();
    let mut c = BufReader::new(c);
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    assert_eq!(line, "ok\n");
    c
}

/// Raises the descriptor limit to `want` (Unix; Windows has none to raise).
fn raise_fd_limit(want: u64) {
    #[cfg(unix)]
    {
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        if soft < want {
            rlimit::Resource::NOFILE.set(want.min(hard), hard).unwrap();
        }
    }
    #[cfg(not(unix))]
    let _ = want;
}

#[test]
fn sends_from_8_threads_reach_1000_parked_connections_once_each_in_order() {
    raise_fd_limit(4096);
    // No read deadline: opening 1,000 connections may take longer than the
    // default's 3 s (under Wine, it does), and the first must not close.
    let (server, registry) = registry_server(Config::default().with_read_deadline(None));
    let manager = server.manager();
    const CONNS: usize = 1000;
    const THREADS: usize = 8;
    const EACH: usize = 10;
    let clients: Vec<_> = (0..CONNS).map(|_| registered(addr(&server))).collect();
    let handles = registry.wait_for(CONNS);
    // Every connection is parked: no worker holds any of them.
    wait_stats(manager, "every connection parked", |s| {
        s.busy == 0 && s.parked == CONNS
    });
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let handles = handles.clone();
            thread::spawn(move || {
                for seq in 0..EACH {
                    for h in &handles {
                        h.send(format!("{t}:{seq}\n")).expect("a send");
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let expected_bytes: usize = (0..THREADS)
        .flat_map(|t| (0..EACH).map(move |seq| format!("{t}:{seq}\n").len()))
        .sum();
    for mut c in clients {
        let mut next = [0usize; THREADS];
        for _ in 0..THREADS * EACH {
            let mut line = String::new();
            c.read_line(&mut line).expect("a line");
            let (t, seq) = line.trim_end().split_once(':').expect("t:seq");
            let (t, seq): (usize, usize) = (t.parse().unwrap(), seq.parse().unwrap());
            assert_eq!(seq, next[t], "sender {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, [EACH; THREADS]);
    }
    let s = manager.stats();
    assert_eq!(
        s.bytes_out,
        (CONNS * (3 + expected_bytes)) as u64,
        "every byte once"
    );
    server.stop().unwrap();
}

#[test]
fn sends_never_split_a_reply() {
    for park_after in [Some(Duration::ZERO), Some(5 * MS), None] {
        let (server, registry) = registry_server(Config::default().with_park_after(park_after));
        let mut c = registered(addr(&server));
        let handle = registry.wait_for(1).remove(0);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(SeqCst) && sent < 20_000 {
                    match handle.send(b"<push>\n") {
                        Ok(()) => sent += 1,
                        Err(SendError::Full(_)) => thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
                sent
            })
        };
        let mut writer = c.get_ref().try_clone().unwrap();
        let mut replies = 0;
        let mut pushes = 0;
        let mut line = String::new();
        for _ in 0..200 {
            writer.write_all(b"big\n").unwrap();
            // Pushes may come before the reply; the reply comes whole.
            loop {
                line.clear();
                c.read_line(&mut line).unwrap();
                if line == "<push>\n" {
                    pushes += 1;
                    continue;
                }
                assert_eq!(line.len(), 4003, "{park_after:?}: a split reply");
                assert!(line.starts_with('[') && line.ends_with("]\n"));
                assert!(
                    line[1..4001].bytes().all(|b| b == b'r'),
                    "{park_after:?}: {line}"
                );
                replies += 1;
                break;
            }
        }
        stop.store(true, SeqCst);
        let sent = sender.join().unwrap();
        // The rest of the pushes arrive too.
        writer.write_all(b"quit\n").unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        pushes += rest
            .split(|&b| b == b'\n')
            .filter(|l| *l == b"<push>")
            .count();
        assert_eq!((replies, pushes), (200, sent), "{park_after:?}");
        assert!(sent > 0);
        server.stop().unwrap();
    }
}

#[test]
fn a_handle_reaches_a_connection_in_every_mode() {
    for park_after in [Some(Duration::ZERO), Some(50 * MS), None] {
        let (server, registry) = registry_server(
            Config::default()
                .with_park_after(park_after)
                .with_read_deadline(Some(Duration::from_secs(10))),
        );
        let mut c = registered(addr(&server));
        let handle = registry.wait_for(1).remove(0);
        // The client says nothing more; the bytes come all the same, at
        // once (a dedicated or lingering worker is woken by its bell).
        for i in 0..20 {
            let started = Instant::now();
            handle.send(format!("push {i}\n")).unwrap();
            let mut line = String::new();
            c.read_line(&mut line).unwrap();
            assert_eq!(line, format!("push {i}\n"), "{park_after:?}");
            assert!(
                started.elapsed() < 500 * MS,
                "{park_after:?}: {:?}",
                started.elapsed()
            );
        }
        // Close: after what was sent before it.
        handle.send(b"last\n").unwrap();
        handle.close();
        assert_eq!(handle.send(b"late"), Err(SendError::Closed(b"late")));
        let mut rest = String::new();
        c.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "last\n", "{park_after:?}");
        let s = wait_stats(server.manager(), "the close", |s| s.closed.total() == 1);
        assert_eq!(s.closed.handler, 1, "{park_after:?}: {:?}", s.closed);
        assert!(handle.is_closed());
        server.stop().unwrap();
    }
}

#[test]
fn full_at_the_bound_gives_the_bytes_back() {
    let bound = 64 << 10;
    let (server, registry) = registry_server(
        Config::default()
            .with_max_outbound_bytes(bound)
            .with_write_deadline(Some(Duration::from_secs(10)))
            // Small kernel buffers: the bytes wait in the pool.
            .with_send_buffer_size(Some(16 << 10)),
    );
    let c = registered(addr(&server));
    let handle = registry.wait_for(1).remove(0);
    // The client reads nothing: sends are taken up to the bound (and what
    // the socket buffers hold), then refused with the bytes given back.
    let chunk = vec![b'x'; 4096];
    let mut taken = 0;
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        match handle.send(chunk.clone()) {
            Ok(()) => taken += chunk.len(),
            Err(SendError::Full(back)) => break back,
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "never full: {taken} bytes taken");
    };
    assert_eq!(refused, chunk);
    assert!(taken <= bound + (4 << 20), "{taken}");
    // Reading frees room: sends are taken again, and every byte taken
    // arrives.
    let mut c = c;
    let mut got = vec![0; taken];
    c.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == b'x'));
    wait_for("room again", || handle.send(b"y").is_ok());
    let mut y = [0];
    c.read_exact(&mut y).unwrap();
    assert_eq!(&y, b"y");
    server.stop().unwrap();
}

#[test]
fn sends_race_the_connection_ending_without_loss_or_panic() {
    // Each way a connection ends, while another thread sends to it.
    let (server, registry) = registry_server(
        Config::default()
            .with_write_deadline(Some(300 * MS))
            .with_read_deadline(Some(Duration::from_secs(10))),
    );
    let manager = server.manager();
    let mut held = Vec::new();
    for ending in ["fin", "reset", "quit", "deadline", "handle"] {
        let c = registered(addr(&server));
        let handle = registry.handles().pop().unwrap();
        let sends = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sender = {
            let handle = handle.clone();
            // Enough to fill the socket buffers of a client that does not
            // read, for the write deadline.
            let payload = if ending == "deadline" {
                vec![b'x'; 64 << 10]
            } else {
                b"tick\n".to_vec()
            };
            let sends = Arc::clone(&sends);
            thread::spawn(move || {
                let started = Instant::now();
                loop {
                    match handle.send(&payload[..]) {
                        Ok(()) | Err(SendError::Full(_)) => {
                            sends.fetch_add(1, SeqCst);
                        }
                        Err(SendError::Closed(_)) => return true,
                        Err(e) => panic!("{e}"),
                    }
                    if started.elapsed() > WAIT {
                        return false;
                    }
                    thread::sleep(MS);
                }
            })
        };
        wait_for("the sender under way", || sends.load(SeqCst) >= 5);
        match ending {
            "fin" => drop(c),
            "reset" => {
                socket2::SockRef::from(c.get_ref())
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(c);
            }
            "quit" => {
                c.get_ref().write_all(b"quit\n").unwrap();
                held.push(c);
            }
            // Neither reads nor sends.
            "deadline" => held.push(c),
            _ => {
                handle.close();
                held.push(c);
            }
        }
        assert!(sender.join().unwrap(), "{ending}: sends never refused");
        assert!(handle.is_closed());
    }
    let s = wait_stats(manager, "five closes", |s| s.closed.total() == 5);
    let c = &s.closed;
    assert_eq!(c.eof + c.reset + c.error, 2, "{c:?}");
    assert_eq!((c.handler, c.write_deadline), (2, 1), "{c:?}");
    drop(held);
    server.stop().unwrap();
}

#[test]
fn a_stop_closes_every_handle() {
    let (server, registry) = registry_server(Config::default());
    let clients: Vec<_> = (0..10).map(|_| registered(addr(&server))).collect();
    let handles = registry.wait_for(10);
    server.stop().unwrap();
    for h in &handles {
        assert_eq!(h.send(vec![1]), Err(SendError::Closed(vec![1])));
        assert!(h.is_closed());
    }
    let ids: HashMap<u64, ()> = handles.iter().map(|h| (h.id(), ())).collect();
    assert_eq!(ids.len(), 10, "ids differ");
    drop(clients);
}

#[cfg(feature = "tls")]
#[test]
fn a_send_to_a_tls_connection_is_encrypted() {
    use util::tls::{TestCert, tls_client};
    let cert = TestCert::new();
    let (server, registry) = registry_server(Config::default().with_tls(Some(cert.server())));
    let mut c = tls_client(addr(&server), &cert.client());
    c.write_all(b"hi\n").unwrap();
    let mut ok = [0; 3];
    c.read_exact(&mut ok).unwrap();
    let handle = registry.wait_for(1).remove(0);
    // Below the bound (1 MiB), with the line after it.
    let big = vec![b'z'; 512 << 10];
    handle.send(&big[..]).unwrap();
    handle.send(b"\nend\n").unwrap();
    let mut got = vec![0; big.len() + 5];
    c.read_exact(&mut got).unwrap();
    assert!(got[..big.len()] == big[..]);
    assert_eq!(&got[big.len()..], b"\nend\n");
    // Counted once the worker's turn ends, which may be after the client
    // has read them.
    let want = 3 + big.len() as u64 + 5;
    wait_stats(server.manager(), "the bytes counted", |s| {
        s.bytes_out >= want
    });
    assert_eq!(server.manager().stats().bytes_out, want);
    server.stop().unwrap();
}

#[test]
fn a_handle_does_not_keep_a_connection_open() {
    let (server, registry) = registry_server(Config::default().with_read_deadline(Some(100 * MS)));
    let mut c = registered(addr(&server));
    let handle = registry.wait_for(1).remove(0);
    // Silent: the read deadline closes it though a handle is held.
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let s = wait_stats(server.manager(), "the deadline", |s| {
        s.closed.read_deadline == 1
    });
    assert_eq!(s.parked, 0);
    assert!(handle.is_closed());
    assert!(matches!(handle.send("x"), Err(e) if e.is_closed()));
    server.stop().unwrap();
}
