//! A worker: one named OS thread that serves one connection at a time.
//!
//! Life of a worker: spawned (idle, or with a first piece of work in its
//! channel) → waits on its channel → serves a connection until it closes,
//! or, in parked mode, until it has been quiet for `park_after` (then the
//! connection is parked with the manager thread) → takes queued work, or
//! goes back on the idle stack → … until the manager thread or
//! [`Manager::stop`](crate::Manager::stop) sends [`Job::Exit`], or it
//! retires itself (stopping, or surplus after `max_workers` was lowered).

use std::any::Any;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::config::Config;
use crate::conn::{Conn, is_timeout, refuse};
use crate::handler::Handler;
use crate::manager::{CURRENT_MANAGER, Incoming, Phase, PollerHandle, Shared, State, Unserved};
use crate::park;
use crate::reaper::expire_queued;
use crate::session::Session;
use crate::stats::{ByteCounters, CloseReason, Counters};

/// Work for a worker.
pub(crate) enum Work {
    /// A stream the pool has just taken.
    New(Incoming),
    /// A parked connection whose client sent again.
    Resumed(Box<Session>),
}

/// What a worker's channel carries.
pub(crate) enum Job {
    /// Serve this.
    Serve(Work),
    /// Return: the worker has been retired (it is idle).
    Exit,
}

/// The part of a worker the manager can reach while it serves.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The connection being served, so that `stop` can shut it down and wake
    /// a worker blocked in a read.
    conn: Mutex<Option<Arc<TcpStream>>>,
    /// Bytes this worker has moved; only this worker adds to them.
    pub(crate) bytes: ByteCounters,
}

impl Slot {
    /// Shuts the served connection down, if there is one; `true` if there was.
    pub(crate) fn shutdown(&self, how: Shutdown) -> bool {
        match &*self.conn.lock() {
            Some(stream) => {
                let _ = stream.shutdown(how);
                true
            }
            None => false,
        }
    }
}

/// An idle worker, on the manager's idle stack.
pub(crate) struct Idle {
    pub(crate) id: u64,
    pub(crate) tx: Sender<Job>,
    pub(crate) since: Instant,
}

/// How a worker's turn with a connection ended.
pub(crate) enum Served {
    /// Closed, counted, the handler's `closed` hook run.
    Closed(Box<Session>),
    /// Quiet for `park_after`: to be parked, its kept bytes in it.
    Parked(Box<Session>),
}

/// The handler with its `State` type erased, so that [`Manager`](crate::Manager)
/// need not be generic. One virtual call per turn on a worker; the read loop
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
    shared: &'a Shared,
    slot: &'a Slot,
    /// The read buffer: owned by the worker, reused for every read.
    buf: Vec<u8>,
    config: Arc<Config>,
    /// The `Shared::generation` that `config` belongs to.
    generation: u64,
    /// The manager thread's registry and waker: set before this run's
    /// workers start, and the same for their whole life.
    poller: Option<Arc<PollerHandle>>,
}

impl Ctx<'_> {
    /// Picks up a new configuration if `set_config` changed it, and sizes
    /// the buffer to it.
    fn refresh_config(&mut self) {
        if self
            .shared
            .refresh_config(&mut self.generation, &mut self.config)
        {
            self.buf.resize(self.config.buffer_size, 0);
        }
    }

    /// Counts the close, then shuts the socket down: whoever sees the
    /// connection end also sees it counted.
    fn close(&self, stream: &TcpStream, reason: CloseReason) {
        self.shared.counters.close(reason);
        let _ = stream.shutdown(Shutdown::Both);
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
        let mut state: Box<dyn Any + Send> = match session.state.take() {
            Some(state) => state,
            None => match catch_unwind(AssertUnwindSafe(|| self.open(&session.stream))) {
                Ok(state) => Box::new(state),
                Err(panic) => {
                    log_panic("open", &*panic);
                    ctx.close(&session.stream, CloseReason::Panic);
                    return Served::Closed(session);
                }
            },
        };
        // Only this handler makes states for this manager: never fails.
        let Some(typed) = state.downcast_mut::<H::State>() else {
            ctx.close(&session.stream, CloseReason::Error);
            return Served::Closed(session);
        };
        let reason = match read_loop(self, &mut session, typed, ctx) {
            Outcome::Park => {
                session.state = Some(state);
                return Served::Parked(session);
            }
            Outcome::Close(reason) => reason,
        };
        let reason = if ctx.shared.stopping.load(Relaxed)
            && matches!(
                reason,
                CloseReason::Eof | CloseReason::ReadDeadline | CloseReason::Error
            ) {
            // The read was ended by `stop` shutting the socket down.
            CloseReason::Stop
        } else {
            reason
        };
        ctx.close(&session.stream, reason);
        if let Ok(state) = state.downcast::<H::State>() {
            closed_hook(self, *state, reason);
        }
        Served::Closed(session)
    }

    fn close(&self, session: Box<Session>, reason: CloseReason, reply: &[u8], counters: &Counters) {
        counters.close(reason);
        refuse(&session.stream, reply);
        let Session { state, .. } = *session;
        if let Some(Ok(state)) = state.map(|s| s.downcast::<H::State>()) {
            closed_hook(self, *state, reason);
        }
    }
}

