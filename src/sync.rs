//! Every lock, condition variable, atomic, channel and thread of the
//! pool's core, from one place, so that the model checker can stand in for
//! them: `parking_lot`, `std` atomics, `crossbeam-channel` and `std::thread`
//! in every build, and under `cfg(all(test, loom))` stand-ins built on
//! `loom` (which instruments neither `parking_lot` nor `crossbeam-channel`),
//! with the same API (tokio's `src/loom/` does the same).
//!
//! Under the model checker, waits with a timeout never time out (loom's
//! own rule): the models make deadlines explicit events instead.
//!
//! Not routed through here: the `CURRENT_MANAGER` thread-local and the
//! kernel thread id a worker records (under loom every model thread runs
//! on one OS thread, so a model must not go through `Manager::stop`, which
//! reads it; the models call `Shared::begin_stop`). Also on purpose: the counters of `stats.rs`
//! (monotonic `Relaxed` counts that order nothing, read only by `stats`) and
//! `Arc` (its count orders nothing the pool relies on).

#[cfg(not(all(test, loom)))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize};

/// Channels: crossbeam's, or the model's stand-in.
pub(crate) mod channel {
    #[cfg(not(all(test, loom)))]
    pub(crate) use crossbeam_channel::{Receiver, Sender, bounded};

    #[cfg(all(test, loom))]
    pub(crate) use super::mocked::channel::{Receiver, Sender, bounded};
}

/// Threads: `std`'s, or the model's.
pub(crate) mod thread {
    #[cfg(not(all(test, loom)))]
    pub(crate) use std::thread::{Builder, JoinHandle};

    #[cfg(all(test, loom))]
    pub(crate) use loom::thread::{Builder, JoinHandle};
}

#[cfg(all(test, loom))]
mod mocked;

mod list;
pub(crate) use list::List;

#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize};
#[cfg(all(test, loom))]
pub(crate) use mocked::{Condvar, Mutex, MutexGuard};
