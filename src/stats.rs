//! Counters kept while serving, and the [`Stats`] snapshot built from them.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

mod reasons;

use reasons::reasons;

reasons! {
    /// Why a connection the pool had taken was closed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum CloseReason {
        /// The client closed its side (read returned 0 bytes).
        Eof => eof,
        /// No bytes arrived within [`read_deadline`](crate::Config::read_deadline).
        ReadDeadline => read_deadline,
        /// The bytes waiting for the connection's socket made no progress for
        /// [`write_deadline`](crate::Config::write_deadline): its client stopped
        /// reading.
        WriteDeadline => write_deadline,
        /// A read failed (other than by a reset, see [`Reset`](Self::Reset)),
        /// or the handler returned an error (other than a write's reset).
        Error => error,
        /// The handler called [`Conn::close`](crate::Conn::close).
        Handler => handler,
        /// The handler panicked.
        Panic => panic,
        /// The handler kept a whole buffer (see [`Conn::keep`](crate::Conn::keep)):
        /// the client sent a frame larger than
        /// [`buffer_size`](crate::Config::buffer_size).
        Overflow => overflow,
        /// The manager was stopping (parked connections included: stop closes
        /// them at once).
        Stop => stop,
        /// The client sent nothing within
        /// [`first_byte_deadline`](crate::Config::first_byte_deadline).
        FirstByteDeadline => first_byte_deadline,
        /// The client sent a frame slower than
        /// [`min_read_rate`](crate::Config::min_read_rate).
        SlowRead => slow_read,
        /// The connection reached
        /// [`max_connection_lifetime`](crate::Config::max_connection_lifetime).
        Lifetime => lifetime,
        /// A parked connection became readable but no worker took it within
        /// [`queue_timeout`](crate::Config::queue_timeout); it was sent
        /// [`busy_reply`](crate::Config::busy_reply).
        Busy => busy,
        /// A TLS connection ended before its handshake completed: the
        /// handshake deadline passed, the handshake failed, or the client went
        /// away. [`TlsStats::failed`] says which.
        Handshake => handshake,
        /// A connection from a trusted balancer did not send a valid PROXY
        /// protocol header in time: none within the header deadline (or
        /// another deadline that came first), one over the size limit, one
        /// that does not parse, or the end of the connection inside it (see
        /// [`ProxyProtocol`](crate::ProxyProtocol)).
        ProxyHeader => proxy_header,
        /// A PROXY protocol header named a client that already had
        /// [`max_connections_per_ip`](crate::Config::max_connections_per_ip)
        /// open; it was sent [`busy_reply`](crate::Config::busy_reply). (Without
        /// the PROXY protocol the limit refuses at accept time instead, as
        /// [`RejectReason::PerIpLimit`].)
        PerIpLimit => per_ip_limit,
        /// The client reset the connection (a read failed with
        /// `ECONNRESET`, or a write of the handler's did, or failed with
        /// `EPIPE`, and the handler returned that error): an abortive close,
        /// as load balancers' health checks and impatient clients do. Not an
        /// error of the server's.
        Reset => reset,
        /// The bytes waiting for every connection's socket passed
        /// [`max_buffered_bytes`](crate::Config::max_buffered_bytes), and this
        /// connection held the most of them (or its handler kept writing past
        /// [`max_outbound_bytes`](crate::Config::max_outbound_bytes)): it was
        /// closed to bound the process's memory, as Redis evicts clients past
        /// `maxmemory-clients`.
        Evicted => evicted,
    }

    /// Connections closed, by [`CloseReason`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct Closes in Stats::closed {
        /// All closes, whatever the reason.
        pub fn total;
    }
}

reasons! {
    /// Why a stream was turned away without being served.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum RejectReason {
        /// [`put`](crate::Manager::put) found the pool and the queue full; the
        /// stream was handed back in [`PutError::Full`](crate::PutError::Full).
        Full => full,
        /// [`put`](crate::Manager::put) found the manager not running; the stream
        /// was handed back in [`PutError::Stopped`](crate::PutError::Stopped).
        Stopped => stopped,
        /// A queued stream waited longer than
        /// [`queue_timeout`](crate::Config::queue_timeout); the manager sent
        /// [`busy_reply`](crate::Config::busy_reply) and closed it.
        QueueTimeout => queue_timeout,
        /// A stream was still queued when the manager stopped; the manager sent
        /// [`busy_reply`](crate::Config::busy_reply) and closed it.
        QueueStopped => queue_stopped,
        /// A [`Server`](crate::Server) accepted a connection from a client that
        /// already had [`max_connections_per_ip`](crate::Config::max_connections_per_ip)
        /// open; it was sent [`busy_reply`](crate::Config::busy_reply) and closed.
        PerIpLimit => per_ip_limit,
        /// The PROXY protocol is on and the stream came from an address that is
        /// not a trusted balancer ([`Untrusted::Refuse`](crate::Untrusted));
        /// [`put`](crate::Manager::put) handed it back in
        /// [`PutError::Untrusted`](crate::PutError::Untrusted), a
        /// [`Server`](crate::Server) closes it without a reply.
        Untrusted => untrusted,
    }

    /// Streams rejected, by [`RejectReason`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct Rejections in Stats::rejected {
        /// All rejections, whatever the reason.
        pub fn total;
    }
}

