//! Reading a trusted balancer's PROXY protocol header, before the handler
//! sees the connection.

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{Ctx, failed_read, set_timeout};
use crate::epoll::read_now;
use crate::proxy::{self, Parsed};
use crate::session::Session;
use crate::socket::is_timeout;
use crate::stats::CloseReason;

/// How reading a PROXY header ended.
pub(super) enum Header {
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
pub(super) fn read_header(session: &mut Session, ctx: &mut Ctx<'_>) -> Header {
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
            if super::WAITS_ON_BELL {
                // The bell was made before the connection was served.
                super::wait_then_read(stream, ctx.bell.as_deref(), wait, space)
            } else if set_timeout(stream, &mut session.read_timeout, wait, true).is_err() {
                return Header::Close(CloseReason::Error);
            } else {
                (&*stream).read(space)
            }
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
                session.timing.header_read();
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
