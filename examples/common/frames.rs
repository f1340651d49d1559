//! Requests split across reads, for the example protocol servers (`resp`,
//! `http`): what a server's pass over a buffer came to, and what to tell
//! the pool — keep the partial request at the end
//! ([`Conn::keep`](pool_manager::Conn::keep)) and, when its length is
//! known, call again only once it can be whole
//! ([`Conn::need`](pool_manager::Conn::need)). The pool gathers a request
//! larger than its read buffer itself, up to
//! [`max_frame_bytes`](pool_manager::Config::max_frame_bytes).

use std::io::{self, Write as _};

use pool_manager::Conn;

/// What serving a buffer came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Bytes of whole requests, answered.
    pub consumed: usize,
    /// When the request after them is incomplete: the least length of the
    /// buffer worth serving again (0 when unknown).
    pub need: usize,
    /// Whether to close once the replies are written.
    pub close: bool,
}

/// What to tell the pool after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes to [`keep`](pool_manager::Conn::keep).
    pub keep: usize,
    /// New bytes to [`need`](pool_manager::Conn::need) before the next
    /// call (0: any).
    pub more: usize,
    /// Whether to close once the replies are written.
    pub close: bool,
    /// The partial request is longer than the server's limit: refuse it
    /// and close.
    pub too_large: bool,
}

impl Outcome {
    /// What to tell the pool after serving a buffer of `len` bytes: keep
    /// the partial request, unless it is longer than `max`.
    pub fn of(served: Served, len: usize, max: usize) -> Outcome {
        let keep = len - served.consumed;
        if served.close {
            return Outcome {
                keep: 0,
                more: 0,
                close: true,
                too_large: false,
            };
        }
        let too_large = keep > max;
        Outcome {
            keep,
            more: served.need.saturating_sub(len),
            close: too_large,
            too_large,
        }
    }
}

/// Tells the pool what `outcome` says and writes the replies in `out` in
/// one write; a buffer grown large for one read is given back.
///
/// # Errors
///
/// As [`Conn::write_all`]: the connection is broken.
pub fn finish<S>(conn: &mut Conn<'_, S>, outcome: Outcome, out: &mut Vec<u8>) -> io::Result<()> {
    conn.keep(outcome.keep);
    conn.need(outcome.more);
    if outcome.close {
        conn.close();
    }
    let written = match out.is_empty() {
        true => Ok(()),
        false => conn.write_all(out),
    };
    if out.capacity() > 1 << 20 {
        *out = Vec::new();
    }
    written
}

/// Feeds `chunks` to `read` as the pool feeds a handler — the bytes kept
/// last time first; an empty read, or one that does not bring the bytes
/// the last call asked for, calls nothing — until `read` closes: every
/// reply, whether it closed, and the longest buffer `read` was given. For
/// the examples' tests, without sockets.
#[cfg(test)]
pub fn feed_as_pool(
    chunks: &[&[u8]],
    mut read: impl FnMut(&[u8], &mut Vec<u8>) -> Outcome,
) -> (Vec<u8>, bool, usize) {
    let (mut kept, mut all, mut want, mut longest) = (Vec::new(), Vec::new(), 0usize, 0);
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        kept.extend_from_slice(chunk);
        want = want.saturating_sub(chunk.len());
        if want > 0 {
            continue;
        }
        longest = longest.max(kept.len());
        let outcome = read(&kept, &mut all);
        if outcome.close {
            return (all, true, longest);
        }
        kept.drain(..kept.len() - outcome.keep.min(kept.len()));
        want = if kept.is_empty() { 0 } else { outcome.more };
    }
    (all, false, longest)
}

/// `stream` cut at each of `cuts` (taken modulo its length plus one), in
/// order: for "any split gives the same replies" properties.
#[cfg(test)]
pub fn split(stream: &[u8], cuts: impl IntoIterator<Item = usize>) -> Vec<&[u8]> {
    let mut at: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
    at.extend([0, stream.len()]);
    at.sort_unstable();
    at.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_request_is_kept_and_its_known_rest_awaited() {
        let served = Served {
            consumed: 4,
            need: 20,
            close: false,
        };
        let out = Outcome::of(served, 10, 100);
        assert_eq!((out.keep, out.more, out.close), (6, 10, false));
        // Longer than the limit: refused.
        assert!(Outcome::of(served, 200, 100).too_large);
    }

    #[test]
    fn nothing_is_served_again_before_the_needed_length() {
        let mut calls = 0;
        let (_, closed, longest) = feed_as_pool(&[b"12345", b"56", b"67", b"7890"], |buf, _| {
            calls += 1;
            let served = match buf.len() >= 10 {
                true => Served {
                    consumed: 10,
                    need: 0,
                    close: false,
                },
                false => Served {
                    consumed: 0,
                    need: 10,
                    close: false,
                },
            };
            Outcome::of(served, buf.len(), 100)
        });
        assert_eq!((calls, closed, longest), (2, false, 13));
    }
}
