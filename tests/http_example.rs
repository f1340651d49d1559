//! The `http` example driven by real HTTP clients — `curl`, `wrk`, `ab`
//! (Debian's `curl`, `wrk`, `apache2-utils`) — and by raw sockets for what
//! well-behaved clients never send.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use util::process::{Example, run, run_ok, tool};
use util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// `curl` with `args` against `server`; its standard output.
fn curl(server: &Example, args: &[&str]) -> String {
    let curl = tool("curl").expect("checked by the caller");
    let out = run(
        Command::new(curl).args(["-s", "--max-time", "10"]).args(
            args.iter()
                .map(|a| a.replace("ADDR", &server.addr.to_string())),
        ),
        LIMIT,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_gets_every_route_and_every_refusal() {
    if tool("curl").is_none() {
        return;
    }
    let server = Example::start(
        "http",
        &["--max-body-bytes", "1000", "--max-head-bytes", "2048"],
    );
    let hello = curl(&server, &["-i", "http://ADDR/"]);
    assert!(hello.starts_with("HTTP/1.1 200 OK\r\n"), "{hello}");
    assert!(
        hello.contains("\r\nDate: ") && hello.contains("\r\nServer: pool-manager"),
        "{hello}"
    );
    assert!(hello.ends_with("\r\n\r\nHello, World!"), "{hello}");
    assert_eq!(
        curl(&server, &["http://ADDR/json"]),
        r#"{"message":"Hello, World!"}"#
    );
    assert_eq!(
        curl(&server, &["-d", "ping=1", "http://ADDR/echo"]),
        "ping=1"
    );
    let head = curl(&server, &["-I", "http://ADDR/"]);
    assert!(
        head.contains("Content-Length: 13\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let status = |args: &[&str]| -> String {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        curl(&server, &all)
    };
    assert_eq!(status(&["http://ADDR/nope"]), "404");
    let refused = curl(&server, &["-i", "-X", "DELETE", "http://ADDR/"]);
    assert!(
        refused.starts_with("HTTP/1.1 405") && refused.contains("Allow: GET, HEAD\r\n"),
        "{refused}"
    );
    let big = "x".repeat(2000);
    assert_eq!(status(&["-d", &big, "http://ADDR/echo"]), "413");
    let header = format!("X-Big: {}", "y".repeat(3000));
    assert_eq!(status(&["-H", &header, "http://ADDR/"]), "431");
    // A body with `Expect: 100-continue`, and a chunked one.
    let body = "b".repeat(900);
    let args = [
        "-H",
        "Expect: 100-continue",
        "-d",
        &body,
        "http://ADDR/echo",
    ];
    assert_eq!(curl(&server, &args), body);
    let args = [
        "-H",
        "Transfer-Encoding: chunked",
        "-d",
        "chunks",
        "http://ADDR/echo",
    ];
    assert_eq!(curl(&server, &args), "chunks");
    // The pool's statistics, as JSON.
    let stats: serde_json::Value =
        serde_json::from_str(&curl(&server, &["http://ADDR/stats"])).unwrap();
    assert!(stats["connections"].as_u64().unwrap() >= 10, "{stats}");
    let (status, lines) = server.sigterm();
    assert!(status.success(), "{lines:?}");
}

#[test]
fn curl_reuses_its_connection() {
    let Some(curl) = tool("curl") else {
        return;
    };
    let server = Example::start("http", &[]);
    let url = format!("http://{}/", server.addr);
    let out = run(Command::new(curl).args(["-sv", &url, &url]), LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // curl 7 says "Re-using existing connection", curl 8 "Re-using
    // existing http: connection".
    assert!(stderr.contains("Re-using existing"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello, World!Hello, World!"
    );
}

/// Pipelined requests answered in order; `Connection: close` honoured;
/// garbage answered 400 and closed.
#[test]
fn pipelining_close_and_garbage_over_a_raw_socket() {
    let server = Example::start("http", &[]);
    let mut c = client(server.addr);
    c.write_all(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /json HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlast",
    )
    .unwrap();
    let all = String::from_utf8(read_to_close(&mut c).unwrap()).unwrap();
    let hello = all.find("Hello, World!").unwrap();
    let json = all.find(r#"{"message""#).unwrap();
    let last = all.find("Connection: close\r\n\r\nlast").unwrap();
    assert!(
        hello < json && json < last && all.ends_with("last"),
        "{all}"
    );
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");

    let mut c = client(server.addr);
    c.write_all(b"BLAH\x01\r\n\r\n").unwrap();
    let reply = String::from_utf8(read_to_close(&mut c).unwrap()).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.contains("Connection: close\r\n"), "{reply}");
}

/// A request that stops half-way is closed at the read deadline, counted.
#[test]
fn an_unfinished_request_is_closed_at_the_read_deadline() {
    let server = Example::start("http", &["--read-deadline-ms", "200"]);
    let mut c = client(server.addr);
    c.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    assert_eq!(read_to_close(&mut c).unwrap(), b"");
    let mut s = client(server.addr);
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let reply = String::from_utf8(read_to_close(&mut s).unwrap()).unwrap();
    let body = reply.split("\r\n\r\n").nth(1).unwrap();
    let stats: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(stats["closed_read_deadline"], 1, "{stats}");
}

/// A client the pool cannot take gets a proper 503.
#[test]
fn a_refused_client_gets_503() {
    let server = Example::start("http", &["--dedicated", "--max-workers", "1"]);
    let mut first = client(server.addr);
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = [0; 512];
    assert!(std::io::Read::read(&mut first, &mut buf).unwrap() > 0);
    let mut second = client(server.addr);
    let reply = String::from_utf8(read_to_close(&mut second).unwrap()).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{reply}"
    );
    assert!(reply.contains("Connection: close\r\n"), "{reply}");
}

#[test]
fn wrk_sees_no_errors() {
    let Some(wrk) = tool("wrk") else {
        return;
    };
    let server = Example::start("http", &[]);
    let url = format!("http://{}/", server.addr);
    let out = run_ok(
        Command::new(wrk).args(["-t2", "-c100", "-d3s", &url]),
        LIMIT,
    );
    assert!(!out.contains("Socket errors"), "{out}");
    assert!(!out.contains("Non-2xx"), "{out}");
    let rate: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in {out}"));
    assert!(rate > 0.0, "{out}");
}

#[test]
fn ab_keep_alive_sees_no_errors() {
    let Some(ab) = tool("ab") else {
        return;
    };
    let server = Example::start("http", &[]);
    let url = format!("http://{}/", server.addr);
    let out = run_ok(
        Command::new(ab).args(["-q", "-k", "-n", "5000", "-c", "20", &url]),
        LIMIT,
    );
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    assert_eq!(field("Complete requests:"), 5000, "{out}");
    assert_eq!(field("Failed requests:"), 0, "{out}");
    assert_eq!(field("Keep-Alive requests:"), 5000, "{out}");
    assert!(!out.contains("Non-2xx"), "{out}");
}

/// `curl --insecure https://…` gets every page of the http example over
/// TLS, on one connection, and `wrk` loads it over TLS without errors.
#[cfg(feature = "tls")]
#[test]
fn curl_and_wrk_over_https() {
    let Some(curl_bin) = tool("curl") else {
        return;
    };
    let cert = util::tls::TestCert::new();
    let files = cert.files();
    let server = Example::start("http", &files.flags());
    let hello = curl(&server, &["--insecure", "-i", "https://ADDR/"]);
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    assert_eq!(
        curl(
            &server,
            &["--insecure", "-d", "ping=1", "https://ADDR/echo"]
        ),
        "ping=1"
    );
    // Two requests, one connection, one handshake.
    let url = format!("https://{}/", server.addr);
    let out = run(
        Command::new(&curl_bin).args(["-sv", "--insecure", &url, &url]),
        LIMIT,
    );
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(verbose.contains("TLSv1.3"), "{verbose}");
    assert!(verbose.contains("Re-using"), "{verbose}");
    // Plain HTTP to the TLS port gets no page.
    assert!(!curl(&server, &["-i", "http://ADDR/"]).contains("200"));
    let stats: serde_json::Value =
        serde_json::from_str(&curl(&server, &["--insecure", "https://ADDR/stats"])).unwrap();
    // The four curl runs over TLS so far (this one included), a handshake
    // each; the plain one failed its handshake.
    assert_eq!(stats["tls_handshakes"], 4, "{stats}");
    assert_eq!(stats["tls_handshakes_failed"], 1, "{stats}");
    if let Some(wrk) = tool("wrk") {
        let out = run_ok(
            Command::new(wrk).args(["-t1", "-c8", "-d1s", &format!("https://{}/", server.addr)]),
            LIMIT,
        );
        assert!(out.contains("Requests/sec"), "{out}");
        assert!(!out.contains("Socket errors"), "{out}");
        assert!(!out.contains("Non-2xx"), "{out}");
    }
}

/// `GET /metrics` in Prometheus' text format, published at the request;
/// `GET /ready` turns 503 once SIGTERM began the drain.
#[test]
fn curl_gets_metrics_and_readiness() {
    if tool("curl").is_none() {
        return;
    }
    let server = Example::start("http", &["--accept-grace-ms", "3000"]);
    assert_eq!(curl(&server, &["http://ADDR/ready"]), "ready");
    let metrics = curl(&server, &["http://ADDR/metrics"]);
    if cfg!(feature = "metrics") {
        // This request and the /ready one before it.
        assert!(
            metrics.contains("pool_manager_connections_total 2"),
            "{metrics}"
        );
        assert!(metrics.contains("# TYPE pool_manager_closed_total counter"));
        assert!(metrics.contains(r#"pool_manager_closed_total{reason="eof"}"#));
    } else {
        assert!(
            metrics.contains("without the `metrics` feature"),
            "{metrics}"
        );
    }
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.expect_line("accepting for 3000 ms more");
    let ready = curl(&server, &["-i", "http://ADDR/ready"]);
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, _) = server.wait_exit();
    assert!(status.success());
}

/// `curl --haproxy-protocol` (a PROXY v1 header before the request) gets
/// its page from `http --proxy-protocol`; a plain request there is closed
/// unanswered, counted as a failed header.
#[test]
fn curl_with_a_proxy_header_behind_proxy_protocol() {
    if tool("curl").is_none() {
        return;
    }
    let server = Example::start("http", &["--proxy-protocol"]);
    assert_eq!(
        curl(&server, &["--haproxy-protocol", "http://ADDR/"]),
        "Hello, World!"
    );
    let plain = run(
        Command::new(tool("curl").unwrap()).args([
            "-s",
            "--max-time",
            "10",
            &format!("http://{}/", server.addr),
        ]),
        LIMIT,
    );
    assert!(!plain.status.success(), "{plain:?}");
    let stats: serde_json::Value =
        serde_json::from_str(&curl(&server, &["--haproxy-protocol", "http://ADDR/stats"])).unwrap();
    assert_eq!(stats["closed_proxy_header"], 1, "{stats}");
    assert_eq!(stats["proxy_headers"], 2, "{stats}");
}
