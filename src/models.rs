//! Models of the pool's core for the `loom` model checker: every
//! interleaving (within a preemption bound) of the threads each one starts
//! is run, and each ends in assertions on the real code's state.
//!
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --lib loom`
//!
//! A connection is never on two workers at once by construction: its
//! `Session` is a `Box` moved from owner to owner (the table, a worker, the
//! queue). The models check what ownership cannot: that no event is lost,
//! that each connection ends exactly once and is counted, that the pool
//! stays within its bounds, and that every stop finishes.
//!
//! What loom cannot see is made an explicit event: a client's bytes are a
//! call to `Table::take` (what a poller does with an event), or a `send` to
//! the model's epoll instance (`epoll/mocked.rs`: the real one would block
//! loom's one OS thread), which the real polling workers wait on; a deadline
//! passing is a reaper pass at an instant past it; and a handler is a
//! stand-in that serves at once. Workers run the real `worker::run`.
//! Sockets are real: one connected pair per model, a duplicate of it for
//! each connection.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize as Count;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use mio::{Poll, Waker};

use crate::config::Config;
use crate::error::PutError;
use crate::park::{Repark, Table};
use crate::pool::reaper;
use crate::pool::{Incoming, ManagerThread, Phase, PollerHandle, Shared};
use crate::serve::{Ctx, Serve, Served};
use crate::session::Session;
use crate::stats::{CloseReason, Counters};
use crate::sync::MutexGuard;
use crate::sync::thread;

mod handles;

/// A loopback connection kept for the whole model (the server's end, then
/// the client's): each connection of an iteration is a duplicate of the
/// server's end. A close shuts the socket down for every later execution
/// too: no model reads or writes it (a connect per execution would cost a
/// port each).
struct Socket(
    TcpStream,
    #[allow(dead_code, reason = "keeps the peer open")] TcpStream,
);

fn socket() -> Socket {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    Socket(server, client)
}

fn session(socket: &Socket) -> Box<Session> {
    Session::new(
        socket.0.try_clone().unwrap(),
        None,
        true,
        Instant::now(),
        None,
    )
}

fn incoming(socket: &Socket) -> Incoming {
    Incoming {
        stream: socket.0.try_clone().unwrap(),
        ticket: None,
        fresh: true,
        accepted: Instant::now(),
        trusted: None,
    }
}

/// What both stand-in handlers do with a connection closed off a worker:
/// count it and end it (the real one also runs the `closed` hook).
fn close_unserved(
    mut session: Box<Session>,
    reason: CloseReason,
    reply: &[u8],
    counters: &Counters,
) {
    counters.close(reason);
    session.end(reply);
}

/// A handler that serves each connection at once and closes it.
struct AtOnce {
    served: Arc<Count>,
}

impl Serve for AtOnce {
    fn serve(&self, mut session: Box<Session>, ctx: &mut Ctx<'_>) -> Served {
        self.served.fetch_add(1, SeqCst);
        ctx.close(&mut session, CloseReason::Eof);
        Served::Closed(session)
    }

    fn close(&self, session: Box<Session>, reason: CloseReason, reply: &[u8], counters: &Counters) {
        close_unserved(session, reason, reply, counters);
    }
}

/// Dedicated mode, deadlines far away (the models make them events), no
/// busy reply (nothing is written to the shared socket).
fn config(min: usize, max: usize, queue: usize) -> Config {
    Config {
        min_workers: min,
        max_workers: max,
        queue_capacity: queue,
        queue_timeout: Duration::from_secs(86_400),
        worker_idle_timeout: Duration::from_secs(1),
        park_after: None,
        busy_reply: Vec::new(),
        buffer_size: 64,
        ..Config::default()
    }
}

/// A pool whose handler counts what it serves.
fn pool(config: Config) -> (Arc<Shared>, Arc<Count>) {
    let served = Arc::new(Count::new(0));
    let service = Box::new(AtOnce {
        served: Arc::clone(&served),
    });
    let shared = Shared::new(config, service, crate::worker::run).unwrap();
    (Arc::new(shared), served)
}

/// The manager thread of a model: one reaper pass at an instant past every
/// idle timeout (the "idle too long" event), then it returns.
fn reaper_pass(shared: &Arc<Shared>, poll: Poll, waker: Arc<Waker>) -> io::Result<ManagerThread> {
    let shared = Arc::clone(shared);
    thread::Builder::new()
        .name("model-manager".into())
        .spawn(move || {
            let mut state = shared.state.lock();
            if state.phase == Phase::Running {
                let later = Instant::now() + Duration::from_secs(3_600);
                let reaped = reaper::reap(&shared, &mut state, later);
                MutexGuard::unlocked(&mut state, || reaped.finish(&shared));
            }
            drop(state);
            (poll, waker)
        })
}

/// Stops the pool, and checks that every thread is gone and counted.
fn stop(shared: &Shared) -> crate::StopReport {
    let stopping = shared.begin_stop().unwrap();
    let report = shared.finish_stop(stopping, None);
    let stats = shared.stats();
    assert_eq!(stats.workers, 0, "a worker outlived the stop");
    assert_eq!(stats.workers_spawned, stats.workers_retired);
    assert_eq!((report.forced, report.abandoned), (0, 0));
    report
}

/// A client's bytes arrive (an event: `Table::take`) while the worker that
/// serves the connection ends its turn (`repark`): an event during a turn
/// is never lost (served again, or parked with a re-arm, which makes the
/// kernel report it again).
#[test]
fn loom_ready_while_turn_ends() {
    ready_while_turn_ends(false);
}

/// As [`loom_ready_while_turn_ends`], while a stop drains the table: the
/// connection ends exactly once (drained, or closed by the worker that
/// finds its entry gone).
#[test]
fn loom_ready_while_turn_ends_and_stop_drains() {
    ready_while_turn_ends(true);
}

fn ready_while_turn_ends(stop: bool) {
    let socket = Arc::new(socket());
    loom::model(move || {
        let table = Arc::new(Table::default());
        let fd = socket.0.as_raw_fd() as usize;
        let token = {
            let mut shard = table.shard_for(fd);
            let token = shard.next_token().unwrap();
            shard.insert(session(&socket), None);
            token
        };
        // A poller took it for a turn.
        let on_worker = table.take(token, false).expect("parked");
        let (served_again, rearmed, gone) = (
            Arc::new(Count::new(0)),
            Arc::new(Count::new(0)),
            Arc::new(Count::new(0)),
        );

        let worker = {
            let table = Arc::clone(&table);
            let (served_again, rearmed, gone) = (
                Arc::clone(&served_again),
                Arc::clone(&rearmed),
                Arc::clone(&gone),
            );
            thread::Builder::new()
                .spawn(move || {
                    let mut session = on_worker;
                    for round in 1.. {
                        let mut shard = table.shard_of(token);
                        match shard.repark(token, session, None, round < 2) {
                            Repark::Again(s) => {
                                served_again.fetch_add(1, SeqCst);
                                session = s;
                            }
                            Repark::Parked { rearm, .. } => {
                                if rearm {
                                    rearmed.fetch_add(1, SeqCst);
                                }
                                return;
                            }
                            Repark::Gone(_) => {
                                gone.fetch_add(1, SeqCst);
                                return;
                            }
                        }
                    }
                })
                .unwrap()
        };
        let event = {
            let table = Arc::clone(&table);
            thread::Builder::new()
                .spawn(move || {
                    // Another poller takes the event.
                    let taken = table.take(token, false);
                    if let Some(session) = taken {
                        let mut shard = table.shard_of(token);
                        match shard.repark(token, session, None, false) {
                            Repark::Parked { .. } => (1, 0),
                            // Its entry was drained meanwhile: it closes it.
                            Repark::Gone(_) => (1, 1),
                            Repark::Again(_) => unreachable!("no event came"),
                        }
                    } else {
                        (0, 0)
                    }
                })
                .unwrap()
        };
        let drained = if stop { table.drain().len() } else { 0 };
        worker.join().unwrap();
        let (served_by_event, gone_at_event) = event.join().unwrap();
        let left = table.drain().len();

        let (again, rearmed) = (served_again.load(SeqCst), rearmed.load(SeqCst));
        let gone = gone.load(SeqCst) + gone_at_event;
        // Never lost: an event that found the connection on a worker is
        // served again by it, or re-armed so that the kernel reports it
        // again; or the stop took the connection.
        if served_by_event == 0 {
            let ended = if stop { gone + drained } else { 0 };
            assert!(again + rearmed + ended >= 1, "an event was lost");
        }
        // Ends exactly once: drained by the stop, left in the table, or
        // found gone by the worker (which then closes it).
        assert_eq!(
            drained + left + gone,
            1,
            "the connection did not end exactly once"
        );
    });
}

/// `put` gives a connection to the idle worker while the reaper retires
/// that worker for idling too long: the connection is served exactly once
/// (by the idle worker or a new one), and the pool never exceeds
/// `max_workers`.
#[test]
fn loom_grow_while_idle_retires() {
    let socket = Arc::new(socket());
    loom::model(move || {
        let (shared, served) = pool(config(1, 2, 0));
        shared.start(reaper_pass).unwrap();
        // min_workers 0: the reaper may retire the idle worker.
        shared.set_config(config(0, 2, 0)).unwrap();
        shared
            .put(incoming(&socket))
            .unwrap_or_else(|e| panic!("put refused: {e}"));
        until_served(&served, 1);
        let report = stop(&shared);
        assert_eq!(served.load(SeqCst), 1, "served twice");
        let stats = shared.stats();
        assert_eq!((stats.connections, stats.closed.total()), (1, 1));
        assert_eq!(report.queued, 0);
        // The first worker, and at most one started for the put: never a
        // third, so never more than `max_workers` at once.
        assert!(stats.workers_spawned <= 2, "{stats:?}");
    });
}

/// `stop` races with two `put`s (the first wakes the idle worker through
/// its channel; the second waits in the queue, or is refused) and a reaper
/// pass (which finds nothing to retire: it contends for the lock): the stop
/// always finishes, and the ledger adds up — each connection served, closed
/// by the stop, or refused with a counted reason — and the report agrees
/// with the counters.
#[test]
fn loom_stop_races_put_wake_and_reap() {
    let socket = Arc::new(socket());
    loom::model(move || {
        let (shared, served) = pool(config(1, 1, 1));
        shared.start(reaper_pass).unwrap();
        let user = {
            let (shared, socket) = (Arc::clone(&shared), Arc::clone(&socket));
            thread::Builder::new()
                .spawn(move || {
                    let mut refused = 0u64;
                    for _ in 0..2 {
                        match shared.put(incoming(&socket)) {
                            Ok(()) => {}
                            Err(PutError::Stopped(_) | PutError::Full(_)) => refused += 1,
                            Err(e) => panic!("unexpected refusal: {e}"),
                        }
                    }
                    refused
                })
                .unwrap()
        };
        let report = stop(&shared);
        let refused = user.join().unwrap();

        let stats = shared.stats();
        let served = served.load(SeqCst) as u64;
        assert_eq!(
            served + stats.closed.stop + stats.rejected.total(),
            2,
            "a connection unaccounted: served {served}, {stats:?}"
        );
        assert_eq!(
            stats.rejected.total(),
            refused + stats.rejected.queue_stopped
        );
        assert_eq!(report.queued as u64, stats.rejected.queue_stopped);
        // Every close by the stop is in the report, with the connections
        // its workers finished.
        let drained = report.drained as u64;
        assert!(drained >= stats.closed.stop, "{report:?} {stats:?}");
        assert!(
            drained <= stats.closed.stop + served,
            "{report:?} {stats:?}"
        );
    });
}

/// A model of five threads, within two preemptions whatever
/// `LOOM_MAX_PREEMPTIONS` says (three would take far longer).
fn at_most_two_preemptions() -> loom::model::Builder {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(model.preemption_bound.map_or(2, |bound| bound.min(2)));
    model
}

/// `set_config` — refused, then lowering both `min_workers` and
/// `max_workers` from 2 to 1 — races with a worker serving, the other
/// idle, and a reaper pass (which may retire an idle worker above the new
/// minimum): an invalid config changes nothing, and once quiet exactly one
/// worker is left (`set_config`, the serving worker and the reaper each
/// retire one at most, and none below the bounds).
#[test]
fn loom_set_config_races_serving() {
    let socket = Arc::new(socket());
    at_most_two_preemptions().check(move || {
        let (shared, served) = pool(config(2, 2, 0));
        shared.start(reaper_pass).unwrap();
        shared
            .put(incoming(&socket))
            .unwrap_or_else(|e| panic!("put refused: {e}"));
        let control = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .spawn(move || {
                    let (generation, _) = shared.config_arc();
                    let invalid = config(3, 2, 0);
                    assert!(shared.set_config(invalid).is_err());
                    assert_eq!(
                        shared.config_arc().0,
                        generation,
                        "a refused config changed the pool"
                    );
                    shared.set_config(config(1, 1, 0)).unwrap();
                })
                .unwrap()
        };
        control.join().unwrap();
        // Quiet: the connection served, every worker back on the idle stack.
        loop {
            let state = shared.state.lock();
            if served.load(SeqCst) == 1 && state.idle.len() == state.total {
                assert!(
                    state.total <= state.config.max_workers,
                    "{} workers above max",
                    state.total
                );
                assert!(
                    state.total >= state.config.min_workers,
                    "{} workers below min",
                    state.total
                );
                break;
            }
            drop(state);
            loom::thread::yield_now();
        }
        stop(&shared);
    });
}

/// A handler for polled mode: each turn reads what its client sent (the
/// model's epoll instance keeps the count), waits for more (parks) until
/// `requests` sends were served, then closes. A turn that finds nothing
/// parks again, as a spurious readiness does.
struct Requests {
    served: Arc<Count>,
    requests: usize,
    poller: Arc<std::sync::OnceLock<Arc<PollerHandle>>>,
}

impl Serve for Requests {
    fn serve(&self, session: Box<Session>, ctx: &mut Ctx<'_>) -> Served {
        self.turn(session, ctx)
    }

    fn close(&self, session: Box<Session>, reason: CloseReason, reply: &[u8], counters: &Counters) {
        close_unserved(session, reason, reply, counters);
    }
}

impl Requests {
    fn turn(&self, mut session: Box<Session>, ctx: &mut Ctx<'_>) -> Served {
        let poller = self.poller.get().expect("set after start");
        let sent = poller.epoll.read(&session.stream);
        if sent == 0 {
            return Served::Parked(session);
        }
        if self.served.fetch_add(sent, SeqCst) + sent >= self.requests {
            ctx.close(&mut session, CloseReason::Eof);
            return Served::Closed(session);
        }
        Served::Parked(session)
    }
}

/// A started pool in polled mode (`pollers` pollers at most, handing
/// connections back at once), its handler closing after `requests` in all.
fn polled_pool(pollers: usize, requests: usize) -> (Arc<Shared>, Arc<Count>) {
    let config = Config {
        park_after: Some(Duration::ZERO),
        pollers,
        ..config(0, pollers, 0)
    };
    let served = Arc::new(Count::new(0));
    let poller = Arc::new(std::sync::OnceLock::new());
    let service = Box::new(Requests {
        served: Arc::clone(&served),
        requests,
        poller: Arc::clone(&poller),
    });
    let shared = Arc::new(Shared::new(config, service, crate::worker::run).unwrap());
    // The manager thread's watch and timers are not modelled.
    shared
        .start(|_, poll, waker| thread::Builder::new().spawn(move || (poll, waker)))
        .unwrap();
    poller.set(shared.poller().expect("started")).ok().unwrap();
    (shared, served)
}

/// Puts a new connection in the pool; its descriptor, for the model's
/// epoll instance.
fn put_one(shared: &Arc<Shared>, socket: &Socket) -> std::os::fd::RawFd {
    let stream = incoming(socket);
    let fd = stream.stream.as_raw_fd();
    shared
        .put(stream)
        .unwrap_or_else(|e| panic!("put refused: {e}"));
    fd
}

/// Waits until `n` requests were served. Never lost: a lost event leaves
/// this loop spinning past loom's branch limit, which fails the model.
fn until_served(served: &Count, n: usize) {
    while served.load(SeqCst) < n {
        loom::thread::yield_now();
    }
}

/// Polled mode, the real poller loop: a client sends while the pool
/// stops. The stop finishes, and the connection ends exactly once: served
/// (its worker got the event first) or closed by the stop.
#[test]
fn loom_polled_client_sends_while_stopping() {
    let socket = Arc::new(socket());
    loom::model(move || {
        let (shared, served) = polled_pool(1, 1);
        let fd = put_one(&shared, &socket);
        let client = {
            let poller = shared.poller().unwrap();
            thread::Builder::new()
                .spawn(move || poller.epoll.send(fd))
                .unwrap()
        };
        stop(&shared);
        client.join().unwrap();
        let stats = shared.stats();
        let served = served.load(SeqCst) as u64;
        assert_eq!(stats.connections, 1);
        assert_eq!(served + stats.closed.stop, 1, "served {served}, {stats:?}");
        assert_eq!(stats.closed.total(), 1, "{stats:?}");
    });
}

/// Polled mode, the real poller loop: a client sends twice, the second
/// time maybe while its worker ends the turn that served the first. Both
/// are served (never lost: the poller finds the second through the
/// `notified` bit, or the re-arm reports it), then the handler closes.
#[test]
fn loom_polled_bytes_during_a_turn_are_served() {
    let socket = Arc::new(socket());
    loom::model(move || {
        let (shared, served) = polled_pool(1, 2);
        let fd = put_one(&shared, &socket);
        let client = client(&shared, fd, |_| {});
        until_served(&served, 2);
        client.join().unwrap();
        stop(&shared);
        let stats = shared.stats();
        assert_eq!(served.load(SeqCst), 2);
        assert_eq!(
            (stats.closed.eof, stats.closed.total()),
            (1, 1),
            "{stats:?}"
        );
    });
}

/// A client thread that sends twice to the connection on descriptor `fd`,
/// with `between` done to the pollers between the sends.
fn client(
    shared: &Shared,
    fd: RawFd,
    between: impl FnOnce(&PollerHandle) + Send + 'static,
) -> thread::JoinHandle<()> {
    let poller = shared.poller().unwrap();
    thread::Builder::new()
        .spawn(move || {
            poller.epoll.send(fd);
            between(&poller);
            poller.epoll.send(fd);
        })
        .unwrap()
}

/// Polled mode with two pollers: a client sends, the sysmon calls the
/// waiting poller to search (as it does when the searcher's turn runs
/// long), and the client sends again — maybe while its connection is in a
/// turn on the first poller and the second searches (it then finds the
/// connection running and marks it `notified`). No send is lost.
#[test]
fn loom_polled_two_pollers_share_events() {
    let socket = Arc::new(socket());
    // Five threads: two preemptions at most (about 4 min here; three would
    // take far longer). The lost send it guards against needs two.
    at_most_two_preemptions().check(move || {
        let (shared, served) = polled_pool(2, usize::MAX);
        let fd = put_one(&shared, &socket);
        // A second poller, as the sysmon adds one.
        assert!(shared.start_poller(&mut shared.state.lock()));
        // Between the sends, as the sysmon does when the searcher's turn
        // runs long.
        let client = client(&shared, fd, PollerHandle::call_searcher);
        until_served(&served, 2);
        client.join().unwrap();
        stop(&shared);
        let stats = shared.stats();
        assert_eq!(served.load(SeqCst), 2);
        assert_eq!(
            (stats.closed.stop, stats.closed.total()),
            (1, 1),
            "{stats:?}"
        );
    });
}
