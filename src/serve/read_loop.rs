//! The read loop of one turn: writes what waits for the socket, reads into
//! the worker's buffer, enforces the deadlines and defences, calls the
//! handler, and says whether the connection closes or goes back to the
//! poller.
//!
//! Each pass: [`write_step`] (take what handles sent, write what the socket
//! takes, decide whether the connection may be read), the deadlines, then
//! [`wait_step`] (read now, park, or wait), the read, and [`call`] (the
//! handler).

use std::any::Any;
use std::io::{self, Read};
use std::net::TcpStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::input::Input;
use super::{Ctx, failed_read, log_panic, set_timeout};
use crate::conn::{Conn, Parts};
use crate::epoll::{Woke, read_now, wait_socket};
use crate::handle::Wake;
use crate::handler::Handler;
use crate::outbound;
use crate::session::Session;
use crate::socket::is_timeout;
use crate::stats::{CloseReason, Failure};
use crate::tls::{Got, ReadError, TlsConn};

/// Why a read loop ended.
pub(super) enum Outcome {
    Close(CloseReason),
    /// A TLS handshake failed, for this cause (`None`: it timed out).
    Handshake(Option<Failure>),
    /// Quiet for `park_after`, or others wait for a worker, or its output
    /// waits for room in the socket: park it.
    Park,
}

/// What the output step leaves the loop to do.
struct Output {
    /// Bytes wait for the socket.
    pending: bool,
    /// Only write, do not read: more than `max_outbound_bytes` wait
    /// (backpressure), or it closes once they are written.
    write_only: bool,
}

/// What the wait step decided.
enum Step {
    /// Read; `wait`: in a blocking read, up to the socket's timeout.
    Read {
        wait: bool,
    },
    /// Look again (the socket or a handle's bell woke the worker).
    Again,
    End(Outcome),
}

