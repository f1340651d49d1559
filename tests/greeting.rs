//! The server speaks first: `Handler::open` runs as soon as the pool takes
//! a connection — in every serving mode, after a TLS handshake, behind a
//! PROXY header — and may write, take a handle and close.

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_manager::{CloseReason, Config, Conn, Handle, Handler, Manager, Server};
use util::*;

const MS: Duration = Duration::from_millis(1);

/// Greets each client with `hello <peer>`, counts its lines, and says
/// goodbye to `quit`; keeps every connection's handle.
#[derive(Default)]
struct Greeter {
    handles: Mutex<Vec<Handle>>,
    closed: Mutex<Vec<(usize, CloseReason)>>,
}

impl Handler for Greeter {
    type State = usize;

    fn open(&self, conn: &mut Conn<'_>) -> usize {
        // Kept before the greeting, which the test waits for.
        self.handles.lock().unwrap().push(conn.handle());
        let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
        let _ = writeln!(conn, "hello {peer}");
        0
    }

    fn data(&self, conn: &mut Conn<'_, usize>, data: &[u8]) -> io::Result<()> {
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            *conn.state() += 1;
            if line == b"quit" {
                conn.write_all(b"bye\n")?;
                conn.close();
                return Ok(());
            }
            conn.write_all(b"ok\n")?;
        }
        Ok(())
    }

    fn closed(&self, lines: usize, reason: CloseReason) {
        self.closed.lock().unwrap().push((lines, reason));
    }
}

fn greeter_server(config: Config) -> (Arc<Server>, Arc<Greeter>) {
    init_log();
    let greeter = Arc::new(Greeter::default());
    let manager = Manager::with_handler(config, Shared(Arc::clone(&greeter))).unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    (Arc::new(server), greeter)
}

/// The test keeps the greeter to look at it.
struct Shared(Arc<Greeter>);

impl Handler for Shared {
    type State = usize;
    fn open(&self, conn: &mut Conn<'_>) -> usize {
        self.0.open(conn)
    }
    fn data(&self, conn: &mut Conn<'_, usize>, data: &[u8]) -> io::Result<()> {
        self.0.data(conn, data)
    }
    fn closed(&self, state: usize, reason: CloseReason) {
        self.0.closed(state, reason);
    }
}

fn line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line");
    line
}

#[test]
fn a_greeting_reaches_a_silent_client_in_every_mode() {
    for park_after in [Some(Duration::ZERO), Some(20 * MS), None] {
        let (server, greeter) = greeter_server(Config::default().with_park_after(park_after));
        let c = client(server.local_addrs()[0]);
        let me = c.local_addr().unwrap();
        let mut c = BufReader::new(c);
        // The client has said nothing.
        assert_eq!(line(&mut c), format!("hello {me}\n"), "{park_after:?}");
        // Its handle works before it ever sends.
        let handle = greeter.handles.lock().unwrap()[0].clone();
        handle.send(b"pushed\n").unwrap();
        assert_eq!(line(&mut c), "pushed\n");
        c.get_mut().write_all(b"a\nquit\n").unwrap();
        assert_eq!(line(&mut c), "ok\n");
        assert_eq!(line(&mut c), "bye\n");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        wait_for("the closed hook", || {
            !greeter.closed.lock().unwrap().is_empty()
        });
        assert_eq!(
            greeter.closed.lock().unwrap()[0],
            (2, CloseReason::Handler),
            "{park_after:?}"
        );
        server.stop().unwrap();
    }
}

#[test]
fn open_runs_once_per_connection_even_for_many_at_once() {
    let opened = Arc::new(AtomicUsize::new(0));
    let o = Arc::clone(&opened);
    let manager = Manager::with_handler(
        Config::default(),
        pool_manager::with_state(
            move |conn: &mut Conn<'_>| {
                o.fetch_add(1, SeqCst);
                let _ = conn.write_all(b">");
            },
            |conn: &mut Conn<'_, ()>, data: &[u8]| conn.write_all(data),
        ),
    )
    .unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    let mut clients: Vec<TcpStream> = (0..200).map(|_| client(server.local_addrs()[0])).collect();
    for c in &mut clients {
        let mut prompt = [0];
        c.read_exact(&mut prompt).unwrap();
        assert_eq!(&prompt, b">");
        roundtrip(c, b"x", b"x");
    }
    assert_eq!(opened.load(SeqCst), 200);
    drop(clients);
    server.stop().unwrap();
}

#[test]
fn open_may_close_at_once_after_its_words() {
    let manager = Manager::with_handler(
        Config::default(),
        pool_manager::with_state(
            |conn: &mut Conn<'_>| {
                let _ = conn.write_all(&vec![b'!'; 256 << 10]);
                conn.close();
            },
            |_: &mut Conn<'_, ()>, _: &[u8]| panic!("never read"),
        ),
    )
    .unwrap();
    let server = Server::bind(manager, "127.0.0.1:0").unwrap();
    server.start().unwrap();
    let mut c = client(server.local_addrs()[0]);
    let got = read_to_close(&mut c).unwrap();
    assert_eq!(got.len(), 256 << 10);
    let s = wait_stats(server.manager(), "the close", |s| s.closed.total() == 1);
    assert_eq!(s.closed.handler, 1, "{:?}", s.closed);
    server.stop().unwrap();
}

#[test]
fn a_panic_in_open_closes_the_connection() {
    let manager = Manager::with_handler(
        Config::default(),
        pool_manager::with_state(
            |_: &mut Conn<'_>| -> () { panic!("open fails") },
            |_: &mut Conn<'_, ()>, _: &[u8]| Ok(()),
        ),
    )
    .unwrap();
    let failing = Server::bind(manager, "127.0.0.1:0").unwrap();
    failing.start().unwrap();
    let mut c = client(failing.local_addrs()[0]);
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    let s = wait_stats(failing.manager(), "the close", |s| s.closed.total() == 1);
    assert_eq!(s.closed.panic, 1);
    failing.stop().unwrap();
}

#[test]
fn the_greeting_comes_after_the_proxy_header() {
    let (server, _greeter) = greeter_server(Config::default().with_proxy_protocol(Some(
        pool_manager::ProxyProtocol::new(vec!["127.0.0.0/8".parse().unwrap()]),
    )));
    let mut c = client(server.local_addrs()[0]);
    // Nothing before the header: the client it names is greeted.
    c.set_read_timeout(Some(50 * MS)).unwrap();
    let mut early = [0];
    assert!(c.read(&mut early).is_err(), "a greeting before the header");
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"PROXY TCP4 198.51.100.7 192.0.2.1 4000 443\r\n")
        .unwrap();
    let mut c = BufReader::new(c);
    assert_eq!(line(&mut c), "hello 198.51.100.7:4000\n");
    server.stop().unwrap();
}

#[cfg(feature = "tls")]
#[test]
fn the_greeting_comes_encrypted_after_the_handshake() {
    use util::tls::{TestCert, handshake, tls_client};
    let cert = TestCert::new();
    for park_after in [Some(Duration::ZERO), None] {
        let (server, _greeter) = greeter_server(
            Config::default()
                .with_tls(Some(cert.server()))
                .with_park_after(park_after),
        );
        let mut c = tls_client(server.local_addrs()[0], &cert.client());
        handshake(&mut c).unwrap();
        let me = c.sock.local_addr().unwrap();
        let mut c = BufReader::new(c);
        assert_eq!(line(&mut c), format!("hello {me}\n"), "{park_after:?}");
        c.get_mut().write_all(b"quit\n").unwrap();
        assert_eq!(line(&mut c), "bye\n");
        server.stop().unwrap();
    }
}
