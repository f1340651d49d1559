//! The manager thread (`pool-manager`): one per running manager, asleep in
//! a `mio::Poll` until the next thing it has to do. It
//! - closes parked connections whose deadline passed, counted by reason;
//! - retires workers idle for too long, and expires queued work (the
//!   reaper's decisions, in [`reaper`]);
//! - joins workers that retired themselves;
//! - while pollers are serving, looks every `grow_after` (backing off to
//!   8 × `grow_after` while it finds nothing) for turns that run long
//!   while connections wait, and hands their poller role to another worker
//!   ([`sysmon`]);
//! - while no worker polls, watches the shared poller itself and starts a
//!   poller when a parked connection becomes ready (on Windows, where an
//!   IOCP cannot be watched, it starts a poller at once if it can, and
//!   else looks every `grow_after`);
//! - with the `metrics` feature, publishes the stats every
//!   `metrics_interval`.
//!
//! Its poll timeout is the earliest of the reaper's next expiry, the parked
//! connections' next deadline, the next publication and, while pollers
//! serve, the next look.
//! Other threads wake it through its `Waker` only when they bring something
//! earlier than its plan (see `State::reaper_plan` and `Parked::plan`), a
//! poller's turn while it is not looking, a new configuration, or the stop.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use crate::handle::Rouse;
use crate::pool::reaper::{self, earliest};
use crate::pool::{CURRENT_MANAGER, ManagerThread, Phase, PollerHandle, Shared, State, sysmon};
use crate::session::Session;
use crate::stats::CloseReason;
use crate::sync::MutexGuard;
use crate::sync::thread;
use crate::timer::FineTimer;

/// The shared poller's token, while the manager thread watches it.
#[cfg(unix)]
const WATCH: Token = Token(0);
/// The fine timer's token.
const TIMER: Token = Token(1);
/// Waits shorter than this use the fine timer: `epoll_wait` would round
/// them up to a whole millisecond. (A wait a little under 1 ms, the
/// sysmon's usual, is rounded up by less than this.)
const FINE: Duration = Duration::from_micros(500);

/// Starts the manager thread of a manager that is starting.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    poll: Poll,
    waker: Arc<Waker>,
) -> io::Result<ManagerThread> {
    let shared = Arc::clone(shared);
    thread::Builder::new()
        .name("pool-manager".into())
        .spawn(move || (run(&shared, poll), waker))
}

fn run(shared: &Arc<Shared>, poll: Poll) -> Poll {
    // Handlers' `closed` hooks run here for connections closed while
    // parked: a `stop` from one must not wait for this thread.
    CURRENT_MANAGER.with(|m| m.set(shared.id));
    let mut thread = ManagerLoop::new(shared, poll);
    loop {
        let mut state = shared.state.lock();
        if state.phase != Phase::Running {
            break;
        }
        let now = Instant::now();
        if thread.publication_due(&state, now) {
            drop(state);
            shared.publish_metrics();
            continue; // a stop may have begun meanwhile
        }
        // Awake: whatever is queued from now on is seen below.
        state.reaper_plan = Some(now);
        let reaped = reaper::reap(shared, &mut state, now);
        if !reaped.is_empty() {
            MutexGuard::unlocked(&mut state, || reaped.finish(shared));
            continue;
        }
        let next_look = sysmon::look(shared, &mut state, now);
        let scan = thread.scan_parked(&state, now);
        if !scan.expired.is_empty() {
            drop(state);
            for (session, reason) in scan.expired {
                shared.close_sessions([session], reason);
            }
            continue;
        }
        // Set under the state lock: a worker or `put` that brings
        // something earlier after this sees the plan and wakes us.
        let plan = shared
            .parked
            .publish(earliest(reaper::next_expiry(shared, &state), scan.next));
        state.reaper_plan = plan;
        let mut watch = state.pollers == 0 && scan.parked > 0;
        // Windows: no watching the shared poller from here (see `watch`);
        // a worker polls instead, whenever one can.
        if watch && cfg!(windows) && shared.start_poller(&mut state) {
            watch = false;
        }
        let grow_after = state.config.grow_after;
        drop(state);
        thread.watch(watch);
        let timeout = earliest(earliest(plan, next_look), thread.publish_at)
            .map(|at| at.saturating_duration_since(now));
        let timeout = thread.bounded(timeout, grow_after);
        if thread.sleep(timeout).is_err() {
            break;
        }
    }
    thread.finish()
}

/// What a scan of the parked connections found.
struct Scan {
    /// Connections whose deadline passed, with the reason to close each.
    expired: Vec<(Box<Session>, CloseReason)>,
    /// The next deadline among the others.
    next: Option<Instant>,
    /// How many are parked.
    parked: usize,
}

/// The manager thread's own state between its rounds.
struct ManagerLoop<'a> {
    shared: &'a Arc<Shared>,
    poll: Poll,
    events: Events,
    poller: Option<Arc<PollerHandle>>,
    /// Whether it watches the shared poller (no worker polls).
    watching: bool,
    /// For waits shorter than [`FINE`] on Linux; without it (no timerfd:
    /// other platforms), waits are as fine as the poll's timeout —
    /// nanoseconds with kqueue, a millisecond on Linux without one.
    timer: Option<FineTimer>,
    /// The next publication of the stats through the `metrics` facade.
    publish_at: Option<Instant>,
}