/// Reads and calls the handler until the connection must close or park.
///
/// `state` is the handler's state, `None` until [`open`] made it: on the
/// first pass once the connection is past its TLS handshake, if any.
pub(super) fn read_loop<H: Handler>(
    handler: &H,
    session: &mut Session,
    state: &mut Option<Box<dyn Any + Send>>,
    ctx: &mut Ctx<'_>,
) -> Outcome {
    // Bytes kept before the connection was parked come first.
    let mut input = Input::restore(session, &mut ctx.buf);
    let mut pass = Pass {
        served: false,
        ready: std::mem::take(&mut session.ready),
        // A woken connection is judged as of when its client sent, and
        // the bytes that woke it count as arrived then (it may have
        // waited in the queue since).
        arrived: session.woken_at.take(),
        now: Instant::now(),
        // The event that began this turn may be room in the socket, or a
        // handle's wake: what waits is written first.
        flush: true,
    };
    pass.now = pass.arrived.unwrap_or(pass.now);
    loop {
        ctx.refresh_config();
        if let Err(reason) = input.fit(session, &ctx.buf, session.want) {
            return Outcome::Close(reason);
        }
        if state.is_none() && !session.timing.handshaking {
            if let Err(reason) = open(handler, session, state, ctx) {
                return Outcome::Close(reason);
            }
        }
        let output = match write_step(session, ctx, pass.now, std::mem::take(&mut pass.flush)) {
            Ok(output) => output,
            Err(reason) => return Outcome::Close(reason),
        };
        if let Err(reason) = account(session, ctx) {
            return Outcome::Close(reason);
        }
        let config = &*ctx.config;
        if let Err(reason) = session.timing.check(pass.now, config) {
            return Outcome::Close(reason);
        }
        // Past `check`, a deadline is after `now`: the wait is not zero.
        let deadline = session.timing.deadline(config);
        if handshake_write_timeout(session, ctx, deadline, pass.now).is_err() {
            return Outcome::Close(CloseReason::Error);
        }
        let wait = match wait_step(session, ctx, &output, deadline, &mut pass) {
            Step::Read { wait } => wait,
            Step::Again => continue,
            Step::End(outcome) => {
                if matches!(outcome, Outcome::Park) {
                    input.park(session, &ctx.buf);
                }
                return outcome;
            }
        };
        let config = &*ctx.config;
        let stream: &TcpStream = &session.stream;
        let read = read_once(
            stream,
            session.tls.as_mut(),
            input.space(&mut ctx.buf),
            wait,
            &mut session.early,
        );
        if session.timing.handshaking {
            session.timing.handshaking = session.tls.as_ref().is_some_and(TlsConn::is_handshaking);
            // Done: later handshake-like writes (tickets, alerts) get the
            // whole write deadline, not what was left of the handshake's.
            if !session.timing.handshaking
                && set_timeout(
                    stream,
                    &mut session.write_timeout,
                    config.write_deadline,
                    false,
                )
                .is_err()
            {
                return Outcome::Close(CloseReason::Error);
            }
        }
        // `again`: read again before parking. The poller is edge-triggered:
        // no event announces bytes left behind a read that filled the
        // buffer, nor plaintext that rustls holds decrypted.
        let (n, again) = match read {
            Ok((Got::Data(n), again)) => (n, again),
            Ok((Got::Eof, _)) if output.pending => {
                // Its reply still goes out; then it closes, and its
                // handles send no more.
                session.closing.get_or_insert(CloseReason::Eof);
                if let Some(link) = session.link.get() {
                    link.refuse();
                }
                continue;
            }
            Ok((Got::Eof, _)) => return Outcome::Close(CloseReason::Eof),
            Ok((Got::Progress, again)) => {
                // A TLS handshake or record under way: no plaintext yet.
                pass.now = Instant::now();
                pass.arrived = None;
                pass.ready = again || session.hup;
                // Its replies may not all have gone.
                pass.flush = true;
                continue;
            }
            Err(ReadError::Handshake(failure)) => return Outcome::Handshake(failure),
            Err(ReadError::Failed(reason)) => return Outcome::Close(reason),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {
                pass.now = Instant::now();
                continue;
            }
            Err(ReadError::Io(e)) if is_timeout(&e) => {
                pass.now = Instant::now();
                pass.arrived = None;
                let due = deadline.is_some_and(|(at, _)| pass.now >= at);
                if config.park_after.is_some() && !due {
                    input.park(session, &ctx.buf);
                    return Outcome::Park;
                }
                continue; // `check` closes it, with the defence that fired
            }
            Err(ReadError::Io(e)) => return Outcome::Close(failed_read(&e)),
        };
        ctx.bytes.bytes_in.fetch_add(n as u64, Relaxed);
        let at = pass.arrived.take();
        if let Err(reason) = session
            .timing
            .on_bytes(n, || at.unwrap_or_else(Instant::now), config)
        {
            return Outcome::Close(reason);
        }
        if let Err(reason) = input.arrived(session, &ctx.buf, n, config.max_frame_bytes) {
            return Outcome::Close(reason);
        }
        // So may a read from a peer that has shut down: its end of file.
        pass.ready = again || session.hup;
        session.want = session.want.saturating_sub(n);
        if session.want > 0 {
            // Not the whole frame the handler waits for: gathered, not
            // given to it. Bytes came: the read deadline counts anew.
            pass.now = Instant::now();
            session.timing.after_handler(input.len(session), pass.now);
            if let Err(reason) = account(session, ctx) {
                return Outcome::Close(reason);
            }
            continue;
        }
        // The read that completed a TLS handshake may bring the first
        // request with it.
        if state.is_none() {
            if let Err(reason) = open(handler, session, state, ctx) {
                return Outcome::Close(reason);
            }
        }
        // Only this handler makes states for this manager: never `None`.
        let Some(typed) = state.as_mut().and_then(|s| s.downcast_mut::<H::State>()) else {
            return Outcome::Close(CloseReason::Error);
        };
        let frame = input.take(session);
        let data = frame.as_deref().unwrap_or(input.in_buffer(&ctx.buf));
        let (kept, want) = match call(handler, session, typed, ctx, data) {
            Ok(kept) => kept,
            Err(reason) => return Outcome::Close(reason),
        };
        input.called(session, &mut ctx.buf, frame, kept, want);
        session.want = want;
        if let Err(reason) = account(session, ctx) {
            return Outcome::Close(reason);
        }
        pass.served = true;
        pass.now = Instant::now();
        session.timing.after_handler(kept, pass.now);
        let pending = outbound::pending(&session.out, session.tls.as_ref());
        session.timing.output(pending, false, pass.now);
    }
}

