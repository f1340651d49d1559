//! Parked connections: the table of connections waiting for their client
//! in the workers' shared poller, and the timers of their deadlines (kept
//! by the manager thread).
//!
//! A connection is registered in the shared poller once, edge-triggered,
//! under a token that names its slot and its sequence number, so that a
//! late event for a connection that has since left cannot take another.
//! Its entry stays in the table while a worker serves it (`Running`): an
//! event that finds it there only marks it `notified`, and the worker
//! serves it again instead of parking it — the per-connection state word
//! that keeps a connection on one worker at a time without re-arming it
//! after every request (see `docs/design.md`). A parked connection's
//! deadline is an entry in a binary heap: O(log n) to park, O(log n) to
//! expire. Entries of connections that left early stay in the heap until
//! they surface or the heap is compacted (when stale entries outnumber live
//! ones), which keeps parking and waking free of searches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use crate::sync::{AtomicBool, AtomicU64, Mutex, MutexGuard};
use mio::Token;
use slab::Slab;

use crate::session::Session;
use crate::stats::CloseReason;
use crate::stream::Stream;

/// A token is a slot number in its low bits and the park's sequence number
/// in the rest: 32 + 32 bits on 64-bit targets, 20 + 12 on 32-bit ones. A
/// slot number is the shard (its low `SHARD_BITS`) and the entry's key in
/// that shard's slab.
const SLOT_BITS: u32 = if usize::BITS >= 64 { 32 } else { 20 };
/// Slot numbers are below this.
const SLOT_LIMIT: usize = (1 << SLOT_BITS) - 1;
/// The table is split in `1 << SHARD_BITS` shards, each behind its own
/// lock, so that workers parking and waking connections seldom meet.
const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;
/// Keys in one shard are below this (so at most `SHARDS` times this many
/// connections are parked at once).
const KEY_LIMIT: usize = SLOT_LIMIT >> SHARD_BITS;
/// A token keeps the sequence number modulo this: small enough that every
/// token is below `epoll::HUP` (and so below the signals' event data).
const SEQ_MODULUS: usize = usize::MAX >> (SLOT_BITS + 2);

/// The heap compacts when it holds this many more entries than twice the
/// parked connections.
const COMPACT_SLACK: usize = 1024;

struct Entry {
    place: Place,
    /// Which connection this is, to tell it from earlier users of the slot.
    seq: u32,
    /// Which park of it this is, to tell its timer from those of its
    /// earlier parks.
    park: u32,
}

/// Where a connection with an entry is.
enum Place {
    /// Waiting for its client, until `deadline`.
    Parked {
        session: Box<Session>,
        deadline: Option<(Instant, CloseReason)>,
    },
    /// On a worker; `notified`: an event came meanwhile, so bytes may wait
    /// that no later event will announce; `hup`: one of them reported an
    /// end (see `epoll::HUP`).
    Running { notified: bool, hup: bool },
}

/// What [`Parked::repark`] did with a connection a worker served.
pub(crate) enum Repark {
    /// Parked; its timer set for the instant given, if any. `rearm`: an
    /// event came while it was served and it must be re-armed, so that
    /// the bytes it may announce are reported again.
    Parked { timer: Option<Instant>, rearm: bool },
    /// An event came while it was served: serve it again (its entry stays
    /// `Running`).
    Again(Box<Session>),
    /// Its entry is gone (a stop, a failed poller): park it anew.
    Gone(Box<Session>),
}

/// The parked connections, behind a lock of their own (taken after the
/// manager's state lock, never before it).
#[derive(Default)]
pub(crate) struct Parked {
    /// Which shard this is.
    shard: usize,
    entries: Slab<Entry>,
    /// Entries that are `Parked`.
    parked: usize,
    /// (deadline, slot, park), earliest first.
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    next_seq: u32,
    next_park: u32,
    /// The configuration generation the deadlines follow (set by the
    /// manager thread when it plans them).
    pub(crate) planned: u64,
    /// Set when a connection was parked with a deadline from another
    /// generation: the manager thread re-plans them all.
    pub(crate) replan: bool,
}

