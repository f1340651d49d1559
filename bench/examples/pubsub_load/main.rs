//! A load generator for Redis-like servers (the `resp` example,
//! redis-server, `peer_tokio_pubsub`): the two push-side scenarios of
//! `benches/compare.sh` and `benches/real-clients.sh`. It prints one JSON
//! line, with the server's usage given its pid (as the `load` example).
//!
//! - `fanout`: N subscribers on one channel and P publishers in a closed
//!   loop (one `PUBLISH` in flight each), every message stamped with its
//!   send time. Reports messages delivered per second (by send time, within
//!   the measured window), p50/p99 publish-to-receive latency, and messages
//!   lost: what the publishers' replies say was delivered (the number of
//!   receivers of each `PUBLISH`) less what arrived, once every subscriber
//!   has drained (10 s at most).
//! - `slow-readers`: S clients each `GET` a large value (8 MiB) and read it
//!   at a steady, slow rate (256 KiB/s) while F others run `GET` of a small
//!   value in a closed loop at full speed. Reports the fast clients'
//!   throughput and latency, and how many downloads completed whole and
//!   intact (every byte checked). `--slow 0` gives the fast clients'
//!   throughput without slow readers.
//!
//! ```text
//! cargo run --release -p pool-manager-bench --example pubsub_load -- --addr 127.0.0.1:6380 fanout --subscribers 1000
//! cargo run --release -p pool-manager-bench --example pubsub_load -- --addr 127.0.0.1:6380 slow-readers
//! ```
//!
//! Every failure is counted, never fatal. Traffic goes only where `--addr`
//! points; use a loopback address.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[path = "../common/failures.rs"]
mod failures;
mod fanout;
#[path = "../common/load_tool.rs"]
mod load_tool;
#[path = "../common/procfs.rs"]
mod procfs;
#[path = "../common/resp_wire.rs"]
mod resp_wire;
mod slow;

use failures::{ErrorCounts, Errors, Failure};
use load_tool::Measured;
use procfs::{Sampler, ServerUsage};
use resp_wire::Reader;

/// Pub/sub fan-out and slow-reader load for Redis-like servers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Measured time, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
    /// Load before measuring, in milliseconds.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's pid, to report its RSS, threads, CPU time and context
    /// switches (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Subcommand, Debug)]
enum Scenario {
    /// Subscribers on one channel, publishers in a closed loop.
    Fanout(fanout::Args),
    /// Large replies read slowly, small ones at full speed.
    SlowReaders(slow::Args),
}

/// What every scenario reports; the measured clients' requests (fanout:
/// delivered messages) and latencies.
#[derive(Serialize)]
struct Report {
    label: String,
    scenario: &'static str,
    #[serde(flatten)]
    measured: Measured,
    errors: Errors,
    #[serde(skip_serializing_if = "Option::is_none")]
    fanout: Option<fanout::Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow: Option<slow::Stats>,
    server: Option<ServerUsage>,
}

/// The measured window: what happened from `from` until `to` counts.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    fn holds(&self, at: Instant) -> bool {
        at >= self.from && at < self.to
    }
}

/// The server's usage over a window, measured from a [`Sampler`] started
/// before it.
struct Usage {
    pid: u32,
    sampler: Sampler,
    before: Option<procfs::Mark>,
    after: Option<procfs::Mark>,
}

impl Usage {
    fn start(pid: Option<u32>) -> Option<Self> {
        pid.map(|pid| Usage {
            pid,
            sampler: Sampler::start(pid, true),
            before: None,
            after: None,
        })
    }

    async fn begin(usage: &mut Option<Self>) {
        if let Some(u) = usage {
            u.before = Some(procfs::mark(u.pid).await);
        }
    }

    async fn end(usage: &mut Option<Self>) {
        if let Some(u) = usage {
            u.after = Some(procfs::mark(u.pid).await);
        }
    }

    async fn finish(usage: Option<Self>, work: f64) -> Option<ServerUsage> {
        let u = usage?;
        let sampled = u.sampler.finish().await;
        Some(procfs::usage(
            u.pid,
            u.before.as_ref()?,
            u.after.as_ref()?,
            sampled,
            work,
        ))
    }
}

/// A connection with Nagle's algorithm off, within `limit`.
async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, Failure> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Waits until `done()` holds, checking every 10 ms, for at most `limit`;
/// whether it held.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A flag that ends the clients' loops.
#[derive(Default)]
struct Stop(AtomicBool);

impl Stop {
    fn set(&self) {
        self.0.store(true, Relaxed);
    }
    fn is_set(&self) -> bool {
        self.0.load(Relaxed)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let measure = async {
        match &args.scenario {
            Scenario::Fanout(how) => fanout::run(&args, how).await,
            Scenario::SlowReaders(how) => slow::run(&args, how).await,
        }
    };
    load_tool::main("pubsub_load", args.threads, measure)
}

/// The common part of a report: `requests` measured over `elapsed`.
fn report(
    args: &Args,
    scenario: &'static str,
    elapsed: Duration,
    latencies: &Histogram<u64>,
    errors: &ErrorCounts,
    server: Option<ServerUsage>,
) -> Report {
    Report {
        label: args.label.clone(),
        scenario,
        measured: Measured::of(latencies, elapsed),
        errors: errors.report(),
        fanout: None,
        slow: None,
        server,
    }
}

/// A connection for one command at a time, made again after a failure.
struct Client {
    addr: SocketAddr,
    limit: Duration,
    halves: Option<(Reader<OwnedReadHalf>, OwnedWriteHalf)>,
}

impl Client {
    fn new(addr: SocketAddr, limit: Duration) -> Self {
        Client {
            addr,
            limit,
            halves: None,
        }
    }

    /// `command`'s reply, connecting first if need be; `None` after a
    /// failure, counted in `errors` (the connection is dropped, and the
    /// next call, 10 ms later at the soonest, makes another).
    async fn call(&mut self, command: &[u8], errors: &ErrorCounts) -> Option<resp_wire::Value> {
        let result = async {
            let (reader, write) = match &mut self.halves {
                Some(halves) => halves,
                None => {
                    let (read, write) = connect(self.addr, self.limit).await?.into_split();
                    self.halves.insert((Reader::new(read), write))
                }
            };
            exchange(reader, write, command, self.limit).await
        };
        match result.await {
            Ok(value) => Some(value),
            Err(failure) => {
                errors.count(failure);
                self.halves = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
                None
            }
        }
    }
}

/// One command and its reply on `reader`/`stream`, within `limit`.
async fn exchange<R, W>(
    reader: &mut resp_wire::Reader<R>,
    writer: &mut W,
    command: &[u8],
    limit: Duration,
) -> Result<resp_wire::Value, Failure>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let run = async {
        writer.write_all(command).await?;
        reader.next().await
    };
    match tokio::time::timeout(limit, run).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) => Err(Failure::Closed),
        Ok(Ok(Some(value))) => Ok(value),
    }
}
