//! The RESP parser fuzzed (issue 14): random bytes, requests made to the
//! grammar, the same mutated, and any of them cut into reads and fed as the
//! pool feeds the server. Whatever the input: no panic, a defined result on
//! every prefix, nothing asked for or held past the limits.

use std::ops::Range;

use proptest::prelude::*;

use super::super::Resp;
use super::super::frames;
use super::super::parse::{Limits, Parsed, ProtocolError, parse};
use super::{any_command, drive, server};

#[path = "../common/fuzz.rs"]
pub(super) mod harness;
#[path = "../common/fuzz_serve.rs"]
mod serve;

use harness::Verdict;

/// Failures found are kept here, and replayed first.
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/resp/fuzz.txt"
);

/// The words of the grammar, and numbers at the edges of the limits and
/// of the integer types.
const WORDS: &[&[u8]] = &[
    b"*",
    b"$",
    b"\r\n",
    b"\r",
    b"\n",
    b"*1\r\n",
    b"*2\r\n",
    b"$0\r\n",
    b"$3\r\n",
    b"0",
    b"1",
    b"-1",
    b"-",
    b"+",
    b" ",
    b"\t",
    b"\"",
    b"'",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551615",
    b"4611686018427387904",
    b"PING",
    b"SET",
    b"*9223372036854775807\r\n",
    b"*4611686018427387904\r\n",
    b"$9223372036854775807\r\n",
    b"$4611686018427387904\r\n",
    b"$-1\r\n",
];

/// What a request said: its arguments, or why it was refused.
type Said = Result<Vec<Vec<u8>>, ProtocolError>;

/// The parser's verdict on `buf`, after checking what a request says of
/// itself: its arguments inside it, in order, within the limits.
fn verdict(buf: &[u8], limits: &Limits, ranges: &mut Vec<Range<usize>>) -> Verdict<Said> {
    match parse(buf, limits, ranges) {
        Ok(Parsed::Request { len }) => {
            assert!(
                ranges.len() <= limits.max_args,
                "{} arguments",
                ranges.len()
            );
            let mut end = 0;
            for r in ranges.iter() {
                assert!(
                    end <= r.start && r.start <= r.end && r.end <= len,
                    "{r:?} of {len}"
                );
                assert!(r.len() <= limits.max_bulk.max(limits.max_inline), "{r:?}");
                end = r.end;
            }
            let args = ranges.iter().map(|r| buf[r.clone()].to_vec()).collect();
            Verdict::Whole {
                len,
                what: Ok(args),
            }
        }
        Ok(Parsed::Incomplete { need }) => Verdict::More { need },
        Err(e) => Verdict::Error(Err(e)),
    }
}

/// The longest request `limits` allow: a `*N` line, then `$LEN` lines and
/// their data; or an inline line.
fn bound(limits: &Limits) -> usize {
    let line = limits.max_inline.saturating_add(3);
    let arg = line.saturating_add(limits.max_bulk).saturating_add(2);
    let multibulk = line.saturating_add(arg.saturating_mul(limits.max_args));
    multibulk.max(limits.max_inline.saturating_add(1))
}

/// Limits small enough that inputs of a few hundred bytes cross them, or
/// as large as a `usize` (so that sums and products of them overflow).
fn any_limits() -> impl Strategy<Value = Limits> {
    let small = (0..64usize, 0..6usize, 1..24usize);
    let huge = prop_oneof![Just(usize::MAX), Just(usize::MAX / 2), Just(1 << 62)];
    prop_oneof![
        4 => small.prop_map(|(max_bulk, max_args, max_inline)| Limits { max_bulk, max_args, max_inline }),
        1 => (huge.clone(), huge, 1..24usize).prop_map(|(max_bulk, max_args, max_inline)| Limits { max_bulk, max_args, max_inline }),
    ]
}

/// Roomy enough for every request [`any_request`] makes.
const ROOMY: Limits = Limits {
    max_bulk: 64,
    max_args: 8,
    max_inline: 256,
};

