//! A server's connection limits, shared by its acceptor and the pool: the
//! open-connection count behind `max_connections`, the per-IP counts, and
//! the [`Ticket`] each accepted connection carries until it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use crate::sync::{AtomicBool, AtomicUsize, Condvar, Mutex};
use mio::Waker;

/// What the acceptor shares with other threads: what they ask of it, and
/// the connection counts behind the limits.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) paused: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) waker: Waker,
    /// Connections this server accepted that are not closed yet.
    pub(crate) open: AtomicUsize,
    /// Open connections per client address, while a per-IP limit is set.
    pub(crate) per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Set while the acceptor waits at `max_connections`: the next
    /// connection to close wakes it.
    pub(crate) waiting: AtomicBool,
    /// Accepted connections whose first request is not served yet: the
    /// handler has not yet returned keeping none of the bytes it was
    /// given. A [`shutdown`](crate::Server::shutdown) waits for them.
    pub(crate) unserved: AtomicUsize,
    /// Set while a shutdown waits for `unserved` to reach 0, on `served`.
    draining: AtomicBool,
    drain_lock: Mutex<()>,
    served: Condvar,
}

/// A connection's place under the server's limits, given back when the
/// connection is dropped, wherever that happens (worker, queue expiry,
/// refusal, stop).
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) control: Arc<Control>,
    pub(crate) ip: Option<IpAddr>,
    /// Counted in `Control::unserved`.
    unserved: bool,
}

impl Ticket {
    /// A ticket for a connection just accepted from `ip` (`None`: not
    /// counted per IP), counted as open and unserved.
    pub(crate) fn new(control: &Arc<Control>, ip: Option<IpAddr>) -> Ticket {
        control.open.fetch_add(1, SeqCst);
        control.unserved.fetch_add(1, SeqCst);
        Ticket {
            control: Arc::clone(control),
            ip,
            unserved: true,
        }
    }

    /// The handler returned having taken all the bytes it was given: the
    /// connection's first request is served.
    pub(crate) fn served(&mut self) {
        if std::mem::take(&mut self.unserved) {
            self.control.one_served();
        }
    }

    /// Counts the connection under `ip`, the client a PROXY header named,
    /// if it has fewer than `limit` open; `false` if it has not.
    pub(crate) fn claim(&mut self, ip: IpAddr, limit: usize) -> bool {
        if self.ip.is_some() {
            return true; // counted at accept time
        }
        let mut per_ip = self.control.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        self.ip = Some(ip);
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let control = &*self.control;
        if let Some(ip) = self.ip {
            let mut per_ip = control.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if self.unserved {
            control.one_served();
        }
        control.open.fetch_sub(1, SeqCst);
        // Pairs with `Acceptor::at_limit`: it sets `waiting` and then reads
        // `open`; we lower `open` and then read `waiting`. One of us sees
        // the other.
        if control.waiting.load(SeqCst) && control.waiting.swap(false, SeqCst) {
            control.wake();
        }
    }
}

impl Control {
    pub(crate) fn new(waker: Waker) -> Self {
        Control {
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            waker,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            waiting: AtomicBool::new(false),
            unserved: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            drain_lock: Mutex::new(()),
            served: Condvar::new(),
        }
    }

    fn one_served(&self) {
        // Pairs with `wait_served`: it sets `draining` and then reads
        // `unserved` under the lock; we lower `unserved`, then read
        // `draining` and notify under the lock.
        if self.unserved.fetch_sub(1, SeqCst) == 1 && self.draining.load(SeqCst) {
            let _guard = self.drain_lock.lock();
            self.served.notify_all();
        }
    }

    /// Waits until every accepted connection has had its first request
    /// served (or closed), or `deadline` (`None`: no limit); whether they
    /// all have.
    pub(crate) fn wait_served(&self, deadline: Option<Instant>) -> bool {
        let mut guard = self.drain_lock.lock();
        self.draining.store(true, SeqCst);
        while self.unserved.load(SeqCst) > 0 {
            match deadline {
                Some(at) => {
                    if self.served.wait_until(&mut guard, at).timed_out() {
                        break;
                    }
                }
                None => self.served.wait(&mut guard),
            }
        }
        self.draining.store(false, SeqCst);
        self.unserved.load(SeqCst) == 0
    }

    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the acceptor: {e}");
        }
    }
}