/// A snapshot of a manager, from [`Manager::stats`](crate::Manager::stats).
///
/// Gauges (`workers`, `busy`, `idle`, `queued`) are read together under the
/// manager's lock and agree with each other; counters are cumulative over the
/// manager's whole life, across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Whether the manager is running.
    pub running: bool,
    /// Worker threads alive.
    pub workers: usize,
    /// Workers serving a connection (`workers - idle`): running a handler,
    /// or (dedicated mode) waiting for their connection's next bytes.
    pub busy: usize,
    /// Workers waiting for work: on the idle stack, or polling between
    /// turns.
    pub idle: usize,
    /// Connections and streams waiting in the queue for a worker.
    pub queued: usize,
    /// Connections parked: open, waiting for their client in the workers'
    /// shared poller, holding no worker (polled mode, see
    /// [`park_after`](crate::Config::park_after)).
    pub parked: usize,
    /// Connections taken by the pool since the manager was created.
    pub connections: u64,
    /// Times a connection was parked.
    pub parks: u64,
    /// Times a parked connection became readable and was taken by a worker.
    pub wakes: u64,
    /// Bytes read from clients (on a TLS connection, the plaintext the
    /// handler got).
    pub bytes_in: u64,
    /// Bytes written to clients through [`Conn`](crate::Conn) and
    /// [`Handle`](crate::Handle)s, counted when their socket took them (on
    /// a TLS connection, the plaintext).
    pub bytes_out: u64,
    /// Bytes written and waiting for their connections' sockets, in all
    /// (bounded by [`max_buffered_bytes`](crate::Config::max_buffered_bytes)).
    pub buffered_bytes: usize,
    /// Streams turned away, by reason.
    pub rejected: Rejections,
    /// Connections taken by the pool (served, or parked before their first
    /// byte) that closed, by reason.
    pub closed: Closes,
    /// Worker threads started.
    pub workers_spawned: u64,
    /// Worker threads retired (idle too long, surplus after `max_workers`
    /// was lowered, or stopped).
    pub workers_retired: u64,
    /// Times the operating system refused a new worker thread.
    pub spawn_failures: u64,
    /// Times a poller's role went to another worker because its own had
    /// slept through a long turn (a handler blocking, for
    /// [`grow_after`](crate::Config::grow_after) or longer) while
    /// connections were ready (polled mode). On Linux a pool whose
    /// handlers never block keeps this at zero; elsewhere any turn longer
    /// than `grow_after` counts.
    pub poller_handoffs: u64,
    /// Ready connections sent through the queue because no worker polled
    /// and none could start (every poller blocked, or none left, with the
    /// pool at [`max_workers`](crate::Config::max_workers)); there
    /// [`queue_timeout`](crate::Config::queue_timeout) bounds their wait.
    pub overflowed: u64,
    /// TLS handshakes and connections (all zero without the `tls` feature
    /// or `Config::tls`).
    pub tls: TlsStats,
    /// PROXY protocol headers read (all zero while
    /// [`Config::proxy_protocol`](crate::Config::proxy_protocol) is off).
    pub proxy: ProxyStats,
}

/// PROXY protocol counters of a [`Stats`] snapshot. Connections whose header
/// failed are [`Closes::proxy_header`]; untrusted ones refused,
/// [`Rejections::untrusted`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Headers that named a client (`PROXY` over IPv4 or IPv6).
    pub headers: u64,
    /// Headers in which the balancer spoke for itself (`LOCAL`, as in its
    /// health checks; v1 `UNKNOWN`; other address families): served as
    /// connections from the balancer's address.
    pub local: u64,
}

