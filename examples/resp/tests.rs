//! The server without sockets: reads fed as the pool feeds them (kept bytes
//! first), replies compared with Redis's.

use proptest::prelude::*;

use super::*;

fn server() -> Resp {
    Resp {
        store: Store::new(),
        info: ServerInfo {
            port: 6380,
            started: Instant::now(),
        },
        limits: Limits {
            max_bulk: 1 << 20,
            max_args: 1024,
            max_inline: MAX_INLINE,
        },
        max_request: 1 << 22,
        broker: Broker::default(),
    }
}

/// Feeds `chunks` as the pool would; all the replies, and whether the
/// server closed the connection.
fn drive(resp: &Resp, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let (mut ranges, mut client) = (Vec::new(), NoClient::default());
    let (all, closed, _) = frames::feed_as_pool(chunks, |data, out| {
        resp.read(data, out, &mut ranges, &mut client)
    });
    (all, closed)
}

/// A command in multibulk form.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// The reply to one command given as words.
fn ask(resp: &Resp, words: &str) -> String {
    let args: Vec<&[u8]> = words.split(' ').map(str::as_bytes).collect();
    String::from_utf8(drive(resp, &[&command(&args)]).0).unwrap()
}

#[test]
fn replies_are_redis_s() {
    let r = server();
    for (words, reply) in [
        ("PING", "+PONG\r\n"),
        ("SET k v", "+OK\r\n"),
        ("SET k w NX", "$-1\r\n"),
        ("SET k w XX GET", "$1\r\nv\r\n"),
        ("GET k", "$1\r\nw\r\n"),
        (
            "SET k v EX 0",
            "-ERR invalid expire time in 'set' command\r\n",
        ),
        ("SET k v NX XX", "-ERR syntax error\r\n"),
        ("INCR k", "-ERR value is not an integer or out of range\r\n"),
        ("INCRBY n 9223372036854775807", ":9223372036854775807\r\n"),
        ("INCR n", "-ERR increment or decrement would overflow\r\n"),
        ("DECR m", ":-1\r\n"),
        (
            "LPUSH k x",
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ),
        ("RPUSH l a b c d", ":4\r\n"),
        ("LRANGE l -3 -2", "*2\r\n$1\r\nb\r\n$1\r\nc\r\n"),
        ("LPOP l 2", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
        ("ZADD z 2.5 b 1 a", ":2\r\n"),
        (
            "ZPOPMIN z 2",
            "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$3\r\n2.5\r\n",
        ),
        ("EXISTS k l z nope", ":2\r\n"),
        ("MSET a 1 b 2", "+OK\r\n"),
        ("MGET a b nope", "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n"),
        ("DEL a b nope", ":2\r\n"),
        ("TTL k", ":-1\r\n"),
        ("EXPIRE k 100", ":1\r\n"),
        ("TTL k", ":100\r\n"),
        ("EXPIRE k -1", ":1\r\n"),
        ("TTL k", ":-2\r\n"),
        ("HSET h f 1 g 2", ":2\r\n"),
        (
            "HSET h f",
            "-ERR wrong number of arguments for 'hset' command\r\n",
        ),
        (
            "GET",
            "-ERR wrong number of arguments for 'get' command\r\n",
        ),
        (
            "FOO bar",
            "-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n",
        ),
        ("CONFIG GET save", "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
        ("DBSIZE", ":4\r\n"),
        ("FLUSHALL", "+OK\r\n"),
        ("DBSIZE", ":0\r\n"),
    ] {
        assert_eq!(ask(&r, words), reply, "{words}");
    }
}

#[test]
fn pipelined_and_inline_commands_are_answered_in_order() {
    let r = server();
    let mut stream = command(&[b"SET", b"k", b"v"]);
    stream.extend_from_slice(b"PING\r\nGET k\n");
    stream.extend_from_slice(&command(&[b"QUIT"]));
    stream.extend_from_slice(b"PING\r\n");
    let (out, closed) = drive(&r, &[&stream]);
    assert_eq!(out, b"+OK\r\n+PONG\r\n$1\r\nv\r\n+OK\r\n");
    assert!(closed, "QUIT closes; the PING after it is not answered");
}

#[test]
fn a_protocol_error_is_answered_after_the_valid_commands_then_closes() {
    let (out, closed) = drive(&server(), &[b"PING\r\n*1\r\n$x\r\n"]);
    assert_eq!(
        out,
        b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
    );
    assert!(closed);
    // An announced length over the limit is refused before it is read.
    let (out, closed) = drive(&server(), &[b"*1\r\n$99999999999\r\n"]);
    assert_eq!(out, b"-ERR Protocol error: invalid bulk length\r\n");
    assert!(closed);
}

/// Found by fuzzing: under limits near `usize::MAX`, the length a request
/// announced, added to where it starts in the read, overflowed.
#[test]
fn huge_limits_do_not_overflow_what_a_pipeline_needs() {
    let resp = Resp {
        limits: Limits {
            max_bulk: usize::MAX,
            max_args: usize::MAX,
            max_inline: MAX_INLINE,
        },
        max_request: usize::MAX,
        ..server()
    };
    let (out, closed) = drive(&resp, &[b"PING\r\n*9223372036854775807\r\n$1\r\n"]);
    assert_eq!((&out[..], closed), (&b"+PONG\r\n"[..], false));
}

/// Found by fuzzing: a request longer than `--max-request-bytes` was
/// served when it came in one read and refused when it came in pieces. It
/// is refused however it comes.
#[test]
fn a_request_past_the_limit_is_refused_however_it_is_cut() {
    let resp = || Resp {
        max_request: 50,
        ..server()
    };
    let set = command(&[b"SET", b"k", &[b'v'; 80]]);
    let stream = [&b"PING\r\n"[..], &set].concat();
    let whole = drive(&resp(), &[&stream]);
    assert_eq!(whole, drive(&resp(), &[&stream[..70], &stream[70..]]));
    let refused = "+PONG\r\n-ERR Protocol error: request larger than the server allows\r\n";
    assert_eq!(
        (String::from_utf8_lossy(&whole.0), whole.1),
        (refused.into(), true)
    );
}

#[test]
fn a_value_larger_than_the_read_buffer_arrives_in_many_reads() {
    let r = server();
    let value = vec![b'x'; 100_000];
    let stream = command(&[b"SET", b"big", &value]);
    let chunks: Vec<&[u8]> = stream.chunks(1000).collect();
    assert_eq!(drive(&r, &chunks).0, b"+OK\r\n");
    let mut expected = b"$100000\r\n".to_vec();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n");
    assert_eq!(drive(&r, &[&command(&[b"GET", b"big"])]).0, expected);
}

/// Commands whose replies do not depend on a hash set's order.
fn any_command() -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(vec![&b"a"[..], b"b", b"list", b"z"]);
    let value = prop::collection::vec(any::<u8>(), 0..40);
    (0..9usize, key, value, -3i64..3).prop_map(|(which, key, value, n)| {
        let n = n.to_string();
        let n = n.as_bytes();
        match which {
            0 => command(&[b"SET", key, &value]),
            1 => command(&[b"GET", key]),
            2 => command(&[b"INCRBY", key, n]),
            3 => command(&[b"RPUSH", key, &value]),
            4 => command(&[b"LRANGE", key, n, b"-1"]),
            5 => command(&[b"ZADD", key, n, &value]),
            6 => command(&[b"ZPOPMIN", key]),
            7 => command(&[b"DEL", key]),
            _ => b"PING\r\n".to_vec(),
        }
    })
}

proptest! {
    // Failures kept under `proptest-regressions/`, not next to the example
    // (proptest's default for a file beside a `main.rs`), and replayed first.
    #![proptest_config(fuzz::harness::config(256, concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proptest-regressions/resp/tests.txt"
    )))]

    #[test]
    fn any_split_gives_the_replies_of_the_whole(
        commands in prop::collection::vec(any_command(), 1..20),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream = commands.concat();
        let (whole, _) = drive(&server(), &[&stream]);
        let chunks = frames::split(&stream, cuts.iter().map(|c| c.index(usize::MAX)));
        let (split, _) = drive(&server(), &chunks);
        prop_assert_eq!(whole, split);
    }
}

/// The parser fuzzed: random, made and mutated requests, in pieces.
#[path = "fuzz.rs"]
mod fuzz;
