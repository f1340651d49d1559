//! The manager's configuration: every knob, its default, and the rules that
//! make a configuration valid.

use std::time::Duration;

use crate::error::ConfigError;
use crate::proxy::ProxyProtocol;
use crate::setters::setters;

/// Smallest accepted [`Config::buffer_size`], in bytes.
pub const MIN_BUFFER_SIZE: usize = 16;
/// Largest accepted [`Config::buffer_size`], in bytes (16 MiB).
pub const MAX_BUFFER_SIZE: usize = 16 << 20;
/// Largest accepted [`Config::max_workers`].
///
/// Every worker is an OS thread; a number above this is almost certainly a
/// typo rather than a plan.
pub const MAX_WORKERS: usize = 32_768;
/// Largest accepted [`Config::queue_capacity`].
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

/// Largest accepted [`Config::backlog`].
pub const MAX_BACKLOG: u32 = 65_535;

/// The least a client must send while a frame is incomplete: see
/// [`Config::min_read_rate`].
///
/// ```
/// use std::time::Duration;
/// use pool_manager::MinReadRate;
///
/// // At least 500 bytes a second, judged over windows of 2 s.
/// let rate = MinReadRate::new(500, Duration::from_secs(2));
/// assert_eq!(rate.bytes_per_window(), 1000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MinReadRate {
    /// Bytes per second, at least 1.
    pub bytes_per_sec: u64,
    /// The window the rate is judged over: each one must bring
    /// `bytes_per_sec × window` bytes. Non-zero.
    pub window: Duration,
}

impl MinReadRate {
    /// `bytes_per_sec` over windows of `window` (what
    /// [`Config::validate`] checks: both non-zero).
    pub fn new(bytes_per_sec: u64, window: Duration) -> Self {
        MinReadRate {
            bytes_per_sec,
            window,
        }
    }

    /// The bytes each window must bring (rounded up, at least 1).
    pub fn bytes_per_window(&self) -> u64 {
        let bytes = (self.bytes_per_sec as f64 * self.window.as_secs_f64()).ceil();
        // `as` saturates: a rate too large for u64 asks for u64::MAX.
        (bytes as u64).max(1)
    }
}