/// TLS counters of a [`Stats`] snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Connections that ended before their handshake completed, by cause;
    /// each is also counted as [`CloseReason::Handshake`] in
    /// [`Stats::closed`].
    pub failed: HandshakeFailures,
    /// TLS connections open now (handshaking or established).
    pub current: u64,
}

/// Handshakes that did not complete, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeFailures {
    /// A deadline ended the handshake
    /// ([`tls_handshake_deadline`](crate::Config), or another that came
    /// first): a client that sent nothing, or too little, or did not read
    /// our replies.
    pub timeout: u64,
    /// The client closed or reset the connection during the handshake (a
    /// port scan, a health check, a client that gave up).
    pub closed: u64,
    /// The client sent something that is not TLS, or broke the protocol
    /// (bad record, unexpected message, failed decryption).
    pub protocol: u64,
    /// No common ground: no shared protocol version, cipher suite, key
    /// exchange group or ALPN protocol, or no certificate for the name the
    /// client asked for (SNI).
    pub incompatible: u64,
    /// The client's certificate was missing or refused (client
    /// authentication).
    pub certificate: u64,
    /// The client ended the handshake with a fatal alert (for instance it
    /// did not trust our certificate).
    pub alert: u64,
    /// Any other failure.
    pub other: u64,
}

impl HandshakeFailures {
    /// All failed handshakes, whatever the cause.
    pub fn total(&self) -> u64 {
        self.timeout
            + self.closed
            + self.protocol
            + self.incompatible
            + self.certificate
            + self.alert
            + self.other
    }
}

/// Why a handshake failed, as counted in [`HandshakeFailures`]. These
/// counters are the `handshake` closes: each such close is counted once,
/// by its cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) enum Failure {
    Timeout,
    Closed,
    Protocol,
    Incompatible,
    Certificate,
    Alert,
    Other,
}

impl Failure {
    const COUNT: usize = 7;
}

/// TLS counters, shared with every TLS connection (which counts itself in
/// `current` while it lives).
#[derive(Debug)]
pub(crate) struct TlsCounters {
    pub(crate) handshakes: AtomicU64,
    pub(crate) current: AtomicU64,
    failed: [AtomicU64; Failure::COUNT],
    /// Failed handshakes are logged at most once a minute.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) log: RateLimit,
}

impl Default for TlsCounters {
    fn default() -> Self {
        TlsCounters {
            handshakes: AtomicU64::new(0),
            current: AtomicU64::new(0),
            failed: Default::default(),
            log: RateLimit::new(Duration::from_secs(60)),
        }
    }
}

impl TlsCounters {
    /// The failed handshakes by cause.
    fn failures(&self) -> HandshakeFailures {
        let f = |failure: Failure| self.failed[failure as usize].load(Relaxed);
        HandshakeFailures {
            timeout: f(Failure::Timeout),
            closed: f(Failure::Closed),
            protocol: f(Failure::Protocol),
            incompatible: f(Failure::Incompatible),
            certificate: f(Failure::Certificate),
            alert: f(Failure::Alert),
            other: f(Failure::Other),
        }
    }
}

/// Counters shared by the manager and every worker. Everything is `Relaxed`:
/// each counter is independent and a snapshot need not be a single instant.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    closes: [AtomicU64; CloseReason::COUNT],
    rejections: [AtomicU64; RejectReason::COUNT],
    pub(crate) connections: AtomicU64,
    pub(crate) wakes: AtomicU64,
    pub(crate) workers_spawned: AtomicU64,
    pub(crate) workers_retired: AtomicU64,
    pub(crate) spawn_failures: AtomicU64,
    pub(crate) poller_handoffs: AtomicU64,
    pub(crate) overflowed: AtomicU64,
    /// Counts of workers that have exited (and parks by `put`); live
    /// workers keep their own.
    pub(crate) retired_bytes: ByteCounters,
    pub(crate) tls: Arc<TlsCounters>,
    pub(crate) proxy: ProxyCounters,
    /// Bytes waiting in every session's outbound buffer (see
    /// `session::Held`).
    pub(crate) buffered: Arc<AtomicUsize>,
}

/// PROXY protocol counters.
#[derive(Debug)]
pub(crate) struct ProxyCounters {
    pub(crate) headers: AtomicU64,
    pub(crate) local: AtomicU64,
    /// Failed headers are logged at most once a minute.
    pub(crate) log: RateLimit,
}

impl Default for ProxyCounters {
    fn default() -> Self {
        ProxyCounters {
            headers: AtomicU64::new(0),
            local: AtomicU64::new(0),
            log: RateLimit::new(Duration::from_secs(60)),
        }
    }
}

