//! A managed pool of OS-thread workers serving raw TCP connections.
//!
//! (crate docs: filled in below)
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

mod config;
mod conn;
mod error;
mod handler;
mod manager;
mod reaper;
mod stats;
mod worker;

pub use config::{Config, MAX_BUFFER_SIZE, MAX_QUEUE_CAPACITY, MAX_WORKERS, MIN_BUFFER_SIZE};
pub use conn::Conn;
pub use error::{ConfigError, Error, PutError};
pub use handler::{Handler, WithState, with_state};
pub use manager::{FORCE_GRACE, Manager, StopReport};
pub use stats::{CloseReason, Closes, RejectReason, Rejections, Stats};
