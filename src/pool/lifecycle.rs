//! The pool's life: its creation, `start`, `put`, `set_config` and
//! `stats`, on the shared state (the [`Manager`](crate::Manager) façade
//! documents them).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::sync::thread::JoinHandle;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Condvar, List, Mutex};
use mio::{Poll, Waker};

use crate::config::Config;
use crate::epoll::Epoll;
use crate::error::{ConfigError, Error, PutError};
use crate::park::Table;
use crate::proxy::Untrusted;
use crate::serve::Serve;
use crate::session::Session;
use crate::stats::{ByteCounters, CloseReason, Counters, RateLimit, RejectReason, Stats};
use crate::tls::TlsConn;

use super::queue::Queue;
use super::{
    Assigned, Incoming, Job, NEXT_MANAGER_ID, Phase, PollerHandle, Queued, REJECT_LOG_INTERVAL,
    Shared, State, Work, WorkerStart, assign, spawn_worker,
};

/// The manager thread's poller and waker, and the thread started on them.
pub(crate) type ManagerThread = JoinHandle<(Poll, Arc<Waker>)>;

impl Shared {
    /// A stopped pool serving with `service`, whose worker threads run
    /// `worker_main`.
    pub(crate) fn new(
        config: Config,
        service: Box<dyn Serve>,
        worker_main: fn(WorkerStart),
    ) -> Result<Self, ConfigError> {
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
            workers: BTreeMap::new(),
            pollers: 0,
            exited: Vec::new(),
            next_worker_id: 1,
            manager_thread: None,
            poll: None,
            reaper_plan: None,
            sysmon_fast_until: None,
            spare_until: None,
            spares: 0,
            releases: VecDeque::new(),
            sysmon_next: None,
            sysmon_quiet: 0,
        };
        Ok(Shared {
            id: NEXT_MANAGER_ID.fetch_add(1, Relaxed),
            state: Mutex::new(state),
            parked: Table::default(),
            poller: Mutex::new(None),
            queued,
            closed_at_stop: AtomicUsize::new(0),
            workers_changed: Condvar::new(),
            generation: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            run: AtomicU64::new(0),
            ticking: AtomicBool::new(false),
            poller_exits: AtomicUsize::new(0),
            epoch: Instant::now(),
            counters: Counters::default(),
            reject_log: RateLimit::new(REJECT_LOG_INTERVAL),
            service,
            worker_main,
            acceptor: Mutex::new(None),
        })
    }

    /// Starts the pool: a new shared poller, the manager thread (through
    /// `spawn_manager_thread`) and `min_workers` workers.
    pub(crate) fn start(
        self: &Arc<Self>,
        spawn_manager_thread: impl FnOnce(&Arc<Shared>, Poll, Arc<Waker>) -> io::Result<ManagerThread>,
    ) -> Result<(), Error> {
        let shared = self;
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
                let waker = Waker::new(poll.registry(), super::MANAGER_WAKER).map_err(Error::Io)?;
                (poll, Arc::new(waker))
            }
        };
        // A new shared poller for every run: the last one's stop signal is
        // up. One that failed (see `Parked::dead`) is not used again.
        shared.parked.dead.store(false, Relaxed);
        let epoll = match Epoll::new() {
            Ok(epoll) => epoll,
            Err(e) => {
                state.poll = Some((poll, waker));
                return Err(Error::Io(e));
            }
        };
        *shared.poller.lock() = Some(Arc::new(PollerHandle {
            epoll,
            ready: List::new(),
            searching: AtomicBool::new(false),
            nudged: AtomicBool::new(false),
            draining: AtomicUsize::new(0),
            events_listed: AtomicUsize::new(0),
            rouses_listed: AtomicUsize::new(0),
            waker: Arc::clone(&waker),
        }));
        match spawn_manager_thread(shared, poll, waker) {
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
                if let Ok(stopping) = self.begin_stop() {
                    self.finish_stop(stopping, None);
                }
                return Err(Error::Spawn(e));
            }
        }
        log::debug!("started with {} workers", state.total);
        Ok(())
    }

    /// [`put`](crate::Manager::put) for a stream that may hold a [`Ticket`](crate::limits::Ticket); a
    /// refused stream's ticket is released.
    pub(crate) fn put(self: &Arc<Self>, mut incoming: Incoming) -> Result<(), PutError> {
        let shared = self;
        let mut state = shared.state.lock();
        if state.config.proxy_protocol.is_none() {
            incoming.trusted = None;
        } else {
            let config = Arc::clone(&state.config);
            drop(state);
            let trusted = incoming.trusted.unwrap_or_else(|| {
                let peer = incoming.stream.peer_addr().ok();
                let proxy = config.proxy_protocol.as_ref();
                peer.zip(proxy)
                    .is_some_and(|(p, proxy)| proxy.trusts(p.ip()))
            });
            incoming.trusted = Some(trusted);
            let refuse = config
                .proxy_protocol
                .as_ref()
                .is_some_and(|p| p.untrusted == Untrusted::Refuse);
            if !trusted && refuse {
                shared.reject(RejectReason::Untrusted);
                return Err(PutError::Untrusted(incoming.stream));
            }
            state = shared.state.lock();
        }
        if state.phase != Phase::Running {
            drop(state);
            shared.reject(RejectReason::Stopped);
            return Err(PutError::Stopped(incoming.stream));
        }
        if state.config.park_after.is_some() {
            // Polled mode: a new connection waits for its first bytes in
            // the shared poller, holding no worker.
            if state.pollers == 0
                && !shared.start_poller(&mut state)
                && state.total < state.config.max_workers
            {
                // No worker polls and the system refused a new thread:
                // the stream comes back, as in dedicated mode.
                drop(state);
                return self.refused_full(incoming);
            }
            let (config, generation) = (Arc::clone(&state.config), state.generation);
            let run = state.run;
            drop(state);
            return self.park_new(incoming, &config, (generation, run));
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
        generation: (u64, u64),
    ) -> Result<(), PutError> {
        let shared = self;
        let Incoming {
            stream,
            ticket,
            fresh,
            accepted,
            trusted,
        } = incoming;
        let tls = TlsConn::for_config(config, &shared.counters.tls);
        let mut session = Session::new(stream, ticket, fresh, accepted, tls);
        if let (Some(true), Some(proxy)) = (trusted, &config.proxy_protocol) {
            session.expect_header(proxy);
        }
        let poller = shared.poller();
        let counters = &shared.counters.retired_bytes;
        // Counted before it can be served: whoever sees it served sees it
        // counted.
        shared.counters.connections.fetch_add(1, Relaxed);
        match shared.park(poller.as_ref(), session, None, config, generation, counters) {
            Ok(_) => Ok(()),
            Err((session, reason)) => {
                // Refused: it was never the pool's.
                shared.counters.connections.fetch_sub(1, Relaxed);
                let Session { stream, .. } = *session;
                // A session never on a worker has one owner; were it not
                // so, a duplicate of the socket goes back.
                let stream = match Arc::try_unwrap(stream) {
                    Ok(stream) => stream.into_std(),
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

    fn refused_full(&self, incoming: Incoming) -> Result<(), PutError> {
        self.reject(RejectReason::Full);
        Err(PutError::Full(incoming.stream))
    }

    pub(crate) fn set_config(self: &Arc<Self>, config: Config) -> Result<(), ConfigError> {
        config.validate()?;
        let shared = self;
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
            if state.config.park_after.is_some() && state.pollers == 0 && shared.parked.len() > 0 {
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

    /// Publishes a snapshot through the `metrics` facade (nothing without
    /// the feature).
    pub(crate) fn publish_metrics(&self) {
        #[cfg(feature = "metrics")]
        {
            let labels = self.state.lock().config.metrics_labels.clone();
            crate::publish::publish(&self.stats(), &labels);
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let shared = self;
        let state = shared.state.lock();
        let bytes = ByteCounters::default();
        shared.counters.retired_bytes.add_to(&bytes);
        for entry in state.workers.values() {
            entry.slot.bytes.add_to(&bytes);
        }
        let counters = &shared.counters;
        // Idle: waiting on the idle stack, or polling between turns.
        let polling = state
            .workers
            .values()
            .filter(|e| e.polling && !e.slot.is_serving())
            .count();
        let idle = state.idle.len() + polling;
        let (closed, tls) = counters.closes_and_tls();
        Stats {
            running: state.phase == Phase::Running,
            workers: state.total,
            busy: state.total - idle,
            idle,
            queued: state.queue.len(),
            parked: shared.parked.len(),
            connections: counters.connections.load(Relaxed),
            parks: bytes.parks.load(Relaxed),
            wakes: counters.wakes.load(Relaxed) + bytes.wakes.load(Relaxed),
            bytes_in: bytes.bytes_in.load(Relaxed),
            bytes_out: bytes.bytes_out.load(Relaxed),
            buffered_bytes: counters.buffered.load(Relaxed),
            rejected: counters.rejections(),
            tls,
            proxy: counters.proxy(),
            closed,
            workers_spawned: counters.workers_spawned.load(Relaxed),
            workers_retired: counters.workers_retired.load(Relaxed),
            spawn_failures: counters.spawn_failures.load(Relaxed),
            poller_handoffs: counters.poller_handoffs.load(Relaxed),
            overflowed: counters.overflowed.load(Relaxed),
        }
    }
}
