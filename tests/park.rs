//! Parked mode: connections that wait hold no worker; bytes, state and
//! deadlines survive any number of park/wake cycles.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_manager::{Config, Manager, Server};
use util::*;

const PARK: Duration = Duration::from_millis(20);

fn parked_config() -> Config {
    Config::default()
        .with_park_after(Some(PARK))
        .with_read_deadline(Some(WAIT))
}

/// Lowers the read deadline to 100 ms; the client must see its connection
/// closed for it within `limit`.
fn lower_read_deadline_then_closed_within(
    manager: &Manager,
    client: &mut TcpStream,
    limit: Duration,
) {
    let changed = Instant::now();
    manager
        .set_config(
            manager
                .config()
                .with_read_deadline(Some(Duration::from_millis(100))),
        )
        .unwrap();
    assert_eq!(read_to_close(client).unwrap(), b"");
    assert!(
        changed.elapsed() < limit,
        "closed after {:?}",
        changed.elapsed()
    );
    wait_stats(manager, "the close", |s| s.closed.read_deadline == 1);
}

/// Waits until `n` connections are parked.
fn wait_parked(manager: &Manager, n: usize) {
    wait_stats(manager, &format!("{n} parked"), |s| s.parked == n);
}

#[test]
fn lines_split_across_reads_and_parks_keep_state_and_order() {
    let manager = line_manager(parked_config());
    let lo = Loopback::new();
    let mut client = lo.put(&manager);

    // Each piece is sent only once the connection is parked: every line
    // below crosses at least one park/wake cycle, with its start kept.
    let pieces: [&[u8]; 6] = [b"hel", b"lo\nwor", b"ld", b"\nfoo\nb", b"a", b"r\n"];
    for (i, piece) in pieces.iter().enumerate() {
        wait_stats(&manager, "the connection parked again", |s| {
            s.parks > i as u64 && s.parked == 1
        });
        client.write_all(piece).unwrap();
    }
    let mut expect = Vec::new();
    for (i, line) in ["hello", "world", "foo", "bar"].iter().enumerate() {
        expect.extend_from_slice(format!("{}:{line}\n", i + 1).as_bytes());
    }
    let mut got = vec![0; expect.len()];
    std::io::Read::read_exact(&mut client, &mut got).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expect)
    );

    let stats = wait_stats(&manager, "parked again", |s| s.parked == 1);
    assert!(stats.parks >= 7, "{stats:?}");
    assert!(stats.wakes >= 6, "{stats:?}");
    assert_eq!(stats.connections, 1);
    // One poller serves it; the sysmon may add another, up to `pollers`,
    // when the shared poller has something to report (this connection's
    // writability, a nudge) while the first is in its turn with it.
    let pollers = Config::default().pollers.max(1) as u64;
    assert!(stats.workers_spawned <= pollers, "{stats:?}");
    drop(client);
    let stats = wait_stats(&manager, "the close", |s| s.closed.eof == 1);
    assert_eq!(stats.parked, 0);
}

#[test]
fn many_connections_share_a_few_workers() {
    let manager = line_manager(parked_config().with_max_workers(2));
    let lo = Loopback::new();
    let mut clients: Vec<TcpStream> = (0..40).map(|_| lo.put(&manager)).collect();
    wait_parked(&manager, 40);
    for round in 1..=3 {
        for c in &mut clients {
            c.write_all(b"ping\n").unwrap();
        }
        for c in &mut clients {
            let expect = format!("{round}:ping\n");
            let mut got = vec![0; expect.len()];
            std::io::Read::read_exact(c, &mut got).unwrap();
            assert_eq!(got, expect.as_bytes());
        }
    }
    let stats = wait_stats(&manager, "all parked again", |s| s.parked == 40);
    assert!(stats.workers <= 2, "{stats:?}");
    assert_eq!(stats.rejected.total(), 0);
    assert_eq!(stats.closed.total(), 0);
}