/// A valid request and the arguments it says: multibulk with any bytes,
/// inline with plain or quoted words, or one without arguments.
fn any_request() -> impl Strategy<Value = (Vec<u8>, Said)> {
    let bulk = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8);
    let word = "[a-zA-Z0-9_:.-]{1,10}";
    let quoted = "[a-z ]{0,10}";
    let inline = prop::collection::vec(
        (
            prop_oneof![
                word.prop_map(|w| (w, None)),
                (quoted, prop::sample::select(vec!['"', '\''])).prop_map(|(w, q)| (w, Some(q)))
            ],
            "[ \t]{1,3}",
        ),
        1..8,
    );
    prop_oneof![
        3 => bulk.prop_map(|args| {
            let mut r = format!("*{}\r\n", args.len()).into_bytes();
            for a in &args {
                r.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                r.extend_from_slice(a);
                r.extend_from_slice(b"\r\n");
            }
            (r, args)
        }),
        2 => (inline, any::<bool>()).prop_map(|(words, crlf)| {
            let mut r = String::new();
            for (i, ((w, quote), space)) in words.iter().enumerate() {
                if i > 0 {
                    r.push_str(space);
                }
                match quote {
                    Some(q) => r.extend([q.to_string(), w.clone(), q.to_string()]),
                    None => r.push_str(w),
                }
            }
            r.push_str(if crlf { "\r\n" } else { "\n" });
            (r.into_bytes(), words.into_iter().map(|((w, _), _)| w.into_bytes()).collect())
        }),
        1 => prop::sample::select(vec![&b"\r\n"[..], b"\n", b"*0\r\n", b"*-1\r\n"]).prop_map(|r| (r.to_vec(), vec![])),
    ]
    .prop_map(|(request, args)| (request, Ok(args)))
}

/// Valid streams of one to three requests with edits, or random bytes,
/// under any limits.
fn any_input() -> impl Strategy<Value = (Vec<u8>, Limits)> {
    serve::any_input(serve::stream(any_request(), 1..4), WORDS, any_limits())
}

/// What the server wrote before the protocol error it ended with, if it
/// did: one past the limits of the parser in one read can be one past
/// `--max-request-bytes` in another.
fn before_error(out: &[u8]) -> Option<&[u8]> {
    let body = out.strip_suffix(b"\r\n")?;
    let start = body
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map_or(0, |i| i + 2);
    out[start..]
        .starts_with(b"-ERR Protocol error: ")
        .then_some(&out[..start])
}

proptest! {
    #![proptest_config(harness::config(512, REGRESSIONS))]

    /// Random and mutated input: a defined result on every prefix, within
    /// the limits; the requests after the first too.
    #[test]
    fn any_input_parses_to_a_defined_result((input, limits) in any_input()) {
        let mut ranges = Vec::new();
        harness::check_prefixes(&input, bound(&limits), |b| verdict(b, &limits, &mut ranges))?;
        serve::serve_all(&input, &mut Vec::new(), |b| verdict(b, &limits, &mut ranges));
    }

    /// Valid requests say what they were made to say, whole or cut into
    /// reads anywhere, and every prefix of them passes the checks.
    #[test]
    fn valid_requests_parse_to_their_arguments(
        (stream, said) in serve::stream(any_request(), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut ranges = Vec::new();
        serve::check_valid(&stream, &said, cuts, bound(&ROOMY), |b| verdict(b, &ROOMY, &mut ranges))?;
    }

    /// Cut into reads anywhere and fed as the pool feeds the server, any
    /// input gives the requests and the error of the whole, and the bytes
    /// held between reads stay within the longest request the limits allow.
    #[test]
    fn any_split_gives_the_requests_of_the_whole(
        (input, limits) in any_input(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut ranges = Vec::new();
        serve::check_split(&input, cuts, bound(&limits), |b| verdict(b, &limits, &mut ranges))?;
    }

    /// The server itself, under any limits, given real commands mutated or
    /// random bytes in any reads: no panic, the replies of the same input in
    /// one read, and a connection it closes was answered with an error (or
    /// `QUIT`'s `+OK`) last.
    #[test]
    fn the_server_answers_any_input_under_any_limits(
        input in prop_oneof![
            harness::mutated(prop::collection::vec(any_command(), 1..8).prop_map(|c| c.concat()), WORDS),
            serve::stream(any_request(), 1..4).prop_map(|(bytes, _)| bytes),
            harness::wordy_bytes(WORDS, 0..60),
        ],
        limits in any_limits(),
        max_request in prop_oneof![0..200usize, Just(usize::MAX)],
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let resp = || Resp { limits, max_request, ..server() };
        let (out, closed) = drive(&resp(), &frames::split(&input, cuts));
        let (all, all_closed) = drive(&resp(), &[&input]);
        serve::check_like_whole((&all, all_closed), (&out, closed), before_error)?;
        let text = String::from_utf8_lossy(&out);
        if closed {
            let last = text.trim_end_matches("\r\n").rsplit("\r\n").next().unwrap_or("");
            prop_assert!(last.starts_with("-ERR Protocol error: ") || last == "+OK", "{text}");
        }
    }
}
