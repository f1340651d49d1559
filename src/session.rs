//! A connection between two reads: everything about it that outlives the
//! worker serving it, so that it can be parked and taken up again by any
//! worker — the socket, the handler's state, bytes the handler kept, and the
//! clocks of the slow-client defences.

use std::any::Any;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::handle::Link;
use crate::limits::Ticket;
use crate::outbound::{self, Outbound};
use crate::proxy::ProxyProtocol;
use crate::socket::refuse;
use crate::stats::CloseReason;
use crate::tls::TlsConn;

/// A connection taken by the pool: on a worker, parked (waiting in the
/// workers' shared poller), or queued after waking.
pub(crate) struct Session {
    /// Shared with the serving worker's `Slot` while on a worker, so that
    /// stop can shut it down; the only owner while parked.
    pub(crate) stream: Arc<TcpStream>,
    /// Its place under a server's connection limits, given back on drop.
    pub(crate) ticket: Option<Ticket>,
    /// The handler's state, type-erased; `None` until `Handler::open` ran on
    /// the first worker that took the connection.
    pub(crate) state: Option<Box<dyn Any + Send>>,
    /// Bytes the handler kept ([`Conn::keep`](crate::Conn::keep)) while the
    /// connection is parked or queued. Empty on a worker: they are in its
    /// buffer then. A parked connection holds no read buffer.
    pub(crate) kept: Vec<u8>,
    pub(crate) timing: Timing,
    /// The socket's `SO_RCVTIMEO` and `SO_SNDTIMEO` as last set by us;
    /// `None` while unknown (a stream from `put` may come with any).
    pub(crate) read_timeout: Option<Option<Duration>>,
    pub(crate) write_timeout: Option<Option<Duration>>,
    /// Whether a worker has made the socket blocking (a stream from `put`
    /// may be non-blocking; the acceptor's are blocking already).
    pub(crate) blocking: bool,
    /// Whether the socket is registered in the workers' shared poller. It
    /// stays registered (edge-triggered) while a worker serves it, so that
    /// parking it again takes no system call, or one `epoll_ctl` (a re-arm)
    /// if it left its entry in the parked table.
    pub(crate) registered: bool,
    /// Reported readable by the poller: a worker's first read of it does
    /// not wait (a readiness can be spurious).
    pub(crate) ready: bool,
    /// The poller reported the peer's shutdown, a hang-up or an error: it
    /// is read until it ends (or has nothing more), since no later event
    /// announces the end of file behind its last bytes.
    pub(crate) hup: bool,
    /// Disarmed in the poller while a worker waited for it in a blocking
    /// read: parking it re-arms it.
    pub(crate) disarmed: bool,
    /// When the manager thread took it, readable, out of the poller into
    /// the queue (no worker was free): its deadlines are judged at that
    /// instant, not when a worker got to it.
    pub(crate) woken_at: Option<Instant>,
    /// A TLS connection's rustls state (`None`: plaintext).
    pub(crate) tls: Option<TlsConn>,
    /// The client a PROXY protocol header named (`None`: the socket's
    /// peer is the client).
    pub(crate) peer: Option<SocketAddr>,
    /// Bytes read with the PROXY header that came after it: the next reads
    /// take them before the socket's.
    pub(crate) early: Vec<u8>,
    /// The longest PROXY header accepted, while one is awaited.
    pub(crate) header_max: usize,
    /// Bytes written to it (by its handler, or its handles) that its socket
    /// has not taken yet. Empty, and holding no memory, while nothing waits.
    pub(crate) out: Outbound,
    /// What its handles share with it, once the handler asked for one.
    pub(crate) link: LinkSlot,
    /// It is to close, for this reason, once the bytes in `out` are written:
    /// the handler or a handle closed it, or its client's end of file came
    /// while a reply was still waiting.
    pub(crate) closing: Option<CloseReason>,
    /// Whether its registration in the shared poller reports writability
    /// (needed while bytes wait in `out`).
    pub(crate) armed_out: bool,
    /// Its share of the bytes waiting in every session's `out`.
    pub(crate) held: Held,
}

