//! Fuzzing the parsers with proptest (issue 14): valid input mutated, the
//! checks every incremental parser must pass on every prefix of its input,
//! and a proptest configuration that keeps what fails under
//! `proptest-regressions/` and replays it first.
//!
//! Used by the `resp` and `http` examples' fuzz tests (with
//! `fuzz_serve.rs`, for what is theirs alone) and by the PROXY header's
//! (`src/proxy/tests.rs`), so it depends on `proptest` alone.

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence};

/// `cases` cases, or as many as `PROPTEST_CASES` says; a failure is kept in
/// `file` (a path from the crate's root, under `proptest-regressions/`)
/// and the cases kept there run first, before any new one.
pub fn config(cases: u32, file: &'static str) -> Config {
    let mut config = Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// One change to a valid input.
#[derive(Debug, Clone)]
pub enum Edit {
    /// The byte at an index replaced.
    Set(Index, u8),
    /// Bytes inserted before an index: one, or a word of the protocol
    /// (a number at a boundary, a delimiter).
    Insert(Index, Vec<u8>),
    /// A range of up to 8 bytes removed.
    Delete(Index, usize),
    /// Everything from an index on removed.
    Truncate(Index),
    /// A range of up to 16 bytes repeated in place.
    Repeat(Index, usize),
}

/// Edits that change a byte or insert `words` (or any byte).
pub fn edit(words: &'static [&'static [u8]]) -> impl Strategy<Value = Edit> {
    let word = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        prop::sample::select(words).prop_map(<[u8]>::to_vec),
    ];
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        3 => (any::<Index>(), word).prop_map(|(i, w)| Edit::Insert(i, w)),
        2 => (any::<Index>(), 1..8usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), 1..16usize).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

/// `input` with `edits` made in order.
pub fn apply(mut input: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let at = |i: &Index| i.index(input.len() + 1);
        match edit {
            Edit::Set(i, b) if !input.is_empty() => {
                let i = i.index(input.len());
                input[i] = *b;
            }
            Edit::Set(..) => {}
            Edit::Insert(i, word) => {
                let i = at(i);
                input.splice(i..i, word.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(i);
                input.drain(i..(i + n).min(input.len()));
            }
            Edit::Truncate(i) => input.truncate(at(i)),
            Edit::Repeat(i, n) => {
                let i = at(i);
                let range = i..(i + n).min(input.len());
                let copy = input[range.clone()].to_vec();
                input.splice(range.end..range.end, copy);
            }
        }
    }
    input
}

/// `valid` inputs with one to four edits.
pub fn mutated(
    valid: impl Strategy<Value = Vec<u8>>,
    words: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    (valid, prop::collection::vec(edit(words), 1..5))
        .prop_map(|(input, edits)| apply(input, &edits))
}

/// Bytes drawn mostly from the protocol's `words`, some from anywhere: a
/// random input that reaches past the first byte of the grammar.
pub fn wordy_bytes(
    words: &'static [&'static [u8]],
    len: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 1..4),
        3 => prop::sample::select(words).prop_map(<[u8]>::to_vec),
    ];
    prop::collection::vec(piece, len).prop_map(|pieces| pieces.concat())
}

/// What an incremental parser said of the bytes at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// A whole message of `len` bytes; `what` is what it says.
    Whole { len: usize, what: T },
    /// Not all there: the buffer is worth parsing again once it holds
    /// `need` bytes.
    More { need: usize },
    /// Not a valid message, whatever comes after.
    Error(T),
}

/// Parses every prefix of `input`, as a server that parses again after
/// every read would, and checks what an incremental parser promises:
/// - "need more" asks for more than there is, never for more than
///   `bound` (the longest message its limits allow), and is not said of a
///   prefix of `bound` bytes or more: past its limits a message ends in an
///   error, it cannot ask for more forever;
/// - a caller that waits for the `need` it was told misses no message: no
///   longer prefix short of it is whole (an error may show before, as a
///   parser that skips ahead sees it later);
/// - a whole message takes at least one byte, at most what there is and
///   at most `bound`, and is the same message whatever follows it;
/// - an error stays the same error whatever follows.
///
/// The verdict on the whole input.
pub fn check_prefixes<T: Debug + PartialEq>(
    input: &[u8],
    bound: usize,
    mut parse: impl FnMut(&[u8]) -> Verdict<T>,
) -> Result<Verdict<T>, TestCaseError> {
    let verdicts: Vec<Verdict<T>> = (0..=input.len()).map(|j| parse(&input[..j])).collect();
    // The first prefix length, from each on, that gives a whole message.
    let mut first_whole = vec![usize::MAX; verdicts.len() + 1];
    for (j, verdict) in verdicts.iter().enumerate().rev() {
        first_whole[j] = match verdict {
            Verdict::Whole { .. } => j,
            _ => first_whole[j + 1],
        };
    }
    for (j, verdict) in verdicts.iter().enumerate() {
        // A verdict that stands stands for every longer prefix if it does
        // for the next.
        let next = verdicts.get(j + 1);
        match verdict {
            Verdict::More { need } => {
                prop_assert!(*need > j, "{j} bytes: needs {need}");
                prop_assert!(*need <= bound, "{j} bytes: needs {need}, over {bound}");
                prop_assert!(j < bound, "{j} bytes, over {bound}: still needs more");
                let k = first_whole[j + 1];
                prop_assert!(
                    k >= *need,
                    "{j} bytes: needs {need}, {k}: {:?}",
                    verdicts[k]
                );
            }
            Verdict::Whole { len, .. } => {
                prop_assert!(
                    *len > 0 && *len <= j && *len <= bound,
                    "{j} bytes: {verdict:?}"
                );
                prop_assert!(
                    next.is_none_or(|v| v == verdict),
                    "{j}: {verdict:?}, then {next:?}"
                );
            }
            Verdict::Error(_) => {
                prop_assert!(
                    next.is_none_or(|v| v == verdict),
                    "{j}: {verdict:?}, then {next:?}"
                );
            }
        }
    }
    Ok(verdicts.into_iter().next_back().expect("the whole input's"))
}
