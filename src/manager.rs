//! [`Manager`]: the pool's front door. Its methods are the public API;
//! the state they act on is in `pool`.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::conn::Conn;
use crate::error::{ConfigError, Error, PutError};
use crate::handler::{FnHandler, Handler};
use crate::limits::Control;
use crate::manager_thread;
use crate::pool::{CURRENT_MANAGER, Incoming, Phase, Shared, StopReport};
use crate::stats::Stats;
use crate::worker;

/// A pool of worker threads serving TCP connections.
///
/// Create it with [`Manager::new`] (a closure) or [`Manager::with_handler`]
/// (a [`Handler`]), [`start`](Manager::start) it, and hand it accepted
/// streams with [`put`](Manager::put). Every method takes `&self`: share the
/// manager between the accept loop and a control thread with an `Arc`.
///
/// Dropping a running manager stops it (as [`stop`](Manager::stop)).
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use pool_manager::{Config, Conn, Manager};
///
/// let manager = Manager::new(Config::default(), |conn: &mut Conn<'_>, data: &[u8]| {
///     conn.write_all(data) // echo
/// })?;
/// manager.start()?;
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let mut client = TcpStream::connect(listener.local_addr()?)?;
/// let (stream, _) = listener.accept()?;
/// manager.put(stream)?;
///
/// client.write_all(b"hello")?;
/// let mut reply = [0; 5];
/// client.read_exact(&mut reply)?;
/// assert_eq!(&reply, b"hello");
///
/// drop(client);
/// let report = manager.stop()?;
/// assert_eq!(report.forced, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Manager {
    shared: Arc<Shared>,
}

impl Manager {
    /// A manager whose workers call `handler` with the bytes of every read.
    /// It does not start until [`start`](Manager::start).
    ///
    /// The closure's parameters need their types written out
    /// (`|conn: &mut Conn<'_>, data: &[u8]|`). For state per connection, see
    /// [`with_state`](crate::with_state).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if `config` is not valid (see [`Config::validate`]).
    pub fn new<F>(config: Config, handler: F) -> Result<Self, ConfigError>
    where
        F: Fn(&mut Conn<'_>, &[u8]) -> io::Result<()> + Send + Sync + 'static,
    {
        Self::with_handler(config, FnHandler(handler))
    }

    /// A manager whose workers serve connections with `handler`. It does not
    /// start until [`start`](Manager::start).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if `config` is not valid (see [`Config::validate`]).
    pub fn with_handler<H: Handler>(config: Config, handler: H) -> Result<Self, ConfigError> {
        let shared = Shared::new(config, Box::new(handler), worker::run)?;
        Ok(Manager {
            shared: Arc::new(shared),
        })
    }

    /// Starts the manager thread (`pool-manager`: the timers of waiting
    /// connections, the reaper, the watch over blocked handlers) and
    /// `min_workers` workers.
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyRunning`] if it is running;
    /// - [`Error::Stopping`] while a [`stop`](Manager::stop) is under way;
    /// - [`Error::Io`] if the poller cannot be created (the first start
    ///   only: it is kept for later ones);
    /// - [`Error::Spawn`] if a thread could not be started (what had started
    ///   is stopped again).
    pub fn start(&self) -> Result<(), Error> {
        self.shared.start(manager_thread::spawn)
    }

    /// Hands `stream` to the pool, without blocking. In polled mode
    /// ([`Config::park_after`] `Some`, the default) it waits for its first
    /// bytes in the workers' shared poller, holding no worker. In dedicated
    /// mode it goes to the most recently idle worker; or to a new worker if
    /// fewer than `max_workers` exist; or into the queue if it has room (for
    /// at most `queue_timeout`).
    ///
    /// The stream is made blocking and given the configured read and write
    /// timeouts; the manager owns them from here on.
    ///
    /// # Errors
    ///
    /// The stream comes back untouched, so that the caller can answer and
    /// close it:
    /// - [`PutError::Full`] when every worker is busy, the pool is at
    ///   `max_workers`, and the queue is full (or a thread could not be
    ///   started);
    /// - [`PutError::Stopped`] when the manager is not running.
    ///
    /// Both are counted in [`Stats::rejected`].
    pub fn put(&self, stream: TcpStream) -> Result<(), PutError> {
        self.shared.put(Incoming {
            stream,
            ticket: None,
            fresh: false,
            accepted: Instant::now(),
            trusted: None,
        })
    }

    /// The shared state, for a server's acceptor.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Lets `set_config` wake a server's acceptor, so that new limits apply
    /// at once.
    pub(crate) fn attach_acceptor(&self, control: &Arc<Control>) {
        *self.shared.acceptor.lock() = Some(Arc::downgrade(control));
    }

    /// A copy of the configuration in force.
    pub fn config(&self) -> Config {
        Config::clone(&self.shared.state.lock().config)
    }

    /// Replaces the whole configuration, atomically, while running or not.
    ///
    /// When each field takes effect on a running manager:
    /// - `min_workers` raised: the missing workers start now;
    /// - `max_workers` lowered: idle surplus workers retire now, busy ones
    ///   when their connection closes; raised: queued streams get new
    ///   workers now;
    /// - `read_deadline`, `write_deadline`, `buffer_size`: from each
    ///   connection's next read;
    /// - `worker_idle_timeout`, `queue_timeout`: the reaper re-plans now;
    /// - `queue_capacity`, `busy_reply`: from the next stream. A queue
    ///   longer than a lowered capacity drains normally;
    /// - `park_after`: from each connection's next read (a worker waiting
    ///   in a read with no deadline sees it after that read); parked
    ///   connections stay parked until their client sends;
    /// - `pollers`: raised, more workers poll as ready connections wait;
    ///   lowered, surplus pollers leave after their next event;
    /// - `grow_after`: from the manager thread's next look;
    /// - `first_byte_deadline`, `min_read_rate`, `max_connection_lifetime`
    ///   and `read_deadline` of parked connections: the manager thread
    ///   re-plans every parked deadline now; connections on a worker follow
    ///   from their next read.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if `config` is not valid; nothing changes then.
    pub fn set_config(&self, config: Config) -> Result<(), ConfigError> {
        self.shared.set_config(config)
    }

    /// A snapshot of gauges and counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Publishes a [`stats`](Manager::stats) snapshot through the
    /// [`metrics`] facade, to the recorder the application
    /// installed (a no-op without one). The manager thread does it every
    /// [`Config::metrics_interval`]; call it before a scrape for figures
    /// of this instant.
    ///
    /// Gauges: `pool_manager_running`, `_workers`, `_workers_busy`,
    /// `_workers_idle`, `_queued`, `_parked`, `_tls_connections`.
    /// Counters: `pool_manager_connections_total`, `_parks_total`,
    /// `_wakes_total`, `_received_bytes_total`, `_sent_bytes_total`,
    /// `_workers_spawned_total`, `_workers_retired_total`,
    /// `_spawn_failures_total`, `_poller_handoffs_total`,
    /// `_overflowed_total`, `_tls_handshakes_total`;
    /// `_rejected_total` and `_closed_total` by `reason` (the fields of
    /// [`Rejections`](crate::Rejections) and [`Closes`](crate::Closes)),
    /// `_tls_handshake_failures_total` by `cause`,
    /// `_proxy_headers_total` by `command` (`proxy`, `local`). Every
    /// series carries [`Config::metrics_labels`].
    ///
    /// ```
    /// use pool_manager::{Config, Conn, Manager};
    ///
    /// let manager = Manager::new(Config::default(), |conn: &mut Conn<'_>, data: &[u8]| {
    ///     std::io::Write::write_all(conn, data)
    /// })?;
    /// manager.publish_metrics(); // no recorder installed: nothing happens
    /// # Ok::<(), pool_manager::ConfigError>(())
    /// ```
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        self.shared.publish_metrics();
    }

