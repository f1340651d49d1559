//! RESP2 replies, appended to an output buffer that is written once per
//! read: pipelined commands are answered in one write.

use std::io::Write;

/// `+OK`-style status.
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An error; `msg` starts with its code (`ERR`, `WRONGTYPE`, …).
pub fn error(out: &mut Vec<u8>, msg: &str) {
    out.push(b'-');
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An integer.
pub fn int(out: &mut Vec<u8>, n: i64) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, ":{n}\r\n");
}

/// A bulk string.
pub fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "${}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The null bulk string (a missing key).
pub fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// The header of an array of `n` elements, which follow.
pub fn array(out: &mut Vec<u8>, n: usize) {
    let _ = write!(out, "*{n}\r\n");
}

/// A score as Redis prints it: integral scores without a fraction,
/// infinities as `inf`/`-inf`, the rest with up to 17 significant digits.
pub fn score(out: &mut Vec<u8>, score: f64) {
    let text = if score.is_infinite() {
        if score > 0.0 {
            "inf".to_string()
        } else {
            "-inf".to_string()
        }
    } else if score == score.trunc() && score.abs() < 1e17 {
        format!("{score:.0}")
    } else {
        format!("{score}")
    };
    bulk(out, text.as_bytes());
}

/// `WRONGTYPE`: the key holds another type.
pub fn wrong_type(out: &mut Vec<u8>) {
    error(
        out,
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    );
}

/// Redis's error for an argument that should be an integer.
pub fn not_integer(out: &mut Vec<u8>) {
    error(out, "ERR value is not an integer or out of range");
}

/// Redis's error for a malformed option list.
pub fn syntax(out: &mut Vec<u8>) {
    error(out, "ERR syntax error");
}
