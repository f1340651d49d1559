//! HTTP/1.1 responses, appended to the output buffer that is written once
//! per read: pipelined requests are answered in order, in one write.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Headers besides `Date`, `Server`, `Content-Type`, `Content-Length`
    /// and `Connection`.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status` and a `text/plain` body.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::with_type(status, "text/plain; charset=utf-8", body)
    }

    /// A `200` with a JSON body.
    pub fn json(body: impl Into<Vec<u8>>) -> Response {
        Response::with_type(200, "application/json", body)
    }

    /// A response with `status`, `content_type` and `body`.
    pub fn with_type(
        status: u16,
        content_type: &'static str,
        body: impl Into<Vec<u8>>,
    ) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The status's own text as the body: for errors.
    pub fn status(status: u16) -> Response {
        Response::text(status, format!("{}\n", reason(status)))
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Appends the response to `out`: without the body for a `HEAD`
    /// request, with `Connection: close` unless `keep_alive`.
    pub fn write(&self, out: &mut Vec<u8>, head_only: bool, keep_alive: bool, http10: bool) {
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nServer: pool-manager\r\nDate: ",
            self.status,
            reason(self.status)
        );
        date(out);
        let _ = write!(
            out,
            "\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        match (keep_alive, http10) {
            (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
            (true, true) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            (true, false) => {}
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The reason phrase of `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

thread_local! {
    /// The `Date` of the current second, formatted once per second per
    /// worker.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current `Date` (IMF-fixdate).
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_has_every_header_a_client_expects() {
        let mut out = Vec::new();
        Response::text(200, "hi")
            .header("Allow", "GET")
            .write(&mut out, false, false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nServer: pool-manager\r\nDate: "),
            "{text}"
        );
        for line in [
            "Content-Length: 2\r\n",
            "Allow: GET\r\n",
            "Connection: close\r\n",
        ] {
            assert!(text.contains(line), "{text}");
        }
        assert!(text.ends_with("\r\n\r\nhi"), "{text}");
        let date = text
            .split("Date: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    #[test]
    fn head_responses_have_no_body_but_its_length() {
        let mut out = Vec::new();
        Response::text(200, "hello").write(&mut out, true, true, false);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Content-Length: 5\r\n") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
    }
}