/// A session's share of the pool's count of bytes waiting for sockets
/// (`Counters::buffered`), given back when the session is dropped.
#[derive(Debug, Default)]
pub(crate) struct Held {
    total: Option<Arc<AtomicUsize>>,
    mine: usize,
}

impl Held {
    /// The bytes counted for this session.
    pub(crate) fn mine(&self) -> usize {
        self.mine
    }

    /// The session now holds `now` bytes: the pool's new total, or `None`
    /// if nothing changed.
    pub(crate) fn set(&mut self, total: &Arc<AtomicUsize>, now: usize) -> Option<usize> {
        if now == self.mine {
            return None;
        }
        let total = self.total.get_or_insert_with(|| Arc::clone(total));
        let new = if now > self.mine {
            total.fetch_add(now - self.mine, Relaxed) + (now - self.mine)
        } else {
            total.fetch_sub(self.mine - now, Relaxed) - (self.mine - now)
        };
        self.mine = now;
        Some(new)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(total) = &self.total {
            total.fetch_sub(self.mine, Relaxed);
        }
    }
}

/// A session's [`Link`]: closed when the session ends, however it ends, so
/// that its handles refuse further sends.
#[derive(Default)]
pub(crate) struct LinkSlot(Option<Arc<Link>>);

impl std::fmt::Debug for LinkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "LinkSlot(linked)" } else { "LinkSlot(none)" })
    }
}

impl LinkSlot {
    pub(crate) fn get(&self) -> Option<&Arc<Link>> {
        self.0.as_ref()
    }

    /// The link, made on first use with `limit` bytes of bound.
    pub(crate) fn get_or_make(&mut self, limit: usize) -> &Arc<Link> {
        self.0.get_or_insert_with(|| Link::new(limit))
    }
}

impl Drop for LinkSlot {
    fn drop(&mut self) {
        if let Some(link) = &self.0 {
            link.close();
        }
    }
}

impl Session {
    /// A new connection, taken by the pool at `opened`. `fresh`: accepted
    /// by the acceptor, so blocking and without timeouts.
    pub(crate) fn new(
        stream: TcpStream,
        ticket: Option<Ticket>,
        fresh: bool,
        opened: Instant,
        tls: Option<TlsConn>,
    ) -> Box<Self> {
        let known = fresh.then_some(None);
        let mut timing = Timing::new(opened);
        timing.handshaking = tls.is_some();
        Box::new(Session {
            stream: Arc::new(stream),
            ticket,
            state: None,
            kept: Vec::new(),
            timing,
            read_timeout: known,
            write_timeout: known,
            blocking: fresh,
            registered: false,
            ready: false,
            hup: false,
            disarmed: false,
            woken_at: None,
            tls,
            peer: None,
            early: Vec::new(),
            header_max: 0,
            out: Outbound::default(),
            link: LinkSlot::default(),
            closing: None,
            armed_out: false,
            held: Held::default(),
        })
    }

    /// The connection comes from a trusted balancer: its PROXY header is
    /// read first, under `proxy`'s limits (those in force when the pool
    /// took it, whatever `set_config` does later).
    pub(crate) fn expect_header(&mut self, proxy: &ProxyProtocol) {
        self.timing.header_pending = true;
        self.timing.header_by = self.timing.opened.checked_add(proxy.header_deadline);
        self.header_max = proxy.max_header_size;
    }

    /// Writes `reply` without blocking (encrypted on a TLS connection whose
    /// handshake completed; on TLS also `close_notify`), whatever the
    /// socket buffer takes, and shuts the socket down.
    pub(crate) fn end(&mut self, reply: &[u8]) {
        if let Some(link) = self.link.get() {
            link.close();
        }
        if !self.out.is_empty() {
            // What the socket takes at once of what waits (a stop, say).
            let _ = outbound::flush(&self.stream, self.tls.as_mut(), &mut self.out);
        }
        match &mut self.tls {
            Some(tls) => tls.end(&self.stream, reply),
            None => refuse(&self.stream, reply),
        }
    }
}

