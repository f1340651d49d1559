//! A small echo load for the tests that need traffic while something
//! happens to the server (a restart, a killed backend): clients on threads
//! of their own, each opening a new connection per request, sending 64
//! bytes and reading them back, until the time is up; every failure
//! counted, none fatal. (The benchmarks' load tool, with its histograms and
//! usage figures, is `bench/examples/load.rs`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the clients did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Requests answered with their own bytes.
    pub requests: u64,
    /// Requests that failed: no connection, an error, a short or wrong
    /// reply, or no reply within the timeout.
    pub errors: u64,
    /// The first few failures, for the assertion messages.
    pub first_errors: Vec<String>,
}

impl Report {
    fn failed(&mut self, what: String) {
        self.errors += 1;
        self.keep(std::iter::once(what));
    }

    fn add(&mut self, other: Report) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.keep(other.first_errors);
    }

    /// Keeps the first 5 failures' descriptions.
    fn keep(&mut self, what: impl IntoIterator<Item = String>) {
        let room = 5usize.saturating_sub(self.first_errors.len());
        self.first_errors.extend(what.into_iter().take(room));
    }
}

/// Runs `clients` echo clients against `addr` for `duration`, a new
/// connection per request, each request bounded by `timeout`; the sum of
/// their reports once all have ended (at most `duration` + `timeout`).
pub fn echo_in_background(
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
    timeout: Duration,
) -> JoinHandle<Report> {
    std::thread::spawn(move || {
        let until = Instant::now() + duration;
        let threads: Vec<_> = (0..clients)
            .map(|id| std::thread::spawn(move || client(addr, id, until, timeout)))
            .collect();
        let mut report = Report::default();
        for thread in threads {
            report.add(thread.join().expect("a load client panicked"));
        }
        report
    })
}

fn client(addr: SocketAddr, id: usize, until: Instant, timeout: Duration) -> Report {
    let mut report = Report::default();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let request = format!("{id:>8} {n:>16} {:>37}\n", "");
        assert_eq!(request.len(), 64);
        match one_request(addr, request.as_bytes(), timeout) {
            Ok(()) => report.requests += 1,
            Err(what) => report.failed(what),
        }
    }
    report
}

fn one_request(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = vec![0; request.len()];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    if reply != request {
        return Err(format!(
            "another reply: {:?}",
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(())
}
