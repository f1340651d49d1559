//! Parked connections: the table of connections waiting for their client
//! in the workers' shared poller, and the timers of their deadlines (kept
//! by the manager thread).
//!
//! A parked connection is armed (readable, one-shot) under a token that
//! names its slot and the park it belongs to, so that a late event for a
//! connection that has since left cannot take another. Its
//! deadline is an entry in a binary heap: O(log n) to park, O(log n) to
//! expire. Entries of connections that left early stay in the heap until
//! they surface or the heap is compacted (when stale entries outnumber live
//! ones), which keeps parking and waking free of searches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use mio::Token;
use parking_lot::{Mutex, MutexGuard};
use slab::Slab;

use crate::session::Session;
use crate::stats::CloseReason;

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
/// A token keeps the sequence number modulo this: below the all-ones value
/// of its bits, so that no token is the waker's `usize::MAX`.
const SEQ_MODULUS: usize = usize::MAX >> SLOT_BITS;

/// The heap compacts when it holds this many more entries than twice the
/// parked connections.
const COMPACT_SLACK: usize = 1024;

struct Entry {
    session: Box<Session>,
    /// Which park this is, to tell it from earlier users of the slot.
    seq: u32,
    deadline: Option<(Instant, CloseReason)>,
}

/// The parked connections, behind a lock of their own (taken after the
/// manager's state lock, never before it).
#[derive(Default)]
pub(crate) struct Parked {
    /// Which shard this is.
    shard: usize,
    entries: Slab<Entry>,
    /// (deadline, slot, seq), earliest first.
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    next_seq: u32,
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

    /// Takes out the connection parked under `token`, if it is still there.
    pub(crate) fn remove(&self, token: Token) -> Option<Box<Session>> {
        self.shards[token.0 & (SHARDS - 1)].lock().remove(token)
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
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The slot number of key `key` of this shard.
    fn slot(&self, key: usize) -> usize {
        (key << SHARD_BITS) | self.shard
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
            session,
            seq,
            deadline,
        });
        let (at, _) = deadline?;
        self.timers.push(Reverse((at, slot, seq)));
        if self.timers.len() > 2 * self.entries.len() + COMPACT_SLACK {
            let entries = &self.entries;
            self.timers
                .retain(|Reverse((at, slot, seq))| is_live(entries, *at, *slot, *seq));
        }
        Some(at)
    }

    /// Takes out the connection parked under `token`, if it is still there.
    pub(crate) fn remove(&mut self, token: Token) -> Option<Box<Session>> {
        let slot = (token.0 & SLOT_LIMIT) >> SHARD_BITS;
        let seq = token.0 >> SLOT_BITS;
        if self.entries.get(slot)?.seq as usize % SEQ_MODULUS != seq {
            return None;
        }
        Some(self.entries.remove(slot).session)
    }

    /// Takes out the connections whose deadline is at or before `now`, with
    /// the defence that closes each.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(Box<Session>, CloseReason)> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, slot, seq))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if is_live(&self.entries, at, slot, seq) {
                let entry = self.entries.remove(slot);
                if let Some((_, reason)) = entry.deadline {
                    out.push((entry.session, reason));
                }
            }
        }
        out
    }

    /// The earliest deadline of a parked connection.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, slot, seq))) = self.timers.peek() {
            if is_live(&self.entries, at, slot, seq) {
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
            entry.deadline = deadline(&entry.session);
            if let Some((at, _)) = entry.deadline {
                self.timers.push(Reverse((at, slot, entry.seq)));
            }
        }
    }

    /// Takes out every parked connection.
    pub(crate) fn drain(&mut self) -> Vec<Box<Session>> {
        self.timers.clear();
        self.entries.drain().map(|entry| entry.session).collect()
    }
}

fn is_live(entries: &Slab<Entry>, at: Instant, slot: usize, seq: u32) -> bool {
    entries
        .get(slot)
        .is_some_and(|e| e.seq == seq && e.deadline.is_some_and(|(d, _)| d == at))
}