/// The clocks of one connection's deadlines: the read deadline, the
/// first-byte deadline, the lifetime, and the minimum rate of a frame.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    /// When the pool took the connection.
    opened: Instant,
    /// When the connection last began to wait for bytes: the read deadline
    /// counts from here.
    idle_since: Instant,
    /// Whether any byte has arrived.
    got_bytes: bool,
    /// While bytes wait for the socket: when they last moved (or began to
    /// wait). The write deadline counts from here; the read deadline and
    /// the minimum rate wait (the client is reading, not sending).
    writing: Option<Instant>,
    /// A TLS connection whose handshake has not completed: the handshake
    /// deadline applies.
    pub(crate) handshaking: bool,
    /// From a trusted balancer, its PROXY header not read yet: every
    /// deadline that fires is the header's.
    pub(crate) header_pending: bool,
    /// By when the header must have come, as configured when the pool took
    /// the connection (`None`: too far to represent).
    header_by: Option<Instant>,
    /// While a frame is incomplete (the handler kept bytes): the current
    /// rate window.
    frame: Option<Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    bytes: u64,
}

impl Timing {
    pub(crate) fn new(opened: Instant) -> Self {
        Timing {
            opened,
            idle_since: opened,
            got_bytes: false,
            writing: None,
            handshaking: false,
            header_pending: false,
            header_by: None,
            frame: None,
        }
    }

    /// The earliest instant at which a defence closes the connection if it
    /// sends nothing more, and which. `None`: nothing would.
    pub(crate) fn deadline(&self, config: &Config) -> Option<(Instant, CloseReason)> {
        let after = |from: Instant, d: Option<Duration>| d.and_then(|d| from.checked_add(d));
        let mut candidates = [
            (
                match self.writing {
                    None => after(self.idle_since, config.read_deadline),
                    Some(_) => None,
                },
                CloseReason::ReadDeadline,
            ),
            (
                after(self.opened, config.max_connection_lifetime),
                CloseReason::Lifetime,
            ),
            (None, CloseReason::FirstByteDeadline),
            (None, CloseReason::SlowRead),
            (None, CloseReason::Handshake),
            (None, CloseReason::ProxyHeader),
            (
                self.writing.and_then(|at| after(at, config.write_deadline)),
                CloseReason::WriteDeadline,
            ),
        ];
        if self.handshaking {
            candidates[4].0 = after(self.opened, config.handshake_deadline());
        }
        if self.header_pending {
            candidates[5].0 = self.header_by;
        }
        if !self.got_bytes {
            candidates[2].0 = after(self.opened, config.first_byte_deadline);
        }
        if let (Some(w), Some(rate), None) = (self.frame, config.min_read_rate, self.writing) {
            // The current window fails at its end unless it brings enough;
            // one that already has enough is followed by an empty one.
            let end = w.start.checked_add(rate.window);
            candidates[3].0 = if w.bytes >= rate.bytes_per_window() {
                end.and_then(|e| e.checked_add(rate.window))
            } else {
                end
            };
        }
        let earliest = candidates
            .into_iter()
            .filter_map(|(at, reason)| at.map(|at| (at, reason)))
            .min_by_key(|&(at, _)| at)?;
        // Whatever deadline ends a PROXY header or a TLS handshake, it
        // timed out.
        Some(if self.header_pending {
            (earliest.0, CloseReason::ProxyHeader)
        } else if self.handshaking {
            (earliest.0, CloseReason::Handshake)
        } else {
            earliest
        })
    }

    /// Judges the connection at `now`: the defence it broke, if any. Rate
    /// windows that ended are judged and rolled over.
    pub(crate) fn check(&mut self, now: Instant, config: &Config) -> Result<(), CloseReason> {
        self.roll(now, config)?;
        match self.deadline(config) {
            Some((at, reason)) if at <= now => Err(reason),
            _ => Ok(()),
        }
    }