/// The parked connections: `SHARDS` tables, each behind its own lock
/// (taken after the manager's state lock, never before it; never two at
/// once).
pub(crate) struct Table {
    shards: Box<[Mutex<Parked>]>,
    /// Set if the shared poller failed: parking is refused.
    pub(crate) dead: AtomicBool,
    /// When the manager thread looks at the timers next, in nanoseconds
    /// since `epoch` (`NEVER`: when woken). While it scans the shards,
    /// `SCANNING` is set and the low bits hold the earliest deadline parked
    /// during the scan, which the plan it publishes then includes. A park
    /// with a deadline earlier than a published plan wakes it.
    plan: AtomicU64,
    epoch: Instant,
}

/// `Table::plan`'s flag while the manager thread scans the shards.
const SCANNING: u64 = 1 << 63;
/// `Table::plan` (without the flag) when there is no deadline.
const NEVER: u64 = SCANNING - 1;

impl Default for Table {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS)
                .map(|shard| {
                    Mutex::new(Parked {
                        shard,
                        ..Parked::default()
                    })
                })
                .collect(),
            dead: AtomicBool::new(false),
            plan: AtomicU64::new(NEVER),
            epoch: Instant::now(),
        }
    }
}

impl Table {
    /// The shard a connection whose descriptor is `key` parks in.
    pub(crate) fn shard_for(&self, key: usize) -> MutexGuard<'_, Parked> {
        self.shards[key % SHARDS].lock()
    }

    /// The shard of the connection registered under `token`.
    pub(crate) fn shard_of(&self, token: Token) -> MutexGuard<'_, Parked> {
        self.shards[token.0 & (SHARDS - 1)].lock()
    }

    /// An event named `token` (`hup`: it reported an end): takes the
    /// connection out if it is parked there (its entry is then `Running`),
    /// or marks it notified if a worker serves it.
    pub(crate) fn take(&self, token: Token, hup: bool) -> Option<Box<Session>> {
        self.shard_of(token).take(token, hup)
    }

    /// Frees the entry of a connection taken under `token` that will not
    /// be parked again under it (closed, or moved to the queue).
    pub(crate) fn release(&self, token: Token) {
        self.shard_of(token).release(token);
    }

    /// [`take`](Self::take), then [`release`](Self::release): for a
    /// connection that leaves the poller for the queue.
    pub(crate) fn take_out(&self, token: Token, hup: bool) -> Option<Box<Session>> {
        self.shard_of(token).take_out(token, hup)
    }

    /// Connections parked.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Takes out every parked connection.
    pub(crate) fn drain(&self) -> Vec<Box<Session>> {
        let mut all = Vec::new();
        for shard in &*self.shards {
            all.append(&mut shard.lock().drain());
        }
        all
    }

    /// Every shard in turn, locked: for the manager thread's timers.
    pub(crate) fn each(&self, mut f: impl FnMut(&mut Parked)) {
        for shard in &*self.shards {
            f(&mut shard.lock());
        }
    }

    /// A connection was parked with a deadline `at` (after its shard's
    /// lock was released): whether the manager thread must be woken.
    pub(crate) fn deadline_parked(&self, at: Instant) -> bool {
        let at = self.nanos(at);
        let mut plan = self.plan.load(SeqCst);
        while plan & SCANNING != 0 {
            let earliest = SCANNING | (plan & NEVER).min(at);
            match self
                .plan
                .compare_exchange_weak(plan, earliest, SeqCst, SeqCst)
            {
                Ok(_) => return false,
                Err(now) => plan = now,
            }
        }
        at < plan
    }

    /// The manager thread begins a scan of the shards.
    pub(crate) fn scanning(&self) {
        self.plan.store(SCANNING | NEVER, SeqCst);
    }

    /// The manager thread ends its scan: it will look next at `plan`
    /// (`None`: when woken), or earlier if a deadline was parked during the
    /// scan; returns when. A park in a shard already scanned takes that
    /// shard's lock after the scan did, so it sees `SCANNING` (or the plan
    /// published after it).
    pub(crate) fn publish(&self, plan: Option<Instant>) -> Option<Instant> {
        let plan = plan.map_or(NEVER, |at| self.nanos(at));
        let mut current = self.plan.load(SeqCst);
        loop {
            let earliest = plan.min(current & NEVER);
            match self
                .plan
                .compare_exchange_weak(current, earliest, SeqCst, SeqCst)
            {
                Ok(_) => {
                    return (earliest != NEVER)
                        .then(|| self.epoch + Duration::from_nanos(earliest));
                }
                Err(now) => current = now,
            }
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).map_or(NEVER - 1, |n| n.min(NEVER - 1))
    }
}