fn token(slot: usize, seq: u32) -> Token {
    Token(((seq as usize % SEQ_MODULUS) << SLOT_BITS) | slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn session() -> Box<Session> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        Session::new(stream, None, false, Instant::now())
    }

    fn park(parked: &mut Parked, at: Option<Instant>) -> Token {
        let token = parked.next_token().unwrap();
        parked.insert(session(), at.map(|at| (at, CloseReason::ReadDeadline)));
        token
    }

    #[test]
    fn expiry_follows_deadlines_and_skips_connections_that_left() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut parked = Parked::default();
        let a = park(&mut parked, Some(t0 + 30 * ms));
        let _b = park(&mut parked, Some(t0 + 10 * ms));
        let _c = park(&mut parked, None);
        let d = park(&mut parked, Some(t0 + 20 * ms));
        assert_eq!(parked.next_deadline(), Some(t0 + 10 * ms));
        assert!(parked.remove(d).is_some());
        assert!(parked.remove(d).is_none(), "a token works once");
        let expired = parked.expire(t0 + 25 * ms);
        assert_eq!(expired.len(), 1, "b only: d left, a is not due");
        assert_eq!(parked.next_deadline(), Some(t0 + 30 * ms));
        assert!(parked.remove(a).is_some());
        assert_eq!(parked.next_deadline(), None);
        assert_eq!(parked.len(), 1, "c has no deadline and stays");
    }

    #[test]
    fn a_reused_slot_does_not_answer_to_an_old_token() {
        let mut parked = Parked::default();
        let old = park(&mut parked, None);
        assert!(parked.remove(old).is_some());
        let new = park(&mut parked, None);
        assert_ne!(old, new);
        assert!(parked.remove(old).is_none());
        assert!(parked.remove(new).is_some());
    }

    #[test]
    fn tokens_never_collide_with_the_waker() {
        assert_ne!(token(SLOT_LIMIT - 1, u32::MAX).0 as u64, crate::epoll::STOP);
        let t = token(7, 5);
        assert_eq!((t.0 & SLOT_LIMIT, t.0 >> SLOT_BITS), (7, 5));
    }

    #[test]
    fn stale_timers_are_compacted() {
        let t0 = Instant::now() + Duration::from_secs(60);
        let mut parked = Parked::default();
        for _ in 0..5000 {
            let token = park(&mut parked, Some(t0));
            parked.remove(token);
        }
        assert!(parked.timers.len() <= COMPACT_SLACK + 1);
    }

    #[test]
    fn only_an_earlier_deadline_asks_for_a_wake() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let table = Table::default();
        let at = |s| t0 + Duration::from_secs(s);
        // Sleeping without a timeout: any deadline wakes.
        assert!(table.deadline_parked(at(5)));
        table.scanning();
        assert_eq!(table.publish(Some(at(1))), Some(at(1)));
        assert!(!table.deadline_parked(at(2)));
        assert!(table.deadline_parked(at(0)));
        // During a scan: no wake, and the published plan includes it.
        table.scanning();
        assert!(!table.deadline_parked(at(3)));
        assert!(!table.deadline_parked(at(4)));
        assert_eq!(table.publish(Some(at(5))), Some(at(3)));
        table.scanning();
        assert_eq!(table.publish(None), None);
        assert!(table.deadline_parked(at(9)));
    }

    #[test]
    fn tokens_name_their_shard() {
        let table = Table::default();
        let mut tokens = Vec::new();
        for key in 0..SHARDS * 2 {
            let mut shard = table.shard_for(key);
            let token = shard.next_token().unwrap();
            shard.insert(session(), None);
            tokens.push(token);
        }
        assert_eq!(table.len(), SHARDS * 2);
        for token in tokens {
            assert!(table.remove(token).is_some(), "{token:?}");
        }
        assert_eq!(table.len(), 0);
    }

    mod model {
        use super::super::*;
        use proptest::prelude::*;
        use std::net::{TcpListener, TcpStream};
        use std::sync::OnceLock;
        use std::time::Duration;

        #[derive(Debug, Clone)]
        enum Op {
            /// Park with a deadline this many ms after the start, or none.
            Park(Option<u8>),
            /// Wake the n-th connection ever parked (modulo), if still parked.
            Wake(usize),
            /// Expire at this many ms after the start (never going back).
            Expire(u8),
            /// Give every parked connection this deadline (a config change).
            Replan(Option<u8>),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                any::<Option<u8>>().prop_map(Op::Park),
                any::<usize>().prop_map(Op::Wake),
                any::<u8>().prop_map(Op::Expire),
                any::<Option<u8>>().prop_map(Op::Replan),
            ]
        }

        /// One socket, duplicated for every session: cheap and real.
        fn session() -> Box<Session> {
            static STREAM: OnceLock<(TcpListener, TcpStream)> = OnceLock::new();
            let (_, stream) = STREAM.get_or_init(|| {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                (listener, stream)
            });
            Session::new(stream.try_clone().unwrap(), None, false, Instant::now())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Any sequence of parks, wakes, expiries and re-plans: the table agrees
            /// with a plain list on what is parked, what a token finds, what
            /// expires, and the next deadline.
            #[test]
            fn parked_table_matches_a_model(ops in prop::collection::vec(op(), 1..150)) {
                let t0 = Instant::now();
                let at = |ms: u8| t0 + Duration::from_millis(u64::from(ms));
                let mut parked = Parked::default();
                // (token, deadline, still parked)
                let mut model: Vec<(Token, Option<Instant>, bool)> = Vec::new();
                let mut clock = t0;
                for op in ops {
                    match op {
                        Op::Park(ms) => {
                            let token = parked.next_token().unwrap();
                            let deadline = ms.map(at);
                            parked.insert(
                                session(),
                                deadline.map(|d| (d, CloseReason::ReadDeadline)),
                            );
                            model.push((token, deadline, true));
                        }
                        Op::Wake(i) if !model.is_empty() => {
                            let n = model.len();
                            let entry = &mut model[i % n];
                            prop_assert_eq!(parked.remove(entry.0).is_some(), entry.2);
                            entry.2 = false;
                        }
                        Op::Wake(_) => {}
                        Op::Expire(ms) => {
                            clock = clock.max(at(ms));
                            let expired = parked.expire(clock).len();
                            let mut expected = 0;
                            for entry in &mut model {
                                if entry.2 && entry.1.is_some_and(|d| d <= clock) {
                                    entry.2 = false;
                                    expected += 1;
                                }
                            }
                            prop_assert_eq!(expired, expected);
                        }
                        Op::Replan(ms) => {
                            let deadline = ms.map(at);
                            parked.replan(|_| deadline.map(|d| (d, CloseReason::Lifetime)));
                            for entry in model.iter_mut().filter(|e| e.2) {
                                entry.1 = deadline;
                            }
                        }
                    }
                    let live = model.iter().filter(|e| e.2);
                    prop_assert_eq!(parked.len(), live.clone().count());
                    prop_assert_eq!(parked.next_deadline(), live.filter_map(|e| e.1).min());
                }
            }
        }
    }

    #[test]
    fn replan_moves_deadlines() {
        let t0 = Instant::now();
        let mut parked = Parked::default();
        park(&mut parked, None);
        park(&mut parked, Some(t0 + Duration::from_secs(100)));
        parked.replan(|_| Some((t0, CloseReason::Lifetime)));
        let expired = parked.expire(t0);
        assert_eq!(expired.len(), 2);
        assert!(expired.iter().all(|(_, r)| *r == CloseReason::Lifetime));
    }
}