/// Configuration of a [`Manager`](crate::Manager).
///
/// Build one from [`Config::default()`] and change the fields you care
/// about, with the `with_*` methods or by assigning the fields;
/// [`Config::validate`] (called by [`Manager::new`](crate::Manager::new) and
/// [`Manager::set_config`](crate::Manager::set_config)) says whether it is
/// usable.
///
/// Every field but two is live: a running manager applies a new
/// configuration at once (see [`Manager::set_config`](crate::Manager::set_config)
/// for when each field takes effect). `reuse_address` and `reuse_port` shape
/// a [`Server`](crate::Server)'s listening sockets when it binds them, and a
/// later change does not touch sockets already bound.
///
/// ```
/// use std::time::Duration;
/// use pool_manager::Config;
///
/// let config = Config::default()
///     .with_min_workers(2)
///     .with_max_workers(16)
///     .with_read_deadline(Some(Duration::from_secs(30)));
/// assert!(config.validate().is_ok());
///
/// // The same, field by field.
/// let mut same = Config::default();
/// same.min_workers = 2;
/// same.max_workers = 16;
/// same.read_deadline = Some(Duration::from_secs(30));
/// assert_eq!(config, same);
/// ```
///
/// `Config` is `#[non_exhaustive]`: a later minor version may add a field
/// (with a default that keeps today's behaviour), so it cannot be written
/// as a struct literal outside this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Workers started by [`Manager::start`](crate::Manager::start) and never
    /// retired by the reaper. Default `0`: threads exist only while needed.
    pub min_workers: usize,
    /// Most worker threads: in polled mode, the most handlers running (or
    /// blocked) at once; in dedicated mode, the most connections open at
    /// once. Must be at least 1 and at least `min_workers`. Default: 4 × the number of CPUs, at
    /// least 8.
    pub max_workers: usize,
    /// Dedicated mode: streams that [`put`](crate::Manager::put) may queue
    /// when all `max_workers` are busy. Default `0`: a full pool refuses at
    /// once and hands the stream back. In polled mode
    /// ([`park_after`](Self::park_after)) a new stream waits in the poller
    /// instead, and ready connections that find every worker blocked at
    /// `max_workers` wait in the queue whatever its capacity (they are open
    /// already; `queue_timeout` still bounds their wait).
    pub queue_capacity: usize,
    /// Longest a queued stream waits for a worker. When it expires the stream
    /// is sent [`busy_reply`](Self::busy_reply), closed, and counted as
    /// rejected with [`RejectReason::QueueTimeout`](crate::RejectReason).
    /// Must be non-zero. Default 1 s.
    pub queue_timeout: Duration,
    /// Bytes read at most per read (a frame larger than this is gathered by
    /// the pool: see [`max_frame_bytes`](Self::max_frame_bytes)). Between
    /// [`MIN_BUFFER_SIZE`] and [`MAX_BUFFER_SIZE`]. Each worker owns one
    /// buffer of this size and reuses it. Default 5120.
    pub buffer_size: usize,
    /// Inactivity timeout of a connection: the longest a worker waits for the
    /// next bytes, reset at every read. `None` waits forever. `Some(0)` is
    /// invalid. Default 3 s.
    pub read_deadline: Option<Duration>,
    /// Longest the bytes waiting for a connection's socket may go without
    /// progress: a connection whose client has taken none of them for this
    /// long is closed, counted as
    /// [`CloseReason::WriteDeadline`](crate::CloseReason). A client that
    /// reads slowly but steadily is never cut off, however long its
    /// download; one that never reads is. (Writes never wait: see
    /// [`Conn`](crate::Conn).) While bytes wait, `read_deadline` and
    /// `min_read_rate` wait too. `None` waits forever. `Some(0)` is
    /// invalid. Default 3 s.
    pub write_deadline: Option<Duration>,
    /// Most bytes that may wait for one connection's socket (written by its
    /// handler or sent through its [`Handle`](crate::Handle)s, not yet taken
    /// by the socket). A handler's writes are always taken whole, but while
    /// more than this waits the connection is not read (backpressure: a
    /// client that sends requests without reading the replies holds at
    /// most this plus the replies to the requests of one read, which
    /// `buffer_size` bounds); a [`Handle::send`](crate::Handle::send)
    /// past it is refused with [`SendError::Full`](crate::SendError).
    /// Default 1 MiB.
    pub max_outbound_bytes: usize,
    /// The largest frame a handler may ask for in whole
    /// ([`Conn::keep`](crate::Conn::keep) and
    /// [`Conn::need`](crate::Conn::need)): a frame larger than
    /// `buffer_size` is gathered in a buffer of the connection's own, grown
    /// as its bytes arrive; past this the connection is closed, counted as
    /// [`CloseReason::Overflow`](crate::CloseReason). At least
    /// `buffer_size` in effect. Default 64 MiB.
    pub max_frame_bytes: usize,
    /// Most bytes that may wait for sockets in all (every connection's
    /// outbound buffer), so that many slow readers cannot take the memory
    /// one connection's bound leaves each. Past it, the connection holding
    /// the most among the one that passed it and those waiting in the
    /// poller is closed, counted as
    /// [`CloseReason::Evicted`](crate::CloseReason) (Redis's
    /// `maxmemory-clients`); so is one whose handler writes on past
    /// `max_outbound_bytes` while the total is past it. `None`: no bound.
    /// `Some(0)` is invalid. Default 256 MiB.
    pub max_buffered_bytes: Option<usize>,
    /// A worker idle for longer than this is retired by the reaper, unless
    /// that would leave fewer than `min_workers`. Must be non-zero. Default
    /// 10 s.
    pub worker_idle_timeout: Duration,
    /// Bytes written (best effort, without blocking) to a stream that the
    /// manager itself has to close without serving it: a queued stream whose
    /// wait expired or that was still queued at stop. Streams refused by
    /// [`put`](crate::Manager::put) are handed back to the caller instead,
    /// who writes its own reply. Default empty: nothing is written.
    pub busy_reply: Vec<u8>,
    /// Listening sockets of a [`Server`](crate::Server): the length of the
    /// kernel's queue of connections not yet accepted. 1 ..= 65535. Default
    /// 1024.
    pub backlog: u32,
    /// `SO_REUSEADDR` on listening sockets, so that a restarted server can
    /// bind while old connections linger in TIME_WAIT. Default `true`.
    pub reuse_address: bool,
    /// `SO_REUSEPORT` on listening sockets, so that several processes can
    /// share a port. Unix only: `true` elsewhere is
    /// [`ConfigError::Unsupported`]. Default `false`.
    pub reuse_port: bool,
    /// `TCP_NODELAY` on connections a [`Server`](crate::Server) accepts.
    /// Default `true`: request/response protocols want replies sent at once.
    pub nodelay: bool,
    /// TCP keep-alive probes on accepted connections after this much
    /// silence; `None` leaves the system default (off). `Some(0)` is
    /// invalid. Longer than 32,767 s (about 9 hours, the most Linux's
    /// `TCP_KEEPIDLE` takes) means 32,767 s. Default `None`.
    pub keepalive: Option<Duration>,
    /// `SO_SNDBUF` of accepted connections; `None` leaves the system's
    /// (auto-tuned) size. `Some(0)` is invalid. Default `None`.
    pub send_buffer_size: Option<usize>,
    /// `SO_RCVBUF` of accepted connections; `None` leaves the system's
    /// (auto-tuned) size. `Some(0)` is invalid. Default `None`.
    pub recv_buffer_size: Option<usize>,
    /// Most connections a [`Server`](crate::Server) keeps open (on a
    /// worker, queued or parked). At the limit it stops accepting, so new clients
    /// wait in the kernel backlog instead of being refused, and it accepts
    /// again as soon as one closes. `None`: no limit beyond the pool's.
    /// `Some(0)` is invalid. Default `None`.
    pub max_connections: Option<usize>,
    /// Most connections a [`Server`](crate::Server) keeps open from one
    /// client IP address (IPv4 or IPv6). A client over it is sent
    /// [`busy_reply`](Self::busy_reply) and closed, counted as
    /// [`RejectReason::PerIpLimit`](crate::RejectReason). Connections
    /// accepted while no limit was set are not counted against one set
    /// later. `Some(0)` is invalid. Default `None`.
    ///
    /// Behind a balancer speaking the [PROXY protocol](Self::proxy_protocol),
    /// the limit counts the clients the headers name, once each header is
    /// read: a client over it is sent `busy_reply` and closed, counted as
    /// [`CloseReason::PerIpLimit`](crate::CloseReason::PerIpLimit).
    pub max_connections_per_ip: Option<usize>,
    /// Read a PROXY protocol header (v1 or v2) at the start of every
    /// connection from a trusted balancer, and take the client it names as
    /// the connection's peer (see [`ProxyProtocol`]). Applies to
    /// connections taken from now on. Default `None`: no header is read.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// How a connection waits for its client between reads: the serving
    /// mode.
    ///
    /// `Some(d)` is *polled mode*, the default on every platform (Linux,
    /// macOS, the BSDs, Windows): a connection
    /// waiting for its client is registered in the workers' shared poller
    /// and holds no thread; a polling worker that learns it is readable
    /// serves it itself (no hand-off to another thread), then hands it back
    /// to the poller. A worker first waits up to `d` for the client's next
    /// bytes before handing the connection back; `Some(Duration::ZERO)`
    /// (the default) hands it back at once, which serves best under load.
    /// A worker never lingers while other connections are ready. A handler
    /// that blocks holds its own connection and nothing else: see
    /// [`grow_after`](Self::grow_after).
    ///
    /// `None` is *dedicated mode*: a worker serves
    /// one connection from its first byte to its close, waiting in `read`
    /// while the client is silent — a thread per open connection.
    ///
    /// Live: each connection follows a change from its next read. See
    /// `docs/design.md` and `docs/tuning.md`.
    pub park_after: Option<Duration>,
    /// Longest a new connection may take to send its first byte, counted
    /// from when the pool took it; then it is closed, counted as
    /// [`CloseReason::FirstByteDeadline`](crate::CloseReason). `None`: only
    /// `read_deadline` applies. `Some(0)` is invalid. Default `None`.
    pub first_byte_deadline: Option<Duration>,
    /// The slowest a client may send the rest of a frame it has begun: while
    /// the handler keeps unconsumed bytes ([`Conn::keep`](crate::Conn::keep)),
    /// every [`window`](MinReadRate::window) must bring
    /// [`bytes_per_window`](MinReadRate::bytes_per_window) bytes, or the
    /// connection is closed, counted as
    /// [`CloseReason::SlowRead`](crate::CloseReason). This is httpd's
    /// `mod_reqtimeout` `MinRate` for raw TCP: a client silent between
    /// frames is left to `read_deadline`, one that trickles a frame byte by
    /// byte is not. `None` (default): no minimum.
    pub min_read_rate: Option<MinReadRate>,
    /// Longest a connection may stay open, counted from when the pool took
    /// it, however busy; then it is closed, counted as
    /// [`CloseReason::Lifetime`](crate::CloseReason) (a running handler call
    /// finishes first). `Some(0)` is invalid. Default `None`.
    pub max_connection_lifetime: Option<Duration>,
    /// Polled mode: how many workers have the poller role, and so how many
    /// serve quick handlers in parallel (Go's `GOMAXPROCS`). One of them at
    /// a time waits in `epoll_wait`; the others wait for the ready
    /// connections it shares, so an extra poller costs nothing while one is
    /// enough. More pollers than cores only adds context switches. Capped
    /// by `max_workers`. On Linux, while handlers block often (a poller
    /// released as blocked, see [`grow_after`](Self::grow_after), within
    /// 100 ms of the last such release) the pool keeps spares for 100 ms,
    /// so the others keep every CPU polled while a blocked one is replaced:
    /// one, or as many as pollers are likely blocked and not yet found
    /// (the rate of releases times two `grow_after`s), at most two per
    /// poller (elsewhere a long turn that computes cannot be told from a blocked
    /// one, and no spare is kept). Between 1 and
    /// [`MAX_WORKERS`]. Default: the number of CPUs.
    pub pollers: usize,
    /// Polled mode: when a polling worker has been inside one handler call
    /// for this long while ready connections wait, and is blocked (asleep
    /// in the kernel for most of that time and now, on Linux; elsewhere
    /// the time alone counts), its place among the pollers is handed to
    /// another worker (an idle one, or a new one up to `max_workers`), as
    /// Go's runtime hands a processor away from a thread stuck in a system
    /// call ([`Stats::poller_handoffs`](crate::Stats::poller_handoffs)). So
    /// a handler that blocks (a database call, a sleep) delays only its own
    /// connection; one that computes keeps its place. While handlers keep
    /// blocking (a hand-over within 100 ms of the last), the pool keeps
    /// spare pollers on Linux ([`pollers`](Self::pollers)); elsewhere it
    /// looks four times as often instead, so that a blocked poller is
    /// replaced after a quarter to a half of `grow_after`. The pool looks
    /// every `grow_after` while it finds something to do (a turn seen at
    /// two looks in a row, blocked or not; a poller missing while
    /// connections wait; a hand-over in the last 100 ms), and, on Linux,
    /// backs off while it finds nothing, as Go's sysmon does: after every 4 such
    /// looks half as often, down to once every 8 × `grow_after`. So the
    /// first handler to block after a quiet spell (an idle one included)
    /// is replaced after 8 to 16 × `grow_after`, and the next ones sooner.
    /// Must be non-zero. Default 1 ms.
    pub grow_after: Duration,
    /// Serve TLS: every connection the pool takes from now on (from
    /// [`put`](crate::Manager::put) or a [`Server`](crate::Server)) is a
    /// TLS connection, its handshake run on a worker, its handler given
    /// the plaintext (see [`TlsConfig`](crate::TlsConfig)). Connections
    /// already taken keep the configuration they started with, so
    /// [`set_config`](crate::Manager::set_config) with a new certificate
    /// rotates it without touching established clients. While TLS is on,
    /// [`busy_reply`](Self::busy_reply) is sent only to clients whose
    /// handshake completed (encrypted), never in plaintext. Default `None`.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Longest a TLS handshake may take, counted from when the pool took
    /// the connection; then it is closed, counted as
    /// [`CloseReason::Handshake`](crate::CloseReason) (and as a
    /// [`timeout`](crate::HandshakeFailures::timeout)). The other deadlines
    /// (`read_deadline`, `first_byte_deadline`, the lifetime) bound a
    /// handshake too, whichever comes first, and count the same way; the
    /// handshake's replies are written within it. `None`: only the other
    /// deadlines bound it. `Some(0)` is invalid. Default 10 s.
    #[cfg(feature = "tls")]
    pub tls_handshake_deadline: Option<Duration>,
    /// How often the manager thread publishes the stats through the
    /// `metrics` facade (see [`Manager::publish_metrics`](crate::Manager::publish_metrics)).
    /// `None`: only when asked. `Some(0)` is invalid. Default 1 s.
    #[cfg(feature = "metrics")]
    pub metrics_interval: Option<Duration>,
    /// Labels on every published series, to tell several managers of one
    /// process apart (`[("pool", "api")]`). Default none.
    #[cfg(feature = "metrics")]
    pub metrics_labels: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            min_workers: 0,
            max_workers: (cpus * 4).max(8),
            queue_capacity: 0,
            queue_timeout: Duration::from_secs(1),
            buffer_size: 5120,
            read_deadline: Some(Duration::from_secs(3)),
            write_deadline: Some(Duration::from_secs(3)),
            max_outbound_bytes: 1 << 20,
            max_buffered_bytes: Some(256 << 20),
            max_frame_bytes: 64 << 20,
            worker_idle_timeout: Duration::from_secs(10),
            busy_reply: Vec::new(),
            backlog: 1024,
            reuse_address: true,
            reuse_port: false,
            nodelay: true,
            keepalive: None,
            send_buffer_size: None,
            recv_buffer_size: None,
            max_connections: None,
            max_connections_per_ip: None,
            proxy_protocol: None,
            park_after: Some(Duration::ZERO),
            first_byte_deadline: None,
            min_read_rate: None,
            max_connection_lifetime: None,
            pollers: cpus,
            grow_after: Duration::from_millis(1),
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_handshake_deadline: Some(Duration::from_secs(10)),
            #[cfg(feature = "metrics")]
            metrics_interval: Some(Duration::from_secs(1)),
            #[cfg(feature = "metrics")]
            metrics_labels: Vec::new(),
        }
    }
}

