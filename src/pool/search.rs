//! How a poller finds its next connection: in the pollers' ready list or
//! in the shared poller's epoll instance.
//!
//! One poller at a time *searches* (waits in the epoll instance; tokio's
//! rule: few searchers); the others *take from the list*: connections a
//! searcher took in a batch beyond the one it serves, and the handles'
//! rouses, in order. While the list is long, the connections it names are
//! not the only ones ready: a client's request must not wait behind a
//! burst of rouses (a publisher's next message, which then joins the
//! subscribers' pending output instead of waiting for a pass over them to
//! be written). So the searcher waits in the epoll instance only while
//! another poller takes from the list; a poller alone takes from the list
//! and looks in the epoll instance, without waiting, every
//! [`SEARCH_EVERY`] turns.

use std::io;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::{Nudge, PollerHandle, Ready};
use crate::epoll::BATCH;
use crate::sync::AtomicBool;

/// Turns a poller takes from the ready list in a row before it looks in
/// the epoll instance (without waiting) for connections reported since.
const SEARCH_EVERY: u32 = 4;

/// What [`Search::next`] found.
pub(crate) enum Found {
    Ready(Ready),
    /// Nothing yet (a nudge, or the list emptied meanwhile): look at the
    /// pool's flags and search again.
    Again,
    /// The shared poller is stopping.
    Stop,
    /// The epoll instance failed (a bad descriptor or argument: nothing to
    /// retry).
    Failed(io::Error),
}

/// One poller's search: its batch of events and its place among the
/// pollers taking from the list ([`PollerHandle::draining`], through its
/// slot's flag), left when it stops taking, or drops this. Leaving it
/// last while the list holds more wakes the searcher, which may be waiting
/// on the strength of it.
pub(crate) struct Search<'a> {
    poller: &'a PollerHandle,
    batch: Vec<u64>,
    /// Turns taken from the list since this poller last searched.
    from_list: u32,
    /// The poller's `Slot::draining`.
    draining: &'a AtomicBool,
}

impl<'a> Search<'a> {
    pub(crate) fn new(poller: &'a PollerHandle, draining: &'a AtomicBool) -> Self {
        Search {
            poller,
            batch: Vec::with_capacity(BATCH),
            from_list: 0,
            draining,
        }
    }

    /// The next connection to serve, or why there is none; `waiting` is
    /// called before a wait that may block.
    pub(crate) fn next(&mut self, waiting: impl FnOnce()) -> Found {
        let poller = self.poller;
        let listed = !poller.ready.is_empty();
        // Events on the list are shared by every poller as they come (a
        // batch a searcher took); a list of rouses is taken by the pollers
        // already at it, with a look in the epoll instance every few turns.
        let events = poller.events_listed.load(SeqCst) > 0;
        if listed && (events || (self.draining.load(SeqCst) && self.from_list < SEARCH_EVERY)) {
            poller.start_draining(self.draining);
            self.from_list += 1;
            return self.take();
        }
        if poller
            .searching
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_ok()
        {
            return self.search(waiting);
        }
        if listed {
            // Another poller searches: the list is this one's.
            poller.start_draining(self.draining);
            self.take()
        } else {
            poller.stop_draining(self.draining, Nudge::Searcher);
            waiting();
            Found::Ready(poller.wait_listed())
        }
    }

    fn take(&self) -> Found {
        self.poller.take_listed().map_or(Found::Again, Found::Ready)
    }

    /// Searches, the role taken: waits in the epoll instance if the list is
    /// empty or another poller takes from it, else only looks.
    fn search(&mut self, waiting: impl FnOnce()) -> Found {
        let poller = self.poller;
        // It looks at the list itself: no nudge for it.
        poller.stop_draining(self.draining, Nudge::No);
        self.from_list = 0;
        // Rouses from here on nudge again; one that came before put its
        // token on the list before this look.
        poller.nudged.store(false, SeqCst);
        let wait = poller.ready.is_empty()
            || (poller.draining.load(SeqCst) > 0 && poller.events_listed.load(SeqCst) == 0);
        if wait {
            waiting();
        }
        let timeout = (!wait).then_some(Duration::ZERO);
        let waited = poller.epoll.wait_batch(timeout, &mut self.batch);
        poller.searching.store(false, SeqCst);
        match waited {
            Ok(signals) if signals.stop => Found::Stop,
            Ok(_) if self.batch.is_empty() => {
                // Alone with a list: take from it. Else a nudge.
                if !wait {
                    poller.start_draining(self.draining);
                }
                Found::Again
            }
            Ok(_) => {
                // The rest wake pollers waiting on the ready list.
                poller.list_events(&self.batch[1..]);
                let first = Ready::event(self.batch[0]);
                self.batch.clear();
                Found::Ready(first)
            }
            Err(e) => Found::Failed(e),
        }
    }
}

impl Drop for Search<'_> {
    fn drop(&mut self) {
        self.poller.stop_draining(self.draining, Nudge::Searcher);
    }
}
