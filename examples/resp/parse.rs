//! The RESP2 request parser: multibulk (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`,
//! what every client library sends) and inline (`PING\r\n`, what a person
//! types into `telnet`).
//!
//! It never copies: a command's arguments are ranges into the caller's
//! buffer. It never allocates a size a client announces: a bulk length or an
//! argument count over the limits is refused before anything is reserved.
//! An incomplete request is not an error; the caller reads more and parses
//! again from the request's first byte.

use std::fmt;
use std::ops::Range;

/// Limits on one request; over any of them the request is a protocol error.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest bulk argument, in bytes (Redis: 512 MB).
    pub max_bulk: usize,
    /// Most arguments in one command (Redis: 1,048,576).
    pub max_args: usize,
    /// Longest inline request line, and longest `*N` / `$N` header line
    /// (Redis: 64 KiB).
    pub max_inline: usize,
}

/// What [`parse`] found at the start of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request of `len` bytes; its arguments are in `args` (none for
    /// an empty line or `*0`, which Redis skips without a reply).
    Request {
        /// Bytes the request takes, from the start of the buffer.
        len: usize,
    },
    /// The request is not all there; nothing can be said before the buffer
    /// holds at least `need` bytes.
    Incomplete {
        /// The least length of the buffer worth parsing again.
        need: usize,
    },
}

/// A request that cannot be a valid one. The text is Redis's own, after
/// `-ERR Protocol error: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// `*N` with N not a number, or over [`Limits::max_args`].
    MultibulkLength,
    /// An argument of a multibulk request that does not start with `$`.
    ExpectedDollar(u8),
    /// `$N` with N not a number, negative, or over [`Limits::max_bulk`].
    BulkLength,
    /// A bulk argument not followed by CRLF.
    BulkEnd,
    /// An inline request line longer than [`Limits::max_inline`].
    BigInline,
    /// A `*N` header line longer than [`Limits::max_inline`].
    BigMultibulkCount,
    /// A `$N` header line longer than [`Limits::max_inline`].
    BigBulkCount,
    /// An inline argument with an opening quote and no closing one.
    UnbalancedQuotes,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::MultibulkLength => f.write_str("invalid multibulk length"),
            ProtocolError::ExpectedDollar(got) => {
                write!(f, "expected '$', got '{}'", got.escape_ascii())
            }
            ProtocolError::BulkLength => f.write_str("invalid bulk length"),
            ProtocolError::BulkEnd => f.write_str("expected CRLF after bulk data"),
            ProtocolError::BigInline => f.write_str("too big inline request"),
            ProtocolError::BigMultibulkCount => f.write_str("too big mbulk count string"),
            ProtocolError::BigBulkCount => f.write_str("too big bulk count string"),
            ProtocolError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
        }
    }
}

/// Parses the request at the start of `buf`. On [`Parsed::Request`], `args`
/// holds the ranges of its arguments in `buf` (it is cleared first).
///
/// # Errors
///
/// A [`ProtocolError`] when the bytes cannot begin a valid request: the
/// connection cannot be resynchronised and should be closed.
pub fn parse(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    args.clear();
    match buf.first() {
        None => Ok(Parsed::Incomplete { need: 1 }),
        Some(b'*') => multibulk(buf, limits, args),
        Some(_) => inline(buf, limits, args),
    }
}

/// The shortest argument of a multibulk request: `$0\r\n\r\n`.
const MIN_ARG: usize = 6;

