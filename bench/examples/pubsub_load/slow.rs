//! `slow-readers`: large replies read slowly while other clients run at
//! full speed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::failures::{ErrorCounts, Errors, Failure};
use crate::resp_wire::{self, Value};
use crate::{Stop, Usage, Window};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Clients that each fetch the large value and read it slowly.
    #[arg(long, default_value_t = 64)]
    slow: usize,
    /// Bytes of the large value.
    #[arg(long, default_value_t = 8 << 20)]
    value_bytes: usize,
    /// Bytes per second each slow client reads.
    #[arg(long, default_value_t = 256 << 10, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Clients that `GET` a small value in a closed loop.
    #[arg(long, default_value_t = 50)]
    fast: usize,
    /// Bytes of the small value.
    #[arg(long, default_value_t = 64)]
    small_bytes: usize,
}

/// What the scenario reports beyond the common fields (those are the fast
/// clients').
#[derive(Serialize)]
pub struct Stats {
    slow: usize,
    value_bytes: usize,
    rate: u64,
    fast: usize,
    /// Downloads that arrived whole, every byte as sent.
    completed: usize,
    /// The others, by why they failed.
    failed: Errors,
    /// The slowest completed download, in seconds.
    slowest_s: f64,
}

const BIG: &[u8] = b"pool-manager:slow-readers:big";
const SMALL: &[u8] = b"pool-manager:slow-readers:small";

pub async fn run(args: &crate::Args, how: &Args) -> Result<crate::Report, String> {
    let limit = Duration::from_secs(2);
    let value: Vec<u8> = (0..how.value_bytes).map(|i| (i % 251) as u8).collect();
    let small = vec![b's'; how.small_bytes];
    set(args.addr, &[(BIG, &value), (SMALL, &small)], limit).await?;
    let mut reply = format!("${}\r\n", value.len()).into_bytes();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\n");
    let reply = Arc::new(reply);

    let mut usage = Usage::start(args.server_pid);
    let downloads = Arc::new(Downloads::default());
    let gate = Arc::new(Semaphore::new(200));
    // Twice the time a download takes at the rate, and 10 s more.
    let expect = Duration::from_secs_f64(value.len() as f64 / how.rate as f64);
    let deadline = Instant::now() + expect * 2 + Duration::from_secs(10);
    let slow: Vec<_> = (0..how.slow)
        .map(|_| {
            let download = Download {
                addr: args.addr,
                reply: Arc::clone(&reply),
                rate: how.rate as f64,
                deadline,
                gate: Arc::clone(&gate),
                downloads: Arc::clone(&downloads),
            };
            tokio::spawn(download.run())
        })
        .collect();
    let all = how.slow;
    let begun = crate::wait_until(Duration::from_secs(10), || {
        downloads.begun.load(Relaxed) + downloads.failed() >= all
    })
    .await;
    if !begun {
        eprintln!("pubsub_load: not every slow client began to receive within 10 s");
    }

    let window = Window {
        from: Instant::now() + Duration::from_millis(args.warmup_ms),
        to: Instant::now() + Duration::from_millis(args.warmup_ms + args.duration_ms),
    };
    let fast = Arc::new(Fast {
        addr: args.addr,
        small,
        window,
        limit,
        stop: Stop::default(),
        errors: ErrorCounts::default(),
    });
    let clients: Vec<_> = (0..how.fast)
        .map(|_| tokio::spawn(fast_client(Arc::clone(&fast))))
        .collect();
    tokio::time::sleep_until(window.from.into()).await;
    Usage::begin(&mut usage).await;
    tokio::time::sleep_until(window.to.into()).await;
    Usage::end(&mut usage).await;
    fast.stop.set();
    let mut latencies = crate::load_tool::new_histogram();
    for client in clients {
        if let Ok(histogram) = client.await {
            let _ = latencies.add(&histogram);
        }
    }
    let mut slowest = Duration::ZERO;
    for download in slow {
        if let Ok(Some(took)) = download.await {
            slowest = slowest.max(took);
        }
    }
    let server = Usage::finish(usage, latencies.len() as f64).await;
    let elapsed = window.to - window.from;
    let mut report = crate::report(
        args,
        "slow-readers",
        elapsed,
        &latencies,
        &fast.errors,
        server,
    );
    report.slow = Some(Stats {
        slow: all,
        value_bytes: how.value_bytes,
        rate: how.rate,
        fast: how.fast,
        completed: downloads.completed.load(Relaxed),
        failed: downloads.errors.report(),
        slowest_s: slowest.as_secs_f64(),
    });
    Ok(report)
}

