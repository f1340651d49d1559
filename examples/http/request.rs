//! HTTP/1.1 requests: the head parsed by `httparse`, the body framed by
//! `Content-Length` or `Transfer-Encoding: chunked`.
//!
//! Parsing starts again from the request's first byte after every read
//! until the request is whole; [`Parsed::Incomplete`] says how many bytes
//! are worth waiting for, so a large body is not parsed again at every read.

use std::borrow::Cow;

use httparse::{Header, Status};

/// Most headers in a request.
pub const MAX_HEADERS: usize = 64;

/// Limits on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request head (request line and headers), in bytes.
    pub max_head: usize,
    /// Longest body, in bytes.
    pub max_body: usize,
}

impl Limits {
    /// The most bytes one request may take: a head, and twice the longest
    /// body, for a chunked body's sizes besides. A chunked body that takes
    /// more (small chunks, long extensions) is refused as too large.
    pub fn max_request(&self) -> usize {
        (self.max_body.saturating_mul(2)).saturating_add(self.max_head)
    }
}

/// Why a request cannot be served; each is answered with its status, then
/// the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed: 400.
    BadRequest(&'static str),
    /// The head is over [`Limits::max_head`], or has too many headers: 431.
    HeadTooLarge,
    /// The body is over [`Limits::max_body`]: 413.
    BodyTooLarge,
    /// A transfer coding other than `chunked`: 501.
    NotImplemented,
    /// Not HTTP/1.0 or HTTP/1.1: 505.
    Version,
}

impl HttpError {
    /// The response's status code.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::NotImplemented => 501,
            HttpError::Version => 505,
        }
    }
}

/// A whole request.
#[derive(Debug)]
pub struct Request<'b, 'h> {
    /// `GET`, `POST`, …
    pub method: &'b str,
    /// The path, without the query.
    pub path: &'b str,
    /// Its headers.
    pub headers: &'h [Header<'b>],
    /// The body: borrowed from the read buffer, or decoded from chunks.
    pub body: Cow<'b, [u8]>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// HTTP/1.0 rather than 1.1.
    pub http10: bool,
}

impl Request<'_, '_> {
    /// The first header called `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        (self.headers.iter())
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// What [`parse`] found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed<'b, 'h> {
    /// A whole request of `len` bytes.
    Request {
        /// The request.
        req: Request<'b, 'h>,
        /// Bytes it takes, from the start of the buffer.
        len: usize,
    },
    /// Not all there yet.
    Incomplete {
        /// The least length of the buffer worth parsing again.
        need: usize,
        /// The head is whole, asks for `100 Continue`, and the body has not
        /// come yet.
        expects_continue: bool,
    },
}

