//! The parked table's tests.

use super::*;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn session() -> Box<Session> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    Session::new(stream, None, false, Instant::now(), None)
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
    assert!(parked.take_out(d, false).is_some());
    assert!(parked.take_out(d, false).is_none(), "a token works once");
    let expired = parked.expire(t0 + 25 * ms, &mut Vec::new());
    assert_eq!(expired.len(), 1, "b only: d left, a is not due");
    assert_eq!(parked.next_deadline(), Some(t0 + 30 * ms));
    assert!(parked.take_out(a, false).is_some());
    assert_eq!(parked.next_deadline(), None);
    assert_eq!(parked.len(), 1, "c has no deadline and stays");
}

#[test]
fn an_event_during_a_turn_is_not_lost() {
    let mut parked = Parked::default();
    let token = park(&mut parked, None);
    let session = parked.take(token, false).expect("parked");
    assert_eq!(parked.len(), 0, "on a worker, not parked");
    // No event meanwhile: parked again, nothing to re-arm.
    assert!(matches!(
        parked.repark(token, session, None, true),
        Repark::Parked { rearm: false, .. }
    ));
    let session = parked.take(token, false).expect("parked again, same token");
    // An event while it is served marks it, and takes nothing.
    assert!(parked.take(token, false).is_none());
    let Repark::Again(session) = parked.repark(token, session, None, true) else {
        panic!("served again");
    };
    // Again, but no more turns in a row: parked and re-armed.
    assert!(parked.take(token, false).is_none());
    assert!(matches!(
        parked.repark(token, session, None, false),
        Repark::Parked { rearm: true, .. }
    ));
    assert_eq!(parked.len(), 1);
    // Closed on a worker: its entry is freed, and its token dead.
    let _session = parked.take(token, false).unwrap();
    parked.release(token);
    assert_eq!(parked.entries.len(), 0);
    assert!(parked.take(token, false).is_none());
}

#[test]
fn a_drain_leaves_turns_to_park_anew() {
    let mut parked = Parked::default();
    let token = park(&mut parked, None);
    let session = parked.take(token, false).unwrap();
    park(&mut parked, None);
    assert_eq!(parked.drain().len(), 1, "the parked one only");
    assert!(matches!(
        parked.repark(token, session, None, true),
        Repark::Gone(_)
    ));
}

#[test]
fn a_reused_slot_does_not_answer_to_an_old_token() {
    let mut parked = Parked::default();
    let old = park(&mut parked, None);
    assert!(parked.take_out(old, false).is_some());
    let new = park(&mut parked, None);
    assert_ne!(old, new);
    assert!(parked.take_out(old, false).is_none());
    assert!(parked.take_out(new, false).is_some());
}

#[test]
fn tokens_never_collide_with_the_waker() {
    let top = token(SLOT_LIMIT - 1, u32::MAX);
    assert!(top.0 < crate::epoll::WAKER.0 && (top.0 as u64) < crate::epoll::HUP);
    let t = token(7, 5);
    assert_eq!((t.0 & SLOT_LIMIT, t.0 >> SLOT_BITS), (7, 5));
}

#[test]
fn stale_timers_are_compacted() {
    let t0 = Instant::now() + Duration::from_secs(60);
    let mut parked = Parked::default();
    for _ in 0..5000 {
        let token = park(&mut parked, Some(t0));
        parked.take_out(token, false);
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
        assert!(table.take_out(token, false).is_some(), "{token:?}");
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
        Session::new(
            stream.try_clone().unwrap(),
            None,
            false,
            Instant::now(),
            None,
        )
    }

    proptest! {
        // 128 cases (each a sequence of operations on a table), or as many
        // as `PROPTEST_CASES` says (read by `ProptestConfig::default`).
        #![proptest_config(ProptestConfig {
            cases: if std::env::var_os("PROPTEST_CASES").is_some() {
                ProptestConfig::default().cases
            } else {
                128
            },
            ..ProptestConfig::default()
        })]

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
                        prop_assert_eq!(parked.take_out(entry.0, false).is_some(), entry.2);
                        entry.2 = false;
                    }
                    Op::Wake(_) => {}
                    Op::Expire(ms) => {
                        clock = clock.max(at(ms));
                        let expired = parked.expire(clock, &mut Vec::new()).len();
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
    let expired = parked.expire(t0, &mut Vec::new());
    assert_eq!(expired.len(), 2);
    assert!(expired.iter().all(|(_, r)| *r == CloseReason::Lifetime));
}

#[test]
fn a_connection_parked_again_and_again_leaves_one_live_timer() {
    // The same deadline at every park (a lifetime, or a read deadline that
    // no longer moves): earlier parks' timers must not count as live.
    let at = Instant::now() + Duration::from_secs(60);
    let deadline = Some((at, CloseReason::Lifetime));
    let mut parked = Parked::default();
    let token = park(&mut parked, Some(at));
    for _ in 0..5000 {
        let session = parked.take(token, false).unwrap();
        assert!(matches!(
            parked.repark(token, session, deadline, true),
            Repark::Parked { .. }
        ));
    }
    assert!(
        parked.timers.len() <= COMPACT_SLACK + 3,
        "{}",
        parked.timers.len()
    );
    assert_eq!(parked.expire(at, &mut Vec::new()).len(), 1);
    assert_eq!(parked.next_deadline(), None);
}

#[test]
fn an_end_reported_during_a_turn_reaches_the_session() {
    let mut parked = Parked::default();
    let token = park(&mut parked, None);
    let session = parked.take(token, false).unwrap();
    assert!(!session.hup);
    // The peer's shutdown is reported while a worker has it.
    assert!(parked.take(token, true).is_none());
    let Repark::Again(session) = parked.repark(token, session, None, true) else {
        panic!("served again");
    };
    assert!(session.hup, "read until it ends");
}
