//! The manager thread's watch over the pollers (named after Go's `sysmon`):
//! a handler that blocks must hold its own connection and nothing else.
//!
//! While any poller is in a turn, the manager thread looks every
//! `grow_after`. A poller whose turn has not changed since the last look
//! has been in it for at least `grow_after`; if its thread slept through
//! most of the time since that look and is still asleep (in the kernel: a
//! blocking call, a sleep, a lock — not computing, not waiting for a CPU;
//! on Linux its scheduler clock, read at each look, and its state in
//! `/proc` say so; elsewhere the turn's length alone decides, see
//! `os_thread.rs`) and connections are
//! ready and waiting meanwhile, its poller role goes to another worker —
//! an idle one, or a new one below `max_workers` — so the ready
//! connections are served. A poller that computes, or waits for a CPU,
//! keeps its role: it is only slow. The same look brings the pollers up
//! to `pollers` while ready connections wait. When no poller is left
//! (every one slept through its turn) and none can start (the pool is at
//! `max_workers`), the ready connections are moved to the queue, where
//! `queue_timeout` bounds their wait as it does for new streams.
//!
//! A release within 100 ms of the last means handlers block often: on
//! Linux, for 100 ms after it the pool keeps spare pollers
//! (`State::poller_target`, [`spares`]), so that while the next blocked
//! ones wait to be replaced every CPU is still polled (measured: one spare
//! gave 1.26–1.50× the throughput where the server has one CPU; as many
//! as the rate of blocks calls for, 1.19× more on two; Linux only, where a
//! blocked turn is told from a long one that computes). Elsewhere, like Go's
//! sysmon, it looks more often while there is something to find instead:
//! for 100 ms after it released a blocked poller it looks every
//! `grow_after / 4`, so that under handlers that block often a poller is
//! replaced after a quarter of `grow_after` to half of it, rather than one
//! to two `grow_after`s (measured on Linux before the spare: 1.5× the
//! throughput with 1 % of requests sleeping 10 ms; [`FAST`] says why not
//! there now). Handlers that never block never trigger either.
//!
//! On Linux, while looks find nothing to do (no poller in the same turn at
//! two looks in a row, none missing while connections wait, no release in
//! the last 100 ms), it looks less often, as Go's sysmon backs off: half as often
//! after every [`QUIET_LOOKS`] of them, down to once every 8 × `grow_after`
//! ([`BACKOFF_DOUBLINGS`]). Under steady load of short turns, one look a
//! millisecond was 0.37–0.40 µs of the manager thread's CPU per request,
//! 3 % of the server's; backed off, 0.03–0.06. The price: the first
//! handler to block after a quiet spell (idle included) is replaced after
//! 8–16 × `grow_after` rather than 1–2, and so is a poller missing.
//!
//! Looking costs nothing while the pool is idle: the manager thread stops
//! one look after the last turn, and the first turn to begin after it
//! stopped wakes it (`Shared::ticking`).

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use super::{Nudge, Ready, Shared, State, Work};
use crate::os_thread;

/// A poller found in the same turn as at the last look.
struct Long {
    id: u64,
    turn: u64,
    /// Whether its thread slept through most of the time since that look.
    slept: bool,
}

