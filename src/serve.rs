//! Serving one connection on a worker: the PROXY header first
//! (`header.rs`), then the read loop (`read_loop.rs`) that reads into the
//! worker's buffer, calls the handler (`call.rs`), writes what waits, and
//! says whether the connection closes or goes back to the poller.

mod call;
mod header;
mod input;
mod read_loop;

use std::any::Any;
use std::io;
use std::net::TcpStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::config::Config;
use crate::epoll::Bell;
use crate::handler::Handler;
use crate::session::Session;
use crate::stats::{ByteCounters, CloseReason, Counters};
use crate::sync::AtomicU64;

use header::{Header, read_header};
use read_loop::{Outcome, read_loop};

/// Whether every wait for a connection's bytes goes through
/// [`wait_socket`](crate::epoll::wait_socket) with the worker's bell,
/// rather than a blocking read under `SO_RCVTIMEO`. On Windows a shutdown
/// of the socket (how `stop` wakes a worker waiting for its connection)
/// does not end a blocking read or `WSAPoll`: the bell, which `stop` rings
/// too, does. The worker makes its bell before it serves (`worker.rs`).
pub(crate) const WAITS_ON_BELL: bool = cfg!(windows);

/// A read that waits up to `wait` (`None`: without a limit) for the
/// socket or the worker's `bell`, then reads without waiting: what came,
/// or "would block" if nothing did (a timeout, to the caller). See
/// [`WAITS_ON_BELL`].
#[cfg_attr(not(windows), allow(dead_code))]
fn wait_then_read(
    stream: &TcpStream,
    bell: Option<&Bell>,
    wait: Option<Duration>,
    buf: &mut [u8],
) -> io::Result<usize> {
    let woke = crate::epoll::wait_socket(stream, true, false, bell, wait)?;
    if let (true, Some(bell)) = (woke.rung, bell) {
        // Before the read: a later ring rings again.
        bell.clear();
    }
    crate::epoll::read_now(stream, buf)
}

/// What the read loop needs of the pool around it.
pub(crate) trait Pool {
    /// Replaces `config` with the one in force if `set_config` changed it
    /// since `generation`; `true` if it did.
    fn refresh_config(&self, generation: &mut u64, config: &mut Arc<Config>) -> bool;
    fn counters(&self) -> &Counters;
    /// Whether a stop is under way.
    fn stopping(&self) -> bool;
    /// Whether other connections wait for a worker: queued, or ready in the
    /// poller and not taken.
    fn others_wait(&self) -> bool;
    /// Stops the poller reporting `stream` while a worker waits for it in
    /// a blocking read (parking re-arms it).
    fn disarm(&self, stream: &crate::stream::Stream);
    /// The bytes waiting for sockets passed `max_buffered_bytes`, and the
    /// caller's connection holds `mine`: closes the parked connection that
    /// holds the most if it holds more (counted as `Evicted`), and says
    /// whether the caller's must go instead.
    fn evict_largest(&self, mine: usize) -> bool;
}

/// How a worker's turn with a connection ended.
pub(crate) enum Served {
    /// Closed, counted, the handler's `closed` hook run.
    Closed(Box<Session>),
    /// Quiet for `park_after`: to be parked, its kept bytes in it.
    Parked(Box<Session>),
}

/// The handler with its `State` type erased, so that the pool need not be
/// generic. One virtual call per turn on a worker; the read loop
/// inside is monomorphic.
pub(crate) trait Serve: Send + Sync {
    /// Serves `session` until it closes or must park.
    fn serve(&self, session: Box<Session>, ctx: &mut Ctx<'_>) -> Served;

    /// Closes a connection that is not on a worker (parked, or queued after
    /// waking): counts `reason`, writes `reply` without blocking, shuts the
    /// socket down and runs the handler's `closed` hook.
    fn close(&self, session: Box<Session>, reason: CloseReason, reply: &[u8], counters: &Counters);
}

/// What a worker carries from connection to connection.
pub(crate) struct Ctx<'a> {
    pub(crate) pool: &'a dyn Pool,
    /// The worker's own counters.
    pub(crate) bytes: &'a ByteCounters,
    /// The read buffer: owned by the worker, reused for every read.
    pub(crate) buf: Vec<u8>,
    pub(crate) config: Arc<Config>,
    /// The configuration generation that `config` belongs to.
    pub(crate) generation: u64,
    /// The generation in force (`Shared::generation`): read without a
    /// call through `pool` (some 100 instructions a request for three
    /// checks that way; `benches/callgrind.sh`).
    pub(crate) generation_now: &'a AtomicU64,
    /// The worker's bell, made when it first waits for a connection that
    /// has handles (see `handle.rs`).
    pub(crate) bell: Option<Arc<Bell>>,
}