impl Parked {
    /// Connections parked (not those on a worker).
    pub(crate) fn len(&self) -> usize {
        self.parked
    }

    /// The slot number of key `key` of this shard.
    fn slot(&self, key: usize) -> usize {
        (key << SHARD_BITS) | self.shard
    }

    /// The parked connection that holds the most bytes waiting for its
    /// socket: how many, and its token.
    pub(crate) fn largest(&mut self) -> Option<(usize, Token)> {
        self.entries
            .iter()
            .filter_map(|(key, entry)| match &entry.place {
                Place::Parked { session, .. } if session.held.mine() > 0 => {
                    Some((session.held.mine(), token(self.slot(key), entry.seq)))
                }
                _ => None,
            })
            .max_by_key(|&(held, _)| held)
    }

    /// The stream of the connection parked under `token`, if it is.
    pub(crate) fn stream(&mut self, token: Token) -> Option<Arc<Stream>> {
        match &self.entry(token)?.1.place {
            Place::Parked { session, .. } => Some(Arc::clone(&session.stream)),
            Place::Running { .. } => None,
        }
    }

    /// The token the next [`insert`](Parked::insert) will use; `None` if
    /// the table is full (more than `SLOT_LIMIT` parked).
    pub(crate) fn next_token(&self) -> Option<Token> {
        let key = self.entries.vacant_key();
        (key < KEY_LIMIT).then(|| token(self.slot(key), self.next_seq))
    }