setters!(Config {
    with_min_workers => min_workers: usize,
    with_max_workers => max_workers: usize,
    with_queue_capacity => queue_capacity: usize,
    with_queue_timeout => queue_timeout: Duration,
    with_buffer_size => buffer_size: usize,
    with_read_deadline => read_deadline: Option<Duration>,
    with_write_deadline => write_deadline: Option<Duration>,
    with_max_outbound_bytes => max_outbound_bytes: usize,
    with_max_frame_bytes => max_frame_bytes: usize,
    with_max_buffered_bytes => max_buffered_bytes: Option<usize>,
    with_worker_idle_timeout => worker_idle_timeout: Duration,
    with_busy_reply => busy_reply: Vec<u8>,
    with_backlog => backlog: u32,
    with_reuse_address => reuse_address: bool,
    with_reuse_port => reuse_port: bool,
    with_nodelay => nodelay: bool,
    with_keepalive => keepalive: Option<Duration>,
    with_send_buffer_size => send_buffer_size: Option<usize>,
    with_recv_buffer_size => recv_buffer_size: Option<usize>,
    with_max_connections => max_connections: Option<usize>,
    with_max_connections_per_ip => max_connections_per_ip: Option<usize>,
    with_proxy_protocol => proxy_protocol: Option<ProxyProtocol>,
    with_park_after => park_after: Option<Duration>,
    with_first_byte_deadline => first_byte_deadline: Option<Duration>,
    with_min_read_rate => min_read_rate: Option<MinReadRate>,
    with_max_connection_lifetime => max_connection_lifetime: Option<Duration>,
    with_pollers => pollers: usize,
    with_grow_after => grow_after: Duration,
    #[cfg(feature = "tls")]
    with_tls => tls: Option<crate::tls::TlsConfig>,
    #[cfg(feature = "tls")]
    with_tls_handshake_deadline => tls_handshake_deadline: Option<Duration>,
    #[cfg(feature = "metrics")]
    with_metrics_interval => metrics_interval: Option<Duration>,
    #[cfg(feature = "metrics")]
    with_metrics_labels => metrics_labels: Vec<(String, String)>,
});

