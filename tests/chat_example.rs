//! The chat example as its users run it: a greeting before the client says
//! anything, nicks, rooms, messages to the others in the room, and a client
//! that does not keep up disconnected while the room carries on.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use util::process::Example;
use util::*;

struct Chatter {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Chatter {
    fn connect(addr: SocketAddr) -> Chatter {
        let stream = client(addr);
        Chatter {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a line");
        line
    }

    /// Reads lines until one starts with `prefix`; that line.
    fn until(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "the end, before {prefix:?}");
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    fn say(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }
}

#[test]
fn a_room_of_three_talks_and_a_leaver_is_announced() {
    let server = Example::start("chat", &[]);
    let mut alice = Chatter::connect(server.addr);
    // The server speaks first.
    let hello = alice.line();
    assert!(hello.starts_with("* welcome, guest"), "{hello}");
    let mut bob = Chatter::connect(server.addr);
    bob.until("* welcome");
    alice.until("* guest");
    let mut carol = Chatter::connect(server.addr);
    carol.until("* welcome");
    alice.say("/nick alice");
    assert_eq!(alice.until("* you are now"), "* you are now alice\n");
    bob.until("* guest");
    bob.say("/nick bob");
    assert_eq!(bob.until("* you are now"), "* you are now bob\n");
    carol.say("/nick carol");
    assert_eq!(carol.until("* you are now"), "* you are now carol\n");
    alice.say("hello, room");
    assert_eq!(bob.until("alice:"), "alice: hello, room\n");
    assert_eq!(carol.until("alice:"), "alice: hello, room\n");
    // Carol leaves for another room: the lobby is told, she hears no more.
    carol.say("/join games");
    assert_eq!(carol.until("* you are in"), "* you are in games\n");
    assert_eq!(bob.until("* carol"), "* carol left for games\n");
    bob.say("/who");
    let who = bob.until("* in lobby:");
    assert!(who.contains("alice") && who.contains("bob") && !who.contains("carol"));
    bob.say("only the lobby hears this");
    assert_eq!(alice.until("bob:"), "bob: only the lobby hears this\n");
    carol.say("/who");
    assert_eq!(carol.until("* in games:"), "* in games: carol\n");
    // Alice quits: the lobby is told.
    alice.say("/quit");
    assert_eq!(alice.until("* bye"), "* bye\n");
    let mut rest = Vec::new();
    alice.reader.read_to_end(&mut rest).unwrap();
    assert_eq!(bob.until("* alice"), "* alice left\n");
    let _ = server.sigterm();
}

#[test]
fn a_client_that_does_not_keep_up_is_disconnected_and_the_room_goes_on() {
    let server = Example::start("chat", &["--max-outbound-bytes", "1048576"]);
    // A client that reads nothing, with a small receive window.
    let mut slow = small_window_client(server.addr, 4096);
    slow.write_all(b"/nick slowpoke\n").unwrap();
    let mut listener = Chatter::connect(server.addr);
    listener.until("* welcome");
    // Says something: a SIGTERM's drain waits for every client's first
    // request (`Server::shutdown`), up to the drain timeout.
    listener.say("/who");
    listener.until("* in lobby:");
    let mut talker = Chatter::connect(server.addr);
    talker.until("* welcome");
    talker.say("/nick talker");
    // Up to 16 MiB of messages, more than the slow client's kernel buffers
    // and its 1 MiB bound together, in batches of 256 KiB that the listener
    // reads before the next (so that it keeps up, however the machine
    // schedules the test), until the room is told the slow one left.
    let line = format!("{}\n", "x".repeat(1023));
    let batch = line.repeat(256);
    let mut heard = 0;
    let mut left = false;
    for _ in 0..64 {
        talker.writer.write_all(batch.as_bytes()).unwrap();
        let mut this_batch = 0;
        while this_batch < 256 {
            let got = listener.line();
            assert!(!got.is_empty(), "the end");
            if got.starts_with("talker: ") {
                this_batch += 1;
            } else if got == "* slowpoke was too slow and left\n" {
                left = true;
            }
        }
        heard += this_batch;
        if left {
            break;
        }
    }
    assert!(left, "the slow client was never dropped");
    assert!(heard >= 256);
    // The slow client's connection ended (after what it had been sent).
    let mut sink = Vec::new();
    let mut buf = [0; 65536];
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sink.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the slow client was not disconnected: {e}"),
        }
    }
    assert!(String::from_utf8_lossy(&sink).contains("* welcome"));
    // The others carry on.
    talker.say("/who");
    let who = talker.until("* in lobby:");
    assert!(who.contains("talker") && !who.contains("slowpoke"), "{who}");
    let _ = server.sigterm();
}
