//! The reaper: one thread per running manager that retires idle workers and
//! expires queued streams.
//!
//! It sleeps on a condition variable until the earliest of: the oldest idle
//! worker passing `worker_idle_timeout` (only while the pool is above
//! `min_workers`), the oldest queued stream passing `queue_timeout`, or a wake
//! from the manager (new idle worker or queued stream, new config, a worker
//! that retired itself and needs joining, stop). With nothing to expire it
//! sleeps without a timeout: an idle pool costs no CPU.

use std::io;
use std::mem;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use parking_lot::MutexGuard;

use crate::manager::{Phase, Shared, State};
use crate::worker::expire_queued;

/// Starts the reaper thread of a manager that is starting.
pub(crate) fn spawn(shared: &Arc<Shared>) -> io::Result<JoinHandle<()>> {
    let shared = Arc::clone(shared);
    thread::Builder::new()
        .name("pool-reaper".into())
        .spawn(move || run(&shared))
}

fn run(shared: &Shared) {
    let mut state = shared.state.lock();
    while state.phase == Phase::Running {
        let now = Instant::now();
        // Awake: whatever is queued from now on is seen below.
        state.reaper_plan = Some(now);
        let expired = expire_queued(&mut state, now);
        let mut retired = Vec::new();
        while state.total > state.config.min_workers
            && state
                .idle
                .front()
                .is_some_and(|w| now.duration_since(w.since) >= state.config.worker_idle_timeout)
        {
            retired.extend(state.retire_oldest_idle(shared));
        }
        let exited = mem::take(&mut state.exited);
        if !expired.is_empty() || !retired.is_empty() || !exited.is_empty() {
            MutexGuard::unlocked(&mut state, || {
                expired.close(shared);
                for join in retired.into_iter().chain(exited) {
                    let _ = join.join();
                }
            });
            continue;
        }
        // Set under the lock that the wait releases atomically: a stream
        // queued after this sees the plan, and wakes us if it is too late.
        state.reaper_plan = next_expiry(&state);
        match state.reaper_plan {
            Some(at) => {
                shared.reaper_wake.wait_until(&mut state, at);
            }
            None => shared.reaper_wake.wait(&mut state),
        }
    }
    log::debug!("reaper exits");
}

/// When the reaper must wake next: the oldest idle worker's retirement (only
/// while above `min_workers`) or the oldest queued stream's expiry. A
/// timeout too large for the clock never expires.
fn next_expiry(state: &State) -> Option<Instant> {
    let idle = (state.total > state.config.min_workers)
        .then(|| state.idle.front())
        .flatten()
        .and_then(|w| w.since.checked_add(state.config.worker_idle_timeout));
    let queued = state
        .queue
        .front()
        .and_then(|q| q.since.checked_add(state.config.queue_timeout));
    match (idle, queued) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
