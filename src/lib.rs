//! A managed pool of OS-thread workers serving raw TCP connections with
//! blocking handlers.
//!
//! # The model
//!
//! ```text
//!  your accept loop ──put(stream)──▶ Manager ──▶ shared poller (epoll, edge) ◀── pollers wait here
//!   or a Server                                       │ ready                 (one per CPU)
//!                                                     ▼
//!                               the poller that learned it: read ─▶ handler(conn, bytes) ─▶ back
//!                               (a handler asleep > grow_after hands its place to another worker)
//! ```
//!
//! A [`Manager`] owns a pool of named worker threads and a manager thread
//! (timers, reaper, and the watch over blocked handlers).
//! [`Manager::put`] hands it an accepted [`TcpStream`](std::net::TcpStream).
//! While the connection waits for its client it holds no thread: it is
//! registered in a poller (a `mio::Poll`: epoll on Linux) that the polling
//! workers share. The
//! worker that learns it is readable serves it itself: it reads up to
//! [`Config::buffer_size`] bytes into its own reusable buffer and calls the
//! handler with them, then hands the connection back to the poller. The
//! handler answers through [`Conn`] (an [`io::Write`](std::io::Write) that
//! never waits for the client: what the socket does not take at once waits
//! in the connection, and the pollers write it as the client reads), may
//! [`close`](Conn::close) the connection, [`keep`](Conn::keep) the tail
//! of a partial frame for the next call, or take a [`Handle`] to write to
//! the connection or close it later, from any thread. Handlers may block: one that has
//! slept for [`Config::grow_after`] while other connections are ready gives
//! its place to another worker, up to [`Config::max_workers`].
//!
//! # Writing a handler
//!
//! A closure for a stateless protocol (its parameters' types, `&mut
//! Conn<'_>` and `&[u8]`, are inferred; this example is a doc test, which
//! keeps it so):
//!
//! ```
//! use std::io::Write;
//! use pool_manager::{Config, Manager};
//!
//! let manager = Manager::new(Config::default(), |conn, data| {
//!     if data.starts_with(b"QUIT") {
//!         conn.close();
//!         return Ok(());
//!     }
//!     conn.write_all(data)
//! })?;
//! # Ok::<(), pool_manager::ConfigError>(())
//! ```
//!
//! State per connection with [`with_state`], or a type implementing
//! [`Handler`] (which also gets a [`closed`](Handler::closed) hook with the
//! [`CloseReason`]).
//!
//! # Serving modes
//!
//! *Polled mode* ([`Config::park_after`] `Some(_)`, the default on Linux)
//! is the model above: thousands of mostly idle clients need a handful of
//! threads, and a busy pool serves about as fast as an event loop.
//! *Dedicated mode* (`park_after: None`) gives each open connection a
//! worker for its whole life, as a thread per connection would.
//!
//! ```
//! use std::time::Duration;
//! use pool_manager::{Config, MinReadRate};
//!
//! let config = Config::default()
//!     .with_max_workers(64) // handlers that may be blocked at once
//!     .with_read_deadline(Some(Duration::from_secs(300))) // keep-alive clients
//!     // Slow-client defences, in either mode:
//!     .with_first_byte_deadline(Some(Duration::from_secs(5)))
//!     .with_min_read_rate(Some(MinReadRate::new(100, Duration::from_secs(10))))
//!     .with_max_connection_lifetime(Some(Duration::from_secs(3600)));
//! assert!(config.validate().is_ok());
//! ```
//!
//! # Overload, stop, observability
//!
//! `put` never blocks and never drops: a stream waits in the poller (polled
//! mode) or is served, queued for at most [`Config::queue_timeout`], or
//! handed back in [`PutError`] for the caller to answer (dedicated mode). [`Manager::set_config`] changes any knob while serving.
//! [`Manager::stop`] drains gracefully; [`Manager::stop_timeout`] bounds it
//! and reports what was forced. [`Manager::stats`] counts rejections and
//! closes by reason. The crate logs through [`log`] and never prints.
//!
//! # TLS
//!
//! With the `tls` cargo feature, `Config::tls` serves TLS with rustls
//! in every mode: the handshake runs on a worker under
//! `tls_handshake_deadline`, the handler gets plaintext and `Conn::tls`
//! the negotiated ALPN, SNI and client certificates; a new `TlsConfig`
//! through [`Manager::set_config`] rotates the certificate for new
//! connections. [`Stats::tls`] counts handshakes, failures by cause and
//! open TLS connections.
//!
//! # Behind a load balancer, restarts, metrics
//!
//! [`Config::proxy_protocol`] reads the PROXY protocol header (v1 or v2)
//! that HAProxy, nginx or a cloud balancer sends at the start of each
//! connection: the client it names is [`Conn::peer_addr`], what the per-IP
//! limit counts, and what the logs print ([`ProxyProtocol`]).
//! [`Server::listeners`] and [`Server::shutdown`] restart a server without
//! refusing a client, and [`Server::from_listeners`] takes sockets from
//! systemd. With the `metrics` cargo feature, `Manager::publish_metrics`
//! (and the manager thread, every `Config::metrics_interval`) publishes
//! the stats through the `metrics` facade. `docs/deployment.md` in the
//! repository shows each with HAProxy, systemd and Kubernetes.
//!
//! # Accepting
//!
//! Run your own accept loop and `put` each stream, or let a [`Server`] do
//! it: one acceptor thread on a `mio::Poll` over one or more listeners
//! (bound through socket2 with [`Config::backlog`] and reuse options, or
//! inherited), with [`Server::pause`]/[`Server::resume`],
//! [`Config::max_connections`] (clients wait in the kernel backlog) and
//! [`Config::max_connections_per_ip`].
//!
//! See `docs/design.md` in the repository for the threads and who owns what,
//! and `docs/tuning.md` for sizing.
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![allow(
    clippy::vec_box,
    reason = "a session moves between threads and tables as one pointer; the Vecs that carry several are transient"
)]