/// The state of one turn's loop between passes.
struct Pass {
    /// Whether the handler ran in this turn: a connection that woke up is
    /// read before it may park again.
    served: bool,
    /// Reported readable (or to be read again): read without waiting.
    ready: bool,
    /// When the bytes that woke it arrived, until they are read.
    arrived: Option<Instant>,
    now: Instant,
    /// Write what waits before anything else: the socket may have room.
    flush: bool,
}

/// Takes what the connection's handles sent, writes what the socket takes
/// (if `flush`, or if a handle sent something), and says what the loop may
/// do. A connection that was to close once its bytes were written, and
/// has none left, closes here.
fn write_step(
    session: &mut Session,
    ctx: &Ctx<'_>,
    now: Instant,
    mut flush: bool,
) -> Result<Output, CloseReason> {
    let limit = ctx.config.max_outbound_bytes;
    if let Some(link) = session.link.get() {
        let before = session.out.len();
        if link.pull(&mut session.out, limit) {
            session.closing.get_or_insert(CloseReason::Handler);
        }
        flush |= session.out.len() != before;
    }
    let mut progress = false;
    if flush && outbound::pending(&session.out, session.tls.as_ref()) {
        match outbound::flush(&session.stream, session.tls.as_mut(), &mut session.out) {
            Ok(flushed) => {
                ctx.bytes.bytes_out.fetch_add(flushed.taken as u64, Relaxed);
                progress = flushed.progress;
            }
            Err(e) => return Err(failed_write(&e)),
        }
    }
    let pending = outbound::pending(&session.out, session.tls.as_ref());
    session.timing.output(pending, progress, now);
    match session.closing {
        Some(reason) if !pending => Err(reason),
        closing => Ok(Output {
            pending,
            write_only: closing.is_some() || session.out.len() > limit,
        }),
    }
}

/// Counts what the session holds in the pool's total of bytes waiting for
/// sockets; past `max_buffered_bytes`, the connection holding the most
/// (this one, or a parked one) is evicted.
fn account(session: &mut Session, ctx: &Ctx<'_>) -> Result<(), CloseReason> {
    let now = session.out.len() + session.frame.len();
    let before = session.held.mine();
    let Some(total) = session.held.set(&ctx.pool.counters().buffered, now) else {
        return Ok(());
    };
    // Only a connection whose share grows is judged: one that drains is
    // giving memory back.
    match ctx.config.max_buffered_bytes {
        Some(max) if total > max && now > before && ctx.pool.evict_largest(now) => {
            log::debug!("evicting a connection holding {now} bytes ({total} in all)");
            Err(CloseReason::Evicted)
        }
        _ => Ok(()),
    }
}