/// Parses the request at the start of `buf` (its headers go into
/// `headers`).
///
/// # Errors
///
/// An [`HttpError`] for a request that cannot be served; the connection
/// cannot be trusted to be in step after it.
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>; MAX_HEADERS],
    limits: &Limits,
) -> Result<Parsed<'b, 'h>, HttpError> {
    let mut req = httparse::Request::new(headers);
    // No more than a head's worth is parsed, so that the verdict on a head
    // does not depend on bytes past the limit (nor on how they were cut
    // into reads).
    let head = match req.parse(within(buf, 0, limits.max_head)) {
        Ok(Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Ok(Status::Partial) if buf.len() > limits.max_head => return Err(HttpError::HeadTooLarge),
        Ok(Status::Partial) => {
            return Ok(Parsed::Incomplete {
                need: buf.len() + 1,
                expects_continue: false,
            });
        }
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(e) => return Err(HttpError::BadRequest(error_text(e))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("incomplete request line"));
    };
    let headers: &'h [Header<'b>] = req.headers;
    let http10 = version == 0;
    let mut framing = Framing::None;
    let (mut close, mut keep_alive_token) = (false, false);
    let mut expects_continue = false;
    let mut host = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let len = content_length(h.value)?;
            framing = match framing {
                Framing::None => Framing::Length(len),
                Framing::Length(l) if l == len => framing,
                _ => return Err(HttpError::BadRequest("conflicting body lengths")),
            };
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if http10 || matches!(framing, Framing::Length(_)) {
                return Err(HttpError::BadRequest("conflicting body lengths"));
            }
            if !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::NotImplemented);
            }
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            // HTTP/1.0 clients must not be sent `100 Continue`.
            expects_continue = !http10 && h.value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        }
    }
    // `close` wins; HTTP/1.0 stays open only when asked.
    let keep_alive = !close && (!http10 || keep_alive_token);
    if !http10 && !host {
        return Err(HttpError::BadRequest("no Host header"));
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let (body, len) = match framing {
        Framing::None => (Cow::Borrowed(&buf[head..head]), head),
        Framing::Length(n) if n > limits.max_body as u64 => return Err(HttpError::BodyTooLarge),
        Framing::Length(n) => {
            // Saturating: the limit may be as large as a `usize`.
            let end = head.saturating_add(n as usize);
            if buf.len() < end {
                return Ok(Parsed::Incomplete {
                    need: end,
                    expects_continue,
                });
            }
            (Cow::Borrowed(&buf[head..end]), end)
        }
        // Only the bytes a request may take are walked, so that a body past
        // them is refused whatever follows and however it is cut.
        Framing::Chunked => {
            match chunked(within(buf, 0, limits.max_request()), head, limits, None)? {
                Chunked::Whole(end) => {
                    let mut body = Vec::new();
                    chunked(buf, head, limits, Some(&mut body))?;
                    (Cow::Owned(body), end)
                }
                Chunked::Incomplete { need } if need > limits.max_request() => {
                    return Err(HttpError::BodyTooLarge);
                }
                Chunked::Incomplete { need } => {
                    let started = buf.len() > head;
                    let expects_continue = expects_continue && !started;
                    return Ok(Parsed::Incomplete {
                        need,
                        expects_continue,
                    });
                }
            }
        }
    };
    let req = Request {
        method,
        path,
        headers,
        body,
        keep_alive,
        http10,
    };
    Ok(Parsed::Request { req, len })
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn content_length(value: &[u8]) -> Result<u64, HttpError> {
    let bad = HttpError::BadRequest("invalid Content-Length");
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(bad)
}

/// How far a chunked body goes.
enum Chunked {
    /// Whole, its trailers included, up to this index.
    Whole(usize),
    /// Not yet: the least length worth parsing again.
    Incomplete { need: usize },
}

/// Walks the chunked body that starts at `at`, copying its data into
/// `body` when given (the caller walks once without, to learn whether the
/// body is whole, then once with: a body arriving in many reads is not
/// copied at every read).
fn chunked(
    buf: &[u8],
    mut at: usize,
    limits: &Limits,
    mut body: Option<&mut Vec<u8>>,
) -> Result<Chunked, HttpError> {
    let mut total = 0usize;
    loop {
        // A size is hex digits: not an empty line nor a bare extension,
        // which `parse_chunk_size` would read as 0, the last chunk.
        match buf.get(at) {
            None => return Ok(Chunked::Incomplete { need: at + 1 }),
            Some(b) if b.is_ascii_hexdigit() => {}
            Some(_) => return Err(HttpError::BadRequest("invalid chunk size")),
        }
        let (skip, size) = match httparse::parse_chunk_size(within(buf, at, limits.max_head)) {
            Ok(Status::Complete(found)) => found,
            Ok(Status::Partial) if buf.len() - at > limits.max_head => {
                return Err(HttpError::BadRequest("chunk size line too long"));
            }
            Ok(Status::Partial) => {
                return Ok(Chunked::Incomplete {
                    need: buf.len() + 1,
                });
            }
            Err(_) => return Err(HttpError::BadRequest("invalid chunk size")),
        };
        // The size line ends in CRLF, with no bare LF before.
        let line = &buf[at..at + skip];
        if !line.ends_with(b"\r\n") || line[..skip - 2].contains(&b'\n') {
            return Err(HttpError::BadRequest("invalid chunk size line"));
        }
        at += skip;
        if size == 0 {
            break;
        }
        if size > (limits.max_body - total) as u64 {
            return Err(HttpError::BodyTooLarge);
        }
        let end = at.saturating_add(size as usize);
        if buf.len() < end.saturating_add(2) {
            return Ok(Chunked::Incomplete {
                need: end.saturating_add(2),
            });
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(HttpError::BadRequest("chunk without CRLF"));
        }
        if let Some(body) = body.as_deref_mut() {
            body.extend_from_slice(&buf[at..end]);
        }
        total += size as usize;
        at = end + 2;
    }
    // Trailer fields (ignored), then an empty line: parsed as headers.
    let mut trailers = [httparse::EMPTY_HEADER; 16];
    match httparse::parse_headers(within(buf, at, limits.max_head), &mut trailers) {
        Ok(Status::Complete((n, _))) => Ok(Chunked::Whole(at + n)),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::HeadTooLarge),
        Ok(Status::Partial) if buf.len() - at > limits.max_head => Err(HttpError::HeadTooLarge),
        Ok(Status::Partial) => Ok(Chunked::Incomplete {
            need: buf.len() + 1,
        }),
        Err(_) => Err(HttpError::BadRequest("invalid trailer")),
    }
}

