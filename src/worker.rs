//! A worker: one named OS thread that serves one connection at a time.
//!
//! Life of a worker: spawned (idle, or with a first stream in its channel) →
//! waits on its channel → serves a stream until it closes → takes a queued
//! stream, or goes back on the idle stack → … until the reaper or
//! [`Manager::stop`](crate::Manager::stop) sends [`Job::Exit`], or it retires
//! itself (stopping, or surplus after `max_workers` was lowered).

use std::any::Any;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::config::Config;
use crate::conn::{Conn, is_timeout};
use crate::handler::Handler;
use crate::manager::{CURRENT_MANAGER, Incoming, Phase, Queued, Shared, State, Unserved};
use crate::stats::{ByteCounters, CloseReason, RejectReason};

/// What a worker's channel carries.
pub(crate) enum Job {
    /// Serve this stream.
    Serve(Incoming),
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

/// The handler with its `State` type erased, so that [`Manager`](crate::Manager)
/// need not be generic. One virtual call per connection; the read loop inside
/// is monomorphic.
pub(crate) trait Serve: Send + Sync {
    /// Serves `stream` until it closes; counts the close.
    fn serve(&self, stream: &TcpStream, ctx: &mut Ctx<'_>);
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
}

impl Ctx<'_> {
    /// Picks up a new configuration if `set_config` changed it, and applies
    /// it to the stream and buffer. Returns `true` when the socket timeouts
    /// must be set again.
    fn refresh_config(&mut self) -> bool {
        if !self
            .shared
            .refresh_config(&mut self.generation, &mut self.config)
        {
            return false;
        }
        self.buf.resize(self.config.buffer_size, 0);
        true
    }

    /// Counts the close, then shuts the socket down: whoever sees the
    /// connection end also sees it counted.
    fn close(&self, stream: &TcpStream, reason: CloseReason) {
        self.shared.counters.close(reason);
        let _ = stream.shutdown(Shutdown::Both);
    }

    fn apply_timeouts(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_read_timeout(self.config.read_deadline)?;
        stream.set_write_timeout(self.config.write_deadline)
    }

    /// Makes a new stream ready to serve: blocking, with the configured
    /// timeouts. A `fresh` one is blocking and has no timeouts already, so
    /// only the timeouts that are set cost a system call.
    fn prepare(&self, stream: &TcpStream, fresh: bool) -> io::Result<()> {
        if !fresh {
            stream.set_nonblocking(false)?;
            return self.apply_timeouts(stream);
        }
        if self.config.read_deadline.is_some() {
            stream.set_read_timeout(self.config.read_deadline)?;
        }
        if self.config.write_deadline.is_some() {
            stream.set_write_timeout(self.config.write_deadline)?;
        }
        Ok(())
    }
}

impl<H: Handler> Serve for H {
    fn serve(&self, stream: &TcpStream, ctx: &mut Ctx<'_>) {
        let mut state = match catch_unwind(AssertUnwindSafe(|| self.open(stream))) {
            Ok(state) => state,
            Err(panic) => {
                log_panic("open", &*panic);
                ctx.close(stream, CloseReason::Panic);
                return;
            }
        };
        let reason = read_loop(self, stream, &mut state, ctx);
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
        ctx.close(stream, reason);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.closed(state, reason))) {
            log_panic("closed", &*panic);
        }
    }
}

