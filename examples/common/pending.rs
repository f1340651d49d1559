//! Requests split across reads, for the example protocol servers (`resp`,
//! `http`).
//!
//! A partial request at the end of a read is normally left in the pool's
//! buffer with [`Conn::keep`](pool_manager::Conn::keep). One longer than a
//! limit (half the read buffer, say) would leave too little room for the
//! next read, so it moves into the connection's own [`Pending`] buffer, which
//! grows with what the client actually sends, never with what it announces.
//! The last byte is still kept in the pool's buffer, so that the pool knows a
//! request is incomplete and its slow-client defence
//! ([`min_read_rate`](pool_manager::Config::min_read_rate)) applies.

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
    /// Whether to close once the replies are written.
    pub close: bool,
    /// The partial request is larger than the caller's limit: refuse it and
    /// close.
    pub too_large: bool,
}

/// A partial request too large to keep in the pool's buffer.
#[derive(Debug, Default)]
pub struct Pending {
    buf: Vec<u8>,
    need: usize,
}

impl Pending {
    /// Serves `data` (after any partial request held here) with `serve`, which
    /// answers the whole requests at the start of the buffer it is given.
    /// A partial request of more than `keep_limit` bytes moves here; one of
    /// more than `max` is `too_large`.
    pub fn feed(
        &mut self,
        data: &[u8],
        keep_limit: usize,
        max: usize,
        mut serve: impl FnMut(&[u8]) -> Served,
    ) -> Outcome {
        if self.buf.is_empty() {
            let served = serve(data);
            let rest = data.len() - served.consumed;
            if served.close || rest <= keep_limit {
                return Outcome {
                    keep: rest,
                    close: served.close,
                    too_large: false,
                };
            }
            self.buf.extend_from_slice(&data[served.consumed..]);
            self.need = served.need.saturating_sub(served.consumed);
            return self.keep_last_byte(max);
        }
        // `data` starts with the byte kept last time, which is not here.
        self.buf.extend_from_slice(data);
        if self.buf.len() < self.need {
            return self.keep_last_byte(max);
        }
        let served = serve(&self.buf);
        self.buf.drain(..served.consumed);
        self.need = served.need.saturating_sub(served.consumed);
        if self.buf.is_empty() {
            // Give a large buffer back once the request is done.
            if self.buf.capacity() > keep_limit {
                self.buf = Vec::new();
            }
            return Outcome {
                keep: 0,
                close: served.close,
                too_large: false,
            };
        }
        if served.close {
            return Outcome {
                keep: 0,
                close: true,
                too_large: false,
            };
        }
        // What is left is short, and all of it came in this read: back to
        // the pool's buffer, and the large one is given back.
        let rest = self.buf.len();
        if rest <= keep_limit && rest <= data.len() {
            self.buf = Vec::new();
            return Outcome {
                keep: rest,
                close: false,
                too_large: false,
            };
        }
        self.keep_last_byte(max)
    }

    /// Moves the last byte (the end of `data`) back to the pool's buffer.
    fn keep_last_byte(&mut self, max: usize) -> Outcome {
        let too_large = self.buf.len() > max;
        self.buf.pop();
        Outcome {
            keep: 1,
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
/// As [`Conn::write_all`]: the connection is closed.
pub fn finish<S>(conn: &mut Conn<'_, S>, outcome: Outcome, out: &mut Vec<u8>) -> io::Result<()> {
    conn.keep(outcome.keep);
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

/// Feeds `chunks` to `read` as the pool feeds a handler (the bytes kept
/// last time first, an empty read skipped), until `read` closes: every
/// reply, and whether it closed. For the examples' tests, without sockets.
#[cfg(test)]
pub fn feed_as_pool(
    chunks: &[&[u8]],
    mut read: impl FnMut(&[u8], &mut Vec<u8>) -> Outcome,
) -> (Vec<u8>, bool) {
    let (mut kept, mut all) = (Vec::new(), Vec::new());
    for chunk in chunks {
        let mut data = std::mem::take(&mut kept);
        data.extend_from_slice(chunk);
        if data.is_empty() {
            continue;
        }
        let outcome = read(&data, &mut all);
        if outcome.close {
            return (all, true);
        }
        kept = data[data.len() - outcome.keep.min(data.len())..].to_vec();
    }
    (all, false)
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

    /// Serves lines: each complete line is consumed.
    fn lines(buf: &[u8]) -> Served {
        let consumed = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        Served {
            consumed,
            need: 0,
            close: false,
        }
    }

    #[test]
    fn a_long_partial_request_moves_out_and_back() {
        let mut p = Pending::default();
        // Short partial line: kept in the pool's buffer.
        assert_eq!(p.feed(b"a\nbc", 4, 100, lines).keep, 2);
        // Long partial line: held here, its last byte kept by the pool.
        let out = p.feed(b"bcdefgh", 4, 100, lines);
        assert_eq!(
            out,
            Outcome {
                keep: 1,
                close: false,
                too_large: false
            }
        );
        assert_eq!(p.buf, b"bcdefg");
        // The pool gives the kept byte back first.
        let mut seen = Vec::new();
        let out = p.feed(b"hij\nk", 4, 100, |buf| {
            seen = buf.to_vec();
            lines(buf)
        });
        assert_eq!(seen, b"bcdefghij\nk");
        // What is left is short: back to the pool's buffer alone.
        assert_eq!(
            out,
            Outcome {
                keep: 1,
                close: false,
                too_large: false
            }
        );
        assert!(p.buf.is_empty());
    }

    #[test]
    fn a_request_over_the_limit_is_too_large() {
        let mut p = Pending::default();
        let out = p.feed(&[b'x'; 20], 4, 10, lines);
        assert_eq!(
            out,
            Outcome {
                keep: 1,
                close: true,
                too_large: true
            }
        );
    }

    #[test]
    fn nothing_is_served_again_before_the_needed_length() {
        let mut p = Pending::default();
        let mut calls = 0;
        let mut serve = |buf: &[u8]| {
            calls += 1;
            match buf.len() >= 10 {
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
            }
        };
        p.feed(b"12345", 2, 100, &mut serve);
        p.feed(b"56", 2, 100, &mut serve);
        p.feed(b"67", 2, 100, &mut serve);
        p.feed(b"7890", 2, 100, &mut serve);
        assert_eq!(calls, 2);
        assert!(p.buf.is_empty());
    }
}
