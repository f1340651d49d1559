//! Pub/sub in the `resp` example: Redis's RESP2 reply shapes on raw
//! sockets, a subscriber that does not keep up disconnected while the
//! others carry on, and `redis-cli SUBSCRIBE` receiving what
//! `redis-cli PUBLISH` sends.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, mpsc};
use std::thread;

use util::process::{Example, tool};
use util::*;

/// A command in multibulk form.
fn command(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

/// What Redis sends as a RESP2 array of bulk strings and integers
/// (`:N` for a number, `-` for the null bulk string).
fn array(items: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", items.len()).into_bytes();
    for item in items {
        match item.strip_prefix(':') {
            Some(n) if !n.is_empty() => v.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            _ if *item == "-" => v.extend_from_slice(b"$-1\r\n"),
            _ => v.extend_from_slice(format!("${}\r\n{item}\r\n", item.len()).as_bytes()),
        }
    }
    v
}

fn expect(c: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0; want.len()];
    c.read_exact(&mut got).expect("the reply");
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

fn send(c: &mut TcpStream, args: &[&str]) {
    c.write_all(&command(args)).unwrap();
}

#[test]
fn subscribers_get_what_is_published_in_redis_reply_shapes() {
    let server = Example::start("resp", &[]);
    let mut sub = client(server.addr);
    let mut psub = client(server.addr);
    let mut publisher = client(server.addr);
    send(&mut sub, &["SUBSCRIBE", "news", "weather"]);
    expect(&mut sub, &array(&["subscribe", "news", ":1"]));
    expect(&mut sub, &array(&["subscribe", "weather", ":2"]));
    send(&mut psub, &["PSUBSCRIBE", "n*"]);
    expect(&mut psub, &array(&["psubscribe", "n*", ":1"]));
    send(&mut publisher, &["PUBLISH", "news", "hello"]);
    expect(&mut publisher, b":2\r\n");
    expect(&mut sub, &array(&["message", "news", "hello"]));
    expect(&mut psub, &array(&["pmessage", "n*", "news", "hello"]));
    send(&mut publisher, &["PUBLISH", "nobody", "x"]);
    expect(&mut publisher, b":1\r\n");
    expect(&mut psub, &array(&["pmessage", "n*", "nobody", "x"]));
    // Subscribed: only the pub/sub commands, PING, QUIT and RESET.
    send(&mut sub, &["GET", "k"]);
    expect(
        &mut sub,
        b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );
    send(&mut sub, &["PING"]);
    expect(&mut sub, &array(&["pong", ""]));
    send(&mut publisher, &["PUBSUB", "NUMSUB", "news", "none"]);
    expect(&mut publisher, &array(&["news", ":1", "none", ":0"]));
    send(&mut publisher, &["PUBSUB", "NUMPAT"]);
    expect(&mut publisher, b":1\r\n");
    send(&mut publisher, &["PUBSUB", "CHANNELS", "w*"]);
    expect(&mut publisher, &array(&["weather"]));
    // Unsubscribing from everything leaves subscribed mode.
    send(&mut sub, &["UNSUBSCRIBE"]);
    let mut both = array(&["unsubscribe", "news", ":1"]);
    both.extend(array(&["unsubscribe", "weather", ":0"]));
    expect(&mut sub, &both);
    send(&mut sub, &["GET", "k"]);
    expect(&mut sub, b"$-1\r\n");
    send(&mut sub, &["UNSUBSCRIBE"]);
    expect(&mut sub, &array(&["unsubscribe", "-", ":0"]));
    // A subscriber that leaves is forgotten.
    drop(psub);
    wait_for("the subscriber forgotten", || {
        send(&mut publisher, &["PUBSUB", "NUMPAT"]);
        let mut reply = [0; 4];
        publisher.read_exact(&mut reply).unwrap();
        &reply == b":0\r\n"
    });
    let _ = server.sigterm();
}

#[test]
fn a_subscriber_that_does_not_keep_up_is_disconnected_and_others_carry_on() {
    let server = Example::start("resp", &["--pubsub-limit-bytes", "1048576"]);
    // Reads nothing, with a small receive window.
    let mut slow = small_window_client(server.addr, 4096);
    send(&mut slow, &["SUBSCRIBE", "ch"]);
    let mut fast = client(server.addr);
    send(&mut fast, &["SUBSCRIBE", "ch"]);
    expect(&mut fast, &array(&["subscribe", "ch", ":1"]));
    // The fast subscriber reads everything as it comes.
    let message = "m".repeat(1000);
    let one = array(&["message", "ch", &message]);
    let heard = Arc::new(AtomicUsize::new(0));
    let (done_tx, done) = mpsc::channel();
    let reader = {
        let heard = Arc::clone(&heard);
        thread::spawn(move || {
            let mut buf = vec![0; one.len()];
            while done.try_recv().is_err() {
                if fast.read_exact(&mut buf).is_err() {
                    break;
                }
                assert_eq!(buf, one);
                heard.fetch_add(1, SeqCst);
            }
            heard.load(SeqCst)
        })
    };
    // 16 MiB of messages: the slow one's kernel buffers and its 1 MiB.
    let mut publisher = BufReader::new(client(server.addr));
    // Both subscriptions are in place (the slow one's reply is never read).
    let both = array(&["ch", ":2"]);
    wait_for("two subscribers", || {
        send(publisher.get_mut(), &["PUBSUB", "NUMSUB", "ch"]);
        let mut reply = vec![0; both.len()];
        publisher.read_exact(&mut reply).unwrap();
        reply == both
    });
    let mut receivers = Vec::new();
    let publish = command(&["PUBLISH", "ch", &message]);
    for i in 0..16 * 1024 {
        publisher.get_mut().write_all(&publish).unwrap();
        let mut line = String::new();
        publisher.read_line(&mut line).unwrap();
        receivers.push(line);
        if i % 256 == 255 {
            // The fast subscriber keeps up, however the machine schedules
            // the test.
            wait_for("the fast subscriber", || heard.load(SeqCst) + 256 > i);
        }
    }
    // Two receivers until the slow one was dropped, then one.
    assert_eq!(receivers[0], ":2\r\n");
    assert_eq!(receivers.last().unwrap(), ":1\r\n");
    let dropped_at = receivers.iter().position(|r| r == ":1\r\n").unwrap();
    assert!(receivers[dropped_at..].iter().all(|r| r == ":1\r\n"));
    // Its connection ends.
    let mut sink = vec![0; 1 << 16];
    loop {
        match slow.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the slow subscriber was not disconnected: {e}"),
        }
    }
    // The fast one got every message.
    let _ = done_tx.send(());
    send(&mut client(server.addr), &["PUBLISH", "ch", &message]);
    let got = reader.join().unwrap();
    assert_eq!(got, 16 * 1024 + 1);
    let _ = server.sigterm();
}

#[test]
fn redis_cli_subscribe_receives_what_redis_cli_publish_sends() {
    let Some(redis_cli) = tool("redis-cli") else {
        return; // said why; under CI, failed
    };
    let server = Example::start("resp", &[]);
    let port = server.port();
    let mut subscriber = Command::new(&redis_cli)
        .args(["-h", "127.0.0.1", "-p", &port, "SUBSCRIBE", "chan"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = subscriber.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || lines.recv_timeout(WAIT).expect("a line from redis-cli");
    assert_eq!(
        (next(), next(), next()),
        ("subscribe".into(), "chan".into(), "1".into())
    );
    let published = util::process::run_ok(
        Command::new(&redis_cli).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "PUBLISH",
            "chan",
            "hi there",
        ]),
        WAIT,
    );
    assert_eq!(published.trim(), "1");
    assert_eq!(
        (next(), next(), next()),
        ("message".into(), "chan".into(), "hi there".into())
    );
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    let _ = server.sigterm();
}
