//! A worker: one named OS thread that serves one connection at a time.
//!
//! A worker has one of two roles, given under the manager's lock:
//! - **poller** (polled mode): it waits in the shared poller for a ready
//!   connection, serves it itself (one turn: read, handler, back to the
//!   poller), and waits again — no other thread is woken per request. At
//!   most `pollers` workers have this role. If one of its turns runs
//!   longer than `grow_after` while connections wait, the manager thread
//!   takes the role from it and gives it to another worker
//!   ([`Slot::released`](crate::pool::Slot::released)); when its turn ends it polls again if there is
//!   room, or goes idle.
//! - **idle / dedicated**: it waits on its channel for a [`Job`]: serve a
//!   stream until it closes (dedicated mode) or parks, become a poller, or
//!   exit.
//!
//! It takes queued work before anything else, and retires itself when the
//! manager stops, when it is surplus after `max_workers` was lowered, or
//! when the reaper asks a poller to leave (idle for `worker_idle_timeout`,
//! or above `pollers`; through a nudge of the shared poller) while above
//! `min_workers`.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Instant;

use crate::sync::MutexGuard;
use mio::Token;

use crate::pool::reaper::expire_queued;
use crate::pool::{
    CURRENT_MANAGER, Found, Idle, Job, Phase, Ready, Search, State, Taken, Unserved, Work,
    WorkerStart,
};
use crate::serve::{Ctx, Served};
use crate::session::Session;
use crate::stats::CloseReason;
use crate::tls::TlsConn;

/// Turns a poller gives one connection in a row while events for it keep
/// coming during its turns; then it is parked and re-armed, behind the
/// connections already ready.
const AGAIN: u32 = 8;

/// The worker thread's body, given to the pool as its workers' entry
/// point.
pub(crate) fn run(start: WorkerStart) {
    start.run();
}

/// What a worker leaving the poller role does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Afterwards {
    /// It exits (the stop, a failed poller, a lowered `max_workers`).
    Retire,
    /// It goes idle if the pool is at `min_workers` or work is queued, and
    /// exits otherwise (asked to leave: idle too long, or above `pollers`).
    IdleAtMinimum,
}

/// What a poller does after a check.
enum Check {
    Leave(Next),
    /// It served queued work.
    Served,
    Poll,
}

/// What a worker does next.
enum Next {
    Serve(Work),
    Poll,
    Wait,
    Exit,
}

impl WorkerStart {
    /// The worker thread's body.
    pub(crate) fn run(self) {
        CURRENT_MANAGER.with(|m| m.set(self.shared.id));
        self.slot.tid.store(crate::os_thread::current_id(), Relaxed);
        let (config, generation) = {
            let state = self.shared.state.lock();
            (Arc::clone(&state.config), state.generation)
        };
        let mut ctx = Ctx {
            pool: &*self.shared,
            bytes: &self.slot.bytes,
            buf: vec![0; config.buffer_size],
            config,
            generation,
            generation_now: &self.shared.generation,
            // Made now: `stop` rings it through the slot.
            bell: crate::epoll::Bell::new().ok().map(Arc::new),
        };
        let mut next = Next::Wait;
        loop {
            next = match next {
                Next::Wait => match self.rx.recv() {
                    Ok(Job::Serve(work)) => Next::Serve(work),
                    Ok(Job::Poll) => Next::Poll,
                    Ok(Job::Exit) | Err(_) => break,
                },
                Next::Serve(work) => {
                    let to_park = self.serve(work, &mut ctx);
                    let next = self.after_serve();
                    // Parked once this worker is idle again: if the client
                    // answers at once, the connection can come straight
                    // back to it.
                    if let Some((session, counted)) = to_park {
                        // A new parking never gives the connection back.
                        self.park(session, None, counted, &ctx);
                    }
                    next
                }
                Next::Poll => self.poll(&mut ctx),
                Next::Exit => break,
            };
        }
        log::debug!("worker {} exits", self.id);
    }

