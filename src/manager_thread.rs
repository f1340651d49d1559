//! The manager thread (`pool-manager`): one per running manager, asleep in
//! a `mio::Poll` until the next thing it has to do. It
//! - closes parked connections whose deadline passed, counted by reason;
//! - retires workers idle for too long, and expires queued work (the
//!   reaper's decisions, in [`reaper`](crate::reaper));
//! - joins workers that retired themselves;
//! - while pollers are serving, looks every `grow_after` for turns that run
//!   long while connections wait, and hands their poller role to another
//!   worker ([`sysmon`](crate::sysmon));
//! - while no worker polls, watches the shared poller itself and starts a
//!   poller when a parked connection becomes ready;
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
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::handle::Rouse;
use crate::pool::reaper::{self, earliest};
use crate::pool::{CURRENT_MANAGER, ManagerThread, Phase, Shared, sysmon};
use crate::sync::MutexGuard;
use crate::sync::thread;
use crate::timer::FineTimer;

/// The shared poller's token, while the manager thread watches it.
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

fn run(shared: &Arc<Shared>, mut poll: Poll) -> Poll {
    // Handlers' `closed` hooks run here for connections closed while
    // parked: a `stop` from one must not wait for this thread.
    CURRENT_MANAGER.with(|m| m.set(shared.id));
    let mut events = Events::with_capacity(8);
    let poller = shared.poller();
    let mut watching = false;
    // Without it (no timerfd), short waits last a millisecond.
    let mut timer = FineTimer::new()
        .and_then(|t| {
            let fd = t.raw_fd();
            poll.registry()
                .register(&mut SourceFd(&fd), TIMER, Interest::READABLE)?;
            Ok(t)
        })
        .map_err(|e| log::warn!("no fine timer, short waits last 1 ms: {e}"))
        .ok();
    // The next publication of the stats through the `metrics` facade.
    let mut publish_at: Option<Instant> = None;
    loop {
        let mut state = shared.state.lock();
        if state.phase != Phase::Running {
            break;
        }
        let now = Instant::now();
        let every = state.config.metrics_every();
        if every.is_none() {
            publish_at = None;
        } else if publish_at.is_none_or(|at| at <= now) {
            let due = publish_at.is_some();
            publish_at = every.and_then(|every| now.checked_add(every));
            if due {
                drop(state);
                shared.publish_metrics();
                continue; // a stop may have begun meanwhile
            }
        }
        // Awake: whatever is queued from now on is seen below.
        state.reaper_plan = Some(now);
        let reaped = reaper::reap(shared, &mut state, now);
        if !reaped.is_empty() {
            MutexGuard::unlocked(&mut state, || reaped.finish(shared));
            continue;
        }
        let next_look = sysmon::look(shared, &mut state, now);
        // A park with a deadline from now on makes this scan start again
        // (see `Table::publish`).
        shared.parked.scanning();
        let (generation, config) = (state.generation, &state.config);
        let (mut expired, mut retry) = (Vec::new(), Vec::new());
        let (mut parked_next, mut parked_len) = (None, 0);
        shared.parked.each(|parked| {
            if generation != parked.planned || parked.replan {
                parked.replan(|session| session.timing.deadline(config));
                parked.planned = generation;
                parked.replan = false;
            }
            expired.append(&mut parked.expire(now, &mut retry));
            parked_next = earliest(parked_next, parked.next_deadline());
            parked_len += parked.len();
        });
        if let Some(poller) = poller.as_deref() {
            for token in retry {
                poller.rouse(token.0 as u64);
            }
        }
        if !expired.is_empty() {
            drop(state);
            for (session, reason) in expired {
                shared.close_sessions([session], reason);
            }
            continue;
        }
        // Set under the state lock: a worker or `put` that brings
        // something earlier after this sees the plan and wakes us.
        let plan = shared
            .parked
            .publish(earliest(reaper::next_expiry(shared, &state), parked_next));
        state.reaper_plan = plan;
        let watch = state.pollers == 0 && parked_len > 0;
        drop(state);
        if let Some(poller) = poller.as_deref() {
            if watch != watching {
                let fd = poller.epoll.fd().as_raw_fd();
                let mut source = SourceFd(&fd);
                let result = if watch {
                    poll.registry()
                        .register(&mut source, WATCH, Interest::READABLE)
                } else {
                    poll.registry().deregister(&mut source)
                };
                match result {
                    Ok(()) => watching = watch,
                    Err(e) => log::error!("cannot watch the shared poller: {e}"),
                }
            }
        }
        let timeout = earliest(earliest(plan, next_look), publish_at)
            .map(|at| at.saturating_duration_since(now));
        if let Some(timer) = timer.as_mut() {
            let armed = match timeout {
                Some(wait) if wait < FINE => timer.arm(wait),
                _ => timer.disarm(),
            };
            if let Err(e) = armed {
                log::error!("the manager thread's fine timer failed: {e}");
            }
        }
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("the manager thread's poll failed, it stops: {e}");
            break;
        }
        if events.iter().any(|e| e.token() == TIMER) {
            if let Some(timer) = timer.as_ref() {
                timer.clear();
            }
        }
        if events.iter().any(|e| e.token() == WATCH) {
            // A parked connection is ready and no worker polls.
            let mut state = shared.state.lock();
            if state.phase == Phase::Running && state.pollers == 0 {
                sysmon::no_pollers(shared, &mut state);
            }
        }
    }
    if let Some(timer) = timer.as_ref() {
        let fd = timer.raw_fd();
        let _ = poll.registry().deregister(&mut SourceFd(&fd));
    }
    if watching {
        if let Some(poller) = poller.as_deref() {
            let fd = poller.epoll.fd().as_raw_fd();
            let _ = poll.registry().deregister(&mut SourceFd(&fd));
        }
    }
    if publish_at.is_some() {
        // `running` is 0 from now on.
        shared.publish_metrics();
    }
    log::debug!("manager thread exits");
    poll
}
