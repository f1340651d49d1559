//! `fanout`: subscribers on one channel, publishers in a closed loop,
//! messages stamped with their send time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::failures::{ErrorCounts, Failure};
use crate::resp_wire::{self, Value};
use crate::{Stop, Usage, Window};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Subscribers, all on one channel.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publishers, each with one `PUBLISH` in flight at a time.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Bytes per message; its send time leads, in 20 digits.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(24..=1_048_576))]
    size: u32,
    /// The channel.
    #[arg(long, default_value = "fanout")]
    channel: String,
    /// Publishes per second, all publishers together, on a fixed schedule
    /// (open loop): each message is stamped with the time it was due, so a
    /// publisher held up by the server counts the wait in the latencies
    /// (no coordinated omission). 0: closed loop, each publisher sends its
    /// next message as soon as the last one is answered. With a rate,
    /// servers can be compared at the same delivered load, which a closed
    /// loop on a shared machine does not give: there the server that takes
    /// publishes faster also queues more behind them.
    #[arg(long, default_value_t = 0)]
    rate: u32,
}

/// What the scenario reports beyond the common fields (whose `requests`
/// are the messages sent in the window that arrived, and whose latencies
/// are theirs, publish to receive).
#[derive(Serialize)]
pub struct Stats {
    subscribers: usize,
    /// Subscribers whose subscription was confirmed.
    subscribed: usize,
    publishers: usize,
    size: u32,
    /// Publishes per second asked for (0: closed loop).
    rate: u32,
    /// `PUBLISH` commands answered, over the whole run.
    published: u64,
    /// Of them, sent within the window, per second.
    publishes_per_s: f64,
    /// What the publishers' replies say was delivered (the receivers of
    /// each message), over the whole run.
    expected: u64,
    /// What arrived, over the whole run.
    received: u64,
    /// `expected - received`, after every subscriber drained (10 s at
    /// most).
    lost: u64,
}

/// What the subscribers and publishers share.
struct Shared {
    channel: Vec<u8>,
    size: usize,
    /// Stamps count microseconds from here.
    epoch: Instant,
    /// The measured window, in microseconds from the epoch: set once every
    /// subscriber subscribed (until then no stamp falls in it).
    from_us: AtomicU64,
    to_us: AtomicU64,
    addr: SocketAddr,
    limit: Duration,
    stop: Stop,
    subscribed: AtomicUsize,
    gave_up: AtomicUsize,
    published: AtomicU64,
    published_in_window: AtomicU64,
    expected: AtomicU64,
    received: AtomicU64,
    errors: ErrorCounts,
}

pub async fn run(args: &crate::Args, how: &Args) -> Result<crate::Report, String> {
    let limit = Duration::from_secs(2);
    let warmup = Duration::from_millis(args.warmup_ms);
    let duration = Duration::from_millis(args.duration_ms);
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        channel: how.channel.as_bytes().to_vec(),
        size: how.size as usize,
        epoch,
        from_us: AtomicU64::new(u64::MAX),
        to_us: AtomicU64::new(u64::MAX),
        addr: args.addr,
        limit,
        stop: Stop::default(),
        subscribed: AtomicUsize::new(0),
        gave_up: AtomicUsize::new(0),
        published: AtomicU64::new(0),
        published_in_window: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        received: AtomicU64::new(0),
        errors: ErrorCounts::default(),
    });
    let mut usage = Usage::start(args.server_pid);
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(200));
    let subscribers: Vec<_> = (0..how.subscribers)
        .map(|_| {
            let (shared, gate, stop) = (Arc::clone(&shared), Arc::clone(&gate), stop_rx.clone());
            tokio::spawn(subscriber(shared, gate, stop))
        })
        .collect();
    let all = how.subscribers;
    let done = || shared.subscribed.load(Relaxed) + shared.gave_up.load(Relaxed) >= all;
    if !crate::wait_until(Duration::from_secs(30), done).await {
        return Err("the subscribers did not all subscribe within 30 s".into());
    }
    let subscribed = shared.subscribed.load(Relaxed);
    if subscribed < all {
        eprintln!("pubsub_load: {subscribed} of {all} subscribers subscribed");
    }
    let window = Window {
        from: Instant::now() + warmup,
        to: Instant::now() + warmup + duration,
    };
    let micros = |at: Instant| at.duration_since(epoch).as_micros() as u64;
    shared.from_us.store(micros(window.from), Relaxed);
    shared.to_us.store(micros(window.to), Relaxed);
    // Open loop: publisher `i` of `n` is due every `n / rate` seconds,
    // starting `i / rate` seconds in, so that together they keep the rate.
    let every = (how.rate > 0).then(|| Duration::from_secs(how.publishers as u64) / how.rate);
    let start = Instant::now();
    let publishers: Vec<_> = (0..how.publishers)
        .map(|i| {
            let schedule = every.map(|every| Schedule {
                next: start
                    + every.checked_div(how.publishers as u32).unwrap_or_default() * i as u32,
                every,
            });
            tokio::spawn(publisher(Arc::clone(&shared), schedule))
        })
        .collect();
    tokio::time::sleep_until(window.from.into()).await;
    crate::Usage::begin(&mut usage).await;
    tokio::time::sleep_until(window.to.into()).await;
    crate::Usage::end(&mut usage).await;
    shared.stop.set();
    for publisher in publishers {
        let _ = publisher.await;
    }
    let expected = shared.expected.load(Relaxed);
    crate::wait_until(Duration::from_secs(10), || {
        shared.received.load(Relaxed) >= expected
    })
    .await;
    let _ = stop_tx.send(true);
    let mut latencies = crate::load_tool::new_histogram();
    for subscriber in subscribers {
        if let Ok(histogram) = subscriber.await {
            let _ = latencies.add(&histogram);
        }
    }
    let received = shared.received.load(Relaxed);
    let server = Usage::finish(usage, latencies.len() as f64).await;
    let mut report = crate::report(args, "fanout", duration, &latencies, &shared.errors, server);
    report.fanout = Some(Stats {
        subscribers: all,
        subscribed,
        publishers: how.publishers,
        size: how.size,
        rate: how.rate,
        published: shared.published.load(Relaxed),
        publishes_per_s: shared.published_in_window.load(Relaxed) as f64 / duration.as_secs_f64(),
        expected,
        received,
        lost: expected.saturating_sub(received),
    });
    Ok(report)
}