    /// The poller's loop: waits for a ready connection and serves it, until
    /// the worker must leave the role.
    fn poll(&self, ctx: &mut Ctx<'_>) -> Next {
        let shared = &*self.shared;
        let Some(poller) = self.poller.clone() else {
            return self.leave_polling(Afterwards::Retire);
        };
        let mut search = Search::new(&poller, &self.slot.draining);
        loop {
            if self.slot.released.load(Relaxed)
                || shared.queued.load(Relaxed) > 0
                || shared.poller_exits.load(Relaxed) > 0
                || shared.stopping.load(Relaxed)
                || shared.generation.load(Relaxed) != ctx.generation
            {
                match self.poll_check(ctx) {
                    Check::Leave(next) => return next,
                    // Look again before waiting: more may be queued.
                    Check::Served => continue,
                    Check::Poll => {}
                }
            }
            let ready = match search.next(|| self.waiting()) {
                Found::Ready(ready) => ready,
                // A nudge is looked at by the check above.
                Found::Again => continue,
                Found::Stop => return self.leave_polling(Afterwards::Retire),
                Found::Failed(e) => {
                    // Close what is parked rather than strand it.
                    log::error!("the shared poller failed; parked connections are closed: {e}");
                    shared.parked.dead.store(true, Relaxed);
                    let stranded = shared.parked.drain();
                    shared.close_sessions(stranded, CloseReason::Error);
                    return self.leave_polling(Afterwards::Retire);
                }
            };
            match ready {
                Ready::Leave => return self.leave_polling(Afterwards::Retire),
                // Asked to search: look again.
                Ready::Search => continue,
                Ready::Event { .. } | Ready::Roused(_) => {}
            }
            if let Some(session) = ready.take(&shared.parked) {
                self.slot.bytes.wakes.fetch_add(1, Relaxed);
                self.turn(Work::Resumed(session), ready.token(), ctx);
            }
        }
    }

    /// One turn of a poller: serves `work` (marked in [`Slot::turn`](crate::pool::Slot::turn) for
    /// the manager thread to see) and hands the connection back to the
    /// poller; serves it again at once while events for it came meanwhile,
    /// up to [`AGAIN`] times. `token`: the one it was taken under.
    fn turn(&self, mut work: Work, token: Option<Token>, ctx: &mut Ctx<'_>) {
        for round in 1.. {
            self.slot.turn.fetch_add(1, SeqCst);
            self.shared.turn_begins();
            let to_park = self.serve(work, ctx);
            self.slot.turn.fetch_add(1, Relaxed);
            let Some((session, counted)) = to_park else {
                if let Some(token) = token {
                    self.shared.parked.release(token);
                }
                return;
            };
            let taken = token.map(|token| Taken {
                token,
                again: round < AGAIN,
            });
            match self.park(session, taken, counted, ctx) {
                Some(mut session) => {
                    session.ready = true;
                    work = Work::Resumed(session);
                }
                None => return,
            }
        }
    }

    /// This poller is about to wait for work: its idle clock starts (read
    /// by the reaper; a poller kept busy never reads the clock for it).
    fn waiting(&self) {
        self.slot.idle_since_ms.store(self.shared.now_ms(), Relaxed);
    }

    /// Under the manager's lock, when something changed for a poller: the
    /// role was taken away, work is queued, a new config, a stop.
    fn poll_check(&self, ctx: &mut Ctx<'_>) -> Check {
        ctx.refresh_config();
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.run != self.run {
            return Check::Leave(Next::Exit);
        }
        if state.phase != Phase::Running || state.total > state.config.max_workers {
            return Check::Leave(self.leave_role(state, Afterwards::Retire));
        }
        if self.slot.released.swap(false, Relaxed) {
            // The manager thread took the role during a long turn.
            if state.pollers < state.poller_target() {
                state.start_polling(self.id, self.shared.now_ms());
            } else {
                self.hand_off_ready(&mut state);
                return Check::Leave(self.go_idle(state));
            }
        } else if shared.take_poller_exit() {
            // Asked to leave: idle too long, or above `pollers`. Pass the
            // nudge on while more are asked to leave.
            if shared.poller_exits.load(SeqCst) > 0 {
                if let Some(poller) = &self.poller {
                    poller.epoll.nudge();
                }
            }
            return Check::Leave(self.leave_role(state, Afterwards::IdleAtMinimum));
        }
        let (next, expired) = take_queued(&mut state, Instant::now());
        drop(state);
        expired.close(shared);
        match next {
            Some(work) => {
                self.turn(work, None, ctx);
                Check::Served
            }
            None => Check::Poll,
        }
    }

