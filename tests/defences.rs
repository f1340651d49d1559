//! Slow-client defences, in dedicated and in parked mode: first-byte
//! deadline, minimum read rate, maximum lifetime; each close counted by
//! its reason.

mod util;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pool_manager::{Config, MinReadRate, Stats};
use util::*;

const MS: Duration = Duration::from_millis(1);

/// Dedicated mode, then parked mode.
const MODES: [Option<Duration>; 2] = [None, Some(Duration::from_millis(10))];

/// A slowloris: sends `byte` every `every` (paced by its own read timeout)
/// and reads whatever comes back, until the server closes the connection.
/// Returns how long that took; fails the test past `WAIT`.
fn trickle(client: &mut TcpStream, byte: u8, every: Duration) -> Duration {
    let started = Instant::now();
    client.set_read_timeout(Some(every)).unwrap();
    let mut buf = [0; 64];
    loop {
        assert!(started.elapsed() < WAIT, "the slow client was never closed");
        match client.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            // A read timeout: `WouldBlock` on Unix, `TimedOut` on Windows.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if client.write_all(&[byte]).is_err() {
                    return started.elapsed();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("client read: {e}"),
        }
    }
}

fn closes_other_than(stats: &Stats, reason: u64) -> u64 {
    stats.closed.total() - reason
}

#[test]
fn a_slowloris_is_closed_by_the_minimum_rate() {
    for park_after in MODES {
        // One byte every 150 ms, inside the 300 ms read deadline; a frame
        // must bring 20 bytes per 400 ms window.
        let manager = line_manager(
            Config::default()
                .with_park_after(park_after)
                .with_read_deadline(Some(300 * MS))
                .with_min_read_rate(Some(MinReadRate::new(50, 400 * MS))),
        );
        let lo = Loopback::new();
        let mut slow = lo.put(&manager);
        let took = trickle(&mut slow, b'x', 150 * MS);
        // The frame begins with the first byte (~150 ms); its first window
        // ends 400 ms later.
        assert!(took >= 500 * MS, "{park_after:?}: closed after {took:?}");
        assert!(took < 2000 * MS, "{park_after:?}: closed after {took:?}");
        let stats = wait_stats(&manager, "the slow read close", |s| s.closed.slow_read == 1);
        assert_eq!(closes_other_than(&stats, 1), 0, "{stats:?}");
    }
}

#[test]
fn the_minimum_rate_spares_clients_silent_between_frames() {
    for park_after in MODES {
        let manager = line_manager(
            Config::default()
                .with_park_after(park_after)
                .with_read_deadline(Some(WAIT))
                .with_min_read_rate(Some(MinReadRate::new(1000, 100 * MS))),
        );
        let lo = Loopback::new();
        let mut client = lo.put(&manager);
        for i in 1..=3 {
            roundtrip(&mut client, b"ok\n", format!("{i}:ok\n").as_bytes());
            // Silent for three windows between complete frames: nothing must
            // happen.
            std::thread::sleep(300 * MS);
        }
        roundtrip(&mut client, b"ok\n", b"4:ok\n");
        assert_eq!(manager.stats().closed.total(), 0);
    }
}

#[test]
fn a_slowloris_is_closed_by_the_lifetime() {
    for park_after in MODES {
        // An echo handler keeps nothing, so no rate applies: the lifetime
        // ends it.
        let manager = echo_manager(
            Config::default()
                .with_park_after(park_after)
                .with_read_deadline(Some(300 * MS))
                .with_max_connection_lifetime(Some(600 * MS)),
        );
        let lo = Loopback::new();
        let mut slow = lo.put(&manager);
        let took = trickle(&mut slow, b'x', 150 * MS);
        assert!(took >= 550 * MS, "{park_after:?}: closed after {took:?}");
        assert!(took < 2000 * MS, "{park_after:?}: closed after {took:?}");
        let stats = wait_stats(&manager, "the lifetime close", |s| s.closed.lifetime == 1);
        assert_eq!(closes_other_than(&stats, 1), 0, "{stats:?}");
    }
}

#[test]
fn the_lifetime_ends_a_busy_connection_between_reads() {
    for park_after in MODES {
        let manager = echo_manager(
            Config::default()
                .with_park_after(park_after)
                .with_max_connection_lifetime(Some(300 * MS)),
        );
        let lo = Loopback::new();
        let mut client = lo.put(&manager);
        let started = Instant::now();
        // A client that never stops talking is still closed.
        let mut closed = false;
        while started.elapsed() < WAIT {
            if client.write_all(b"ping").is_err() {
                closed = true;
                break;
            }
            let mut buf = [0; 4];
            if client.read_exact(&mut buf).is_err() {
                closed = true;
                break;
            }
        }
        assert!(closed, "{park_after:?}: never closed");
        assert!(started.elapsed() < 2000 * MS);
        wait_stats(&manager, "the lifetime close", |s| s.closed.lifetime == 1);
    }
}

#[test]
fn a_silent_client_is_closed_by_the_first_byte_deadline() {
    for park_after in MODES {
        let manager = echo_manager(
            Config::default()
                .with_park_after(park_after)
                .with_read_deadline(Some(WAIT))
                .with_first_byte_deadline(Some(200 * MS)),
        );
        let lo = Loopback::new();
        let opened = Instant::now();
        let mut silent = lo.put(&manager);
        assert_eq!(read_to_close(&mut silent).unwrap(), b"");
        let took = opened.elapsed();
        assert!(took >= 200 * MS, "{park_after:?}: closed after {took:?}");
        assert!(took < 1000 * MS, "{park_after:?}: closed after {took:?}");
        wait_stats(&manager, "the first byte close", |s| {
            s.closed.first_byte_deadline == 1
        });

        // One byte in time lifts it for good.
        let mut quick = lo.put(&manager);
        roundtrip(&mut quick, b"q", b"q");
        std::thread::sleep(300 * MS); // nothing must happen
        roundtrip(&mut quick, b"r", b"r");
        assert_eq!(manager.stats().closed.total(), 1);
    }
}
