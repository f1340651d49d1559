//! An HTTP/1.1 server with a route map on the pool (the use case of
//! `httppool`, one of the libraries this crate grew from).
//!
//! ```text
//! cargo run --release --example http                # listens on 127.0.0.1:8080
//! curl -i localhost:8080/json                        # in another terminal
//! wrk -t2 -c100 -d5s http://127.0.0.1:8080/
//! ```
//!
//! Routes: `GET /` (`Hello, World!`), `GET /json`, `POST /echo` (the body
//! back), `GET /stats` (the pool's statistics as JSON), `GET /metrics`
//! (the same in Prometheus' text format, with `--features metrics`) and
//! `GET /ready` (`200`, or `503` once SIGTERM began the drain: a readiness
//! probe);
//! `HEAD` for each `GET`; `404` and `405` with `Allow` for the rest.
//!
//! HTTP as clients expect it: keep-alive by default (HTTP/1.0 with
//! `Connection: keep-alive`), `Connection: close` honoured, pipelined
//! requests answered in order and in one write, bodies by `Content-Length`
//! or chunked, across reads, `Expect: 100-continue`, `Date` and `Server`
//! headers. Bad input is answered and the connection closed: `400` for a
//! malformed request, `431` for a head over `--max-head-bytes`, `413` for a
//! body over `--max-body-bytes`, `501` for a transfer coding other than
//! chunked, `505` for a version other than 1.0 and 1.1. A client the pool
//! cannot take gets `503` with `Connection: close`. A connection silent for
//! the read deadline (60 s unless `--read-deadline-ms` says otherwise) is
//! closed and counted; `--min-read-rate` closes one that trickles a request.

#[path = "../common/frames.rs"]
mod frames;
mod request;
mod response;
mod router;
#[path = "../common/serve.rs"]
mod serve;

use std::cell::RefCell;
use std::io;
use std::process::ExitCode;

use clap::Parser;
use pool_manager::{Conn, Handler, Manager, Stats};

use frames::{Outcome, Served};
use request::{Limits, MAX_HEADERS, Parsed};
use response::Response;
use router::Router;
use serve::PoolArgs;

/// An HTTP/1.1 server with a route map on a pool-manager worker pool.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Longest request head (request line and headers), in bytes; past it
    /// the answer is 431.
    #[arg(long, default_value_t = 8 * 1024)]
    max_head_bytes: usize,
    /// Longest request body, in bytes; past it the answer is 413 (as for a
    /// chunked body whose chunk sizes take it past twice this).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    #[command(flatten)]
    pool: PoolArgs,
}

/// Idle keep-alive connections are closed after this long unless
/// `--read-deadline-ms` says otherwise.
const READ_DEADLINE_MS: u64 = 60_000;

/// What a client the pool cannot take is sent.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: pool-manager\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\nRetry-After: 1\r\n\
Connection: close\r\n\r\nServer is too busy.\n";

/// The server, shared by every worker.
struct Http {
    router: Router,
    limits: Limits,
}

/// A connection's state.
#[derive(Default)]
struct Session {
    /// `100 Continue` was sent for the request in progress.
    continued: bool,
}

thread_local! {
    /// One worker's output buffer, reused: the responses of one read.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Http {
    /// Answers every whole request at the start of `buf` into `out`.
    fn serve(&self, buf: &[u8], out: &mut Vec<u8>, continued: &mut bool) -> Served {
        let mut at = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match request::parse(&buf[at..], &mut headers, &self.limits) {
                Ok(Parsed::Request { req, len }) => {
                    *continued = false;
                    let response = self.router.dispatch(&req);
                    let head_only = req.method == "HEAD";
                    response.write(out, head_only, req.keep_alive, req.http10);
                    at += len;
                    if !req.keep_alive {
                        return Served {
                            consumed: at,
                            need: 0,
                            close: true,
                        };
                    }
                }
                Ok(Parsed::Incomplete {
                    need,
                    expects_continue,
                }) => {
                    if expects_continue && !*continued {
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        *continued = true;
                    }
                    return Served {
                        consumed: at,
                        need: at.saturating_add(need),
                        close: false,
                    };
                }
                Err(e) => {
                    log::debug!("bad request: {e:?}");
                    Response::status(e.status()).write(out, false, false, false);
                    return Served {
                        consumed: at,
                        need: 0,
                        close: true,
                    };
                }
            }
        }
    }
}

impl Handler for Http {
    type State = Session;

