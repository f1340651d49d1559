//! The server without sockets: reads fed as the pool feeds them (kept bytes
//! first).

use proptest::prelude::*;

use super::*;

fn server() -> Http {
    Http {
        router: routes(),
        limits: Limits {
            max_head: 1024,
            max_body: 4096,
        },
    }
}

/// Feeds `chunks` as the pool would; the responses without their `Date`
/// lines (which change with the second), and whether the server closed.
fn drive(http: &Http, chunks: &[&[u8]]) -> (String, bool) {
    let mut session = Session::default();
    let (all, closed, _) =
        frames::feed_as_pool(chunks, |data, out| http.read(&mut session, data, out));
    let text = String::from_utf8_lossy(&all);
    let text = text
        .split("\r\n")
        .filter(|l| !l.starts_with("Date: "))
        .collect();
    (text, closed)
}

#[test]
fn a_body_sent_with_expect_gets_100_continue_once() {
    let head =
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n";
    let body = [b'z'; 100];
    let (out, closed) = drive(&server(), &[head, &body[..50], &body[50..]]);
    assert!(!closed);
    assert!(out.starts_with("HTTP/1.1 100 Continue"), "{out}");
    assert_eq!(out.matches("100 Continue").count(), 1, "{out}");
    assert!(out.ends_with(&"z".repeat(100)), "{out}");
}

/// Found by fuzzing: limits as large as a `usize` (`--max-body-bytes
/// 18446744073709551615`) overflowed the room for a partial request (a
/// panic in a debug build, every partial request refused in a release
/// one), and the length a request needs.
#[test]
fn huge_limits_leave_room_for_a_request_in_pieces() {
    let http = Http {
        limits: Limits {
            max_head: 1024,
            max_body: usize::MAX,
        },
        ..server()
    };
    let r = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n";
    let body = [b'z'; 100];
    let (out, closed) = drive(&http, &[r, &body[..10], &body[10..]]);
    assert!(!closed);
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.ends_with(&"z".repeat(100)), "{out}");
    // A body as long as the limit allows, after a request in the same read:
    // the first is answered, the second waits.
    let r = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n";
    let (out, closed) = drive(&http, &[r]);
    assert!(!closed);
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.ends_with("Hello, World!"),
        "{out}"
    );
}

/// Found by fuzzing: a chunked request within the body limit but, cut in
/// small chunks, longer than the room a partial request has (the head
/// limit and twice the body limit) was served when it came in one read and
/// refused (413) when it came in pieces. It is refused however it comes.
#[test]
fn a_request_past_its_room_is_refused_however_it_is_cut() {
    let mut r = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2000 {
        r.extend_from_slice(b"1\r\nx\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    let whole = drive(&server(), &[&r]);
    let pieces = drive(&server(), &r.chunks(1000).collect::<Vec<_>>());
    assert_eq!(whole, pieces);
    assert!(whole.0.starts_with("HTTP/1.1 413 "), "{}", whole.0);
    // Within its room, it is served however it comes.
    let mut r = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..1000 {
        r.extend_from_slice(b"1\r\nx\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    let whole = drive(&server(), &[&r]);
    assert_eq!(whole, drive(&server(), &r.chunks(1000).collect::<Vec<_>>()));
    assert!(whole.0.starts_with("HTTP/1.1 200 ") && whole.0.ends_with(&"x".repeat(1000)));
}

/// Requests whose responses do not depend on the pool.
fn any_request() -> impl Strategy<Value = Vec<u8>> {
    let body = prop::collection::vec(any::<u8>(), 0..300);
    (0..5usize, body).prop_map(|(which, body)| match which {
        0 => b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        1 => b"HEAD /json HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        2 => {
            let head = format!(
                "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut r = head.into_bytes();
            r.extend_from_slice(&body);
            r
        }
        3 => {
            let mut r =
                b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in body.chunks(37) {
                r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                r.extend_from_slice(chunk);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        }
        _ => b"DELETE /json HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
    })
}

proptest! {
    // Failures kept under `proptest-regressions/`, not next to the example
    // (proptest's default for a file beside a `main.rs`), and replayed first.
    #![proptest_config(fuzz::harness::config(256, concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proptest-regressions/http/tests.txt"
    )))]

    #[test]
    fn any_split_gives_the_responses_of_the_whole(
        requests in prop::collection::vec(any_request(), 1..10),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream = requests.concat();
        let whole = drive(&server(), &[&stream]);
        let chunks = frames::split(&stream, cuts.iter().map(|c| c.index(usize::MAX)));
        prop_assert_eq!(whole, drive(&server(), &chunks));
    }
}

/// The parser fuzzed: random, made and mutated requests, in pieces.
#[path = "fuzz.rs"]
mod fuzz;