    /// Leaves the poller role: retires (as `afterwards` says; or if the
    /// manager is not running; or above `min_workers`), or goes idle.
    fn leave_polling(&self, afterwards: Afterwards) -> Next {
        let state = self.shared.state.lock();
        if state.run != self.run {
            return Next::Exit;
        }
        self.leave_role(state, afterwards)
    }

    /// [`leave_polling`](Self::leave_polling) under the lock already held.
    fn leave_role(&self, mut state: MutexGuard<'_, State>, afterwards: Afterwards) -> Next {
        state.stop_polling(self.id);
        self.hand_off_ready(&mut state);
        if afterwards == Afterwards::Retire
            || state.phase != Phase::Running
            || state.total > state.config.max_workers
            || (state.total > state.config.min_workers && state.queue.len() == 0)
        {
            return self.retire(state);
        }
        // Queued work is served first.
        self.go_idle(state)
    }

    /// This worker no longer polls (its role is gone): ready connections
    /// must reach someone. The last poller moves the ready list to the
    /// queue (and has the manager thread watch the shared poller);
    /// otherwise a poller waiting on the ready list is called to search, if
    /// this one was the searcher.
    fn hand_off_ready(&self, state: &mut State) {
        let Some(poller) = &self.poller else {
            return;
        };
        if state.pollers == 0 {
            // Rouses from here on nudge the manager thread's watch.
            poller.nudged.store(false, SeqCst);
            let taken = poller.take_all_listed();
            self.shared.requeue(state, taken);
            self.shared.wake_manager_thread();
        } else {
            // It may have been the searcher.
            poller.call_searcher();
        }
    }

    /// Goes on the idle stack (or serves queued work first).
    fn go_idle(&self, mut state: MutexGuard<'_, State>) -> Next {
        let (next, expired) = take_queued(&mut state, Instant::now());
        if next.is_none() {
            self.push_idle(&mut state);
        }
        drop(state);
        expired.close(&self.shared);
        match next {
            Some(work) => Next::Serve(work),
            None => Next::Wait,
        }
    }

    fn push_idle(&self, state: &mut State) {
        state.idle.push_back(Idle {
            id: self.id,
            tx: self.tx.clone(),
            since: Instant::now(),
        });
        if state.idle.len() == 1 {
            self.shared.wake_manager_thread();
        }
    }

    /// Removes this worker from the pool; its thread then returns.
    fn retire(&self, mut state: MutexGuard<'_, State>) -> Next {
        let shared = &*self.shared;
        if let Some(join) = state.remove_worker(self.id, shared) {
            state.exited.push(join);
        }
        shared.workers_changed.notify_all();
        drop(state);
        shared.wake_manager_thread();
        log::debug!("worker {} retires", self.id);
        Next::Exit
    }

