//! [`Manager`]: the pool's front door, and the state it shares with its
//! threads.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::mem;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::{Poll, Waker};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::acceptor::{Control, Ticket};
use crate::config::Config;
use crate::conn::{Conn, refuse};
use crate::epoll::Epoll;
use crate::error::{ConfigError, Error, PutError};
use crate::handler::{FnHandler, Handler};
use crate::park::Parked;
use crate::poller;
use crate::serve::Serve;
use crate::session::Session;
use crate::stats::{ByteCounters, CloseReason, Counters, RateLimit, RejectReason, Stats};
use crate::worker::{Idle, Job, Slot, Work, Worker};

/// How long [`Manager::stop_timeout`] waits, after force-closing the
/// connections left at its deadline, for their handlers to return before it
/// gives up on their threads.
pub const FORCE_GRACE: Duration = Duration::from_secs(1);

/// At most one warning per this interval about rejected streams.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

static NEXT_MANAGER_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the manager whose worker runs on this thread (0: none).
    pub(crate) static CURRENT_MANAGER: Cell<u64> = const { Cell::new(0) };
}

/// A pool of worker threads serving TCP connections.
///
/// Create it with [`Manager::new`] (a closure) or [`Manager::with_handler`]
/// (a [`Handler`]), [`start`](Manager::start) it, and hand it accepted
/// streams with [`put`](Manager::put). Every method takes `&self`: share the
/// manager between the accept loop and a control thread with an `Arc`.
///
/// Dropping a running manager stops it (as [`stop`](Manager::stop)).
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use pool_manager::{Config, Conn, Manager};
///
/// let manager = Manager::new(Config::default(), |conn: &mut Conn<'_>, data: &[u8]| {
///     conn.write_all(data) // echo
/// })?;
/// manager.start()?;
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let mut client = TcpStream::connect(listener.local_addr()?)?;
/// let (stream, _) = listener.accept()?;
/// manager.put(stream)?;
///
/// client.write_all(b"hello")?;
/// let mut reply = [0; 5];
/// client.read_exact(&mut reply)?;
/// assert_eq!(&reply, b"hello");
///
/// drop(client);
/// let report = manager.stop()?;
/// assert_eq!(report.forced, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Manager {
    shared: Arc<Shared>,
}

/// What [`Manager::stop`] and [`Manager::stop_timeout`] report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Stopped,
    Running,
    Stopping,
}

/// A stream on its way through the pool, with the [`Ticket`] that holds
/// its place under a [`Server`](crate::Server)'s connection limits (released
/// when the stream is dropped, wherever that happens).
pub(crate) struct Incoming {
    pub(crate) stream: TcpStream,
    pub(crate) ticket: Option<Ticket>,
    /// Accepted by a server's acceptor as a blocking socket with no
    /// timeouts set: the worker skips the system calls that would set what
    /// is already so. Streams from `put` may be anything.
    pub(crate) fresh: bool,
    /// When the pool took it: the first-byte deadline and the lifetime
    /// count from here.
    pub(crate) accepted: Instant,
}

/// Work waiting in the queue for a worker.
pub(crate) struct Queued {
    pub(crate) work: Work,
    pub(crate) since: Instant,
}

/// The FIFO queue of work waiting for a worker, with its length mirrored in
/// an atomic so that a worker can see, without the lock, that others wait.
pub(crate) struct Queue {
    items: VecDeque<Queued>,
    len: Arc<AtomicUsize>,
}

