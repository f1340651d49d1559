//! The reaper's decisions, taken by the manager thread under the manager's
//! lock: retire workers idle for longer than `worker_idle_timeout` (while
//! above `min_workers`), expire work queued for longer than `queue_timeout`,
//! and say when the next of these is due.

use std::mem;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::sync::thread::JoinHandle;

use super::{Queued, Shared, State, Unserved};
use crate::stats::{CloseReason, RejectReason};

/// What one look found to do outside the lock.
pub(crate) struct Reaped {
    expired: Unserved,
    /// Threads of retired workers, and of workers that retired themselves.
    joins: Vec<JoinHandle<()>>,
}

impl Reaped {
    pub(crate) fn is_empty(&self) -> bool {
        self.expired.is_empty() && self.joins.is_empty()
    }

    /// Closes what expired and joins what retired; outside the lock.
    pub(crate) fn finish(self, shared: &Shared) {
        self.expired.close(shared);
        for join in self.joins {
            let _ = join.join();
        }
    }
}

/// Everything due at `now`.
pub(crate) fn reap(shared: &Shared, state: &mut State, now: Instant) -> Reaped {
    let expired = expire_queued(state, now);
    let mut joins = Vec::new();
    while state.total > state.config.min_workers
        && state
            .idle
            .front()
            .is_some_and(|w| now.duration_since(w.since) >= state.config.worker_idle_timeout)
    {
        joins.extend(state.retire_oldest_idle(shared));
    }
    // Pollers above `pollers`, or one idle for `worker_idle_timeout` while
    // above `min_workers`: asked to leave (a nudge wakes one).
    if state.pollers == 0 {
        shared.poller_exits.store(0, Relaxed);
    }
    let surplus = state.pollers.saturating_sub(state.poller_target());
    let idle = state.total > state.config.min_workers
        && idle_poller_expiry(shared, state).is_some_and(|at| at <= now);
    if surplus > 0 || idle {
        shared.ask_pollers_to_leave(surplus.max(1));
    }
    joins.append(&mut mem::take(&mut state.exited));
    Reaped { expired, joins }
}

/// Pops the queued work that waited longer than `queue_timeout` (it is at
/// the front: the queue is FIFO). New streams are rejected; connections
/// that woke from parking are closed as [`CloseReason::Busy`]. Both are sent
/// `busy_reply`.
pub(crate) fn expire_queued(state: &mut State, now: Instant) -> Unserved {
    let mut expired = Unserved::new(RejectReason::QueueTimeout, CloseReason::Busy);
    let timeout = state.config.queue_timeout;
    while let Some(Queued { since, .. }) = state.queue.front() {
        if now.duration_since(*since) < timeout {
            break;
        }
        if let Some(Queued { work, .. }) = state.queue.pop_front() {
            if expired.is_empty() {
                expired.reply_from(&state.config);
            }
            expired.push(work);
        }
    }
    expired
}

/// When the reaper must look next: the oldest idle worker's retirement (only
/// while above `min_workers`) or the oldest queued work's expiry. A
/// timeout too large for the clock never expires.
pub(crate) fn next_expiry(shared: &Shared, state: &State) -> Option<Instant> {
    let above_min = state.total > state.config.min_workers;
    let idle = above_min
        .then(|| state.idle.front())
        .flatten()
        .and_then(|w| w.since.checked_add(state.config.worker_idle_timeout));
    let idle = earliest(
        idle,
        above_min
            .then(|| idle_poller_expiry(shared, state))
            .flatten(),
    );
    let queued = state
        .queue
        .front()
        .and_then(|q| q.since.checked_add(state.config.queue_timeout));
    earliest(idle, queued)
}

/// When the longest-idle poller (not in a turn, not asked to leave yet)
/// will have been idle for `worker_idle_timeout`.
///
/// On Windows the manager thread cannot watch the shared poller
/// (`manager_thread.rs`): the last poller stays while connections are
/// parked (never), rather than leave and be started again at once.
fn idle_poller_expiry(shared: &Shared, state: &State) -> Option<Instant> {
    if shared.poller_exits.load(Relaxed) > 0 {
        return None;
    }
    if cfg!(windows) && state.pollers <= 1 && shared.parked.len() > 0 {
        return None;
    }
    let since_ms = state
        .workers
        .values()
        .filter(|e| e.polling && e.slot.turn.load(Relaxed) % 2 == 0)
        .map(|e| e.slot.idle_since_ms.load(Relaxed))
        .min()?;
    shared
        .epoch
        .checked_add(Duration::from_millis(since_ms))?
        .checked_add(state.config.worker_idle_timeout)
}

/// The earlier of two optional instants.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