#[test]
fn put_parks_new_streams_while_every_worker_is_busy() {
    let gate = Gate::default();
    let manager = gated_manager(parked_config().with_max_workers(1), &gate);
    let lo = Loopback::new();
    let mut held = lo.hold(&manager, &gate, 1);
    // The one worker is held: new streams are parked, not refused (those
    // whose `open` is due wait in the queue for the worker).
    let mut others: Vec<TcpStream> = (0..5).map(|_| lo.put(&manager)).collect();
    let s = wait_stats(&manager, "five waiting", |s| s.parked + s.queued == 5);
    assert_eq!(s.rejected.total(), 0);
    gate.open();
    let mut byte = [0];
    std::io::Read::read_exact(&mut held[0], &mut byte).unwrap();
    for c in &mut others {
        roundtrip(c, b"y", b"y");
    }
}

#[test]
fn parked_read_deadline_fires_on_time() {
    let deadline = Duration::from_millis(300);
    let manager = line_manager(parked_config().with_read_deadline(Some(deadline)));
    let lo = Loopback::new();
    let mut client = lo.put(&manager);
    // The deadline counts from the end of the handler call, which is after
    // this instant and before the client has the reply.
    let sent = Instant::now();
    roundtrip(&mut client, b"a\n", b"1:a\n");
    wait_parked(&manager, 1);
    assert_eq!(read_to_close(&mut client).unwrap(), b"");
    let waited = sent.elapsed();
    assert!(waited >= deadline, "closed after {waited:?}");
    assert!(waited < deadline * 3, "closed after {waited:?}");
    let stats = wait_stats(&manager, "the close", |s| s.closed.read_deadline == 1);
    assert_eq!(stats.parked, 0);
}

#[test]
fn parked_first_byte_deadline_fires_on_time() {
    let deadline = Duration::from_millis(250);
    let manager = line_manager(parked_config().with_first_byte_deadline(Some(deadline)));
    let lo = Loopback::new();
    let opened = Instant::now();
    let mut client = lo.put(&manager);
    wait_parked(&manager, 1);
    assert_eq!(read_to_close(&mut client).unwrap(), b"");
    let waited = opened.elapsed();
    assert!(waited >= deadline, "closed after {waited:?}");
    assert!(waited < deadline * 3, "closed after {waited:?}");
    wait_stats(&manager, "the close", |s| s.closed.first_byte_deadline == 1);

    // A client that speaks in time is not affected, parked or not.
    let mut client = lo.put(&manager);
    roundtrip(&mut client, b"x\n", b"1:x\n");
    wait_parked(&manager, 1);
    std::thread::sleep(deadline + Duration::from_millis(100)); // nothing must happen
    roundtrip(&mut client, b"y\n", b"2:y\n");
}

#[test]
fn stop_with_parked_connections_returns_promptly() {
    let manager = line_manager(parked_config());
    let lo = Loopback::new();
    let mut clients: Vec<TcpStream> = (0..200).map(|_| lo.put(&manager)).collect();
    wait_parked(&manager, 200);
    let report = manager.stop().unwrap();
    assert!(report.elapsed < Duration::from_secs(1), "{report:?}");
    assert_eq!(report.drained, 200, "{report:?}");
    assert_eq!(report.forced, 0);
    let stats = manager.stats();
    assert_eq!((stats.parked, stats.closed.stop), (0, 200), "{stats:?}");
    for c in &mut clients {
        assert_eq!(read_to_close(c).unwrap(), b"");
    }
    // And it starts again, parking as before.
    manager.start().unwrap();
    let mut client = lo.put(&manager);
    wait_parked(&manager, 1);
    roundtrip(&mut client, b"again\n", b"1:again\n");
}

