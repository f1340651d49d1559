//! Frames larger than the read buffer, gathered by the pool: a 4 MiB frame
//! on a 5 KiB buffer reaches the handler whole, in one call, in every mode;
//! the minimum rate judges a large frame as it arrives; unfinished large
//! frames count toward `max_buffered_bytes`.

mod util;

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

use pool_manager::{Config, Conn, MinReadRate};
use util::*;

const MS: Duration = Duration::from_millis(1);

/// Frames of a 4-byte big-endian length and a body: answers each with its
/// length and the sum of its bytes; counts the calls.
fn framed(
    calls: &Arc<AtomicUsize>,
) -> impl Fn(&mut Conn<'_>, &[u8]) -> io::Result<()> + Send + Sync + 'static {
    let calls = Arc::clone(calls);
    move |conn: &mut Conn<'_>, data: &[u8]| {
        calls.fetch_add(1, SeqCst);
        let mut rest = data;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            if rest.len() < 4 + len {
                conn.keep(rest.len());
                conn.need(4 + len - rest.len());
                return Ok(());
            }
            let sum: u64 = rest[4..4 + len].iter().map(|&b| u64::from(b)).sum();
            writeln!(conn, "{len} {sum}")?;
            rest = &rest[4 + len..];
        }
        conn.keep(rest.len());
        Ok(())
    }
}

fn frame(len: usize) -> Vec<u8> {
    let mut f = (len as u32).to_be_bytes().to_vec();
    f.extend((0..len).map(|i| (i % 251) as u8));
    f
}

fn expected(len: usize) -> String {
    let sum: u64 = (0..len).map(|i| (i % 251) as u64).sum();
    format!("{len} {sum}\n")
}

fn read_line(c: &mut std::net::TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0];
    while byte[0] != b'\n' {
        c.read_exact(&mut byte).expect("a line");
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn a_4_mib_frame_on_a_5_kib_buffer_is_served_whole_in_one_call() {
    for park_after in [Some(Duration::ZERO), Some(20 * MS), None] {
        let calls = Arc::new(AtomicUsize::new(0));
        let server = handler_server(
            Config::default()
                .with_park_after(park_after)
                .with_buffer_size(5120),
            framed(&calls),
        );
        let mut c = client(server.local_addrs()[0]);
        // A small frame, then 4 MiB sent in pieces, then a small one.
        c.write_all(&frame(10)).unwrap();
        assert_eq!(read_line(&mut c), expected(10), "{park_after:?}");
        let before = calls.load(SeqCst);
        let big = frame(4 << 20);
        for piece in big.chunks(300_000) {
            c.write_all(piece).unwrap();
            thread::sleep(MS);
        }
        assert_eq!(read_line(&mut c), expected(4 << 20), "{park_after:?}");
        // The pool called the handler again only once the frame was whole:
        // once for its first bytes (which told its length), once for it.
        let calls_for_big = calls.load(SeqCst) - before;
        assert!(calls_for_big <= 2, "{park_after:?}: {calls_for_big} calls");
        c.write_all(&frame(3)).unwrap();
        assert_eq!(read_line(&mut c), expected(3));
        let s = server.manager().stats();
        assert_eq!(s.closed.total(), 0, "{:?}", s.closed);
        assert_eq!(s.buffered_bytes, 0, "the frame's buffer is given back");
        server.stop().unwrap();
    }
}

#[test]
fn a_frame_past_max_frame_bytes_is_an_overflow() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = handler_server(
        Config::default().with_max_frame_bytes(1 << 20),
        framed(&calls),
    );
    let mut c = client(server.local_addrs()[0]);
    // Announces 2 MiB: gathered until it passes 1 MiB.
    let big = frame(2 << 20);
    let _ = c.write_all(&big);
    assert!(read_to_close(&mut c).is_ok());
    let s = wait_stats(server.manager(), "the close", |s| s.closed.total() == 1);
    assert_eq!(s.closed.overflow, 1, "{:?}", s.closed);
    wait_stats(server.manager(), "the frame given back", |s| {
        s.buffered_bytes == 0
    });
    server.stop().unwrap();
}

#[test]
fn the_minimum_rate_judges_a_large_frame_as_it_arrives() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = handler_server(
        Config::default()
            .with_buffer_size(1024)
            .with_min_read_rate(Some(MinReadRate::new(20_000, 200 * MS))),
        framed(&calls),
    );
    let manager = server.manager();
    // A fast client's 1 MiB frame: served.
    let mut fast = client(server.local_addrs()[0]);
    fast.write_all(&frame(1 << 20)).unwrap();
    assert_eq!(read_line(&mut fast), expected(1 << 20));
    // A client that announces 64 KiB and trickles it at ~1 KB/s: closed as
    // slow, though the handler was never called again.
    let mut slow = client(server.local_addrs()[0]);
    let big = frame(64 << 10);
    slow.write_all(&big[..2048]).unwrap();
    for piece in big[2048..].chunks(10).take(300) {
        if manager.stats().closed.slow_read == 1 || slow.write_all(piece).is_err() {
            break;
        }
        thread::sleep(10 * MS);
    }
    let s = wait_stats(manager, "the slow close", |s| s.closed.slow_read == 1);
    assert_eq!(s.closed.total(), 1, "{:?}", s.closed);
    server.stop().unwrap();
}

#[test]
fn unfinished_large_frames_count_toward_max_buffered_bytes() {
    let bound = 4 << 20;
    let calls = Arc::new(AtomicUsize::new(0));
    let server = handler_server(
        Config::default()
            .with_max_buffered_bytes(Some(bound))
            .with_read_deadline(Some(Duration::from_secs(30))),
        framed(&calls),
    );
    let manager = server.manager();
    // 100 clients each send half of a 256 KiB frame: 12.5 MiB in all.
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let mut c = client(server.local_addrs()[0]);
            let f = frame(256 << 10);
            c.write_all(&f[..f.len() / 2]).unwrap();
            c
        })
        .collect();
    let s = wait_stats(manager, "the frames read", |s| {
        s.bytes_in == 100 * (4 + (256 << 10)) as u64 / 2 && s.busy == 0
    });
    assert!(s.closed.evicted > 0, "{:?}", s.closed);
    assert!(s.buffered_bytes <= bound, "{} buffered", s.buffered_bytes);
    assert_eq!(s.closed.total(), s.closed.evicted);
    drop(clients);
    server.stop().unwrap();
}