/// `*N\r\n` then N times `$LEN\r\nDATA\r\n`.
fn multibulk(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let Some((count, mut at)) = header(buf, 1, limits, ProtocolError::BigMultibulkCount)? else {
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    let count = match count {
        // Redis skips `*0` and `*-1` (any non-positive count).
        Some(n) if n <= 0 => return Ok(Parsed::Request { len: at }),
        Some(n) if n as u64 <= limits.max_args as u64 => n as usize,
        _ => return Err(ProtocolError::MultibulkLength),
    };
    for i in 0..count {
        // The least the request can still take: `$0\r\n\r\n` per argument
        // to come. A partial request is parsed again from its start, so a
        // long one trickled in is not parsed again at every byte. (Sums
        // saturate: under limits near `usize::MAX` what a request announces
        // could overflow them.)
        let least = |from: usize| from.max(at.saturating_add(MIN_ARG.saturating_mul(count - i)));
        match buf.get(at) {
            None => {
                return Ok(Parsed::Incomplete {
                    need: least(at + 1),
                });
            }
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedDollar(other)),
        }
        let Some((len, data)) = header(buf, at + 1, limits, ProtocolError::BigBulkCount)? else {
            return Ok(Parsed::Incomplete {
                need: least(buf.len() + 1),
            });
        };
        let len = match len {
            Some(n) if n >= 0 && n as u64 <= limits.max_bulk as u64 => n as usize,
            _ => return Err(ProtocolError::BulkLength),
        };
        let end = data.saturating_add(len);
        if buf.len() < end.saturating_add(2) {
            let rest = MIN_ARG.saturating_mul(count - i - 1);
            return Ok(Parsed::Incomplete {
                need: end.saturating_add(2).saturating_add(rest),
            });
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::BulkEnd);
        }
        args.push(data..end);
        at = end + 2;
    }
    Ok(Parsed::Request { len: at })
}

/// The number on the header line that starts at `from` (after `*` or `$`):
/// `Some((number, index after its CRLF))`, `None` while the line is
/// incomplete. The number is `None` when it is not a decimal `i64`.
#[allow(clippy::type_complexity)]
fn header(
    buf: &[u8],
    from: usize,
    limits: &Limits,
    too_big: ProtocolError,
) -> Result<Option<(Option<i64>, usize)>, ProtocolError> {
    let rest = &buf[from.min(buf.len())..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        if rest.len() > limits.max_inline {
            return Err(too_big);
        }
        return Ok(None);
    };
    if cr > limits.max_inline {
        return Err(too_big);
    }
    match rest.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        // A CR without LF inside a number: not a number.
        Some(_) => return Ok(Some((None, from + cr + 2))),
    }
    let number = std::str::from_utf8(&rest[..cr])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        // Redis's string2ll takes no sign but `-`, and no leading zeros.
        .filter(|_| rest[0] != b'+' && !(cr > 1 && rest[0] == b'0'));
    Ok(Some((number, from + cr + 2)))
}