impl Counters {
    /// Counts a close. A `Handshake` close counted here is a timeout (a
    /// deadline ended the handshake); see `close_handshake`.
    pub(crate) fn close(&self, reason: CloseReason) {
        match reason {
            CloseReason::Handshake => self.close_handshake(Failure::Timeout),
            _ => {
                self.closes[reason.index()].fetch_add(1, Relaxed);
            }
        }
    }

    /// Counts a close as `Handshake`, by its cause: one counter, so that
    /// every snapshot has `tls.failed.total() == closed.handshake`.
    pub(crate) fn close_handshake(&self, failure: Failure) {
        self.tls.failed[failure as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn reject(&self, reason: RejectReason) {
        self.rejections[reason.index()].fetch_add(1, Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn closes(&self) -> Closes {
        self.closes_with(&self.tls.failures())
    }

    /// The closes; the handshake closes are `failed`'s sum (`close` counts
    /// them there, by cause, not in `closes`).
    fn closes_with(&self, failed: &HandshakeFailures) -> Closes {
        Closes {
            handshake: failed.total(),
            ..Closes::load(&self.closes)
        }
    }

    /// The closes and the TLS snapshot, consistent with each other:
    /// `tls.failed.total() == closes.handshake`.
    pub(crate) fn closes_and_tls(&self) -> (Closes, TlsStats) {
        let failed = self.tls.failures();
        let closes = self.closes_with(&failed);
        let tls = TlsStats {
            handshakes: self.tls.handshakes.load(Relaxed),
            failed,
            current: self.tls.current.load(Relaxed),
        };
        (closes, tls)
    }

    pub(crate) fn rejections(&self) -> Rejections {
        Rejections::load(&self.rejections)
    }

    pub(crate) fn proxy(&self) -> ProxyStats {
        ProxyStats {
            headers: self.proxy.headers.load(Relaxed),
            local: self.proxy.local.load(Relaxed),
        }
    }
}

/// Bytes in and out. Each worker owns one, so the hot path adds to a counter
/// no other thread writes.
#[derive(Debug, Default)]
pub(crate) struct ByteCounters {
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Parked connections this worker took from the poller.
    pub(crate) wakes: AtomicU64,
    /// Connections this worker (or `put`) parked.
    pub(crate) parks: AtomicU64,
}

impl ByteCounters {
    pub(crate) fn add_to(&self, other: &ByteCounters) {
        for (mine, theirs) in [
            (&self.bytes_in, &other.bytes_in),
            (&self.bytes_out, &other.bytes_out),
            (&self.wakes, &other.wakes),
            (&self.parks, &other.parks),
        ] {
            theirs.fetch_add(mine.load(Relaxed), Relaxed);
        }
    }
}

/// Lets one log line through per interval and counts the ones held back, so
/// that a flood of rejections cannot flood the log.
#[derive(Debug)]
pub(crate) struct RateLimit {
    epoch: Instant,
    interval_ms: u64,
    /// Milliseconds since `epoch` of the last line let through, plus one
    /// (0 = never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub(crate) fn new(interval: Duration) -> Self {
        RateLimit {
            epoch: Instant::now(),
            interval_ms: interval.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(number of lines held back since the last one)` if a line may be
    /// logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Relaxed);
        if last != 0 && now < last + self.interval_ms {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        match self.last_ms.compare_exchange(last, now, Relaxed, Relaxed) {
            Ok(_) => Some(self.suppressed.swap(0, Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.suppressed.load(Relaxed), 2);
    }

    #[test]
    fn counters_land_in_their_own_field() {
        let c = Counters::default();
        c.close(CloseReason::Panic);
        c.close(CloseReason::Stop);
        c.close(CloseReason::Stop);
        c.reject(RejectReason::QueueTimeout);
        let closes = c.closes();
        assert_eq!((closes.panic, closes.stop, closes.total()), (1, 2, 3));
        let rejections = c.rejections();
        assert_eq!((rejections.queue_timeout, rejections.total()), (1, 1));
    }

    #[test]
    fn each_handshake_close_is_counted_once_by_its_cause() {
        let c = Counters::default();
        c.close(CloseReason::Handshake);
        c.close_handshake(Failure::Protocol);
        c.close_handshake(Failure::Alert);
        let (closes, tls) = c.closes_and_tls();
        assert_eq!(
            (tls.failed.timeout, tls.failed.protocol, tls.failed.alert),
            (1, 1, 1)
        );
        assert_eq!(tls.failed.total(), closes.handshake);
    }
}