    fn open(&self, _conn: &mut Conn<'_>) -> Session {
        Session::default()
    }

    fn data(&self, conn: &mut Conn<'_, Session>, data: &[u8]) -> io::Result<()> {
        OUT.with_borrow_mut(|out| {
            out.clear();
            let outcome = self.read(conn.state(), data, out);
            frames::finish(conn, outcome, out)
        })
    }
}

impl Http {
    /// Serves one read: the responses go to `out`; what to keep and
    /// whether to close are returned.
    fn read(&self, session: &mut Session, data: &[u8], out: &mut Vec<u8>) -> Outcome {
        let mut continued = session.continued;
        // Room for a whole head and body, and chunk sizes besides: as much
        // as the parser takes.
        let max = self.limits.max_request();
        let served = self.serve(data, out, &mut continued);
        let outcome = Outcome::of(served, data.len(), max);
        session.continued = continued;
        if outcome.too_large {
            Response::status(413).write(out, false, false, false);
        }
        outcome
    }
}

/// The pool's statistics as JSON.
fn stats_json(s: &Stats) -> String {
    serde_json::json!({
        "running": s.running,
        "workers": s.workers,
        "busy": s.busy,
        "idle": s.idle,
        "queued": s.queued,
        "parked": s.parked,
        "connections": s.connections,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "rejected": s.rejected.total(),
        "closed": s.closed.total(),
        "closed_read_deadline": s.closed.read_deadline,
        "closed_by_handler": s.closed.handler,
        "workers_spawned": s.workers_spawned,
        "workers_retired": s.workers_retired,
        "closed_handshake": s.closed.handshake,
        "tls_handshakes": s.tls.handshakes,
        "tls_handshakes_failed": s.tls.failed.total(),
        "tls_connections": s.tls.current,
        "closed_proxy_header": s.closed.proxy_header,
        "proxy_headers": s.proxy.headers,
    })
    .to_string()
}

/// The process's Prometheus recorder (the `metrics` feature).
#[cfg(feature = "metrics")]
static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// `GET /metrics`: the pool's metrics, published now, in Prometheus' text
/// format; `501` in a build without the `metrics` feature.
fn metrics(_: &request::Request<'_, '_>) -> Response {
    #[cfg(feature = "metrics")]
    if let (Some(publish), Some(prometheus)) = (serve::PUBLISH.get(), PROMETHEUS.get()) {
        publish();
        return Response::with_type(200, "text/plain; version=0.0.4", prometheus.render());
    }
    Response::text(501, "built without the `metrics` feature\n")
}

fn routes() -> Router {
    Router::new()
        .route("GET", "/", |_| Response::text(200, "Hello, World!"))
        .route("GET", "/json", |_| {
            Response::json(r#"{"message":"Hello, World!"}"#)
        })
        .route("POST", "/echo", |req| {
            let content_type = match req.header("content-type") {
                Some(b"application/json") => "application/json",
                Some(t) if t.starts_with(b"text/plain") => "text/plain; charset=utf-8",
                _ => "application/octet-stream",
            };
            Response::with_type(200, content_type, req.body.to_vec())
        })
        // For a readiness probe: 503 once a stop is asked for.
        .route("GET", "/ready", |_| {
            if serve::DRAINING.load(std::sync::atomic::Ordering::Relaxed) {
                Response::text(503, "draining")
            } else {
                Response::text(200, "ready")
            }
        })
        .route("GET", "/metrics", metrics)
        .route("GET", "/stats", |_| match serve::STATS.get() {
            Some(stats) => Response::json(stats_json(&stats())),
            None => Response::status(503),
        })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    serve::raise_nofile_limit();
    let mut config = cli.pool.config(READ_DEADLINE_MS, BUSY);
    #[cfg(feature = "metrics")]
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            let _ = PROMETHEUS.set(handle);
        }
        Err(e) => log::warn!("no metrics: {e}"),
    }
    let http = Http {
        router: routes(),
        limits: Limits {
            max_head: cli.max_head_bytes,
            max_body: cli.max_body_bytes,
        },
    };
    // The pool gathers a request as long as the server takes (it refuses
    // longer ones itself, with a 413).
    config.max_frame_bytes = http.limits.max_request().saturating_add(config.buffer_size);
    let manager = match Manager::with_handler(config, http) {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("http: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    serve::serve("http", manager, &cli.addr, &cli.pool)
}

#[cfg(test)]
mod tests;