/// Reads and calls the handler until the connection must close.
fn read_loop<H: Handler>(
    handler: &H,
    stream: &TcpStream,
    state: &mut H::State,
    ctx: &mut Ctx<'_>,
) -> CloseReason {
    let mut kept = 0;
    loop {
        if ctx.refresh_config() && ctx.apply_timeouts(stream).is_err() {
            return CloseReason::Error;
        }
        if kept >= ctx.buf.len() {
            return CloseReason::Overflow;
        }
        let n = match (&*stream).read(&mut ctx.buf[kept..]) {
            Ok(0) => return CloseReason::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return CloseReason::ReadDeadline,
            Err(_) => return CloseReason::Error,
        };
        ctx.slot.bytes.bytes_in.fetch_add(n as u64, Relaxed);
        let len = kept + n;
        let mut conn = Conn::new(stream, state, &ctx.slot.bytes, ctx.config.write_deadline);
        let data = &ctx.buf[..len];
        match catch_unwind(AssertUnwindSafe(|| handler.data(&mut conn, data))) {
            Ok(Ok(())) => {}
            Ok(Err(_)) if conn.write_timed_out() => return CloseReason::WriteDeadline,
            Ok(Err(_)) => return CloseReason::Error,
            Err(panic) => {
                log_panic("data", &*panic);
                return CloseReason::Panic;
            }
        }
        if conn.close_requested() {
            return CloseReason::Handler;
        }
        kept = conn.kept().min(len);
        if kept > 0 {
            ctx.buf.copy_within(len - kept..len, 0);
        }
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

/// What a worker does after a connection closes.
enum Next {
    Serve(Incoming),
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
        };
        while let Ok(Job::Serve(stream)) = self.rx.recv() {
            let mut next = Next::Serve(stream);
            while let Next::Serve(stream) = next {
                self.serve(stream, &mut ctx);
                next = self.after_serve();
            }
            if let Next::Exit = next {
                break;
            }
        }
        log::debug!("worker {} exits", self.id);
    }

    fn serve(&self, incoming: Incoming, ctx: &mut Ctx<'_>) {
        let Incoming {
            stream,
            ticket,
            fresh,
        } = incoming;
        let shared = &*self.shared;
        shared.counters.connections.fetch_add(1, Relaxed);
        let stream = Arc::new(stream);
        *self.slot.conn.lock() = Some(Arc::clone(&stream));
        // `stop` sets `stopping` and then shuts down every slot's stream:
        // a stream registered too late for that sees the flag here.
        if shared.stopping.load(SeqCst) {
            ctx.close(&stream, CloseReason::Stop);
        } else {
            ctx.refresh_config();
            match ctx.prepare(&stream, fresh) {
                Ok(()) => shared.service.serve(&stream, ctx),
                Err(_) => ctx.close(&stream, CloseReason::Error),
            }
        }
        *self.slot.conn.lock() = None;
        // The stream is closed (shut down above, its fd released with the
        // last Arc here): only now give up its place under the limits.
        drop(stream);
        drop(ticket);
    }

    /// Under the manager's lock: retire, take a queued stream, or go idle.
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
            shared.reaper_wake.notify_one();
            log::debug!("worker {} retires", self.id);
            return Next::Exit;
        }
        let (fresh, expired) = take_queued(&mut state, Instant::now());
        if fresh.is_none() {
            state.idle.push_back(Idle {
                id: self.id,
                tx: self.tx.clone(),
                since: Instant::now(),
            });
            if state.idle.len() == 1 {
                shared.reaper_wake.notify_one();
            }
        }
        drop(state);
        expired.close(shared);
        match fresh {
            Some(stream) => Next::Serve(stream),
            None => Next::Wait,
        }
    }
}

/// Pops the queued streams that waited longer than `queue_timeout` (they are
/// at the front: the queue is FIFO).
pub(crate) fn expire_queued(state: &mut State, now: Instant) -> Unserved {
    let mut expired = Unserved::new(RejectReason::QueueTimeout);
    let timeout = state.config.queue_timeout;
    while let Some(Queued { since, .. }) = state.queue.front() {
        if now.duration_since(*since) < timeout {
            break;
        }
        if let Some(Queued { incoming, .. }) = state.queue.pop_front() {
            if expired.streams.is_empty() {
                expired.reply = state.config.busy_reply.clone();
            }
            expired.streams.push(incoming);
        }
    }
    expired
}

/// The oldest queued stream still within `queue_timeout`, and the expired
/// ones passed on the way.
fn take_queued(state: &mut State, now: Instant) -> (Option<Incoming>, Unserved) {
    let expired = expire_queued(state, now);
    (state.queue.pop_front().map(|q| q.incoming), expired)
}