impl Queue {
    fn new(len: Arc<AtomicUsize>) -> Self {
        Queue {
            items: VecDeque::new(),
            len,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    pub(crate) fn push_back(&mut self, queued: Queued) {
        self.items.push_back(queued);
        self.len.store(self.items.len(), Relaxed);
    }

    pub(crate) fn push_front(&mut self, queued: Queued) {
        self.items.push_front(queued);
        self.len.store(self.items.len(), Relaxed);
    }

    pub(crate) fn pop_front(&mut self) -> Option<Queued> {
        let queued = self.items.pop_front();
        self.len.store(self.items.len(), Relaxed);
        queued
    }

    fn drain(&mut self) -> Vec<Queued> {
        let all = self.items.drain(..).collect();
        self.len.store(0, Relaxed);
        all
    }
}

/// Work the manager turns away or closes without a worker (queued too
/// long, queued at stop, parked at stop): each is counted, sent the busy
/// reply where one is due, and closed — outside the lock.
pub(crate) struct Unserved {
    /// New streams, never served: rejections.
    pub(crate) streams: Vec<Incoming>,
    /// Connections already taken by the pool: closes.
    pub(crate) sessions: Vec<Box<Session>>,
    pub(crate) reply: Vec<u8>,
    reject: RejectReason,
    close: CloseReason,
}

impl Unserved {
    pub(crate) fn new(reject: RejectReason, close: CloseReason) -> Self {
        Unserved {
            streams: Vec::new(),
            sessions: Vec::new(),
            reply: Vec::new(),
            reject,
            close,
        }
    }

    pub(crate) fn push(&mut self, work: Work) {
        match work {
            Work::New(incoming) => self.streams.push(incoming),
            Work::Resumed(session) => self.sessions.push(session),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.sessions.is_empty()
    }

    /// Counts, then answers and closes.
    pub(crate) fn close(self, shared: &Shared) {
        for incoming in self.streams {
            shared.reject(self.reject);
            refuse(&incoming.stream, &self.reply);
        }
        for session in self.sessions {
            shared
                .service
                .close(session, self.close, &self.reply, &shared.counters);
        }
    }
}

/// What a run's workers poll, and how they wake the manager thread: the
/// shared poller (new at every start) and the manager thread's waker.
pub(crate) struct PollerHandle {
    pub(crate) epoll: Epoll,
    pub(crate) waker: Arc<Waker>,
}

pub(crate) struct WorkerEntry {
    pub(crate) slot: Arc<Slot>,
    join: JoinHandle<()>,
    /// Whether it has the poller role.
    pub(crate) polling: bool,
    /// Its `Slot::turn` when the manager thread last looked.
    pub(crate) seen: u64,
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
    pub(crate) parked: Mutex<Parked>,
    /// The manager thread's registry and waker, once it first started.
    poller: Mutex<Option<Arc<PollerHandle>>>,
    /// Mirrors `State::queue`'s length.
    pub(crate) queued: Arc<AtomicUsize>,
    /// Connections closed for the stop by the manager thread (taken out of
    /// the poller just as the stop began), for the stop's report.
    pub(crate) closed_at_stop: AtomicUsize,
    /// Signalled whenever a worker retires itself; `stop` waits on it.
    pub(crate) workers_changed: Condvar,
    /// Mirrors `State::generation`, so that a worker can see a new config
    /// without taking the lock.
    pub(crate) generation: AtomicU64,
    /// Set while stopping; a worker that registers a stream after `stop`
    /// shut the others down sees it.
    pub(crate) stopping: AtomicBool,
    /// Set while the manager thread looks every `grow_after` for pollers'
    /// turns that run long; a poller beginning a turn while it is clear
    /// sets it and wakes the manager thread.
    pub(crate) ticking: AtomicBool,
    pub(crate) counters: Counters,
    reject_log: RateLimit,
    pub(crate) service: Box<dyn Serve>,
    /// The acceptor of the server around this manager, if any.
    acceptor: Mutex<Option<Weak<Control>>>,
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
    pub(crate) workers: HashMap<u64, WorkerEntry>,
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

    /// How many pollers the pool keeps: `pollers`, capped by `max_workers`.
    pub(crate) fn poller_target(&self) -> usize {
        self.config.pollers.min(self.config.max_workers)
    }

    /// Gives worker `id` the poller role, or takes it away.
    pub(crate) fn set_polling(&mut self, id: u64, polling: bool) {
        if let Some(entry) = self.workers.get_mut(&id) {
            if entry.polling != polling {
                entry.polling = polling;
                if polling {
                    self.pollers += 1;
                } else {
                    self.pollers -= 1;
                }
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
            self.pollers == 0 && shared.parked.lock().len() > 0
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

    /// Gives the poller role to an idle worker, or to a new one below
    /// `max_workers`; `false` if there is none.
    pub(crate) fn start_poller(self: &Arc<Self>, state: &mut State) -> bool {
        if let Some(idle) = state.idle.pop_back() {
            state.set_polling(idle.id, true);
            // An idle worker's channel is empty: this never blocks.
            if idle.tx.send(Job::Poll).is_ok() {
                return true;
            }
            state.set_polling(idle.id, false);
            return false;
        }
        if state.total >= state.config.max_workers {
            return false;
        }
        match spawn_worker(self, state, Some(Job::Poll)) {
            Ok(id) => {
                state.set_polling(id, true);
                true
            }
            Err(_) => false,
        }
    }

    /// The manager thread's registry and waker, once it first started.
    pub(crate) fn poller(&self) -> Option<Arc<PollerHandle>> {
        self.poller.lock().clone()
    }

    /// Parks `session` in the manager thread's poller until its client
    /// sends again or a deadline of `config` passes. Gives it back, with the
    /// reason to close it, if it cannot be parked: the manager is stopping,
    /// or the poller refused it.
    /// `poller` is the handle the caller holds (a worker keeps one for its
    /// life, so that parking takes no extra lock).
    pub(crate) fn park(
        &self,
        poller: Option<&PollerHandle>,
        mut session: Box<Session>,
        config: &Config,
        generation: u64,
    ) -> Result<(), (Box<Session>, CloseReason)> {
        let Some(poller) = poller else {
            return Err((session, CloseReason::Error));
        };
        let deadline = session.timing.deadline(config);
        // Kept so that the descriptor stays open for the registration below
        // even if the connection is closed (stop, a deadline) meanwhile.
        let stream = Arc::clone(&session.stream);
        let was_registered = mem::replace(&mut session.registered, true);
        let mut parked = self.parked.lock();
        // `stop` sets `stopping`, then drains the table under this lock: a
        // connection parked after that sees the flag.
        if self.stopping.load(SeqCst) {
            session.registered = was_registered;
            return Err((session, CloseReason::Stop));
        }
        let Some(token) = parked.next_token().filter(|_| !parked.dead) else {
            session.registered = was_registered;
            return Err((session, CloseReason::Error));
        };
        let mut wake = parked.insert(session, deadline);
        if generation != parked.planned {
            // The config changed since `deadline` was computed, maybe after
            // the manager thread re-planned: have it re-plan again.
            parked.replan = true;
            wake = true;
        }
        drop(parked);
        // Outside the lock: the token is new, so no event can name it
        // before this call; one that named the previous token finds nothing
        // and is ignored, and the re-arm reports bytes already waiting.
        if let Err(e) = poller.epoll.arm(&stream, token.0 as u64, was_registered) {
            log::warn!("cannot park a connection, closing it: {e}");
            // Unless the manager thread or stop took it meanwhile.
            return match self.parked.lock().remove(token) {
                Some(session) => Err((session, CloseReason::Error)),
                None => Ok(()),
            };
        }
        self.counters.parks.fetch_add(1, Relaxed);
        if wake {
            self::wake(&poller.waker);
        }
        Ok(())
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
    let (tx, rx) = crossbeam_channel::bounded(1);
    let has_job = first.is_some();
    if let Some(job) = first {
        // The channel is new and has room for one: this never blocks.
        let _ = tx.send(job);
    }
    // Kept to take the stream back if the thread cannot start.
    let rx_back = rx.clone();
    let slot = Arc::new(Slot::default());
    let worker = Worker {
        shared: Arc::clone(shared),
        id,
        run: state.run,
        slot: Arc::clone(&slot),
        tx: tx.clone(),
        rx,
    };
    let spawned = thread::Builder::new()
        .name(format!("pool-worker-{id}"))
        .spawn(move || worker.run());
    match spawned {
        Ok(join) => {
            state.workers.insert(
                id,
                WorkerEntry {
                    slot,
                    join,
                    polling: false,
                    seen: 0,
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

/// What `begin_stop` hands to `finish_stop`.
struct Stopping {
    started: Instant,
    /// Idle workers told to exit.
    retired: Vec<JoinHandle<()>>,
    manager_thread: Option<JoinHandle<(Poll, Arc<Waker>)>>,
    /// Queued streams (rejected) and woken connections (closed).
    queued: Unserved,
    /// Parked connections, closed at once.
    parked: Vec<Box<Session>>,
    /// Connections being served when the stop began.
    busy: usize,
}

impl Manager {
    /// A manager whose workers call `handler` with the bytes of every read.
    /// It does not start until [`start`](Manager::start).
    ///
    /// The closure's parameters need their types written out
    /// (`|conn: &mut Conn<'_>, data: &[u8]|`). For state per connection, see
    /// [`with_state`](crate::with_state).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if `config` is not valid (see [`Config::validate`]).
    pub fn new<F>(config: Config, handler: F) -> Result<Self, ConfigError>
    where
        F: Fn(&mut Conn<'_>, &[u8]) -> io::Result<()> + Send + Sync + 'static,
    {
        Self::with_handler(config, FnHandler(handler))
    }

    /// A manager whose workers serve connections with `handler`. It does not
    /// start until [`start`](Manager::start).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if `config` is not valid (see [`Config::validate`]).
    pub fn with_handler<H: Handler>(config: Config, handler: H) -> Result<Self, ConfigError> {
        config.validate()?;
        let queued = Arc::new(AtomicUsize::new(0));
        let state = State {
            phase: Phase::Stopped,
            run: 0,
            config: Arc::new(config),
            generation: 0,
            total: 0,
            idle: VecDeque::new(),
            queue: Queue::new(Arc::clone(&queued)),
            workers: HashMap::new(),
            pollers: 0,
            exited: Vec::new(),
            next_worker_id: 1,
            manager_thread: None,
            poll: None,
            reaper_plan: None,
        };
        let shared = Shared {
            id: NEXT_MANAGER_ID.fetch_add(1, Relaxed),
            state: Mutex::new(state),
            parked: Mutex::new(Parked::default()),
            poller: Mutex::new(None),
            queued,
            closed_at_stop: AtomicUsize::new(0),
            workers_changed: Condvar::new(),
            generation: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            ticking: AtomicBool::new(false),
            counters: Counters::default(),
            reject_log: RateLimit::new(REJECT_LOG_INTERVAL),
            service: Box::new(handler),
            acceptor: Mutex::new(None),
        };
        Ok(Manager {
            shared: Arc::new(shared),
        })
    }

    /// Starts the manager thread (`pool-manager`: the reaper, and the
    /// poller of parked connections) and `min_workers` workers.
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyRunning`] if it is running;
    /// - [`Error::Stopping`] while a [`stop`](Manager::stop) is under way;
    /// - [`Error::Io`] if the poller cannot be created (the first start
    ///   only: it is kept for later ones);
    /// - [`Error::Spawn`] if a thread could not be started (what had started
    ///   is stopped again).
    pub fn start(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let mut state = shared.state.lock();
        match state.phase {
            Phase::Running => return Err(Error::AlreadyRunning),
            Phase::Stopping => return Err(Error::Stopping),
            Phase::Stopped => {}
        }
        let (poll, waker) = match state.poll.take() {
            Some(kept) => kept,
            None => {
                let poll = Poll::new().map_err(Error::Io)?;
                let waker = Waker::new(poll.registry(), poller::WAKER).map_err(Error::Io)?;
                (poll, Arc::new(waker))
            }
        };
        // A new shared poller for every run: the last one's stop signal is
        // up. One that failed (see `Parked::dead`) is not used again.
        shared.parked.lock().dead = false;
        let epoll = match Epoll::new() {
            Ok(epoll) => epoll,
            Err(e) => {
                state.poll = Some((poll, waker));
                return Err(Error::Io(e));
            }
        };
        *shared.poller.lock() = Some(Arc::new(PollerHandle {
            epoll,
            waker: Arc::clone(&waker),
        }));
        match poller::spawn(shared, poll, waker) {
            Ok(join) => state.manager_thread = Some(join),
            Err(e) => {
                // The poller went with the thread that did not start: the
                // next start makes a new one.
                *shared.poller.lock() = None;
                return Err(Error::Spawn(e));
            }
        }
        state.phase = Phase::Running;
        for _ in 0..state.config.min_workers {
            if let Err((e, _)) = spawn_worker(shared, &mut state, None) {
                drop(state);
                let _ = self.stop();
                return Err(Error::Spawn(e));
            }
        }
        log::debug!("started with {} workers", state.total);
        Ok(())
    }

    /// Hands `stream` to the pool, without blocking: to the most recently
    /// idle worker; or to a new worker if fewer than `max_workers` exist; or,
    /// in parked mode ([`Config::park_after`]), to the manager thread's
    /// poller, where it waits for its first bytes holding no worker; or
    /// into the queue if it has room (for at most `queue_timeout`).
    ///
    /// The stream is made blocking and given the configured read and write
    /// timeouts; the manager owns them from here on.
    ///
    /// # Errors
    ///
    /// The stream comes back untouched, so that the caller can answer and
    /// close it:
    /// - [`PutError::Full`] when every worker is busy, the pool is at
    ///   `max_workers`, and the queue is full (or a thread could not be
    ///   started);
    /// - [`PutError::Stopped`] when the manager is not running.
    ///
    /// Both are counted in [`Stats::rejected`].
    pub fn put(&self, stream: TcpStream) -> Result<(), PutError> {
        self.put_incoming(Incoming {
            stream,
            ticket: None,
            fresh: false,
            accepted: Instant::now(),
        })
    }

    /// [`put`](Manager::put) for a stream that may hold a [`Ticket`]; a
    /// refused stream's ticket is released.
    pub(crate) fn put_incoming(&self, incoming: Incoming) -> Result<(), PutError> {
        let shared = &self.shared;
        let mut state = shared.state.lock();
        if state.phase != Phase::Running {
            drop(state);
            shared.reject(RejectReason::Stopped);
            return Err(PutError::Stopped(incoming.stream));
        }
        if state.config.park_after.is_some() {
            // Polled mode: a new connection waits for its first bytes in
            // the shared poller, holding no worker.
            if state.pollers == 0 {
                shared.start_poller(&mut state);
            }
            let (config, generation) = (Arc::clone(&state.config), state.generation);
            drop(state);
            return self.park_new(incoming, &config, generation);
        }
        let incoming = match assign(shared, &mut state, Work::New(incoming)) {
            Assigned::Idle(tx, job) => {
                drop(state);
                // An idle worker's channel is empty: this never blocks. It
                // fails only if the worker thread died, which our code never
                // lets happen; the stream then comes back.
                return match tx.send(job) {
                    Ok(()) => Ok(()),
                    Err(e) => match e.into_inner() {
                        Job::Serve(Work::New(incoming)) => self.refused_full(incoming),
                        _ => Ok(()), // put sends only new streams
                    },
                };
            }
            Assigned::Spawned => return Ok(()),
            Assigned::Busy(Work::New(incoming)) => incoming,
            Assigned::Busy(Work::Resumed(_)) => return Ok(()), // put has none
        };
        if state.queue.len() < state.config.queue_capacity {
            state.enqueue(shared, Work::New(incoming));
            return Ok(());
        }
        drop(state);
        self.refused_full(incoming)
    }

    /// Parks a new stream in the shared poller; gives it back if it cannot
    /// be parked.
    fn park_new(
        &self,
        incoming: Incoming,
        config: &Config,
        generation: u64,
    ) -> Result<(), PutError> {
        let shared = &self.shared;
        let Incoming {
            stream,
            ticket,
            fresh,
            accepted,
        } = incoming;
        let session = Session::new(stream, ticket, fresh, accepted);
        match shared.park(shared.poller().as_deref(), session, config, generation) {
            Ok(()) => {
                shared.counters.connections.fetch_add(1, Relaxed);
                Ok(())
            }
            Err((session, reason)) => {
                let Session { stream, .. } = *session;
                // A session never on a worker has one owner; were it not
                // so, a duplicate of the socket goes back.
                let stream = match Arc::try_unwrap(stream) {
                    Ok(stream) => stream,
                    Err(shared_stream) => match shared_stream.try_clone() {
                        Ok(stream) => stream,
                        Err(_) => return Ok(()),
                    },
                };
                if reason == CloseReason::Stop {
                    shared.reject(RejectReason::Stopped);
                    Err(PutError::Stopped(stream))
                } else {
                    shared.reject(RejectReason::Full);
                    Err(PutError::Full(stream))
                }
            }
        }
    }

    /// Counts a rejection decided outside the manager (by a server's limits).
    pub(crate) fn reject(&self, reason: RejectReason) {
        self.shared.reject(reason);
    }

    /// Lets `set_config` wake a server's acceptor, so that new limits apply
    /// at once.
    pub(crate) fn attach_acceptor(&self, control: &Arc<Control>) {
        *self.shared.acceptor.lock() = Some(Arc::downgrade(control));
    }

    fn refused_full(&self, incoming: Incoming) -> Result<(), PutError> {
        self.shared.reject(RejectReason::Full);
        Err(PutError::Full(incoming.stream))
    }

    /// The configuration in force, without copying, and its generation.
    pub(crate) fn config_arc(&self) -> (u64, Arc<Config>) {
        let state = self.shared.state.lock();
        (state.generation, Arc::clone(&state.config))
    }

    /// See [`Shared::refresh_config`].
    pub(crate) fn refresh_config(&self, generation: &mut u64, config: &mut Arc<Config>) -> bool {
        self.shared.refresh_config(generation, config)
    }

    /// A copy of the configuration in force.
    pub fn config(&self) -> Config {
        Config::clone(&self.shared.state.lock().config)
    }

    /// Replaces the whole configuration, atomically, while running or not.
    ///
    /// When each field takes effect on a running manager:
    /// - `min_workers` raised: the missing workers start now;
    /// - `max_workers` lowered: idle surplus workers retire now, busy ones
    ///   when their connection closes; raised: queued streams get new
    ///   workers now;
    /// - `read_deadline`, `write_deadline`, `buffer_size`: from each
    ///   connection's next read;
    /// - `worker_idle_timeout`, `queue_timeout`: the reaper re-plans now;
    /// - `queue_capacity`, `busy_reply`: from the next stream. A queue
    ///   longer than a lowered capacity drains normally;
    /// - `park_after`: from each connection's next read (a worker waiting
    ///   in a read with no deadline sees it after that read); parked
    ///   connections stay parked until their client sends;
    /// - `pollers`: raised, more workers poll as ready connections wait;
    ///   lowered, surplus pollers leave after their next event;
    /// - `grow_after`: from the manager thread's next look;
    /// - `first_byte_deadline`, `min_read_rate`, `max_connection_lifetime`
    ///   and `read_deadline` of parked connections: the manager thread
    ///   re-plans every parked deadline now; connections on a worker follow
    ///   from their next read.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if `config` is not valid; nothing changes then.
    pub fn set_config(&self, config: Config) -> Result<(), ConfigError> {
        config.validate()?;
        let shared = &self.shared;
        let mut state = shared.state.lock();
        state.config = Arc::new(config);
        state.generation += 1;
        shared.generation.store(state.generation, Relaxed);
        let mut retired = Vec::new();
        if state.phase == Phase::Running {
            while state.total > state.config.max_workers {
                match state.retire_oldest_idle(shared) {
                    Some(join) => retired.push(join),
                    None => break,
                }
            }
            while state.total < state.config.max_workers {
                let Some(queued) = state.queue.pop_front() else {
                    break;
                };
                let job = Job::Serve(queued.work);
                if let Err((_, back)) = spawn_worker(shared, &mut state, Some(job)) {
                    if let Some(Job::Serve(work)) = back {
                        state.queue.push_front(Queued {
                            work,
                            since: queued.since,
                        });
                    }
                    break;
                }
            }
            while state.total < state.config.min_workers {
                if spawn_worker(shared, &mut state, None).is_err() {
                    break;
                }
            }
            // Polled mode: at least one poller while connections wait in
            // the poller (more come as ready connections wait).
            if state.config.park_after.is_some()
                && state.pollers == 0
                && shared.parked.lock().len() > 0
            {
                shared.start_poller(&mut state);
            }
        }
        drop(state);
        // The manager thread re-plans the reaper's and the parked
        // connections' timers.
        shared.wake_manager_thread();
        if let Some(acceptor) = shared.acceptor.lock().as_ref().and_then(Weak::upgrade) {
            acceptor.wake();
        }
        for join in retired {
            let _ = join.join();
        }
        Ok(())
    }

    /// A snapshot of gauges and counters.
    pub fn stats(&self) -> Stats {
        let shared = &self.shared;
        let state = shared.state.lock();
        let bytes = ByteCounters::default();
        shared.counters.retired_bytes.add_to(&bytes);
        for entry in state.workers.values() {
            entry.slot.bytes.add_to(&bytes);
        }
        let counters = &shared.counters;
        let busy = state
            .workers
            .values()
            .filter(|e| e.slot.is_serving())
            .count();
        Stats {
            running: state.phase == Phase::Running,
            workers: state.total,
            busy,
            idle: state.total - busy,
            queued: state.queue.len(),
            parked: shared.parked.lock().len(),
            connections: counters.connections.load(Relaxed),
            parks: counters.parks.load(Relaxed),
            wakes: counters.wakes.load(Relaxed) + bytes.wakes.load(Relaxed),
            bytes_in: bytes.bytes_in.load(Relaxed),
            bytes_out: bytes.bytes_out.load(Relaxed),
            rejected: counters.rejections(),
            closed: counters.closes(),
            workers_spawned: counters.workers_spawned.load(Relaxed),
            workers_retired: counters.workers_retired.load(Relaxed),
            spawn_failures: counters.spawn_failures.load(Relaxed),
        }
    }

    /// Whether the manager is running (started, and no stop begun).
    pub fn is_running(&self) -> bool {
        self.shared.state.lock().phase == Phase::Running
    }

    /// Stops gracefully and waits for it:
    /// 1. `put` starts returning [`PutError::Stopped`];
    /// 2. queued streams are sent `busy_reply` and closed;
    /// 3. connections waiting for data are closed at once: parked ones
    ///    directly, those on a worker by shutting their socket down for
    ///    reading, which wakes the blocked worker;
    /// 4. handlers already running finish (their writes still work, bounded
    ///    by `write_deadline`), then their connections close;
    /// 5. every thread is joined.
    ///
    /// A handler that never returns makes this wait forever: use
    /// [`stop_timeout`](Manager::stop_timeout) to bound it.
    /// [`start`](Manager::start) may be called again afterwards.
    ///
    /// # Errors
    ///
    /// - [`Error::NotRunning`] if it is not running;
    /// - [`Error::Stopping`] if another stop is under way;
    /// - [`Error::StopFromWorker`] when called from one of this manager's
    ///   handlers.
    pub fn stop(&self) -> Result<StopReport, Error> {
        if self.on_own_worker() {
            return Err(Error::StopFromWorker);
        }
        let stopping = self.begin_stop()?;
        Ok(self.finish_stop(stopping, None))
    }

    /// As [`stop`](Manager::stop), but connections still open after
    /// `timeout` are shut down by force (counted in
    /// [`StopReport::forced`]). Their handlers are then given
    /// [`FORCE_GRACE`] to return; a thread that still has not is left
    /// running, not joined, and counted in [`StopReport::abandoned`].
    ///
    /// # Errors
    ///
    /// As [`stop`](Manager::stop).
    pub fn stop_timeout(&self, timeout: Duration) -> Result<StopReport, Error> {
        if self.on_own_worker() {
            return Err(Error::StopFromWorker);
        }
        let stopping = self.begin_stop()?;
        // A timeout too large for the clock is no timeout.
        let deadline = stopping.started.checked_add(timeout);
        Ok(self.finish_stop(stopping, deadline))
    }

    /// Whether this thread is one of this manager's workers.
    fn on_own_worker(&self) -> bool {
        CURRENT_MANAGER.with(Cell::get) == self.shared.id
    }

    /// Everything a stop does under the lock, without waiting.
    fn begin_stop(&self) -> Result<Stopping, Error> {
        let started = Instant::now();
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        match state.phase {
            Phase::Running => {}
            Phase::Stopping => return Err(Error::Stopping),
            Phase::Stopped => return Err(Error::NotRunning),
        }
        state.phase = Phase::Stopping;
        shared.stopping.store(true, SeqCst);
        let mut queued = Unserved::new(RejectReason::QueueStopped, CloseReason::Stop);
        queued.reply = state.config.busy_reply.clone();
        for q in state.queue.drain() {
            queued.push(q.work);
        }
        // Under the parked lock, after `stopping`: see `Shared::park`.
        let parked = shared.parked.lock().drain();
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
        // Pollers waiting for a connection wake and retire.
        if let Some(poller) = shared.poller.lock().as_ref() {
            poller.epoll.stop();
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
    fn finish_stop(&self, stopping: Stopping, deadline: Option<Instant>) -> StopReport {
        let shared = &*self.shared;
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
/// Wakes the manager thread through its waker.
pub(crate) fn wake(waker: &Waker) {
    if let Err(e) = waker.wake() {
        log::error!("cannot wake the manager thread: {e}");
    }
}

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

impl Drop for Manager {
    fn drop(&mut self) {
        let Ok(stopping) = self.begin_stop() else {
            return; // not running
        };
        if self.on_own_worker() {
            // Dropped by one of its own handlers: it cannot wait for itself.
            // The threads exit on their own once their connections close.
            let shared = &self.shared;
            stopping.queued.close(shared);
            shared.close_sessions(stopping.parked, CloseReason::Stop);
        } else {
            self.finish_stop(stopping, None);
        }
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Manager")
            .field("phase", &state.phase)
            .field("workers", &state.total)
            .field("idle", &state.idle.len())
            .field("queued", &state.queue.len())
            .finish_non_exhaustive()
    }
}