/// Ready connections moved to the queue per look, at most.
const OVERFLOW_BATCH: usize = 64;
/// After a blocked poller was released, the sysmon looks this many times
/// as often… Not on Linux, where the spare poller (`spare_until`) covers
/// for the next poller that blocks while it is replaced, and the looks cost
/// more than they bought: in `blocking` (1 % of requests sleeping 10 ms),
/// 4 000 wake-ups a second of the manager thread were 1.5 µs of CPU per
/// request, and without them the server's CPU per request went from 14.3
/// to 11.7 µs at the same throughput and p99 (`benches/ab.sh`, 6 rounds).
/// Elsewhere, with no spare, they are kept.
const FAST: u32 = if os_thread::TELLS_ASLEEP { 1 } else { 4 };
/// …for this long after the last release…
const FAST_FOR: Duration = Duration::from_millis(100);
/// …but never more often than this.
const FAST_LEAST: Duration = Duration::from_micros(50);
/// Looks in a row that find nothing to do before the sysmon looks half as
/// often…
const QUIET_LOOKS: u32 = 4;
/// …down to once every `grow_after` times two to this power…
const BACKOFF_DOUBLINGS: u32 = 3;
/// …on Linux. Not elsewhere for now: under Wine, with it,
/// `tests/storm.rs` lost a client in 2 of 29 runs (a parked connection
/// never served again), against none in 40 runs without; not explained
/// yet (`docs/performance.md`).
const BACKS_OFF: bool = os_thread::TELLS_ASLEEP;

/// Releases remembered for [`spares`], at most.
pub(crate) const RELEASES_KEPT: usize = 256;

/// Spare pollers per poller, at most.
const SPARES_PER_POLLER: usize = 2;

/// The most spare pollers with `pollers` pollers.
pub(crate) fn most_spares(pollers: usize) -> usize {
    pollers.max(1).saturating_mul(SPARES_PER_POLLER)
}

/// How many spare pollers while handlers block often, from the releases
/// within the last `FAST_FOR`: as many as there are likely pollers blocked
/// and not yet found — the rate of releases times the time to find one
/// (one to two `grow_after`s after its handler blocked; two counted) —
/// at least one and at most [`SPARES_PER_POLLER`] per poller. With 1 % of
/// requests sleeping 10 ms at 150k requests a second, 1,500 blocks a
/// second: three spares with `grow_after` at 1 ms.
fn spares(recent: usize, grow_after: Duration, pollers: usize) -> usize {
    let lag = grow_after.saturating_mul(2).as_nanos();
    let blocked = lag
        .saturating_mul(recent as u128)
        .div_ceil(FAST_FOR.as_nanos());
    usize::try_from(blocked)
        .unwrap_or(usize::MAX)
        .clamp(1, most_spares(pollers))
}

