//! An echo server: a user accept loop hands every stream to the pool with
//! `put`, and answers refused ones itself.
//!
//! ```text
//! cargo run --release --example echo -- --max-workers 8 --stats-every-ms 1000
//! ```

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use pool_manager::{Config, Conn, Manager};

/// Echo server on a pool-manager worker pool.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Workers kept even when idle.
    #[arg(long, default_value_t = Config::default().min_workers)]
    min_workers: usize,
    /// Most workers, i.e. connections served at once.
    #[arg(long, default_value_t = Config::default().max_workers)]
    max_workers: usize,
    /// Bytes read at most per read.
    #[arg(long, default_value_t = Config::default().buffer_size)]
    buffer_size: usize,
    /// Inactivity timeout in milliseconds; 0 = none.
    #[arg(long, default_value_t = 3000)]
    read_deadline_ms: u64,
    /// Deadline of one write in milliseconds; 0 = none.
    #[arg(long, default_value_t = 3000)]
    write_deadline_ms: u64,
    /// Idle workers above the minimum retire after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    worker_idle_ms: u64,
    /// Streams that may wait for a worker when all are busy.
    #[arg(long, default_value_t = 0)]
    queue: usize,
    /// Longest a stream waits in the queue, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    queue_timeout_ms: u64,
    /// Written to a client the pool cannot take, before closing it.
    #[arg(long, default_value = "ERROR_SERVER_BUSY")]
    busy_reply: String,
    /// Print a line of stats this often, in milliseconds; 0 = never.
    #[arg(long, default_value_t = 0)]
    stats_every_ms: u64,
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let busy_reply = format!("{}\n", args.busy_reply).into_bytes();
    let config = Config {
        min_workers: args.min_workers,
        max_workers: args.max_workers,
        buffer_size: args.buffer_size,
        read_deadline: millis(args.read_deadline_ms),
        write_deadline: millis(args.write_deadline_ms),
        // Zero is refused by validation, with a clear message.
        worker_idle_timeout: Duration::from_millis(args.worker_idle_ms),
        queue_capacity: args.queue,
        queue_timeout: Duration::from_millis(args.queue_timeout_ms),
        busy_reply: busy_reply.clone(),
        ..Config::default()
    };
    let manager = match Manager::new(config, |conn: &mut Conn<'_>, data: &[u8]| {
        conn.write_all(data)
    }) {
        Ok(manager) => Arc::new(manager),
        Err(e) => {
            eprintln!("echo: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&args.addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("echo: cannot listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = manager.start() {
        eprintln!("echo: cannot start: {e}");
        return ExitCode::FAILURE;
    }
    println!("echo: listening on {}", args.addr);

    if let Some(every) = millis(args.stats_every_ms) {
        let manager = Arc::clone(&manager);
        std::thread::spawn(move || {
            for _ in crossbeam_channel::tick(every) {
                let s = manager.stats();
                println!(
                    "workers {} (busy {}, idle {}) queued {} | conns {} | in {} B out {} B | rejected {} | closed {} (eof {}, deadline {}, error {}, panic {})",
                    s.workers,
                    s.busy,
                    s.idle,
                    s.queued,
                    s.connections,
                    s.bytes_in,
                    s.bytes_out,
                    s.rejected.total(),
                    s.closed.total(),
                    s.closed.eof,
                    s.closed.read_deadline + s.closed.write_deadline,
                    s.closed.error,
                    s.closed.panic,
                );
            }
        });
    }

    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(refused) = manager.put(stream) {
            let mut stream = refused.into_inner();
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(&busy_reply);
        }
    }
    ExitCode::SUCCESS
}
