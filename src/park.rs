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
use std::time::Instant;

use mio::Token;
use slab::Slab;

use crate::session::Session;
use crate::stats::CloseReason;

/// A token is a slot number in its low bits and the park's sequence number
/// in the rest: 32 + 32 bits on 64-bit targets, 20 + 12 on 32-bit ones.
const SLOT_BITS: u32 = if usize::BITS >= 64 { 32 } else { 20 };
/// Slots are numbered below this (so at most this many connections are
/// parked at once).
const SLOT_LIMIT: usize = (1 << SLOT_BITS) - 1;
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
    entries: Slab<Entry>,
    /// (deadline, slot, seq), earliest first.
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    next_seq: u32,
    /// When the manager thread plans to look at the timers next: `None`
    /// while it sleeps without a timeout. A park with an earlier deadline
    /// must wake it.
    pub(crate) plan: Option<Instant>,
    /// The configuration generation the deadlines follow (set by the
    /// manager thread when it plans them).
    pub(crate) planned: u64,
    /// Set when a connection was parked with a deadline from another
    /// generation: the manager thread re-plans them all.
    pub(crate) replan: bool,
    /// Set if the shared poller failed: parking is refused.
    pub(crate) dead: bool,
}

impl Parked {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The token the next [`insert`](Parked::insert) will use; `None` if
    /// the table is full (more than `SLOT_LIMIT` parked).
    pub(crate) fn next_token(&self) -> Option<Token> {
        let slot = self.entries.vacant_key();
        (slot < SLOT_LIMIT).then(|| token(slot, self.next_seq))
    }

    /// Parks `session` under [`next_token`](Parked::next_token) until
    /// `deadline`. Returns whether the manager thread must be woken to
    /// plan for that deadline.
    pub(crate) fn insert(
        &mut self,
        session: Box<Session>,
        deadline: Option<(Instant, CloseReason)>,
    ) -> bool {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let slot = self.entries.insert(Entry {
            session,
            seq,
            deadline,
        });
        let Some((at, _)) = deadline else {
            return false;
        };
        self.timers.push(Reverse((at, slot, seq)));
        if self.timers.len() > 2 * self.entries.len() + COMPACT_SLACK {
            let entries = &self.entries;
            self.timers
                .retain(|Reverse((at, slot, seq))| is_live(entries, *at, *slot, *seq));
        }
        self.plan.is_none_or(|plan| at < plan)
    }

    /// Takes out the connection parked under `token`, if it is still there.
    pub(crate) fn remove(&mut self, token: Token) -> Option<Box<Session>> {
        let slot = token.0 & SLOT_LIMIT;
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
        let t0 = Instant::now();
        let mut parked = Parked {
            plan: Some(t0 + Duration::from_secs(1)),
            ..Parked::default()
        };
        let at = |s| Some((t0 + Duration::from_secs(s), CloseReason::ReadDeadline));
        assert!(!parked.insert(session(), at(2)));
        assert!(parked.insert(session(), at(0)));
        assert!(!parked.insert(session(), None));
        parked.plan = None;
        assert!(parked.insert(session(), at(5)));
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
