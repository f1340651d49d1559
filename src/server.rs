//! [`Server`]: the crate's own accept loop around a [`Manager`].

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use crate::sync::Mutex;
use crate::sync::channel;
use crate::sync::thread::{self, JoinHandle};
use mio::net::TcpListener;
use mio::{Poll, Waker};

use crate::acceptor::{Acceptor, WAKER};
use crate::error::Error;
use crate::limits::Control;
use crate::manager::Manager;
use crate::pool::StopReport;
use crate::socket;
use crate::stats::RateLimit;

/// At most one warning about accept errors per this interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A [`Manager`] with its own accept loop: an acceptor thread
/// (`pool-acceptor`) on a `mio::Poll` accepts from one or more listeners and
/// [`put`](Manager::put)s every connection into the pool. A connection the
/// pool cannot take is sent [`busy_reply`](crate::Config::busy_reply) and
/// closed, counted in [`Stats::rejected`](crate::Stats).
///
/// Every method takes `&self`: share the server with an `Arc` to pause,
/// resume or stop it from another thread. Dropping a running server stops
/// it.
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::TcpStream;
/// use pool_manager::{Config, Conn, Manager, Server};
///
/// let manager = Manager::new(Config::default(), |conn: &mut Conn<'_>, data: &[u8]| {
///     conn.write_all(data)
/// })?;
/// let server = Server::bind(manager, "127.0.0.1:0")?;
/// server.start()?;
///
/// let mut client = TcpStream::connect(server.local_addrs()[0])?;
/// client.write_all(b"hi")?;
/// let mut reply = [0; 2];
/// client.read_exact(&mut reply)?;
/// assert_eq!(&reply, b"hi");
///
/// server.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    manager: Arc<Manager>,
    addrs: Vec<SocketAddr>,
    /// Duplicates of the listening sockets' descriptors (the same kernel
    /// sockets), for [`listeners`](Server::listeners).
    handles: Vec<StdListener>,
    control: Arc<Control>,
    run: Mutex<Run>,
}

/// The acceptor's side: its poller and listeners while stopped, its thread
/// (which owns them) while running.
enum Run {
    Stopped(Poll, Vec<TcpListener>),
    Running(JoinHandle<Option<(Poll, Vec<TcpListener>)>>),
    /// The acceptor thread panicked and took its sockets with it.
    Lost,
}

impl Server {
    /// Binds every address `addrs` resolves to, with the socket options of
    /// the manager's [`Config`](crate::Config) (backlog, `SO_REUSEADDR`,
    /// `SO_REUSEPORT`). It does not accept until [`start`](Server::start).
    ///
    /// # Errors
    ///
    /// The first address that cannot be resolved or bound; `addrs`
    /// resolving to nothing is `InvalidInput`.
    pub fn bind(manager: Manager, addrs: impl ToSocketAddrs) -> io::Result<Server> {
        let (_, config) = manager.shared().config_arc();
        let listeners = addrs
            .to_socket_addrs()?
            .map(|addr| socket::bind(addr, &config))
            .collect::<io::Result<Vec<_>>>()?;
        Self::from_listeners(manager, listeners)
    }