fn closed_hook<H: Handler>(handler: &H, state: H::State, reason: CloseReason) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handler.closed(state, reason))) {
        log_panic("closed", &*panic);
    }
}

/// Why a read loop ended.
enum Outcome {
    Close(CloseReason),
    /// Quiet for `park_after`, or others wait for a worker: park it.
    Park,
}

/// Reads and calls the handler until the connection must close or park.
fn read_loop<H: Handler>(
    handler: &H,
    session: &mut Session,
    state: &mut H::State,
    ctx: &mut Ctx<'_>,
) -> Outcome {
    let stream: &TcpStream = &session.stream;
    // Bytes kept before the connection was parked come first.
    let mut kept = session.kept.len();
    if kept > 0 {
        if kept >= ctx.buf.len() {
            return Outcome::Close(CloseReason::Overflow);
        }
        ctx.buf[..kept].copy_from_slice(&session.kept);
        session.kept = Vec::new();
    }
    // Whether the handler ran in this turn: a connection that woke up is
    // read before it may park again.
    let mut served = false;
    // A woken connection is judged as of when its client sent, and the
    // bytes that woke it count as arrived then (it may have waited in the
    // queue since).
    let mut arrived = session.woken_at.take();
    let mut now = arrived.unwrap_or_else(Instant::now);
    loop {
        ctx.refresh_config();
        let config = &*ctx.config;
        if set_timeout(
            stream,
            &mut session.write_timeout,
            config.write_deadline,
            false,
        )
        .is_err()
        {
            return Outcome::Close(CloseReason::Error);
        }
        if kept >= ctx.buf.len() {
            return Outcome::Close(CloseReason::Overflow);
        }
        if let Err(reason) = session.timing.check(now, config) {
            return Outcome::Close(reason);
        }
        // Past `check`, a deadline is after `now`: the wait is not zero.
        let deadline = session.timing.deadline(config);
        let mut wait = deadline.map(|(at, _)| at.duration_since(now));
        if let Some(park_after) = config.park_after {
            if served && ctx.shared.queued.load(Relaxed) > 0 {
                // Others wait for a worker: let them have this one.
                session.kept = ctx.buf[..kept].to_vec();
                return Outcome::Park;
            }
            wait = Some(wait.map_or(park_after, |w| w.min(park_after)));
        }
        if served && session.registered {
            // About to wait in `read`: the client's bytes must wake this
            // worker only, not the manager thread too.
            if let Some(poller) = &ctx.poller {
                let _ = park::deregister(&poller.registry, stream);
            }
            session.registered = false;
        }
        if set_timeout(stream, &mut session.read_timeout, wait, true).is_err() {
            return Outcome::Close(CloseReason::Error);
        }
        let n = match (&*stream).read(&mut ctx.buf[kept..]) {
            Ok(0) => return Outcome::Close(CloseReason::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                now = Instant::now();
                continue;
            }
            Err(e) if is_timeout(&e) => {
                now = Instant::now();
                arrived = None;
                let due = deadline.is_some_and(|(at, _)| now >= at);
                if config.park_after.is_some() && !due {
                    session.kept = ctx.buf[..kept].to_vec();
                    return Outcome::Park;
                }
                continue; // `check` closes it, with the defence that fired
            }
            Err(_) => return Outcome::Close(CloseReason::Error),
        };
        ctx.slot.bytes.bytes_in.fetch_add(n as u64, Relaxed);
        let at = arrived.take();
        if let Err(reason) = session
            .timing
            .on_bytes(n, || at.unwrap_or_else(Instant::now), config)
        {
            return Outcome::Close(reason);
        }
        let len = kept + n;
        let mut conn = Conn::new(stream, state, &ctx.slot.bytes, config.write_deadline);
        let data = &ctx.buf[..len];
        match catch_unwind(AssertUnwindSafe(|| handler.data(&mut conn, data))) {
            Ok(Ok(())) => {}
            Ok(Err(_)) if conn.write_timed_out() => {
                return Outcome::Close(CloseReason::WriteDeadline);
            }
            Ok(Err(_)) => return Outcome::Close(CloseReason::Error),
            Err(panic) => {
                log_panic("data", &*panic);
                return Outcome::Close(CloseReason::Panic);
            }
        }
        if conn.close_requested() {
            return Outcome::Close(CloseReason::Handler);
        }
        kept = conn.kept().min(len);
        if kept > 0 {
            ctx.buf.copy_within(len - kept..len, 0);
        }
        now = Instant::now();
        session.timing.after_handler(kept, now);
        served = true;
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

/// Everything a worker thread starts with.
pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    /// The manager run ([`State::run`]) this worker belongs to.
    pub(crate) run: u64,
    pub(crate) slot: Arc<Slot>,
    pub(crate) tx: Sender<Job>,
    pub(crate) rx: Receiver<Job>,
}

/// What a worker does after a connection closes or parks.
enum Next {
    Serve(Work),
    Wait,
    Exit,
}

impl Worker {
    /// The worker thread's body.
    pub(crate) fn run(self) {
        CURRENT_MANAGER.with(|m| m.set(self.shared.id));
        let (config, generation) = {
            let state = self.shared.state.lock();
            (Arc::clone(&state.config), state.generation)
        };
        let mut ctx = Ctx {
            shared: &self.shared,
            slot: &self.slot,
            buf: vec![0; config.buffer_size],
            config,
            generation,
            poller: self.shared.poller(),
        };
        while let Ok(Job::Serve(work)) = self.rx.recv() {
            let mut next = Next::Serve(work);
            while let Next::Serve(work) = next {
                let to_park = self.serve(work, &mut ctx);
                next = self.after_serve();
                // Parked once this worker is idle again: if the client
                // answers at once, the connection can come straight back
                // to it rather than to a new thread.
                if let Some(session) = to_park {
                    self.park(session, &ctx);
                }
            }
            if let Next::Exit = next {
                break;
            }
        }
        log::debug!("worker {} exits", self.id);
    }

    /// Serves `work` until it closes, or returns it to be parked.
    fn serve(&self, work: Work, ctx: &mut Ctx<'_>) -> Option<Box<Session>> {
        let shared = &*self.shared;
        let mut session = match work {
            Work::New(incoming) => {
                shared.counters.connections.fetch_add(1, Relaxed);
                Session::new(
                    incoming.stream,
                    incoming.ticket,
                    incoming.fresh,
                    incoming.accepted,
                )
            }
            Work::Resumed(session) => session,
        };
        *self.slot.conn.lock() = Some(Arc::clone(&session.stream));
        // `stop` sets `stopping` and then shuts down every slot's stream:
        // a stream registered too late for that sees the flag here.
        let served = if shared.stopping.load(SeqCst) {
            shared.close_sessions([session], CloseReason::Stop);
            None
        } else if !session.blocking && session.stream.set_nonblocking(false).is_err() {
            ctx.close(&session.stream, CloseReason::Error);
            Some(Served::Closed(session))
        } else {
            session.blocking = true;
            ctx.refresh_config();
            Some(shared.service.serve(session, ctx))
        };
        *self.slot.conn.lock() = None;
        match served {
            Some(Served::Parked(session)) => Some(session),
            // The stream is closed (shut down, its fd released with the
            // last Arc here), and only then its place under the limits
            // given back (the ticket is dropped after the stream).
            Some(Served::Closed(session)) => {
                drop(session);
                None
            }
            None => None,
        }
    }

    /// Hands a quiet connection to the manager thread; closes it if it
    /// cannot be parked (stopping, or the poller refused it).
    fn park(&self, session: Box<Session>, ctx: &Ctx<'_>) {
        let shared = &*self.shared;
        let parked = shared.park(ctx.poller.as_deref(), session, &ctx.config, ctx.generation);
        if let Err((session, reason)) = parked {
            if reason == CloseReason::Stop {
                // The stop began after this worker went idle: it counted
                // neither this worker as busy nor the connection as parked.
                shared.closed_at_stop.fetch_add(1, Relaxed);
            }
            shared.close_sessions([session], reason);
        }
    }

    /// Under the manager's lock: retire, take queued work, or go idle.
    fn after_serve(&self) -> Next {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.run != self.run {
            // Abandoned by a `stop_timeout` that gave up on this thread.
            return Next::Exit;
        }
        if state.phase != Phase::Running || state.total > state.config.max_workers {
            if let Some(join) = state.remove_worker(self.id, shared) {
                state.exited.push(join);
            }
            shared.workers_changed.notify_all();
            drop(state);
            shared.wake_manager_thread();
            log::debug!("worker {} retires", self.id);
            return Next::Exit;
        }
        let (next, expired) = take_queued(&mut state, Instant::now());
        if next.is_none() {
            state.idle.push_back(Idle {
                id: self.id,
                tx: self.tx.clone(),
                since: Instant::now(),
            });
            if state.idle.len() == 1 {
                shared.wake_manager_thread();
            }
        }
        drop(state);
        expired.close(shared);
        match next {
            Some(work) => Next::Serve(work),
            None => Next::Wait,
        }
    }
}

/// The oldest queued work still within `queue_timeout`, and the expired
/// work passed on the way.
fn take_queued(state: &mut State, now: Instant) -> (Option<Work>, Unserved) {
    let expired = expire_queued(state, now);
    (state.queue.pop_front().map(|q| q.work), expired)
}
