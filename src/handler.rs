//! The [`Handler`] trait: the user's code that a worker calls for every read.

use std::io;

use crate::conn::Conn;
use crate::stats::CloseReason;

/// Code that serves connections: called by a worker with the bytes of every
/// read.
///
/// Most users pass a closure to [`Manager::new`](crate::Manager::new) (no
/// state) or use [`with_state`] (state per connection); implement the trait
/// for full control, including the [`closed`](Handler::closed) hook, and pass
/// it to [`Manager::with_handler`](crate::Manager::with_handler).
///
/// Calls for one connection are never concurrent, and always on one worker
/// thread; calls for different connections run in parallel, so the handler
/// is `Sync`. A panic in any method is caught: the connection is closed and
/// counted as [`CloseReason::Panic`], and the worker goes on.
///
/// ```
/// use std::io::{self, Write};
/// use pool_manager::{CloseReason, Conn, Handler};
///
/// /// Greets each client, then answers with the running total of the
/// /// bytes it sent.
/// struct Tally;
///
/// impl Handler for Tally {
///     type State = u64;
///
///     fn open(&self, conn: &mut Conn<'_>) -> u64 {
///         // The server speaks first.
///         let _ = conn.write_all(b"send me bytes\n");
///         0
///     }
///
///     fn data(&self, conn: &mut Conn<'_, u64>, data: &[u8]) -> io::Result<()> {
///         *conn.state() += data.len() as u64;
///         let total = *conn.state();
///         writeln!(conn, "{total}")
///     }
///
///     fn closed(&self, total: u64, reason: CloseReason) {
///         log::debug!("client sent {total} bytes, closed: {reason:?}");
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// What the handler keeps per connection.
    type State: Send + 'static;

    /// Called once as soon as the pool takes the connection — after its
    /// PROXY protocol header and its TLS handshake, if any — before its
    /// first read, whether or not its client has sent anything: the server
    /// may speak first. Through `conn` it may write (a greeting, a
    /// handshake), take a [`Handle`](crate::Handle), read
    /// [`peer_addr`](Conn::peer_addr) and `tls()`, or
    /// [`close`](Conn::close) the connection (after what it wrote).
    /// `keep` means nothing here.
    ///
    /// If it panics, the connection is closed (counted as
    /// [`CloseReason::Panic`]) and [`closed`](Handler::closed) is not
    /// called: there is no state.
    fn open(&self, conn: &mut Conn<'_>) -> Self::State;

    /// Called with the bytes of every read (after any bytes kept by
    /// [`Conn::keep`] in the previous call). `data` is never empty.
    ///
    /// # Errors
    ///
    /// Returning an error closes the connection at once, counted as
    /// [`CloseReason::Error`] (or [`CloseReason::Reset`] when a `Conn`
    /// write found the connection reset by its client). So does a failed
    /// `Conn` write, whatever the handler returns: nothing more can be
    /// written.
    fn data(&self, conn: &mut Conn<'_, Self::State>, data: &[u8]) -> io::Result<()>;

    /// Called once after the connection has been closed, with its state and
    /// the reason, if [`open`](Handler::open) made one (a connection closed
    /// before — in its TLS handshake, say — has none). The default does
    /// nothing.
    ///
    /// It runs on the thread that closed the connection: its worker, or —
    /// for a parked or queued connection closed by a deadline, the queue
    /// timeout or a stop — the manager thread or the thread calling
    /// [`stop`](crate::Manager::stop). Keep it short: on the manager thread
    /// it delays every parked connection's wake-up. A
    /// [`stop`](crate::Manager::stop) from it returns an error
    /// ([`Error::StopFromWorker`](crate::Error::StopFromWorker), or
    /// [`Error::Stopping`](crate::Error::Stopping) during a stop) instead of
    /// waiting for itself.
    fn closed(&self, state: Self::State, reason: CloseReason) {
        let _ = (state, reason);
    }
}

/// A closure without state, as given to [`Manager::new`](crate::Manager::new).
pub(crate) struct FnHandler<F>(pub(crate) F);

impl<F> Handler for FnHandler<F>
where
    F: Fn(&mut Conn<'_>, &[u8]) -> io::Result<()> + Send + Sync + 'static,
{
    type State = ();

    fn open(&self, _conn: &mut Conn<'_>) {}

    fn data(&self, conn: &mut Conn<'_>, data: &[u8]) -> io::Result<()> {
        (self.0)(conn, data)
    }
}

/// A [`Handler`] made of two closures: `init` creates each connection's state,
/// `data` serves each read. Build it with [`with_state`].
#[derive(Debug, Clone)]
pub struct WithState<I, F> {
    init: I,
    data: F,
}

/// A handler with a state per connection: `init` makes it when the pool
/// takes the connection (as [`Handler::open`]: it may write a greeting),
/// `data` gets it through [`Conn::state`] at every read.
///
/// ```
/// use std::io::Write;
/// use pool_manager::{with_state, Config, Conn, Manager};
///
/// // Numbers each line a client sends.
/// let handler = with_state(
///     |_conn| 0u64,
///     |conn: &mut Conn<'_, u64>, data: &[u8]| {
///         for _line in data.split(|&b| b == b'\n').skip(1) {
///             *conn.state() += 1;
///             let n = *conn.state();
///             writeln!(conn, "line {n}")?;
///         }
///         Ok(())
///     },
/// );
/// let manager = Manager::with_handler(Config::default(), handler)?;
/// # Ok::<(), pool_manager::ConfigError>(())
/// ```
pub fn with_state<S, I, F>(init: I, data: F) -> WithState<I, F>
where
    S: Send + 'static,
    I: Fn(&mut Conn<'_>) -> S + Send + Sync + 'static,
    F: Fn(&mut Conn<'_, S>, &[u8]) -> io::Result<()> + Send + Sync + 'static,
{
    WithState { init, data }
}

impl<S, I, F> Handler for WithState<I, F>
where
    S: Send + 'static,
    I: Fn(&mut Conn<'_>) -> S + Send + Sync + 'static,
    F: Fn(&mut Conn<'_, S>, &[u8]) -> io::Result<()> + Send + Sync + 'static,
{
    type State = S;

    fn open(&self, conn: &mut Conn<'_>) -> S {
        (self.init)(conn)
    }

    fn data(&self, conn: &mut Conn<'_, S>, data: &[u8]) -> io::Result<()> {
        (self.data)(conn, data)
    }
}