/// The bytes of `buf` from `at`, at most `max` of them.
fn within(buf: &[u8], at: usize, max: usize) -> &[u8] {
    &buf[at..buf.len().min(at.saturating_add(max))]
}

fn error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        _ => "malformed request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 256,
        max_body: 64,
    };

    fn outcome(buf: &[u8]) -> Result<(u16, usize, Vec<u8>, bool), String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(buf, &mut headers, &LIMITS) {
            Ok(Parsed::Request { req, len }) => {
                Ok((200, len, req.body.into_owned(), req.keep_alive))
            }
            Ok(Parsed::Incomplete { need, .. }) => Err(format!("incomplete {need}")),
            Err(e) => Ok((e.status(), 0, Vec::new(), false)),
        }
    }

    #[test]
    fn bodies_by_length_and_by_chunks() {
        let r = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET";
        assert_eq!(outcome(r), Ok((200, r.len() - 3, b"abc".to_vec(), true)));
        let r = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: y\r\n\r\n";
        assert_eq!(outcome(r), Ok((200, r.len(), b"abcde".to_vec(), true)));
        let r = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(outcome(r), Ok((200, r.len(), vec![], false)));
        let r = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(outcome(r), Ok((200, r.len(), vec![], true)));
        // The trailers end at their empty line: what follows is the next
        // request, not more trailers.
        let r = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nGET";
        assert_eq!(outcome(r), Ok((200, r.len() - 3, vec![], true)));
        let r = b"GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n";
        assert_eq!(outcome(r), Ok((200, r.len(), vec![], false)));
    }

    #[test]
    fn bad_requests_get_their_status() {
        for (r, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], 400),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n",
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n",
                400,
            ),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"G\x01T / HTTP/1.1\r\n\r\n", 400),
            (&[b'a'; 300], 431),
        ] {
            assert_eq!(outcome(r).map(|o| o.0), Ok(status), "{}", r.escape_ascii());
        }
        let mut big = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        big.extend_from_slice(b"40\r\n");
        big.extend_from_slice(&[b'x'; 64]);
        big.extend_from_slice(b"\r\n1\r\n");
        assert_eq!(outcome(&big).map(|o| o.0), Ok(413));
    }

    #[test]
    fn partial_requests_say_what_they_need() {
        let r = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(r, &mut headers, &LIMITS) {
            Ok(Parsed::Incomplete {
                need,
                expects_continue,
            }) => {
                assert_eq!(need, r.len() + 10);
                assert!(expects_continue);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(outcome(b"GET / HT"), Err("incomplete 9".to_string()));
    }

    /// Found by fuzzing: a head past the limit was 431 when cut into reads
    /// but 400 when whole (the parser read past the limit and found a bad
    /// byte there).
    #[test]
    fn a_head_past_the_limit_is_too_large_however_it_is_cut() {
        let mut r = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
        r.resize(300, b'a');
        r.extend_from_slice(b"\r\nBad Header\r\n\r\n");
        assert_eq!(outcome(&r[..LIMITS.max_head + 1]).map(|o| o.0), Ok(431));
        assert_eq!(outcome(&r).map(|o| o.0), Ok(431));
    }

    /// Found by fuzzing: a chunk size line longer than a head was refused
    /// when it came in pieces and taken when it came whole.
    #[test]
    fn a_chunk_size_line_past_the_limit_is_refused_however_it_is_cut() {
        let mut r = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        let line = r.len();
        r.resize(line + LIMITS.max_head, b'e');
        r.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        for end in [line + LIMITS.max_head, r.len()] {
            assert_eq!(outcome(&r[..end]).map(|o| o.0), Ok(400), "{end}");
        }
    }

    /// Found by fuzzing: under a body limit as large as a `usize`, the
    /// length a body announced overflowed where the request ends.
    #[test]
    fn a_huge_body_limit_does_not_overflow_the_end_of_the_body() {
        let limits = Limits {
            max_head: 256,
            max_body: usize::MAX,
        };
        let r = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(r, &mut headers, &limits) {
            Ok(Parsed::Incomplete { need, .. }) => assert_eq!(need, usize::MAX),
            other => panic!("{other:?}"),
        }
    }
}
