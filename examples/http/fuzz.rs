//! The HTTP request parser fuzzed (issue 14): random bytes, requests made
//! to the grammar (methods, paths, headers, bodies by length or chunked,
//! trailers), the same mutated, and any of them cut into reads and fed as
//! the pool feeds the server. Whatever the input: no panic, a defined
//! result on every prefix, nothing asked for or held past the limits.

use proptest::prelude::*;

use super::super::Http;
use super::super::frames;
use super::super::request::{HttpError, Limits, MAX_HEADERS, Parsed, parse};
use super::{any_request, drive, server};

#[path = "../common/fuzz.rs"]
pub(super) mod harness;
#[path = "../common/fuzz_serve.rs"]
mod serve;

use harness::Verdict;

/// Failures found are kept here, and replayed first.
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/http/fuzz.txt"
);

/// The words of the grammar, and numbers at the edges of the integer
/// types, decimal and hex.
const WORDS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"Host: a\r\n",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Expect: 100-continue\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b"0\r\n\r\n",
    b";ext=1",
    b": ",
    b" ",
    b"\t",
    b"0",
    b"1",
    b"a",
    b"ffffffffffffffff",
    b"fffffffffffffff",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775807",
];

/// What a request said, or why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Said {
    Request {
        method: String,
        path: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        keep_alive: bool,
        http10: bool,
    },
    Refused(HttpError),
}

/// The parser's verdict on `buf`, after checking that a body is within
/// its limit.
fn verdict(buf: &[u8], limits: &Limits) -> Verdict<Said> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse(buf, &mut headers, limits) {
        Ok(Parsed::Request { req, len }) => {
            assert!(
                req.body.len() <= limits.max_body,
                "a body of {}",
                req.body.len()
            );
            let what = Said::Request {
                method: req.method.to_string(),
                path: req.path.to_string(),
                headers: (req.headers.iter())
                    .map(|h| (h.name.to_string(), h.value.to_vec()))
                    .collect(),
                body: req.body.into_owned(),
                keep_alive: req.keep_alive,
                http10: req.http10,
            };
            Verdict::Whole { len, what }
        }
        Ok(Parsed::Incomplete { need, .. }) => Verdict::More { need },
        Err(e) => Verdict::Error(Said::Refused(e)),
    }
}

/// The longest request `limits` allow, as `--max-body-bytes` says (a
/// head, then a body and its chunk sizes in twice the body limit), and the
/// byte after it, which tells that a request is longer.
fn bound(limits: &Limits) -> usize {
    let body = limits.max_body.saturating_mul(2);
    limits.max_head.saturating_add(body).saturating_add(1)
}

/// Limits small enough that inputs of a few hundred bytes cross them, or
/// as large as a `usize` (so that sums of them overflow).
fn any_limits() -> impl Strategy<Value = Limits> {
    let huge = prop_oneof![Just(usize::MAX), Just(usize::MAX / 2)];
    prop_oneof![
        4 => (0..160usize, 0..80usize).prop_map(|(max_head, max_body)| Limits { max_head, max_body }),
        1 => (16..160usize, huge).prop_map(|(max_head, max_body)| Limits { max_head, max_body }),
        1 => (Just(usize::MAX), Just(usize::MAX)).prop_map(|(max_head, max_body)| Limits { max_head, max_body }),
    ]
}

/// Roomy enough for every request [`any_valid`] makes.
const ROOMY: Limits = Limits {
    max_head: 2048,
    max_body: 512,
};

/// How a made request frames its body.
#[derive(Debug, Clone)]
enum Body {
    None,
    Length(Vec<u8>),
    /// The data in chunks, each with an extension or not; trailers.
    Chunked(Vec<(Vec<u8>, bool)>, Vec<(String, String)>),
}

