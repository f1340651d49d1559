//! The `resp` example driven by the real Redis clients, `redis-cli` and
//! `redis-benchmark` (Debian's `redis-tools`), and by raw sockets for what
//! the clients never send.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use util::process::{Example, run, run_ok, tool};
use util::*;

const LIMIT: Duration = Duration::from_secs(60);

fn cli(server: &Example, args: &[&str]) -> String {
    let redis_cli = tool("redis-cli").expect("checked by the caller");
    // Error replies make redis-cli exit non-zero: the text is what counts.
    let out = run(
        Command::new(redis_cli)
            .args(["-h", "127.0.0.1", "-p", &server.port()])
            .args(args),
        LIMIT,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim_end_matches('\n').to_string()
}

#[test]
fn redis_cli_gets_the_replies_redis_gives() {
    if tool("redis-cli").is_none() {
        return;
    }
    let server = Example::start("resp", &[]);
    for (args, reply) in [
        (&["PING"][..], "PONG"),
        (&["SET", "greeting", "hello world"], "OK"),
        (&["GET", "greeting"], "hello world"),
        (&["SET", "greeting", "x", "NX"], ""),
        (&["INCR", "visits"], "1"),
        (&["INCRBY", "visits", "41"], "42"),
        (&["DECR", "visits"], "41"),
        (&["SET", "session", "s", "EX", "100"], "OK"),
        (&["RPUSH", "queue", "a", "b", "c"], "3"),
        (&["LPOP", "queue"], "a"),
        (&["LRANGE", "queue", "0", "-1"], "b\nc"),
        (&["SADD", "tags", "x"], "1"),
        (&["SPOP", "tags"], "x"),
        (&["ZADD", "board", "10", "ann", "5", "bob"], "2"),
        (&["ZPOPMIN", "board"], "bob\n5"),
        (&["HSET", "user", "name", "ann"], "1"),
        (&["HGET", "user", "name"], "ann"),
        (&["MSET", "a", "1", "b", "2"], "OK"),
        (&["MGET", "a", "b", "none"], "1\n2"),
        (&["DEL", "a", "b", "none"], "2"),
        (&["EXISTS", "greeting", "a"], "1"),
        (&["GET", "none"], ""),
    ] {
        assert_eq!(cli(&server, args), reply, "{args:?}");
    }
    // 100 s, rounded: less if the calls since the SET took over 0.5 s.
    let ttl = cli(&server, &["TTL", "session"]);
    assert!(["100", "99", "98"].contains(&ttl.as_str()), "{ttl}");
    let unknown = cli(&server, &["NOSUCH", "x"]);
    assert!(
        unknown.contains("ERR unknown command 'NOSUCH', with args beginning with: 'x'"),
        "{unknown}"
    );
    let wrong = cli(&server, &["LPUSH", "greeting", "x"]);
    assert!(wrong.contains("WRONGTYPE"), "{wrong}");
    // A key expires: PX 50, then gone within the bounded wait.
    assert_eq!(cli(&server, &["SET", "brief", "v", "PX", "50"]), "OK");
    wait_for("the key to expire", || {
        cli(&server, &["EXISTS", "brief"]) == "0"
    });
    assert_eq!(cli(&server, &["TTL", "brief"]), "-2");
    let (status, lines) = server.sigterm();
    assert!(status.success(), "{lines:?}");
}

/// Every test of `redis-benchmark`'s default run, plain and pipelined,
/// reports a rate.
#[test]
fn redis_benchmark_completes_every_test() {
    let Some(bench) = tool("redis-benchmark") else {
        return;
    };
    let server = Example::start("resp", &[]);
    for pipeline in ["1", "16"] {
        // Every default test; the LRANGE ones (replies of 100 to 600
        // elements, slow to build in a debug build) with fewer requests,
        // so that the whole stays well within `LIMIT` on a busy machine.
        let mut out = String::new();
        for (tests, n) in [
            (
                "ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,mset",
                "20000",
            ),
            ("lrange", "2000"),
        ] {
            out += &run_ok(
                Command::new(&bench)
                    .args(["-h", "127.0.0.1", "-p", &server.port()])
                    .args(["-q", "-n", n, "-c", "50", "-P", pipeline, "-t", tests]),
                LIMIT,
            );
        }
        // `-q` prints `TEST: N requests per second, …` per test.
        let rates: Vec<(&str, f64)> = out
            .split(['\r', '\n'])
            .filter_map(|l| {
                let (name, rest) = l.split_once(": ")?;
                let rate = rest.split_whitespace().next()?.parse().ok()?;
                rest.contains("requests per second").then_some((name, rate))
            })
            .collect();
        for test in [
            "PING_INLINE",
            "PING_MBULK",
            "SET",
            "GET",
            "INCR",
            "LPUSH",
            "RPUSH",
            "LPOP",
            "RPOP",
            "SADD",
            "HSET",
            "SPOP",
            "ZADD",
            "ZPOPMIN",
            "LRANGE_100 (first 100 elements)",
            "LRANGE_300 (first 300 elements)",
            "LRANGE_500 (first 500 elements)",
            "LRANGE_600 (first 600 elements)",
            "MSET (10 keys)",
        ] {
            assert!(
                rates.iter().any(|&(name, rate)| name == test && rate > 0.0),
                "-P {pipeline}: no rate for {test} in:\n{out}"
            );
        }
        assert!(!out.contains("ERR"), "{out}");
    }
}

/// Over TLS (`--tls-cert`/`--tls-key`): redis-cli and every test of
/// redis-benchmark, which makes a TLS connection per client.
#[cfg(feature = "tls")]
#[test]
fn redis_cli_and_redis_benchmark_over_tls() {
    let (Some(bench), Some(redis_cli)) = (tool("redis-benchmark"), tool("redis-cli")) else {
        return;
    };
    let cert = util::tls::TestCert::new();
    let files = cert.files();
    let server = Example::start("resp", &files.flags());
    let tls = ["--tls", "--insecure"];
    let pong = run_ok(
        Command::new(&redis_cli)
            .args(["-h", "127.0.0.1", "-p", &server.port()])
            .args(tls)
            .arg("PING"),
        LIMIT,
    );
    assert_eq!(pong.trim(), "PONG");
    // Plaintext to a TLS port is refused, not answered.
    let plain = run(
        Command::new(&redis_cli)
            .args(["-h", "127.0.0.1", "-p", &server.port()])
            .arg("PING"),
        LIMIT,
    );
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("PONG"));
    let out = run_ok(
        Command::new(&bench)
            .args(["-h", "127.0.0.1", "-p", &server.port()])
            .args(tls)
            .args(["-q", "-n", "5000", "-c", "20", "-P", "4"])
            .args([
                "-t",
                "ping,set,get,incr,lpush,lpop,sadd,hset,zadd,mset,lrange_100",
            ]),
        LIMIT,
    );
    let rates = out
        .split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .count();
    assert!(rates >= 11, "a rate for every test:\n{out}");
    assert!(!out.contains("ERR"), "{out}");
}