    /// Judges the rate windows that ended by `now` and starts the current
    /// one.
    fn roll(&mut self, now: Instant, config: &Config) -> Result<(), CloseReason> {
        let (Some(w), Some(rate), None) = (&mut self.frame, config.min_read_rate, self.writing)
        else {
            return Ok(());
        };
        let need = rate.bytes_per_window();
        while let Some(end) = w.start.checked_add(rate.window) {
            if now < end {
                break;
            }
            if w.bytes < need {
                return Err(CloseReason::SlowRead);
            }
            *w = Window {
                start: end,
                bytes: 0,
            };
        }
        Ok(())
    }

    /// `n` bytes arrived at `now()`; they count in the window they arrived
    /// in, after the windows that ended before it are judged. The clock is
    /// read only while a rate applies.
    pub(crate) fn on_bytes(
        &mut self,
        n: usize,
        now: impl FnOnce() -> Instant,
        config: &Config,
    ) -> Result<(), CloseReason> {
        self.got_bytes = true;
        if self.frame.is_some() && config.min_read_rate.is_some() {
            self.roll(now(), config)?;
        }
        if let Some(w) = &mut self.frame {
            w.bytes = w.bytes.saturating_add(n as u64);
        }
        Ok(())
    }

    /// Bytes wait for the socket (`pending`) at `now`; `progress`: some
    /// moved since the last call. When none wait any more, the read
    /// deadline and a frame's rate window start again from `now`.
    pub(crate) fn output(&mut self, pending: bool, progress: bool, now: Instant) {
        match (pending, self.writing) {
            (true, None) => self.writing = Some(now),
            (true, Some(_)) if progress => self.writing = Some(now),
            (false, Some(_)) => {
                self.writing = None;
                self.idle_since = now;
                if let Some(w) = &mut self.frame {
                    *w = Window {
                        start: now,
                        bytes: 0,
                    };
                }
            }
            _ => {}
        }
    }

