//! [`PollerHandle`]: what a run's pollers share — the epoll instance, the
//! ready list beside it and the counts that say who takes from it — and
//! the manager thread's waker.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use mio::{Token, Waker};

use super::Ready;
use crate::epoll::Epoll;
use crate::handle::Rouse;
use crate::sync::{AtomicBool, AtomicUsize, List};

/// What a run's workers poll, and how they wake the manager thread: the
/// shared poller (new at every start) and the manager thread's waker.
pub(crate) struct PollerHandle {
    pub(crate) epoll: Epoll,
    /// Ready connections (tokens) a poller took in a batch beyond the one
    /// it serves: any poller takes them before waiting again (a list whose
    /// lock is held only to move entries, so that no poller that is
    /// preempted or blocked while it serves holds them). Pollers that
    /// are not searching wait on it; it also carries [`Ready::Search`] and
    /// [`Ready::Leave`].
    pub(crate) ready: List<Ready>,
    /// Whether a poller is searching: waiting in `epoll_wait`. At most one
    /// does at a time (tokio's rule: few searchers); the others wait on the
    /// ready list, so a burst wakes one thread, not every poller.
    pub(crate) searching: AtomicBool,
    /// Whether a handle's rouse nudged the searcher since the searcher
    /// last looked at the ready list: a burst of sends to many connections
    /// costs one nudge, not one each. The searcher clears it before it
    /// looks at the list, and the last poller before it moves the list to
    /// the queue; so a rouse that finds it set had its token put on the
    /// list before someone who will take it looked.
    pub(crate) nudged: AtomicBool,
    /// How many pollers take from the ready list (and will look at it
    /// again soon: not in a long turn): while one does, the searcher waits
    /// in the epoll instance even if the list holds more. Each counts
    /// itself through its `Slot::draining` flag.
    pub(crate) draining: AtomicUsize,
    /// At least how many shared [`Ready::Event`]s the list holds (counted
    /// before they go on it, and after they are taken off): while any
    /// does, the pollers share the list as it comes, and the searcher does
    /// not wait in the epoll instance — only a list of rouses (and events
    /// behind them) is left to the pollers already taking from it.
    pub(crate) events_listed: AtomicUsize,
    /// At least how many [`Ready::Roused`] the list holds (counted the
    /// same way): while any does, a searcher's batch of events goes
    /// behind them, in its turn.
    pub(crate) rouses_listed: AtomicUsize,
    pub(crate) waker: Arc<Waker>,
}

/// Whether [`PollerHandle::stop_draining`] may have to wake the searcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nudge {
    /// The caller is not the searcher.
    Searcher,
    /// The caller is the searcher, about to look at the list itself.
    No,
}

impl Rouse for PollerHandle {
    /// A handle's send: the connection's token on the ready list, as if
    /// the poller had reported it, and a nudge for the searcher (pollers
    /// waiting on the list take it themselves). With no poller, the nudge
    /// makes the shared poller readable for the manager thread, which
    /// starts one.
    fn rouse(&self, token: u64) {
        self.rouses_listed.fetch_add(1, SeqCst);
        self.ready.push(Ready::Roused(Token(token as usize)));
        if !self.nudged.swap(true, SeqCst) {
            self.epoll.nudge();
        }
    }
}

impl PollerHandle {
    /// Whether ready connections wait that no poller has taken: in the
    /// ready list, or in the epoll instance.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty() || self.epoll.has_ready()
    }

    /// Puts events the shared poller reported on the ready list: on a
    /// list with no rouse on it, a batch for every poller to share as it
    /// comes; behind rouses, in their turn (the pollers taking rouses
    /// serve them, and the searcher goes on waiting in the epoll
    /// instance). A rouse listed meanwhile may have the batch judged
    /// wrong, which changes only when it is served, never whether.
    pub(crate) fn list_events(&self, data: &[u64]) {
        let event = if self.rouses_listed.load(SeqCst) == 0 {
            self.events_listed.fetch_add(data.len(), SeqCst);
            Ready::shared_event
        } else {
            Ready::event
        };
        self.ready.extend(data.iter().map(|&data| event(data)));
    }

    /// The next entry of the ready list, if any.
    pub(crate) fn take_listed(&self) -> Option<Ready> {
        self.count_taken(self.ready.try_pop())
    }

    /// The next entry of the ready list, once there is one.
    pub(crate) fn wait_listed(&self) -> Ready {
        let ready = self.ready.wait_pop();
        self.count_taken(Some(ready));
        ready
    }

    fn count_taken(&self, ready: Option<Ready>) -> Option<Ready> {
        match ready {
            Some(Ready::Event { shared: true, .. }) => {
                self.events_listed.fetch_sub(1, SeqCst);
            }
            Some(Ready::Roused(_)) => {
                self.rouses_listed.fetch_sub(1, SeqCst);
            }
            _ => {}
        }
        ready
    }

    /// Everything the ready list holds.
    pub(crate) fn take_all_listed(&self) -> Vec<Ready> {
        std::iter::from_fn(|| self.take_listed()).collect()
    }

    /// Counts the poller whose flag is `draining` among those taking from
    /// the ready list.
    pub(crate) fn start_draining(&self, draining: &AtomicBool) {
        if !draining.swap(true, SeqCst) {
            self.draining.fetch_add(1, SeqCst);
        }
    }

    /// Counts it no more (it waits, searches or leaves; or the manager
    /// thread found it in a long turn). The last one, with the list not
    /// empty and a searcher that may wait in the epoll instance on the
    /// strength of it, wakes the searcher (`nudge`), unless the caller is
    /// the searcher.
    pub(crate) fn stop_draining(&self, draining: &AtomicBool, nudge: Nudge) {
        if draining.swap(false, SeqCst) {
            let last = self.draining.fetch_sub(1, SeqCst) == 1;
            if nudge == Nudge::Searcher
                && last
                && !self.ready.is_empty()
                && self.searching.load(SeqCst)
            {
                self.epoll.nudge();
            }
        }
    }

    /// Has a poller waiting on the ready list come and search, if none
    /// searches.
    pub(crate) fn call_searcher(&self) {
        if !self.searching.load(SeqCst) {
            self.ready.push(Ready::Search);
        }
    }
}
