//! An in-memory Redis-compatible server (RESP2) on the pool: enough of
//! Redis for `redis-cli` and for every test of `redis-benchmark`'s default
//! run.
//!
//! ```text
//! cargo run --release --example resp            # listens on 127.0.0.1:6380
//! redis-benchmark -p 6380 -q -n 100000 -c 50    # in another terminal
//! redis-cli -p 6380 set greeting hello
//! ```
//!
//! How it uses the pool:
//! - every read is parsed in place; all the commands in it are run and their
//!   replies written back in one write (pipelining);
//! - a command split across reads is kept with [`Conn::keep`], and once
//!   its length is known the pool is told how many bytes it still needs
//!   ([`Conn::need`]); the pool gathers one larger than its read buffer,
//!   within `--max-request-bytes`;
//! - pub/sub (`SUBSCRIBE`, `PSUBSCRIBE`, `PUBLISH`, `PUBSUB`, …): a
//!   subscriber is its connection's `Handle`, so `PUBLISH` sends from the
//!   worker that reads it and never waits; a subscriber with more than
//!   `--pubsub-limit-bytes` (32 MiB) waiting is disconnected, as Redis's
//!   `client-output-buffer-limit pubsub` does (`pubsub.rs`);
//! - a malformed request gets Redis's `-ERR Protocol error: …` and the
//!   connection is closed (counted by the pool as closed by the handler);
//! - when the pool cannot take a client, it gets
//!   `-ERR max number of clients reached`, as from Redis.
//!
//! Not Redis: one database, no persistence, no transactions, no keyspace
//! notifications or sharded pub/sub,
//! `MSET` is atomic per key only, inline requests take quotes but no escapes.
//! Idle clients are closed after 5 minutes (`--read-deadline-ms`; Redis's
//! default is never).

#[path = "../common/frames.rs"]
mod frames;
#[path = "../common/serve.rs"]
mod serve;

mod collections;
mod commands;
mod parse;
mod pubsub;
mod reply;
mod store;

use std::cell::RefCell;
use std::io;
use std::ops::Range;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use pool_manager::{CloseReason, Conn, Handle, Handler, Manager};

use commands::{Args, Flow, ServerInfo};
use frames::{Outcome, Served};
use parse::{Limits, Parsed};
use pubsub::{Broker, Subscriptions};
use serve::PoolArgs;
use store::Store;

/// An in-memory Redis-compatible server on a pool-manager worker pool.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6380")]
    addr: String,
    /// Longest bulk argument, in bytes (Redis allows 512 MB).
    #[arg(long, default_value_t = 8 << 20)]
    max_bulk_bytes: usize,
    /// Most arguments in one command (Redis allows 1,048,576). A partial
    /// command is parsed again from its start once at least what it can
    /// still take has arrived (six bytes per argument to come), so a client
    /// that trickles a huge command costs more CPU the more arguments it
    /// may have.
    #[arg(long, default_value_t = 4096)]
    max_args: usize,
    /// Longest request, all its arguments together, in bytes; a client past
    /// it is answered with an error and closed.
    #[arg(long, default_value_t = 64 << 20)]
    max_request_bytes: usize,
    /// Bytes that may wait for a client (Redis's `client-output-buffer-limit
    /// pubsub` hard limit): a subscriber past it is disconnected; any
    /// client past it is not read until its replies drain.
    #[arg(long, default_value_t = 32 << 20)]
    pubsub_limit_bytes: usize,
    /// Bytes all clients together may hold in replies not yet read and in
    /// requests not yet complete (Redis's `maxmemory-clients`): past it the
    /// client holding the most is disconnected. 0 = no bound, Redis's
    /// default (the pool's own default is 256 MiB).
    #[arg(long, default_value_t = 0)]
    maxmemory_clients: usize,
    #[command(flatten)]
    pool: PoolArgs,
}

/// Idle clients are closed after this long unless `--read-deadline-ms` says
/// otherwise.
const READ_DEADLINE_MS: u64 = 300_000;

/// The longest inline request and `*N`/`$N` line, as Redis's.
const MAX_INLINE: usize = 64 * 1024;

/// The error for a request longer than `--max-request-bytes`.
const TOO_LARGE: &str = "ERR Protocol error: request larger than the server allows";

/// The server: the keyspace and the limits; shared by every worker.
struct Resp {
    store: Store,
    info: ServerInfo,
    limits: Limits,
    max_request: usize,
    broker: Broker,
}

/// A connection's state: its subscriptions, and its handle once it
/// subscribed (the pool keeps partial requests).
#[derive(Default)]
struct Session {
    handle: Option<Handle>,
    subs: Subscriptions,
}

/// What a command may need of its connection beyond its bytes: for
/// pub/sub, its subscriptions and a handle to it (none in the tests that
/// run the server without sockets).
trait Client {
    fn subs(&mut self) -> &mut Subscriptions;
    fn handle(&mut self) -> Option<Handle>;
}

impl Client for Conn<'_, Session> {
    fn subs(&mut self) -> &mut Subscriptions {
        &mut self.state().subs
    }

    fn handle(&mut self) -> Option<Handle> {
        if self.state().handle.is_none() {
            let handle = Conn::handle(self);
            self.state().handle = Some(handle);
        }
        self.state().handle.clone()
    }
}

/// A connection without a socket: subscriptions, but no handle.
#[cfg(test)]
#[derive(Default)]
struct NoClient(Subscriptions);

#[cfg(test)]
impl Client for NoClient {
    fn subs(&mut self) -> &mut Subscriptions {
        &mut self.0
    }

    fn handle(&mut self) -> Option<Handle> {
        None
    }
}