/// Stores each key's value, each `SET` answered `+OK`.
async fn set(addr: SocketAddr, pairs: &[(&[u8], &[u8])], limit: Duration) -> Result<(), String> {
    let stream = crate::connect(addr, limit)
        .await
        .map_err(|f| format!("cannot connect to set the values: {f:?}"))?;
    let (read, mut write) = stream.into_split();
    let mut reader = resp_wire::Reader::new(read);
    for (key, value) in pairs {
        let command = resp_wire::command(&[b"SET", key, value]);
        match crate::exchange(&mut reader, &mut write, &command, limit * 5).await {
            Ok(Value::Simple(ok)) if ok == b"OK" => {}
            other => return Err(format!("SET answered {other:?}")),
        }
    }
    Ok(())
}

/// The slow clients' tally.
#[derive(Default)]
struct Downloads {
    /// Clients whose first byte arrived.
    begun: AtomicUsize,
    completed: AtomicUsize,
    errors: ErrorCounts,
}

impl Downloads {
    fn failed(&self) -> usize {
        self.errors.report().total as usize
    }
}

/// One slow client: `GET` the large value, read it at `rate`, check every
/// byte.
struct Download {
    addr: SocketAddr,
    /// The whole reply expected, header and all.
    reply: Arc<Vec<u8>>,
    rate: f64,
    deadline: Instant,
    gate: Arc<Semaphore>,
    downloads: Arc<Downloads>,
}

impl Download {
    /// How long the download took, if it completed.
    async fn run(self) -> Option<Duration> {
        let tally = Arc::clone(&self.downloads);
        match tokio::time::timeout_at(self.deadline.into(), self.fetch()).await {
            Ok(Ok(took)) => {
                tally.completed.fetch_add(1, Relaxed);
                Some(took)
            }
            Ok(Err(failure)) => {
                tally.errors.count(failure);
                None
            }
            Err(_) => {
                tally.errors.count(Failure::Timeout);
                None
            }
        }
    }

    async fn fetch(&self) -> Result<Duration, Failure> {
        let mut stream = {
            let _permit = self.gate.acquire().await.map_err(|_| Failure::Connect)?;
            crate::connect(self.addr, Duration::from_secs(2)).await?
        };
        let started = Instant::now();
        let command = resp_wire::command(&[b"GET", BIG]);
        stream.write_all(&command).await.map_err(|_| Failure::Io)?;
        let mut buf = vec![0; 16 << 10];
        let mut got = 0;
        while got < self.reply.len() {
            let want = buf.len().min(self.reply.len() - got);
            let n = stream
                .read(&mut buf[..want])
                .await
                .map_err(|_| Failure::Io)?;
            if n == 0 {
                return Err(Failure::Closed);
            }
            if got == 0 {
                self.downloads.begun.fetch_add(1, Relaxed);
            }
            if buf[..n] != self.reply[got..got + n] {
                // Such as `-ERR max number of clients reached`.
                return Err(Failure::Mismatch);
            }
            got += n;
            let due = started + Duration::from_secs_f64(got as f64 / self.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        Ok(started.elapsed())
    }
}

/// What the fast clients share.
struct Fast {
    addr: SocketAddr,
    small: Vec<u8>,
    window: Window,
    limit: Duration,
    stop: Stop,
    errors: ErrorCounts,
}

/// `GET` of the small value in a closed loop until told to stop; the
/// latencies of those begun in the window.
async fn fast_client(fast: Arc<Fast>) -> Histogram<u64> {
    let mut latencies = crate::load_tool::new_histogram();
    let command = resp_wire::command(&[b"GET", SMALL]);
    let mut client = crate::Client::new(fast.addr, fast.limit);
    while !fast.stop.is_set() {
        let began = Instant::now();
        match client.call(&command, &fast.errors).await {
            Some(Value::Bulk(Some(v))) if v == fast.small && fast.window.holds(began) => {
                let _ = latencies.record(began.elapsed().as_micros().max(1) as u64);
            }
            Some(Value::Bulk(Some(v))) if v == fast.small => {}
            Some(_) => fast.errors.count(Failure::Mismatch),
            None => {}
        }
    }
    latencies
}
