//! The read loop of one turn: writes what waits for the socket, reads into
//! the worker's buffer, enforces the deadlines and defences, calls the
//! handler, and says whether the connection closes or goes back to the
//! poller.
//!
//! Each pass: [`Turn::before_read`] ([`write_step`]: take what handles
//! sent, write what the socket takes, decide whether the connection may be
//! read; then the deadlines), [`wait_step`] (read now, park, or wait),
//! [`Turn::read`] (the read), [`Turn::gather`] (the bytes counted and kept,
//! a frame gathered until whole) and [`Turn::serve`] (the handler, in
//! `call.rs`).

use std::any::Any;
use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::call::{call, open};
use super::input::Input;
use super::{Ctx, WAITS_ON_BELL, failed_read, set_timeout};
use crate::epoll::{Woke, read_now, wait_socket};
use crate::handle::Wake;
use crate::handler::Handler;
use crate::outbound;
use crate::session::Session;
use crate::socket::is_timeout;
use crate::stats::{CloseReason, Failure};
use crate::tls::{Got, ReadError, TlsConn};

/// Whether a turn parks right after the handler where the next pass could
/// only park ([`Turn::park_now`]). Not on Windows: there, under Wine,
/// `tests/storm.rs` then lost a client in 3 of 26 runs (a parked
/// connection never served again), against none in 40 runs without it.
/// Not explained yet (`docs/performance.md`).
const PARK_NOW: bool = !cfg!(windows);

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
    let input = Input::restore(session, &mut ctx.buf);
    let pass = Pass::begin(session);
    let mut turn = Turn {
        handler,
        session,
        state,
        ctx,
        input,
        pass,
    };
    loop {
        let (output, deadline) = match turn.before_read() {
            Ok(prepared) => prepared,
            Err(outcome) => return outcome,
        };
        let Turn {
            session,
            ctx,
            input,
            pass,
            ..
        } = &mut turn;
        let wait = match wait_step(session, ctx, &output, deadline, pass) {
            Step::Read { wait } => wait,
            Step::Again => continue,
            Step::End(outcome) => {
                if matches!(outcome, Outcome::Park) {
                    input.park(session, &ctx.buf);
                }
                return outcome;
            }
        };
        let read = Reading {
            output: &output,
            deadline,
            wait,
        };
        let served = match turn.read(read) {
            Ok(Some(n)) => match turn.gather(n) {
                Ok(true) => turn.serve().and_then(|()| turn.park_now()),
                Ok(false) => Ok(()),
                Err(outcome) => Err(outcome),
            },
            Ok(None) => Ok(()),
            Err(outcome) => Err(outcome),
        };
        if let Err(outcome) = served {
            return outcome;
        }
    }
}

/// One turn's parts, lent to its steps.
struct Turn<'t, 'c, H> {
    handler: &'t H,
    session: &'t mut Session,
    state: &'t mut Option<Box<dyn Any + Send>>,
    ctx: &'t mut Ctx<'c>,
    input: Input,
    pass: Pass,
}

/// What the wait step decided for a read.
#[derive(Clone, Copy)]
struct Reading<'a> {
    output: &'a Output,
    deadline: Option<(Instant, CloseReason)>,
    /// In a blocking read, up to the socket's timeout.
    wait: bool,
}

impl<H: Handler> Turn<'_, '_, H> {
    /// Before a read: the input made to fit, the handler's state made (once
    /// past the handshake), what waits written, the deadlines checked. Gives
    /// what the output step left to do and the next deadline.
    fn before_read(&mut self) -> Result<(Output, Option<(Instant, CloseReason)>), Outcome> {
        self.ctx.refresh_config();
        self.input
            .fit(self.session, &self.ctx.buf, self.session.want)
            .map_err(Outcome::Close)?;
        if self.state.is_none() && !self.session.timing.handshaking() {
            open(self.handler, self.session, self.state, self.ctx).map_err(Outcome::Close)?;
        }
        let output = write_step(
            self.session,
            self.ctx,
            self.pass.now,
            std::mem::take(&mut self.pass.flush),
        )
        .map_err(Outcome::Close)?;
        account(self.session, self.ctx).map_err(Outcome::Close)?;
        let config = &*self.ctx.config;
        // Past the check, a deadline is after `now`: the wait is not zero.
        let deadline = self
            .session
            .timing
            .check_deadline(self.pass.now, config, self.ctx.generation)
            .map_err(Outcome::Close)?;
        if handshake_write_timeout(self.session, self.ctx, deadline, self.pass.now).is_err() {
            return Err(Outcome::Close(CloseReason::Error));
        }
        Ok((output, deadline))
    }

