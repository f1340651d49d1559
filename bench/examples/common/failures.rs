//! Failures by kind, for the load tools (`load`, `pubsub_load`): why one
//! exchange failed, the counts of each kind (none of them stops a run), and
//! the counts as they go into a report's JSON line (`errors`, which the
//! `compare` example reads).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Why one exchange failed.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    Connect,
    Timeout,
    Io,
    Closed,
    /// A reply other than the one expected (such as a busy reply, or an
    /// error reply).
    Mismatch,
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Failure::Closed,
            std::io::ErrorKind::InvalidData => Failure::Mismatch,
            _ => Failure::Io,
        }
    }
}

/// Failures by kind; none of them stops the run.
#[derive(Default)]
pub struct ErrorCounts {
    connect: AtomicU64,
    timeout: AtomicU64,
    io: AtomicU64,
    closed: AtomicU64,
    mismatch: AtomicU64,
}

/// The counts in a report.
#[derive(Serialize)]
pub struct Errors {
    pub connect: u64,
    pub timeout: u64,
    pub io: u64,
    pub closed: u64,
    pub mismatch: u64,
    pub total: u64,
}

impl ErrorCounts {
    pub fn count(&self, failure: Failure) {
        let counter = match failure {
            Failure::Connect => &self.connect,
            Failure::Timeout => &self.timeout,
            Failure::Io => &self.io,
            Failure::Closed => &self.closed,
            Failure::Mismatch => &self.mismatch,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn report(&self) -> Errors {
        let e = Errors {
            connect: self.connect.load(Relaxed),
            timeout: self.timeout.load(Relaxed),
            io: self.io.load(Relaxed),
            closed: self.closed.load(Relaxed),
            mismatch: self.mismatch.load(Relaxed),
            total: 0,
        };
        let total = e.connect + e.timeout + e.io + e.closed + e.mismatch;
        Errors { total, ..e }
    }
}
