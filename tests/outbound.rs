//! Writes that never hold a worker: replies larger than the socket buffers
//! wait in the connection's outbound buffer while its client reads them,
//! the write deadline means "no progress", a client that pipelines without
//! reading is paused, and a close waits for the reply.

mod util;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use pool_manager::{Config, Conn};
use util::*;

const MS: Duration = Duration::from_millis(1);

/// Answers `get N\n` with N bytes (`N` in KiB) of a pattern that tells
/// their order, `ping\n` with `pong\n`, `bye\n` with a large goodbye and
/// a close.
fn replies(conn: &mut Conn<'_>, data: &[u8]) -> io::Result<()> {
    let mut rest = data;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = std::str::from_utf8(&rest[..end]).unwrap_or("");
        rest = &rest[end + 1..];
        if let Some(n) = line.strip_prefix("get ") {
            // Anything after the size is padding.
            let kib: usize = n.split(' ').next().unwrap_or("").parse().unwrap_or(0);
            conn.write_all(&pattern(kib << 10))?;
        } else if line == "bye" {
            conn.write_all(&pattern(1 << 20))?;
            conn.close();
            return Ok(());
        } else {
            conn.write_all(b"pong\n")?;
        }
    }
    conn.keep(rest.len());
    Ok(())
}

/// `n` bytes whose every 4-byte word is its index: a byte out of place
/// shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n.div_ceil(4) as u32)
        .flat_map(u32::to_le_bytes)
        .take(n)
        .collect()
}

/// A client whose receive buffer is small (set before connecting, so that
/// the window it announces is small): replies pile up on the server's side.
fn slow_client(addr: SocketAddr) -> TcpStream {
    small_window_client(addr, 4096)
}

fn addr(server: &pool_manager::Server) -> SocketAddr {
    server.local_addrs()[0]
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", target_os = "android")),
    ignore = "needs the sysmon to tell a long computing turn from a blocked one (/proc, Linux)"
)]
fn slow_readers_hold_bytes_not_workers() {
    let config = Config::default()
        .with_max_workers(4)
        .with_pollers(2)
        // Each client closes once it has its reply. With a read deadline,
        // one whose last megabytes sat in the kernel's buffers (the pool's
        // own are empty by then, so the deadline runs again) longer than
        // the deadline, on a starved machine, was closed by it instead:
        // the bytes still arrive, but the close is not `eof`.
        .with_read_deadline(None);
    let server = handler_server(config, replies);
    let manager = server.manager();
    // 16 clients ask for 2 MiB each and read nothing yet.
    const SIZE_KIB: usize = 2048;
    let slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut c = slow_client(addr(&server));
            c.write_all(format!("get {SIZE_KIB}\n").as_bytes()).unwrap();
            c
        })
        .collect();
    wait_stats(manager, "every reply begun", |s| {
        s.bytes_out >= 16 * 4096 && s.busy == 0
    });
    // Others are served at once meanwhile, on the same 4 workers.
    for _ in 0..20 {
        let mut c = client(addr(&server));
        let started = Instant::now();
        roundtrip(&mut c, b"ping\n", b"pong\n");
        assert!(started.elapsed() < 500 * MS, "{:?}", started.elapsed());
    }
    // Now every slow client reads its whole reply, in order.
    let readers: Vec<_> = slow
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut got = vec![0; SIZE_KIB << 10];
                c.read_exact(&mut got).expect("the whole reply");
                got == pattern(SIZE_KIB << 10)
            })
        })
        .collect();
    for r in readers {
        match r.join() {
            Ok(in_order) => assert!(in_order, "a reply out of order"),
            Err(_) => panic!("a reply cut short: {:?}", manager.stats()),
        }
    }
    let s = wait_stats(manager, "every close", |s| s.closed.total() == 36);
    assert!(s.workers <= 4, "{s:?}");
    assert_eq!(s.closed.eof, 36, "{:?}", s.closed);
    assert_eq!(s.bytes_out, 16 * (SIZE_KIB << 10) as u64 + 20 * 5);
    server.stop().unwrap();
}

#[test]
fn the_write_deadline_cuts_a_stalled_reader_not_a_slow_one() {
    let deadline = 300 * MS;
    let server = handler_server(
        Config::default()
            .with_write_deadline(Some(deadline))
            .with_read_deadline(Some(200 * MS))
            // Small kernel buffers: the replies wait in the pool.
            .with_send_buffer_size(Some(16 << 10)),
        replies,
    );
    let manager = server.manager();
    // One reads 32 KiB every 40 ms: 1.3 s for its 1 MiB, four write
    // deadlines and six read deadlines long.
    let mut steady = small_window_client(addr(&server), 64 << 10);
    steady.write_all(b"get 1024\n").unwrap();
    // The other never reads.
    let mut stalled = slow_client(addr(&server));
    stalled.write_all(b"get 1024\n").unwrap();
    let started = Instant::now();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0; 32 << 10];
        while got.len() < 1 << 20 {
            let n = steady.read(&mut buf).expect("a steady read");
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            thread::sleep(40 * MS);
        }
        got == pattern(1 << 20)
    });
    let s = wait_stats(manager, "the stalled reader's close", |s| {
        s.closed.write_deadline == 1
    });
    assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
    assert_eq!(s.closed.read_deadline, 0, "{:?}", s.closed);
    assert!(reader.join().unwrap(), "the steady reader's reply");
    assert!(started.elapsed() > 3 * deadline);
    let got = read_to_close(&mut stalled).expect("the end");
    assert!(got.len() < 1 << 20);
    server.stop().unwrap();
}

