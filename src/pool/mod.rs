//! The pool's shared state: what the [`Manager`](crate::Manager) façade,
//! the manager thread and the workers share, behind the manager's lock and
//! a few atomics, and the decisions taken on it.
//!
//! - this file: [`Shared`], the [`State`] behind its lock, and how work is
//!   given to workers (idle, new, or the poller role);
//! - `queue`: work on its way to a worker, the queue, and what is closed
//!   unserved;
//! - `slot`: the part of each worker that the others can reach;
//! - `poller`: [`PollerHandle`], what a run's pollers share (the epoll
//!   instance, the ready list and its counts);
//! - `ready` and `search`: the pollers' ready list, and how a poller finds
//!   its next connection;
//! - `lifecycle`: `put`, `set_config`, `stats`; `stop`: the stop in phases;
//! - `reaper` and `sysmon`: the manager thread's decisions.
//!
//! Nothing here imports the thread loops or the façade above it: a worker
//! thread is started through the entry point given to [`Shared::new`].

mod lifecycle;
mod parking;
mod poller;
mod queue;
mod ready;
pub(crate) mod reaper;
mod search;
mod slot;
mod stop;
pub(crate) mod sysmon;

pub(crate) use lifecycle::ManagerThread;
pub(crate) use parking::Taken;
pub(crate) use poller::{Nudge, PollerHandle};
pub(crate) use queue::{Incoming, Job, Queued, Unserved, Work};
pub(crate) use ready::Ready;
pub(crate) use search::{Found, Search};
pub(crate) use slot::{Idle, Slot, WorkerStart};
pub(crate) use stop::Stopping;
pub use stop::{FORCE_GRACE, StopReport};

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::sync::channel::{self, Sender};
use crate::sync::thread::{self, JoinHandle};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex};
use mio::{Poll, Token, Waker};

use crate::config::Config;
use crate::limits::Control;
use crate::os_thread::Clock;
use crate::park::Table;
use crate::serve::{Pool, Serve};
use crate::session::Session;
use crate::stats::{CloseReason, Counters, RateLimit, RejectReason};

use queue::Queue;

/// The manager thread's waker's token in its `mio::Poll`.
pub(crate) const MANAGER_WAKER: Token = Token(usize::MAX);

/// At most one warning per this interval about rejected streams.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Ids of managers: a process-wide count, outside any model.
static NEXT_MANAGER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// The id of the manager whose worker runs on this thread (0: none).
    pub(crate) static CURRENT_MANAGER: Cell<u64> = const { Cell::new(0) };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Stopped,
    Running,
    Stopping,
}

pub(crate) struct WorkerEntry {
    pub(crate) slot: Arc<Slot>,
    join: JoinHandle<()>,
    /// Whether it has the poller role.
    pub(crate) polling: bool,
    /// Its `Slot::turn` when the manager thread last looked.
    pub(crate) seen: u64,
    /// Its thread's scheduler clock and state, opened by the first look
    /// that finds the thread's id (see `sysmon`).
    clock: Option<Clock>,
    /// When the last look was and the clock's reading then, if the worker
    /// was polling and in a turn at that look.
    pub(crate) awake_seen: Option<(Instant, Option<Duration>)>,
}

impl WorkerEntry {
    /// The time its thread has been awake in all, if the OS says. Its
    /// clock is opened at the first call that can (two descriptors per
    /// worker, until it retires).
    pub(crate) fn awake(&mut self) -> Option<Duration> {
        self.clock()?.awake()
    }

    /// Whether its thread is asleep in the kernel now; unknown counts as
    /// asleep (`os_thread::Clock::asleep_now`).
    pub(crate) fn asleep_now(&mut self) -> bool {
        self.clock().is_none_or(Clock::asleep_now)
    }

    /// Its clock, opened now if it was not and can be.
    fn clock(&mut self) -> Option<&Clock> {
        if self.clock.is_none() {
            self.clock = Clock::of(self.slot.tid.load(Relaxed));
        }
        self.clock.as_ref()
    }
}

