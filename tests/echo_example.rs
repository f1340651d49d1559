//! The echo example as a user runs it: a bad flag combination is one line and
//! a non-zero exit; SIGTERM drains, prints the stop report and exits 0.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use util::process::{Example, number_after};
use util::*;

#[test]
fn an_invalid_combination_is_one_line_and_exit_code_2() {
    let out = Command::new(example_bin("echo"))
        .args(["--min-workers", "9", "--max-workers", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("min_workers (9) is above max_workers (2)"));
    assert!(!stderr.contains("panicked"));
}

fn start_echo(extra: &[&str]) -> Example {
    let mut flags = vec!["--read-deadline-ms", "0"];
    flags.extend_from_slice(extra);
    Example::start("echo", &flags)
}

/// SIGTERM: the example must exit 0 and report `drained` connections.
fn sigterm_and_expect_drained(server: Example, drained: usize) {
    let (status, lines) = server.sigterm();
    assert!(status.success());
    let expected = format!("{drained} drained");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stopped in") && l.contains(&expected)),
        "{lines:?}"
    );
}

fn run_until_sigterm(extra: &[&str]) {
    let server = start_echo(extra);
    let mut c = client(server.addr);
    roundtrip(&mut c, b"hello", b"hello");
    let reader = std::thread::spawn(move || read_to_close(&mut c).unwrap());
    sigterm_and_expect_drained(server, 1);
    assert_eq!(reader.join().unwrap(), b"", "the idle client is closed");
}

/// Parked mode from the command line: 20 clients on 2 workers, and a
/// slowloris closed by the minimum rate.
#[test]
fn parked_mode_flags_serve_more_clients_than_workers() {
    let server = start_echo(&[
        "--max-workers",
        "2",
        "--park-after-ms",
        "5",
        "--lines",
        "--min-read-rate",
        "50",
        "--min-read-rate-window-ms",
        "300",
        "--first-byte-deadline-ms",
        "5000",
        "--max-lifetime-ms",
        "60000",
        "--stats-every-ms",
        "100",
    ]);
    // In dedicated mode the third client would get the busy reply.
    let mut clients: Vec<_> = (0..20).map(|_| client(server.addr)).collect();
    for c in &mut clients {
        roundtrip(c, b"hi\n", b"hi\n");
    }
    let mut slow = client(server.addr);
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    // A byte every 100 ms or so (10 B/s, under 50 B/s) until the server
    // closes the connection.
    loop {
        assert!(started.elapsed() < WAIT, "the slow client was never closed");
        if std::io::Write::write_all(&mut slow, b"z").is_err() {
            break;
        }
        match std::io::Read::read(&mut slow, &mut [0; 8]) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            _ => {}
        }
    }
    // Counted as too slow (the first-byte deadline and lifetime are far
    // off), and as nothing else.
    let line = server.expect_line("slow 1,");
    assert_eq!(number_after(&line, "deadline"), 0, "{line}");
    assert_eq!(number_after(&line, "closed"), 1, "{line}");
    for c in &mut clients {
        roundtrip(c, b"again\n", b"again\n");
    }
    sigterm_and_expect_drained(server, 20);
}

#[test]
fn sigterm_drains_reports_and_exits_0_with_the_built_in_acceptor() {
    run_until_sigterm(&[]);
}

#[test]
fn sigterm_drains_reports_and_exits_0_with_its_own_accept_loop() {
    run_until_sigterm(&["--own-accept-loop"]);
}

/// `openssl s_client` completes a handshake with the echo example over TLS
/// and gets its line back; the example counts the handshake.
#[cfg(feature = "tls")]
#[test]
fn openssl_s_client_gets_its_echo_over_tls() {
    use std::io::Write;
    use std::process::Stdio;
    let Some(openssl) = util::process::tool("openssl") else {
        return;
    };
    let cert = util::tls::TestCert::new();
    let files = cert.files();
    let mut flags = vec!["--read-deadline-ms", "1000", "--stats-every-ms", "100"];
    flags.extend_from_slice(&files.flags());
    let server = Example::start("echo", &flags);
    let mut child = Command::new(openssl)
        .args(["s_client", "-connect", &server.addr.to_string()])
        .args(["-servername", "localhost", "-quiet", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello over tls\n")
        .unwrap();
    // The example closes the connection after its read deadline; s_client
    // then exits.
    let status = util::process::wait_exit(&mut child, Duration::from_secs(20));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains("hello over tls"), "{status:?}: {out:?}");
    let (status, lines) = server.sigterm();
    assert!(status.success());
    assert!(
        lines.iter().any(|l| l.contains("tls handshakes 1")),
        "{lines:?}"
    );
}
