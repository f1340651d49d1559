//! The acceptor: a [`Server`](crate::Server)'s own thread, which owns a
//! `mio::Poll` and the listening sockets, accepts connections and hands them
//! to the pool.
//!
//! Its events: a listener is readable (accept until `WouldBlock`), or the
//! waker fired (pause, resume or stop was asked). While paused or backing
//! off after an accept error such as `EMFILE`, the listeners are
//! deregistered, so new clients wait in the kernel backlog and the thread
//! sleeps; a back-off is the only timed wait.

use std::io;
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::config::Config;
use crate::error::PutError;
use crate::limits::{Control, Ticket};
use crate::pool::{Incoming, Shared};
use crate::proxy::Untrusted;
use crate::socket;
use crate::socket::refuse;
use crate::stats::{RateLimit, RejectReason};

/// The waker's token; listener `i` has `Token(i)`.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// How long accepting pauses after an error that is not about one
/// connection (out of file descriptors, out of memory…), as actix-server
/// does: retrying at once would spin.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

pub(crate) struct Acceptor {
    pub(crate) poll: Poll,
    pub(crate) listeners: Vec<TcpListener>,
    pub(crate) pool: Arc<Shared>,
    pub(crate) control: Arc<Control>,
    /// Whether the listeners are registered in `poll` now.
    pub(crate) registered: bool,
    /// Accepting resumes at this instant after an accept error.
    pub(crate) backoff_until: Option<Instant>,
    pub(crate) error_log: RateLimit,
    /// The manager's config, refreshed when it changes, and its generation.
    pub(crate) config: Arc<Config>,
    pub(crate) generation: u64,
}

impl Acceptor {
    /// The thread's body; gives the poller and listeners back when asked
    /// to stop.
    pub(crate) fn run(mut self) -> (Poll, Vec<TcpListener>) {
        let mut events = Events::with_capacity(256);
        while !self.control.stop.load(SeqCst) {
            if self.backoff_until.is_some_and(|t| Instant::now() >= t) {
                self.backoff_until = None;
            }
            self.refresh_config();
            let want = !self.control.paused.load(SeqCst)
                && self.backoff_until.is_none()
                && !self.at_limit();
            self.set_registered(want);
            let timeout = self
                .backoff_until
                .map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("acceptor poll failed, the acceptor stops: {e}");
                break;
            }
            for event in events.iter() {
                if event.token() != WAKER && self.registered {
                    self.accept_all(event.token().0);
                }
            }
        }
        self.set_registered(false);
        log::debug!("acceptor exits");
        (self.poll, self.listeners)
    }

    /// Picks up a new config; a new backlog is applied to the listeners.
    fn refresh_config(&mut self) {
        let backlog = self.config.backlog;
        if !self
            .pool
            .refresh_config(&mut self.generation, &mut self.config)
            || self.config.backlog == backlog
        {
            return;
        }
        for listener in &self.listeners {
            if let Err(e) = socket::relisten(listener, &self.config) {
                log::warn!("cannot change the backlog: {e}");
            }
        }
    }

    fn set_registered(&mut self, want: bool) {
        if want == self.registered {
            return;
        }
        let registry = self.poll.registry();
        for (i, listener) in self.listeners.iter_mut().enumerate() {
            let result = if want {
                registry.register(listener, Token(i), Interest::READABLE)
            } else {
                registry.deregister(listener)
            };
            if let Err(e) = result {
                log::error!("acceptor cannot (de)register listener {i}: {e}");
            }
        }
        self.registered = want;
        log::debug!("acceptor {}", if want { "accepting" } else { "paused" });
    }

    /// Accepts from listener `i` until it has nothing more, or accepting
    /// must pause.
    fn accept_all(&mut self, i: usize) {
        loop {
            if self.control.paused.load(SeqCst) || self.control.stop.load(SeqCst) {
                // On Windows the listener's one report is spent and only an
                // accept that finds nothing (or a new registration) re-arms
                // it: registered again on resume.
                if cfg!(windows) {
                    self.set_registered(false);
                }
                return;
            }
            if self.at_limit() {
                // Clients wait in the backlog; a closing connection wakes us.
                self.set_registered(false);
                return;
            }
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            match socket::accept(listener) {
                Ok((stream, ip, fresh)) => self.hand_over(stream, ip, fresh),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // About one connection only: go on with the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    self.log_error(&e, "skipped");
                }
                Err(e) => {
                    self.log_error(&e, "pausing accepts for 500 ms");
                    self.backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.set_registered(false);
                    return;
                }
            }
        }
    }

    /// Whether `max_connections` are open. If so, asks to be woken by the
    /// next close.
    fn at_limit(&self) -> bool {
        let Some(max) = self.config.max_connections else {
            return false;
        };
        let control = &*self.control;
        if control.open.load(SeqCst) < max {
            return false;
        }
        control.waiting.store(true, SeqCst);
        if control.open.load(SeqCst) < max {
            control.waiting.store(false, SeqCst);
            return false;
        }
        true
    }

    fn hand_over(&mut self, stream: TcpStream, peer: Option<IpAddr>, fresh: bool) {
        self.refresh_config();
        // A balancer's connections are counted by the client each PROXY
        // header names, once a worker has read it; a peer that `put` will
        // refuse as untrusted is not counted at all.
        let proxy = self.config.proxy_protocol.as_ref();
        let trusted = proxy.map(|p| peer.is_some_and(|ip| p.trusts(ip)));
        let uncounted = match (proxy, trusted) {
            (Some(proxy), Some(trusted)) => trusted || proxy.untrusted == Untrusted::Refuse,
            _ => false,
        };
        let ip = match (self.config.max_connections_per_ip, peer) {
            (None, _) | (_, None) => None,
            _ if uncounted => None,
            (Some(limit), Some(ip)) => {
                let mut per_ip = self.control.per_ip.lock();
                let n = per_ip.entry(ip).or_insert(0);
                if *n >= limit {
                    drop(per_ip);
                    self.pool.reject(RejectReason::PerIpLimit);
                    refuse(&stream, self.config.plain_busy_reply());
                    return;
                }
                *n += 1;
                Some(ip)
            }
        };
        let ticket = Ticket::new(&self.control, ip);
        if let Err(e) = socket::set_stream_options(&stream, &self.config) {
            log::debug!("cannot set options on an accepted stream: {e}");
        }
        let incoming = Incoming {
            stream,
            ticket: Some(ticket),
            fresh,
            accepted: Instant::now(),
            trusted,
        };
        match self.pool.put(incoming) {
            Ok(()) => {}
            Err(PutError::Untrusted(stream)) => refuse(&stream, &[]),
            Err(refused) => refuse(&refused.into_inner(), self.config.plain_busy_reply()),
        }
    }

    fn log_error(&self, e: &io::Error, what: &str) {
        if let Some(suppressed) = self.error_log.allow() {
            log::warn!("accept failed: {e}; {what} ({suppressed} more not logged)");
        }
    }
}