/// A line of space-separated arguments ending in `\n` (or `\r\n`); an
/// argument may be quoted with `"` or `'` to hold spaces (escapes inside
/// quotes are not interpreted).
fn inline(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline {
            return Err(ProtocolError::BigInline);
        }
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    if nl > limits.max_inline {
        return Err(ProtocolError::BigInline);
    }
    let end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut at = 0;
    while at < end {
        match buf[at] {
            b' ' | b'\t' | b'\r' => at += 1,
            quote @ (b'"' | b'\'') => {
                let close = buf[at + 1..end]
                    .iter()
                    .position(|&b| b == quote)
                    .ok_or(ProtocolError::UnbalancedQuotes)?;
                let stop = at + 1 + close;
                // Redis wants a space (or the end) after a closing quote.
                if stop + 1 < end && !matches!(buf[stop + 1], b' ' | b'\t') {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                push_arg(args, at + 1..stop, limits)?;
                at = stop + 1;
            }
            _ => {
                let stop = buf[at..end]
                    .iter()
                    .position(|&b| matches!(b, b' ' | b'\t' | b'\r'))
                    .map_or(end, |i| at + i);
                push_arg(args, at..stop, limits)?;
                at = stop;
            }
        }
    }
    Ok(Parsed::Request { len: nl + 1 })
}

fn push_arg(
    args: &mut Vec<Range<usize>>,
    arg: Range<usize>,
    limits: &Limits,
) -> Result<(), ProtocolError> {
    if args.len() == limits.max_args {
        return Err(ProtocolError::MultibulkLength);
    }
    args.push(arg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk: 1024,
        max_args: 8,
        max_inline: 64,
    };

    fn words(buf: &[u8]) -> Result<(Parsed, Vec<&[u8]>), ProtocolError> {
        let mut args = Vec::new();
        let parsed = parse(buf, &LIMITS, &mut args)?;
        Ok((parsed, args.into_iter().map(|r| &buf[r]).collect()))
    }

    #[test]
    fn multibulk_and_inline_requests() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nrest";
        let (parsed, args) = words(buf).unwrap();
        assert_eq!(parsed, Parsed::Request { len: buf.len() - 4 });
        assert_eq!(args, [&b"GET"[..], b"k"]);

        let (parsed, args) = words(b"set k \"a b\" 'c'\r\nPING").unwrap();
        assert_eq!(parsed, Parsed::Request { len: 17 });
        assert_eq!(args, [&b"set"[..], b"k", b"a b", b"c"]);

        // Empty lines and `*0` are requests without arguments.
        assert_eq!(
            words(b"\r\n").unwrap(),
            (Parsed::Request { len: 2 }, vec![])
        );
        assert_eq!(
            words(b"*0\r\n").unwrap(),
            (Parsed::Request { len: 4 }, vec![])
        );
    }

    #[test]
    fn incomplete_requests_say_how_much_is_needed() {
        let full = b"*1\r\n$4\r\nPING\r\n";
        for cut in 0..full.len() {
            let (parsed, _) = words(&full[..cut]).unwrap();
            let Parsed::Incomplete { need } = parsed else {
                panic!("{cut}: {parsed:?}");
            };
            assert!(need > cut && need <= full.len(), "{cut}: {need}");
        }
        assert_eq!(
            words(b"*1\r\n$4\r\nPI").unwrap().0,
            Parsed::Incomplete { need: 14 }
        );
    }

    #[test]
    fn bad_requests_are_protocol_errors_before_any_allocation() {
        for (buf, error) in [
            (&b"*x\r\n"[..], ProtocolError::MultibulkLength),
            (b"*9\r\n", ProtocolError::MultibulkLength),
            (b"*99999999999999999999\r\n", ProtocolError::MultibulkLength),
            (b"*1\r\n+OK\r\n", ProtocolError::ExpectedDollar(b'+')),
            (b"*1\r\n$-1\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$1025\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$2\r\nabcd", ProtocolError::BulkEnd),
            (&[b'a'; 65], ProtocolError::BigInline),
            (b"say \"hi\r\n", ProtocolError::UnbalancedQuotes),
            (b"a b c d e f g h i\r\n", ProtocolError::MultibulkLength),
        ] {
            assert_eq!(words(buf), Err(error), "{}", buf.escape_ascii());
        }
        let long = [&b"*1\r\n$"[..], &[b'1'; 70]].concat();
        assert_eq!(words(&long), Err(ProtocolError::BigBulkCount));
    }

    /// Found by fuzzing: under limits near `usize::MAX`, the length a
    /// request needs overflowed (a panic in a debug build).
    #[test]
    fn huge_limits_and_announced_lengths_do_not_overflow() {
        let huge = Limits {
            max_bulk: usize::MAX,
            max_args: usize::MAX,
            max_inline: 64,
        };
        let max = b"9223372036854775807\r\n";
        let count = [&b"*"[..], max].concat();
        let bulk = [&count, &b"$"[..], max].concat();
        for buf in [&count[..], &bulk, &[&bulk[..], b"abc"].concat()] {
            let parsed = parse(buf, &huge, &mut Vec::new());
            let Ok(Parsed::Incomplete { need }) = parsed else {
                panic!("{}: {parsed:?}", buf.escape_ascii());
            };
            assert!(need > buf.len(), "{}: {need}", buf.escape_ascii());
        }
    }
}
