//! The examples' parsers fuzzed as their servers use them (issue 14):
//! every request of a buffer in turn, and of reads fed as the pool feeds
//! the server (kept bytes first, a known rest awaited); the checks
//! that valid requests say what they were made to say, and that any input
//! cut into reads gives what it gives whole.
//!
//! Included by `resp/fuzz.rs` and `http/fuzz.rs`, each a module of its
//! example's `tests`, next to `fuzz.rs` as `harness`: so `frames` is
//! three levels up, at the example's root.

use std::fmt::Debug;
use std::ops::Range;

use proptest::prelude::*;

use super::super::super::frames::{self, Outcome, Served};
use super::harness::{self, Verdict};

/// Every message at the start of `buf` in turn, as a server's read loop
/// takes them: what each said (and what the error that ends them says, if
/// one does) goes to `log`.
pub fn serve_all<T>(
    buf: &[u8],
    log: &mut Vec<T>,
    mut parse: impl FnMut(&[u8]) -> Verdict<T>,
) -> Served {
    let mut at = 0;
    loop {
        match parse(&buf[at..]) {
            Verdict::Whole { len, what } => {
                log.push(what);
                at += len;
            }
            Verdict::More { need } => {
                return Served {
                    consumed: at,
                    need: at.saturating_add(need),
                    close: false,
                };
            }
            Verdict::Error(what) => {
                log.push(what);
                return Served {
                    consumed: at,
                    need: 0,
                    close: true,
                };
            }
        }
    }
}

/// Every message of `chunks`, fed as the pool feeds a server: each read
/// after the bytes kept last time, a partial message of known length
/// awaited whole; at most `max` bytes kept. What the messages said, and
/// the longest buffer the parser was given.
pub fn in_pieces<T>(
    chunks: &[&[u8]],
    max: usize,
    mut parse: impl FnMut(&[u8]) -> Verdict<T>,
) -> (Vec<T>, usize) {
    let mut log = Vec::new();
    let (_, _, longest) = frames::feed_as_pool(chunks, |data, _| {
        let outcome = Outcome::of(serve_all(data, &mut log, &mut parse), data.len(), max);
        assert!(
            !outcome.too_large,
            "a message the parser would take refused as too large"
        );
        outcome
    });
    (log, longest)
}

/// A number of valid messages one after the other: the bytes, and what
/// each says.
pub fn stream<T: Debug>(
    message: impl Strategy<Value = (Vec<u8>, T)>,
    count: Range<usize>,
) -> impl Strategy<Value = (Vec<u8>, Vec<T>)> {
    prop::collection::vec(message, count).prop_map(|messages| {
        let bytes = messages.iter().flat_map(|(m, _)| m.clone()).collect();
        (bytes, messages.into_iter().map(|(_, said)| said).collect())
    })
}

/// Short valid streams with edits, or random bytes, with limits.
pub fn any_input<T: Debug, L: Debug>(
    stream: impl Strategy<Value = (Vec<u8>, Vec<T>)>,
    words: &'static [&'static [u8]],
    limits: impl Strategy<Value = L>,
) -> impl Strategy<Value = (Vec<u8>, L)> {
    let input = prop_oneof![
        harness::mutated(stream.prop_map(|(bytes, _)| bytes), words),
        harness::wordy_bytes(words, 0..60),
    ];
    (input, limits)
}

/// A valid `stream` says `said`, whole and cut at `cuts`, and every prefix
/// of it passes [`harness::check_prefixes`].
pub fn check_valid<T: Debug + PartialEq>(
    stream: &[u8],
    said: &[T],
    cuts: Vec<usize>,
    bound: usize,
    mut parse: impl FnMut(&[u8]) -> Verdict<T>,
) -> Result<(), TestCaseError> {
    let mut log = Vec::new();
    let served = serve_all(stream, &mut log, &mut parse);
    prop_assert_eq!(&log[..], said);
    prop_assert_eq!((served.consumed, served.close), (stream.len(), false));
    let chunks = frames::split(stream, cuts);
    prop_assert_eq!(&in_pieces(&chunks, bound, &mut parse).0[..], said);
    harness::check_prefixes(stream, bound, parse)?;
    Ok(())
}

/// Any `input` cut at `cuts` and fed as the pool feeds the server gives
/// the messages and the error of the whole (an error may still wait for
/// the bytes the parser asked for, which the prefix checks bound); the
/// bytes held between reads stay within `bound`, the longest message the
/// limits allow.
pub fn check_split<T: Debug + PartialEq>(
    input: &[u8],
    cuts: Vec<usize>,
    bound: usize,
    mut parse: impl FnMut(&[u8]) -> Verdict<T>,
) -> Result<(), TestCaseError> {
    let chunks = frames::split(input, cuts);
    let (split, longest) = in_pieces(&chunks, bound, &mut parse);
    let mut all = Vec::new();
    let whole = serve_all(input, &mut all, &mut parse);
    let waiting = split.len() + 1 == all.len() && whole.close;
    prop_assert!(
        split == all || (waiting && all.starts_with(&split)),
        "{split:?} {all:?}"
    );
    let read = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
    prop_assert!(
        longest <= bound.max(8).saturating_add(read),
        "{longest} > {bound} + {read}"
    );
    Ok(())
}

/// What a server wrote, and whether it closed, for input cut into reads
/// (`split`) against the same input in one read (`whole`): the same; or
/// the same but for the error that ends the whole, which in pieces still
/// waits for the bytes the parser asked for; or both end in an error, not
/// the same one (`before_error` gives what came before an error that ends
/// the output), after the same replies.
pub fn check_like_whole(
    whole: (&[u8], bool),
    split: (&[u8], bool),
    before_error: impl Fn(&[u8]) -> Option<&[u8]>,
) -> Result<(), TestCaseError> {
    let waiting = whole.1 && !split.1 && whole.0.starts_with(split.0);
    let errors = match (before_error(whole.0), before_error(split.0)) {
        (Some(w), Some(s)) => whole.1 && split.1 && w == s,
        _ => false,
    };
    prop_assert!(
        split == whole || waiting || errors,
        "whole: {} ({}), in pieces: {} ({})",
        whole.0.escape_ascii(),
        whole.1,
        split.0.escape_ascii(),
        split.1
    );
    Ok(())
}
