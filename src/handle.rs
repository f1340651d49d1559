//! [`Handle`]: a connection's address for other threads — bytes to send and
//! a close, queued to the connection and taken by the worker that serves it
//! next, which is woken for them.
//!
//! The queue and its flags are the connection's [`Link`], shared by its
//! session and every clone of its handle. A send appends to the queue and,
//! unless a wake is on its way already, wakes the connection through its
//! current [`Wake`]: its token on the pollers' ready list (a parked
//! connection: as if the poller had reported it, whatever its socket's
//! state — a wake through the socket's readiness would be lost while its
//! buffer is full), or
//! the bell of the worker waiting for it in a blocking wait (dedicated mode,
//! or a lingering poller). A worker serving the connection takes the queue
//! at the start of each turn ([`Link::pull`]), behind the bytes the handler
//! already wrote, and writes it like its own replies (`outbound.rs`).
//! The session sets its wake before it waits, under the link's lock: a send
//! that found no wake to use leaves `wake_pending` set, and the new wake is
//! used at once.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use crate::epoll::Bell;
use crate::error::SendError;
use crate::outbound::Outbound;
use crate::sync::Mutex;

/// Handle ids: process-wide, so that ids of several managers differ too.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A connection's address for any thread: [`send`](Handle::send) bytes to
/// it, [`close`](Handle::close) it.
///
/// Get one from [`Conn::handle`](crate::Conn::handle), in any handler call
/// (including [`Handler::open`](crate::Handler::open)). It is cheap to clone
/// (an [`Arc`]), `Send` and `Sync`; it costs no thread, does not keep the
/// connection open, and dropping it costs nothing.
///
/// - Bytes sent leave soon, without waiting for the client to send
///   anything: a parked connection is woken through the pool's poller; a
///   connection being served gets them after the bytes its current handler
///   call writes, never in the middle of them.
/// - Bytes from one handle (or one thread) arrive in the order sent. They
///   are encrypted on a TLS connection and counted in
///   [`Stats::bytes_out`](crate::Stats).
/// - The bytes waiting for a connection (sent and not yet taken by its
///   socket, from its handler and its handles) are bounded by
///   [`Config::max_outbound_bytes`](crate::Config::max_outbound_bytes):
///   past it, [`send`](Handle::send) refuses with [`SendError::Full`] and
///   gives the bytes back.
///
/// ```
/// use std::io::Write;
/// use std::sync::Mutex;
/// use pool_manager::{Config, Conn, Handle, Manager};
///
/// // Every client's line goes to every client (a tiny chat room).
/// let room: Mutex<Vec<Handle>> = Mutex::new(Vec::new());
/// let manager = Manager::new(Config::default(), move |conn: &mut Conn<'_>, data: &[u8]| {
///     let me = conn.handle();
///     let mut room = room.lock().unwrap();
///     if !room.iter().any(|h| h.id() == me.id()) {
///         room.push(me);
///     }
///     // Closed connections leave the room at the next message.
///     room.retain(|h| h.send(data.to_vec()).is_ok() || !h.is_closed());
///     Ok(())
/// })?;
/// # Ok::<(), pool_manager::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Handle {
    link: Arc<Link>,
}