    /// Serves `work` until it closes, or returns it to be parked, with
    /// whether a stop counted it while it was served.
    fn serve(&self, work: Work, ctx: &mut Ctx<'_>) -> Option<(Box<Session>, bool)> {
        let shared = &*self.shared;
        // Before a new connection takes its TLS configuration from it: an
        // idle worker's may be a `set_config` old.
        ctx.refresh_config();
        let mut session = match work {
            Work::New(incoming) => {
                shared.counters.connections.fetch_add(1, Relaxed);
                let mut session = Session::new(
                    incoming.stream,
                    incoming.ticket,
                    incoming.fresh,
                    incoming.accepted,
                    TlsConn::for_config(&ctx.config, &shared.counters.tls),
                );
                if let (Some(true), Some(proxy)) = (incoming.trusted, &ctx.config.proxy_protocol) {
                    session.expect_header(proxy);
                }
                session
            }
            Work::Resumed(session) => session,
        };
        // Where a shutdown does not wake a waiting worker, the bell that
        // `stop` rings must be known to its slot before the wait.
        if crate::serve::WAITS_ON_BELL {
            if let Err(e) = ctx.bell() {
                log::warn!("cannot make a worker's bell, closing a connection: {e}");
                shared.close_sessions([session], CloseReason::Error);
                return None;
            }
        }
        // `stop` sets `stopping`, then shuts down every slot's stream under
        // the slot's lock: a stream registered too late for that sees the
        // flag here, under the same lock, and is closed and counted here.
        let stopping = {
            let mut serving = self.slot.conn.lock();
            let stopping = shared.stopping.load(SeqCst);
            if !stopping {
                serving.stream = Some(Arc::clone(&session.stream));
                serving.bell.clone_from(&ctx.bell);
            }
            stopping
        };
        if stopping {
            shared.closed_at_stop.fetch_add(1, Relaxed);
            shared.close_sessions([session], CloseReason::Stop);
            return None;
        }
        let served = if !session.blocking && crate::socket::make_blocking(&session.stream).is_err()
        {
            ctx.close(&mut session, CloseReason::Error);
            Served::Closed(session)
        } else {
            session.blocking = true;
            shared.service.serve(session, ctx)
        };
        let counted = std::mem::take(&mut *self.slot.conn.lock()).counted;
        match served {
            Served::Parked(session) => Some((session, counted)),
            // The stream is closed (shut down, its fd released with the
            // last Arc here), and only then its place under the limits
            // given back (the ticket is dropped after the stream).
            Served::Closed(session) => {
                drop(session);
                None
            }
        }
    }

    /// Hands a quiet connection back to the poller; closes it if it cannot
    /// be parked (stopping, or the poller refused it). Gives it back if it
    /// must be served again at once (see [`Shared::park`](crate::pool::Shared::park)).
    fn park(
        &self,
        session: Box<Session>,
        taken: Option<Taken>,
        counted: bool,
        ctx: &Ctx<'_>,
    ) -> Option<Box<Session>> {
        let shared = &*self.shared;
        let parked = shared.park(
            self.poller.as_ref(),
            session,
            taken,
            &ctx.config,
            (ctx.generation, self.run),
            &self.slot.bytes,
        );
        if let Err((session, reason)) = parked {
            // A thread abandoned by an earlier stop counts in no report.
            let ours = shared.run.load(SeqCst) == self.run;
            if reason == CloseReason::Stop && !counted && ours {
                // The stop began after this worker's turn: it counted
                // neither the worker as busy nor the connection as parked.
                shared.closed_at_stop.fetch_add(1, Relaxed);
            }
            shared.close_sessions([session], reason);
            return None;
        }
        parked.unwrap_or(None)
    }

    /// Under the manager's lock, after a dedicated worker's connection
    /// closed or parked: retire, take queued work, poll, or go idle.
    fn after_serve(&self) -> Next {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.run != self.run {
            // Abandoned by a `stop_timeout` that gave up on this thread.
            return Next::Exit;
        }
        if state.phase != Phase::Running || state.total > state.config.max_workers {
            return self.retire(state);
        }
        let (next, expired) = take_queued(&mut state, Instant::now());
        let next = match next {
            Some(work) => Next::Serve(work),
            None if state.wants_poller(shared) => {
                state.start_polling(self.id, self.shared.now_ms());
                Next::Poll
            }
            None => {
                self.push_idle(&mut state);
                Next::Wait
            }
        };
        drop(state);
        expired.close(shared);
        next
    }
}

/// The oldest queued work still within `queue_timeout`, and the expired
/// work passed on the way.
fn take_queued(state: &mut State, now: Instant) -> (Option<Work>, Unserved) {
    let expired = expire_queued(state, now);
    (state.queue.pop_front().map(|q| q.work), expired)
}