// The public façade.
mod manager;
mod server;

// One file per thread's loop.
mod acceptor;
mod manager_thread;
mod worker;

// The pool's shared state, and the decisions taken on it.
mod pool;

// Primitives.
mod bell;
mod config;
mod conn;
mod epoll;
mod error;
mod handle;
mod handler;
mod limits;
mod os_thread;
mod outbound;
mod park;
mod proxy;
#[cfg(feature = "metrics")]
mod publish;
mod serve;
mod session;
mod setters;
mod socket;
mod stats;
mod stream;
mod sync;
mod timer;
mod timing;
mod tls;

// Models of the core for the model checker (`cfg(loom)`).
#[cfg(all(test, loom))]
mod models;

pub use config::{
    Config, MAX_BACKLOG, MAX_BUFFER_SIZE, MAX_QUEUE_CAPACITY, MAX_WORKERS, MIN_BUFFER_SIZE,
    MinReadRate,
};
pub use conn::Conn;
#[cfg(feature = "tls")]
pub use error::TlsError;
pub use error::{ConfigError, Error, PutError, SendError};
pub use handle::Handle;
pub use handler::{Handler, WithState, with_state};
/// The CIDR types of [`ProxyProtocol::trusted`], re-exported: `ipnet` 2.x
/// is a public dependency (a major version of it would be one of ours).
pub use ipnet;
pub use manager::Manager;
pub use pool::{FORCE_GRACE, StopReport};
pub use proxy::{MAX_PROXY_HEADER, MIN_PROXY_HEADER, ProxyProtocol, Untrusted};
/// The TLS library [`TlsConfig`] wraps, re-exported so that a
/// `rustls::ServerConfig` of your own is of the version this crate uses:
/// `rustls` 0.23 is a public dependency (a major version of it would be
/// one of ours).
#[cfg(feature = "tls")]
pub use rustls;
pub use server::Server;
pub use stats::{
    CloseReason, Closes, HandshakeFailures, ProxyStats, RejectReason, Rejections, Stats, TlsStats,
};
#[cfg(feature = "tls")]
pub use tls::TlsConfig;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// `docs/deployment.md`'s examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/deployment.md")]
struct DeploymentDoctests;
