//! Fault injection over real sockets (issue 14, part 2): clients that
//! reset, half-close or never read; a silent peer behind a firewall rule;
//! thread creation failing; descriptors running out; a storm of
//! configuration changes under load. Each fault must be counted under its
//! own reason, and nothing may hang.

mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pool_manager::{Config, Conn, Server};
use socket2::{Domain, SockRef, Socket, Type};
use util::*;

const MS: Duration = Duration::from_millis(1);

/// Dedicated mode, then polled mode.
const MODES: [Option<Duration>; 2] = [None, Some(Duration::ZERO)];

fn addr(server: &Server) -> SocketAddr {
    server.local_addrs()[0]
}

/// A handler that answers `big` with `BIG` bytes of `b'z'` (in 64 KiB
/// writes) and echoes anything else.
const BIG: usize = 32 << 20;

fn big_or_echo(conn: &mut Conn<'_>, data: &[u8]) -> io::Result<()> {
    if data.starts_with(b"big") {
        let chunk = [b'z'; 64 << 10];
        for _ in 0..BIG / chunk.len() {
            conn.write_all(&chunk)?;
        }
        return Ok(());
    }
    conn.write_all(data)
}

/// A client whose receive buffer is `rcvbuf` bytes (set before connecting,
/// so that the window it announces is small), with timeouts.
fn small_window_client(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Closes `stream` with a reset (`SO_LINGER` 0) instead of a FIN.
fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

#[test]
fn a_client_that_resets_in_the_middle_of_a_write_is_counted_as_a_reset() {
    for park_after in MODES {
        // One worker: the second client is served only if the reset freed it.
        let server = handler_server(
            Config {
                park_after,
                max_workers: 1,
                write_deadline: Some(Duration::from_secs(30)),
                read_deadline: Some(Duration::from_secs(30)),
                ..Config::default()
            },
            big_or_echo,
        );
        let manager = server.manager();
        let mut c = small_window_client(addr(&server), 4096);
        c.write_all(b"big").unwrap();
        // The reply is coming: the handler is inside its writes.
        let mut head = [0; 1024];
        c.read_exact(&mut head).unwrap();
        assert!(head.iter().all(|&b| b == b'z'));
        let started = Instant::now();
        reset(c);
        let s = wait_stats(manager, "the reset to be counted", |s| {
            s.closed.total() == 1
        });
        assert_eq!(s.closed.reset, 1, "{park_after:?}: {:?}", s.closed);
        assert!(started.elapsed() < Duration::from_secs(2));
        // The only worker serves again.
        let mut c2 = client(addr(&server));
        roundtrip(&mut c2, b"after", b"after");
        drop(c2);
        let s = wait_stats(manager, "the second close", |s| s.closed.total() == 2);
        assert_eq!((s.closed.reset, s.closed.eof), (1, 1), "{:?}", s.closed);
        assert_eq!(s.closed.panic + s.closed.error, 0);
        assert_eq!(s.spawn_failures, 0);
        server.stop().unwrap();
    }
}

#[test]
fn a_half_closed_client_still_reads_its_whole_reply() {
    for park_after in MODES {
        let server = handler_server(
            Config {
                park_after,
                write_deadline: Some(Duration::from_secs(10)),
                ..Config::default()
            },
            big_or_echo,
        );
        let manager = server.manager();
        let mut c = client(addr(&server));
        c.write_all(b"big").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let reply = read_to_close(&mut c).expect("the reply, then EOF");
        assert_eq!(reply.len(), BIG, "{park_after:?}");
        assert!(reply.iter().all(|&b| b == b'z'));
        let s = wait_stats(manager, "the close to be counted", |s| {
            s.closed.total() == 1
        });
        assert_eq!(s.closed.eof, 1, "{park_after:?}: {:?}", s.closed);
        assert_eq!(s.bytes_out, BIG as u64);
        server.stop().unwrap();
    }
}

#[test]
fn a_client_that_never_reads_is_closed_by_the_write_deadline_and_frees_its_worker() {
    for park_after in MODES {
        let deadline = 300 * MS;
        let server = handler_server(
            Config {
                park_after,
                max_workers: 1,
                write_deadline: Some(deadline),
                read_deadline: Some(Duration::from_secs(30)),
                // The second client may wait in the queue meanwhile.
                queue_capacity: 4,
                queue_timeout: Duration::from_secs(30),
                ..Config::default()
            },
            big_or_echo,
        );
        let manager = server.manager();
        let stuck = small_window_client(addr(&server), 4096);
        let started = Instant::now();
        (&stuck).write_all(b"big").unwrap();
        // Another client waits for the only worker.
        let mut other = client(addr(&server));
        other.write_all(b"next").unwrap();
        let mut buf = [0; 4];
        other
            .read_exact(&mut buf)
            .expect("served once the worker is free");
        let took = started.elapsed();
        assert_eq!(&buf, b"next");
        let s = manager.stats();
        assert_eq!(s.closed.write_deadline, 1, "{park_after:?}: {:?}", s.closed);
        assert!(
            took >= deadline && took < deadline + Duration::from_secs(2),
            "{park_after:?}: served after {took:?}"
        );
        // The stuck client sees its connection end.
        let mut stuck = stuck;
        let got = read_to_close(&mut stuck).expect("the end of the connection");
        assert!(got.len() < BIG);
        drop(other);
        let s = wait_stats(manager, "both closes", |s| s.closed.total() == 2);
        assert_eq!((s.closed.write_deadline, s.closed.eof), (1, 1));
        assert_eq!(s.workers, 1);
        server.stop().unwrap();
    }
}
