//! The stop, in phases: under the lock (refuse new work, close what waits,
//! wake what reads), then outside it (join the threads, force what is left
//! at the deadline, report).

use std::mem;
use std::net::Shutdown;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::session::Session;
use crate::stats::{CloseReason, RejectReason};
use crate::sync::MutexGuard;
use crate::sync::thread::JoinHandle;

use super::lifecycle::ManagerThread;
use super::{Phase, Shared, State, Unserved};

/// How long [`Manager::stop_timeout`](crate::Manager::stop_timeout) waits,
/// after force-closing the connections left at its deadline, for their
/// handlers to return before it gives up on their threads.
pub const FORCE_GRACE: Duration = Duration::from_secs(1);

/// What [`Manager::stop`](crate::Manager::stop) and
/// [`Manager::stop_timeout`](crate::Manager::stop_timeout) report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopReport {
    /// Connections open when the stop began that closed by themselves:
    /// idle and parked ones closed at once, running handlers finished.
    pub drained: usize,
    /// Connections still open at the timeout, shut down by force.
    pub forced: usize,
    /// Queued streams closed unserved (sent
    /// [`busy_reply`](crate::Config::busy_reply)).
    pub queued: usize,
    /// Worker threads whose handler had not returned [`FORCE_GRACE`] after
    /// the force-close: they are left to finish on their own, not joined.
    pub abandoned: usize,
    /// How long the stop took.
    pub elapsed: Duration,
}

/// What `begin_stop` hands to `finish_stop`.
pub(crate) struct Stopping {
    pub(crate) started: Instant,
    /// Idle workers told to exit.
    retired: Vec<JoinHandle<()>>,
    manager_thread: Option<ManagerThread>,
    /// Queued streams (rejected) and woken connections (closed).
    pub(crate) queued: Unserved,
    /// Parked connections, closed at once.
    pub(crate) parked: Vec<Box<Session>>,
    /// Connections being served when the stop began.
    busy: usize,
}

impl Shared {
    /// Everything a stop does under the lock, without waiting.
    pub(crate) fn begin_stop(&self) -> Result<Stopping, Error> {
        let started = Instant::now();
        let shared = self;
        let mut state = shared.state.lock();
        match state.phase {
            Phase::Running => {}
            Phase::Stopping => return Err(Error::Stopping),
            Phase::Stopped => return Err(Error::NotRunning),
        }
        state.phase = Phase::Stopping;
        shared.stopping.store(true, SeqCst);
        let mut queued = Unserved::new(RejectReason::QueueStopped, CloseReason::Stop);
        queued.reply_from(&state.config);
        for q in state.queue.drain() {
            queued.push(q.work);
        }
        // Under the parked lock, after `stopping`: see `Shared::park`.
        let parked = shared.parked.drain();
        let mut retired = Vec::new();
        while let Some(join) = state.retire_oldest_idle(shared) {
            retired.push(join);
        }
        // Wake those blocked in a read, and count the connections served. A
        // handler that is running can still write; its next read returns 0.
        let busy = state
            .workers
            .values()
            .filter(|e| e.slot.shutdown(Shutdown::Read, true))
            .count();
        // Pollers waiting for a connection wake and retire: the searcher
        // through the epoll instance, the others through the ready list.
        if let Some(poller) = shared.poller.lock().as_ref() {
            poller.epoll.stop();
            poller
                .ready
                .extend(std::iter::repeat_n(super::Ready::Leave, state.pollers));
        }
        shared.wake_manager_thread();
        Ok(Stopping {
            started,
            retired,
            manager_thread: state.manager_thread.take(),
            queued,
            parked,
            busy,
        })
    }

    /// Waits for the threads of a begun stop, forcing what is left at
    /// `deadline`.
    pub(crate) fn finish_stop(&self, stopping: Stopping, deadline: Option<Instant>) -> StopReport {
        let shared = self;
        let queued = stopping.queued.streams.len();
        let closed_early = stopping.queued.sessions.len() + stopping.parked.len();
        stopping.queued.close(shared);
        shared.close_sessions(stopping.parked, CloseReason::Stop);
        for join in stopping.retired {
            let _ = join.join();
        }
        let poll = match stopping.manager_thread.map(JoinHandle::join) {
            Some(Ok(poll)) => Some(poll),
            Some(Err(_)) => {
                log::error!("the manager thread panicked; a new poller is made at the next start");
                None
            }
            None => None,
        };
        let mut state = shared.state.lock();
        state.poll = poll;
        let (mut forced, mut abandoned) = (0, 0);
        if !wait_for_workers(shared, &mut state, deadline) {
            for entry in state.workers.values() {
                if entry.slot.shutdown(Shutdown::Both, false) {
                    forced += 1;
                }
            }
            log::warn!("stop timed out: force-closed {forced} connections");
            let grace = Instant::now() + FORCE_GRACE;
            if !wait_for_workers(shared, &mut state, Some(grace)) {
                let stuck: Vec<u64> = state.workers.keys().copied().collect();
                abandoned = stuck.len();
                for id in stuck {
                    // Dropping the handle detaches the thread; the run
                    // number, bumped below, keeps it out of later runs.
                    drop(state.remove_worker(id, shared));
                }
                log::error!(
                    "stop abandoned {abandoned} worker threads whose handlers do not return"
                );
            }
        }
        let exited = mem::take(&mut state.exited);
        MutexGuard::unlocked(&mut state, || {
            for join in exited {
                let _ = join.join();
            }
        });
        state.phase = Phase::Stopped;
        state.run += 1;
        shared.run.store(state.run, SeqCst);
        shared.stopping.store(false, SeqCst);
        drop(state);
        let closed_early = closed_early + shared.closed_at_stop.swap(0, Relaxed);
        let report = StopReport {
            drained: stopping.busy.saturating_sub(forced) + closed_early,
            forced,
            queued,
            abandoned,
            elapsed: stopping.started.elapsed(),
        };
        log::debug!("stopped: {report:?}");
        report
    }
}

/// Waits until every worker has exited, or `deadline`; `true` if they have.
fn wait_for_workers(
    shared: &Shared,
    state: &mut MutexGuard<'_, State>,
    deadline: Option<Instant>,
) -> bool {
    while state.total > 0 {
        match deadline {
            None => shared.workers_changed.wait(state),
            Some(at) => {
                if shared.workers_changed.wait_until(state, at).timed_out() {
                    return state.total == 0;
                }
            }
        }
    }
    true
}