impl Config {
    /// Checks every rule of a valid configuration.
    ///
    /// # Errors
    ///
    /// The first rule broken, as a [`ConfigError`] naming the field and the
    /// allowed range.
    ///
    /// ```
    /// use pool_manager::{Config, ConfigError};
    ///
    /// let config = Config::default().with_min_workers(9).with_max_workers(4);
    /// assert_eq!(config.validate(), Err(ConfigError::MinAboveMax { min: 9, max: 4 }));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_workers == 0 {
            return Err(ConfigError::ZeroMaxWorkers);
        }
        if self.max_workers > MAX_WORKERS {
            return Err(ConfigError::TooManyWorkers {
                max: self.max_workers,
                limit: MAX_WORKERS,
            });
        }
        if self.min_workers > self.max_workers {
            return Err(ConfigError::MinAboveMax {
                min: self.min_workers,
                max: self.max_workers,
            });
        }
        if self.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(ConfigError::QueueTooLarge {
                capacity: self.queue_capacity,
                limit: MAX_QUEUE_CAPACITY,
            });
        }
        if !(MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&self.buffer_size) {
            return Err(ConfigError::BufferSize {
                size: self.buffer_size,
                min: MIN_BUFFER_SIZE,
                max: MAX_BUFFER_SIZE,
            });
        }
        if !(1..=MAX_BACKLOG).contains(&self.backlog) {
            return Err(ConfigError::Backlog {
                backlog: self.backlog,
                max: MAX_BACKLOG,
            });
        }
        for (field, value) in [
            ("send_buffer_size", self.send_buffer_size),
            ("recv_buffer_size", self.recv_buffer_size),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_buffered_bytes", self.max_buffered_bytes),
        ] {
            if value == Some(0) {
                return Err(ConfigError::ZeroSize { field });
            }
        }
        if !(1..=MAX_WORKERS).contains(&self.pollers) {
            return Err(ConfigError::Pollers {
                pollers: self.pollers,
                limit: MAX_WORKERS,
            });
        }
        #[cfg(not(unix))]
        if self.reuse_port {
            return Err(ConfigError::Unsupported {
                field: "reuse_port",
            });
        }
        if let Some(rate) = self.min_read_rate {
            if rate.bytes_per_sec == 0 {
                return Err(ConfigError::ZeroSize {
                    field: "min_read_rate.bytes_per_sec",
                });
            }
            if rate.window.is_zero() {
                return Err(ConfigError::ZeroDuration {
                    field: "min_read_rate.window",
                });
            }
        }
        let durations = [
            ("queue_timeout", Some(self.queue_timeout)),
            ("read_deadline", self.read_deadline),
            ("write_deadline", self.write_deadline),
            ("worker_idle_timeout", Some(self.worker_idle_timeout)),
            ("keepalive", self.keepalive),
            ("grow_after", Some(self.grow_after)),
            ("first_byte_deadline", self.first_byte_deadline),
            ("max_connection_lifetime", self.max_connection_lifetime),
            ("tls_handshake_deadline", self.handshake_deadline()),
            ("metrics_interval", self.metrics_every()),
        ];
        for (field, value) in durations {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::ZeroDuration { field });
            }
        }
        if let Some(proxy) = &self.proxy_protocol {
            proxy.validate(self.buffer_size)?;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            if tls.server_config().max_early_data_size > 0 {
                return Err(ConfigError::TlsEarlyData);
            }
        }
        Ok(())
    }
}

impl Config {
    /// The TLS handshake deadline; `None` without the `tls` feature.
    pub(crate) fn handshake_deadline(&self) -> Option<Duration> {
        #[cfg(feature = "tls")]
        return self.tls_handshake_deadline;
        #[cfg(not(feature = "tls"))]
        None
    }

    /// How often the manager thread publishes metrics; `None` without the
    /// `metrics` feature.
    pub(crate) fn metrics_every(&self) -> Option<Duration> {
        #[cfg(feature = "metrics")]
        return self.metrics_interval;
        #[cfg(not(feature = "metrics"))]
        None
    }

    /// Whether connections taken now are TLS connections.
    pub(crate) fn tls_on(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// What may be written in plaintext to a client the pool turns away
    /// before serving it: nothing while TLS is on.
    pub(crate) fn plain_busy_reply(&self) -> &[u8] {
        if self.tls_on() { &[] } else { &self.busy_reply }
    }
}

#[cfg(test)]
mod tests;