/// The kernel reports a full socket writable only once a third of its
/// buffer is free: with 4 MiB buffers and a client reading 2.5 MiB/s, half
/// a second after the last write, longer than the write deadline. The
/// deadline is judged after trying the socket, which takes the room there
/// is: the client is not cut off, parked or waited for by its worker.
#[test]
fn a_slow_reader_behind_a_large_socket_buffer_is_not_cut_off() {
    for dedicated in [false, true] {
        let server = handler_server(
            Config::default()
                .with_write_deadline(Some(300 * MS))
                // The kernel doubles it: 4 MiB.
                .with_send_buffer_size(Some(2 << 20))
                .with_park_after((!dedicated).then_some(Duration::ZERO)),
            replies,
        );
        let manager = server.manager();
        let mut client = small_window_client(addr(&server), 64 << 10);
        client.write_all(b"get 6144\n").unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0; 64 << 10];
        while got.len() < 6 << 20 {
            let n = client.read(&mut buf).expect("a steady read");
            assert!(
                n > 0,
                "dedicated {dedicated}: closed after {} bytes",
                got.len()
            );
            got.extend_from_slice(&buf[..n]);
            // Pacing, not waiting: the reader under test reads slowly.
            thread::sleep(25 * MS);
        }
        assert!(got == pattern(6 << 20), "dedicated {dedicated}: the reply");
        assert_eq!(manager.stats().closed.write_deadline, 0);
        server.stop().unwrap();
    }
}

#[test]
fn a_client_that_pipelines_without_reading_is_paused() {
    let bound: usize = 256 << 10;
    let server = handler_server(
        Config::default()
            .with_max_outbound_bytes(bound)
            .with_write_deadline(Some(Duration::from_secs(10))),
        replies,
    );
    let manager = server.manager();
    // Each 4 KiB request asks for 16 KiB, until the client cannot send.
    let mut c = client(addr(&server));
    c.set_write_timeout(Some(500 * MS)).unwrap();
    let request = format!("get 16 {}\n", "x".repeat(4089));
    let request = request.as_bytes();
    let reply: u64 = 16 << 10;
    let mut sent = 0;
    let all = 100_000;
    while sent < all {
        match c.write_all(request) {
            Ok(()) => sent += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
            Err(e) => panic!("{e}"),
        }
    }
    // The server stopped reading: the client's requests fill the socket
    // buffers, and the replies the server holds stay near its bound.
    assert!(sent < all, "the server read everything");
    let s = manager.stats();
    let answered = s.bytes_in / request.len() as u64;
    let held = answered * reply - s.bytes_out;
    assert!(held <= bound as u64 + 4 * reply, "{held} bytes held: {s:?}");
    assert!(answered < sent as u64 / 2, "{answered} of {sent}");
    // Reading, the client gets every reply it asked for, in order.
    c.set_read_timeout(Some(WAIT)).unwrap();
    let one = pattern(reply as usize);
    let mut buf = vec![0; reply as usize];
    for i in 0..sent {
        c.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reply {i}: {e}"));
        assert!(buf == one, "reply {i}");
    }
    server.stop().unwrap();
}

#[test]
fn a_close_waits_for_the_reply_before_it() {
    for park_after in [Some(Duration::ZERO), Some(20 * MS), None] {
        let server = handler_server(Config::default().with_park_after(park_after), replies);
        let manager = server.manager();
        let mut c = slow_client(addr(&server));
        c.write_all(b"bye\n").unwrap();
        // Read once the reply is on its way (far larger than the socket
        // buffers) and the close asked for.
        wait_stats(manager, "the reply begun", |s| s.bytes_out > 0);
        let got = read_to_close(&mut c).expect("the reply, then the end");
        assert!(
            got == pattern(1 << 20),
            "{park_after:?}: {} bytes",
            got.len()
        );
        let s = wait_stats(manager, "the close", |s| s.closed.total() == 1);
        assert_eq!(s.closed.handler, 1, "{park_after:?}: {:?}", s.closed);
        assert_eq!(s.bytes_out, 1 << 20);
        server.stop().unwrap();
    }
}

#[test]
fn dedicated_and_lingering_workers_write_large_replies_too() {
    for park_after in [Some(20 * MS), None] {
        let server = handler_server(Config::default().with_park_after(park_after), replies);
        let manager = server.manager();
        let mut c = slow_client(addr(&server));
        for round in 1..=3u64 {
            c.write_all(b"get 512\nping\n").unwrap();
            // Read once the reply waits for the client.
            wait_stats(manager, "the reply begun", |s| {
                s.bytes_out > (round - 1) * ((512 << 10) + 5)
            });
            let mut got = vec![0; (512 << 10) + 5];
            c.read_exact(&mut got).expect("the reply");
            assert!(got[..512 << 10] == pattern(512 << 10), "{park_after:?}");
            assert_eq!(&got[512 << 10..], b"pong\n");
        }
        drop(c);
        wait_stats(manager, "the close", |s| s.closed.eof == 1);
        server.stop().unwrap();
    }
}