/// What the manager, the manager thread and the workers share.
///
/// Locks, always taken in this order: `state`, then `parked`, then
/// `poller`.
pub(crate) struct Shared {
    /// Tells this manager's worker threads apart (see [`CURRENT_MANAGER`]).
    pub(crate) id: u64,
    pub(crate) state: Mutex<State>,
    /// Parked connections and their timers.
    pub(crate) parked: Table,
    /// The manager thread's registry and waker, once it first started.
    poller: Mutex<Option<Arc<PollerHandle>>>,
    /// Mirrors `State::queue`'s length.
    pub(crate) queued: Arc<AtomicUsize>,
    /// Connections closed for the stop by their worker (taken just as the
    /// stop began, or refused a re-park by it) that the stop's visit of the
    /// slots did not count, for the stop's report.
    pub(crate) closed_at_stop: AtomicUsize,
    /// Signalled whenever a worker retires itself; `stop` waits on it.
    pub(crate) workers_changed: Condvar,
    /// Mirrors `State::generation`, so that a worker can see a new config
    /// without taking the lock.
    pub(crate) generation: AtomicU64,
    /// Set while stopping; a worker that registers a stream after `stop`
    /// shut the others down sees it.
    pub(crate) stopping: AtomicBool,
    /// Mirrors `State::run`, for a park to check without the state lock.
    pub(crate) run: AtomicU64,
    /// Set while the manager thread looks (every `grow_after`, backing off
    /// to 8 × `grow_after`) for pollers' turns that run long; a poller beginning a turn while it is clear
    /// sets it and wakes the manager thread.
    pub(crate) ticking: AtomicBool,
    /// Pollers asked to leave the role (idle too long, or above
    /// `pollers`); a poller that takes one leaves.
    pub(crate) poller_exits: AtomicUsize,
    /// The origin of the slots' `idle_since_ms`.
    pub(crate) epoch: Instant,
    pub(crate) counters: Counters,
    reject_log: RateLimit,
    pub(crate) service: Box<dyn Serve>,
    /// What a worker thread runs.
    worker_main: fn(WorkerStart),
    /// The acceptor of the server around this manager, if any.
    pub(crate) acceptor: Mutex<Option<Weak<Control>>>,
}

/// Everything behind the manager's lock.
pub(crate) struct State {
    pub(crate) phase: Phase,
    /// Incremented at every stop, so that a worker abandoned by a
    /// `stop_timeout` cannot touch the state of a later run.
    pub(crate) run: u64,
    pub(crate) config: Arc<Config>,
    pub(crate) generation: u64,
    /// Workers alive: busy + idle.
    pub(crate) total: usize,
    /// Idle workers, the most recently idle at the back (served first: warm
    /// caches), the oldest at the front (reaped first).
    pub(crate) idle: VecDeque<Idle>,
    pub(crate) queue: Queue,
    pub(crate) workers: BTreeMap<u64, WorkerEntry>,
    /// Workers with the poller role.
    pub(crate) pollers: usize,
    /// Workers that retired themselves, to be joined by the manager thread
    /// or stop.
    pub(crate) exited: Vec<JoinHandle<()>>,
    next_worker_id: u64,
    /// The manager thread while running; it gives its poller back when
    /// joined.
    manager_thread: Option<JoinHandle<(Poll, Arc<Waker>)>>,
    /// The manager thread's poller and its waker, kept while stopped for
    /// the next start.
    poll: Option<(Poll, Arc<Waker>)>,
    /// When the manager thread will look at the state next: `None` while it
    /// sleeps without a timeout, the instant it set while it sleeps until
    /// one, and a past instant while it is awake.
    pub(crate) reaper_plan: Option<Instant>,
    /// Until when handlers count as blocking often: the sysmon handed a
    /// blocked poller's role on recently. It then looks four times as
    /// often off Linux, and a release before this brings the spare poller
    /// on Linux (see `sysmon`).
    pub(crate) sysmon_fast_until: Option<Instant>,
    /// Until when the pool keeps spare pollers: the sysmon handed a
    /// blocked poller's role on while still looking fast from the last
    /// such hand-off, so handlers block often (see `poller_target`).
    pub(crate) spare_until: Option<Instant>,
    /// How many spare pollers while `spare_until` is ahead (at least one;
    /// `sysmon::spares`).
    pub(crate) spares: usize,
    /// When the sysmon handed blocked pollers' roles on, oldest first:
    /// those within `sysmon::FAST_FOR` of the latest, pruned at each
    /// release (at most `sysmon::RELEASES_KEPT`).
    pub(crate) releases: VecDeque<Instant>,
    /// When the sysmon's next look is due, while it is looking.
    pub(crate) sysmon_next: Option<Instant>,
    /// The sysmon's looks in a row that found nothing to do (no poller in
    /// a long turn, none missing while connections wait, no release within
    /// `FAST_FOR`), idle spells included: it looks less often as they add
    /// up.
    pub(crate) sysmon_quiet: u32,
}

