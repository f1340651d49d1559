//! RESP2 on the wire, for the pub/sub load tool and the tokio pub/sub
//! peer: a command encoded, and values parsed off an async stream.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// One RESP2 value.
#[derive(Debug, PartialEq)]
pub enum Value {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// A command as a RESP array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The longest bulk string taken, as Redis's `proto-max-bulk-len`.
const MAX_BULK: usize = 512 << 20;
/// The most elements of one array, as Redis's.
const MAX_ARRAY: usize = 1 << 20;
/// Arrays nested deeper than this are refused.
const MAX_DEPTH: usize = 8;

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("RESP: {what}"))
}

/// The value at the start of `buf` and its length; `None`: not all of it
/// is here yet.
///
/// # Errors
///
/// Bytes that are not RESP2, or past the bounds above.
pub fn parse(buf: &[u8]) -> io::Result<Option<(Value, usize)>> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> io::Result<Option<(Value, usize)>> {
    let Some(line_end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[at..at + line_end].split_first() else {
        return Err(malformed("empty line"));
    };
    let next = at + line_end + 2;
    let number = || -> io::Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("bad number"))
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(line.to_vec()), next))),
        b'-' => Ok(Some((Value::Error(line.to_vec()), next))),
        b':' => Ok(Some((Value::Int(number()?), next))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            let len = usize::try_from(len).map_err(|_| malformed("bad length"))?;
            if len > MAX_BULK {
                return Err(malformed("bulk string too long"));
            }
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            if &buf[next + len..next + len + 2] != b"\r\n" {
                return Err(malformed("bulk string not ended by CRLF"));
            }
            let bytes = buf[next..next + len].to_vec();
            Ok(Some((Value::Bulk(Some(bytes)), next + len + 2)))
        }
        b'*' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Value::Array(None), next)));
            }
            let count = usize::try_from(count).map_err(|_| malformed("bad length"))?;
            if count > MAX_ARRAY || depth >= MAX_DEPTH {
                return Err(malformed("array too large or too deep"));
            }
            let mut items = Vec::with_capacity(count.min(64));
            let mut at = next;
            for _ in 0..count {
                let Some((item, end)) = parse_at(buf, at, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at = end;
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        _ => Err(malformed("unknown type byte")),
    }
}

/// Values read off a stream, through a buffer of its own.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: Vec::with_capacity(16 << 10),
            start: 0,
        }
    }

    /// The next value already read off the stream, if all of it is here.
    ///
    /// # Errors
    ///
    /// Bytes that are not RESP2.
    pub fn buffered(&mut self) -> io::Result<Option<Value>> {
        match parse(&self.buf[self.start..])? {
            Some((value, len)) => {
                self.start += len;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(value))
            }
            None => Ok(None),
        }
    }

    /// The next value; `None` at the end of the stream between values.
    ///
    /// # Errors
    ///
    /// The stream's, bytes that are not RESP2, or an end in mid-value.
    pub async fn next(&mut self) -> io::Result<Option<Value>> {
        loop {
            if let Some(value) = self.buffered()? {
                return Ok(Some(value));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Into the spare capacity, which `read_buf` does not zero (a
            // 16 KiB zero fill a read was most of this tool's own cost at
            // fan-out rates).
            if self.buf.capacity() - self.buf.len() < (4 << 10) {
                self.buf.reserve(16 << 10);
            }
            match self.inner.read_buf(&mut self.buf).await? {
                0 if self.buf.is_empty() => return Ok(None),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                _ => {}
            }
        }
    }
}