/// One look, if the manager thread is looking; returns when to look next.
pub(crate) fn look(shared: &Arc<Shared>, state: &mut State, now: Instant) -> Option<Instant> {
    if !shared.ticking.load(SeqCst) {
        state.sysmon_next = None;
        return None;
    }
    // Woken early for something else: a look now would take a turn of a
    // few microseconds for a long one.
    if let Some(due) = state.sysmon_next.filter(|&due| now < due) {
        return Some(due);
    }
    // Whether a poller is in a turn, or has been since the last look;
    // whether one is free to take a ready connection; the pollers in the
    // same turn as at the last look.
    let (mut busy, mut free) = (false, false);
    let mut long = Vec::new();
    // Looking fast since an earlier look's release: a release in this one
    // means handlers block often. Only where the OS tells a blocked
    // thread from one computing: elsewhere a long turn that computes reads
    // as blocked too, and a spare would compete with it for the CPUs
    // (under Wine, 1000 debug-build TLS handshakes kept the window open).
    let fast_before =
        os_thread::TELLS_ASLEEP && state.sysmon_fast_until.is_some_and(|until| now < until);
    // A window past: `poller_target` need not read the clock for it.
    if state.spare_until.is_some_and(|until| now >= until) {
        state.spare_until = None;
    }
    for (&id, entry) in &mut state.workers {
        let turn = entry.slot.turn.load(SeqCst);
        let mut awake_seen = None;
        if entry.polling {
            // Turns went by since the last look: the pool is serving, and
            // the next turn is near. Looking on costs one wake-up per
            // `grow_after`; stopping now would cost one per burst of turns
            // (measured: five times as many under steady load).
            busy |= turn != entry.seen;
            if turn % 2 == 0 {
                free = true;
            } else {
                busy = true;
                // Timed at the reading, not at the look: the manager
                // thread may be preempted in between.
                let (awake, read_at) = (entry.awake(), Instant::now());
                if turn == entry.seen {
                    // In this turn at the last look too (which read the
                    // clock): asleep for most of the time since?
                    let slept = entry.awake_seen.is_none_or(|(then, before)| {
                        let awake = awake
                            .zip(before)
                            .map(|(now, then)| now.saturating_sub(then));
                        os_thread::slept_through(awake, read_at.saturating_duration_since(then))
                    });
                    long.push(Long { id, turn, slept });
                }
                awake_seen = Some((read_at, awake));
            }
        }
        entry.seen = turn;
        entry.awake_seen = awake_seen;
    }
    // Fewer pollers than wanted, all of them serving: add one.
    let short = state.pollers < state.poller_target() && !free;
    let act = (!long.is_empty() || short) && ready_waiting(shared);
    // A look finds something to do: a long turn, a poller missing while
    // connections wait, or handlers that blocked within `FAST_FOR`.
    let blocking = state.sysmon_fast_until.is_some_and(|until| now < until);
    state.sysmon_quiet = match long.is_empty() && !act && !blocking {
        true => state.sysmon_quiet.saturating_add(1),
        false => 0,
    };
    if act {
        let poller = shared.poller();
        // A turn that computes, or waits for a CPU, keeps its role: another
        // poller would only compete for the same CPUs. (Where the OS does
        // not say, every long turn counts as blocked: `os_thread.rs`.)
        for Long { id, turn, slept } in long {
            let Some(entry) = state.workers.get_mut(&id) else {
                continue;
            };
            // It will not take from the ready list soon: the searcher must
            // not wait in the epoll instance on the strength of it.
            if let Some(poller) = &poller {
                poller.stop_draining(&entry.slot.draining, Nudge::Searcher);
            }
            // Asleep over the time since the last look, and now (the clock
            // can lag for a thread awake: `os_thread::Clock`); and still
            // the same turn once the thread's state was read.
            if !slept || !entry.asleep_now() || entry.slot.turn.load(SeqCst) != turn {
                continue;
            }
            entry.slot.released.store(true, Relaxed);
            shared.counters.poller_handoffs.fetch_add(1, Relaxed);
            state.stop_polling(id);
            state.sysmon_fast_until = now.checked_add(FAST_FOR);
            let releases = &mut state.releases;
            while releases
                .front()
                .is_some_and(|&at| now.saturating_duration_since(at) >= FAST_FOR)
                || releases.len() >= RELEASES_KEPT
            {
                releases.pop_front();
            }
            releases.push_back(now);
            if fast_before {
                state.spare_until = state.sysmon_fast_until;
                state.spares = spares(
                    releases.len(),
                    state.config.grow_after,
                    state.config.pollers,
                );
            }
            log::debug!("worker {id} is in a long turn: its poller role goes to another");
        }
        while state.pollers < state.poller_target() && shared.start_poller(state) {}
        // Every poller slept through its turn and no worker can take the
        // role (none is idle, and the pool is at `max_workers`): the ready
        // connections wait in the queue, bounded by `queue_timeout`, and
        // go to the first worker that frees. Pollers in long turns that
        // compute or wait for a CPU are only slow (a machine short of
        // CPU): the connections wait for them where they are, rather than
        // be turned away from a queue no worker is free to take from.
        if state.pollers == 0 {
            overflow(shared, state);
        }
    }
    // Events wait and no poller searches (the last searcher is in a turn):
    // one waiting on the ready list comes.
    if let Some(poller) = shared.poller() {
        if poller.epoll.has_ready() {
            poller.call_searcher();
        }
    }
    if !busy {
        shared.ticking.store(false, SeqCst);
        // Pairs with `Shared::turn_begins`: a turn that began before the
        // store above is seen here; one that begins after it wakes us.
        let begun = state
            .workers
            .values()
            .any(|e| e.polling && e.slot.turn.load(SeqCst) % 2 == 1);
        if !begun {
            // Idle is quiet too: the looks of the next burst go on from
            // where these left off.
            state.sysmon_next = None;
            return None;
        }
        shared.ticking.store(true, SeqCst);
    }
    // Past this look's releases, which open the window too.
    let fast = FAST > 1 && state.sysmon_fast_until.is_some_and(|until| now < until);
    let every = match fast {
        // Never a busy loop, whatever `grow_after` is.
        true => (state.config.grow_after / FAST).max(FAST_LEAST),
        // Backing off while looks find nothing, as Go's sysmon does.
        false => {
            let doublings = match BACKS_OFF {
                true => (state.sysmon_quiet / QUIET_LOOKS).min(BACKOFF_DOUBLINGS),
                false => 0,
            };
            state.config.grow_after.saturating_mul(1 << doublings)
        }
    };
    state.sysmon_next = now.checked_add(every);
    state.sysmon_next
}