/// A valid request and what it says.
fn any_valid() -> impl Strategy<Value = (Vec<u8>, Said)> {
    let method = prop_oneof![
        prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
            .prop_map(str::to_string),
        "[A-Z]{1,8}",
    ];
    let path = ("/[a-z0-9/._-]{0,20}", prop::option::of("[a-z0-9=&]{0,10}"));
    let header = ("X-[A-Za-z0-9-]{0,10}", "[!-~]([ -~]{0,16}[!-~])?");
    let headers = prop::collection::vec(header, 0..6);
    let data = || prop::collection::vec(any::<u8>(), 0..100);
    let body = prop_oneof![
        Just(Body::None),
        data().prop_map(Body::Length),
        (
            prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 1..40), any::<bool>()),
                0..5
            ),
            prop::collection::vec(("X-[a-z]{1,6}", "[a-z]{0,6}"), 0..2),
        )
            .prop_map(|(chunks, trailers)| Body::Chunked(chunks, trailers)),
    ];
    let connection = prop::sample::select(vec![None, Some("close"), Some("keep-alive")]);
    (method, path, headers, body, connection, any::<bool>()).prop_map(
        |(method, (path, query), mut headers, body, connection, http10)| {
            // A chunked body is HTTP/1.1's.
            let http10 = http10 && !matches!(body, Body::Chunked(..));
            headers.insert(0, ("Host".to_string(), "a".to_string()));
            if let Some(c) = connection {
                headers.push(("Connection".to_string(), c.to_string()));
            }
            let mut wire = Vec::new();
            let body = match body {
                Body::None => Vec::new(),
                Body::Length(data) => {
                    headers.push(("Content-Length".to_string(), data.len().to_string()));
                    wire = data.clone();
                    data
                }
                Body::Chunked(chunks, trailers) => {
                    headers.push(("Transfer-Encoding".to_string(), "chunked".to_string()));
                    let mut data = Vec::new();
                    for (chunk, ext) in &chunks {
                        let ext = if *ext { ";name=value" } else { "" };
                        wire.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                        wire.extend_from_slice(chunk);
                        wire.extend_from_slice(b"\r\n");
                        data.extend_from_slice(chunk);
                    }
                    wire.extend_from_slice(b"0\r\n");
                    for (name, value) in trailers {
                        wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                    }
                    wire.extend_from_slice(b"\r\n");
                    data
                }
            };
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
            let mut request = format!("{method} {target} {version}\r\n");
            for (name, value) in &headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            let mut request = request.into_bytes();
            request.extend_from_slice(&wire);
            let said = Said::Request {
                method,
                path,
                headers: (headers.into_iter())
                    .map(|(n, v)| (n, v.into_bytes()))
                    .collect(),
                body,
                keep_alive: connection != Some("close")
                    && (!http10 || connection == Some("keep-alive")),
                http10,
            };
            (request, said)
        },
    )
}

/// Valid streams of one to three requests with edits, or random bytes,
/// under any limits.
fn any_input() -> impl Strategy<Value = (Vec<u8>, Limits)> {
    serve::any_input(serve::stream(any_valid(), 1..4), WORDS, any_limits())
}

proptest! {
    #![proptest_config(harness::config(512, REGRESSIONS))]

    /// Random and mutated input: a defined result on every prefix, within
    /// the limits; the requests after the first too.
    #[test]
    fn any_input_parses_to_a_defined_result((input, limits) in any_input()) {
        harness::check_prefixes(&input, bound(&limits), |b| verdict(b, &limits))?;
        serve::serve_all(&input, &mut Vec::new(), |b| verdict(b, &limits));
    }

    /// Valid requests say what they were made to say, whole or cut into
    /// reads anywhere, and every prefix of them passes the checks.
    #[test]
    fn valid_requests_parse_to_what_they_say(
        (stream, said) in serve::stream(any_valid(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        serve::check_valid(&stream, &said, cuts, bound(&ROOMY), |b| verdict(b, &ROOMY))?;
    }

    /// Cut into reads anywhere and fed as the pool feeds the server, any
    /// input gives the requests and the error of the whole, and the bytes
    /// held between reads stay within the longest request the limits allow.
    #[test]
    fn any_split_gives_the_requests_of_the_whole(
        (input, limits) in any_input(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        serve::check_split(&input, cuts, bound(&limits), |b| verdict(b, &limits))?;
    }

    /// The server itself, under any limits, given its own requests mutated
    /// or random bytes in any reads: no panic, the responses of the same
    /// input in one read (but for `100 Continue`, which depends on what a
    /// read holds), and a connection it closes was told so in its last
    /// response.
    #[test]
    fn the_server_answers_any_input_under_any_limits(
        input in prop_oneof![
            harness::mutated(prop::collection::vec(any_request(), 1..5).prop_map(|r| r.concat()), WORDS),
            serve::stream(any_valid(), 1..4).prop_map(|(bytes, _)| bytes),
            harness::wordy_bytes(WORDS, 0..60),
        ],
        limits in any_limits(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let http = Http { limits, ..server() };
        let (out, closed) = drive(&http, &frames::split(&input, cuts));
        let (all, all_closed) = drive(&http, &[&input]);
        let final_only = |s: &str| s.replace("HTTP/1.1 100 Continue", "").into_bytes();
        // The parser is held to the room a partial request has: the same
        // error however the input is cut.
        fn same(_: &[u8]) -> Option<&[u8]> {
            None
        }
        serve::check_like_whole((&final_only(&all), all_closed), (&final_only(&out), closed), same)?;
        if closed {
            let last = out.rsplit("HTTP/1.1 ").next().unwrap_or("");
            prop_assert!(last.contains("Connection: close"), "{out}");
        }
    }
}