thread_local! {
    /// One worker's scratch: replies of the current read, and the ranges of
    /// the current command's arguments. Reused, so serving allocates
    /// nothing per request.
    static SCRATCH: RefCell<(Vec<u8>, Vec<Range<usize>>)> = const {
        RefCell::new((Vec::new(), Vec::new()))
    };
}

impl Resp {
    /// Runs every whole request at the start of `buf`, replies into `out`.
    fn serve(
        &self,
        buf: &[u8],
        out: &mut Vec<u8>,
        ranges: &mut Vec<Range<usize>>,
        client: &mut dyn Client,
    ) -> Served {
        let mut at = 0;
        loop {
            match parse::parse(&buf[at..], &self.limits, ranges) {
                // Refused whether it came in one read or in many (the
                // partial request held for more is refused past it too).
                Ok(Parsed::Request { len: n } | Parsed::Incomplete { need: n })
                    if n > self.max_request =>
                {
                    reply::error(out, TOO_LARGE);
                    return Served {
                        consumed: at,
                        need: 0,
                        close: true,
                    };
                }
                Ok(Parsed::Request { len }) => {
                    if !ranges.is_empty() {
                        // Ranges are relative to `at`.
                        let args = Args::new(&buf[at..], ranges);
                        let flow = match self.pubsub(&args, out, client) {
                            Some(flow) => flow,
                            None => commands::execute(&self.store, &self.info, &args, out),
                        };
                        if flow == Flow::Close {
                            return Served {
                                consumed: at + len,
                                need: 0,
                                close: true,
                            };
                        }
                    }
                    at += len;
                }
                Ok(Parsed::Incomplete { need }) => {
                    return Served {
                        consumed: at,
                        need: at.saturating_add(need),
                        close: false,
                    };
                }
                Err(e) => {
                    reply::error(out, &format!("ERR Protocol error: {e}"));
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

impl Resp {
    /// Runs a pub/sub command, or refuses another one while the
    /// connection is subscribed (RESP2); `None`: not pub/sub's to run.
    fn pubsub(&self, args: &Args<'_>, out: &mut Vec<u8>, client: &mut dyn Client) -> Option<Flow> {
        let name = args.get(0);
        let subscribed = client.subs().active();
        let lower = pubsub::COMMANDS
            .iter()
            .find(|(lower, _)| name.eq_ignore_ascii_case(lower.as_bytes()));
        if subscribed {
            let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
            if !pubsub::allowed_while_subscribed(&lower) {
                pubsub::refuse(out, &lower);
                return Some(Flow::Continue);
            }
            if lower == "ping" && args.len() <= 2 {
                pubsub::ping(args, out);
                return Some(Flow::Continue);
            }
            if lower == "reset" {
                if let Some(handle) = client.handle() {
                    self.broker.forget(handle.id(), client.subs());
                }
                *client.subs() = Subscriptions::default();
                reply::simple(out, "RESET");
                return Some(Flow::Continue);
            }
        }
        let &(lower, arity) = lower?;
        if !commands::arity_ok(arity, args.len()) {
            commands::arity_error(out, lower);
            return Some(Flow::Continue);
        }
        match lower {
            "publish" => {
                let receivers = self.broker.publish(args.get(1), args.get(2));
                reply::int(out, receivers as i64);
            }
            "pubsub" => self.broker.pubsub(args, out),
            // The subscriptions: the connection needs a handle.
            _ => match client.handle() {
                Some(me) => self.broker.execute(lower, args, &me, client.subs(), out),
                None => reply::error(out, "ERR pub/sub needs a connection"),
            },
        }
        Some(Flow::Continue)
    }
}

impl Handler for Resp {
    type State = Session;

    fn open(&self, _conn: &mut Conn<'_>) -> Session {
        Session::default()
    }

    fn data(&self, conn: &mut Conn<'_, Session>, data: &[u8]) -> io::Result<()> {
        SCRATCH.with_borrow_mut(|(out, ranges)| {
            out.clear();
            let outcome = self.read(data, out, ranges, conn);
            frames::finish(conn, outcome, out)
        })
    }

    fn closed(&self, session: Session, _reason: CloseReason) {
        if let Some(handle) = &session.handle {
            self.broker.forget(handle.id(), &session.subs);
        }
    }
}

impl Resp {
    /// Serves one read: the replies go to `out`; what to keep and whether
    /// to close are returned.
    fn read(
        &self,
        data: &[u8],
        out: &mut Vec<u8>,
        ranges: &mut Vec<Range<usize>>,
        client: &mut dyn Client,
    ) -> Outcome {
        let served = self.serve(data, out, ranges, client);
        let outcome = Outcome::of(served, data.len(), self.max_request);
        if outcome.too_large {
            reply::error(out, TOO_LARGE);
        }
        outcome
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    serve::raise_nofile_limit();
    let mut config = (cli.pool).config(READ_DEADLINE_MS, b"-ERR max number of clients reached\r\n");
    // The pool gathers a request as long as the server takes (it refuses
    // longer ones itself, with an error reply).
    config.max_frame_bytes = cli.max_request_bytes.saturating_add(config.buffer_size);
    config.max_outbound_bytes = cli.pubsub_limit_bytes;
    config.max_buffered_bytes = (cli.maxmemory_clients > 0).then_some(cli.maxmemory_clients);
    let port = cli
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let resp = Resp {
        store: Store::new(),
        info: ServerInfo {
            port,
            started: Instant::now(),
        },
        limits: Limits {
            max_bulk: cli.max_bulk_bytes,
            max_args: cli.max_args,
            max_inline: MAX_INLINE,
        },
        max_request: cli.max_request_bytes,
        broker: Broker::default(),
    };
    let manager = match Manager::with_handler(config, resp) {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("resp: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    serve::serve("resp", manager, &cli.addr, &cli.pool)
}

#[cfg(test)]
mod tests;
