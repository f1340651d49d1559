//! The acceptor: a [`Server`](crate::Server)'s own thread, which owns a
//! `mio::Poll` and the listening sockets, accepts connections and hands them
//! to the [`Manager`].
//!
//! Its events: a listener is readable (accept until `WouldBlock`), or the
//! waker fired (pause, resume or stop was asked). While paused or backing
//! off after an accept error such as `EMFILE`, the listeners are
//! deregistered, so new clients wait in the kernel backlog and the thread
//! sleeps; a back-off is the only timed wait.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::Config;
use crate::conn::refuse;
use crate::manager::Manager;
use crate::socket;
use crate::stats::RateLimit;

/// The waker's token; listener `i` has `Token(i)`.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// How long accepting pauses after an error that is not about one
/// connection (out of file descriptors, out of memory…), as actix-server
/// does: retrying at once would spin.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// What other threads ask of a running acceptor.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) paused: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) waker: Waker,
}

impl Control {
    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the acceptor: {e}");
        }
    }
}

pub(crate) struct Acceptor {
    pub(crate) poll: Poll,
    pub(crate) listeners: Vec<TcpListener>,
    pub(crate) manager: Arc<Manager>,
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
    /// The thread's body; gives the listeners back when asked to stop.
    pub(crate) fn run(mut self) -> Vec<TcpListener> {
        let mut events = Events::with_capacity(256);
        while !self.control.stop.load(SeqCst) {
            if self.backoff_until.is_some_and(|t| Instant::now() >= t) {
                self.backoff_until = None;
            }
            let want = !self.control.paused.load(SeqCst) && self.backoff_until.is_none();
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
        self.listeners
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
                return;
            }
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            match listener.accept() {
                Ok((stream, _peer)) => self.hand_over(stream.into()),
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

    fn hand_over(&mut self, stream: TcpStream) {
        self.manager
            .refresh_config(&mut self.generation, &mut self.config);
        if let Err(e) = socket::set_stream_options(&stream, &self.config) {
            log::debug!("cannot set options on an accepted stream: {e}");
        }
        if let Err(refused) = self.manager.put(stream) {
            refuse(refused.into_inner(), &self.config.busy_reply);
        }
    }

    fn log_error(&self, e: &io::Error, what: &str) {
        if let Some(suppressed) = self.error_log.allow() {
            log::warn!("accept failed: {e}; {what} ({suppressed} more not logged)");
        }
    }
}
