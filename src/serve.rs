//! Serving one connection on a worker: the read loop that reads into the
//! worker's buffer, enforces the deadlines and defences, calls the handler,
//! and says whether the connection closes or goes back to the poller.

use std::any::Any;
use std::io::{self, Read};
use std::net::TcpStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::conn::Conn;
use crate::epoll::read_now;
use crate::handler::Handler;
use crate::proxy::{self, Parsed};
use crate::session::Session;
use crate::socket::is_timeout;
use crate::stats::{ByteCounters, CloseReason, Counters, Failure};
use crate::tls::{Got, ReadError, TlsConn};

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
    fn disarm(&self, stream: &TcpStream);
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
}

impl Ctx<'_> {
    /// Picks up a new configuration if `set_config` changed it, and sizes
    /// the buffer to it.
    pub(crate) fn refresh_config(&mut self) {
        if self
            .pool
            .refresh_config(&mut self.generation, &mut self.config)
        {
            self.buf.resize(self.config.buffer_size, 0);
        }
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
        if session.timing.header_pending {
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
        let mut state: Box<dyn Any + Send> = match session.state.take() {
            Some(state) => state,
            None => match catch_unwind(AssertUnwindSafe(|| self.open(&session.stream))) {
                Ok(state) => Box::new(state),
                Err(panic) => {
                    log_panic("open", &*panic);
                    ctx.close(&mut session, CloseReason::Panic);
                    return Served::Closed(session);
                }
            },
        };
        // Only this handler makes states for this manager: never fails.
        let Some(typed) = state.downcast_mut::<H::State>() else {
            ctx.close(&mut session, CloseReason::Error);
            return Served::Closed(session);
        };
        let (reason, failure) = match read_loop(self, &mut session, typed, ctx) {
            Outcome::Park => {
                session.state = Some(state);
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
        if let Ok(state) = state.downcast::<H::State>() {
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

/// Why a read loop ended.
enum Outcome {
    Close(CloseReason),
    /// A TLS handshake failed, for this cause (`None`: it timed out).
    Handshake(Option<Failure>),
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
    // Reported readable by the poller: read without waiting.
    let mut ready = std::mem::take(&mut session.ready);
    // A woken connection is judged as of when its client sent, and the
    // bytes that woke it count as arrived then (it may have waited in the
    // queue since).
    let mut arrived = session.woken_at.take();
    let mut now = arrived.unwrap_or_else(Instant::now);
    loop {
        ctx.refresh_config();
        let config = &*ctx.config;
        if kept >= ctx.buf.len() {
            return Outcome::Close(CloseReason::Overflow);
        }
        if let Err(reason) = session.timing.check(now, config) {
            return Outcome::Close(reason);
        }
        // Past `check`, a deadline is after `now`: the wait is not zero.
        let deadline = session.timing.deadline(config);
        // A TLS handshake's replies are written within its deadline too.
        let mut write_wait = config.write_deadline;
        if let (true, Some((at, _))) = (session.timing.handshaking, deadline) {
            let left = at.duration_since(now);
            write_wait = Some(write_wait.map_or(left, |w| w.min(left)));
        }
        if set_timeout(stream, &mut session.write_timeout, write_wait, false).is_err() {
            return Outcome::Close(CloseReason::Error);
        }
        let wait = if ready {
            ready = false;
            false
        } else {
            let mut wait = deadline.map(|(at, _)| at.duration_since(now));
            if let Some(park_after) = config.park_after {
                // Polled mode: wait in the poller, holding no worker,
                // unless this worker may linger and nobody else waits.
                if park_after.is_zero() || (served && ctx.pool.others_wait()) {
                    session.kept = ctx.buf[..kept].to_vec();
                    return Outcome::Park;
                }
                wait = Some(wait.map_or(park_after, |w| w.min(park_after)));
            }
            if set_timeout(stream, &mut session.read_timeout, wait, true).is_err() {
                return Outcome::Close(CloseReason::Error);
            }
            if session.registered && !session.disarmed {
                // Its bytes would otherwise wake a poller for nothing.
                ctx.pool.disarm(stream);
                session.disarmed = true;
            }
            true
        };
        let read = read_once(
            stream,
            session.tls.as_mut(),
            &mut ctx.buf[kept..],
            wait,
            &mut session.early,
        );
        if session.timing.handshaking {
            session.timing.handshaking = session.tls.as_ref().is_some_and(TlsConn::is_handshaking);
            // Done: the handler's writes get the whole write deadline, not
            // what was left of the handshake's.
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
            Ok((Got::Eof, _)) => return Outcome::Close(CloseReason::Eof),
            Ok((Got::Progress, again)) => {
                // A TLS handshake or record under way: no plaintext yet.
                now = Instant::now();
                arrived = None;
                ready = again || session.hup;
                continue;
            }
            Err(ReadError::Handshake(failure)) => return Outcome::Handshake(failure),
            Err(ReadError::Failed(reason)) => return Outcome::Close(reason),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {
                now = Instant::now();
                continue;
            }
            Err(ReadError::Io(e)) if is_timeout(&e) => {
                now = Instant::now();
                arrived = None;
                let due = deadline.is_some_and(|(at, _)| now >= at);
                if config.park_after.is_some() && !due {
                    session.kept = ctx.buf[..kept].to_vec();
                    return Outcome::Park;
                }
                continue; // `check` closes it, with the defence that fired
            }
            Err(ReadError::Io(e)) => return Outcome::Close(failed_read(&e)),
        };
        ctx.bytes.bytes_in.fetch_add(n as u64, Relaxed);
        let at = arrived.take();
        if let Err(reason) = session
            .timing
            .on_bytes(n, || at.unwrap_or_else(Instant::now), config)
        {
            return Outcome::Close(reason);
        }
        let len = kept + n;
        // So may a read from a peer that has shut down: its end of file.
        let full = again || session.hup;
        let mut conn = Conn::new(
            stream,
            session.tls.as_mut(),
            session.peer,
            state,
            ctx.bytes,
            config.write_deadline,
        );
        let data = &ctx.buf[..len];
        match catch_unwind(AssertUnwindSafe(|| handler.data(&mut conn, data))) {
            Ok(Ok(())) => {}
            Ok(Err(_)) if conn.write_timed_out() => {
                return Outcome::Close(CloseReason::WriteDeadline);
            }
            // The client reset the connection under the handler's writes.
            Ok(Err(_)) if conn.write_reset() => return Outcome::Close(CloseReason::Reset),
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
        } else if let Some(ticket) = &mut session.ticket {
            // The handler took all it was given: its first request is
            // served (see `Server::shutdown`).
            ticket.served();
        }
        now = Instant::now();
        session.timing.after_handler(kept, now);
        served = true;
        ready = full;
    }
}

/// How reading a PROXY header ended.
enum Header {
    /// Read: serve the connection.
    Read,
    /// Not whole yet, and nothing more to read now: park it, the bytes so
    /// far in its `kept`.
    Park,
    Close(CloseReason),
}

/// Reads a trusted balancer's PROXY protocol header, before the handler
/// sees the connection. The bytes so far wait in the session's `kept`
/// while it is parked; those after the header go to its `early`, for the
/// handler (or rustls).
fn read_header(session: &mut Session, ctx: &mut Ctx<'_>) -> Header {
    let mut have = session.kept.len();
    if have > ctx.buf.len() {
        return Header::Close(CloseReason::ProxyHeader);
    }
    ctx.buf[..have].copy_from_slice(&session.kept);
    session.kept = Vec::new();
    let mut ready = std::mem::take(&mut session.ready);
    // Judged as of when its bytes woke it; a later turn has its own.
    let woken = session.woken_at.take();
    let mut now = woken.unwrap_or_else(Instant::now);
    loop {
        ctx.refresh_config();
        let config = &*ctx.config;
        // The limits in force when the pool took it (a buffer shrunk since
        // bounds it too).
        let max = session.header_max.min(ctx.buf.len());
        if have >= max {
            return failed(ctx, "longer than max_header_size");
        }
        if let Err(reason) = session.timing.check(now, config) {
            return Header::Close(reason);
        }
        let stream: &TcpStream = &session.stream;
        let space = &mut ctx.buf[have..max];
        let read = if ready || session.hup {
            read_now(stream, space)
        } else if config.park_after.is_some() {
            // Polled mode: the poller says when more comes.
            session.kept = ctx.buf[..have].to_vec();
            return Header::Park;
        } else {
            let wait = session
                .timing
                .deadline(config)
                .map(|(at, _)| at.duration_since(now));
            if set_timeout(stream, &mut session.read_timeout, wait, true).is_err() {
                return Header::Close(CloseReason::Error);
            }
            (&*stream).read(space)
        };
        let asked = space.len();
        now = Instant::now();
        ready = false;
        match read {
            Ok(0) if have == 0 => return Header::Close(CloseReason::Eof),
            Ok(0) => return failed(ctx, "the connection ended inside it"),
            Ok(n) => {
                have += n;
                ready = n == asked;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                if config.park_after.is_some() {
                    // Nothing more for now: the poller says when.
                    session.kept = ctx.buf[..have].to_vec();
                    return Header::Park;
                }
                continue; // `check` judges it
            }
            Err(e) if have == 0 => return Header::Close(failed_read(&e)),
            Err(_) => return failed(ctx, "the connection failed inside it"),
        }
        match proxy::parse(&ctx.buf[..have]) {
            Parsed::Incomplete => {}
            Parsed::Invalid(e) => return failed(ctx, &e),
            Parsed::Header { len, client } => {
                let counters = &ctx.pool.counters().proxy;
                session.timing.header_pending = false;
                session.early = ctx.buf[len..have].to_vec();
                session.ready = true;
                // The bytes behind the header came when it did.
                session.woken_at = woken;
                let Some(client) = client else {
                    counters.local.fetch_add(1, Relaxed);
                    return Header::Read;
                };
                counters.headers.fetch_add(1, Relaxed);
                session.peer = Some(client);
                if let Ok(balancer) = stream.peer_addr() {
                    log::debug!("PROXY header from {balancer}: client {client}");
                }
                let limit = config.max_connections_per_ip;
                if let (Some(limit), Some(ticket)) = (limit, &mut session.ticket) {
                    if !ticket.claim(client.ip(), limit) {
                        return Header::Close(CloseReason::PerIpLimit);
                    }
                }
                return Header::Read;
            }
        }
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

/// A header that failed, logged at most once a minute (not during a stop,
/// which counts it as `Stop`).
fn failed(ctx: &Ctx<'_>, why: &str) -> Header {
    if ctx.pool.stopping() {
        // Ended by the stop: counted as such, nothing to say.
        return Header::Close(CloseReason::ProxyHeader);
    }
    if let Some(suppressed) = ctx.pool.counters().proxy.log.allow() {
        log::warn!("PROXY protocol header refused: {why} ({suppressed} more not logged)");
    }
    Header::Close(CloseReason::ProxyHeader)
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

fn log_panic(method: &str, panic: &(dyn Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    log::error!("handler panicked in {method}: {message}; connection closed");
}