    /// One read into the input: `Some(n)` plaintext bytes, or `None` to look
    /// again (the end of a client whose reply still goes out, progress in a
    /// TLS handshake or record, an interrupted or timed-out wait).
    fn read(&mut self, read: Reading<'_>) -> Result<Option<usize>, Outcome> {
        let config = &*self.ctx.config;
        let stream: &TcpStream = &self.session.stream;
        let got = read_once(
            stream,
            self.session.tls.as_mut(),
            self.input.space(&mut self.ctx.buf),
            read.wait,
            &mut self.session.early,
        );
        if self.session.timing.handshaking() {
            let handshaking = self
                .session
                .tls
                .as_ref()
                .is_some_and(TlsConn::is_handshaking);
            self.session.timing.set_handshaking(handshaking);
            // Done: later handshake-like writes (tickets, alerts) get the
            // whole write deadline, not what was left of the handshake's.
            if !handshaking
                && set_timeout(
                    stream,
                    &mut self.session.write_timeout,
                    config.write_deadline,
                    false,
                )
                .is_err()
            {
                return Err(Outcome::Close(CloseReason::Error));
            }
        }
        // `again`: read again before parking. The poller is edge-triggered:
        // no event announces bytes left behind a read that filled the buffer,
        // nor plaintext that rustls holds decrypted.
        match got {
            Ok((Got::Data(n), again)) => {
                // So may a read from a peer that has shut down: its end of
                // file.
                self.pass.ready = again || self.session.hup;
                Ok(Some(n))
            }
            Ok((Got::Eof, _)) if read.output.pending => {
                // Its reply still goes out; then it closes, and its handles
                // send no more.
                self.session.closing.get_or_insert(CloseReason::Eof);
                if let Some(link) = self.session.link.get() {
                    link.refuse();
                }
                Ok(None)
            }
            Ok((Got::Eof, _)) => Err(Outcome::Close(CloseReason::Eof)),
            Ok((Got::Progress, again)) => {
                // A TLS handshake or record under way: no plaintext yet.
                self.pass.now = Instant::now();
                self.pass.arrived = None;
                self.pass.ready = again || self.session.hup;
                // Its replies may not all have gone.
                self.pass.flush = true;
                Ok(None)
            }
            Err(ReadError::Handshake(failure)) => Err(Outcome::Handshake(failure)),
            Err(ReadError::Failed(reason)) => Err(Outcome::Close(reason)),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {
                self.pass.now = Instant::now();
                Ok(None)
            }
            Err(ReadError::Io(e)) if is_timeout(&e) => {
                self.pass.now = Instant::now();
                self.pass.arrived = None;
                let due = read.deadline.is_some_and(|(at, _)| self.pass.now >= at);
                if config.park_after.is_some() && !due {
                    self.input.park(self.session, &self.ctx.buf);
                    return Err(Outcome::Park);
                }
                Ok(None) // `check` closes it, with the defence that fired
            }
            Err(ReadError::Io(e)) => Err(Outcome::Close(failed_read(&e))),
        }
    }

    /// Counts `n` bytes read and adds them to the input: `true` if the
    /// handler may be called (it waits for no more of a frame).
    fn gather(&mut self, n: usize) -> Result<bool, Outcome> {
        let config = &*self.ctx.config;
        self.ctx.bytes.bytes_in.fetch_add(n as u64, Relaxed);
        let at = self.pass.arrived.take();
        self.session
            .timing
            .on_bytes(n, || at.unwrap_or_else(Instant::now), config)
            .map_err(Outcome::Close)?;
        self.input
            .arrived(self.session, &self.ctx.buf, n, config.max_frame_bytes)
            .map_err(Outcome::Close)?;
        self.session.want = self.session.want.saturating_sub(n);
        if self.session.want == 0 {
            return Ok(true);
        }
        // Not the whole frame the handler waits for: gathered, not given to
        // it. Bytes came: the read deadline counts anew.
        self.pass.now = Instant::now();
        self.session
            .timing
            .after_handler(self.input.len(self.session), self.pass.now);
        account(self.session, self.ctx).map_err(Outcome::Close)?;
        Ok(false)
    }