/// Decides how the loop goes on: read at once (the poller said so), park
/// (polled mode), or wait — in a blocking read, or, while bytes wait for
/// the socket or handles may send, for the socket or a handle's bell.
fn wait_step(
    session: &mut Session,
    ctx: &mut Ctx<'_>,
    output: &Output,
    deadline: Option<(Instant, CloseReason)>,
    pass: &mut Pass,
) -> Step {
    if pass.ready && !output.write_only {
        pass.ready = false;
        return Step::Read { wait: false };
    }
    let config = &*ctx.config;
    let mut wait = deadline.map(|(at, _)| at.duration_since(pass.now));
    if let Some(park_after) = config.park_after {
        // Polled mode: wait in the poller, holding no worker, unless this
        // worker may linger and nobody else waits.
        if park_after.is_zero() || (pass.served && ctx.pool.others_wait()) {
            return Step::End(Outcome::Park);
        }
        wait = Some(wait.map_or(park_after, |w| w.min(park_after)));
    }
    if session.registered && !session.disarmed {
        // Its bytes would otherwise wake a poller for nothing.
        ctx.pool.disarm(&session.stream);
        session.disarmed = true;
        session.armed_out = false;
    }
    if output.pending || output.write_only || session.link.get().is_some() {
        let woke = match wait_io(session, ctx, output, wait) {
            Ok(woke) => woke,
            Err(_) => return Step::End(Outcome::Close(CloseReason::Error)),
        };
        pass.now = Instant::now();
        pass.arrived = None;
        // Timed out: try the socket once more before a write deadline is
        // judged (room may have come that no event reported).
        pass.flush = woke.writable || woke.rung || woke == Woke::default();
        // A write-only wait did not look at reading: a hint to read again
        // (bytes rustls or the PROXY header left) still holds.
        pass.ready = woke.readable || (output.write_only && pass.ready);
        if woke == Woke::default() {
            // Timed out: `check` judges a deadline; polled mode parks.
            let due = deadline.is_some_and(|(at, _)| pass.now >= at);
            if ctx.config.park_after.is_some() && !due {
                return Step::End(Outcome::Park);
            }
        }
        return Step::Again;
    }
    if set_timeout(&session.stream, &mut session.read_timeout, wait, true).is_err() {
        return Step::End(Outcome::Close(CloseReason::Error));
    }
    Step::Read { wait: true }
}

/// Waits for the socket — readable unless only writing, writable while
/// bytes wait — or, if the connection has handles, for the worker's bell
/// that their sends ring.
fn wait_io(
    session: &Session,
    ctx: &mut Ctx<'_>,
    output: &Output,
    wait: Option<Duration>,
) -> io::Result<Woke> {
    // The bell also carries a stop's wake-up (see `Slot::shutdown`).
    let bell = ctx.bell()?;
    if let Some(link) = session.link.get() {
        link.set_wake(Wake::Bell(Arc::downgrade(&bell)), session.out.len());
    }
    let bell = Some(bell);
    let woke = wait_socket(
        &session.stream,
        !output.write_only,
        output.pending,
        bell.as_deref(),
        wait,
    )?;
    if woke.rung {
        // Before the next pass takes what rang it: a later send rings again.
        if let Some(bell) = &bell {
            bell.clear();
        }
    }
    Ok(woke)
}

/// A TLS handshake's replies are written within its deadline too.
fn handshake_write_timeout(
    session: &mut Session,
    ctx: &Ctx<'_>,
    deadline: Option<(Instant, CloseReason)>,
    now: Instant,
) -> io::Result<()> {
    let mut write_wait = ctx.config.write_deadline;
    if let (true, Some((at, _))) = (session.timing.handshaking, deadline) {
        let left = at.duration_since(now);
        write_wait = Some(write_wait.map_or(left, |w| w.min(left)));
    }
    set_timeout(
        &session.stream,
        &mut session.write_timeout,
        write_wait,
        false,
    )
}

/// Calls [`Handler::open`] with a [`Conn`] (it may write a greeting, take
/// a handle, close), and keeps the state it makes.
fn open<H: Handler>(
    handler: &H,
    session: &mut Session,
    state: &mut Option<Box<dyn Any + Send>>,
    ctx: &Ctx<'_>,
) -> Result<(), CloseReason> {
    let mut none = ();
    let mut conn = Conn::new(parts(session, ctx), &mut none);
    let opened = match catch_unwind(AssertUnwindSafe(|| handler.open(&mut conn))) {
        Ok(opened) => opened,
        Err(panic) => {
            log_panic("open", &*panic);
            return Err(CloseReason::Panic);
        }
    };
    let ended = ended(&conn);
    let wrote = Wrote::of(&conn);
    // Kept, even if it closes now: `closed` gets it.
    *state = Some(Box::new(opened));
    ended.map_or(Ok(()), Err)?;
    wrote.apply(session);
    Ok(())
}