/// A command sent a byte per write is answered once, and right.
#[test]
fn a_command_split_byte_by_byte_is_answered_once() {
    let server = Example::start("resp", &[]);
    let mut c = client(server.addr);
    let set = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nhello\r\n";
    for &b in set {
        c.write_all(&[b]).unwrap();
    }
    for &b in b"GET key\r\n" {
        c.write_all(&[b]).unwrap();
    }
    let expected = b"+OK\r\n$5\r\nhello\r\n";
    let mut got = vec![0; expected.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, expected);
    // Nothing more: each command was answered once.
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(c.read(&mut [0; 16]).is_err(), "an extra reply");
}

/// Garbage gets Redis's protocol error and the connection is closed; a
/// value far larger than the read buffer is stored whole.
#[test]
fn garbage_is_refused_and_large_values_are_kept() {
    let server = Example::start("resp", &[]);
    let mut c = client(server.addr);
    c.write_all(b"*1\r\n$99999999999\r\n").unwrap();
    let reply = read_to_close(&mut c).unwrap();
    assert_eq!(reply, b"-ERR Protocol error: invalid bulk length\r\n");

    let mut c = client(server.addr);
    let value = vec![b'v'; 300_000];
    let mut set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", value.len()).into_bytes();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
    c.write_all(&set).unwrap();
    let mut expected = format!("+OK\r\n${}\r\n", value.len()).into_bytes();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n");
    let mut got = vec![0; expected.len()];
    c.read_exact(&mut got).unwrap();
    assert!(got == expected, "the large value came back changed");
}

/// A client the pool cannot take gets Redis's own refusal.
#[test]
fn a_refused_client_gets_max_number_of_clients_reached() {
    let server = Example::start("resp", &["--dedicated", "--max-workers", "1"]);
    let mut first = client(server.addr);
    roundtrip(&mut first, b"PING\r\n", b"+PONG\r\n");
    let started = Instant::now();
    let mut second = client(server.addr);
    let reply = read_to_close(&mut second).unwrap();
    assert_eq!(reply, b"-ERR max number of clients reached\r\n");
    assert!(started.elapsed() < WAIT);
    roundtrip(&mut first, b"PING\r\n", b"+PONG\r\n");
}
