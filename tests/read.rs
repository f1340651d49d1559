//! The per-read loop: the handler's view of bytes, kept frames, closing, and
//! the read and write deadlines.

mod util;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pool_manager::{CloseReason, Config, Conn, Handler, Manager, with_state};
use util::*;

/// A line protocol: each complete line is answered with its number on this
/// connection and its text; a partial line is kept for the next read.
fn line_manager(config: Config) -> Arc<Manager> {
    init_log();
    let handler = with_state(
        |_: &mut Conn<'_>| 0u32,
        |conn: &mut Conn<'_, u32>, data: &[u8]| {
            let mut rest = data;
            while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                *conn.state() += 1;
                let n = *conn.state();
                let line = String::from_utf8_lossy(&rest[..end]).into_owned();
                if line == "QUIT" {
                    conn.close();
                    return Ok(());
                }
                writeln!(conn, "{n}:{line}")?;
                rest = &rest[end + 1..];
            }
            conn.keep(rest.len());
            Ok(())
        },
    );
    let manager = Manager::with_handler(config, handler).unwrap();
    manager.start().unwrap();
    Arc::new(manager)
}

fn read_line(client: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0; 1];
    loop {
        client.read_exact(&mut b).expect("read a line");
        if b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

#[test]
fn lines_split_across_reads_keep_their_bytes_and_state() {
    let manager = line_manager(Config::default());
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    // Each piece is a separate read on the server (we wait for the answer
    // or give the server time to read it before the next piece).
    c.write_all(b"hel").unwrap();
    wait_stats(&manager, "the first piece to be read", |s| s.bytes_in == 3);
    c.write_all(b"lo\nwor").unwrap();
    assert_eq!(read_line(&mut c), "1:hello");
    c.write_all(b"ld\nthird\nfou").unwrap();
    assert_eq!(read_line(&mut c), "2:world");
    assert_eq!(read_line(&mut c), "3:third");
    c.write_all(b"rth\nQUIT\n").unwrap();
    assert_eq!(read_line(&mut c), "4:fourth");
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    let s = wait_stats(&manager, "the close to be counted", |s| {
        s.closed.total() == 1
    });
    assert_eq!(s.closed.handler, 1);
}

#[test]
fn a_frame_larger_than_the_buffer_is_gathered_up_to_max_frame_bytes() {
    let manager = line_manager(
        Config::default()
            .with_buffer_size(16)
            .with_max_frame_bytes(32),
    );
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    c.write_all(b"short\n").unwrap();
    assert_eq!(read_line(&mut c), "1:short");
    // Twice the buffer, within the frame bound: gathered and served whole.
    let line = "y".repeat(29);
    c.write_all(format!("{line}\n").as_bytes()).unwrap();
    assert_eq!(read_line(&mut c), format!("2:{line}"));
    // Past the frame bound: closed.
    c.write_all(&[b'x'; 40]).unwrap();
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    let s = wait_stats(&manager, "the overflow close", |s| s.closed.total() == 1);
    assert_eq!(s.closed.overflow, 1);
}

#[test]
fn each_read_is_at_most_buffer_size_and_nothing_is_lost() {
    init_log();
    let largest = Arc::new(AtomicUsize::new(0));
    let l = Arc::clone(&largest);
    let manager = Manager::new(
        Config::default().with_buffer_size(64),
        move |conn: &mut Conn<'_>, data: &[u8]| {
            l.fetch_max(data.len(), Ordering::SeqCst);
            conn.write_all(data)
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    // Exactly a multiple of the buffer (the Go ancestor lost bytes here).
    let msg: Vec<u8> = (0..640u32).map(|i| i as u8).collect();
    roundtrip(&mut c, &msg, &msg);
    assert!(largest.load(Ordering::SeqCst) <= 64);
    // Counted after each write returns: the client may see the bytes first.
    wait_stats(&manager, "640 bytes each way", |s| {
        s.bytes_in == 640 && s.bytes_out == 640
    });
}

#[test]
fn read_deadline_closes_a_silent_client_and_resets_at_every_read() {
    let manager =
        echo_manager(Config::default().with_read_deadline(Some(Duration::from_millis(300))));
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    // Activity every 100 ms keeps it open well past one deadline.
    for i in 0..6u8 {
        roundtrip(&mut c, &[i], &[i]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let silent_from = Instant::now();
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    let closed_after = silent_from.elapsed();
    assert!(
        closed_after >= Duration::from_millis(190) && closed_after < Duration::from_secs(2),
        "closed {closed_after:?} after the last read"
    );
    let s = wait_stats(&manager, "the deadline close", |s| s.closed.total() == 1);
    assert_eq!(s.closed.read_deadline, 1);
}

#[test]
fn no_read_deadline_waits_as_long_as_the_client() {
    let manager = echo_manager(Config::default().with_read_deadline(None));
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"a", b"a");
    std::thread::sleep(Duration::from_millis(400));
    roundtrip(&mut c, b"b", b"b");
    assert_eq!(manager.stats().closed.total(), 0);
}

#[test]
fn write_deadline_frees_the_worker_from_a_client_that_never_reads() {
    init_log();
    // Each read is answered with 64 MiB, far more than loopback socket
    // buffers hold; the client never reads.
    let manager = Manager::new(
        Config::default()
            .with_write_deadline(Some(Duration::from_millis(300)))
            .with_read_deadline(None),
        |conn: &mut Conn<'_>, _data: &[u8]| {
            let chunk = [7; 64 << 10];
            for _ in 0..1024 {
                conn.write_all(&chunk)?;
            }
            Ok(())
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let c = lo.put(&manager);
    c.set_nodelay(true).unwrap();
    let started = Instant::now();
    (&c).write_all(b"go").unwrap();
    let s = wait_stats(&manager, "the write deadline close", |s| {
        s.closed.total() == 1
    });
    let took = started.elapsed();
    assert_eq!(s.closed.write_deadline, 1);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // (A second poller may have started while the first was busy.)
    wait_stats(&manager, "the workers to be idle", |s| {
        s.idle >= 1 && s.busy == 0
    });
}

/// `write_deadline` is "no progress": a client that reads a little now and
/// then is not cut off, however long its reply takes (bounded by
/// `max_connection_lifetime` and `max_buffered_bytes` instead); once it
/// stops reading, the deadline closes it.
#[test]
fn a_trickling_reader_is_cut_off_only_once_it_stops() {
    init_log();
    let deadline = Duration::from_millis(300);
    let manager = Manager::new(
        Config::default()
            .with_write_deadline(Some(deadline))
            .with_read_deadline(None),
        |conn: &mut Conn<'_>, _data: &[u8]| conn.write_all(&vec![7; 64 << 20]),
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    c.write_all(b"go").unwrap();
    // Read 16 KiB every 20 ms for five deadlines. (The window the client
    // announces grows by a segment, 64 KiB on loopback, at a time: the
    // server's bytes move every 80 ms.)
    let started = Instant::now();
    let mut buf = [0; 16 << 10];
    while started.elapsed() < 5 * deadline {
        assert!(c.read(&mut buf).unwrap() > 0);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(manager.stats().closed.total(), 0, "cut off while reading");
    let stopped = Instant::now();
    let s = wait_stats(&manager, "the write deadline close", |s| {
        s.closed.total() == 1
    });
    assert_eq!(s.closed.write_deadline, 1);
    assert!(stopped.elapsed() >= deadline / 2, "{:?}", stopped.elapsed());
}

#[test]
fn handler_error_closes_with_error_and_closed_hook_sees_state() {
    init_log();
    struct Failing(Arc<Mutex<Vec<(u32, CloseReason)>>>);
    impl Handler for Failing {
        type State = u32;
        fn open(&self, _: &mut Conn<'_>) -> u32 {
            0
        }
        fn data(&self, conn: &mut Conn<'_, u32>, data: &[u8]) -> io::Result<()> {
            *conn.state() += data.len() as u32;
            if data.contains(&b'!') {
                return Err(io::Error::other("bad input"));
            }
            conn.write_all(data)
        }
        fn closed(&self, state: u32, reason: CloseReason) {
            self.0.lock().push((state, reason));
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let manager = Manager::with_handler(Config::default(), Failing(Arc::clone(&seen))).unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"abc", b"abc");
    c.write_all(b"!").unwrap();
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    wait_for("the closed hook", || !seen.lock().is_empty());
    assert_eq!(seen.lock()[0], (4, CloseReason::Error));
    assert_eq!(manager.stats().closed.error, 1);
}

#[test]
fn client_eof_is_counted() {
    let manager = echo_manager(Config::default());
    let lo = Loopback::new();
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"x", b"x");
    drop(c);
    let s = wait_stats(&manager, "the eof close", |s| s.closed.total() == 1);
    assert_eq!(s.closed.eof, 1);
    assert_eq!(s.connections, 1);
}