    /// The handler returned at `now` keeping `kept` bytes: a frame is
    /// incomplete while it keeps any. The connection waits from `now`.
    pub(crate) fn after_handler(&mut self, kept: usize, now: Instant) {
        self.idle_since = now;
        if kept == 0 {
            self.frame = None;
        } else if self.frame.is_none() {
            self.frame = Some(Window {
                start: now,
                bytes: 0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MinReadRate;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> Config {
        Config {
            read_deadline: None,
            ..Config::default()
        }
    }

    #[test]
    fn no_defence_means_no_deadline() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        assert_eq!(timing.deadline(&config()), None);
        assert_eq!(timing.check(t0 + 1000 * MS, &config()), Ok(()));
    }

    #[test]
    fn the_earliest_defence_wins() {
        let t0 = Instant::now();
        let timing = Timing::new(t0);
        let config = Config {
            read_deadline: Some(300 * MS),
            first_byte_deadline: Some(100 * MS),
            max_connection_lifetime: Some(200 * MS),
            ..config()
        };
        assert_eq!(
            timing.deadline(&config),
            Some((t0 + 100 * MS, CloseReason::FirstByteDeadline))
        );
    }

    #[test]
    fn first_byte_deadline_stops_counting_at_the_first_byte() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            first_byte_deadline: Some(100 * MS),
            ..config()
        };
        assert_eq!(
            timing.check(t0 + 100 * MS, &config),
            Err(CloseReason::FirstByteDeadline)
        );
        timing.on_bytes(1, || t0 + 10 * MS, &config).unwrap();
        timing.after_handler(0, t0 + 10 * MS);
        assert_eq!(timing.check(t0 + 1000 * MS, &config), Ok(()));
    }

    #[test]
    fn read_deadline_counts_from_the_last_handler_return() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            read_deadline: Some(100 * MS),
            ..config()
        };
        timing.on_bytes(5, || t0 + 80 * MS, &config).unwrap();
        timing.after_handler(0, t0 + 80 * MS);
        assert_eq!(timing.check(t0 + 150 * MS, &config), Ok(()));
        assert_eq!(
            timing.deadline(&config),
            Some((t0 + 180 * MS, CloseReason::ReadDeadline))
        );
        assert_eq!(
            timing.check(t0 + 180 * MS, &config),
            Err(CloseReason::ReadDeadline)
        );
    }

    #[test]
    fn lifetime_holds_however_busy() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            max_connection_lifetime: Some(100 * MS),
            ..config()
        };
        for i in 1..10 {
            timing.on_bytes(1000, || t0 + i * MS, &config).unwrap();
            timing.after_handler(0, t0 + i * MS);
        }
        assert_eq!(
            timing.check(t0 + 100 * MS, &config),
            Err(CloseReason::Lifetime)
        );
    }

    #[test]
    fn min_rate_applies_only_while_a_frame_is_incomplete() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            min_read_rate: Some(MinReadRate {
                bytes_per_sec: 100,
                window: 100 * MS, // 10 bytes a window
            }),
            ..config()
        };
        // Complete frames and silence: no rate applies.
        timing.on_bytes(3, || t0, &config).unwrap();
        timing.after_handler(0, t0);
        assert_eq!(timing.deadline(&config), None);
        assert_eq!(timing.check(t0 + 1000 * MS, &config), Ok(()));

        // A frame begins at 1 s: its first window ends at 1.1 s.
        let start = t0 + 1000 * MS;
        timing.after_handler(3, start);
        assert_eq!(
            timing.deadline(&config),
            Some((start + 100 * MS, CloseReason::SlowRead))
        );
        // 12 bytes in the first window: judged fine, the next one begins.
        timing.on_bytes(12, || start + 50 * MS, &config).unwrap();
        timing.after_handler(15, start + 50 * MS);
        assert_eq!(
            timing.deadline(&config),
            Some((start + 200 * MS, CloseReason::SlowRead))
        );
        assert_eq!(timing.check(start + 150 * MS, &config), Ok(()));
        // 1 byte in the second window: too slow.
        timing.on_bytes(1, || start + 160 * MS, &config).unwrap();
        timing.after_handler(16, start + 160 * MS);
        assert_eq!(
            timing.check(start + 200 * MS, &config),
            Err(CloseReason::SlowRead)
        );
    }

    #[test]
    fn a_completed_frame_ends_the_rate_window() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            min_read_rate: Some(MinReadRate {
                bytes_per_sec: 1000,
                window: 100 * MS,
            }),
            ..config()
        };
        timing.after_handler(4, t0);
        timing.on_bytes(2, || t0 + 10 * MS, &config).unwrap();
        timing.after_handler(0, t0 + 10 * MS);
        assert_eq!(timing.check(t0 + 500 * MS, &config), Ok(()));
    }

    #[test]
    fn bytes_count_in_the_window_they_arrive_in() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            min_read_rate: Some(MinReadRate {
                bytes_per_sec: 1,
                window: 10_000 * MS, // 10 bytes a window
            }),
            ..config()
        };
        timing.after_handler(1, t0);
        timing.on_bytes(10, || t0 + 1000 * MS, &config).unwrap();
        timing.after_handler(11, t0 + 1000 * MS);
        // Read at 15 s: the first window was judged fine, these bytes are
        // the second window's.
        timing.on_bytes(10, || t0 + 15_000 * MS, &config).unwrap();
        timing.after_handler(21, t0 + 15_000 * MS);
        assert_eq!(timing.check(t0 + 20_000 * MS, &config), Ok(()));
        // And a window that ended short is judged when bytes come late.
        assert_eq!(
            timing.on_bytes(1, || t0 + 31_000 * MS, &config),
            Err(CloseReason::SlowRead)
        );
    }

    #[test]
    fn durations_too_large_for_the_clock_never_expire() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            read_deadline: Some(Duration::MAX),
            max_connection_lifetime: Some(Duration::MAX),
            min_read_rate: Some(MinReadRate {
                bytes_per_sec: 1,
                window: Duration::MAX,
            }),
            ..config()
        };
        timing.after_handler(1, t0);
        assert_eq!(timing.deadline(&config), None);
        assert_eq!(timing.check(t0 + 1000 * MS, &config), Ok(()));
    }
}