    /// Serves listeners made elsewhere: inherited file descriptors, systemd
    /// socket activation, a test's port. They are made non-blocking; their
    /// backlog and options are left as they are.
    ///
    /// # Errors
    ///
    /// A listener whose address cannot be read, that cannot be made
    /// non-blocking or duplicated; no listener at all is `InvalidInput`.
    pub fn from_listeners(
        manager: Manager,
        listeners: impl IntoIterator<Item = StdListener>,
    ) -> io::Result<Server> {
        let mut addrs = Vec::new();
        let mut handles = Vec::new();
        let mut mio_listeners = Vec::new();
        for listener in listeners {
            listener.set_nonblocking(true)?;
            addrs.push(listener.local_addr()?);
            handles.push(listener.try_clone()?);
            mio_listeners.push(TcpListener::from_std(listener));
        }
        if mio_listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a server needs at least one listener",
            ));
        }
        let poll = Poll::new()?;
        let control = Arc::new(Control::new(Waker::new(poll.registry(), WAKER)?));
        manager.attach_acceptor(&control);
        Ok(Server {
            manager: Arc::new(manager),
            addrs,
            handles,
            control,
            run: Mutex::new(Run::Stopped(poll, mio_listeners)),
        })
    }

    /// The addresses listened on, in the order bound.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// New descriptors of the listening sockets, in the order bound: the
    /// same kernel sockets, sharing one backlog. Hand them to a successor
    /// process (over a Unix socket with `SCM_RIGHTS`, or across `exec`) for
    /// a restart that refuses no client: it serves them with
    /// [`from_listeners`](Server::from_listeners) while this server
    /// [`shutdown`](Server::shutdown)s. Clients that connect in between
    /// wait in the shared backlog, whichever process accepts them.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::net::TcpStream;
    /// use std::time::Duration;
    /// use pool_manager::{Config, Conn, Manager, Server};
    ///
    /// let echo = |conn: &mut Conn<'_>, data: &[u8]| conn.write_all(data);
    /// let old = Server::bind(Manager::new(Config::default(), echo)?, "127.0.0.1:0")?;
    /// old.start()?;
    /// // The successor (here in the same process) serves the same socket…
    /// let new = Server::from_listeners(Manager::new(Config::default(), echo)?, old.listeners()?)?;
    /// new.start()?;
    /// // …while the old server drains.
    /// let report = old.shutdown(Duration::from_secs(10))?;
    /// assert_eq!(report.forced, 0);
    ///
    /// let mut client = TcpStream::connect(old.local_addrs()[0])?;
    /// client.write_all(b"hi")?;
    /// let mut reply = [0; 2];
    /// client.read_exact(&mut reply)?;
    /// assert_eq!(&reply, b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`TcpListener::try_clone`](std::net::TcpListener::try_clone),
    /// e.g. out of file descriptors.
    pub fn listeners(&self) -> io::Result<Vec<StdListener>> {
        self.handles.iter().map(StdListener::try_clone).collect()
    }

    /// The pool: for [`stats`](Manager::stats),
    /// [`set_config`](Manager::set_config), or [`put`](Manager::put) of
    /// streams accepted elsewhere.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// Starts the pool and the acceptor thread.
    ///
    /// # Errors
    ///
    /// As [`Manager::start`] (among them [`Error::Io`] if the poller cannot
    /// be set up); [`Error::Io`] also if the acceptor's sockets were lost to
    /// a panic of its thread (nothing starts then); [`Error::Spawn`] if the
    /// acceptor's thread cannot start (the pool, started first, is stopped
    /// again).
    pub fn start(&self) -> Result<(), Error> {
        let mut run = self.run.lock();
        let (poll, listeners) = match std::mem::replace(&mut *run, Run::Lost) {
            Run::Stopped(poll, listeners) => (poll, listeners),
            Run::Running(join) => {
                *run = Run::Running(join);
                return Err(Error::AlreadyRunning);
            }
            Run::Lost => {
                return Err(Error::Io(io::Error::other(
                    "the acceptor thread panicked earlier and its listeners are lost",
                )));
            }
        };
        if let Err(e) = self.manager.start() {
            *run = Run::Stopped(poll, listeners);
            return Err(e);
        }
        // The sockets travel through a channel so that they can be taken
        // back if the thread cannot start.
        let (tx, rx) = channel::bounded(1);
        let _ = tx.send((poll, listeners));
        let rx_back = rx.clone();
        let (generation, config) = self.manager.shared().config_arc();
        let pool = Arc::clone(self.manager.shared());
        let control = Arc::clone(&self.control);
        control.stop.store(false, SeqCst);
        let spawned = thread::Builder::new()
            .name("pool-acceptor".into())
            .spawn(move || {
                // Always there: sent before the thread was started.
                let (poll, listeners) = rx.recv().ok()?;
                let acceptor = Acceptor {
                    poll,
                    listeners,
                    pool,
                    control,
                    registered: false,
                    backoff_until: None,
                    error_log: RateLimit::new(ACCEPT_LOG_INTERVAL),
                    config,
                    generation,
                };
                Some(acceptor.run())
            });
        match spawned {
            Ok(join) => {
                *run = Run::Running(join);
                Ok(())
            }
            Err(e) => {
                if let Ok((poll, listeners)) = rx_back.try_recv() {
                    *run = Run::Stopped(poll, listeners);
                }
                let _ = self.manager.stop();
                Err(Error::Spawn(e))
            }
        }
    }

    /// Stops accepting: the listeners are deregistered, so new clients wait
    /// in the kernel's backlog (up to [`backlog`](crate::Config::backlog))
    /// instead of being refused. Connections already accepted are served.
    /// Lasts across [`stop`](Server::stop) and [`start`](Server::start).
    pub fn pause(&self) {
        self.set_paused(true);
    }

    /// Accepts again after [`pause`](Server::pause); clients waiting in the
    /// backlog are accepted at once.
    pub fn resume(&self) {
        self.set_paused(false);
    }

    /// Whether its acceptor runs: started, not paused, and not stopping
    /// (a readiness check). It may still wait at
    /// [`max_connections`](crate::Config::max_connections), or back off
    /// for a moment after an accept error such as `EMFILE`.
    pub fn is_accepting(&self) -> bool {
        !self.is_paused() && matches!(*self.run.lock(), Run::Running(_))
    }

    /// Whether [`pause`](Server::pause) is in force.
    pub fn is_paused(&self) -> bool {
        self.control.paused.load(SeqCst)
    }

    fn set_paused(&self, paused: bool) {
        self.control.paused.store(paused, SeqCst);
        self.control.wake();
    }

    /// Stops the acceptor thread (joined; the listeners stay bound for a
    /// later [`start`](Server::start)), then the pool as
    /// [`Manager::stop`] does.
    ///
    /// # Errors
    ///
    /// As [`Manager::stop`].
    pub fn stop(&self) -> Result<StopReport, Error> {
        self.stop_acceptor()?;
        self.manager.stop()
    }

    /// As [`stop`](Server::stop), with the pool stopped as
    /// [`Manager::stop_timeout`] does.
    ///
    /// # Errors
    ///
    /// As [`Manager::stop_timeout`].
    pub fn stop_timeout(&self, timeout: Duration) -> Result<StopReport, Error> {
        self.stop_acceptor()?;
        self.manager.stop_timeout(timeout)
    }

    /// The stop for a restart, or for an orchestrator's SIGTERM: it stops
    /// accepting (clients that connect from now on wait in the backlog, for
    /// a successor that shares the listening sockets, see
    /// [`listeners`](Server::listeners)); waits, up to `timeout`, until
    /// every connection already accepted has had its first request served
    /// (its handler returned keeping none of the bytes it was given, see
    /// [`Conn::keep`](crate::Conn::keep)), so that none is closed before
    /// it; then stops the pool as [`Manager::stop_timeout`] does, with what
    /// is left of `timeout`. Connections idle between requests
    /// (keep-alive) are closed then, as by [`stop`](Server::stop).
    ///
    /// Waiting is woken by the connections themselves, not by polling;
    /// one that sends nothing (or never a whole request) is waited for
    /// until `timeout`, or until a deadline of the pool closes it: bound it
    /// with [`first_byte_deadline`](crate::Config::first_byte_deadline).
    ///
    /// # Errors
    ///
    /// As [`Manager::stop_timeout`].
    pub fn shutdown(&self, timeout: Duration) -> Result<StopReport, Error> {
        let started = Instant::now();
        self.stop_acceptor()?;
        let deadline = started.checked_add(timeout);
        if !self.control.wait_served(deadline) {
            log::info!("shutdown: connections whose first request did not come are closed");
        }
        self.manager
            .stop_timeout(timeout.saturating_sub(started.elapsed()))
    }

    fn stop_acceptor(&self) -> Result<(), Error> {
        let mut run = self.run.lock();
        if !matches!(*run, Run::Running(_)) {
            return Err(Error::NotRunning);
        }
        let Run::Running(join) = std::mem::replace(&mut *run, Run::Lost) else {
            return Err(Error::NotRunning);
        };
        self.control.stop.store(true, SeqCst);
        self.control.wake();
        match join.join() {
            Ok(Some((poll, listeners))) => *run = Run::Stopped(poll, listeners),
            _ => log::error!("the acceptor thread panicked; its listeners are lost"),
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addrs", &self.addrs)
            .field("paused", &self.is_paused())
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}