    /// Calls the handler with what the input holds, and keeps what it says.
    fn serve(&mut self) -> Result<(), Outcome> {
        // The read that completed a TLS handshake may bring the first request
        // with it.
        if self.state.is_none() {
            open(self.handler, self.session, self.state, self.ctx).map_err(Outcome::Close)?;
        }
        // Only this handler makes states for this manager: never `None`.
        let Some(typed) = self
            .state
            .as_mut()
            .and_then(|s| s.downcast_mut::<H::State>())
        else {
            return Err(Outcome::Close(CloseReason::Error));
        };
        let frame = self.input.take(self.session);
        let data = frame
            .as_deref()
            .unwrap_or(self.input.in_buffer(&self.ctx.buf));
        let (kept, want) =
            call(self.handler, self.session, typed, self.ctx, data).map_err(Outcome::Close)?;
        self.input
            .called(self.session, &mut self.ctx.buf, frame, kept, want);
        self.session.want = want;
        account(self.session, self.ctx).map_err(Outcome::Close)?;
        self.pass.served = true;
        self.pass.now = Instant::now();
        self.session.timing.after_handler(kept, self.pass.now);
        let pending = outbound::pending(&self.session.out, self.session.tls.as_ref());
        self.session.timing.output(pending, false, self.pass.now);
        Ok(())
    }

    /// After the handler, the next pass cut short where it would only park
    /// (polled mode with nobody to linger for, see [`wait_step`]): nothing
    /// to read at once, to write (no handle, no flush asked), to close for
    /// (`closing`), or to finish (a TLS handshake). Its write step would
    /// write nothing and its accounting count nothing new; the input is
    /// made to fit and the deadlines checked as that pass would, and the
    /// connection parks (`Err(Outcome::Park)`), or closes. `Ok`: the loop
    /// goes on with a whole pass. Like that pass, it first picks up a
    /// `set_config` made during the handler (parking under the config of
    /// before a switch to dedicated mode would leave the connection parked
    /// after the worker judged, in `after_serve`, that no poller was
    /// wanted). `flush` and `handshaking` are never set
    /// here today (a flush is asked only by passes that serve nothing, and
    /// plaintext comes only past the handshake): guards for what may change.
    fn park_now(&mut self) -> Result<(), Outcome> {
        if !PARK_NOW {
            return Ok(());
        }
        // As the pass would: a `set_config` made during the handler decides.
        self.ctx.refresh_config();
        let session = &*self.session;
        let Some(park_after) = self.ctx.config.park_after else {
            return Ok(());
        };
        if self.pass.ready
            || self.pass.flush
            || session.closing.is_some()
            || session.timing.handshaking()
            || session.link.get().is_some()
            || !(park_after.is_zero() || self.ctx.pool.others_wait())
        {
            return Ok(());
        }
        self.input
            .fit(self.session, &self.ctx.buf, self.session.want)
            .map_err(Outcome::Close)?;
        // Kept by the timing for `Shared::park`, which follows with the
        // same config.
        self.session
            .timing
            .check_deadline(self.pass.now, &self.ctx.config, self.ctx.generation)
            .map_err(Outcome::Close)?;
        self.input.park(self.session, &self.ctx.buf);
        Err(Outcome::Park)
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

impl Pass {
    fn begin(session: &mut Session) -> Self {
        let now = Instant::now();
        // A woken connection is judged as of when its client sent, and
        // the bytes that woke it count as arrived then (it may have
        // waited in the queue since).
        let arrived = session.woken_at.take();
        Pass {
            served: false,
            ready: std::mem::take(&mut session.ready),
            arrived,
            now: arrived.unwrap_or(now),
            // The event that began this turn may be room in the socket, or
            // a handle's wake: what waits is written first.
            flush: true,
        }
    }
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
    if output.pending || output.write_only || session.link.get().is_some() || WAITS_ON_BELL {
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
        // Where a stop's shutdown does not show as readable, a read after
        // the bell tells (its error, or the end of file).
        pass.ready |= WAITS_ON_BELL && woke.rung && !output.write_only;
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
    if let (true, Some((at, _))) = (session.timing.handshaking(), deadline) {
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
