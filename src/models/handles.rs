//! Models of handles: a send from another thread wakes a parked connection
//! through the pollers (never lost), and a send racing a stop is either
//! delivered, refused, or dropped with a counted close — never lost
//! without a count, never a hang.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize as Count;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::{close_unserved, config, put_one, socket, stop, until_served};
use crate::error::SendError;
use crate::handle::Handle;
use crate::outbound::Outbound;
use crate::pool::Shared;
use crate::serve::{Ctx, Serve, Served};
use crate::session::Session;
use crate::stats::{CloseReason, Counters};
use crate::sync::{Mutex, thread};

/// A handler for polled mode: its first turn makes the connection's link
/// and publishes a handle to it; every turn takes what the handles sent
/// (as the read loop does) and closes the connection once it took some.
struct Linked {
    handle: Arc<Mutex<Option<Handle>>>,
    delivered: Arc<Count>,
}

impl Serve for Linked {
    fn serve(&self, mut session: Box<Session>, ctx: &mut Ctx<'_>) -> Served {
        let link = Arc::clone(session.link.get_or_make(1 << 20));
        self.handle
            .lock()
            .get_or_insert_with(|| Handle::new(Arc::clone(&link)));
        let mut out = Outbound::default();
        link.pull(&mut out, 1 << 20);
        if out.is_empty() {
            return Served::Parked(session);
        }
        self.delivered.fetch_add(out.len(), SeqCst);
        ctx.close(&mut session, CloseReason::Eof);
        Served::Closed(session)
    }

    fn close(&self, session: Box<Session>, reason: CloseReason, reply: &[u8], counters: &Counters) {
        close_unserved(session, reason, reply, counters);
    }
}

/// A started pool in polled mode with one poller, serving [`Linked`]; a
/// connection in it whose first turn (its client's first bytes) made the
/// handle, which is returned once it is parked again.
fn linked_pool(socket: &super::Socket) -> (Arc<Shared>, Arc<Count>, Handle) {
    let config = crate::config::Config {
        park_after: Some(Duration::ZERO),
        pollers: 1,
        ..config(0, 1, 0)
    };
    let handle = Arc::new(Mutex::new(None));
    let delivered = Arc::new(Count::new(0));
    let service = Box::new(Linked {
        handle: Arc::clone(&handle),
        delivered: Arc::clone(&delivered),
    });
    let shared = Arc::new(Shared::new(config, service, crate::worker::run).unwrap());
    shared
        .start(|_, poll, waker| thread::Builder::new().spawn(move || (poll, waker)))
        .unwrap();
    let fd = put_one(&shared, socket);
    shared.poller().unwrap().epoll.send(fd);
    // Its first turn made the handle; then it parks.
    let handle = loop {
        if let Some(handle) = handle.lock().clone() {
            break handle;
        }
        loom::thread::yield_now();
    };
    (shared, delivered, handle)
}

/// A thread's send of one byte through the handle, its result to join.
type Sender = thread::JoinHandle<Result<(), SendError<Vec<u8>>>>;

/// [`linked_pool`], and a thread that sends one byte through the handle.
fn sending(socket: &super::Socket) -> (Arc<Shared>, Arc<Count>, Sender) {
    let (shared, delivered, handle) = linked_pool(socket);
    let sender = thread::Builder::new()
        .spawn(move || handle.send(b"x".to_vec()))
        .unwrap();
    (shared, delivered, sender)
}

/// A send from another thread while the connection's first turn may still
/// be ending: the bytes reach a turn (through the ready list and a nudge,
/// or the `notified` bit, or the wake set when it parks). A lost wake
/// leaves `until_served` spinning, which fails the model.
#[test]
fn loom_polled_a_send_wakes_a_parked_connection() {
    let socket = Arc::new(socket());
    super::at_most_two_preemptions().check(move || {
        let (shared, delivered, sender) = sending(&socket);
        assert!(sender.join().unwrap().is_ok());
        until_served(&delivered, 1);
        stop(&shared);
        let stats = shared.stats();
        assert_eq!(
            (stats.closed.eof, stats.closed.total()),
            (1, 1),
            "{stats:?}"
        );
    });
}

/// A send races the stop: it is delivered (the connection closes served),
/// refused as closed, or taken and then dropped with the connection the
/// stop closes — counted either way, exactly once.
#[test]
fn loom_polled_a_send_races_stop() {
    let socket = Arc::new(socket());
    super::at_most_two_preemptions().check(move || {
        let (shared, delivered, sender) = sending(&socket);
        stop(&shared);
        let sent = sender.join().unwrap();
        let stats = shared.stats();
        let delivered = delivered.load(SeqCst);
        assert_eq!(stats.closed.total(), 1, "{stats:?}");
        match sent {
            Ok(()) => assert!(
                delivered == 1 || stats.closed.stop == 1,
                "taken, neither delivered nor closed: {stats:?}"
            ),
            Err(SendError::Closed(_)) => {
                assert_eq!((delivered, stats.closed.stop), (0, 1), "{stats:?}");
            }
            Err(e) => panic!("{e}"),
        }
    });
}