/// The parts of a [`Conn`] for one call on `session`.
fn parts<'a>(session: &'a mut Session, ctx: &'a Ctx<'_>) -> Parts<'a> {
    Parts {
        stream: &session.stream,
        tls: session.tls.as_mut(),
        peer: session.peer,
        bytes: ctx.bytes,
        out: &mut session.out,
        link: &mut session.link,
        max_outbound: ctx.config.max_outbound_bytes,
        buffered: (
            &ctx.pool.counters().buffered,
            session.held.mine(),
            ctx.config.max_buffered_bytes,
        ),
    }
}

/// A write of the call failed: why the connection closes.
fn ended<S>(conn: &Conn<'_, S>) -> Option<CloseReason> {
    if conn.evicted() {
        Some(CloseReason::Evicted)
    } else if conn.write_reset() {
        // The client reset the connection under the handler's writes.
        Some(CloseReason::Reset)
    } else if conn.write_failed() {
        // Nothing more can be written, whatever the handler says.
        Some(CloseReason::Error)
    } else {
        None
    }
}

/// What a handler call did to the connection's output.
struct Wrote {
    progress: bool,
    close: bool,
}

impl Wrote {
    fn of<S>(conn: &Conn<'_, S>) -> Self {
        Wrote {
            progress: conn.progress(),
            close: conn.close_requested(),
        }
    }

    fn apply(self, session: &mut Session) {
        if self.progress && outbound::pending(&session.out, session.tls.as_ref()) {
            session.timing.output(true, true, Instant::now());
        }
        if self.close {
            // Closed once what it wrote is written; its handles send no
            // more.
            session.closing.get_or_insert(CloseReason::Handler);
            if let Some(link) = session.link.get() {
                link.refuse();
            }
        }
    }
}

/// Calls the handler with `data`; returns how many bytes it kept (the end
/// of `data`) and how many more it wants before its next call, or why the
/// connection closes.
fn call<H: Handler>(
    handler: &H,
    session: &mut Session,
    state: &mut H::State,
    ctx: &Ctx<'_>,
    data: &[u8],
) -> Result<(usize, usize), CloseReason> {
    let mut conn = Conn::new(parts(session, ctx), state);
    let result = catch_unwind(AssertUnwindSafe(|| handler.data(&mut conn, data)));
    if let Some(reason) = ended(&conn) {
        return Err(reason);
    }
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(CloseReason::Error),
        Err(panic) => {
            log_panic("data", &*panic);
            return Err(CloseReason::Panic);
        }
    }
    let kept = conn.kept().min(data.len());
    let want = if kept > 0 { conn.needed() } else { 0 };
    Wrote::of(&conn).apply(session);
    if kept == 0 {
        if let Some(ticket) = &mut session.ticket {
            // The handler took all it was given: its first request is
            // served (see `Server::shutdown`).
            ticket.served();
        }
    }
    Ok((kept, want))
}

/// The close reason of a write that failed with `e`.
fn failed_write(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => CloseReason::Reset,
        _ => CloseReason::Error,
    }
}

/// One read into `buf`: of the bytes that came behind a PROXY header if
/// any are left, else of the socket (waiting up to its `SO_RCVTIMEO` if
/// `wait`), or of a TLS connection. With what it got, whether to read
/// again without waiting.
fn read_once(
    stream: &TcpStream,
    tls: Option<&mut TlsConn>,
    buf: &mut [u8],
    wait: bool,
    early: &mut Vec<u8>,
) -> Result<(Got, bool), ReadError> {
    if let Some(tls) = tls {
        return tls.read(stream, buf, wait, early);
    }
    if !early.is_empty() {
        // Bytes that came behind a PROXY header; the socket may hold more.
        let n = buf.len().min(early.len());
        buf[..n].copy_from_slice(&early[..n]);
        early.drain(..n);
        return Ok((Got::Data(n), true));
    }
    let read = if wait {
        (&*stream).read(buf)
    } else {
        read_now(stream, buf)
    };
    match read {
        Ok(0) => Ok((Got::Eof, false)),
        Ok(n) => Ok((Got::Data(n), n == buf.len())),
        Err(e) => Err(ReadError::Io(e)),
    }
}
