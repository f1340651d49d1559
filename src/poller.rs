//! The manager thread (`pool-manager`): one per running manager, asleep in
//! a `mio::Poll` until the next thing it has to do. It
//! - watches parked connections: one whose client sends again goes back to
//!   a worker ([`Shared::dispatch`]); one whose deadline passes is closed,
//!   counted by reason;
//! - retires workers idle for too long, and expires queued work (the
//!   reaper's decisions, in [`reaper`](crate::reaper));
//! - joins workers that retired themselves.
//!
//! Its poll timeout is the earliest of the reaper's next expiry and the
//! parked connections' next deadline; with neither it sleeps without one.
//! Other threads wake it through its `Waker` only when they bring something
//! earlier than its plan (see `State::reaper_plan` and `Parked::plan`), or
//! a new configuration, or the stop.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use mio::{Events, Poll, Token};
use parking_lot::MutexGuard;

use crate::manager::{CURRENT_MANAGER, Phase, Shared};
use crate::reaper::{self, earliest};
use crate::stats::CloseReason;

/// The waker's token. Parked connections' tokens stay below it.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Events taken per poll.
const EVENTS: usize = 1024;

/// Starts the manager thread of a manager that is starting.
pub(crate) fn spawn(shared: &Arc<Shared>, poll: Poll) -> io::Result<JoinHandle<Poll>> {
    let shared = Arc::clone(shared);
    thread::Builder::new()
        .name("pool-manager".into())
        .spawn(move || run(&shared, poll))
}

fn run(shared: &Arc<Shared>, mut poll: Poll) -> Poll {
    // Handlers' `closed` hooks run here for connections closed while
    // parked: a `stop` from one must not wait for this thread.
    CURRENT_MANAGER.with(|m| m.set(shared.id));
    let mut events = Events::with_capacity(EVENTS);
    loop {
        let mut state = shared.state.lock();
        if state.phase != Phase::Running {
            break;
        }
        let now = Instant::now();
        // Awake: whatever is queued from now on is seen below.
        state.reaper_plan = Some(now);
        let reaped = reaper::reap(shared, &mut state, now);
        if !reaped.is_empty() {
            MutexGuard::unlocked(&mut state, || reaped.finish(shared));
            continue;
        }
        let mut parked = shared.parked.lock();
        if state.generation != parked.planned || parked.replan {
            let config = &state.config;
            parked.replan(|session| session.timing.deadline(config));
            parked.planned = state.generation;
            parked.replan = false;
        }
        let expired = parked.expire(now);
        if !expired.is_empty() {
            drop(parked);
            drop(state);
            for (session, reason) in expired {
                shared.close_sessions([session], reason);
            }
            continue;
        }
        // Set under the locks: a worker or `put` that brings something
        // earlier after this sees the plan and wakes us.
        let plan = earliest(reaper::next_expiry(&state), parked.next_deadline());
        parked.plan = plan;
        state.reaper_plan = plan;
        drop(parked);
        drop(state);
        let timeout = plan.map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // epoll_wait fails only on a bad descriptor or argument: nothing
            // to retry. Close what is parked rather than strand it; parking
            // is refused from now on (connections close instead, counted).
            log::error!("the manager thread's poll failed; parked connections are closed: {e}");
            let stranded = {
                let mut parked = shared.parked.lock();
                parked.dead = true;
                parked.drain()
            };
            shared.close_sessions(stranded, CloseReason::Error);
            break;
        }
        let mut woken = Vec::new();
        let woken_at = Instant::now();
        {
            let mut parked = shared.parked.lock();
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                if let Some(mut session) = parked.remove(event.token()) {
                    session.woken_at = Some(woken_at);
                    woken.push(session);
                }
            }
        }
        // They stay registered: see `Session::registered`.
        if !woken.is_empty() {
            shared.dispatch(woken);
        }
    }
    log::debug!("manager thread exits");
    poll
}