impl<'a> ManagerLoop<'a> {
    fn new(shared: &'a Arc<Shared>, poll: Poll) -> Self {
        let timer = FineTimer::new()
            .and_then(|t| {
                if let Some(t) = &t {
                    t.register(poll.registry(), TIMER)?;
                }
                Ok(t)
            })
            .map_err(|e| log::warn!("no fine timer, short waits last 1 ms: {e}"))
            .ok()
            .flatten();
        ManagerLoop {
            shared,
            poll,
            events: Events::with_capacity(8),
            poller: shared.poller(),
            watching: false,
            timer,
            publish_at: None,
        }
    }

    /// Whether the stats are due to be published now (and plans the next
    /// publication, as the configuration says).
    fn publication_due(&mut self, state: &State, now: Instant) -> bool {
        let every = state.config.metrics_every();
        if every.is_none() {
            self.publish_at = None;
            return false;
        }
        if self.publish_at.is_some_and(|at| at > now) {
            return false;
        }
        let due = self.publish_at.is_some();
        self.publish_at = every.and_then(|every| now.checked_add(every));
        due
    }

    /// Re-plans the parked connections' deadlines if the configuration
    /// changed, takes out those whose deadline passed, and has a turn
    /// judge the write deadlines (see `Parked::expire`).
    fn scan_parked(&self, state: &State, now: Instant) -> Scan {
        // A park with a deadline from now on makes this scan start again
        // (see `Table::publish`).
        self.shared.parked.scanning();
        let (generation, config) = (state.generation, &state.config);
        let mut scan = Scan {
            expired: Vec::new(),
            next: None,
            parked: 0,
        };
        let mut retry = Vec::new();
        self.shared.parked.each(|parked| {
            if generation != parked.planned || parked.replan {
                parked.replan(|session| session.timing.deadline(config));
                parked.planned = generation;
                parked.replan = false;
            }
            scan.expired.append(&mut parked.expire(now, &mut retry));
            scan.next = earliest(scan.next, parked.next_deadline());
            scan.parked += parked.len();
        });
        if let Some(poller) = self.poller.as_deref() {
            for token in retry {
                poller.rouse(token.0 as u64);
            }
        }
        scan
    }

    /// Watches the shared poller, or stops watching it: registers its
    /// descriptor in the thread's own poll.
    #[cfg(unix)]
    fn watch(&mut self, watch: bool) {
        use std::os::fd::AsRawFd;
        let Some(poller) = self.poller.as_deref() else {
            return;
        };
        if watch == self.watching {
            return;
        }
        let fd = poller.epoll.fd().as_raw_fd();
        let mut source = mio::unix::SourceFd(&fd);
        let result = if watch {
            self.poll
                .registry()
                .register(&mut source, WATCH, mio::Interest::READABLE)
        } else {
            self.poll.registry().deregister(&mut source)
        };
        match result {
            Ok(()) => self.watching = watch,
            Err(e) => log::error!("cannot watch the shared poller: {e}"),
        }
    }

    /// Watches the shared poller, or stops watching it. An IOCP cannot be
    /// registered in another: a worker is made a poller instead where one
    /// can be (see `run`), and only while none can (every worker busy, the
    /// pool at `max_workers`) the thread looks at it every `grow_after`
    /// (see [`sleep`](Self::sleep)).
    #[cfg(windows)]
    fn watch(&mut self, watch: bool) {
        self.watching = watch && self.poller.is_some();
    }

    /// How long to sleep at most: `timeout`, or on Windows while watching,
    /// at most `grow_after` (the next look at the shared poller).
    fn bounded(&self, timeout: Option<Duration>, _grow_after: Duration) -> Option<Duration> {
        #[cfg(windows)]
        if self.watching {
            return Some(timeout.map_or(_grow_after, |t| t.min(_grow_after)));
        }
        timeout
    }

    /// Whether the shared poller has ready connections, as the thread's
    /// watch says.
    fn watched_ready(&self) -> bool {
        #[cfg(unix)]
        return self.events.iter().any(|e| e.token() == WATCH);
        // The ready list too: a handle's rouse, a write-deadline retry.
        #[cfg(windows)]
        return self.watching && self.poller.as_deref().is_some_and(|p| p.has_ready());
    }

    /// Sleeps until `timeout` or a wake, and does what the events ask.
    ///
    /// # Errors
    ///
    /// The poll failed (other than by a signal): the thread stops.
    fn sleep(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if let Some(timer) = self.timer.as_mut() {
            let armed = match timeout {
                Some(wait) if wait < FINE => timer.arm(wait),
                _ => timer.disarm(),
            };
            if let Err(e) = armed {
                log::error!("the manager thread's fine timer failed: {e}");
            }
        }
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            log::error!("the manager thread's poll failed, it stops: {e}");
            return Err(e);
        }
        if self.events.iter().any(|e| e.token() == TIMER) {
            if let Some(timer) = self.timer.as_ref() {
                timer.clear();
            }
        }
        if self.watched_ready() {
            // A parked connection is ready and no worker polls.
            let mut state = self.shared.state.lock();
            if state.phase == Phase::Running && state.pollers == 0 {
                sysmon::no_pollers(self.shared, &mut state);
            }
        }
        Ok(())
    }

    /// Leaves the poll as it found it, publishes the stats a last time,
    /// and gives the poll back.
    fn finish(mut self) -> Poll {
        if let Some(timer) = self.timer.as_ref() {
            let _ = timer.deregister(self.poll.registry());
        }
        self.watch(false);
        if self.publish_at.is_some() {
            // `running` is 0 from now on.
            self.shared.publish_metrics();
        }
        log::debug!("manager thread exits");
        self.poll
    }
}