impl State {
    /// Forgets a worker that is exiting; its thread still has to be joined.
    pub(crate) fn remove_worker(&mut self, id: u64, shared: &Shared) -> Option<JoinHandle<()>> {
        let entry = self.workers.remove(&id)?;
        if entry.polling {
            self.pollers -= 1;
        }
        entry.slot.bytes.add_to(&shared.counters.retired_bytes);
        self.total -= 1;
        shared.counters.workers_retired.fetch_add(1, Relaxed);
        Some(entry.join)
    }

    /// How many pollers the pool keeps: `pollers`, and `spares` more while
    /// handlers block often (for `sysmon::FAST_FOR` after the sysmon handed
    /// a blocked poller's role on for the second time within that long: a
    /// poller that blocks then leaves the others covering every CPU while
    /// it is replaced; a one-off block, such as a library's one-time set-up
    /// behind a lock, brings only its replacement); capped by
    /// `max_workers`.
    pub(crate) fn poller_target(&self) -> usize {
        let spare = self.spare_until.is_some_and(|until| Instant::now() < until);
        // Capped by the `pollers` in force (`set_config` may have lowered
        // it since the count was made).
        let most = sysmon::most_spares(self.config.pollers);
        let spares = if spare { self.spares.min(most) } else { 0 };
        (self.config.pollers + spares).min(self.config.max_workers)
    }

    /// Gives worker `id` the poller role, its idle clock starting at
    /// `now_ms` (in `Shared::now_ms`).
    pub(crate) fn start_polling(&mut self, id: u64, now_ms: u64) {
        if let Some(entry) = self.workers.get_mut(&id) {
            entry.slot.idle_since_ms.store(now_ms, Relaxed);
            if !entry.polling {
                entry.polling = true;
                self.pollers += 1;
            }
        }
    }

    /// Takes the poller role from worker `id`, if it has it.
    pub(crate) fn stop_polling(&mut self, id: u64) {
        if let Some(entry) = self.workers.get_mut(&id) {
            if entry.polling {
                entry.polling = false;
                self.pollers -= 1;
            }
        }
    }

    /// Whether a worker going idle should poll instead: in polled mode
    /// while there are fewer pollers than wanted; in dedicated mode only
    /// while none polls and connections are parked (from before a switch).
    pub(crate) fn wants_poller(&self, shared: &Shared) -> bool {
        if self.config.park_after.is_some() {
            self.pollers < self.poller_target()
        } else {
            self.pollers == 0 && shared.parked.len() > 0
        }
    }

    /// Retires the longest-idle worker: tells it to exit and returns its
    /// thread to join (outside the lock).
    pub(crate) fn retire_oldest_idle(&mut self, shared: &Shared) -> Option<JoinHandle<()>> {
        let idle = self.idle.pop_front()?;
        // Its channel is empty while it is idle: this never blocks.
        let _ = idle.tx.send(Job::Exit);
        log::debug!("retiring idle worker {}", idle.id);
        self.remove_worker(idle.id, shared)
    }

    /// Puts `work` in the queue; wakes the manager thread only if it would
    /// otherwise sleep past the work's expiry (waking it at every 0 → 1
    /// transition made it contend for the lock with the worker taking the
    /// work).
    pub(crate) fn enqueue(&mut self, shared: &Shared, work: Work) {
        let since = Instant::now();
        self.queue.push_back(Queued { work, since });
        let expiry = since.checked_add(self.config.queue_timeout);
        let needed = match (self.reaper_plan, expiry) {
            (_, None) => false,      // never expires
            (None, Some(_)) => true, // the manager thread sleeps without a timeout
            (Some(plan), Some(at)) => plan > at,
        };
        if self.queue.len() == 1 && needed {
            shared.wake_manager_thread();
        }
    }
}

/// Where [`assign`] put the work.
pub(crate) enum Assigned {
    /// To an idle worker: send it this job on this channel, after unlocking.
    Idle(Sender<Job>, Job),
    /// To a new worker, started with it.
    Spawned,
    /// Nowhere: every worker is busy and the pool is at `max_workers`.
    Busy(Work),
}