/// A reply of 8 MiB to a reader that reads it a little at a time, through
/// TLS: the reply waits in the connection (encrypted as the socket takes
/// it), not on a worker.
#[cfg(feature = "tls")]
#[test]
fn a_tls_reply_larger_than_the_socket_buffers_reaches_a_slow_reader() {
    use util::tls::{TestCert, handshake, tls_client};
    let certs = TestCert::new();
    let server = handler_server(
        Config::default()
            .with_tls(Some(certs.server()))
            .with_max_workers(2)
            .with_pollers(1),
        replies,
    );
    let manager = server.manager();
    let mut slow = tls_client(addr(&server), &certs.client());
    handshake(&mut slow).unwrap();
    slow.write_all(b"get 8192\n").unwrap();
    wait_stats(manager, "the reply begun", |s| {
        s.bytes_out > 0 && s.busy == 0
    });
    // Another TLS client is served meanwhile.
    let mut other = tls_client(addr(&server), &certs.client());
    util::tls::tls_roundtrip(&mut other, b"ping\n", b"pong\n");
    let mut got = vec![0; 8 << 20];
    slow.read_exact(&mut got).expect("the whole reply");
    assert!(got == pattern(8 << 20));
    server.stop().unwrap();
}

#[test]
fn past_max_buffered_bytes_the_largest_is_evicted() {
    let bound = 8 << 20;
    let server = handler_server(
        Config::default()
            .with_max_buffered_bytes(Some(bound))
            .with_max_outbound_bytes(16 << 20)
            .with_write_deadline(Some(Duration::from_secs(30)))
            // Small kernel buffers: the replies wait in the pool.
            .with_send_buffer_size(Some(16 << 10)),
        replies,
    );
    let manager = server.manager();
    // One client asks for 6 MiB and reads nothing...
    let mut big = slow_client(addr(&server));
    big.write_all(b"get 6144\n").unwrap();
    wait_stats(manager, "the big reply waiting", |s| {
        s.buffered_bytes > 5 << 20
    });
    // ...then 200 others ask for 64 KiB each (12.5 MiB in all) and read
    // nothing either.
    let small: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut c = slow_client(addr(&server));
            c.write_all(b"get 64\n").unwrap();
            c
        })
        .collect();
    let s = wait_stats(manager, "every reply taken or evicted", |s| {
        s.bytes_in == 9 + 200 * 7 && s.busy == 0
    });
    assert!(s.closed.evicted >= 1, "{:?}", s.closed);
    assert!(s.buffered_bytes <= bound, "{} buffered", s.buffered_bytes);
    // The largest went first: the big one's connection ends short.
    let got = read_to_close(&mut big).expect("the end");
    assert!(got.len() < 6 << 20, "{} bytes", got.len());
    // Every other client gets its whole reply, or is closed, counted.
    let mut whole = 0;
    for mut c in small {
        let mut got = Vec::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) if got.len() == 64 << 10 => {
                    // Whole, and the connection stays open (the read timed
                    // out: `TimedOut` on Windows).
                    assert!(
                        matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ),
                        "{e}"
                    );
                    break;
                }
                Err(e) => panic!("{e} after {} bytes", got.len()),
            }
            if got.len() == 64 << 10 {
                break;
            }
        }
        if got.len() == 64 << 10 {
            assert!(got == pattern(64 << 10));
            whole += 1;
        }
    }
    let s = manager.stats();
    assert_eq!(whole + s.closed.evicted, 201, "{:?}", s.closed);
    server.stop().unwrap();
}

#[test]
fn a_handler_that_writes_on_and_on_is_evicted() {
    let bound = 4 << 20;
    let server = handler_server(
        Config::default()
            .with_max_buffered_bytes(Some(bound))
            .with_max_outbound_bytes(1 << 20)
            .with_write_deadline(None),
        |conn: &mut Conn<'_>, _: &[u8]| {
            // Writes forever to a client that never reads: only the bound
            // ends it.
            let chunk = [b'z'; 64 << 10];
            loop {
                conn.write_all(&chunk)?;
            }
        },
    );
    let manager = server.manager();
    let mut c = slow_client(addr(&server));
    c.write_all(b"go").unwrap();
    let s = wait_stats(manager, "the eviction", |s| s.closed.evicted == 1);
    assert_eq!(s.closed.total(), 1, "{:?}", s.closed);
    // Its bytes given back, and the handler's next write refused: its
    // worker is free again (not at once: the turn ends after the close).
    wait_stats(manager, "its bytes given back and its worker free", |s| {
        s.buffered_bytes == 0 && s.busy == 0
    });
    let _ = read_to_close(&mut c);
    server.stop().unwrap();
}