#[test]
fn park_after_switches_live() {
    let manager = line_manager(parked_config().with_park_after(None));
    let lo = Loopback::new();
    let mut client = lo.put(&manager);
    roundtrip(&mut client, b"a\n", b"1:a\n");
    assert_eq!(manager.stats().parked, 0);

    manager
        .set_config(manager.config().with_park_after(Some(PARK)))
        .unwrap();
    // Dedicated mode read with no timeout: the change applies from the next
    // read.
    roundtrip(&mut client, b"b\n", b"2:b\n");
    wait_parked(&manager, 1);

    manager
        .set_config(manager.config().with_park_after(None))
        .unwrap();
    // It wakes, and stays on its worker from then on.
    roundtrip(&mut client, b"c\n", b"3:c\n");
    wait_stats(&manager, "the woken connection on a worker", |s| {
        s.parked == 0 && s.busy == 1
    });
    let parks = manager.stats().parks;
    std::thread::sleep(PARK * 5); // nothing must happen
    roundtrip(&mut client, b"d\n", b"4:d\n");
    assert_eq!(manager.stats().parks, parks);
}

#[test]
fn set_config_replans_parked_deadlines() {
    let manager = line_manager(parked_config());
    let lo = Loopback::new();
    let mut client = lo.put(&manager);
    roundtrip(&mut client, b"a\n", b"1:a\n");
    wait_parked(&manager, 1);
    lower_read_deadline_then_closed_within(&manager, &mut client, Duration::from_secs(1));
}

#[test]
fn max_connections_counts_parked_connections() {
    init_log();
    let config = parked_config().with_max_connections(Some(3));
    let manager = Manager::with_handler(config, lines()).unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    let addr = server.local_addrs()[0];
    let mut clients: Vec<TcpStream> = (0..3).map(|_| client(addr)).collect();
    for c in &mut clients {
        roundtrip(c, b"hi\n", b"1:hi\n");
    }
    wait_parked(server.manager(), 3);
    // The fourth waits in the backlog: connected, not served.
    let mut fourth = client(addr);
    fourth.write_all(b"me\n").unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0; 5];
    assert!(std::io::Read::read_exact(&mut fourth, &mut buf).is_err());
    assert_eq!(server.manager().stats().parked, 3);
    // One parked connection closes: the fourth is accepted and served.
    drop(clients.pop());
    fourth.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Read::read_exact(&mut fourth, &mut buf).unwrap();
    assert_eq!(&buf, b"1:me\n");
    server.stop().unwrap();
}

#[test]
fn a_woken_connection_that_finds_no_worker_waits_in_the_queue() {
    let gate = Gate::default();
    let manager = gated_manager(
        parked_config()
            .with_max_workers(1)
            .with_queue_timeout(Duration::from_millis(200))
            .with_busy_reply(b"BUSY\n".to_vec()),
        &gate,
    );
    let lo = Loopback::new();
    let mut parked = lo.put(&manager);
    wait_parked(&manager, 1);
    let _held = lo.hold(&manager, &gate, 1);
    // It wakes while the only worker is held: queued, not refused, and
    // closed with the busy reply once `queue_timeout` passes.
    parked.write_all(b"z").unwrap();
    wait_stats(&manager, "the woken connection queued", |s| s.queued == 1);
    assert_eq!(read_to_close(&mut parked).unwrap(), b"BUSY\n");
    let stats = wait_stats(&manager, "the close", |s| s.closed.busy == 1);
    assert_eq!(stats.rejected.total(), 0);
    gate.open();
}

#[test]
fn parked_connections_hold_no_thread() {
    let manager = line_manager(
        parked_config()
            .with_max_workers(4)
            .with_worker_idle_timeout(Duration::from_millis(50)),
    );
    let lo = Loopback::new();
    let mut clients: Vec<TcpStream> = (0..100).map(|_| lo.put(&manager)).collect();
    for c in &mut clients {
        roundtrip(c, b"x\n", b"1:x\n");
    }
    // All parked, workers reaped: 100 open connections, no worker (on
    // Windows, the last poller).
    let stats = wait_stats(&manager, "all parked, workers reaped", |s| {
        s.parked == 100 && s.workers == IDLE_WORKERS_WHILE_PARKED
    });
    assert_eq!(stats.closed.total(), 0);
    for c in &mut clients {
        roundtrip(c, b"y\n", b"2:y\n");
    }
}

