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

/// A score as Redis 7.0 prints it: C's `%.17g` (`inf` and `-inf` for the
/// infinities).
pub fn score(out: &mut Vec<u8>, score: f64) {
    let text = match score {
        f64::INFINITY => "inf".to_string(),
        f64::NEG_INFINITY => "-inf".to_string(),
        _ => g17(score),
    };
    bulk(out, text.as_bytes());
}

/// `%.17g`: 17 significant digits, the exponent form below 1e-4 and from
/// 1e17 on, trailing zeros dropped.
fn g17(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{x:.16e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => s.to_string(),
        }
    };
    if !(-4..17).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim(mantissa), exp.unsigned_abs());
    }
    let decimals = (16 - exp).max(0) as usize;
    trim(&format!("{x:.decimals$}"))
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

#[cfg(test)]
mod tests {
    #[test]
    fn scores_print_as_redis_prints_them() {
        // Each as redis-server 7.0 answered ZSCORE.
        for (x, text) in [
            (1e300, "1.0000000000000001e+300"),
            (1.5, "1.5"),
            (0.1, "0.10000000000000001"),
            (-2.5e-10, "-2.5000000000000002e-10"),
            (3.0, "3"),
            (1e17, "1e+17"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0, "0"),
        ] {
            assert_eq!(super::g17(x), text, "{x}");
        }
    }
}