/// Gives `work` to the most recently idle worker, or to a new worker below
/// `max_workers`.
pub(crate) fn assign(shared: &Arc<Shared>, state: &mut State, work: Work) -> Assigned {
    if let Some(idle) = state.idle.pop_back() {
        return Assigned::Idle(idle.tx, Job::Serve(work));
    }
    if state.total < state.config.max_workers {
        return match spawn_worker(shared, state, Some(Job::Serve(work))) {
            Ok(_) => Assigned::Spawned,
            Err((_, Some(Job::Serve(work)))) => Assigned::Busy(work),
            Err(_) => Assigned::Spawned,
        };
    }
    Assigned::Busy(work)
}

impl Shared {
    /// Replaces `config` with the one in force if `set_config` changed it
    /// since `generation`; `true` if it did. One atomic load otherwise.
    pub(crate) fn refresh_config(&self, generation: &mut u64, config: &mut Arc<Config>) -> bool {
        if self.generation.load(Relaxed) == *generation {
            return false;
        }
        let state = self.state.lock();
        *config = Arc::clone(&state.config);
        *generation = state.generation;
        true
    }

    /// Closes connections that are not on a worker, counted as `reason`,
    /// with no reply (see [`Serve::close`]).
    pub(crate) fn close_sessions(
        &self,
        sessions: impl IntoIterator<Item = Box<Session>>,
        reason: CloseReason,
    ) {
        for session in sessions {
            self.service.close(session, reason, &[], &self.counters);
        }
    }

    /// Wakes the manager thread, if it has ever started.
    pub(crate) fn wake_manager_thread(&self) {
        if let Some(poller) = self.poller.lock().as_ref() {
            wake(&poller.waker);
        }
    }

    /// A poller begins a turn: the manager thread must be looking for turns
    /// that run long. Wakes it only if it is not already (`ticking`).
    pub(crate) fn turn_begins(&self) {
        // Pairs with the manager thread clearing `ticking` and then reading
        // every `Slot::turn`: one of the two sees the other.
        if !self.ticking.load(SeqCst) && !self.ticking.swap(true, SeqCst) {
            self.wake_manager_thread();
        }
    }

    /// Moves the connections a poller took but has not served (`tokens`)
    /// to the queue, where any worker takes them.
    pub(crate) fn requeue(&self, state: &mut State, ready: impl IntoIterator<Item = Ready>) {
        let now = Instant::now();
        for ready in ready {
            if let Some(mut session) = ready.take_out(&self.parked) {
                self.counters.wakes.fetch_add(1, Relaxed);
                session.woken_at = Some(now);
                state.enqueue(self, Work::Resumed(session));
            }
        }
    }

    /// Milliseconds since `epoch`.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks `n` pollers to leave the role, unless as many are asked already.
    pub(crate) fn ask_pollers_to_leave(&self, n: usize) {
        if n > self.poller_exits.load(SeqCst) {
            self.poller_exits.store(n, SeqCst);
            if let Some(poller) = self.poller.lock().as_ref() {
                poller.epoll.nudge();
            }
        }
    }