    /// Parks `session` under [`next_token`](Parked::next_token) until
    /// `deadline`; returns the instant its timer was set for, if any (see
    /// [`Table::deadline_parked`]).
    pub(crate) fn insert(
        &mut self,
        session: Box<Session>,
        deadline: Option<(Instant, CloseReason)>,
    ) -> Option<Instant> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let slot = self.entries.insert(Entry {
            place: Place::Running {
                notified: false,
                hup: false,
            },
            seq,
            park: 0,
        });
        self.park(slot, session, deadline)
    }

    /// Puts `session` in entry `slot`, parked until `deadline`.
    fn park(
        &mut self,
        slot: usize,
        session: Box<Session>,
        deadline: Option<(Instant, CloseReason)>,
    ) -> Option<Instant> {
        let entry = &mut self.entries[slot];
        entry.place = Place::Parked { session, deadline };
        entry.park = self.next_park;
        self.next_park = self.next_park.wrapping_add(1);
        let park = entry.park;
        self.parked += 1;
        let (at, _) = deadline?;
        self.timers.push(Reverse((at, slot, park)));
        if self.timers.len() > 2 * self.entries.len() + COMPACT_SLACK {
            let entries = &self.entries;
            self.timers
                .retain(|Reverse((at, slot, park))| is_live(entries, *at, *slot, *park));
        }
        Some(at)
    }

    /// The entry `token` names, if it is still the connection's.
    fn entry(&mut self, token: Token) -> Option<(usize, &mut Entry)> {
        let slot = (token.0 & SLOT_LIMIT) >> SHARD_BITS;
        let seq = token.0 >> SLOT_BITS;
        let entry = self.entries.get_mut(slot)?;
        (entry.seq as usize % SEQ_MODULUS == seq).then_some((slot, entry))
    }

    /// See [`Table::take`].
    pub(crate) fn take(&mut self, token: Token, hup: bool) -> Option<Box<Session>> {
        let (_, entry) = self.entry(token)?;
        match &mut entry.place {
            Place::Running {
                notified,
                hup: ended,
            } => {
                *notified = true;
                *ended |= hup;
                None
            }
            Place::Parked { .. } => {
                let running = Place::Running {
                    notified: false,
                    hup: false,
                };
                let Place::Parked { mut session, .. } =
                    std::mem::replace(&mut entry.place, running)
                else {
                    unreachable!("matched above")
                };
                self.parked -= 1;
                session.hup |= hup;
                Some(session)
            }
        }
    }

    /// See [`Table::take_out`].
    pub(crate) fn take_out(&mut self, token: Token, hup: bool) -> Option<Box<Session>> {
        let session = self.take(token, hup)?;
        self.release(token);
        Some(session)
    }

    /// See [`Table::release`]. An entry that is parked is left alone.
    pub(crate) fn release(&mut self, token: Token) {
        if let Some((slot, entry)) = self.entry(token) {
            if matches!(entry.place, Place::Running { .. }) {
                self.entries.remove(slot);
            }
        }
    }

    /// Parks again, until `deadline`, a connection a worker took under
    /// `token` and served. If an event came meanwhile, it is served again
    /// (`again`) or parked and re-armed.
    pub(crate) fn repark(
        &mut self,
        token: Token,
        session: Box<Session>,
        deadline: Option<(Instant, CloseReason)>,
        again: bool,
    ) -> Repark {
        let Some((slot, entry)) = self.entry(token) else {
            return Repark::Gone(session);
        };
        let Place::Running { notified, hup } = &mut entry.place else {
            // Never: only its worker parks a taken connection.
            return Repark::Gone(session);
        };
        let mut session = session;
        session.hup |= std::mem::take(hup);
        let rearm = std::mem::take(notified);
        if rearm && again {
            return Repark::Again(session);
        }
        // Disarmed for a blocking read: the re-arm reports what came.
        let rearm = rearm | std::mem::take(&mut session.disarmed);
        let timer = self.park(slot, session, deadline);
        Repark::Parked { timer, rearm }
    }

    /// Takes out the connections whose deadline is at or before `now`, with
    /// the defence that closes each. A write deadline is judged by a turn
    /// instead, which tries the socket first (a slow reader may have made
    /// room that no event reported: the kernel reports a socket writable
    /// only once a third of its buffer is free): such a connection stays
    /// parked, without a timer, and its token goes to `retry`, for the
    /// pollers to take as if a handle had roused it.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        retry: &mut Vec<Token>,
    ) -> Vec<(Box<Session>, CloseReason)> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, slot, park))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !is_live(&self.entries, at, slot, park) {
                continue;
            }
            let key = self.slot(slot);
            let entry = &mut self.entries[slot];
            if let Place::Parked { deadline, .. } = &mut entry.place {
                if matches!(deadline, Some((_, CloseReason::WriteDeadline))) {
                    *deadline = None;
                    retry.push(token(key, entry.seq));
                    continue;
                }
            }
            if let Place::Parked {
                session,
                deadline: Some((_, reason)),
            } = self.entries.remove(slot).place
            {
                self.parked -= 1;
                out.push((session, reason));
            }
        }
        out
    }

    /// The earliest deadline of a parked connection.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, slot, park))) = self.timers.peek() {
            if is_live(&self.entries, at, slot, park) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Gives every parked connection the deadline `deadline` computes (after
    /// a configuration change): O(n log n), once per change.
    pub(crate) fn replan(&mut self, deadline: impl Fn(&Session) -> Option<(Instant, CloseReason)>) {
        self.timers.clear();
        for (slot, entry) in &mut self.entries {
            if let Place::Parked {
                session,
                deadline: planned,
            } = &mut entry.place
            {
                *planned = deadline(session);
                if let Some((at, _)) = planned {
                    self.timers.push(Reverse((*at, slot, entry.park)));
                }
            }
        }
    }

    /// Takes out every parked connection, and forgets those on workers
    /// (which then find their entry gone).
    pub(crate) fn drain(&mut self) -> Vec<Box<Session>> {
        self.timers.clear();
        self.parked = 0;
        self.entries
            .drain()
            .filter_map(|entry| match entry.place {
                Place::Parked { session, .. } => Some(session),
                Place::Running { .. } => None,
            })
            .collect()
    }
}

/// Whether a timer `(at, slot, park)` is the one of the connection parked
/// in `slot` now.
fn is_live(entries: &Slab<Entry>, at: Instant, slot: usize, park: u32) -> bool {
    entries.get(slot).is_some_and(|e| {
        e.park == park && matches!(e.place, Place::Parked { deadline: Some((d, _)), .. } if d == at)
    })
}

/// The token and the end mark of an event's data (see `epoll::HUP`).
pub(crate) fn event_token(data: u64) -> (Token, bool) {
    let hup = data & crate::epoll::HUP != 0;
    (Token((data & !crate::epoll::HUP) as usize), hup)
}

fn token(slot: usize, seq: u32) -> Token {
    Token(((seq as usize % SEQ_MODULUS) << SLOT_BITS) | slot)
}

#[cfg(test)]
mod tests;