    /// Whether the manager is running (started, and no stop begun).
    pub fn is_running(&self) -> bool {
        self.shared.state.lock().phase == Phase::Running
    }

    /// Stops gracefully and waits for it:
    /// 1. `put` starts returning [`PutError::Stopped`];
    /// 2. queued streams are sent `busy_reply` and closed;
    /// 3. connections waiting for data are closed at once: parked ones
    ///    directly, those on a worker by shutting their socket down for
    ///    reading, which wakes the blocked worker;
    /// 4. handlers already running finish, and what they wrote is sent
    ///    (within `write_deadline` of no progress; parked connections' waiting
    ///    bytes get what the socket takes at once), then their connections
    ///    close;
    /// 5. every thread is joined.
    ///
    /// A handler that never returns makes this wait forever: use
    /// [`stop_timeout`](Manager::stop_timeout) to bound it.
    /// [`start`](Manager::start) may be called again afterwards.
    ///
    /// # Errors
    ///
    /// - [`Error::NotRunning`] if it is not running;
    /// - [`Error::Stopping`] if another stop is under way;
    /// - [`Error::StopFromWorker`] when called from one of this manager's
    ///   handlers.
    pub fn stop(&self) -> Result<StopReport, Error> {
        if self.on_own_worker() {
            return Err(Error::StopFromWorker);
        }
        let stopping = self.shared.begin_stop()?;
        Ok(self.shared.finish_stop(stopping, None))
    }

    /// As [`stop`](Manager::stop), but connections still open after
    /// `timeout` are shut down by force (counted in
    /// [`StopReport::forced`]). Their handlers are then given
    /// [`FORCE_GRACE`](crate::FORCE_GRACE) to return; a thread that still has not is left
    /// running, not joined, and counted in [`StopReport::abandoned`].
    ///
    /// On Windows a socket's shutdown does not end a blocking call on it: a
    /// handler blocked in its own read or write on
    /// [`Conn::stream`](crate::Conn::stream) is abandoned there. (The
    /// pool's own waits are woken through the worker's bell everywhere.)
    ///
    /// # Errors
    ///
    /// As [`stop`](Manager::stop).
    pub fn stop_timeout(&self, timeout: Duration) -> Result<StopReport, Error> {
        if self.on_own_worker() {
            return Err(Error::StopFromWorker);
        }
        let stopping = self.shared.begin_stop()?;
        // A timeout too large for the clock is no timeout.
        let deadline = stopping.started.checked_add(timeout);
        Ok(self.shared.finish_stop(stopping, deadline))
    }

    /// Whether this thread is one of this manager's workers.
    fn on_own_worker(&self) -> bool {
        CURRENT_MANAGER.with(Cell::get) == self.shared.id
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let Ok(stopping) = self.shared.begin_stop() else {
            return; // not running
        };
        if self.on_own_worker() {
            // Dropped by one of its own handlers: it cannot wait for itself.
            // The threads exit on their own once their connections close.
            self.shared.close_unwaited(stopping);
        } else {
            self.shared.finish_stop(stopping, None);
        }
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Manager")
            .field("phase", &state.phase)
            .field("workers", &state.total)
            .field("idle", &state.idle.len())
            .field("queued", &state.queue.len())
            .finish_non_exhaustive()
    }
}