    /// Takes one request to leave the poller role, if there is one.
    pub(crate) fn take_poller_exit(&self) -> bool {
        self.poller_exits
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Gives the poller role to an idle worker, or to a new one below
    /// `max_workers`; `false` if there is none.
    pub(crate) fn start_poller(self: &Arc<Self>, state: &mut State) -> bool {
        // A poller is wanted: requests to leave are out of date.
        self.poller_exits.store(0, SeqCst);
        if let Some(idle) = state.idle.pop_back() {
            state.start_polling(idle.id, self.now_ms());
            // An idle worker's channel is empty: this never blocks.
            if idle.tx.send(Job::Poll).is_ok() {
                return true;
            }
            state.stop_polling(idle.id);
            return false;
        }
        if state.total >= state.config.max_workers {
            return false;
        }
        match spawn_worker(self, state, Some(Job::Poll)) {
            Ok(id) => {
                state.start_polling(id, self.now_ms());
                true
            }
            Err(_) => false,
        }
    }

    /// The manager thread's registry and waker, once it first started.
    pub(crate) fn poller(&self) -> Option<Arc<PollerHandle>> {
        self.poller.lock().clone()
    }

    /// The configuration in force, without copying, and its generation.
    pub(crate) fn config_arc(&self) -> (u64, Arc<Config>) {
        let state = self.state.lock();
        (state.generation, Arc::clone(&state.config))
    }

    /// Closes what a begun stop would close, without waiting for the
    /// threads: for a manager dropped by one of its own handlers.
    pub(crate) fn close_unwaited(&self, stopping: Stopping) {
        stopping.queued.close(self);
        self.close_sessions(stopping.parked, CloseReason::Stop);
    }

    /// Counts a rejection, and warns about it at most once per
    /// [`REJECT_LOG_INTERVAL`].
    pub(crate) fn reject(&self, reason: RejectReason) {
        self.counters.reject(reason);
        if let Some(suppressed) = self.reject_log.allow() {
            log::warn!(
                "stream rejected ({reason:?}); {suppressed} more rejections not logged since the last warning"
            );
        }
    }
}

/// Starts a worker thread under the lock, and returns its id. With `first`,
/// the worker begins with that job; without, it joins the idle stack. If the
/// thread cannot be started, `first` is given back.
fn spawn_worker(
    shared: &Arc<Shared>,
    state: &mut State,
    first: Option<Job>,
) -> Result<u64, (io::Error, Option<Job>)> {
    let id = state.next_worker_id;
    state.next_worker_id += 1;
    let (tx, rx) = channel::bounded(1);
    let has_job = first.is_some();
    if let Some(job) = first {
        // The channel is new and has room for one: this never blocks.
        let _ = tx.send(job);
    }
    // Kept to take the stream back if the thread cannot start.
    let rx_back = rx.clone();
    let slot = Arc::new(Slot::default());
    let worker = WorkerStart {
        shared: Arc::clone(shared),
        id,
        run: state.run,
        slot: Arc::clone(&slot),
        tx: tx.clone(),
        rx,
        poller: shared.poller(),
    };
    let main = shared.worker_main;
    let spawned = thread::Builder::new()
        .name(format!("pool-worker-{id}"))
        .spawn(move || main(worker));
    match spawned {
        Ok(join) => {
            state.workers.insert(
                id,
                WorkerEntry {
                    slot,
                    join,
                    polling: false,
                    seen: 0,
                    clock: None,
                    awake_seen: None,
                },
            );
            state.total += 1;
            shared.counters.workers_spawned.fetch_add(1, Relaxed);
            log::debug!("spawned worker {id} ({} alive)", state.total);
            if !has_job {
                state.idle.push_back(Idle {
                    id,
                    tx,
                    since: Instant::now(),
                });
                if state.idle.len() == 1 {
                    shared.wake_manager_thread();
                }
            }
            Ok(id)
        }
        Err(e) => {
            shared.counters.spawn_failures.fetch_add(1, Relaxed);
            log::error!("could not start a worker thread: {e}");
            Err((e, rx_back.try_recv().ok()))
        }
    }
}

/// Wakes the manager thread through its waker.
pub(crate) fn wake(waker: &Waker) {
    if let Err(e) = waker.wake() {
        log::error!("cannot wake the manager thread: {e}");
    }
}

impl Pool for Shared {
    fn refresh_config(&self, generation: &mut u64, config: &mut Arc<Config>) -> bool {
        Shared::refresh_config(self, generation, config)
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    fn others_wait(&self) -> bool {
        self.queued.load(Relaxed) > 0 || self.poller().is_some_and(|p| p.has_ready())
    }

    fn evict_largest(&self, mine: usize) -> bool {
        // The largest in each shard, then the largest of those: O(parked),
        // only while the pool is past its bound.
        let mut largest: Option<(usize, Token)> = None;
        self.parked.each(|parked| {
            if let Some(found) = parked.largest() {
                if largest.is_none_or(|(held, _)| found.0 > held) {
                    largest = Some(found);
                }
            }
        });
        let Some((held, token)) = largest.filter(|&(held, _)| held > mine) else {
            return true;
        };
        // Unless a worker took it meanwhile: then it is judged there.
        if let Some(session) = self.parked.take_out(token, false) {
            log::debug!("evicting a parked connection holding {held} bytes");
            self.close_sessions([session], CloseReason::Evicted);
        }
        false
    }

    fn disarm(&self, stream: &crate::stream::Stream) {
        if let Some(poller) = self.poller() {
            if let Err(e) = poller.epoll.disarm(stream) {
                log::debug!("cannot disarm a connection: {e}");
            }
        }
    }
}