impl Ctx<'_> {
    /// Picks up a new configuration if `set_config` changed it, and sizes
    /// the buffer to it.
    #[inline]
    pub(crate) fn refresh_config(&mut self) {
        if self.generation_now.load(Relaxed) != self.generation {
            self.pick_up_config();
        }
    }

    /// [`refresh_config`](Self::refresh_config) when the generation moved.
    #[cold]
    #[inline(never)]
    fn pick_up_config(&mut self) {
        if self
            .pool
            .refresh_config(&mut self.generation, &mut self.config)
        {
            self.buf.resize(self.config.buffer_size, 0);
        }
    }

    /// The worker's bell, made on first use.
    pub(crate) fn bell(&mut self) -> io::Result<Arc<Bell>> {
        if let Some(bell) = &self.bell {
            return Ok(Arc::clone(bell));
        }
        let bell = Arc::new(Bell::new()?);
        self.bell = Some(Arc::clone(&bell));
        Ok(bell)
    }

    /// Counts the close, then ends the connection (on TLS with
    /// `close_notify`, sent without waiting) and shuts the socket down:
    /// whoever sees the connection end also sees it counted.
    pub(crate) fn close(&self, session: &mut Session, reason: CloseReason) {
        self.pool.counters().close(reason);
        session.end(&[]);
    }
}

/// Sets a socket timeout (`read`: `SO_RCVTIMEO`, else `SO_SNDTIMEO`) unless
/// `current` says it is set already.
fn set_timeout(
    stream: &TcpStream,
    current: &mut Option<Option<Duration>>,
    wanted: Option<Duration>,
    read: bool,
) -> io::Result<()> {
    if *current != Some(wanted) {
        if read {
            stream.set_read_timeout(wanted)?;
        } else {
            stream.set_write_timeout(wanted)?;
        }
        *current = Some(wanted);
    }
    Ok(())
}

impl<H: Handler> Serve for H {
    fn serve(&self, mut session: Box<Session>, ctx: &mut Ctx<'_>) -> Served {
        if session.timing.header_pending() {
            match read_header(&mut session, ctx) {
                Header::Read => {}
                Header::Park => return Served::Parked(session),
                Header::Close(reason) => {
                    let reason = stop_or(ctx, reason);
                    ctx.pool.counters().close(reason);
                    let reply = match reason {
                        CloseReason::PerIpLimit => ctx.config.plain_busy_reply(),
                        _ => &[],
                    };
                    session.end(reply);
                    return Served::Closed(session);
                }
            }
        }
        // Its state, once `Handler::open` ran (on the first pass of the read
        // loop that is past any TLS handshake).
        let mut state = session.state.take();
        let (reason, failure) = match read_loop(self, &mut session, &mut state, ctx) {
            Outcome::Park => {
                session.state = state;
                return Served::Parked(session);
            }
            Outcome::Close(reason) => (reason, None),
            Outcome::Handshake(failure) => (CloseReason::Handshake, failure),
        };
        let (reason, failure) = match stop_or(ctx, reason) {
            CloseReason::Stop => (CloseReason::Stop, None),
            _ => (reason, failure),
        };
        match failure {
            // A failed handshake: counted as a `handshake` close, by cause.
            Some(failure) => {
                ctx.pool.counters().close_handshake(failure);
                session.end(&[]);
            }
            None => ctx.close(&mut session, reason),
        }
        if let Some(Ok(state)) = state.map(|s| s.downcast::<H::State>()) {
            closed_hook(self, *state, reason);
        }
        Served::Closed(session)
    }

    fn close(
        &self,
        mut session: Box<Session>,
        reason: CloseReason,
        reply: &[u8],
        counters: &Counters,
    ) {
        counters.close(reason);
        session.end(reply);
        let Session { state, .. } = *session;
        if let Some(Ok(state)) = state.map(|s| s.downcast::<H::State>()) {
            closed_hook(self, *state, reason);
        }
    }
}

/// `reason`, or `Stop` if the read it ended was ended by `stop` shutting
/// the socket down.
fn stop_or(ctx: &Ctx<'_>, reason: CloseReason) -> CloseReason {
    let by_stop = matches!(
        reason,
        CloseReason::Eof
            | CloseReason::ReadDeadline
            | CloseReason::Error
            | CloseReason::Reset
            | CloseReason::Handshake
            | CloseReason::ProxyHeader
    );
    if by_stop && ctx.pool.stopping() {
        CloseReason::Stop
    } else {
        reason
    }
}

fn closed_hook<H: Handler>(handler: &H, state: H::State, reason: CloseReason) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handler.closed(state, reason))) {
        log_panic("closed", &*panic);
    }
}

/// The close reason of a read that failed with `e`.
fn failed_read(e: &io::Error) -> CloseReason {
    if e.kind() == io::ErrorKind::ConnectionReset {
        CloseReason::Reset
    } else {
        CloseReason::Error
    }
}

fn log_panic(method: &str, panic: &(dyn Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    log::error!("handler panicked in {method}: {message}; connection closed");
}