impl Handle {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Handle { link }
    }

    /// The connection's id: unique in the process, the same for every
    /// handle of the connection.
    pub fn id(&self) -> u64 {
        self.link.id
    }

    /// Queues `bytes` to the connection and has them written soon (see
    /// [`Handle`]). Returns at once: it never waits for the client.
    ///
    /// A message larger than the bound is taken when nothing else waits
    /// for the connection, so that any message can be sent.
    ///
    /// # Errors
    ///
    /// The bytes are given back:
    /// - [`SendError::Closed`]: the connection has closed, or a close was
    ///   asked for ([`close`](Handle::close), [`Conn::close`](crate::Conn::close));
    /// - [`SendError::Full`]: the bytes waiting for the connection would pass
    ///   [`Config::max_outbound_bytes`](crate::Config::max_outbound_bytes)
    ///   (its client reads slower than it is sent to). Drop the message,
    ///   try later, or close the connection: the policy is yours.
    pub fn send<B: AsRef<[u8]>>(&self, bytes: B) -> Result<(), SendError<B>> {
        let mut inner = self.link.inner.lock();
        if inner.closed || inner.close_asked {
            return Err(SendError::Closed(bytes));
        }
        let buf = bytes.as_ref();
        let waiting = inner.queue.len() + inner.held;
        if waiting > 0 && waiting.saturating_add(buf.len()) > inner.limit {
            return Err(SendError::Full(bytes));
        }
        inner.queue.push(buf);
        inner.wake();
        Ok(())
    }

    /// Closes the connection once the bytes queued before have been
    /// written (within [`write_deadline`](crate::Config::write_deadline)
    /// of no progress), counted as [`CloseReason::Handler`](crate::CloseReason).
    /// Later sends are refused. Does nothing on a closed connection.
    pub fn close(&self) {
        let mut inner = self.link.inner.lock();
        if inner.closed || inner.close_asked {
            return;
        }
        inner.close_asked = true;
        inner.wake();
    }

    /// Whether the connection has closed (or a close was asked for): sends
    /// are refused from then on.
    pub fn is_closed(&self) -> bool {
        let inner = self.link.inner.lock();
        inner.closed || inner.close_asked
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("id", &self.link.id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// What the session and its handles share.
pub(crate) struct Link {
    id: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Sent and not yet taken by the worker serving the connection.
    queue: Outbound,
    /// The connection has closed: sends are refused.
    closed: bool,
    /// A handle asked to close it.
    close_asked: bool,
    /// A wake is on its way, or none could be made yet (the session sets
    /// its wake before it waits and makes one then): later sends need
    /// none. Cleared when the worker takes the queue.
    wake_pending: bool,
    /// `max_outbound_bytes` as last seen by the worker.
    limit: usize,
    /// Bytes waiting in the session itself, as last seen by the worker.
    held: usize,
    wake: Wake,
}

/// The pool's pollers, as a handle reaches them: `rouse` has one serve
/// the connection registered under `token` soon, whatever its socket says.
pub(crate) trait Rouse: Send + Sync {
    fn rouse(&self, token: u64);
}

impl fmt::Debug for dyn Rouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pollers")
    }
}

/// How a send reaches the connection.
#[derive(Debug, Default)]
pub(crate) enum Wake {
    /// A worker serves it and takes the queue before it waits.
    #[default]
    Serving,
    /// Parked in the shared poller under `token`: the pool's pollers are
    /// told, as if the poller had reported it.
    Poller {
        pollers: Weak<dyn Rouse>,
        token: u64,
    },
    /// A worker waits for it in a blocking wait, with this bell.
    Bell(Weak<Bell>),
}

impl Inner {
    /// Wakes the connection, unless a wake is on its way.
    fn wake(&mut self) {
        if self.wake_pending {
            return;
        }
        self.wake_pending = true;
        self.ring();
    }

    fn ring(&self) {
        match &self.wake {
            Wake::Serving => {}
            Wake::Poller { pollers, token } => {
                // Gone: the pool stopped (and closed the connection).
                if let Some(pollers) = pollers.upgrade() {
                    pollers.rouse(*token);
                }
            }
            Wake::Bell(bell) => {
                if let Some(bell) = bell.upgrade() {
                    bell.ring();
                }
            }
        }
    }
}

