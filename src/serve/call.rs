//! Calling the handler: [`open`] once (it may speak first), then [`call`]
//! with each frame, each with a [`Conn`] made from the session's parts;
//! what the call wrote and asked for is applied to the session.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::{Ctx, log_panic};
use crate::conn::{Conn, Parts};
use crate::handler::Handler;
use crate::outbound;
use crate::session::Session;
use crate::stats::CloseReason;

/// Calls [`Handler::open`] with a [`Conn`] (it may write a greeting, take
/// a handle, close), and keeps the state it makes.
pub(super) fn open<H: Handler>(
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
pub(super) fn call<H: Handler>(
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
