//! A peer for the pub/sub comparisons: the part of Redis that
//! `pubsub_load` uses (`SUBSCRIBE`, `PUBLISH`, `GET`, `SET`, `PING`), on
//! tokio's multi-thread runtime, a task per connection, as tokio's own
//! mini-redis does it: a `broadcast` channel per channel name, a
//! subscriber's task waiting on its channels' streams (a `StreamMap`) and
//! on its socket at once. Messages that are ready together go out in one
//! write. A subscriber that falls more than `--capacity` messages behind
//! loses the oldest (tokio's `broadcast` lag), which `pubsub_load` counts
//! as lost.
//!
//! ```text
//! cargo run --release -p pool-manager-bench --example peer_tokio_pubsub -- --addr 127.0.0.1:7003
//! ```

// The load tool's half of the module (a command encoded, a reader) is
// not used here.
#[allow(dead_code)]
#[path = "common/resp_wire.rs"]
mod resp_wire;
#[path = "common/tokio_peer.rs"]
mod tokio_peer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamMap};

use resp_wire::Value;

/// Tokio pub/sub (and GET/SET) server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7003")]
    addr: SocketAddr,
    /// Runtime worker threads; 0 = one per core (tokio's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Messages a channel holds for its slowest subscriber.
    #[arg(long, default_value_t = 4096)]
    capacity: usize,
}

/// What every connection shares.
#[derive(Default)]
struct Db {
    values: Mutex<HashMap<Vec<u8>, Arc<Vec<u8>>>>,
    channels: Mutex<HashMap<Vec<u8>, Publisher>>,
}

/// A channel's sending end: every subscriber's stream gets each message.
type Publisher = broadcast::Sender<Arc<Vec<u8>>>;

fn main() -> ExitCode {
    let args = Args::parse();
    tokio_peer::run("peer_tokio_pubsub", args.threads, serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.addr).await?;
    println!("peer_tokio_pubsub: listening on {}", listener.local_addr()?);
    let db = Arc::new(Db::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, Arc::clone(&db), args.capacity));
            }
            Err(e) => {
                eprintln!("peer_tokio_pubsub: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// A channel's message stream.
type Messages = BroadcastStream<Arc<Vec<u8>>>;

/// Serves one connection until it closes or sends what is not RESP.
async fn connection(mut stream: TcpStream, db: Arc<Db>, capacity: usize) {
    let mut input = Vec::with_capacity(16 << 10);
    let mut out = Vec::new();
    let mut subs: StreamMap<Vec<u8>, Messages> = StreamMap::new();
    let mut chunk = vec![0; 16 << 10];
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                input.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                loop {
                    match resp_wire::parse(&input[at..]) {
                        Ok(Some((Value::Array(Some(items)), len))) => {
                            at += len;
                            let args: Option<Vec<&[u8]>> = items.iter().map(|v| match v {
                                Value::Bulk(Some(b)) => Some(b.as_slice()),
                                _ => None,
                            }).collect();
                            let Some(args) = args else { return };
                            run(&args, &db, &mut subs, capacity, &mut out);
                        }
                        Ok(None) => break,
                        Ok(Some(_)) | Err(_) => return,
                    }
                }
                input.drain(..at);
            }
            Some((channel, message)) = tokio_stream::StreamExt::next(&mut subs), if !subs.is_empty() => {
                push_message(&mut out, &channel, message);
                // The rest of what is ready goes in the same write.
                while let Some((channel, message)) = ready_now(&mut subs).await {
                    push_message(&mut out, &channel, message);
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// A message already waiting in `subs`, without waiting for one.
async fn ready_now(
    subs: &mut StreamMap<Vec<u8>, Messages>,
) -> Option<(Vec<u8>, <Messages as Stream>::Item)> {
    std::future::poll_fn(|cx| match Pin::new(&mut *subs).poll_next(cx) {
        Poll::Ready(item) => Poll::Ready(item),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// A `message` push, unless the subscriber lagged (its lost messages are
/// not sent).
fn push_message(
    out: &mut Vec<u8>,
    channel: &[u8],
    message: Result<Arc<Vec<u8>>, tokio_stream::wrappers::errors::BroadcastStreamRecvError>,
) {
    if let Ok(message) = message {
        array(out, 3);
        bulk(out, b"message");
        bulk(out, channel);
        bulk(out, &message);
    }
}

/// Runs one command, its reply appended to `out`.
fn run(
    args: &[&[u8]],
    db: &Db,
    subs: &mut StreamMap<Vec<u8>, Messages>,
    capacity: usize,
    out: &mut Vec<u8>,
) {
    let name = args
        .first()
        .map(|n| n.to_ascii_uppercase())
        .unwrap_or_default();
    match (name.as_slice(), &args[1.min(args.len())..]) {
        (b"PING", []) => out.extend_from_slice(b"+PONG\r\n"),
        (b"GET", [key]) => match db.values.lock().map(|v| v.get(*key).cloned()) {
            Ok(Some(value)) => bulk(out, &value),
            _ => out.extend_from_slice(b"$-1\r\n"),
        },
        (b"SET", [key, value]) => {
            if let Ok(mut values) = db.values.lock() {
                values.insert(key.to_vec(), Arc::new(value.to_vec()));
            }
            out.extend_from_slice(b"+OK\r\n");
        }
        (b"SUBSCRIBE", channels) if !channels.is_empty() => {
            for channel in channels {
                if !subs.contains_key(*channel) {
                    let rx = match db.channels.lock() {
                        Ok(mut all) => all
                            .entry(channel.to_vec())
                            .or_insert_with(|| broadcast::channel(capacity).0)
                            .subscribe(),
                        Err(_) => return,
                    };
                    subs.insert(channel.to_vec(), BroadcastStream::new(rx));
                }
                array(out, 3);
                bulk(out, b"subscribe");
                bulk(out, channel);
                out.extend_from_slice(format!(":{}\r\n", subs.len()).as_bytes());
            }
        }
        (b"PUBLISH", [channel, message]) => {
            let receivers = db
                .channels
                .lock()
                .ok()
                .and_then(|all| {
                    all.get(*channel)
                        .map(|tx| tx.send(Arc::new(message.to_vec())))
                })
                .and_then(Result::ok)
                .unwrap_or(0);
            out.extend_from_slice(format!(":{receivers}\r\n").as_bytes());
        }
        _ => out.extend_from_slice(b"-ERR unknown command or wrong number of arguments\r\n"),
    }
}

fn array(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(format!("*{len}\r\n").as_bytes());
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}