impl Link {
    /// A new link, bounded by `limit` bytes waiting.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Link {
            id: NEXT_ID.fetch_add(1, Relaxed),
            inner: Mutex::new(Inner {
                queue: Outbound::default(),
                closed: false,
                close_asked: false,
                wake_pending: false,
                limit,
                held: 0,
                wake: Wake::Serving,
            }),
        })
    }

    /// The worker serving the connection takes what was sent, behind the
    /// bytes in `out`; `limit` is the bound in force. Returns whether a
    /// close was asked for.
    pub(crate) fn pull(&self, out: &mut Outbound, limit: usize) -> bool {
        let mut inner = self.inner.lock();
        inner.wake_pending = false;
        inner.limit = limit;
        let queued = std::mem::take(&mut inner.queue);
        if !queued.is_empty() {
            out.append_outbound(queued);
        }
        inner.held = out.len();
        inner.close_asked
    }

    /// The connection is about to wait: sends reach it through `wake` from
    /// now on (used at once if a send found none meanwhile). `held`: the
    /// bytes waiting in the session.
    pub(crate) fn set_wake(&self, wake: Wake, held: usize) {
        let mut inner = self.inner.lock();
        inner.wake = wake;
        inner.held = held;
        if inner.wake_pending {
            inner.ring();
        }
    }

    /// The connection is closing (its handler closed it): sends are
    /// refused from now on.
    pub(crate) fn refuse(&self) {
        self.inner.lock().close_asked = true;
    }

    /// The connection closed: sends are refused from now on, and what was
    /// queued is dropped.
    pub(crate) fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.queue = Outbound::default();
        inner.wake = Wake::Serving;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn sends_queue_in_order_within_the_bound() {
        let link = Link::new(10);
        let handle = Handle::new(Arc::clone(&link));
        handle.send(b"hello").unwrap();
        handle.send(b" you").unwrap();
        assert!(matches!(handle.send(b"!!"), Err(SendError::Full(b"!!"))));
        let mut out = Outbound::default();
        assert!(!link.pull(&mut out, 10));
        assert_eq!(out.len(), 9);
        // What the session holds counts too.
        assert!(handle.send(b"xx").is_err());
        link.set_wake(Wake::Serving, 0);
        handle.send(b"xx").unwrap();
        // A message larger than the bound goes when nothing waits.
        let link = Link::new(4);
        let handle = Handle::new(Arc::clone(&link));
        handle.send(vec![0; 100]).unwrap();
    }

    #[test]
    fn a_closed_connection_gives_the_bytes_back() {
        let link = Link::new(100);
        let handle = Handle::new(Arc::clone(&link));
        let other = handle.clone();
        assert_eq!(handle.id(), other.id());
        handle.close();
        assert!(other.is_closed());
        assert_eq!(other.send("late"), Err(SendError::Closed("late")));
        let mut out = Outbound::default();
        assert!(link.pull(&mut out, 100));
        let link = Link::new(100);
        let handle = Handle::new(Arc::clone(&link));
        link.close();
        assert_eq!(handle.send(vec![1]), Err(SendError::Closed(vec![1])));
    }

    #[test]
    fn a_send_rings_the_bell_once_until_pulled() {
        let link = Link::new(100);
        let handle = Handle::new(Arc::clone(&link));
        let bell = Arc::new(Bell::new().unwrap());
        link.set_wake(Wake::Bell(Arc::downgrade(&bell)), 0);
        handle.send(b"a").unwrap();
        handle.send(b"b").unwrap();
        assert_eq!(bell.rings_for_tests(), 1);
        let mut out = Outbound::default();
        link.pull(&mut out, 100);
        handle.send(b"c").unwrap();
        assert_eq!(bell.rings_for_tests(), 1);
    }

    #[test]
    fn a_send_before_the_wake_is_set_is_delivered_by_it() {
        let link = Link::new(100);
        let handle = Handle::new(Arc::clone(&link));
        handle.send(b"a").unwrap();
        let bell = Arc::new(Bell::new().unwrap());
        link.set_wake(Wake::Bell(Arc::downgrade(&bell)), 0);
        assert_eq!(bell.rings_for_tests(), 1);
    }
}
