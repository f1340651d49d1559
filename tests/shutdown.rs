//! `Server::shutdown` and `Server::listeners`: the stop for restarts and
//! orchestrators. Connections accepted before it get their first request
//! served; a successor serving the same sockets takes every new client.

mod util;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pool_manager::{Config, Manager, Server};
use util::*;

#[test]
fn shutdown_serves_the_first_request_of_every_accepted_connection() {
    for park_after in [Some(Duration::ZERO), None] {
        let server = echo_server(Config::default().with_park_after(park_after));
        let addr = server.local_addrs()[0];
        // Accepted, but silent so far.
        let mut clients: Vec<_> = (0..3).map(|_| client(addr)).collect();
        wait_stats(server.manager(), "three accepted", |s| s.connections == 3);
        let stopping = Arc::clone(&server);
        let shutdown = thread::spawn(move || stopping.shutdown(Duration::from_secs(5)));
        wait_for("the acceptor to stop", || !server.is_accepting());
        // The pool waits for their first requests.
        assert!(server.manager().stats().running);
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = format!("request {i}\n");
            roundtrip(c, msg.as_bytes(), msg.as_bytes());
        }
        let report = shutdown.join().unwrap().expect("shutdown");
        assert_eq!(report.forced, 0, "{report:?}");
        assert!(report.elapsed < Duration::from_secs(4), "{report:?}");
        for c in &mut clients {
            assert_eq!(read_to_close(c).unwrap(), b"");
        }
        let stats = server.manager().stats();
        assert_eq!(stats.closed.stop, 3, "{park_after:?} {stats:?}");
    }
}

#[test]
fn shutdown_waits_for_a_silent_client_only_until_its_timeout() {
    let server = echo_server(Config::default());
    let _silent = client(server.local_addrs()[0]);
    wait_stats(server.manager(), "accepted", |s| s.connections == 1);
    let started = Instant::now();
    let report = server.shutdown(Duration::from_millis(300)).unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(report.forced, 0, "parked: closed as drained");
    assert_eq!(server.manager().stats().closed.stop, 1);
}

#[test]
fn a_successor_on_the_same_sockets_takes_every_new_client() {
    let old = echo_server(Config::default());
    let addr = old.local_addrs()[0];
    let manager = Manager::new(Config::default(), echo).unwrap();
    let new = Server::from_listeners(manager, old.listeners().unwrap()).unwrap();
    assert_eq!(new.local_addrs(), old.local_addrs());
    new.start().unwrap();
    // Both accept from one backlog; then the old one shuts down.
    let mut before: Vec<_> = (0..10).map(|_| client(addr)).collect();
    let stopping = Arc::clone(&old);
    let shutdown = thread::spawn(move || stopping.shutdown(Duration::from_secs(5)));
    // `is_accepting` is false once the acceptor thread has been joined:
    // whatever the old server took, it has counted.
    wait_for("the old acceptor to stop", || !old.is_accepting());
    let taken_by_old = old.manager().stats().connections;
    let mut after: Vec<_> = (0..10).map(|_| client(addr)).collect();
    for c in before.iter_mut().chain(after.iter_mut()) {
        roundtrip(c, b"hi\n", b"hi\n");
    }
    let report = shutdown.join().unwrap().unwrap();
    assert_eq!(report.forced, 0);
    let (o, n) = (old.manager().stats(), new.manager().stats());
    assert_eq!(o.connections + n.connections, 20, "{o:?} {n:?}");
    // The old server took nothing after its acceptor stopped: the
    // successor took every client that came after, and the rest.
    assert_eq!(o.connections, taken_by_old, "{o:?}");
    assert_eq!(n.connections, 20 - taken_by_old, "{n:?}");
    assert_eq!(o.rejected.total() + n.rejected.total(), 0);
    new.stop().unwrap();
}

#[test]
fn shutdown_waits_for_a_first_request_split_across_reads() {
    for park_after in [Some(Duration::ZERO), None] {
        init_log();
        let config = Config::default().with_park_after(park_after);
        let manager = Manager::with_handler(config, lines()).unwrap();
        let server = Arc::new(Server::bind(manager, "127.0.0.1:0").unwrap());
        server.start().unwrap();
        let mut c = client(server.local_addrs()[0]);
        // Half a request: the handler keeps it.
        std::io::Write::write_all(&mut c, b"hel").unwrap();
        wait_stats(server.manager(), "the half read", |s| s.bytes_in == 3);
        let stopping = Arc::clone(&server);
        let shutdown = thread::spawn(move || stopping.shutdown(Duration::from_secs(5)));
        wait_for("the acceptor to stop", || !server.is_accepting());
        assert!(server.manager().stats().running, "{park_after:?}");
        roundtrip(&mut c, b"lo\n", b"1:hello\n");
        let report = shutdown.join().unwrap().unwrap();
        assert_eq!(report.forced, 0, "{report:?}");
        assert!(report.elapsed < Duration::from_secs(4), "{report:?}");
    }
}