/// Subscribes, then records every message's latency until told to stop.
async fn subscriber(
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut latencies = crate::load_tool::new_histogram();
    let subscribed = async {
        let _permit = gate.acquire().await.map_err(|_| Failure::Connect)?;
        let stream = crate::connect(shared.addr, shared.limit).await?;
        let (read, mut write) = stream.into_split();
        let mut reader = resp_wire::Reader::new(read);
        let command = resp_wire::command(&[b"SUBSCRIBE", &shared.channel]);
        match crate::exchange(&mut reader, &mut write, &command, shared.limit).await? {
            Value::Array(Some(items)) if matches!(items.first(), Some(Value::Bulk(Some(kind))) if kind == b"subscribe") => {
                Ok((reader, write))
            }
            _ => Err(Failure::Mismatch),
        }
    };
    let (mut reader, _write) = match subscribed.await {
        Ok(halves) => halves,
        Err(failure) => {
            shared.errors.count(failure);
            shared.gave_up.fetch_add(1, Relaxed);
            return latencies;
        }
    };
    shared.subscribed.fetch_add(1, Relaxed);
    loop {
        let value = tokio::select! {
            value = reader.next() => value,
            _ = stop.changed() => break,
        };
        match value {
            Ok(Some(value)) => {
                let Some(sent) = stamp_of(&shared, &value) else {
                    shared.errors.count(Failure::Mismatch);
                    continue;
                };
                shared.received.fetch_add(1, Relaxed);
                if shared.in_window(sent) {
                    let now = shared.epoch.elapsed().as_micros() as u64;
                    let _ = latencies.record(now.saturating_sub(sent).max(1));
                }
            }
            Ok(None) => {
                shared.errors.count(Failure::Closed);
                break;
            }
            Err(e) => {
                shared.errors.count(e.into());
                break;
            }
        }
    }
    latencies
}

/// When an open-loop publisher's messages are due.
struct Schedule {
    next: Instant,
    every: Duration,
}

/// Publishes stamped messages, one in flight, until told to stop: as fast
/// as they are answered, or when due on a `schedule` (stamped with the time
/// due, even when sent late).
async fn publisher(shared: Arc<Shared>, mut schedule: Option<Schedule>) {
    let mut client = crate::Client::new(shared.addr, shared.limit);
    while !shared.stop.is_set() {
        let sent = match &mut schedule {
            Some(schedule) => {
                let due = schedule.next;
                schedule.next += schedule.every;
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let payload = stamped(&shared, sent);
        let command = resp_wire::command(&[b"PUBLISH", &shared.channel, &payload]);
        match client.call(&command, &shared.errors).await {
            Some(Value::Int(receivers)) => {
                shared.published.fetch_add(1, Relaxed);
                if shared.in_window(shared.micros(sent)) {
                    shared.published_in_window.fetch_add(1, Relaxed);
                }
                shared
                    .expected
                    .fetch_add(u64::try_from(receivers).unwrap_or(0), Relaxed);
            }
            Some(_) => shared.errors.count(Failure::Mismatch),
            None => {}
        }
    }
}

impl Shared {
    /// `at` in microseconds from the epoch.
    fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_micros() as u64
    }

    /// Whether a message stamped `sent` counts.
    fn in_window(&self, sent: u64) -> bool {
        sent >= self.from_us.load(Relaxed) && sent < self.to_us.load(Relaxed)
    }
}

/// A message of `shared.size` bytes: microseconds since the epoch in 20
/// digits, then filler.
fn stamped(shared: &Shared, at: Instant) -> Vec<u8> {
    let mut payload = format!("{:020}", shared.micros(at)).into_bytes();
    payload.resize(shared.size, b'x');
    payload
}

/// The stamp (microseconds from the epoch) of a `message` push on the
/// channel.
fn stamp_of(shared: &Shared, value: &Value) -> Option<u64> {
    let Value::Array(Some(items)) = value else {
        return None;
    };
    let [
        Value::Bulk(Some(kind)),
        Value::Bulk(Some(channel)),
        Value::Bulk(Some(payload)),
    ] = items.as_slice()
    else {
        return None;
    };
    if kind != b"message" || *channel != shared.channel {
        return None;
    }
    std::str::from_utf8(payload.get(..20)?).ok()?.parse().ok()
}