/// Drops the manager: it must stop with parked connections and not hang.
#[test]
fn dropping_a_manager_with_parked_connections_stops_it() {
    let manager = line_manager(parked_config());
    let lo = Loopback::new();
    let mut client = lo.put(&manager);
    wait_parked(&manager, 1);
    let manager = Arc::try_unwrap(manager).ok().unwrap();
    drop(manager);
    assert_eq!(read_to_close(&mut client).unwrap(), b"");
}

#[test]
fn a_woken_connection_is_judged_by_when_it_sent_not_when_a_worker_came() {
    let gate = Gate::default();
    let manager = gated_manager(
        parked_config()
            .with_max_workers(1)
            .with_first_byte_deadline(Some(Duration::from_millis(300)))
            .with_queue_timeout(WAIT),
        &gate,
    );
    let lo = Loopback::new();
    let _held = lo.hold(&manager, &gate, 1);
    // Parked by `put` (the worker is held); it sends in time, and waits in
    // the queue past its first-byte deadline.
    let put_at = Instant::now();
    let mut late = lo.put(&manager);
    late.write_all(b"in time").unwrap();
    wait_stats(&manager, "the woken connection queued", |s| s.queued == 1);
    std::thread::sleep(Duration::from_millis(400).saturating_sub(put_at.elapsed()));
    gate.open();
    roundtrip(&mut late, b"", b"in time");
    assert_eq!(manager.stats().closed.first_byte_deadline, 0);
}

#[test]
fn a_config_change_during_a_read_reaches_the_parked_deadline() {
    let park_after = Duration::from_millis(300);
    let manager = line_manager(
        Config::default()
            .with_park_after(Some(park_after))
            .with_read_deadline(Some(Duration::from_secs(10))),
    );
    let lo = Loopback::new();
    let mut client = lo.put(&manager);
    roundtrip(&mut client, b"a\n", b"1:a\n");
    // The worker now waits up to `park_after` with the old config; the new
    // deadline must hold once it parks.
    lower_read_deadline_then_closed_within(
        &manager,
        &mut client,
        park_after + Duration::from_secs(1),
    );
}

/// A `closed` hook runs on the manager thread for a connection closed
/// while parked: a `stop` from it is refused instead of waiting for itself.
#[test]
fn stop_from_a_hook_on_the_manager_thread_is_refused() {
    use pool_manager::{CloseReason, Conn, Error, Handler};
    use std::sync::OnceLock;

    struct StopOnClose {
        manager: Arc<OnceLock<Arc<Manager>>>,
        result: crossbeam_channel::Sender<Result<(), Error>>,
    }
    impl Handler for StopOnClose {
        type State = ();
        fn open(&self, _: &mut Conn<'_>) {}
        fn data(&self, conn: &mut Conn<'_>, data: &[u8]) -> std::io::Result<()> {
            conn.write_all(data)
        }
        fn closed(&self, (): (), _: CloseReason) {
            if let Some(manager) = self.manager.get() {
                let _ = self.result.send(manager.stop().map(|_| ()));
            }
        }
    }
    init_log();
    let cell = Arc::new(OnceLock::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    let handler = StopOnClose {
        manager: Arc::clone(&cell),
        result: tx,
    };
    let config = parked_config().with_read_deadline(Some(Duration::from_millis(100)));
    let manager = Arc::new(Manager::with_handler(config, handler).unwrap());
    let _ = cell.set(Arc::clone(&manager));
    manager.start().unwrap();
    let lo = Loopback::new();
    let mut client = lo.put(&manager);
    roundtrip(&mut client, b"x", b"x");
    let result = rx.recv_timeout(WAIT).expect("the hook ran");
    assert!(matches!(result, Err(Error::StopFromWorker)), "{result:?}");
    assert!(manager.stop().is_ok());
}