/// A parked connection is ready and no worker polls: start a poller, or,
/// if none can start, queue the ready connections.
pub(crate) fn no_pollers(shared: &Arc<Shared>, state: &mut State) {
    if !shared.start_poller(state) {
        overflow(shared, state);
    }
}

fn ready_waiting(shared: &Shared) -> bool {
    shared.poller().is_some_and(|p| p.has_ready())
}

/// Moves ready connections from the shared poller to the queue.
fn overflow(shared: &Shared, state: &mut State) {
    let Some(poller) = shared.poller() else {
        return;
    };
    // The shared poller first, then the list: a handle's rouse puts its
    // token on the list before it nudges, so the token of a nudge that
    // `take_ready` drops is on the list by then, and taken here.
    let mut ready = match poller.epoll.take_ready(OVERFLOW_BATCH) {
        Ok(more) => more.into_iter().map(Ready::event).collect(),
        Err(e) => {
            log::error!("cannot take ready connections from the shared poller: {e}");
            Vec::new()
        }
    };
    ready.extend(poller.take_all_listed());
    let now = Instant::now();
    let sessions: Vec<_> = ready
        .into_iter()
        .filter_map(|r| r.take_out(&shared.parked))
        .collect();
    if sessions.is_empty() {
        return;
    }
    log::debug!(
        "no worker free: {} ready connections queued",
        sessions.len()
    );
    for mut session in sessions {
        session.woken_at = Some(now);
        shared.counters.wakes.fetch_add(1, Relaxed);
        shared.counters.overflowed.fetch_add(1, Relaxed);
        state.enqueue(shared, Work::Resumed(session));
    }
    // A poller whose turn ended since the look may already wait again (in
    // `epoll_wait`, or on the ready list), and the connections just queued
    // are the ones whose events would have woken it: wake every poller, so
    // that each looks at the queue (a nudge for the searcher, a `SEARCH`
    // token for each of the others).
    poller.epoll.nudge();
    poller
        .ready
        .extend(std::iter::repeat_n(Ready::Search, state.pollers));
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn spares_follow_the_rate_of_blocks_within_bounds() {
        let ms = Duration::from_millis;
        // Two blocks within 100 ms (what opens the window): one spare.
        assert_eq!(spares(2, ms(1), 2), 1);
        // 150 in 100 ms, found 1-2 ms late: three likely blocked unfound.
        assert_eq!(spares(150, ms(1), 2), 3);
        assert_eq!(spares(100, ms(1), 2), 2);
        // At most two per poller, whatever the rate or `grow_after`.
        assert_eq!(spares(256, ms(50), 2), 4);
        assert_eq!(spares(256, Duration::MAX, 1), 2);
        assert_eq!(spares(256, ms(50), 0), 2);
        // Never none while the window is open.
        assert_eq!(spares(0, Duration::ZERO, 2), 1);
    }
}
